"""Block Kit for approvals: the interactive approval message, its decided / expired form, the
escalation reminder, the reason modal, notices and refusals.

Pure functions of the briefs, so they are unit-tested without Slack. Everything that comes
from a detection (subject, target, excerpt) is attacker-influenced: it is escaped so that it
cannot mention `@channel`, fake a link or break out of its code block, and every mrkdwn text
object is `verbatim` (`mrkdwn`), so Slack makes no link of a bare URL in it either.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from approvals.channels import Outcome, outcome_sentence, progress_text, rule_text
from approvals.channels import action_label as action_label  # the channels' shared label
from soar import actions
from soar.api.jsonsafe import parse_json_sync
from soar.connectors import ApprovalBrief, IncidentBrief

Block = dict[str, Any]

ACTION_APPROVE = "soar_approve"
ACTION_REJECT = "soar_reject"
DECISION_ACTIONS = {ACTION_APPROVE: "approve", ACTION_REJECT: "reject"}
ACTIONS_BLOCK_ID = "soar_approval"
MODAL_CALLBACK_ID = "soar_decision"
REASON_BLOCK_ID = "soar_reason"
REASON_ACTION_ID = "comment"
COMMENT_MAX = 2000  # the API's DecisionIn.comment limit

_EXCERPT_MAX = 1000  # section text is capped at 3000 by Slack; keep the message readable
_FIELD_MAX = 1900  # section fields are capped at 2000
_HEADER_MAX = 150

_OUTCOME = {
    "approved": (":white_check_mark:", "Approved"),
    "rejected": (":no_entry_sign:", "Rejected"),
    "expired": (":hourglass:", "Expired"),
}


def escape(text: str) -> str:
    """Slack's mrkdwn control characters; the only three it asks apps to escape."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def mrkdwn(text: str) -> Block:
    """A mrkdwn text object with `verbatim`: Slack then makes no link of a bare URL, a
    #channel name or an @mention in it (an attacker's target or a model's summary is shown as
    written); our own manual links (`<url|label>`, `<!date^...>`) still work."""
    return {"type": "mrkdwn", "text": text, "verbatim": True}


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def _code(text: str) -> str:
    # A backtick in the value would end the inline code early.
    return "`" + escape(text).replace("`", "\u02cb") + "`"


def slack_date(at: str) -> str:
    """A timestamp every reader sees in their own time zone; the ISO form is the fallback
    (shown by clients that cannot format dates, and in notifications)."""
    try:
        epoch = int(datetime.fromisoformat(at).timestamp())
    except ValueError:
        return escape(at)
    return f"<!date^{epoch}^{{date_short_pretty}} {{time_secs}}|{escape(at)}>"


# --- the approval message -------------------------------------------------------------------


def _incident_fields(inc: IncidentBrief) -> list[Block]:
    tactic = (
        f"{escape(inc.tactic_name or inc.tactic or '')} ({escape(inc.tactic)})"
        if inc.tactic
        else "-"
    )
    risk = f"{inc.risk_score:.1f}" if inc.risk_score is not None else "not assessed yet"
    ticket = (
        f"<{inc.ticket_url}|{escape(inc.ticket_key or 'ticket')}>"
        if inc.ticket_url
        else escape(inc.ticket_key)
        if inc.ticket_key
        else "none"
    )
    fields = [
        f"*Technique*\n{_code(inc.technique)} {escape(inc.technique_name)}",
        f"*Tactic*\n{tactic}",
        f"*Subject*\n{_code(inc.subject)} (tenant {_code(inc.tenant)})",
        f"*Severity*\n{escape(inc.severity)}",
        f"*Risk score*\n{risk}",
        f"*Jira*\n{ticket}",
    ]
    return [mrkdwn(_clip(f, _FIELD_MAX)) for f in fields]


def incident_blocks(inc: IncidentBrief) -> list[Block]:
    """What a human needs to judge the incident; never the raw prompt (the brief only
    carries the redacted excerpt)."""
    link = f"<{inc.url}|{escape(inc.incident_id)}>" if inc.url else escape(inc.incident_id)
    # "block_session <target>": the target is the attacker's, shown as code like elsewhere.
    done = "\n".join(f"\u2022 {_code(a)}" for a in inc.auto_actions) or "none"
    excerpt = _clip(inc.excerpt, _EXCERPT_MAX) if inc.excerpt else None
    blocks: list[Block] = [
        {
            "type": "section",
            "text": mrkdwn(f"*Incident* {link}"),
            "fields": _incident_fields(inc),
        },
        {
            "type": "section",
            "text": mrkdwn(_clip(f"*Already done automatically*\n{done}", 2900)),
        },
    ]
    if excerpt:
        quoted = escape(excerpt).replace("```", "\u02cb\u02cb\u02cb")
        blocks.append(
            {
                "type": "section",
                "text": mrkdwn(f"*Excerpt (redacted)*\n```{quoted}```"),
            }
        )
    if inc.analysis is not None:
        blocks.append(summary_block(inc))
    return blocks


