"""E-mail as an approval channel: each approver with an address (`soar users set-email`)
gets a mail with a signed, single-use, expiring link of their own; the link opens a page that
asks to confirm (`approvals.email_routes`), so a mail scanner that fetches it decides
nothing. The outcome follows as a reply to the first mail, in the same words as Slack's.

SMTP through aiosmtplib: `smtp://host:port` upgrades with STARTTLS when the server offers
it, `smtps://host:port` speaks TLS from the start; credentials from the URL or
SOAR_SMTP_USER / SOAR_SMTP_PASSWORD. The mail is plain text: everything from a detection is
attacker-influenced, so it is stripped of control characters, clipped, and its links are
defanged (a client that makes links of URLs must not offer the attacker's).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid, parseaddr
from urllib.parse import quote, unquote, urlsplit

import aiosmtplib
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from approvals.channels import (
    Outcome,
    Record,
    action_label,
    outcome_sentence,
    progress_text,
    rule_text,
)
from approvals.email_links import issue_link, link_key
from soar.config import Settings
from soar.connectors import ApprovalBrief, ChannelMessage, Contact
from soar.db import transaction

EMAIL = "email"
LINK_PATH = "/approvals/email/"
# C0 and C1 controls but \t and \n (so also CR, VT, FF, the separators \x1c-\x1f and NEL \x85),
# the Unicode line and paragraph separators (a mail client may break the line there: a fake
# line), zero-width characters, bidi marks, overrides and isolates.
_CONTROL = re.compile(
    r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060\u2066-\u2069\ufeff]"
)
# A scheme anywhere, even glued to a word ("_https:", "x1https:"), and any other "x://".
_SCHEME = re.compile(r"(?i)(https?|ftps?|sftp|file|mailto|javascript|vbscript|data)(:)|:(?=//)")
_WWW = re.compile(r"(?i)www\.")
# A host name's dot: after a letter, digit or hyphen, before a label of 2 to 63 letters that
# ends the word ("evil.example/x", "login.evil.co.uk", "eve@evil.example"); not the dot of
# "AML.T0051", "e.g.", "4.1" or the end of a sentence. Each dot looks ahead at most 64 chars.
_HOST_DOT = re.compile(r"(?<=[\w-])\.(?=[^\W\d_]{2,63}(?![\w-]))")
_EXCERPT_MAX = 1000
_FIELD_MAX = 300


@dataclass(frozen=True)
class SmtpEndpoint:
    host: str
    port: int
    tls: bool
    user: str | None
    password: str | None


def smtp_endpoint(settings: Settings) -> SmtpEndpoint:
    if settings.smtp_url is None:
        raise ValueError("SOAR_SMTP_URL is not set")
    parts = urlsplit(settings.smtp_url.get_secret_value().strip())
    assert parts.hostname and parts.port  # validated by Settings
    user = unquote(parts.username) if parts.username else settings.smtp_user
    password = (
        unquote(parts.password)
        if parts.password
        else settings.smtp_password.get_secret_value()
        if settings.smtp_password
        else None
    )
    return SmtpEndpoint(parts.hostname, parts.port, parts.scheme == "smtps", user, password)


def untrusted(text: str | None, limit: int = _FIELD_MAX) -> str:
    """A value from a detection, fit for a plain-text mail: one line (or, for the excerpt,
    its own lines), no control or bidi characters, no live link, clipped."""
    if not text:
        return "-"
    # Clipped first (one more than fits, so that a clipped value still shows the ellipsis):
    # the work below is linear in what is shown, not in what the attacker sent.
    clean = _CONTROL.sub(" ", text[: 2 * limit].replace("\r\n", "\n")[: limit + 1])
    clean = _SCHEME.sub(lambda m: (m.group(1) or "") + "[:]", clean)
    clean = _HOST_DOT.sub("[.]", _WWW.sub("www[.]", clean))
    return clean if len(clean) <= limit else clean[: limit - 1] + "\u2026"


def header_text(text: str, limit: int = 200) -> str:
    one_line = " ".join(untrusted(text, limit).split())
    return one_line or "-"


def _facts(a: ApprovalBrief) -> list[str]:
    inc = a.incident
    tactic = f"{inc.tactic} {inc.tactic_name or ''}".strip() if inc.tactic else "-"
    risk = f"{inc.risk_score:.1f} / 100" if inc.risk_score is not None else "not assessed yet"
    lines = [
        f"Action:      {action_label(a.action_type)} {header_text(a.target)}",
        f"Incident:    {header_text(inc.incident_id)}  {inc.url}",
        f"Technique:   {header_text(inc.technique)} {header_text(inc.technique_name)}",
        f"Tactic:      {header_text(tactic)}",
        f"Subject:     {header_text(inc.subject)} (tenant {header_text(inc.tenant)})",
        f"Severity:    {header_text(inc.severity)}",
        f"Risk score:  {risk}",
        f"Expires:     {a.expires_at}",
    ]
    rule = rule_text(a)
    if rule:
        lines.append(f"Rule:        {rule}")
    if a.quorum > 1:
        lines.append(f"Approvals:   {progress_text(a)}")
    if inc.auto_actions:
        lines.append("Done automatically: " + header_text(", ".join(inc.auto_actions), 600))
    if inc.excerpt:
        lines += ["", "Excerpt (redacted, as reported):", untrusted(inc.excerpt, _EXCERPT_MAX)]
    return lines


def subject_of(a: ApprovalBrief) -> str:
    inc = a.incident
    return header_text(
        f"Approval needed: {action_label(a.action_type)} {a.target} "
        f"({inc.technique}, {inc.severity}, {inc.subject})"
    )


def approval_body(a: ApprovalBrief, link: str, link_expires: str) -> str:
    return "\n".join(
        [
            "A high-risk action is waiting for your decision in atlas-soar.",
            "",
            *_facts(a),
            "",
            f"To decide, open this link (it is yours alone, works once, until {link_expires}):",
            link,
            "",
            "The page shows the facts again and asks you to confirm Approve or Reject;",
            "opening it decides nothing. Do not forward this mail.",
        ]
    )


def reminder_body(a: ApprovalBrief) -> str:
    escalated = f" It has been escalated to {a.escalate_to}." if a.escalated else ""
    return "\n".join(
        [
            "Still waiting for a decision; without one the action is not taken at "
            f"{a.expires_at}.{escalated}",
            "Use the link in the first mail (it still works if you have not used it), or the "
            "web UI.",
            "",
            *_facts(a),
        ]
    )


def outcome_body(a: ApprovalBrief, outcome: Outcome) -> str:
    # The sentence holds the target: one line, defanged, like every value from a detection.
    sentence = header_text(outcome_sentence(a, outcome), 2 * _FIELD_MAX)
    return "\n".join([sentence + ".", "", *_facts(a)])


class EmailChannel:
    """`approvals.channels.ApprovalChannel` over SMTP."""

    name = EMAIL

    def __init__(self, settings: Settings, factory: async_sessionmaker[AsyncSession]) -> None:
        if not settings.smtp_from:
            raise ValueError("SOAR_SMTP_FROM is required for e-mail approvals")
        self.settings = settings
        self.factory = factory
        self.endpoint = smtp_endpoint(settings)
        self.sender = settings.smtp_from
        self.key = link_key(settings)
        domain = parseaddr(self.sender)[1].rpartition("@")[2] or "atlas-soar.invalid"
        self.domain = domain

    # --- the approval channel ---------------------------------------------------------------

    async def announce(self, approval: ApprovalBrief, record: Record) -> None:
        done = {m.conversation for m in approval.sent(EMAIL)}
        for contact in approval.approvers:
            address = contact.address(EMAIL)
            if address and address not in done and contact.principal_id is not None:
                await self._send_link(approval, contact, address, record)

    async def remind(self, approval: ApprovalBrief, record: Record) -> None:
        """Approvers who never had a mail (the escalation group) get one with a link; those
        who had one get a reminder in its thread."""
        announced = {m.conversation: m for m in approval.sent(EMAIL)}
        reminded = {m.conversation for m in approval.sent(EMAIL, "remind")}
        voted = {v.approver for v in approval.votes}
        for contact in approval.approvers:
            address = contact.address(EMAIL)
            if not address or contact.principal_id is None or contact.name in voted:
                continue
            first = announced.get(address)
            if first is None:
                await self._send_link(approval, contact, address, record)
            elif address not in reminded:
                msg = self._message(
                    address, "Reminder: " + subject_of(approval), reminder_body(approval), first
                )
                await self._send(msg)
                await record(ChannelMessage(EMAIL, "remind", address, str(msg["Message-ID"])))

    async def show_outcome(self, approval: ApprovalBrief, outcome: Outcome, record: Record) -> None:
        if outcome.status == "pending":
            return  # a quorum still short: the page and the other channels show the count
        told = {m.conversation for m in approval.sent(EMAIL, "outcome")}
        for first in approval.sent(EMAIL):
            if first.conversation in told:
                continue
            subject = header_text(outcome_sentence(approval, outcome))
            msg = self._message(first.conversation, subject, outcome_body(approval, outcome), first)
            await self._send(msg)
            await record(
                ChannelMessage(EMAIL, "outcome", first.conversation, str(msg["Message-ID"]))
            )

    async def expire(self, approval: ApprovalBrief, outcome: Outcome, record: Record) -> None:
        await self.show_outcome(approval, outcome, record)

    # --- mail -------------------------------------------------------------------------------

    async def _send_link(
        self, approval: ApprovalBrief, contact: Contact, address: str, record: Record
    ) -> None:
        assert contact.principal_id is not None
        now = datetime.now(UTC)
        expires = min(
            datetime.fromisoformat(approval.expires_at),
            now + timedelta(seconds=self.settings.email_link_ttl_seconds),
        )
        async with transaction(self.factory) as s:
            token = await issue_link(
                s,
                self.key,
                approval_id=approval.approval_id,
                principal_id=contact.principal_id,
                expires=expires,
            )
        link = f"{self.settings.base_url}{LINK_PATH}{quote(token, safe='.')}"
        body = approval_body(approval, link, expires.isoformat(timespec="seconds"))
        msg = self._message(address, subject_of(approval), body)
        await self._send(msg)
        await record(ChannelMessage(EMAIL, "announce", address, str(msg["Message-ID"])))

    def _message(
        self, to: str, subject: str, body: str, reply_to: ChannelMessage | None = None
    ) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.sender
        msg["To"] = to
        msg["Subject"] = subject if reply_to is None else "Re: " + subject.removeprefix("Re: ")
        msg["Date"] = format_datetime(datetime.now(UTC))
        msg["Message-ID"] = make_msgid(domain=self.domain)
        msg["Auto-Submitted"] = "auto-generated"
        if reply_to is not None and reply_to.message_id:
            msg["In-Reply-To"] = reply_to.message_id
            msg["References"] = reply_to.message_id
        msg.set_content(body)
        return msg

    async def _send(self, msg: EmailMessage) -> None:
        ep = self.endpoint
        await aiosmtplib.send(
            msg,
            hostname=ep.host,
            port=ep.port,
            username=ep.user,
            password=ep.password,
            use_tls=ep.tls,
            start_tls=False if ep.tls else None,
            timeout=self.settings.smtp_timeout_seconds,
        )
