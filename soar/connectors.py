"""The small typed interfaces behind which Slack, Jira and the outbound action hooks sit.
Production adapters wrap the real client libraries; when a connector is not configured the
null adapter answers and the step is logged as skipped."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from soar.summaries.base import Summary


@dataclass(frozen=True)
class IncidentBrief:
    """What a human needs to judge an incident: never the raw prompt."""

    incident_id: str
    tenant: str
    subject: str
    technique: str
    technique_name: str
    tactic: str | None
    tactic_name: str | None
    severity: str
    risk_score: float | None
    excerpt: str | None
    auto_actions: tuple[str, ...] = ()
    planned_actions: tuple[str, ...] = ()  # not applied (yet): awaiting approval, deferred
    ticket_key: str | None = None
    ticket_url: str | None = None
    url: str = ""
    # The incident's summary: offline, or model-written (untrusted text, for reading only).
    analysis: Summary | None = None


@dataclass(frozen=True)
class ApprovalBrief:
    approval_id: str
    action_type: str
    target: str
    expires_at: str
    incident: IncidentBrief
    slack_channel: str | None = None
    slack_ts: str | None = None
    approvers: tuple[str, ...] = field(default_factory=tuple)


@dataclass(frozen=True)
class PostedMessage:
    channel: str
    ts: str


class Notifier(Protocol):
    enabled: bool

    def notice(self, incident: IncidentBrief, text: str) -> None: ...
    def announce_approval(self, approval: ApprovalBrief) -> PostedMessage | None: ...
    def remind(self, approval: ApprovalBrief) -> None: ...
    def show_outcome(
        self, approval: ApprovalBrief, status: str, by: str | None, at: str
    ) -> None: ...


class Ticketing(Protocol):
    enabled: bool

    def ensure_ticket(self, incident: IncidentBrief, description: str) -> tuple[str, str]: ...
    def comment(self, ticket_key: str, text: str, *, dedupe_key: str) -> None: ...
    def close(self, ticket_key: str) -> None: ...


class NullNotifier:
    enabled = False

    def notice(self, incident: IncidentBrief, text: str) -> None:
        return None

    def announce_approval(self, approval: ApprovalBrief) -> PostedMessage | None:
        return None

    def remind(self, approval: ApprovalBrief) -> None:
        return None

    def show_outcome(self, approval: ApprovalBrief, status: str, by: str | None, at: str) -> None:
        return None


class NullTicketing:
    enabled = False

    def ensure_ticket(self, incident: IncidentBrief, description: str) -> tuple[str, str]:
        raise RuntimeError("Jira is not configured")

    def comment(self, ticket_key: str, text: str, *, dedupe_key: str) -> None:
        return None

    def close(self, ticket_key: str) -> None:
        return None
