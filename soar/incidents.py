"""Closing an incident with a disposition: the one place that writes it (the workflow's
activity for an open incident, the API for one whose workflow has already ended)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession

from soar import actions
from soar.audit.chain import LogEvent, append
from soar.contracts import AnalystStep
from soar.models import Action, ActionLogEntry, Incident


def incident_base(inc: Incident) -> dict[str, Any]:
    return {
        "incident_id": inc.id,
        "tenant": inc.tenant,
        "subject": inc.subject_key,
        "technique": inc.technique,
    }


async def close_with_disposition(
    s: AsyncSession, step: AnalystStep, disposition: str
) -> Incident | None:
    """Close the incident (or, closed already, set its disposition), with one log row: the
    incident's `closed` row when this closes it, else a `disposition_set` row under the
    step's key. A retry writes nothing twice. None when there is no such incident."""
    inc = await s.get(Incident, step.incident_id, with_for_update=True)
    if inc is None:
        return None
    closed_key = f"{inc.id}:closed"
    for key, details in await s.execute(
        select(ActionLogEntry.event_key, ActionLogEntry.details).where(
            ActionLogEntry.event_key.in_((step.event_key, closed_key))
        )
    ):
        if key == step.event_key or (details or {}).get("request") == step.event_key:
            return inc  # a retry of a step that committed
    was_closed = inc.status == "closed"
    values: dict[str, Any] = {
        "disposition": disposition,
        "closed_by": step.actor,
        "close_reason": step.reason or None,
    }
    if not was_closed:
        values |= {"status": "closed", "closed_at": text("now()")}
    await s.execute(update(Incident).where(Incident.id == inc.id).values(**values))
    details = {
        "disposition": disposition,
        "reason": step.reason or None,
        "channel": step.channel,
        "detections": inc.detection_count,
        "severity": inc.severity,
        "request": step.event_key,
    }
    # The incident's one `closed` row when this closes it; a closed incident's disposition
    # set later is its own row.
    key = step.event_key if was_closed else closed_key
    await append(
        s,
        LogEvent(
            event_key=key,
            event="incident.disposition_set" if was_closed else "incident.closed",
            actor=step.actor,
            outcome=disposition,
            details=details,
            **incident_base(inc),
        ),
    )
    await s.refresh(inc)
    return inc


# Actions an analyst may apply again with "contain now": not in force, not waiting.
CONTAINABLE = ("planned", "skipped", "failed", "expired", "lifted", "rejected")
_LIVE = ("applied", "pending_approval", "approved")


def analyst_options(rows: list[Action], at: datetime) -> dict[str, list[str]]:
    """For each action, what an analyst can do with it now: `lift` (in force and not
    irreversible), `extend` (a temporary block in force), `contain` (an enforcement
    action not in force whose kind of action is not in force or awaiting a decision in this
    incident). The workflow decides in the end."""
    live = set()
    for r in rows:
        timed_out = r.status == "applied" and r.expires_at is not None and r.expires_at <= at
        if r.status in _LIVE and not timed_out:
            live.add(r.action_key.split("#", 1)[0])
    out: dict[str, list[str]] = {}
    for r in rows:
        found = actions.find(r.action_type)
        if found is None or not found.enforces:
            continue
        can = []
        in_force = r.status == "applied" and (r.expires_at is None or r.expires_at > at)
        if in_force and not found.irreversible:
            can.append("lift")
        # Every temporary one has a timer in the workflow (an approved one since the patch
        # approved-timer-v1; for an older run the workflow refuses, saying why).
        if in_force and r.expires_at is not None:
            can.append("extend")
        if r.status in CONTAINABLE and r.action_key.split("#", 1)[0] not in live:
            can.append("contain")
        out[r.id] = can
    return out
