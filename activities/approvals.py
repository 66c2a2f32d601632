"""The approval gate's side effects: approval rows, decisions (and the approvals counted
towards a quorum), escalation, expiry, and the messages that tell humans, through every
configured approval channel (`approvals.channels`: Slack, e-mail)."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.containment import SYSTEM
from activities.context import ActivityContext, load_approval_brief, now
from approvals.channels import ApprovalChannel, Outcome, Record
from soar.audit.chain import LogEvent, append
from soar.connectors import ApprovalBrief, ChannelMessage
from soar.contracts import (
    ApprovalEvent,
    ApprovalInput,
    ApprovalOutcome,
    ApprovalRef,
    DecisionRecord,
    approval_id_for,
)
from soar.db import transaction
from soar.models import Action, Approval, ApprovalMessage, Incident

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


def _short(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def merge_votes(existing: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The approvals given, one per approver, in the order given; a fuller entry (from the
    record of that approval itself) replaces a placeholder carried by a later one."""
    merged: dict[str, dict[str, Any]] = {}
    for v in [*existing, *new]:
        key = str(v.get("approver") or v.get("by") or "")
        if not key:
            continue
        if key not in merged or (v.get("channel") and not merged[key].get("channel")):
            merged[key] = {**merged.get(key, {}), **{k: x for k, x in v.items() if x}}
    return list(merged.values())


