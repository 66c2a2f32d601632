"""`/approvals/email/{token}`: the page an e-mailed approval link opens.

Opening the link (GET) decides nothing: mail scanners and link previews fetch links. The page
shows the facts and a form; the decision is a POST carrying a CSRF token that matches a
signed cookie set by that page. The link is used up when a decision goes through the gate
(`soar.api.response.send_decision`, as for every channel); the link's row is locked
meanwhile, so a second use, even at the same instant, finds it used. A used, expired, forged
or unknown link gets a page saying so, never a decision.
"""

from __future__ import annotations

import logging
import secrets
import time
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.responses import HTMLResponse

from activities.context import load_approval_brief
from approvals.channels import action_label, progress_text, rule_text
from approvals.email_links import OpenedLink, link_key, open_link, token_hash
from approvals.web import _env, error_page
from approvals.web_auth import (
    UiError,
    read_form,
    secure_cookies,
    security_headers,
    sign,
    ui_key,
    unsign,
)
from soar.api.deps import AppState, StateDep
from soar.api.response import DecisionRefused, send_decision
from soar.bounds import has_unsafe_chars
from soar.db import transaction
from soar.domain import DecisionRequest

log = logging.getLogger("soar.email")
router = APIRouter(prefix="/approvals/email", include_in_schema=False)

CSRF_COOKIE = "soar_email_csrf"
COOKIE_PATH = "/approvals/email"
CSRF_SECONDS = 3600
COMMENT_MAX = 2000

_PROBLEMS = {
    "invalid": (
        404,
        "Link not valid",
        "This approval link is not valid: it may have been cut when copied, or it was never "
        "ours. Nothing was decided. Open the approval in the web UI instead.",
    ),
    "used": (
        410,
        "Link already used",
        "This link has already been used: each e-mailed link decides once. Nothing changed. "
        "See the approval in the web UI.",
    ),
    "expired": (
        410,
        "Link expired",
        "This link has expired. Nothing was decided. If the approval is still pending, "
        "decide it in the web UI.",
    ),
    "disabled": (403, "Not allowed", "Your account is disabled; nothing was decided."),
}