def summary_block(inc: IncidentBrief) -> Block:
    """The incident's summary; a model-written one is marked as such, with its model, and is
    escaped like any other text an attacker may have steered (the excerpt is in its prompt)."""
    a = inc.analysis
    assert a is not None
    who = (
        f"written by model {_code(a.model or '?')}; untrusted, for reading only"
        if a.written_by == "model"
        else "offline summary"
    )
    steps = "\n".join(
        f"\u2022 {escape(s.step)}" + (f" ({_code(s.mitigation)})" if s.mitigation else "")
        for s in a.next_steps
    )
    text = (
        f"*Summary* _({who})_\n{escape(a.summary)}\n*Likely intent:* {escape(a.likely_intent)}"
        + (f"\n*Suggested next steps*\n{steps}" if steps else "")
    )
    return {"type": "section", "text": mrkdwn(_clip(text, 2900))}


def approval_text(a: ApprovalBrief) -> str:
    """The notification / fallback text of the approval message."""
    inc = a.incident
    return escape(
        f"Approval needed: {action_label(a.action_type)} {a.target} "
        f"({inc.technique} {inc.technique_name}, severity {inc.severity}, {inc.subject})"
    )


def _header(text: str) -> Block:
    return {
        "type": "header",
        "text": {"type": "plain_text", "text": _clip(text, _HEADER_MAX), "emoji": True},
    }


def _what(a: ApprovalBrief) -> Block:
    text = f"*{escape(action_label(a.action_type))}* {_code(a.target)}"
    rule = rule_text(a)
    if rule:
        text += f"\n{escape(rule)}"
    progress = progress_text(a)
    if progress:
        text += f"\n:ballot_box_with_check: *{escape(progress)}*"
    return {"type": "section", "text": mrkdwn(_clip(text, 2900))}


def decision_buttons(a: ApprovalBrief) -> Block:
    """Both buttons carry the approval id: the interactivity route needs nothing else."""
    confirm = {
        "title": {"type": "plain_text", "text": "Approve?"},
        "text": mrkdwn(
            _clip(
                f"{escape(action_label(a.action_type))} {_code(a.target)} now. "
                + escape(actions.undo_note(a.action_type, a.duration_seconds)[1]),
                300,
            )
        ),
        "confirm": {"type": "plain_text", "text": "Approve"},
        "deny": {"type": "plain_text", "text": "Cancel"},
    }
    return {
        "type": "actions",
        "block_id": ACTIONS_BLOCK_ID,
        "elements": [
            {
                "type": "button",
                "action_id": ACTION_APPROVE,
                "style": "primary",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": a.approval_id,
                "confirm": confirm,
            },
            {
                "type": "button",
                "action_id": ACTION_REJECT,
                "style": "danger",
                "text": {"type": "plain_text", "text": "Reject\u2026"},
                "value": a.approval_id,
            },
        ],
    }


def _footer(a: ApprovalBrief, extra: str = "") -> Block:
    text = f"Approval `{escape(a.approval_id)}` \u00b7 expires {slack_date(a.expires_at)}"
    return {"type": "context", "elements": [mrkdwn(text + extra)]}


def approval_blocks(a: ApprovalBrief) -> list[Block]:
    return [
        _header(f":rotating_light: Approval needed: {action_label(a.action_type)}"),
        _what(a),
        *incident_blocks(a.incident),
        decision_buttons(a),
        _footer(a, " \u00b7 Reject asks for an optional reason"),
    ]


# --- after the decision ---------------------------------------------------------------------


def outcome_line(status: str, by: str | None, at: str) -> str:
    emoji, word = _OUTCOME.get(status, (":information_source:", status.capitalize()))
    if status == "expired":
        return (
            f"{emoji} *{word}* {slack_date(at)}: nobody decided in time, the action was not taken"
        )
    who = f" by {escape(by)}" if by else ""
    return f"{emoji} *{word}*{who} {slack_date(at)}"


def outcome_text(a: ApprovalBrief, status: str, by: str | None, at: str) -> str:
    """The fallback text: the sentence every channel shows (`channels.outcome_sentence`)."""
    return escape(outcome_sentence(a, Outcome(status, by, at)))