class ApprovalActivities:
    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    async def _brief(self, approval_id: str) -> ApprovalBrief | None:
        async with self.ctx.factory() as s:
            return await load_approval_brief(
                session=s, settings=self.ctx.settings, approval_id=approval_id
            )

    def _recorder(self, ref: ApprovalRef) -> Record:
        """Keeps what a channel sent, as it is sent (a retry then skips it); an announcement
        is also an audit event."""

        async def record(m: ChannelMessage) -> None:
            async with transaction(self.ctx.factory) as s:
                await s.execute(
                    pg_insert(ApprovalMessage)
                    .values(
                        approval_id=ref.approval_id,
                        channel=m.channel[:16],
                        kind=m.kind[:16],
                        conversation=m.conversation[:320],
                        message_id=m.message_id[:256],
                    )
                    .on_conflict_do_nothing()
                )
                if m.kind != "announce":
                    return
                await append(
                    s,
                    LogEvent(
                        event_key=f"{ref.approval_id}:announced:{m.channel}:{_short(m.conversation)}",
                        event="approval.announced",
                        actor=SYSTEM,
                        outcome="posted",
                        details={
                            "approval_id": ref.approval_id,
                            "channel": m.channel,
                            "conversation": m.conversation,
                            "message_id": m.message_id,
                        },
                        **await _base(s, ref),
                    ),
                )

        return record

    async def _each_channel(
        self,
        ref: ApprovalRef,
        step: Callable[[ApprovalChannel, ApprovalBrief, Record], Awaitable[None]],
        *,
        swallow: bool = False,
    ) -> None:
        """Runs one step on every channel; one channel failing does not keep the others
        from being told. The first failure is raised afterwards (so the step is retried, and
        the channels that succeeded skip what they sent), unless `swallow`."""
        if not self.ctx.channels:
            return
        brief = await self._brief(ref.approval_id)
        if brief is None:
            return
        record = self._recorder(ref)
        failed: Exception | None = None
        for channel in self.ctx.channels:
            try:
                await step(channel, brief, record)
            except Exception as exc:
                log.warning(
                    "approval channel %s failed on %s: %s", channel.name, ref.approval_id, exc
                )
                failed = failed or exc
        if failed is not None and not swallow:
            raise failed

    @activity.defn(name="request_approval")
    async def request_approval(self, inp: ApprovalInput) -> ApprovalRef:
        action = inp.action
        approval_id = approval_id_for(action.action_id)
        rule = self.ctx.playbook.rule(action.rule) if action.rule else None
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
                    quorum=inp.quorum or (rule.quorum if rule else 1),
                    approver_groups=list(rule.approvers) if rule else [],
                    escalate_to=rule.escalate_to if rule else None,
                    votes=[],
                    requested_by=inp.requested_by or None,
                )
                s.add(row)
                await s.flush()
            ref = ApprovalRef(approval_id, action, row.expires_at.isoformat(), quorum=row.quorum)
            details: dict[str, Any] = {
                "approval_id": approval_id,
                "action_id": action.action_id,
                "target": action.target,
                "expires_at": ref.expires_at,
                "rule": action.rule,
            }
            if inp.requested_by:
                details["requested_by"] = inp.requested_by
            if row.quorum > 1 or row.approver_groups or row.escalate_to:
                details |= {
                    "quorum": row.quorum,
                    "approvers": list(row.approver_groups or ()),
                    "escalate_to": row.escalate_to,
                }
            await append(
                s,
                LogEvent(
                    event_key=f"{approval_id}:requested",
                    event="approval.requested",
                    actor=inp.requested_by or SYSTEM,
                    outcome="pending",
                    details=details,
                    **await _base(s, ref),
                ),
            )
        return ref

    @activity.defn(name="announce_approval")
    async def announce_approval(self, ref: ApprovalRef) -> None:
        await self._each_channel(ref, lambda ch, brief, rec: ch.announce(brief, rec))

    @activity.defn(name="record_decision")
    async def record_decision(self, rec: DecisionRecord) -> None:
        ref = rec.approval
        counted = rec.decision == "approve" and rec.quorum > 1
        final = not (counted and len(rec.votes) < rec.quorum)
        status = "approved" if rec.decision == "approve" else "rejected"
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Approval, ref.approval_id, with_for_update=True)
            if row is None:  # its request_approval has not run yet: retried until it has
                raise ApplicationError(f"approval {ref.approval_id} is not recorded yet")
            if counted:
                mine = {
                    "by": rec.actor,
                    "approver": rec.approver,
                    "channel": rec.channel,
                    "at": rec.decided_at,
                    "comment": rec.comment,
                }
                earlier = [
                    {"by": by, "approver": who}
                    for by, who in zip(rec.votes, rec.approvers or rec.votes, strict=False)
                    if by != rec.actor
                ]
                row.votes = merge_votes(list(row.votes or ()), [*earlier, mine])
            if final and row.status == "pending":
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
            base = await _base(s, ref)
            if counted:
                await append(
                    s,
                    LogEvent(
                        event_key=f"{ref.approval_id}:vote:{_short(rec.approver or rec.actor)}",
                        event="approval.vote",
                        actor=rec.actor,
                        outcome="approve",
                        details={
                            "approval_id": ref.approval_id,
                            "action_id": ref.action.action_id,
                            "decision": rec.decision,
                            "channel": rec.channel,
                            "comment": rec.comment,
                            "approvals": len(rec.votes),
                            "quorum": rec.quorum,
                        },
                        **base,
                    ),
                )
            if not final:
                return
            details: dict[str, Any] = {
                "approval_id": ref.approval_id,
                "action_id": ref.action.action_id,
                "decision": rec.decision,
                "channel": rec.channel,
                "comment": rec.comment,
            }
            if rec.quorum > 1:
                details |= {"quorum": rec.quorum, "approved_by": list(rec.votes)}
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.approval_id}:decided",
                    event="approval.decided",
                    actor=rec.actor,
                    outcome=status,
                    details=details,
                    **base,
                ),
            )

    @activity.defn(name="show_approval_outcome")
    async def show_approval_outcome(self, out: ApprovalOutcome) -> None:
        """Separate from record_decision so that a slow channel never delays the answer to
        the person deciding (the update returns once the decision is recorded). Runs on the
        external queue; a channel's error is raised, so the step is retried with backoff
        until the workflow gives it up and logs that."""
        await self._show(out.approval, Outcome(out.status, out.by, out.at), swallow=False)

    async def _show(self, ref: ApprovalRef, outcome: Outcome, *, swallow: bool = True) -> None:
        """Tell every channel; an outage of one must not undo or delay the decision."""

        def step(ch: ApprovalChannel, brief: ApprovalBrief, rec: Record) -> Awaitable[None]:
            if outcome.status == "expired":
                return ch.expire(brief, outcome, rec)
            return ch.show_outcome(brief, outcome, rec)

        await self._each_channel(ref, step, swallow=swallow)

    @activity.defn(name="escalate_approval")
    async def escalate_approval(self, ev: ApprovalEvent) -> None:
        ref = ev.approval
        async with transaction(self.ctx.factory) as s:
            row = await s.get(Approval, ref.approval_id, with_for_update=True)
            details: dict[str, Any] = {"approval_id": ref.approval_id, "expires_at": ref.expires_at}
            if row is not None and row.status == "pending":
                # From now on the escalation group may decide too (soar.approvers.groups_now).
                row.escalated_at = row.escalated_at or now()
                if row.escalate_to:
                    details["escalate_to"] = row.escalate_to
            await append(
                s,
                LogEvent(
                    event_key=f"{ref.approval_id}:escalated",
                    event="approval.escalated",
                    actor=SYSTEM,
                    outcome="pending",
                    details=details,
                    **await _base(s, ref),
                ),
            )
        if ev.notify:  # older runs: no separate reminder step
            await self._each_channel(
                ref, lambda ch, brief, rec: ch.remind(brief, rec), swallow=True
            )

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
            await self._show(ref, Outcome("expired", None, now().isoformat()))

    @activity.defn(name="remind_approval")
    async def remind_approval(self, ref: ApprovalRef) -> None:
        """The channels' half of an escalation (external queue); escalate_approval, on the
        core queue, has logged it already. Raises on a channel's error so it is retried."""
        await self._each_channel(ref, lambda ch, brief, rec: ch.remind(brief, rec))
