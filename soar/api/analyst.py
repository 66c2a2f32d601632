"""An analyst acts on an incident: lift a block early, extend it, contain now, close with a
disposition, add a note. `POST /v1/incidents/{id}/...`, roles analyst or admin.

Every action is a signed Temporal update (`analyst_action`) to the incident's workflow, whose
validator refuses what it cannot do without leaving anything in the history; the actor is
the authenticated principal, never a field of the body. Like a decision, the answer waits a
bounded time: 200 once done, 202 with where to look when the workflow has accepted it but not
finished yet. A closed incident's workflow has nothing left to do with its disposition or a
note: those are written directly (same rows, same keys)."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError, RPCStatusCode

from soar.api import gate
from soar.api.deps import AppState, SessionDep, StateDep, require_roles, temporal_or_503
from soar.audit.chain import LogEvent, append
from soar.auth import Identity
from soar.bounds import has_unsafe_chars
from soar.contracts import AnalystStep
from soar.db import transaction
from soar.domain import (
    ANALYST_ROLES,
    MAX_EXTEND_SECONDS,
    MAX_REASON,
    UPDATE_ANALYST,
    AnalystRequest,
    AnalystResult,
)
from soar.incidents import close_with_disposition, incident_base
from soar.models import Incident

router = APIRouter(tags=["incidents"])
_ID_PATTERN = r"^[A-Za-z0-9._:-]{1,80}$"
IncidentId = Annotated[str, Path(pattern=_ID_PATTERN, description="an incident id")]
ActionId = Annotated[
    str, Path(pattern=_ID_PATTERN, description="an action id, from the incident's `actions`")
]
ANALYSTS = tuple(sorted(ANALYST_ROLES))
ACCEPT_SECONDS = 1.5  # waiting for a worker to validate the request
DONE_SECONDS = 1.5  # then waiting for it to be done (a lift is one activity)


def _printable(v: str) -> str:
    # PostgreSQL text cannot hold NUL; other control characters have no place here.
    if has_unsafe_chars(v, text=True, bidi=False):
        raise ValueError("must not contain control characters")
    return v.strip()


class ReasonIn(BaseModel):
    reason: str = Field(default="", max_length=MAX_REASON, description="why (logged)")

    @field_validator("reason")
    @classmethod
    def _reason(cls, v: str) -> str:
        return _printable(v)


class ExtendIn(ReasonIn):
    minutes: int = Field(ge=1, le=MAX_EXTEND_SECONDS // 60, description="added to the expiry")


class CloseIn(ReasonIn):
    disposition: Literal["true_positive", "false_positive", "benign"]


class NoteIn(BaseModel):
    text: str = Field(min_length=1, max_length=MAX_REASON)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str) -> str:
        return _printable(v)


class ActionRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


async def send_analyst_action(
    state: AppState,
    session: AsyncSession,
    incident_id: str,
    req: AnalystRequest,
    *,
    deadline: float = DONE_SECONDS,
) -> AnalystResult:
    """The one gate for analysts (API and web UI): the incident exists, the analyst is not
    its subject, then the signed update; a closed incident's disposition and notes directly.
    Raises ActionRefused with the HTTP status to answer."""
    inc = await session.get(Incident, incident_id)
    if inc is None:
        raise ActionRefused(404, f"incident {incident_id} not found")
    if req.kind != "note" and await gate.own_incident(session, inc.id, req.actor):
        raise ActionRefused(403, f"{req.actor} may not act on an incident about their account")
    workflow_id = inc.workflow_id
    closed = inc.status == "closed"
    await session.commit()  # no connection held while Temporal answers
    req = gate.signed(state, req)  # with a fresh nonce, which keys its log row
    if closed and req.kind == "close":
        return await _direct(state, incident_id, req)
    client = temporal_or_503(state)
    handle = client.get_workflow_handle(workflow_id)
    try:
        update = await handle.start_update(
            UPDATE_ANALYST,
            req,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=AnalystResult,
            rpc_timeout=timedelta(seconds=ACCEPT_SECONDS),
        )
        try:
            result: AnalystResult = await asyncio.wait_for(
                asyncio.shield(update.result()), timeout=deadline
            )
        except TimeoutError:
            return AnalystResult(req.kind, "accepted", req.actor, "", confirmed=False)
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        return AnalystResult(req.kind, "submitted", req.actor, "", confirmed=False)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        raise ActionRefused(409, getattr(cause, "message", None) or str(cause or exc)) from None
    except RPCError as exc:
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            raise  # 503 (the app's handler)
        if closed and req.kind == "note":  # the workflow has ended
            return await _direct(state, incident_id, req)
        raise ActionRefused(409, f"the incident workflow is not running: {exc.message}") from None
    return result


async def _direct(state: AppState, incident_id: str, req: AnalystRequest) -> AnalystResult:
    """A closed incident's disposition (set or changed) or a note, written as the workflow's
    activities would write them."""
    step = AnalystStep(
        incident_id, req.actor, req.reason, f"{incident_id}:analyst:{req.nonce}", req.channel
    )
    async with transaction(state.factory) as s:
        if req.kind == "close":
            inc = await close_with_disposition(s, step, req.disposition)
            if inc is None:
                raise ActionRefused(404, f"incident {incident_id} not found")
            at = inc.closed_at.isoformat() if inc.closed_at else ""
            return AnalystResult("close", "closed", req.actor, at, disposition=req.disposition)
        inc = await s.get(Incident, incident_id)
        if inc is None:
            raise ActionRefused(404, f"incident {incident_id} not found")
        await append(
            s,
            LogEvent(
                event_key=step.event_key,
                event="incident.note",
                actor=req.actor,
                details={"text": req.reason, "channel": req.channel},
                **incident_base(inc),
            ),
        )
    return AnalystResult("note", "noted", req.actor, "")


def _answer(incident_id: str, result: AnalystResult) -> Any:
    body: dict[str, Any] = {
        "incident_id": incident_id,
        "kind": result.kind,
        "status": result.status,
        "by": result.actor,
        "at": result.at or None,
    }
    for name in ("action_id", "approval_id", "expires_at", "disposition"):
        if value := getattr(result, name):
            body[name] = value
    if not result.confirmed:
        # "accepted": the workflow validated it and finishes it; "submitted": no worker has
        # validated it yet, it may still be refused. Poll the incident.
        body["state"] = result.status
        body["status"] = "pending"
        body["poll"] = f"/v1/incidents/{incident_id}"
        return JSONResponse(body, status_code=202)
    return body


async def _act(
    state: AppState, session: AsyncSession, incident_id: str, req: AnalystRequest
) -> Any:
    try:
        result = await send_analyst_action(state, session, incident_id, req)
    except ActionRefused as exc:
        raise HTTPException(exc.status, str(exc)) from None
    return _answer(incident_id, result)


def _request(identity: Identity, kind: str, **fields: Any) -> AnalystRequest:
    return AnalystRequest(
        kind=kind, actor=identity.name, role=identity.role, channel="api", **fields
    )


@router.post("/v1/incidents/{incident_id}/actions/{action_id}/lift")
async def lift_action(
    incident_id: IncidentId,
    action_id: ActionId,
    body: ReasonIn,
    state: StateDep,
    session: SessionDep,
    identity: Identity = require_roles(*ANALYSTS),
) -> Any:
    """Lift a temporary block now: the enforcement check says unblocked at once, and its timer
    lifts nothing later."""
    req = _request(identity, "lift", action_id=action_id, reason=body.reason)
    return await _act(state, session, incident_id, req)


@router.post("/v1/incidents/{incident_id}/actions/{action_id}/extend")
async def extend_action(
    incident_id: IncidentId,
    action_id: ActionId,
    body: ExtendIn,
    state: StateDep,
    session: SessionDep,
    identity: Identity = require_roles(*ANALYSTS),
) -> Any:
    """Move a temporary block's expiry `minutes` later; it lifts itself then."""
    req = _request(
        identity, "extend", action_id=action_id, seconds=body.minutes * 60, reason=body.reason
    )
    return await _act(state, session, incident_id, req)


