"""Jira tickets that follow every incident: the `Ticketing` adapter on the `jira` library and
the `note_ticket` / `close_ticket` activities.

Jira trouble never holds up containment. Every Jira request is made once (`max_retries=0`:
the library would otherwise sleep in the activity's thread, up to a minute per request) and a
failure becomes a Temporal `ApplicationError`: retryable for 429, 5xx and connection errors,
with the server's Retry-After as the next delay, non-retryable for 400/401/403/404. The
workflow's retry policy does the waiting, in its own activities, after containment is done.

Idempotency, because an activity can run again after its effect happened: a ticket is found
by its stored key or by the label carrying the incident id before one is created; a comment
ends with a marker holding its event key, and a marker already on the ticket means posted.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar

import requests
from jira import JIRA
from jira.exceptions import JIRAError
from sqlalchemy import select
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.context import SYSTEM, ActivityContext
from soar.audit.chain import LogEvent, append
from soar.config import Settings
from soar.connectors import IncidentBrief
from soar.contracts import TicketNote
from soar.db import transaction
from soar.escape import jira_plain, jira_wiki
from soar.models import ActionLogEntry, Incident
from soar.observability import outbound

log = logging.getLogger("soar.tickets")

T = TypeVar("T")

ERROR_TYPE = "JiraError"
# Besides 5xx: timeout, conflict, too early, rate limited. Everything else in 4xx is a
# configuration or permission problem that a retry cannot fix.
RETRYABLE_STATUS = frozenset({408, 409, 425, 429})
MAX_RETRY_AFTER = timedelta(minutes=5)  # a Retry-After of hours would stall later comments
SUMMARY_MAX = 255  # Jira's limit
EXCERPT_MAX = 2000
REASON_MAX = 300
TIMEOUT = (5.0, 15.0)  # connect, read: a step of three requests fits the 60 s start-to-close
PLACEHOLDERS = (
    "incident_id",
    "tenant",
    "subject",
    "technique",
    "technique_name",
    "tactic",
    "tactic_name",
    "severity",
    "risk_score",
    "url",
)


# --- mapping failures -------------------------------------------------------------------------


def jira_failure(what: str, exc: JIRAError) -> ApplicationError:
    """The activity error for a Jira answer. Built from the status and Jira's own error text
    only: `str(JIRAError)` carries the request headers, Authorization included."""
    status = exc.status_code
    detail = " ".join((exc.text or "").split())[:REASON_MAX]
    if status is None:  # raised by the client itself, e.g. an unknown transition name
        return ApplicationError(
            f"Jira refused to {what}: {detail}", type=ERROR_TYPE, non_retryable=True
        )
    retryable = status >= 500 or status in RETRYABLE_STATUS
    return ApplicationError(
        f"Jira answered HTTP {status} to {what}" + (f": {detail}" if detail else ""),
        type=ERROR_TYPE,
        non_retryable=not retryable,
        next_retry_delay=retry_after(exc.response) if retryable else None,
    )


def retry_after(response: requests.Response | None) -> timedelta | None:
    """Retry-After as seconds or as an HTTP date, bounded to [1 s, MAX_RETRY_AFTER]."""
    raw = response.headers.get("Retry-After") if response is not None else None
    if not raw:
        return None
    raw = raw.strip()
    try:
        delay = timedelta(seconds=int(raw))
    except ValueError:
        try:
            delay = parsedate_to_datetime(raw) - datetime.now(UTC)
        except (TypeError, ValueError):
            return None
    return min(max(delay, timedelta(seconds=1)), MAX_RETRY_AFTER)


# --- what goes into Jira ----------------------------------------------------------------------


def parse_priority_map(raw: str) -> dict[str, str]:
    """`critical:Highest,high:High,...` -> {severity: Jira priority name}; empty: no priority."""
    out: dict[str, str] = {}
    for item in (x.strip() for x in raw.split(",")):
        if not item:
            continue
        severity, sep, name = item.partition(":")
        if not sep or not severity.strip() or not name.strip():
            raise ValueError(f"SOAR_JIRA_PRIORITY_MAP: {item!r} must be severity:Priority name")
        out[severity.strip().lower()] = name.strip()
    return out


def incident_label(incident_id: str) -> str:
    return f"soar-{incident_id}"


def _label(value: str) -> str:
    return re.sub(r"\s+", "_", value.strip())[:255]  # Jira labels cannot hold spaces


def _one_line(text: str, limit: int) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


_CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _noformat(text: str) -> str:
    """A block shown verbatim: detection text (attacker-chosen) must not become links,
    images or macros. A `{noformat}` inside would end the block early, so it is broken up."""
    text = _CONTROL_CHARS.sub(" ", text)
    safe = re.sub(r"(?i)\{noformat", "{ noformat", text.strip() or "-")
    return "{noformat}\n" + safe + "\n{noformat}"


def summary_of(incident: IncidentBrief) -> str:
    return jira_plain(
        f"{incident.technique} {incident.technique_name} on {incident.subject} "
        f"(tenant {incident.tenant})",
        SUMMARY_MAX,
    )


def labels_of(incident: IncidentBrief) -> list[str]:
    wanted = [
        "atlas",
        incident.technique,
        incident.tactic or "",
        incident_label(incident.incident_id),
    ]
    labels: list[str] = []
    for value in (_label(v) for v in wanted if v):
        if value not in labels:
            labels.append(value)
    return labels


def description_of(incident: IncidentBrief, assessment: str) -> str:
    facts = [
        f"Technique: {incident.technique} {incident.technique_name}",
        f"Tactic:    {incident.tactic or '-'} {incident.tactic_name or ''}".rstrip(),
        f"Subject:   {incident.subject} (tenant {incident.tenant})",
        f"Severity:  {incident.severity}"
        + (f", risk score {incident.risk_score}" if incident.risk_score is not None else ""),
    ]
    # Planned (not yet applied) actions are shown once the brief carries them.
    planned: tuple[str, ...] = tuple(getattr(incident, "planned_actions", ()) or ())
    actions = [f"applied: {a}" for a in incident.auto_actions]
    actions += [f"planned: {a}" for a in planned]
    excerpt = incident.excerpt or ""
    if len(excerpt) > EXCERPT_MAX:
        excerpt = excerpt[:EXCERPT_MAX] + "\u2026"
    parts = [
        f"atlas-soar incident *{incident.incident_id}*"
        + (f": [open in atlas-soar|{incident.url}]" if incident.url else ""),
        _noformat("\n".join(facts)),
        "h4. Assessment",
        _noformat(assessment or "Assessment pending; updates follow as comments."),
        "h4. Redacted excerpt",
        _noformat(excerpt or "(none)"),
        *_analysis_parts(incident),
        "h4. Actions",
        _noformat("\n".join(actions) or "none yet"),
        "_The raw prompt is never sent to Jira; progress is added as comments._",
    ]
    return "\n\n".join(parts)


def _analysis_parts(incident: IncidentBrief) -> list[str]:
    """The summary, verbatim: a model-written one is marked, with its model's name."""
    a = incident.analysis
    if a is None:
        return []
    who = (
        f"Written by model {a.model or '?'}; untrusted, for reading only (it changes no action)."
        if a.written_by == "model"
        else "Offline summary."
    )
    steps = "\n".join(
        f"- {s.step}" + (f" ({s.mitigation})" if s.mitigation else "") for s in a.next_steps
    )
    body = f"{who}\n{a.summary}\nLikely intent: {a.likely_intent}\nSuggested next steps:\n{steps}"
    return ["h4. Summary", _noformat(body)]


