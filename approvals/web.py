"""The web UI at /ui: sign-in, pending approvals, incidents. Server-rendered (Jinja2, autoescaped),
every core action a plain HTML form, so it works without JavaScript.

Deciding goes through :func:`soar.api.response.send_decision`, the same gate as the API and
Slack; the UI only adds who is signed in, the CSRF check and Post/Redirect/Get.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime
from importlib import resources
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.routing import APIRoute
from jinja2 import Environment, PackageLoader, StrictUndefined
from sqlalchemy import func, select

from activities.context import incident_brief
from approvals.web_auth import (
    Flash,
    OptionalViewerDep,
    SignInRequired,
    Throttled,
    UiError,
    UiSession,
    Viewer,
    ViewerDep,
    check_csrf,
    clear_flash,
    clear_session,
    end_session,
    hasher_of,
    local_target,
    open_session,
    read_flash,
    read_form,
    read_session,
    security_headers,
    throttle_of,
    ui_key,
    write_flash,
    write_session,
)
from soar import actions
from soar.api.deps import AppState, SessionDep, StateDep
from soar.api.response import READERS, DecisionRefused, send_decision
from soar.auth import HasherBusy, identity_for_password, identity_for_token
from soar.bounds import to_utc
from soar.connectors import IncidentBrief
from soar.domain import DecisionRequest
from soar.models import Action, Approval, Principal

log = logging.getLogger("soar.ui")

_ID = re.compile(r"^[A-Za-z0-9._:-]{1,80}$")
# PostgreSQL refuses NUL in text, and control characters have no business in names or
# comments: refused up front, so they can never turn into a 5xx or a failing activity.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


class UiRoute(APIRoute):
    """Turns the UI's refusals (and malformed requests) into HTML pages instead of the API's
    JSON errors, so a person never sees a bare JSON body or a 5xx for bad input."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def wrapped(request: Request) -> Response:
            try:
                return await handler(request)
            except SignInRequired as exc:
                target = "/ui/login"
                if exc.target not in ("/ui", "/ui/", "/ui/approvals"):
                    target += "?next=" + quote(exc.target, safe="")
                return RedirectResponse(target, status_code=303)
            except UiError as exc:
                return error_page(exc)
            except RequestValidationError:
                return error_page(UiError(422, "Bad request", "The request is malformed."))

        return wrapped


router = APIRouter(prefix="/ui", route_class=UiRoute, include_in_schema=False)


# --- rendering -------------------------------------------------------------------------------


def _when(value: datetime | str | None) -> str:
    if value is None or value == "":
        return "\N{EN DASH}"
    if isinstance(value, str):
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return value
    else:
        at = value
    utc = to_utc(at)  # None for the edges of the calendar, where the offset overflows
    return utc.strftime("%Y-%m-%d %H:%M:%S UTC") if utc is not None else at.isoformat()


def _iso(value: datetime | str | None) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    return value or ""


def _http_url(value: str | None) -> str | None:
    # Autoescaping does not stop a javascript: link; only http(s) links are rendered.
    return value if value and value.startswith(("https://", "http://")) else None