def _page(template: str, *, status: int = 200, **context: Any) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _env.get_template(template).render(
        viewer=None,
        flash=None,
        nonce=nonce,
        csrf="",
        refresh_seconds=0,
        section="",
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    security_headers(response, nonce)
    # The token is in the path: it must never leave in a Referer header.
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _problem(kind: str, opened: OpenedLink | None = None) -> HTMLResponse:
    status, title, message = _PROBLEMS[kind]
    if opened is not None and opened.link is not None:
        if kind == "used" and opened.link.used_at is not None:
            message += f" (used {opened.link.used_at.isoformat(timespec='seconds')})"
        if kind == "expired":
            message += f" (expired {opened.link.expires_at.isoformat(timespec='seconds')})"
    response = error_page(UiError(status, title, message))
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _decided(opened: OpenedLink) -> HTMLResponse | None:
    approval = opened.approval
    if approval is None or approval.status == "pending":
        return None
    by = f" by {approval.decided_by}" if approval.decided_by else ""
    response = error_page(
        UiError(409, "Already decided", f"This approval is already {approval.status}{by}.")
    )
    response.headers["Referrer-Policy"] = "no-referrer"
    return response


def _key(state: AppState) -> bytes:
    try:
        return link_key(state.settings)
    except ValueError:
        raise UiError(
            404, "Link not valid", "E-mail approvals are not configured on this server."
        ) from None


def _csrf_cookie(state: AppState, token: str, csrf: str) -> str:
    payload = {"c": csrf, "t": token_hash(token)[:16], "e": int(time.time()) + CSRF_SECONDS}
    return sign(ui_key(state), "email-csrf", payload)


def same_text(a: str, b: str) -> bool:
    """A constant-time comparison of any two strings: `compare_digest` refuses str with
    non-ASCII characters (a TypeError, a 500), so it compares their UTF-8 bytes (lone
    surrogates passed through, never an error)."""
    return secrets.compare_digest(
        a.encode("utf-8", "surrogatepass"), b.encode("utf-8", "surrogatepass")
    )


def _csrf_ok(state: AppState, request: Request, token: str, submitted: str) -> bool:
    p = unsign(ui_key(state), "email-csrf", request.cookies.get(CSRF_COOKIE))
    if p is None or not submitted or p.get("t") != token_hash(token)[:16]:
        return False
    return isinstance(p.get("c"), str) and same_text(p["c"], submitted)


@router.get("/{token}")
async def decision_page(token: str, state: StateDep) -> Response:
    try:
        key = _key(state)
    except UiError as exc:
        return error_page(exc)
    now = datetime.now(UTC)
    async with state.factory() as s:
        opened = await open_link(s, key, token, now=now)
        if opened.problem is not None:
            return _problem(opened.problem, opened)
        decided = _decided(opened)
        if decided is not None:
            return decided
        assert opened.approval is not None and opened.principal is not None
        brief = await load_approval_brief(
            session=s, settings=state.settings, approval_id=opened.approval.id
        )
    if brief is None:
        return _problem("invalid")
    csrf = secrets.token_urlsafe(32)
    response = _page(
        "email_decision.html",
        brief=brief,
        who=opened.principal.name,
        label=action_label(brief.action_type),
        rule=rule_text(brief),
        progress=progress_text(brief),
        link_expires=opened.link.expires_at if opened.link else None,
        form_csrf=csrf,
    )
    response.set_cookie(
        CSRF_COOKIE,
        _csrf_cookie(state, token, csrf),
        max_age=CSRF_SECONDS,
        path=COOKIE_PATH,
        secure=secure_cookies(state.settings),
        httponly=True,
        samesite="strict",
    )
    return response


@router.post("/{token}")
async def decide(token: str, request: Request, state: StateDep) -> Response:
    try:
        key = _key(state)
        form = await read_form(request)
    except UiError as exc:
        return error_page(exc)
    if not _csrf_ok(state, request, token, form.get("csrf", "")):
        return error_page(
            UiError(
                403,
                "Form refused",
                "This form has expired or did not come from this page (missing or wrong CSRF "
                "token). Open the link from the e-mail again; nothing was decided.",
            )
        )
    decision = form.get("decision", "")
    if decision not in ("approve", "reject"):
        return error_page(UiError(400, "Bad request", "Choose Approve or Reject."))
    comment = form.get("comment", "").strip() or None
    if comment is not None and (
        len(comment) > COMMENT_MAX or has_unsafe_chars(comment, text=True, bidi=False)
    ):
        return error_page(
            UiError(400, "Bad comment", "At most 2000 characters, no control characters.")
        )
    now = datetime.now(UTC)
    async with transaction(state.factory) as s:
        # The row stays locked until the decision has gone through the gate: a second use
        # waits here, then finds the link used.
        opened = await open_link(s, key, token, now=now, lock=True)
        if opened.problem is not None:
            return _problem(opened.problem, opened)
        decided = _decided(opened)
        if decided is not None:
            return decided
        assert opened.approval is not None and opened.principal is not None
        assert opened.link is not None
        p = opened.principal
        req = DecisionRequest(
            approval_id=opened.approval.id,
            decision=decision,
            actor=p.name,
            role=p.role,
            channel="email",
            comment=comment,
            approver=p.name,
        )
        async with state.factory() as gate_session:
            try:
                result = await send_decision(state, gate_session, req.approval_id, req)
            except DecisionRefused as exc:
                log.info("e-mail decision refused on %s: %s", req.approval_id, exc)
                return error_page(UiError(exc.status, "Not recorded", f"{exc}."))
            except HTTPException as exc:  # Temporal unreachable: the link stays usable
                return error_page(UiError(503, "Try again", f"Not recorded: {exc.detail}."))
        opened.link.used_at = now
        brief = await load_approval_brief(
            session=s, settings=state.settings, approval_id=req.approval_id
        )
    log.info("e-mail decision on %s by %s: %s", req.approval_id, p.name, result.status)
    return _page(
        "email_done.html",
        label=action_label(brief.action_type) if brief else "",
        target=brief.target if brief else "",
        incident_id=brief.incident.incident_id if brief else "",
        outcome=result.status,
        who=p.name,
        approvals=result.approvals,
        quorum=result.quorum,
        confirmed=result.confirmed,
    )