def render_template(value: Any, values: Mapping[str, str]) -> Any:
    """Custom field values: strings are `str.format` templates over PLACEHOLDERS, nested
    lists / objects (e.g. `{"value": "{severity}"}` for a select field) are walked."""
    if isinstance(value, str):
        return value.format_map(values)
    if isinstance(value, list):
        return [render_template(v, values) for v in value]
    if isinstance(value, dict):
        return {k: render_template(v, values) for k, v in value.items()}
    return value


def template_values(incident: IncidentBrief) -> dict[str, str]:
    return {
        "incident_id": incident.incident_id,
        "tenant": jira_plain(incident.tenant),
        "subject": jira_plain(incident.subject),
        "technique": incident.technique,
        "technique_name": incident.technique_name,
        "tactic": incident.tactic or "",
        "tactic_name": incident.tactic_name or "",
        "severity": incident.severity,
        "risk_score": "" if incident.risk_score is None else str(incident.risk_score),
        "url": incident.url,
    }


def check_custom_fields(fields: Mapping[str, Any]) -> None:
    sample = dict.fromkeys(PLACEHOLDERS, "x")
    for name, value in fields.items():
        try:
            render_template(value, sample)
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(
                f"SOAR_JIRA_CUSTOM_FIELDS: {name}: bad template ({exc}); "
                f"placeholders: {', '.join('{' + p + '}' for p in PLACEHOLDERS)}"
            ) from None


