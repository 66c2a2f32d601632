"""Domain types shared by the API, the workflows and the activities.

Everything that crosses a Temporal boundary is a frozen dataclass of plain values so that
the data converter serialises it and workflow code stays deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Severity(StrEnum):
    info = "info"
    low = "low"
    medium = "medium"
    high = "high"
    critical = "critical"

    @property
    def rank(self) -> int:
        return _SEVERITY_RANK[self]


_SEVERITY_RANK = {
    Severity.info: 0,
    Severity.low: 1,
    Severity.medium: 2,
    Severity.high: 3,
    Severity.critical: 4,
}


class Risk(StrEnum):
    low = "low"
    high = "high"


class Role(StrEnum):
    analyst = "analyst"
    approver = "approver"
    auditor = "auditor"
    admin = "admin"
    gateway = "gateway"  # read-only, enforcement checks and the block stream only


# Who may decide approvals (API, Slack, web UI, and the workflow's own check).
DECIDER_ROLES = frozenset({Role.approver.value, Role.admin.value})
# Who may act on an incident: lift or extend a block, contain now, close, add a note (API,
# web UI, and the workflow's own check).
ANALYST_ROLES = frozenset({Role.analyst.value, Role.admin.value})

# How an analyst closes an incident (stored on the incident, counted in reports).
DISPOSITIONS = ("true_positive", "false_positive", "benign")
ANALYST_KINDS = ("lift", "extend", "contain", "close", "note")
MAX_REASON = 1000  # an analyst's reason or note: attacker-reachable text, bounded
MAX_EXTEND_SECONDS = 7 * 24 * 3600


@dataclass(frozen=True)
class Subject:
    tenant: str = "default"
    user: str | None = None
    session: str | None = None
    api_key: str | None = None

    @property
    def key(self) -> str:
        """The identity an incident is correlated on: the most durable one present."""
        if self.user:
            return f"user:{self.user}"
        if self.api_key:
            return f"api_key:{self.api_key}"
        return f"session:{self.session}"


@dataclass(frozen=True)
class DetectionFacts:
    """A detection as the workflow sees it: validated, redacted, never the raw prompt."""

    detection_id: str  # the source's id (idempotency key)
    technique: str
    severity: str
    confidence: float
    source: str
    observed_at: str  # ISO 8601
    subject: Subject
    prompt_sha256: str | None = None
    excerpt: str | None = None
    model: str | None = None
    received_at: str = ""

    @property
    def key(self) -> str:
        """Unique per source, as the intake deduplicates: (source, id)."""
        return f"{self.source}/{self.detection_id}"


@dataclass(frozen=True)
class PlannedAction:
    """One action the playbook asks for. `key` is stable for the incident so that the same
    action is never planned or applied twice."""

    action_type: str
    risk: str
    target: str  # what the action applies to (a session id, a channel, ...: see soar.actions)
    params: dict[str, str] = field(default_factory=dict)
    duration_seconds: int | None = None  # temporary actions lift themselves after this
    rule: str = ""

    @property
    def key(self) -> str:
        return f"{self.action_type}:{self.target}"


@dataclass(frozen=True)
class Plan:
    actions: tuple[PlannedAction, ...] = ()
    rules_fired: tuple[str, ...] = ()


# --- what crosses the workflow boundary ------------------------------------------------------

WORKFLOW_PREFIX = "incident-"
SIGNAL_DETECTION = "add_detection"
UPDATE_DECIDE = "decide"
UPDATE_ANALYST = "analyst_action"


def workflow_id_for(incident_id: str) -> str:
    return f"{WORKFLOW_PREFIX}{incident_id}"


@dataclass(frozen=True)
class IncidentInput:
    incident_id: str
    tenant: str
    subject_key: str
    correlation_window_seconds: int = 3600
    approval_timeout_seconds: int = 4 * 3600
    carried: CarriedState | None = None  # set on continue-as-new
    # The task queue of the external steps (Slack, Jira, outbound hooks), a bulkhead apart
    # from containment and decisions. "": the worker's setting as reported by containment,
    # else the workflow's own queue (what histories started before this field saw).
    external_task_queue: str = ""
    # How long an external step is retried (growing backoff) before it is given up and
    # logged as failed. 0: the worker's setting, else 3600.
    external_max_age_seconds: int = 0
    # Detections handled per run before continue-as-new. 0: the workflow's default.
    max_detections_per_run: int = 0


@dataclass(frozen=True)
class TimedBlock:
    """A temporary block and what its "lifted" hook needs, carried across continue-as-new."""

    action_id: str
    action_key: str
    expires_at: str  # ISO 8601
    action_type: str = ""
    incident_id: str = ""
    tenant: str = ""
    target: str = ""
    technique: str = ""


@dataclass(frozen=True)
class CarriedState:
    detection_count: int
    recent_detection_ids: tuple[str, ...]
    active_keys: tuple[str, ...]
    generations: tuple[tuple[str, int], ...]
    timed_blocks: tuple[TimedBlock, ...]
    approvals: tuple[CarriedApproval, ...] = ()  # pending approvals, still being waited for
    steps: tuple[CarriedStep, ...] = ()  # external steps not finished yet, in start order
    ticketing: bool = True
    hooked: tuple[str, ...] | None = None
    queued: tuple[DetectionFacts, ...] = ()  # signalled, not yet handled: handled first
    # Closed by an analyst ("" while open): the disposition; the run only waits for its
    # block timers, then ends.
    closed_as: str = ""


@dataclass(frozen=True)
class CarriedAction:
    """An action (the fields of `soar.contracts.ActionRef`) carried across continue-as-new."""

    action_id: str
    incident_id: str
    action_key: str
    action_type: str
    risk: str
    tenant: str
    target: str
    technique: str
    duration_seconds: int | None = None
    expires_at: str | None = None
    status: str = "planned"
    rule: str = ""


@dataclass(frozen=True)
class CarriedApproval:
    """A pending approval the next run keeps waiting for: its deadlines (workflow time,
    ISO 8601) and whether the escalation already went out."""

    approval_id: str
    action: CarriedAction
    expires_at: str  # the approval row's expiry
    escalate_at: str
    expire_at: str
    escalated: bool = False
    quorum: int = 1
    votes: tuple[tuple[str, str], ...] = ()  # (approver, actor) of each approval so far
    requested_by: str = ""  # the analyst who asked for it ("" for the playbook)


@dataclass(frozen=True)
class CarriedStep:
    """An external step (Slack, Jira, outbound hook) still being retried; the next run
    starts it again with what is left of its retry budget (counted from `started_at`)."""

    kind: str  # action | hook | announce | remind | outcome | note
    started_at: str
    action: CarriedAction | None = None  # action, hook, and the approval's action
    approval_id: str = ""
    approval_expires_at: str = ""
    event: str = ""  # hook: applied | lifted; outcome: the status shown
    by: str | None = None
    at: str = ""
    incident_id: str = ""
    event_key: str = ""
    text: str = ""


@dataclass(frozen=True)
class DecisionRequest:
    approval_id: str
    decision: str  # approve | reject
    actor: str  # principal name, or slack:<user id>
    role: str
    channel: str = "api"  # api | slack | ui | email
    comment: str | None = None
    # Who this is, for the quorum's "distinct approvers": the principal's name ("" for a
    # Slack user known only to SOAR_SLACK_APPROVERS, counted by `actor`).
    approver: str = ""
    # Set by the one decision gate (soar.api.response.send_decision, soar/decisions.py): when
    # it was signed, a random nonce, and the HMAC over every field above. The workflow refuses
    # a request without a valid, fresh signature. Empty in histories recorded before signing.
    issued_at: str = ""
    nonce: str = ""
    signature: str = ""


@dataclass(frozen=True)
class DecisionResult:
    approval_id: str
    status: str  # approved | rejected
    decided_by: str
    decided_at: str
    # False when the workflow accepted the decision but had not recorded it by the API's
    # deadline: it will be (the recording is retried until it lands); poll the approval.
    confirmed: bool = True
    approvals: int = 0  # approvals given so far (status "pending": the quorum is not met)
    quorum: int = 1


@dataclass(frozen=True)
class AnalystRequest:
    """An analyst's action on an incident (update `analyst_action`).

    kind: lift (a block, early) | extend (a temporary block, by `seconds`) | contain (apply a
    planned action now: low risk at once, high risk after a second person approves) | close
    (with a `disposition`) | note. `actor` is the authenticated principal, never the body.
    Signed by the API like a decision (soar/decisions.py); the nonce keys its log row."""

    kind: str
    actor: str
    role: str
    reason: str = ""
    action_id: str = ""  # lift, extend, contain
    seconds: int = 0  # extend
    disposition: str = ""  # close
    channel: str = "api"  # api | ui
    issued_at: str = ""
    nonce: str = ""
    signature: str = ""


@dataclass(frozen=True)
class AnalystResult:
    kind: str
    status: str  # lifted | extended | applied | pending_approval | closed | noted
    actor: str
    at: str
    action_id: str = ""
    approval_id: str = ""
    expires_at: str = ""  # extend: the new expiry; contain: the block's
    disposition: str = ""
    # False when the workflow accepted the request but had not finished it by the API's
    # deadline (it will: its steps are retried until they land).
    confirmed: bool = True
