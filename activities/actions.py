"""Running actions: enforcement (approved high-risk ones), notices, tickets, outbound hooks,
and lifting a temporary block when its timer fires."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import select, update
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.containment import apply_enforcement
from activities.context import SYSTEM, ActivityContext, incident_brief, now
from soar import actions
from soar.audit.chain import LogEvent, append
from soar.contracts import ActionOutcome, ActionRef, FailureInput, HookInput, StepFailure
from soar.db import transaction
from soar.domain import TimedBlock
from soar.enforcement import lift_block
from soar.hooks import HookError
from soar.models import Action, Incident


def _base(ref: ActionRef, incident: Incident | None) -> dict[str, Any]:
    return {
        "incident_id": ref.incident_id,
        "tenant": ref.tenant,
        "subject": incident.subject_key if incident else None,
        "technique": ref.technique,
    }


class ActionActivities:
    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    @activity.defn(name="run_action")
    async def run_action(self, ref: ActionRef) -> ActionOutcome:
        definition = actions.find(ref.action_type)
        if definition is None:
            raise ApplicationError(f"unknown action type {ref.action_type}", non_retryable=True)
        if definition.enforces:
            async with transaction(self.ctx.factory) as s:
                row = await s.get(Action, ref.action_id, with_for_update=True)
                if row is None:
                    raise ApplicationError(f"unknown action {ref.action_id}", non_retryable=True)
                if row.status != "applied":
                    inc = await s.get(Incident, ref.incident_id)
                    event = await apply_enforcement(
                        s, row, ref.technique, now(), actor=SYSTEM, base=_base(ref, inc)
                    )
                    await append(s, event)
            return ActionOutcome(ref.action_id, "applied")
        if definition.executor == "notice":
            return await self._notify(ref)
        return await self._open_ticket(ref)

    async def _finish(self, ref: ActionRef, status: str, detail: dict[str, Any]) -> None:
        async with transaction(self.ctx.factory) as s:
            await s.execute(
                update(Action)
                .where(Action.id == ref.action_id)
                .values(
                    status=status,
                    applied_at=now() if status == "applied" else None,
                    finished_at=now(),
                    error=detail.get("reason"),
                )
            )
            inc = await s.get(Incident, ref.incident_id)
            definition = actions.find(ref.action_type)
            if status == "applied" and "ticket_key" in detail and inc is not None:
                inc.ticket_key = detail.get("ticket_key")
                inc.ticket_url = detail.get("ticket_url")
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.action_id}:{status}",
                    event=definition.applied_event
                    if definition is not None and status == "applied"
                    else f"action.{status}",
                    actor=SYSTEM,
                    action=ref.action_type,
                    outcome=status,
                    details={"action_id": ref.action_id, "target": ref.target, **detail},
                    **_base(ref, inc),
                ),
            )

    async def _notify(self, ref: ActionRef) -> ActionOutcome:
        async with self.ctx.factory() as s:
            done = await s.scalar(select(Action.status).where(Action.id == ref.action_id))
        if done in ("applied", "skipped"):  # a retry after the notice went out
            return ActionOutcome(ref.action_id, done)
        notifier = self.ctx.notifier
        if not notifier.enabled:
            await self._finish(ref, "skipped", {"reason": "Slack is not configured"})
            return ActionOutcome(ref.action_id, "skipped", "Slack is not configured")
        async with self.ctx.factory() as s:
            brief = await incident_brief(s, ref.incident_id, self.ctx.settings)
        text = (
            f"{brief.technique} {brief.technique_name} on {brief.subject} "
            f"(severity {brief.severity}); contained: {', '.join(brief.auto_actions) or 'none'}"
        )
        await asyncio.to_thread(notifier.notice, brief, text)
        await self._finish(ref, "applied", {"channel": ref.target})
        return ActionOutcome(ref.action_id, "applied")

    async def _open_ticket(self, ref: ActionRef) -> ActionOutcome:
        ticketing = self.ctx.ticketing
        if not ticketing.enabled:
            await self._finish(ref, "skipped", {"reason": "Jira is not configured"})
            return ActionOutcome(ref.action_id, "skipped", "Jira is not configured")
        async with self.ctx.factory() as s:
            brief = await incident_brief(s, ref.incident_id, self.ctx.settings)
            inc = await s.get(Incident, ref.incident_id)
            description = (inc.enrichment or {}).get("summary", "") if inc else ""
        key, url = await asyncio.to_thread(ticketing.ensure_ticket, brief, description)
        await self._finish(ref, "applied", {"ticket_key": key, "ticket_url": url})
        return ActionOutcome(ref.action_id, "applied", key)

    @activity.defn(name="record_action_failure")
    async def record_action_failure(self, inp: FailureInput) -> None:
        if inp.hook_event is None:
            await self._finish(inp.action, "failed", {"reason": inp.reason})
            return
        # The action itself is in force: only the notice to the outside failed.
        ref = inp.action
        async with transaction(self.ctx.factory) as s:
            inc = await s.get(Incident, ref.incident_id)
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.action_id}:hook-{inp.hook_event}-failed",
                    event="action.hook_failed",
                    actor=SYSTEM,
                    action=ref.action_type,
                    outcome="failed",
                    details={
                        "action_id": ref.action_id,
                        "target": ref.target,
                        "hook_event": inp.hook_event,
                        "reason": inp.reason,
                    },
                    **_base(ref, inc),
                ),
            )

    @activity.defn(name="record_step_failure")
    async def record_step_failure(self, inp: StepFailure) -> None:
        """An external step (Slack post, Jira comment, ...) the workflow gave up on after its
        retry budget: one log row, so nothing is dropped silently. Core queue."""
        async with transaction(self.ctx.factory) as s:
            inc = await s.get(Incident, inp.incident_id)
            ref = inp.action
            await append(
                s,
                LogEvent(
                    event_key=inp.event_key,
                    event=inp.event,
                    actor=SYSTEM,
                    action=ref.action_type if ref else inp.step,
                    outcome="failed",
                    incident_id=inp.incident_id,
                    tenant=ref.tenant if ref else (inc.tenant if inc else None),
                    subject=inc.subject_key if inc else None,
                    technique=ref.technique if ref else (inc.technique if inc else None),
                    details={
                        "step": inp.step,
                        "reason": inp.reason[:500],
                        "approval_id": inp.approval_id,
                        "action_id": ref.action_id if ref else None,
                        "ticket_key": inc.ticket_key if inc else None,
                    },
                ),
            )

    @activity.defn(name="lift_block")
    async def lift_block(self, block: TimedBlock) -> bool:
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Action, block.action_id, with_for_update=True)
            if row is None:
                return False
            lifted = await lift_block(s, action_id=block.action_id, now=now())
            if row.status == "applied":  # (not one an analyst lifted meanwhile)
                row.status = "expired"
            row.finished_at = row.finished_at or now()
            inc = await s.get(Incident, row.incident_id)
            await append(
                s,
                LogEvent(
                    event_key=f"{row.id}:lifted",
                    event="action.rolled_back",
                    actor=SYSTEM,
                    action=row.action_type,
                    outcome="expired",
                    incident_id=row.incident_id,
                    tenant=row.tenant,
                    subject=inc.subject_key if inc else None,
                    technique=inc.technique if inc else None,
                    details={
                        "action_id": row.id,
                        "target": row.target,
                        "unblocked": True,
                        "was_active": lifted,
                        "expired_at": block.expires_at,
                    },
                ),
            )
        return True

    @activity.defn(name="deliver_hook")
    async def deliver_hook(self, inp: HookInput) -> int | None:
        if not self.ctx.hooks.configured(inp.action.action_type):
            return None
        try:
            return await asyncio.to_thread(self.ctx.hooks.deliver, inp.action, inp.event)
        except HookError as exc:
            raise ApplicationError(str(exc)) from exc