_MARKER_SEEN = r"soar:{key}\\?\]"


def comment_marker(dedupe_key: str) -> str:
    """Last line of every comment: a small grey `[soar:<key>]` (brackets escaped so the wiki
    renderer does not turn it into a link)."""
    return f"{{color:#97a0af}}\\[soar:{dedupe_key}\\]{{color}}"


def has_marker(body: str, dedupe_key: str) -> bool:
    # Matched loosely (escaped or not, any colour: Jira Cloud re-renders wiki markup), on the
    # last line only: the marker is appended after the (escaped) text.
    lines = body.strip().splitlines()
    last = lines[-1] if lines else ""
    return re.search(_MARKER_SEEN.format(key=re.escape(dedupe_key)), last) is not None


def _author_ids(comment: Any) -> set[str]:
    author = getattr(comment, "author", None)
    ids = (getattr(author, a, None) for a in ("accountId", "key", "name"))
    return {str(i) for i in ids if i}


def _jql_string(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


# --- the adapter ------------------------------------------------------------------------------


class JiraTicketing:
    """The `Ticketing` connector. One per worker; its client is built on first use (a Jira
    that is down at start must not stop the worker) and shared by the activity threads."""

    enabled = True

    def __init__(self, settings: Settings, *, custom_fields: Mapping[str, Any] | None = None):
        if not (settings.jira_url and settings.jira_project and settings.jira_token):
            raise ValueError("Jira needs SOAR_JIRA_URL, SOAR_JIRA_PROJECT and SOAR_JIRA_TOKEN")
        self.server = settings.jira_url.rstrip("/")
        self.project = settings.jira_project
        self.issue_type = settings.jira_issue_type
        self.done_transition = settings.jira_done_transition
        self.priorities = parse_priority_map(settings.jira_priority_map)
        if custom_fields is None:
            # Until Settings grows `jira_custom_fields` (a JSON object from the environment).
            custom_fields = getattr(settings, "jira_custom_fields", None) or {}
        check_custom_fields(custom_fields)
        self.custom_fields = dict(custom_fields)
        self._user = settings.jira_user
        self._token = settings.jira_token
        self._client: JIRA | None = None
        self._me: set[str] | None = None
        self._lock = threading.Lock()

    # --- Ticketing ----------------------------------------------------------------------------

    def ensure_ticket(self, incident: IncidentBrief, description: str) -> tuple[str, str]:
        key = self._find(incident)
        if key is None:
            fields = self.issue_fields(incident, description)
            # prefetch=False: the POST answer has the key; a reload is one more call to fail.
            key = self._call(
                "create the ticket",
                lambda j: str(j.create_issue(fields=fields, prefetch=False).key),
            )
            log.info("jira ticket %s created for %s", key, incident.incident_id)
        return key, self.browse_url(key)

    def comment(self, ticket_key: str, text: str, *, dedupe_key: str) -> None:
        # Jira has no idempotency key: look for the marker of an earlier attempt whose answer
        # was lost (the default page holds 5000 comments on Server and Cloud).
        comments = self._call(
            f"read the comments of {ticket_key}", lambda j: j.comments(ticket_key)
        )
        # Only a comment this bot wrote can say "posted": anyone else's (a person pasting
        # attacker text, or text we escaped) is never taken for a marker.
        mine = self._bot_ids()
        if any(
            _author_ids(c) & mine and has_marker(str(getattr(c, "body", "") or ""), dedupe_key)
            for c in comments
        ):
            return
        body = f"{jira_wiki(text)}\n\n{comment_marker(dedupe_key)}"
        self._call(f"comment on {ticket_key}", lambda j: j.add_comment(ticket_key, body))

    def close(self, ticket_key: str) -> None:
        status = self._call(
            f"read the status of {ticket_key}",
            lambda j: j.issue(ticket_key, fields="status").fields.status,
        )
        if _is_done(status, self.done_transition):
            return  # closed already, by us or by a person: their resolution stands
        offered: list[dict[str, Any]] = self._call(
            f"list the transitions of {ticket_key}", lambda j: j.transitions(ticket_key)
        )
        wanted = self.done_transition.strip().lower()
        chosen = next(
            (
                t
                for t in offered
                if str(t.get("id")) == self.done_transition.strip()
                or str(t.get("name", "")).lower() == wanted
                or str((t.get("to") or {}).get("name", "")).lower() == wanted
            ),
            None,
        )
        if chosen is None:
            names = ", ".join(str(t.get("name")) for t in offered) or "none"
            raise ApplicationError(
                f"Jira offers no transition {self.done_transition!r} for {ticket_key} in "
                f"status {getattr(status, 'name', '?')!r} (offered: {names}); "
                "set SOAR_JIRA_DONE_TRANSITION",
                type=ERROR_TYPE,
                non_retryable=True,
            )
        self._call(
            f"transition {ticket_key} to {self.done_transition}",
            lambda j: j.transition_issue(ticket_key, str(chosen["id"])),
        )

    # --- pieces -------------------------------------------------------------------------------

    def browse_url(self, key: str) -> str:
        return f"{self.server}/browse/{key}"

    def issue_fields(self, incident: IncidentBrief, description: str) -> dict[str, Any]:
        # Project and issue type as objects: given as names, the client would first look
        # them up with two more requests.
        fields: dict[str, Any] = {
            "project": {"key": self.project},
            "issuetype": {"name": self.issue_type},
            "summary": summary_of(incident),
            "description": description_of(incident, description),
            "labels": labels_of(incident),
        }
        priority = self.priorities.get(incident.severity.lower())
        if priority:
            fields["priority"] = {"name": priority}
        values = template_values(incident)
        for name, template in self.custom_fields.items():
            fields[name] = render_template(template, values)
        return fields

    def _find(self, incident: IncidentBrief) -> str | None:
        if incident.ticket_key:
            stored = incident.ticket_key

            def by_key(j: JIRA) -> str | None:
                try:
                    return str(j.issue(stored, fields="status").key)
                except JIRAError as exc:
                    if exc.status_code == 404:
                        return None  # deleted in Jira: fall back to the label search
                    raise

            found = self._call(f"read {stored}", by_key)
            if found:
                return found
        jql = (
            f"project = {_jql_string(self.project)} AND "
            f"labels = {_jql_string(incident_label(incident.incident_id))} ORDER BY key ASC"
        )
        result = self._call(
            "search for the incident's ticket",
            lambda j: j.search_issues(jql, maxResults=1, fields="summary", json_result=True),
        )
        issues = result.get("issues") or []
        return str(issues[0]["key"]) if issues else None

    def _bot_ids(self) -> set[str]:
        """Who this connector is in Jira (account id on Cloud, key and name on Server)."""
        if self._me is None:
            me = self._call("read the bot's own user", lambda j: j.myself())
            self._me = {str(me[a]) for a in ("accountId", "key", "name") if me.get(a)}
        return self._me

    def _client_now(self) -> JIRA:
        with self._lock:
            if self._client is None:
                token = self._token.get_secret_value() if self._token else ""
                if self._user:  # Jira Cloud: e-mail + API token
                    self._client = JIRA(
                        server=self.server,
                        basic_auth=(self._user, token),
                        max_retries=0,
                        timeout=TIMEOUT,
                    )
                else:  # Server / Data Center: personal access token
                    self._client = JIRA(
                        server=self.server, token_auth=token, max_retries=0, timeout=TIMEOUT
                    )
            return self._client

    def _call(self, what: str, op: Callable[[JIRA], T]) -> T:
        try:
            with outbound("jira", what):
                return op(self._client_now())
        except JIRAError as exc:
            raise jira_failure(what, exc) from None
        except requests.RequestException as exc:
            reason = _one_line(f"{type(exc).__name__}: {exc}", REASON_MAX)
            raise ApplicationError(
                f"Jira unreachable while trying to {what}: {reason}", type=ERROR_TYPE
            ) from None


def _is_done(status: Any, done_name: str) -> bool:
    name = str(getattr(status, "name", "") or "")
    category = getattr(getattr(status, "statusCategory", None), "key", None)
    return category == "done" or name.lower() == done_name.strip().lower()


# --- the activities ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Ticketed:
    incident_id: str
    tenant: str
    subject: str
    technique: str
    tactic: str | None
    ticket_key: str


class TicketActivities:
    """Comments and closing. Neither ever fails an incident: a Jira that stays down ends in a
    `ticket.failed` row, and the workflow moves on."""

    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    @activity.defn(name="note_ticket")
    async def note_ticket(self, note: TicketNote) -> None:
        done_key = f"{note.event_key}:ticket"
        target = await self._ticketed(note.incident_id, done_key)
        if target is None:
            return
        try:
            await asyncio.to_thread(
                self.ctx.ticketing.comment, target.ticket_key, note.text, dedupe_key=note.event_key
            )
        except Exception as exc:
            await self._failed(
                target,
                exc,
                step="comment",
                key=f"{note.event_key}:ticket-failed",
                details={"note": note.event_key},
            )
            raise
        await self._log(
            target,
            done_key,
            "ticket.commented",
            "comment_ticket",
            {"note": note.event_key, "text": note.text[:1000]},
        )

    @activity.defn(name="close_ticket")
    async def close_ticket(self, incident_id: str) -> None:
        done_key = f"{incident_id}:ticket-closed"
        target = await self._ticketed(incident_id, done_key)
        if target is None:
            return
        try:
            await asyncio.to_thread(self.ctx.ticketing.close, target.ticket_key)
        except Exception as exc:
            await self._failed(
                target, exc, step="close", key=f"{incident_id}:ticket-close-failed", details={}
            )
            raise
        await self._log(
            target,
            done_key,
            "ticket.closed",
            "close_ticket",
            {"transition": self.ctx.settings.jira_done_transition},
        )

    async def _ticketed(self, incident_id: str, done_key: str) -> _Ticketed | None:
        """The incident's ticket, or None when there is nothing to do: Jira off, no ticket
        (never opened, or opening failed), or an earlier attempt already finished."""
        if not self.ctx.ticketing.enabled:
            return None
        async with self.ctx.factory() as s:
            inc = await s.get(Incident, incident_id)
            if inc is None or not inc.ticket_key:
                return None
            done = await s.scalar(
                select(ActionLogEntry.id).where(ActionLogEntry.event_key == done_key)
            )
            if done is not None:
                return None
            tactics = (inc.enrichment or {}).get("tactics") or [{}]
            return _Ticketed(
                incident_id=inc.id,
                tenant=inc.tenant,
                subject=inc.subject_key,
                technique=inc.technique,
                tactic=tactics[0].get("id"),
                ticket_key=inc.ticket_key,
            )

    async def _failed(
        self, t: _Ticketed, exc: Exception, *, step: str, key: str, details: dict[str, Any]
    ) -> None:
        """Log the failure once it is final: not retryable, or the last attempt the
        workflow's retry policy allows. Earlier attempts are just retried."""
        info = activity.info()
        policy = info.retry_policy
        last = bool(policy and policy.maximum_attempts and info.attempt >= policy.maximum_attempts)
        if not (last or (isinstance(exc, ApplicationError) and exc.non_retryable)):
            log.warning(
                "jira %s on %s failed (attempt %d): %s",
                step,
                t.ticket_key,
                info.attempt,
                _reason(exc),
            )
            return
        await self._log(
            t,
            key,
            "ticket.failed",
            f"{step}_ticket",
            {**details, "reason": _reason(exc), "attempts": info.attempt},
            outcome="failed",
        )

    async def _log(
        self,
        t: _Ticketed,
        key: str,
        event: str,
        action: str,
        details: dict[str, Any],
        *,
        outcome: str = "ok",
    ) -> None:
        async with transaction(self.ctx.factory) as s:
            await append(
                s,
                LogEvent(
                    event_key=key,
                    event=event,
                    actor=SYSTEM,
                    outcome=outcome,
                    action=action,
                    incident_id=t.incident_id,
                    tenant=t.tenant,
                    subject=t.subject,
                    technique=t.technique,
                    tactic=t.tactic,
                    details={"ticket_key": t.ticket_key, **details},
                ),
            )


def _reason(exc: Exception) -> str:
    if isinstance(exc, ApplicationError):
        return str(exc.message)[:500]
    return _one_line(f"{type(exc).__name__}: {exc}", 500)
