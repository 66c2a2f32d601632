"""The small typed interfaces behind which Slack, Jira and the outbound action hooks sit
(the approval channels' interface is `approvals.channels.ApprovalChannel`).
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
class ChannelMessage:
    """Something an approval channel sent, by that channel's own ids (a Slack channel id and
    ts; an e-mail address and Message-ID). `kind`: announce | remind | outcome."""

    channel: str
    kind: str
    conversation: str
    message_id: str


@dataclass(frozen=True)
class Contact:
    """Someone who may decide an approval, and where each channel reaches them
    (`(channel, address)` pairs, e.g. `("slack", "U024BE7LH")`, `("email", "a@b.example")`)."""

    name: str
    addresses: tuple[tuple[str, str], ...] = ()
    principal_id: int | None = None  # None: known to one channel only (SOAR_SLACK_APPROVERS)

    def address(self, channel: str) -> str | None:
        return next((a for c, a in self.addresses if c == channel), None)


@dataclass(frozen=True)
class Vote:
    """One approval given towards a quorum."""

    by: str  # as the audit log names them, e.g. "carol (slack:U024BE7LH)"
    channel: str
    at: str
    approver: str = ""  # the principal's name: what makes two approvals distinct


@dataclass(frozen=True)
class ApprovalBrief:
    """What every approval channel shows about an approval; nothing channel-specific but the
    messages each channel sent (`messages`), which only that channel reads."""

    approval_id: str
    action_type: str
    target: str
    expires_at: str
    incident: IncidentBrief
    messages: tuple[ChannelMessage, ...] = ()
    # Who may decide now (the rule's groups, plus the escalation group once escalated).
    approvers: tuple[Contact, ...] = field(default_factory=tuple)
    status: str = "pending"
    quorum: int = 1
    votes: tuple[Vote, ...] = ()
    approver_groups: tuple[str, ...] = ()
    escalate_to: str | None = None
    escalated: bool = False
    risk: str = "high"
    rule: str = ""
    duration_seconds: int | None = None  # of the action, if it lifts itself

    def sent(self, channel: str, kind: str = "announce") -> tuple[ChannelMessage, ...]:
        return tuple(m for m in self.messages if m.channel == channel and m.kind == kind)


@dataclass(frozen=True)
class PostedMessage:
    channel: str
    ts: str


class Notifier(Protocol):
    """Incident notices (the playbook's `notify` action)."""

    enabled: bool

    def notice(self, incident: IncidentBrief, text: str) -> None: ...


class Ticketing(Protocol):
    enabled: bool

    def ensure_ticket(self, incident: IncidentBrief, description: str) -> tuple[str, str]: ...
    def comment(self, ticket_key: str, text: str, *, dedupe_key: str) -> None: ...
    def close(self, ticket_key: str) -> None: ...


class NullNotifier:
    enabled = False

    def notice(self, incident: IncidentBrief, text: str) -> None:
        return None


class NullTicketing:
    enabled = False

    def ensure_ticket(self, incident: IncidentBrief, description: str) -> tuple[str, str]:
        raise RuntimeError("Jira is not configured")

    def comment(self, ticket_key: str, text: str, *, dedupe_key: str) -> None:
        return None

    def close(self, ticket_key: str) -> None:
        return None