def outcome_blocks(a: ApprovalBrief, status: str, by: str | None, at: str) -> list[Block]:
    """The same message, buttons removed, saying who decided what and when."""
    _, word = _OUTCOME.get(status, ("", status.capitalize()))
    if status == "approved" and len(a.votes) > 1:
        by = ", ".join(v.by for v in a.votes)
    return [
        _header(f"{word}: {action_label(a.action_type)}"),
        _what(a),
        *incident_blocks(a.incident),
        {"type": "section", "text": mrkdwn(outcome_line(status, by, at))},
        _footer(a),
    ]


def reminder_text(a: ApprovalBrief) -> str:
    ids = [c.address("slack") for c in a.approvers]
    mentions = " ".join(f"<@{escape(u)}>" for u in ids if u)
    escalated = f" (escalated to {escape(a.escalate_to)})" if a.escalated and a.escalate_to else ""
    progress = f" {escape(progress_text(a))} so far." if a.quorum > 1 else ""
    return (
        (mentions + " " if mentions else "") + f":bell: Still waiting for a decision{escalated} on "
        f"*{escape(action_label(a.action_type))}* {_code(a.target)}; without one it is not "
        f"taken at {slack_date(a.expires_at)}.{progress}"
    )


# --- notices and refusals -------------------------------------------------------------------


def notice_blocks(inc: IncidentBrief, text: str) -> list[Block]:
    return [
        {"type": "section", "text": mrkdwn(_clip(escape(text), 2900))},
        *incident_blocks(inc),
    ]


def refusal_message(reason: str) -> dict[str, Any]:
    """A response_url body only the clicking user sees; the original message stays."""
    return {
        "response_type": "ephemeral",
        "replace_original": False,
        "text": f":warning: {escape(reason)}",
    }


# --- the reason modal -----------------------------------------------------------------------


@dataclass(frozen=True)
class ModalContext:
    """Carried through the modal in private_metadata (max 3000 characters): what was
    clicked and where, so the submission can be answered without the original payload."""

    approval_id: str
    decision: str
    channel: str | None
    ts: str | None
    response_url: str | None
    action_ts: str

    def dump(self) -> str:
        return json.dumps(self.__dict__, separators=(",", ":"))

    @classmethod
    def load(cls, raw: str) -> ModalContext:
        """What `dump` wrote; ValueError for anything else (it comes back through Slack)."""
        data = parse_json_sync(raw.encode())  # depth-limited: JSONRefused is a ValueError
        if not isinstance(data, dict):
            raise ValueError("private_metadata is not an object")
        for key in ("approval_id", "decision", "action_ts"):
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"private_metadata: {key} is not a string")
        for key in ("channel", "ts", "response_url"):
            if not isinstance(data.get(key), str | None):
                raise ValueError(f"private_metadata: {key} is not a string")
        return cls(
            approval_id=data["approval_id"],
            decision=data["decision"],
            channel=data.get("channel"),
            ts=data.get("ts"),
            response_url=data.get("response_url"),
            action_ts=data.get("action_ts", ""),
        )


def reason_modal(a: ApprovalBrief, ctx: ModalContext) -> dict[str, Any]:
    verb = "Reject" if ctx.decision == "reject" else "Approve"
    return {
        "type": "modal",
        "callback_id": MODAL_CALLBACK_ID,
        "private_metadata": ctx.dump(),
        "title": {"type": "plain_text", "text": f"{verb} action"},
        "submit": {"type": "plain_text", "text": verb},
        "close": {"type": "plain_text", "text": "Cancel"},
        "blocks": [
            _what(a),
            {
                "type": "context",
                "elements": [mrkdwn(_incident_line(a))],
            },
            {
                "type": "input",
                "block_id": REASON_BLOCK_ID,
                "optional": True,
                "label": {"type": "plain_text", "text": "Reason (written to the audit log)"},
                "element": {
                    "type": "plain_text_input",
                    "action_id": REASON_ACTION_ID,
                    "multiline": True,
                    "max_length": COMMENT_MAX,
                },
            },
        ],
    }


def submitted_comment(view: dict[str, Any]) -> str | None:
    values = view.get("state", {}).get("values", {})
    value = values.get(REASON_BLOCK_ID, {}).get(REASON_ACTION_ID, {}).get("value")
    if not isinstance(value, str) or not value.strip():
        return None
    return value.strip()[:COMMENT_MAX]


def _incident_line(a: ApprovalBrief) -> str:
    inc = a.incident
    return (
        f"Incident {escape(inc.incident_id)}: {_code(inc.technique)} "
        f"{escape(inc.technique_name)}, severity {escape(inc.severity)}"
    )
