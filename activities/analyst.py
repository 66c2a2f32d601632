"""An analyst's actions on an incident, as the workflow's `analyst_action` update asks for
them: lift a block early, extend it, contain now, close with a disposition, add a note.

Every step is one transaction with one log row keyed so that a retried activity writes it
once: a lift shares the key of the timer's lift (`<action>:lifted`), so a block is lifted in
the log once whoever lifts it; the others are keyed by the request's nonce. A request the
activity must refuse (an irreversible action, one not of this incident) fails without retry.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.containment import apply_enforcement
from activities.context import ActivityContext, action_id_for, now, ref_of
from soar import actions
from soar.audit.chain import LogEvent, append
from soar.contracts import (
    ActionRef,
    AnalystCloseInput,
    AnalystStep,
    ContainNowInput,
    ContainNowResult,
    ExtendInput,
    LiftInput,
    LiftResult,
)
from soar.db import transaction
from soar.enforcement import lift_block
from soar.incidents import CONTAINABLE, close_with_disposition, incident_base
from soar.models import Action, ActionLogEntry, EnforcementBlock, Incident

MAX_GENERATIONS = 1000


def _refuse(message: str) -> ApplicationError:
    return ApplicationError(message, type="AnalystActionRefused", non_retryable=True)


async def _action_of(s: AsyncSession, step: AnalystStep, action_id: str) -> Action:
    row = await s.get(Action, action_id, with_for_update=True)
    if row is None or row.incident_id != step.incident_id:
        raise _refuse(f"incident {step.incident_id} has no action {action_id}")
    return row


async def _incident(s: AsyncSession, incident_id: str) -> Incident:
    inc = await s.get(Incident, incident_id)
    if inc is None:
        raise _refuse(f"no incident {incident_id}")
    return inc


def _ref(row: Action, inc: Incident) -> ActionRef:
    """The action as the workflow keys it (without the generation suffix)."""
    return ref_of(row, inc.technique, action_key=row.action_key.split("#", 1)[0])


def _said(step: AnalystStep) -> dict[str, Any]:
    return {"reason": step.reason or None, "channel": step.channel, "request": step.event_key}


class AnalystActivities:
    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    @activity.defn(name="lift_block_now")
    async def lift_block_now(self, inp: LiftInput) -> LiftResult:
        """Lift an enforcement action now (a temporary block, or one without an expiry that
        is not irreversible, e.g. a quarantined model)."""
        step = inp.step
        async with transaction(self.ctx.factory) as s:
            row = await _action_of(s, step, inp.action_id)
            inc = await _incident(s, row.incident_id)
            definition = actions.find(row.action_type)
            if definition is None or not definition.enforces:
                raise _refuse(f"{row.action_type} is not a block: there is nothing to lift")
            if definition.irreversible:
                raise _refuse(f"{definition.label} is irreversible: it cannot be lifted")
            key = f"{row.id}:lifted"  # the timer's key: one lift row per block
            if row.status != "applied":
                done = await s.scalar(
                    select(ActionLogEntry.details).where(ActionLogEntry.event_key == key)
                )
                if done is not None and done.get("request") == step.event_key:
                    at = row.finished_at or now()  # a retry of this lift, committed
                    return LiftResult(at.isoformat(), _ref(row, inc))
                raise _refuse(f"action {row.id} is {row.status}, not in force")
            at = now()
            was_active = await lift_block(s, action_id=row.id, now=at)
            row.status, row.finished_at = "lifted", at
            await append(
                s,
                LogEvent(
                    event_key=key,
                    event="action.rolled_back",
                    actor=step.actor,
                    action=row.action_type,
                    outcome="lifted",
                    details={
                        "action_id": row.id,
                        "target": row.target,
                        "unblocked": True,
                        "was_active": was_active,
                        "lifted_early": True,
                        "expires_at": inp.expires_at,
                        **_said(step),
                    },
                    **incident_base(inc),
                ),
            )
        return LiftResult(at.isoformat(), _ref(row, inc))

    @activity.defn(name="extend_block")
    async def extend_block(self, inp: ExtendInput) -> str:
        """Move a temporary block's expiry; the enforcement feed carries the new one."""
        step = inp.step
        until = datetime.fromisoformat(inp.expires_at)
        async with transaction(self.ctx.factory) as s:
            row = await _action_of(s, step, inp.action_id)
            if row.status != "applied" or row.expires_at is None:
                raise _refuse(f"action {row.id} is not a temporary block in force")
            before = row.expires_at
            if before != until:
                await s.execute(
                    update(EnforcementBlock)
                    .where(
                        EnforcementBlock.action_id == row.id,
                        EnforcementBlock.lifted_at.is_(None),
                    )
                    .values(until=until)
                )
                row.expires_at = until
            inc = await _incident(s, row.incident_id)
            await append(
                s,
                LogEvent(
                    event_key=step.event_key,
                    event="action.extended",
                    actor=step.actor,
                    action=row.action_type,
                    outcome="extended",
                    details={
                        "action_id": row.id,
                        "target": row.target,
                        "from": before.isoformat(),
                        "until": until.isoformat(),
                        **_said(step),
                    },
                    **incident_base(inc),
                ),
            )
        return until.isoformat()

    @activity.defn(name="contain_now")
    async def contain_now(self, inp: ContainNowInput) -> ContainNowResult:
        """A new generation of a planned action that is not in force: a low-risk block is
        applied at once; a high-risk one is left pending approval (the workflow asks)."""
        step = inp.step
        async with transaction(self.ctx.factory) as s:
            old = await _action_of(s, step, inp.action_id)
            key = old.action_key.split("#", 1)[0]
            inc = await _incident(s, old.incident_id)
            done = await s.scalar(
                select(ActionLogEntry.details).where(ActionLogEntry.event_key == step.event_key)
            )
            if done is not None:  # a retry of a step that committed
                row = await s.get(Action, str(done["action_id"]))
                assert row is not None
                return self._result(row, inc, key)
            definition = actions.find(old.action_type)
            if definition is None or not definition.enforces:
                raise _refuse(f"{old.action_type} does not contain anything (not enforcement)")
            if key in inp.active_keys:
                raise _refuse(f"{definition.label} {old.target} is in force or awaiting approval")
            if old.status not in CONTAINABLE:
                raise _refuse(f"action {old.id} is {old.status}")
            gen = dict(inp.generations).get(key, 1)
            while await s.get(Action, action_id_for(inc.id, key, gen)) is not None:
                gen += 1
                if gen > MAX_GENERATIONS:
                    raise _refuse(f"{definition.label} {old.target} was applied too often")
            row = await self._new_generation(s, old, key, gen)
            base = incident_base(inc)
            await append(
                s,
                LogEvent(
                    event_key=step.event_key,
                    event="action.requested",
                    actor=step.actor,
                    action=row.action_type,
                    outcome="requested",
                    details={
                        "action_id": row.id,
                        "target": row.target,
                        "risk": row.risk,
                        "rule": row.rule,
                        "duration_seconds": row.duration_seconds,
                        "contain_now": True,
                        "from_action": old.id,
                        **_said(step),
                    },
                    **base,
                ),
            )
            if row.risk == "low":
                event = await apply_enforcement(
                    s, row, inc.technique, now(), actor=step.actor, base=base
                )
                await append(s, event)
            return self._result(row, inc, key)

    def _result(self, row: Action, inc: Incident, key: str) -> ContainNowResult:
        _, _, suffix = row.action_key.partition("#")
        rule = self.ctx.playbook.rule(row.rule) if row.rule else None
        return ContainNowResult(
            action=ref_of(row, inc.technique, action_key=key),
            generation=int(suffix) if suffix else 1,
            quorum=rule.quorum if rule is not None else 1,
        )

    async def _new_generation(self, s: AsyncSession, old: Action, key: str, gen: int) -> Action:
        action_id = action_id_for(old.incident_id, key, gen)
        await s.execute(
            pg_insert(Action)
            .values(
                id=action_id,
                incident_id=old.incident_id,
                action_key=key if gen == 1 else f"{key}#{gen}",
                action_type=old.action_type,
                risk=old.risk,
                tenant=old.tenant,
                target=old.target,
                status="pending_approval" if old.risk == "high" else "planned",
                rule=old.rule,
                params=dict(old.params or {}),
                duration_seconds=old.duration_seconds,
            )
            .on_conflict_do_nothing(index_elements=["id"])
        )
        row = await s.get(Action, action_id, populate_existing=True)
        assert row is not None
        return row

    @activity.defn(name="close_incident_as")
    async def close_incident_as(self, inp: AnalystCloseInput) -> str:
        """Close with a disposition; returns when it closed (ISO 8601)."""
        async with transaction(self.ctx.factory) as s:
            inc = await close_with_disposition(s, inp.step, inp.disposition)
            if inc is None:
                raise _refuse(f"no incident {inp.step.incident_id}")
            return inc.closed_at.isoformat() if inc.closed_at else now().isoformat()

    @activity.defn(name="record_note")
    async def record_note(self, step: AnalystStep) -> None:
        async with transaction(self.ctx.factory) as s:
            inc = await _incident(s, step.incident_id)
            await append(
                s,
                LogEvent(
                    event_key=step.event_key,
                    event="incident.note",
                    actor=step.actor,
                    details={"text": step.reason, "channel": step.channel},
                    **incident_base(inc),
                ),
            )
