"""Inputs and results of the activities the incident workflow calls: frozen dataclasses of
plain values, shared by `workflows/` (which must stay deterministic) and `activities/`."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from soar.domain import DetectionFacts


@dataclass(frozen=True)
class ActionRef:
    """One action of an incident. `action_id` is its idempotency key: the same on every
    retry and replay, and the key carried by every outbound hook call."""

    action_id: str
    incident_id: str
    action_key: str
    action_type: str
    risk: str
    tenant: str
    target: str
    technique: str
    duration_seconds: int | None = None
    expires_at: str | None = None  # set once a temporary block is applied
    status: str = "planned"
    rule: str = ""


@dataclass(frozen=True)
class ContainInput:
    incident_id: str
    detection: DetectionFacts
    repeat_count: int
    active_keys: tuple[str, ...] = ()
    generations: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ContainResult:
    tactic: str | None
    applied: tuple[ActionRef, ...]  # enforcement already effective
    deferred: tuple[ActionRef, ...]  # low risk, run right after (notice, ticket)
    needs_approval: tuple[ActionRef, ...]
    rules_fired: tuple[str, ...] = ()
    # What this worker has connectors for, so the workflow schedules no step that would
    # only find out there is nothing to do.
    ticketing: bool = True
    hooked: tuple[str, ...] | None = None  # action types with an outbound hook; None: all


@dataclass(frozen=True)
class EnrichInput:
    incident_id: str
    detection: DetectionFacts


@dataclass(frozen=True)
class EnrichResult:
    risk_score: float
    tactic: str | None
    summary: str


@dataclass(frozen=True)
class ActionOutcome:
    action_id: str
    status: str  # applied | failed | skipped | lifted
    detail: str = ""


@dataclass(frozen=True)
class HookInput:
    action: ActionRef
    event: str  # applied | lifted


@dataclass(frozen=True)
class ApprovalInput:
    action: ActionRef
    timeout_seconds: int


def approval_id_for(action_id: str) -> str:
    """Deterministic, so the workflow knows an approval's id before the activity that
    creates its row has reported back (a worker may die in between)."""
    return "apr-" + hashlib.sha256(action_id.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ApprovalRef:
    approval_id: str
    action: ActionRef
    expires_at: str


@dataclass(frozen=True)
class DecisionRecord:
    approval: ApprovalRef
    decision: str  # approve | reject
    actor: str
    channel: str
    comment: str | None
    decided_at: str


@dataclass(frozen=True)
class ApprovalOutcome:
    """Shown to the humans (the Slack message) after a decision is recorded."""

    approval: ApprovalRef
    status: str
    by: str | None
    at: str


@dataclass(frozen=True)
class ApprovalEvent:
    approval: ApprovalRef
    event: str  # escalated | expired


@dataclass(frozen=True)
class CloseInput:
    incident_id: str
    quiet_seconds: int


@dataclass(frozen=True)
class FailureInput:
    action: ActionRef
    reason: str
    hook_event: str | None = None  # set when only the outbound hook failed, not the action


@dataclass(frozen=True)
class TicketNote:
    """A comment on the incident's ticket; `event_key` makes it idempotent."""

    incident_id: str
    event_key: str
    text: str
