"""The web UI's incidents: search with paging, one incident, and what an analyst does there
(lift a block early, extend it, contain now, close with a disposition, add a note).

Every action goes through :func:`soar.api.analyst.send_analyst_action`, the same gate as
the API; the UI adds who is signed in, the CSRF check and Post/Redirect/Get."""

from __future__ import annotations

import logging
import re
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, HTTPException, Request, Response
from sqlalchemy import func, select
from temporalio.service import RPCError

from activities.context import incident_brief
from approvals.web import (
    _ID,
    UiRoute,
    _pending_cards,
    _when,
    redirect,
    render,
)
from approvals.web_auth import Flash, UiError, Viewer, ViewerDep, check_csrf, read_form
from soar.api.analyst import ActionRefused, send_analyst_action
from soar.api.deps import SessionDep, StateDep
from soar.api.response import incident_json
from soar.bounds import EARLIEST, QUERY_LATEST, has_unsafe_chars
from soar.domain import DISPOSITIONS, MAX_EXTEND_SECONDS, MAX_REASON, AnalystRequest
from soar.incident_search import (
    DISPOSITION_FILTERS,
    SEVERITIES,
    IncidentFilter,
    SearchError,
    search_incidents,
    temporal_run_url,
)
from soar.models import Approval, AtlasTechnique, Incident

log = logging.getLogger("soar.ui")

router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)

REFRESH_SECONDS = 10
PAGE = 50
DISPOSITION_LABELS = {
    "true_positive": "True positive",
    "false_positive": "False positive",
    "benign": "Benign",
}


_ATLAS_ID = re.compile(r"^[A-Za-z0-9.]{1,32}$")
_FILTER_ERRORS = {
    "status": "Status must be open or closed (or empty for any).",
    "technique": "Technique must look like AML.T0051 or AML.T0051.000.",
    "tactic": "Tactic must look like AML.TA0005.",
    "subject": "Subject: at most 300 characters, no control characters.",
    "until": "To must not be before From.",
    "cursor": "That page link is broken; start again from the first page.",
}


def _day(value: str, name: str) -> date | None:
    if not value:
        return None
    try:
        day = date.fromisoformat(value)
    except ValueError:
        raise UiError(400, "Bad filter", f"{name}: a date such as 2026-12-01.") from None
    if not EARLIEST.date() <= day < QUERY_LATEST.date():
        raise UiError(
            400,
            "Bad filter",
            f"{name}: a date from {EARLIEST.date()} to before {QUERY_LATEST.date()}.",
        )
    return day


@router.get("/incidents")
async def incidents_page(
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: ViewerDep,
    status: str = "",
    technique: str = "",
    tactic: str = "",
    subject: str = "",
    severity: str = "",
    disposition: str = "",
    since: str = "",
    until: str = "",
    cursor: str = "",
) -> Response:
    start, end = _day(since.strip(), "From"), _day(until.strip(), "To")
    for name, value in (("technique", technique), ("tactic", tactic)):
        if value.strip() and not _ATLAS_ID.match(value.strip()):
            raise UiError(400, "Bad filter", _FILTER_ERRORS[name])
    f = IncidentFilter(
        subject=subject.strip(),
        technique=technique.strip().upper(),
        tactic=tactic.strip().upper(),
        severity=severity.strip(),
        status=status.strip(),
        disposition=disposition.strip(),
        # From the start of the first day to the end of the last one (UTC).
        since=datetime.combine(start, time(), UTC) if start else None,
        until=datetime.combine(end, time(), UTC) + timedelta(days=1) if end else None,
    )
    try:
        page = await search_incidents(session, f, limit=PAGE, cursor=cursor or None)
    except SearchError as exc:
        message = _FILTER_ERRORS.get(exc.field, f"{exc.field.capitalize()}: {exc.message}.")
        raise UiError(400, "Bad filter", message) from None
    incidents = page.incidents
    ids = [i.id for i in incidents]
    pending: dict[str, int] = {}
    names: dict[str, str] = {}
    if ids:
        counted = await session.execute(
            select(Approval.incident_id, func.count())
            .where(Approval.incident_id.in_(ids), Approval.status == "pending")
            .group_by(Approval.incident_id)
        )
        pending = {k: int(v) for k, v in counted.all()}
        found = await session.execute(
            select(AtlasTechnique.id, AtlasTechnique.name).where(
                AtlasTechnique.id.in_({i.technique for i in incidents})
            )
        )
        names = {k: v for k, v in found.all()}
    shown = {
        "status": f.status,
        "technique": f.technique,
        "tactic": f.tactic,
        "subject": f.subject,
        "severity": f.severity,
        "disposition": f.disposition,
        "since": since.strip(),
        "until": until.strip(),
    }
    kept = {k: v for k, v in shown.items() if v}
    next_url = (
        "/ui/incidents?" + urlencode({**kept, "cursor": page.next_cursor}, quote_via=quote)
        if page.next_cursor
        else None
    )
    return render(
        request,
        state,
        "incidents.html",
        viewer=viewer,
        incidents=incidents,
        pending=pending,
        names=names,
        section="incidents",
        filters=shown,
        severities=SEVERITIES,
        dispositions=DISPOSITION_FILTERS,
        disposition_labels=DISPOSITION_LABELS,
        next_url=next_url,
        first_url=("/ui/incidents?" + urlencode(kept, quote_via=quote)) if cursor else None,
    )