@router.post("/v1/incidents/{incident_id}/actions/{action_id}/contain")
async def contain_action(
    incident_id: IncidentId,
    action_id: ActionId,
    body: ReasonIn,
    state: StateDep,
    session: SessionDep,
    identity: Identity = require_roles(*ANALYSTS),
) -> Any:
    """Apply a planned action that is not in force (skipped, expired, lifted, rejected) now: a
    low-risk one at once; a high-risk one asks for an approval that someone else must give."""
    req = _request(identity, "contain", action_id=action_id, reason=body.reason)
    return await _act(state, session, incident_id, req)


@router.post("/v1/incidents/{incident_id}/close")
async def close_incident(
    incident_id: IncidentId,
    body: CloseIn,
    state: StateDep,
    session: SessionDep,
    identity: Identity = require_roles(*ANALYSTS),
) -> Any:
    """Close with a disposition. False positive or benign: its temporary blocks are lifted
    now; true positive: they stay until their time. Refused while an approval is pending. A
    closed incident: sets (or changes) its disposition."""
    req = _request(identity, "close", disposition=body.disposition, reason=body.reason)
    return await _act(state, session, incident_id, req)


@router.post("/v1/incidents/{incident_id}/notes")
async def add_note(
    incident_id: IncidentId,
    body: NoteIn,
    state: StateDep,
    session: SessionDep,
    identity: Identity = require_roles(*ANALYSTS),
) -> Any:
    """A note in the incident's log (and on its ticket)."""
    req = _request(identity, "note", reason=body.text)
    return await _act(state, session, incident_id, req)
