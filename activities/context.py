"""What every activity class gets from the worker: the database, settings, the playbook and
the connectors. Built once per worker process."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from approvals.channels import ApprovalChannel
from approvals.principals import approver_contacts
from soar.atlas.store import technique_info
from soar.config import Settings
from soar.connectors import (
    ApprovalBrief,
    ChannelMessage,
    IncidentBrief,
    Notifier,
    NullNotifier,
    NullTicketing,
    Ticketing,
    Vote,
)
from soar.contracts import ActionRef
from soar.hooks import HookClient
from soar.models import Action, Approval, ApprovalMessage, Detection, Incident
from soar.policy import Playbook
from soar.summaries import OfflineSummariser, Summariser, Summary

SYSTEM = "system:atlas-soar"


@dataclass
class ActivityContext:
    factory: async_sessionmaker[AsyncSession]
    settings: Settings
    playbook: Playbook
    hooks: HookClient
    notifier: Notifier = field(default_factory=NullNotifier)
    ticketing: Ticketing = field(default_factory=NullTicketing)
    # Every configured approval channel (approvals.channels.configured_channels).
    channels: tuple[ApprovalChannel, ...] = ()
    summariser: Summariser = field(default_factory=OfflineSummariser)


def now() -> datetime:
    return datetime.now(UTC)


def action_id_for(incident_id: str, action_key: str, generation: int) -> str:
    digest = hashlib.sha256(f"{incident_id}|{action_key}|{generation}".encode()).hexdigest()
    return f"act-{digest[:28]}"


def ref_of(row: Action, technique: str, *, action_key: str | None = None) -> ActionRef:
    return ActionRef(
        action_id=row.id,
        incident_id=row.incident_id,
        action_key=action_key or row.action_key,
        action_type=row.action_type,
        risk=row.risk,
        tenant=row.tenant,
        target=row.target,
        technique=technique,
        duration_seconds=row.duration_seconds,
        expires_at=row.expires_at.isoformat() if row.expires_at else None,
        status=row.status,
        rule=row.rule,
    )


async def incident_brief(
    session: AsyncSession, incident_id: str, settings: Settings
) -> IncidentBrief:
    inc = await session.get(Incident, incident_id)
    if inc is None:
        raise LookupError(f"incident {incident_id} not found")
    info = await technique_info(session, inc.technique)
    excerpt = await session.scalar(
        select(Detection.excerpt)
        .where(Detection.incident_id == incident_id, Detection.excerpt.is_not(None))
        .order_by(Detection.received_at.desc())
        .limit(1)
    )
    applied = (
        await session.scalars(
            select(Action)
            .where(Action.incident_id == incident_id, Action.applied_at.is_not(None))
            .order_by(Action.applied_at)
        )
    ).all()
    planned = (
        await session.scalars(
            select(Action)
            .where(Action.incident_id == incident_id, Action.applied_at.is_(None))
            .where(Action.status.in_(("planned", "pending_approval", "approved")))
            .order_by(Action.created_at)
        )
    ).all()
    tactic = info.tactics[0] if info and info.tactics else None
    analysis = (inc.enrichment or {}).get("analysis")
    return IncidentBrief(
        incident_id=inc.id,
        tenant=inc.tenant,
        subject=inc.subject_key,
        technique=inc.technique,
        technique_name=info.name if info else inc.technique,
        tactic=tactic[0] if tactic else None,
        tactic_name=tactic[1] if tactic else None,
        severity=inc.severity,
        risk_score=inc.risk_score,
        excerpt=excerpt,
        auto_actions=tuple(f"{a.action_type} {a.target}" for a in applied),
        planned_actions=tuple(f"{a.action_type} {a.target} ({a.status})" for a in planned),
        ticket_key=inc.ticket_key,
        ticket_url=inc.ticket_url,
        url=f"{settings.base_url}/ui/incidents/{inc.id}",
        analysis=Summary.from_json(analysis) if isinstance(analysis, dict) else None,
    )


async def load_approval_brief(
    *, session: AsyncSession, settings: Settings, approval_id: str
) -> ApprovalBrief | None:
    """The brief for an approval row: what every channel and the UI show about it."""
    row = await session.get(Approval, approval_id)
    if row is None:
        return None
    action = await session.get(Action, row.action_id)
    if action is None:
        return None
    incident = await incident_brief(session, row.incident_id, settings)
    return ApprovalBrief(
        approval_id=row.id,
        action_type=action.action_type,
        target=action.target,
        expires_at=row.expires_at.isoformat(),
        incident=incident,
        messages=tuple(
            ChannelMessage(m.channel, m.kind, m.conversation, m.message_id)
            for m in await session.scalars(
                select(ApprovalMessage)
                .where(ApprovalMessage.approval_id == row.id)
                .order_by(ApprovalMessage.id)
            )
        ),
        approvers=await approver_contacts(session=session, settings=settings, approval=row),
        status=row.status,
        quorum=row.quorum,
        votes=votes_of(row),
        approver_groups=tuple(row.approver_groups or ()),
        escalate_to=row.escalate_to,
        escalated=row.escalated_at is not None,
        risk=action.risk,
        rule=action.rule,
        duration_seconds=action.duration_seconds,
    )


def votes_of(row: Approval) -> tuple[Vote, ...]:
    return tuple(
        Vote(
            by=str(v.get("by", "")),
            channel=str(v.get("channel", "")),
            at=str(v.get("at", "")),
            approver=str(v.get("approver", "")),
        )
        for v in row.votes or ()
        if isinstance(v, dict)
    )