def _detail_pairs(details: dict[str, Any]) -> list[tuple[str, str]]:
    """The few facts of an audit entry worth a glance; the full row is in /v1/audit."""
    keys = (
        "target",
        "decision",
        "comment",
        "channel",
        "until",
        "expires_at",
        "rules_fired",
        "severity",
        "confidence",
        "risk_score",
        "excerpt",
        "ticket_key",
        "error",
        "disposition",
        "reason",
        "action_taken",
        "text",
    )
    pairs = []
    for k in keys:
        v = details.get(k)
        if v is None or v == "" or v == []:
            continue
        if k in ("until", "expires_at") and isinstance(v, str):
            text = _when(v)
        else:
            text = ", ".join(map(str, v)) if isinstance(v, list) else str(v)
        pairs.append((k.replace("_", " "), text[:300]))
    return pairs


@router.get("/incidents/{incident_id}")
async def incident_page(
    incident_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: ViewerDep,
    refresh: str = "",
) -> Response:
    inc = await session.get(Incident, incident_id) if _ID.match(incident_id) else None
    if inc is None:
        raise UiError(404, "Not found", f"There is no incident {incident_id[:80]}.")
    data = await incident_json(session, inc, state.settings)
    brief = await incident_brief(session, inc.id, state.settings)
    cards = await _pending_cards(session, state, incident_id=inc.id)
    actions = {a["action_id"]: a for a in data["actions"]}
    for entry in data["timeline"]:
        entry["pairs"] = _detail_pairs(entry["details"] or {})
    live = inc.status == "open" and refresh != "off"
    return render(
        request,
        state,
        "incident.html",
        viewer=viewer,
        inc=data,
        brief=brief,
        cards=cards,
        actions=actions,
        section="incidents",
        live=live,
        paused=inc.status == "open" and not live,
        refresh_seconds=REFRESH_SECONDS if live else 0,
        temporal_url=temporal_run_url(
            state.settings.temporal_ui_url, state.settings.temporal_namespace, inc.workflow_id
        ),
        dispositions=DISPOSITIONS,
        disposition_labels=DISPOSITION_LABELS,
        max_reason=MAX_REASON,
        max_minutes=MAX_EXTEND_SECONDS // 60,
    )


# --- an analyst's actions ------------------------------------------------------------------

_DONE = {
    "lifted": "lifted",
    "extended": "extended",
    "applied": "applied",
    "pending_approval": "asked for approval (another person must approve it)",
    "closed": "closed",
    "noted": "noted",
}


def _text(form: dict[str, str], name: str, label: str) -> str:
    value = form.get(name, "").strip()
    if has_unsafe_chars(value, text=True, bidi=False):
        raise UiError(400, f"Bad {label.lower()}", f"The {label.lower()} has control characters.")
    if len(value) > MAX_REASON:
        raise UiError(
            400, f"{label} too long", f"A {label.lower()} may have at most {MAX_REASON} characters."
        )
    return value


