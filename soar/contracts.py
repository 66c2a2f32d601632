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
    applied: tuple[ActionRef, ...]  # enforcement already effective
    deferred: tuple[ActionRef, ...]  # low risk, run right after (notice, ticket)
    needs_approval: tuple[ActionRef, ...]
    # (action id, quorum) of the approvals whose rule needs more than one approval; known to
    # the workflow before the approval is requested, so no decision can be taken as if the
    # rule needed one.
    quorums: tuple[tuple[str, int], ...] = ()
    # What this worker has connectors for, so the workflow schedules no step that would
    # only find out there is nothing to do.
    ticketing: bool = True
    hooked: tuple[str, ...] | None = None  # action types with an outbound hook; None: all
    # Where this worker deployment runs external steps, and their retry budget; the
    # workflow uses them unless its input names its own. "" / 0: not said.
    external_task_queue: str = ""
    external_max_age_seconds: int = 0


@dataclass(frozen=True)
class EnrichInput:
    incident_id: str
    detection: DetectionFacts


@dataclass(frozen=True)
class EnrichResult:
    risk_score: float
    summary: str
    # The summary is written already (the offline one, by enrich_incident): the workflow
    # does not ask summarise_incident for it. Absent from older histories: False.
    summarised: bool = False


@dataclass(frozen=True)
class SummariseInput:
    incident_id: str
    detection: DetectionFacts
    risk_score: float | None = None


@dataclass(frozen=True)
class SummaryResult:
    written_by: str  # offline | model
    outcome: str  # what the summariser did (see soar.summaries.CallRecord)
    # A comment for the ticket ("" for none): only model-written summaries get one.
    note: str = ""


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
    quorum: int = 0  # as the workflow counts it; 0 (older runs): the rule's
    requested_by: str = ""  # an analyst's "contain now"; "" for the playbook


def approval_id_for(action_id: str) -> str:
    """Deterministic, so the workflow knows an approval's id before the activity that
    creates its row has reported back (a worker may die in between)."""
    return "apr-" + hashlib.sha256(action_id.encode()).hexdigest()[:24]


@dataclass(frozen=True)
class ApprovalRef:
    approval_id: str
    action: ActionRef
    expires_at: str
    # Distinct approvals the rule requires (playbook `quorum`); 1 in runs that predate it.
    quorum: int = 1


@dataclass(frozen=True)
class DecisionRecord:
    approval: ApprovalRef
    decision: str  # approve | reject
    actor: str
    channel: str
    comment: str | None
    decided_at: str
    approver: str = ""  # DecisionRequest.approver
    # Everyone who approved so far, this decision included (actor strings), and the quorum:
    # an approval short of its quorum is counted, the approval stays pending.
    votes: tuple[str, ...] = ()
    quorum: int = 1
    approvers: tuple[str, ...] = ()  # the principal names behind `votes`, in the same order


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
    # True (what older workflow runs send): the activity also posts to Slack itself. The
    # current workflow sends False and posts through a separate step on the external queue.
    notify: bool = True


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


@dataclass(frozen=True)
class StepFailure:
    """An external step given up after its retry budget: logged once, under `event_key`."""

    incident_id: str
    step: str  # announce_approval | remind_approval | show_approval_outcome | note_ticket ...
    event: str  # the log row's event, e.g. approval.announce_failed, ticket.failed
    event_key: str
    reason: str
    action: ActionRef | None = None
    approval_id: str | None = None


# --- an analyst's actions (update `analyst_action`, activities/analyst.py) ----------------


@dataclass(frozen=True)
class AnalystStep:
    """Who asked, why, and the key of the log row (stable across retries and replays)."""

    incident_id: str
    actor: str
    reason: str
    event_key: str
    channel: str = "api"


@dataclass(frozen=True)
class LiftInput:
    step: AnalystStep
    action_id: str
    expires_at: str | None = None  # the block's expiry, when it is a timed one


@dataclass(frozen=True)
class LiftResult:
    """When it was lifted, and the action (for the workflow's state and the "lifted" hook)."""

    at: str
    action: ActionRef


@dataclass(frozen=True)
class ExtendInput:
    step: AnalystStep
    action_id: str
    expires_at: str  # the new expiry


@dataclass(frozen=True)
class ContainNowInput:
    step: AnalystStep
    action_id: str  # the planned (not in force) action to apply now
    active_keys: tuple[str, ...] = ()
    generations: tuple[tuple[str, int], ...] = ()


@dataclass(frozen=True)
class ContainNowResult:
    action: ActionRef  # the new generation: applied, planned (run next) or pending_approval
    generation: int
    quorum: int = 1


@dataclass(frozen=True)
class AnalystCloseInput:
    step: AnalystStep
    disposition: str
