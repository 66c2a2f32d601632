"""The approval gate's side effects: approval rows, decisions, escalation, expiry, and the
messages that tell humans (through the Notifier, i.e. Slack when configured)."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.containment import SYSTEM
from activities.context import ActivityContext, load_approval_brief, now
from soar.audit.chain import LogEvent, append
from soar.connectors import ApprovalBrief
from soar.contracts import (
    ApprovalEvent,
    ApprovalInput,
    ApprovalOutcome,
    ApprovalRef,
    DecisionRecord,
    approval_id_for,
)
from soar.db import transaction
from soar.models import Action, Approval, Incident

log = logging.getLogger("soar.approvals")


async def _base(s: AsyncSession, ref: ApprovalRef) -> dict[str, Any]:
    inc = await s.get(Incident, ref.action.incident_id)
    return {
        "incident_id": ref.action.incident_id,
        "tenant": ref.action.tenant,
        "subject": inc.subject_key if inc else None,
        "technique": ref.action.technique,
        "action": ref.action.action_type,
    }


class ApprovalActivities:
    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    async def _brief(self, approval_id: str) -> ApprovalBrief | None:
        async with self.ctx.factory() as s:
            return await load_approval_brief(
                session=s, settings=self.ctx.settings, approval_id=approval_id
            )

    @activity.defn(name="request_approval")
    async def request_approval(self, inp: ApprovalInput) -> ApprovalRef:
        action = inp.action
        approval_id = approval_id_for(action.action_id)
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Approval, approval_id)
            if row is None:
                at = now()
                row = Approval(
                    id=approval_id,
                    incident_id=action.incident_id,
                    action_id=action.action_id,
                    workflow_id=activity.info().workflow_id,
                    status="pending",
                    requested_at=at,
                    expires_at=at + timedelta(seconds=inp.timeout_seconds),
                )
                s.add(row)
                await s.flush()
            ref = ApprovalRef(approval_id, action, row.expires_at.isoformat())
            await append(
                s,
                LogEvent(
                    event_key=f"{approval_id}:requested",
                    event="approval.requested",
                    actor=SYSTEM,
                    outcome="pending",
                    details={
                        "approval_id": approval_id,
                        "action_id": action.action_id,
                        "target": action.target,
                        "expires_at": ref.expires_at,
                        "rule": action.rule,
                    },
                    **await _base(s, ref),
                ),
            )
        return ref

    @activity.defn(name="announce_approval")
    async def announce_approval(self, ref: ApprovalRef) -> None:
        if not self.ctx.notifier.enabled:
            return
        brief = await self._brief(ref.approval_id)
        if brief is None or brief.slack_ts:
            return  # already posted by an earlier attempt
        posted = await asyncio.to_thread(self.ctx.notifier.announce_approval, brief)
        if posted is None:
            return
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Approval, ref.approval_id, with_for_update=True)
            if row is not None:
                row.slack_channel, row.slack_ts = posted.channel, posted.ts
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.approval_id}:announced",
                    event="approval.announced",
                    actor=SYSTEM,
                    outcome="posted",
                    details={
                        "approval_id": ref.approval_id,
                        "channel": posted.channel,
                        "ts": posted.ts,
                    },
                    **await _base(s, ref),
                ),
            )

    @activity.defn(name="record_decision")
    async def record_decision(self, rec: DecisionRecord) -> None:
        ref = rec.approval
        status = "approved" if rec.decision == "approve" else "rejected"
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Approval, ref.approval_id, with_for_update=True)
            if row is None:  # its request_approval has not run yet: retried until it has
                raise ApplicationError(f"approval {ref.approval_id} is not recorded yet")
            if row.status == "pending":
                row.status = status
                row.decided_at = datetime.fromisoformat(rec.decided_at)
                row.decided_by = rec.actor
                row.decision_channel = rec.channel
                row.comment = rec.comment
                action = await s.get(Action, row.action_id)
                if action is not None and status == "rejected":
                    action.status, action.finished_at = "rejected", now()
                elif action is not None:
                    action.status = "approved"
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.approval_id}:decided",
                    event="approval.decided",
                    actor=rec.actor,
                    outcome=status,
                    details={
                        "approval_id": ref.approval_id,
                        "action_id": ref.action.action_id,
                        "decision": rec.decision,
                        "channel": rec.channel,
                        "comment": rec.comment,
                    },
                    **await _base(s, ref),
                ),
            )

    @activity.defn(name="show_approval_outcome")
    async def show_approval_outcome(self, out: ApprovalOutcome) -> None:
        """Separate from record_decision so that a slow Slack never delays the answer to
        the person deciding (the update returns once the decision is recorded). Runs on the
        external queue; a Slack error is raised, so the step is retried with backoff until
        the workflow gives it up and logs that."""
        await self._show(out.approval.approval_id, out.status, out.by, out.at, swallow=False)

    async def _show(
        self, approval_id: str, status: str, by: str | None, at: str, *, swallow: bool = True
    ) -> None:
        """Update the Slack message; a Slack outage must not undo or delay the decision."""
        if not self.ctx.notifier.enabled:
            return
        brief = await self._brief(approval_id)
        if brief is None or not brief.slack_ts:
            return
        try:
            await asyncio.to_thread(self.ctx.notifier.show_outcome, brief, status, by, at)
        except Exception as exc:
            if not swallow:
                raise
            log.warning("could not update the Slack message of %s: %s", approval_id, exc)

    @activity.defn(name="escalate_approval")
    async def escalate_approval(self, ev: ApprovalEvent) -> None:
        ref = ev.approval
        async with transaction(self.ctx.factory) as s:
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.approval_id}:escalated",
                    event="approval.escalated",
                    actor=SYSTEM,
                    outcome="pending",
                    details={"approval_id": ref.approval_id, "expires_at": ref.expires_at},
                    **await _base(s, ref),
                ),
            )
        if ev.notify and self.ctx.notifier.enabled:  # older runs: no separate reminder step
            brief = await self._brief(ref.approval_id)
            if brief is not None and brief.slack_ts:
                try:
                    await asyncio.to_thread(self.ctx.notifier.remind, brief)
                except Exception as exc:
                    log.warning("could not send the reminder for %s: %s", ref.approval_id, exc)

    @activity.defn(name="expire_approval")
    async def expire_approval(self, ev: ApprovalEvent) -> None:
        ref = ev.approval
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Approval, ref.approval_id, with_for_update=True)
            if row is not None and row.status == "pending":
                row.status = "expired"
                action = await s.get(Action, row.action_id)
                if action is not None:
                    action.status, action.finished_at = "expired", now()
            base = await _base(s, ref)
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.approval_id}:expired",
                    event="approval.expired",
                    actor=SYSTEM,
                    outcome="expired",
                    details={
                        "approval_id": ref.approval_id,
                        "action_id": ref.action.action_id,
                        "action_taken": False,
                    },
                    **base,
                ),
            )
        if ev.notify:  # older runs: no separate show_approval_outcome step
            await self._show(ref.approval_id, "expired", None, now().isoformat())

    @activity.defn(name="remind_approval")
    async def remind_approval(self, ref: ApprovalRef) -> None:
        """The Slack half of an escalation (external queue); escalate_approval, on the core
        queue, has logged it already. Raises on a Slack error so it is retried."""
        if not self.ctx.notifier.enabled:
            return
        brief = await self._brief(ref.approval_id)
        if brief is None or not brief.slack_ts:
            return  # never announced: nothing to reply to
        await asyncio.to_thread(self.ctx.notifier.remind, brief)
