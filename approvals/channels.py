"""The approval-channel interface: how people hear about an approval and its outcome.

Every configured channel is told (announce, remind at escalation, show the outcome, show the
expiry); any of them may carry a decision back, always through the one gate
(`soar.api.response.send_decision`). A channel knows nothing of the others; what it sent is
kept by its own ids (`soar.models.ApprovalMessage`) through the `Record` callback, written
as each message goes out, so a retried step sends nothing twice.

Implementations: `approvals.slack.SlackChannel`, `approvals.email.EmailChannel`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soar import actions
from soar.config import Settings
from soar.connectors import ApprovalBrief, ChannelMessage

Record = Callable[[ChannelMessage], Awaitable[None]]


@dataclass(frozen=True)
class Outcome:
    """What became of an approval: approved | rejected | expired, or pending with an
    approval counted towards its quorum."""

    status: str
    by: str | None
    at: str


class ApprovalChannel(Protocol):
    name: str  # the channel's name in DecisionRequest.channel and ApprovalMessage.channel

    async def announce(self, approval: ApprovalBrief, record: Record) -> None: ...
    async def remind(self, approval: ApprovalBrief, record: Record) -> None: ...
    async def show_outcome(
        self, approval: ApprovalBrief, outcome: Outcome, record: Record
    ) -> None: ...
    async def expire(self, approval: ApprovalBrief, outcome: Outcome, record: Record) -> None: ...


def action_label(action_type: str) -> str:
    """The action registry's label ("Revoke API key"), one for every channel."""
    return actions.label(action_type)


def progress_text(a: ApprovalBrief) -> str:
    """ "1 of 2 approvals (alice)", or "" for an approval that needs one."""
    if a.quorum <= 1:
        return ""
    who = ", ".join(v.by for v in a.votes)
    return f"{len(a.votes)} of {a.quorum} approvals" + (f" ({who})" if who else "")


def rule_text(a: ApprovalBrief) -> str:
    """Who may decide under the rule, in one line; "" when anyone with the role may."""
    parts = []
    if a.approver_groups:
        parts.append("approvers: " + ", ".join(a.approver_groups))
    if a.quorum > 1:
        parts.append(f"{a.quorum} distinct approvals needed")
    if a.escalate_to:
        parts.append(
            f"escalated to {a.escalate_to}" if a.escalated else f"escalates to {a.escalate_to}"
        )
    return "; ".join(parts)


def outcome_sentence(a: ApprovalBrief, outcome: Outcome) -> str:
    """The outcome in one plain sentence, the same in every channel (unescaped: each channel
    escapes it for its own format)."""
    what = f"{action_label(a.action_type)} {a.target}"
    if outcome.status == "pending":
        return f"{progress_text(a) or 'Approval counted'}: {what} still needs approval"
    who = f" by {outcome.by}" if outcome.by and outcome.status != "expired" else ""
    if outcome.status == "approved" and len(a.votes) > 1:
        who = " by " + ", ".join(v.by for v in a.votes)
    tail = ", not taken" if outcome.status in ("expired", "rejected") else ""
    return f"{outcome.status.capitalize()}{who} at {outcome.at}: {what}{tail}"


def configured_channels(
    settings: Settings, factory: async_sessionmaker[AsyncSession]
) -> tuple[ApprovalChannel, ...]:
    """Every approval channel the settings configure (Slack, e-mail); none is an error only
    in that nobody hears of approvals outside the API and the web UI."""
    found: list[ApprovalChannel] = []
    if settings.slack_enabled:
        from approvals.slack import SlackChannel

        found.append(SlackChannel(settings))
    if settings.smtp_enabled:
        from approvals.email import EmailChannel

        found.append(EmailChannel(settings, factory))
    return tuple(found)