async def _act(
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: Viewer,
    incident_id: str,
    what: str,
    build: Any,
) -> Response:
    form = await read_form(request)
    check_csrf(viewer.session, form)
    target = f"/ui/incidents/{quote(incident_id, safe='')}"
    if not viewer.can_act:
        log.warning("web UI %s refused: %s (%s) on %r", what, viewer.name, viewer.role, incident_id)
        raise UiError(
            403,
            "Not allowed",
            f"Your role ({viewer.role}) may read incidents but not act on them; "
            "only analysts and admins can.",
        )
    if not _ID.match(incident_id):
        raise UiError(404, "Not found", "There is no such incident.")
    req: AnalystRequest = build(form)
    try:
        result = await send_analyst_action(state, session, incident_id, req)
    except ActionRefused as exc:
        return redirect(state, target, Flash("error", f"Not done: {exc}."))
    except HTTPException as exc:  # Temporal unreachable
        return redirect(state, target, Flash("error", f"Not done: {exc.detail}."))
    except RPCError:  # Temporal unavailable or too slow to answer
        return redirect(
            state, target, Flash("error", "Not done: Temporal is not answering; try again.")
        )
    if not result.confirmed:
        message = f"{what}: accepted; the incident shows it once it is done."
    else:
        message = f"{what}: {_DONE.get(result.status, result.status)} by {result.actor}."
    return redirect(state, target, Flash("ok", message))


def _request(viewer: Viewer, kind: str, **fields: Any) -> AnalystRequest:
    return AnalystRequest(kind=kind, actor=viewer.name, role=viewer.role, channel="ui", **fields)


async def _on_action(
    kind: str,
    title: str,
    incident_id: str,
    action_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    """Lift or contain now: an action and a reason."""

    def build(form: dict[str, str]) -> AnalystRequest:
        reason = _text(form, "reason", "Reason")
        return _request(viewer, kind, action_id=action_id[:80], reason=reason)

    return await _act(request, state, session, viewer, incident_id, title, build)


@router.post("/incidents/{incident_id}/actions/{action_id}/lift")
async def lift(
    incident_id: str,
    action_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    return await _on_action("lift", "Lift", incident_id, action_id, request, state, session, viewer)


@router.post("/incidents/{incident_id}/actions/{action_id}/extend")
async def extend(
    incident_id: str,
    action_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    def build(form: dict[str, str]) -> AnalystRequest:
        reason = _text(form, "reason", "Reason")
        raw = form.get("minutes", "").strip()
        if not (raw.isascii() and raw.isdigit() and len(raw) <= 6) or not (
            1 <= int(raw) <= MAX_EXTEND_SECONDS // 60
        ):
            raise UiError(
                400, "Bad extension", f"Extend by 1 to {MAX_EXTEND_SECONDS // 60} minutes."
            )
        return _request(
            viewer, "extend", action_id=action_id[:80], seconds=int(raw) * 60, reason=reason
        )

    return await _act(request, state, session, viewer, incident_id, "Extend", build)


@router.post("/incidents/{incident_id}/actions/{action_id}/contain")
async def contain(
    incident_id: str,
    action_id: str,
    request: Request,
    state: StateDep,
    session: SessionDep,
    viewer: ViewerDep,
) -> Response:
    return await _on_action(
        "contain", "Contain now", incident_id, action_id, request, state, session, viewer
    )


@router.post("/incidents/{incident_id}/close")
async def close(
    incident_id: str, request: Request, state: StateDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    def build(form: dict[str, str]) -> AnalystRequest:
        disposition = form.get("disposition", "")
        if disposition not in DISPOSITIONS:
            raise UiError(400, "Bad request", "Choose true positive, false positive or benign.")
        reason = _text(form, "reason", "Reason")
        return _request(viewer, "close", disposition=disposition, reason=reason)

    return await _act(request, state, session, viewer, incident_id, "Close", build)


@router.post("/incidents/{incident_id}/notes")
async def note(
    incident_id: str, request: Request, state: StateDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    def build(form: dict[str, str]) -> AnalystRequest:
        text = _text(form, "text", "Note")
        if not text:
            raise UiError(400, "Empty note", "Write something first.")
        return _request(viewer, "note", reason=text)

    return await _act(request, state, session, viewer, incident_id, "Note", build)