_env = Environment(
    loader=PackageLoader("approvals", "templates"),
    autoescape=True,
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters.update(when=_when, iso=_iso, http_url=_http_url)
_env.globals.update(action_label=actions.label)
_CSS = (resources.files("approvals") / "static" / "ui.css").read_bytes()


def error_page(exc: UiError) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    html = _env.get_template("error.html").render(
        title=exc.title,
        message=exc.message,
        status=exc.status,
        viewer=None,
        flash=None,
        nonce=nonce,
        csrf="",
        refresh_seconds=0,
        section="",
    )
    response = HTMLResponse(html, status_code=exc.status)
    security_headers(response, nonce)
    return response


def render(
    request: Request,
    state: AppState,
    template: str,
    *,
    viewer: Viewer | None,
    status: int = 200,
    **context: Any,
) -> HTMLResponse:
    nonce = secrets.token_urlsafe(16)
    flash = read_flash(request, ui_key(state))
    context.setdefault("refresh_seconds", 0)
    context.setdefault("section", "")
    html = _env.get_template(template).render(
        viewer=viewer,
        flash=flash,
        nonce=nonce,
        csrf=viewer.session.csrf if viewer else "",
        **context,
    )
    response = HTMLResponse(html, status_code=status)
    if flash is not None:
        clear_flash(response, state.settings)
    security_headers(response, nonce)
    return response


def redirect(state: AppState, target: str, flash: Flash | None = None) -> RedirectResponse:
    response = RedirectResponse(target, status_code=303)
    if flash is not None:
        write_flash(response, ui_key(state), flash, state.settings)
    return response


# --- sign-in and sign-out --------------------------------------------------------------------


@router.get("")
@router.get("/")
async def home(viewer: OptionalViewerDep) -> Response:
    return RedirectResponse("/ui/approvals" if viewer else "/ui/login", status_code=303)


@router.get("/static/ui.css")
async def stylesheet() -> Response:
    return Response(_CSS, media_type="text/css", headers={"Cache-Control": "max-age=3600"})


def _login_page(
    request: Request,
    state: AppState,
    ui: UiSession,
    *,
    next_: str,
    error: str | None = None,
    username: str = "",
    status: int = 200,
) -> Response:
    response = render(
        request,
        state,
        "login.html",
        viewer=None,
        status=status,
        error=error,
        username=username,
        next=next_,
        login_csrf=ui.csrf,
    )
    write_session(response, ui_key(state), ui, state.settings)
    return response


@router.get("/login")
async def login_form(
    request: Request,
    state: StateDep,
    viewer: OptionalViewerDep,
    next: str = "",
) -> Response:
    target = local_target(next)
    if viewer is not None:
        return RedirectResponse(target, status_code=303)
    ui = read_session(request, ui_key(state))
    if ui is None or ui.name is not None:
        ui = UiSession.anonymous()
    return _login_page(request, state, ui, next_=target)


@router.post("/login")
async def login(request: Request, state: StateDep, session: SessionDep) -> Response:
    form = await read_form(request)
    ui = read_session(request, ui_key(state))
    check_csrf(ui, form)
    assert ui is not None
    target = local_target(form.get("next"))
    token = form.get("token", "").strip()
    username = form.get("username", "").strip()
    address = request.client.host if request.client else "?"
    throttle = throttle_of(state)
    limited = "" if token else username
    if not token and not (username and form.get("password")):
        return _login_page(
            request,
            state,
            ui,
            next_=target,
            status=400,
            username=username,
            error="Enter a user name and a password, or an API token.",
        )
    wait, limit = throttle.wait(limited, address)
    try:
        if wait > 0:
            raise Throttled(wait, limit)
        if token:
            method, identity = "token", await identity_for_token(session, token)
            refusal = "Unknown or disabled API token."
        else:
            method, identity = "password", None
            hasher = hasher_of(state)
            if _CONTROL.search(username):
                await hasher.verify(form["password"], None)  # the same work as any other name
            else:
                identity = await identity_for_password(session, username, form["password"], hasher)
            refusal = "Unknown user or wrong password."
    except (Throttled, HasherBusy) as exc:
        why = exc.limit if isinstance(exc, Throttled) else "busy"
        after = exc.retry_after if isinstance(exc, Throttled) else "1"
        log.warning(
            "auth.throttled limit=%s user=%r address=%s retry_after=%s",
            why,
            limited[:128],
            address,
            after,
        )
        response = _login_page(
            request,
            state,
            ui,
            next_=target,
            status=429,
            username=username,
            error=f"Too many sign-in attempts. Try again in {after} seconds.",
        )
        response.headers["Retry-After"] = after
        return response
    p = (
        await session.scalar(select(Principal).where(Principal.name == identity.name))
        if identity
        else None
    )
    if p is None or p.role not in READERS:
        throttle.failed(limited, address)
        log.warning("auth.refused web UI sign-in (%s) from %s", method, address)
        return _login_page(
            request, state, ui, next_=target, status=401, username=username, error=refusal
        )
    throttle.succeeded(limited)
    log.info("web UI sign-in: %s (%s) with a %s", p.name, p.role, method)
    signed_in = UiSession.signed_in(p, method)
    await open_session(session, signed_in)
    response = redirect(state, target, Flash("ok", f"Signed in as {p.name} ({p.role})."))
    write_session(response, ui_key(state), signed_in, state.settings)
    return response


@router.post("/logout")
async def logout(request: Request, state: StateDep, session: SessionDep) -> Response:
    form = await read_form(request)
    ui = read_session(request, ui_key(state))
    if ui is not None and ui.name is not None:
        check_csrf(ui, form)
        await end_session(session, ui)  # the cookie, even copied, is refused from now on
    response = redirect(state, "/ui/login", Flash("ok", "Signed out."))
    clear_session(response, state.settings)
    return response


# --- approvals -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ApprovalCard:
    """One approval with the same facts as the Slack message."""

    approval: Approval
    action: Action
    brief: IncidentBrief


async def _pending_cards(
    session: SessionDep, state: AppState, incident_id: str | None = None
) -> list[ApprovalCard]:
    q = (
        select(Approval, Action)
        .join(Action, Action.id == Approval.action_id)
        .where(Approval.status == "pending")
        .order_by(Approval.requested_at.desc())
        .limit(200)
    )
    if incident_id is not None:
        q = q.where(Approval.incident_id == incident_id)
    briefs: dict[str, IncidentBrief] = {}
    cards = []
    for approval, action in (await session.execute(q)).all():
        if approval.incident_id not in briefs:
            briefs[approval.incident_id] = await incident_brief(
                session, approval.incident_id, state.settings
            )
        cards.append(ApprovalCard(approval, action, briefs[approval.incident_id]))
    return cards


@router.get("/approvals")
async def approvals_page(
    request: Request, state: StateDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    cards = await _pending_cards(session, state)
    recent = (
        await session.execute(
            select(Approval, Action)
            .join(Action, Action.id == Approval.action_id)
            .where(Approval.status != "pending")
            .order_by(func.coalesce(Approval.decided_at, Approval.expires_at).desc())
            .limit(15)
        )
    ).all()
    return render(
        request,
        state,
        "approvals.html",
        viewer=viewer,
        cards=cards,
        recent=recent,
        section="approvals",
        refresh_seconds=30,
    )


def undo_note(action: Action) -> tuple[bool, str]:
    """Whether approving `action` can be undone, and how (soar.actions.undo_note)."""
    return actions.undo_note(action.action_type, action.duration_seconds)


def _comment(form: dict[str, str]) -> str | None:
    comment = form.get("comment", "").strip() or None
    if comment is not None and _CONTROL.search(comment):
        raise UiError(400, "Bad comment", "The comment contains control characters.")
    if comment is not None and len(comment) > 2000:
        raise UiError(400, "Comment too long", "A comment may have at most 2000 characters.")
    return comment


@router.post("/approvals/{approval_id}/confirm")
async def confirm_approval(
    approval_id: str, request: Request, state: StateDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    """Approve asks first: what it allows and whether it can be undone. Nothing changes
    here; the page's form sends the decision."""
    form = await read_form(request)
    check_csrf(viewer.session, form)
    if not viewer.can_decide:
        raise UiError(403, "Not allowed", f"Your role ({viewer.role}) may not decide approvals.")
    comment = _comment(form)
    target = local_target(form.get("next"))
    approval = await session.get(Approval, approval_id) if _ID.match(approval_id) else None
    action = await session.get(Action, approval.action_id) if approval else None
    if approval is None or action is None:
        return redirect(state, target, Flash("error", "Not recorded: there is no such approval."))
    if approval.status != "pending":
        message = f"Not recorded: the approval is already {approval.status}."
        return redirect(state, target, Flash("error", message))
    brief = await incident_brief(session, approval.incident_id, state.settings)
    undoable, undo = undo_note(action)
    return render(
        request,
        state,
        "confirm.html",
        viewer=viewer,
        card=ApprovalCard(approval, action, brief),
        undoable=undoable,
        undo=undo,
        comment=comment or "",
        next_url=target,
        section="approvals",
    )


@router.post("/approvals/{approval_id}/decision")
async def decide(
    approval_id: str, request: Request, state: StateDep, session: SessionDep, viewer: ViewerDep
) -> Response:
    form = await read_form(request)
    check_csrf(viewer.session, form)
    if not viewer.can_decide:
        log.warning(
            "web UI decision refused: %s (%s) on %r", viewer.name, viewer.role, approval_id[:80]
        )
        raise UiError(
            403,
            "Not allowed",
            f"Your role ({viewer.role}) may read approvals but not decide them; "
            "only approvers and admins can.",
        )
    decision = form.get("decision", "")
    if decision not in ("approve", "reject"):
        raise UiError(400, "Bad request", "Choose Approve or Reject.")
    comment = _comment(form)
    target = local_target(form.get("next"))
    if not _ID.match(approval_id):
        return redirect(state, target, Flash("error", "Not recorded: there is no such approval."))
    approval = await session.get(Approval, approval_id)
    action = await session.get(Action, approval.action_id) if approval else None
    what = f"{actions.label(action.action_type)} {action.target}" if action else approval_id
    req = DecisionRequest(
        approval_id=approval_id,
        decision=decision,
        actor=viewer.name,
        role=viewer.role,
        channel="ui",
        comment=comment,
        approver=viewer.name,
    )
    try:
        result = await send_decision(state, session, approval_id, req)
    except DecisionRefused as exc:
        return redirect(state, target, Flash("error", f"Not recorded: {exc}."))
    except HTTPException as exc:  # Temporal unreachable: the decision cannot be delivered now
        return redirect(state, target, Flash("error", f"Not recorded: {exc.detail}."))
    if result.status == "pending":
        counted = f"{result.approvals} of {result.quorum}" if result.approvals else "counted"
        message = f"{what}: your approval is recorded ({counted}); another approver is needed."
        return redirect(state, target, Flash("ok", message))
    return redirect(state, target, Flash("ok", f"{what}: {result.status} by {result.decided_by}."))


@router.api_route("/{rest:path}", methods=["GET", "POST"])
async def not_found(rest: str) -> Response:
    raise UiError(404, "Not found", "There is no such page.")
