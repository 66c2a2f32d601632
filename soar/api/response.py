"""GET /v1/enforcement/..., /v1/incidents, /v1/approvals and the decision endpoint."""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal, TypeVarTuple
from urllib.parse import parse_qsl

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import Select, select
from starlette.types import ASGIApp, Receive, Scope, Send
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError

from soar import actions, enforcement
from soar.api import gate
from soar.api.deps import (
    AppState,
    IdentityDep,
    SessionDep,
    StateDep,
    require_roles,
    temporal_or_503,
)
from soar.approvers import decision_refusal
from soar.auth import Identity, identity_for_token, token_hash
from soar.bounds import (
    LIKE_ESCAPE,
    canonical_subject,
    check_query_datetime,
    has_unsafe_chars,
    invalid,
    like_contains,
    like_prefix,
)
from soar.config import Settings
from soar.domain import DECIDER_ROLES, UPDATE_DECIDE, DecisionRequest, DecisionResult
from soar.incident_search import IncidentFilter, SearchError, search_incidents, temporal_run_url
from soar.incidents import analyst_options
from soar.metrics import DECISIONS
from soar.models import Action as ActionRow
from soar.models import ActionLogEntry, Approval, ApprovalMessage, Detection, Incident
from soar.replica import EnforcementReplica

router = APIRouter()
READERS = ("analyst", "approver", "auditor", "admin")
# Who may ask whether something is blocked: LLM gateways (role gateway, which may do nothing
# else) and the people who run the response. Auditors read the log, not the live state.
ENFORCEMENT_READERS = ("gateway", "analyst", "approver", "admin")


class _TokenCache:
    """Identities of bearer tokens recently verified, by SHA-256, for the hot path: a
    gateway asks before every prompt and must not cost a database query each time. Only
    known tokens are kept, at most `_TOKEN_CACHE_MAX`, each for the configured seconds."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self.entries: dict[str, tuple[Identity, float]] = {}

    def get(self, key: str) -> Identity | None:
        hit = self.entries.get(key)
        if hit is None:
            return None
        if hit[1] < time.monotonic():
            self.entries.pop(key, None)
            return None
        return hit[0]

    def put(self, key: str, identity: Identity) -> None:
        if self.ttl <= 0:
            return
        if len(self.entries) >= _TOKEN_CACHE_MAX:
            self.entries.clear()
        self.entries[key] = (identity, time.monotonic() + self.ttl)


_TOKEN_CACHE_MAX = 10_000
_MAX_TOKEN = 512


def _unauthorized(message: str) -> HTTPException:
    return HTTPException(401, message, headers={"WWW-Authenticate": "Bearer"})


async def enforcement_identity(request: Request, state: StateDep) -> Identity:
    """A bearer token of role gateway, analyst, approver or admin (CONTRACT.md), verified
    against the database at most once per token per cache period."""
    scheme, _, raw = request.headers.get("authorization", "").partition(" ")
    token = raw.strip()
    if scheme.lower() != "bearer" or not token:
        raise _unauthorized("a bearer token is required")
    if len(token) > _MAX_TOKEN:
        raise _unauthorized("unknown or disabled token")
    cache = state.extras.get("token_cache")
    if not isinstance(cache, _TokenCache):
        cache = _TokenCache(state.settings.enforcement_token_cache_seconds)
        state.extras["token_cache"] = cache
    key = token_hash(token)
    identity = cache.get(key)
    if identity is None:
        async with state.factory() as session:
            identity = await identity_for_token(session, token)
        if identity is None:
            raise _unauthorized("unknown or disabled token")
        cache.put(key, identity)
    if identity.role not in ENFORCEMENT_READERS:
        needs = " or ".join(ENFORCEMENT_READERS)
        raise HTTPException(403, f"role {identity.role!r} may not do this (needs {needs})")
    return identity


EnforcementIdentity = Annotated[Identity, Depends(enforcement_identity)]


def replica_of(state: StateDep) -> EnforcementReplica | None:
    replica = state.extras.get("replica")
    return replica if isinstance(replica, EnforcementReplica) else None


def enforcement_status(
    state: AppState, kind: str, target: str, tenant: str
) -> enforcement.EnforcementStatus | None:
    """From this process's replica; None when its feed is stale."""
    replica = replica_of(state)
    if replica is None or not replica.fresh:
        return None
    return enforcement.EnforcementStatus(kind, replica.effects(kind, target, tenant))


def _invalid(errors: list[tuple[str, str]]) -> JSONResponse:
    return JSONResponse(
        {
            "error": "invalid request",
            "errors": [{"field": name, "message": message} for name, message in errors],
        },
        status_code=422,
    )


@router.get("/v1/enforcement/{kind}/{target}", tags=["enforcement"], response_model=None)
async def enforcement_check(
    kind: str,
    target: str,
    state: StateDep,
    _: EnforcementIdentity,
    tenant: str = "default",
) -> JSONResponse:
    """`kind`: sessions, api-keys, users, or the path of any other target kind an action
    enforces on (e.g. models). Answered from this process's replica while its feed is
    fresh, else from PostgreSQL."""
    target_kind = actions.kind_of_path(kind)
    if target_kind is None:
        paths = ", ".join(k.path for k in actions.TARGET_KINDS.values())
        return _invalid([("kind", f"must be one of {paths}")])
    bad = [name for name, v in (("target", target), ("tenant", tenant)) if "\x00" in v]
    if bad:  # as the database would refuse it: the input's fault, never a 5xx
        return _invalid([(name, "contains characters that cannot be stored") for name in bad])
    # as read from a request (an attacker's header): in the form the intake stores it
    target, tenant = canonical_subject(target, tenant)
    status = enforcement_status(state, target_kind.name, target, tenant)
    if status is None:
        async with state.factory() as session:
            status = await enforcement.check(
                session, kind=target_kind.name, target=target, tenant=tenant
            )
    return JSONResponse(status.as_json())


class EnforcementFastPath:
    """ASGI middleware answering `GET /v1/enforcement/{kind}/{target}` before routing, when
    it can answer exactly as the route would: this process's replica is fresh and the
    bearer token is in the token cache with an allowed role. Anything else (first use of a
    token, a wrong role, a stale replica, an odd path) goes on to the route, which answers
    401 / 403 / 422 or asks the database. Saves the framework's routing and dependency work
    on the path every prompt of every gateway takes."""

    _PREFIX = "/v1/enforcement/"

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] == "http"
            and scope["method"] == "GET"
            and scope["path"].startswith(self._PREFIX)
        ):
            body = self._answer(scope)
            if body is not None:
                await JSONResponse(body)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _answer(self, scope: Scope) -> dict[str, object] | None:
        path, sep, target = scope["path"][len(self._PREFIX) :].partition("/")
        kind = actions.kind_of_path(path)
        if kind is None or not sep or not target or "/" in target or "\x00" in target:
            return None
        replica = replica_of(self.state)
        cache = self.state.extras.get("token_cache")
        if replica is None or not replica.fresh or not isinstance(cache, _TokenCache):
            return None
        auth = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
        scheme, _, raw = auth.decode("latin-1").partition(" ")
        token = raw.strip()
        if scheme.lower() != "bearer" or not token or len(token) > _MAX_TOKEN:
            return None
        identity = cache.get(token_hash(token))
        if identity is None or identity.role not in ENFORCEMENT_READERS:
            return None
        tenant = "default"
        query = scope.get("query_string", b"")
        if query:
            try:
                for name, value in parse_qsl(query.decode("latin-1"), keep_blank_values=True):
                    if name == "tenant":
                        tenant = value
                        if "\x00" in value:
                            return None
            except ValueError:
                return None
        target, tenant = canonical_subject(target, tenant)
        return enforcement.EnforcementStatus(
            kind.name, replica.effects(kind.name, target, tenant)
        ).as_json()


def _ts(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def approval_json(
    a: Approval,
    action: ActionRow | None = None,
    inc: Incident | None = None,
    channels: list[str] | None = None,
) -> dict[str, Any]:
    """An approval and what it would allow (CONTRACT.md, Approvals): the action, and the
    incident's technique, severity and subject; the playbook rule's requirements and what
    has been given towards them; the channels that announced it."""
    votes = [v for v in a.votes or () if isinstance(v, dict)]
    out: dict[str, Any] = {
        "approval_id": a.id,
        "incident_id": a.incident_id,
        "action_id": a.action_id,
        "status": a.status,
        "requested_at": _ts(a.requested_at),
        "expires_at": _ts(a.expires_at),
        "decided_at": _ts(a.decided_at),
        "decided_by": a.decided_by,
        "channel": a.decision_channel,
        "comment": a.comment,
        # The playbook rule's requirements and what has been given towards them.
        "quorum": a.quorum,
        "approvers": list(a.approver_groups or ()),
        "escalate_to": a.escalate_to,
        "escalated_at": _ts(a.escalated_at),
        "approvals": [
            {"by": v.get("by"), "channel": v.get("channel"), "at": v.get("at")} for v in votes
        ],
        # The channels that announced it (Slack, e-mail).
        "channels": channels if channels is not None else [],
    }
    if action is not None:
        found = actions.find(action.action_type)
        out["action"] = {
            "type": action.action_type,
            "target": action.target,
            "risk": action.risk,
            "rule": action.rule,
            "label": actions.label(action.action_type),
            "duration_seconds": action.duration_seconds,
            "irreversible": bool(found and found.irreversible),
        }
    if inc is not None:
        out |= {"technique": inc.technique, "severity": inc.severity, "subject": inc.subject_key}
    return out


def _with_facts() -> Select[Approval, ActionRow, Incident]:
    return (
        select(Approval, ActionRow, Incident)
        .join(ActionRow, ActionRow.id == Approval.action_id)
        .join(Incident, Incident.id == Approval.incident_id)
    )


async def announced_on(session: SessionDep, ids: list[str]) -> dict[str, list[str]]:
    if not ids:
        return {}
    rows = await session.execute(
        select(ApprovalMessage.approval_id, ApprovalMessage.channel)
        .where(ApprovalMessage.approval_id.in_(ids), ApprovalMessage.kind == "announce")
        .distinct()
    )
    found: dict[str, list[str]] = {}
    for approval_id, channel in rows.all():
        found.setdefault(approval_id, []).append(channel)
    return {k: sorted(v) for k, v in found.items()}


async def incident_json(
    session: SessionDep, inc: Incident, settings: Settings | None = None
) -> dict[str, Any]:
    dets = (
        await session.scalars(
            select(Detection).where(Detection.incident_id == inc.id).order_by(Detection.received_at)
        )
    ).all()
    action_rows = (
        await session.scalars(
            select(ActionRow).where(ActionRow.incident_id == inc.id).order_by(ActionRow.created_at)
        )
    ).all()
    approvals = (
        await session.scalars(
            select(Approval).where(Approval.incident_id == inc.id).order_by(Approval.requested_at)
        )
    ).all()
    by_id = {a.id: a for a in action_rows}
    can = analyst_options(list(action_rows), datetime.now(UTC))
    announced = await announced_on(session, [a.id for a in approvals])
    timeline = (
        await session.scalars(
            select(ActionLogEntry)
            .where(ActionLogEntry.incident_id == inc.id)
            .order_by(ActionLogEntry.seq.asc().nulls_last(), ActionLogEntry.id)
        )
    ).all()
    return {
        "incident_id": inc.id,
        "workflow_id": inc.workflow_id,
        "status": inc.status,
        "tenant": inc.tenant,
        "subject": inc.subject_key,
        "technique": inc.technique,
        "severity": inc.severity,
        "detection_count": inc.detection_count,
        "opened_at": _ts(inc.opened_at),
        "last_detection_at": _ts(inc.last_detection_at),
        "closed_at": _ts(inc.closed_at),
        "risk_score": inc.risk_score,
        "enrichment": inc.enrichment,
        "plan": inc.plan,
        "ticket": {"key": inc.ticket_key, "url": inc.ticket_url} if inc.ticket_key else None,
        "disposition": inc.disposition,
        "closed_by": inc.closed_by,
        "close_reason": inc.close_reason,
        "temporal_url": temporal_run_url(
            settings.temporal_ui_url, settings.temporal_namespace, inc.workflow_id
        )
        if settings is not None
        else None,
        "detections": [
            {
                "detection_id": d.external_id,
                "source": d.source,
                "technique": d.technique,
                "severity": d.severity,
                "confidence": d.confidence,
                "subject": {
                    "tenant": d.tenant,
                    "user": d.subject_user,
                    "session": d.subject_session,
                    "api_key": d.subject_api_key,
                },
                "observed_at": _ts(d.observed_at),
                "received_at": _ts(d.received_at),
                "prompt_sha256": d.prompt_sha256,
                "excerpt": d.excerpt,
                "format": d.format,
            }
            for d in dets
        ],
        "actions": [
            {
                "action_id": a.id,
                "type": a.action_type,
                "risk": a.risk,
                "target": a.target,
                "status": a.status,
                "rule": a.rule,
                "applied_at": _ts(a.applied_at),
                "expires_at": _ts(a.expires_at),
                "finished_at": _ts(a.finished_at),
                "error": a.error,
                "irreversible": bool((d := actions.find(a.action_type)) and d.irreversible),
                # What an analyst can do with it now (POST .../actions/{id}/<one of these>).
                "analyst_actions": can.get(a.id, []),
            }
            for a in action_rows
        ],
        "approvals": [
            approval_json(a, by_id.get(a.action_id), inc, announced.get(a.id, []))
            for a in approvals
        ],
        "timeline": [
            {
                "seq": e.seq,
                "at": _ts(e.at),
                "event": e.event,
                "action": e.action,
                "actor": e.actor,
                "outcome": e.outcome,
                "details": e.details,
            }
            for e in timeline
        ],
    }


_Ts = TypeVarTuple("_Ts")


def _incident_filters(q: Select[*_Ts], technique: str | None, subject: str | None) -> Select[*_Ts]:
    """The incident's technique (a prefix, any case) and part of its subject key."""
    if technique:
        q = q.where(Incident.technique.like(like_prefix(technique.upper()), escape=LIKE_ESCAPE))
    if subject:
        q = q.where(Incident.subject_key.like(like_contains(subject), escape=LIKE_ESCAPE))
    return q


@router.get("/v1/incidents/{incident_id}", tags=["incidents"])
async def get_incident(
    incident_id: str,
    session: SessionDep,
    state: StateDep,
    _: Identity = require_roles(*READERS),
) -> dict[str, Any]:
    inc = await session.get(Incident, incident_id)
    if inc is None:
        raise HTTPException(404, f"incident {incident_id} not found")
    return await incident_json(session, inc, state.settings)


def incident_summary(i: Incident, settings: Settings) -> dict[str, Any]:
    return {
        "incident_id": i.id,
        "status": i.status,
        "tenant": i.tenant,
        "subject": i.subject_key,
        "technique": i.technique,
        "severity": i.severity,
        "opened_at": _ts(i.opened_at),
        "closed_at": _ts(i.closed_at),
        "detection_count": i.detection_count,
        "risk_score": i.risk_score,
        "disposition": i.disposition,
        "ticket": {"key": i.ticket_key, "url": i.ticket_url} if i.ticket_key else None,
        "temporal_url": temporal_run_url(
            settings.temporal_ui_url, settings.temporal_namespace, i.workflow_id
        ),
    }


@router.get("/v1/incidents", tags=["incidents"])
async def list_incidents(
    session: SessionDep,
    state: StateDep,
    _: Identity = require_roles(*READERS),
    status: Literal["open", "closed"] | None = None,
    technique: str | None = Query(None, max_length=32, description="e.g. AML.T0051 (prefix)"),
    tactic: str | None = Query(None, max_length=32, description="e.g. AML.TA0005"),
    subject: str | None = Query(None, max_length=300, description="part of the subject key"),
    severity: Literal["info", "low", "medium", "high", "critical"] | None = None,
    disposition: Literal["true_positive", "false_positive", "benign", "none"] | None = Query(
        None, description="how an analyst closed it; `none`: not set"
    ),
    since: datetime | None = Query(None, description="opened at or after (ISO 8601)"),
    until: datetime | None = Query(None, description="opened before (ISO 8601)"),
    cursor: str | None = Query(None, max_length=200),
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    """Newest first; `next` links the following page (same filters) while there is one."""
    since, until = check_query_datetime(since, "since"), check_query_datetime(until, "until")
    f = IncidentFilter(
        subject=subject or "",
        technique=(technique or "").strip(),
        tactic=(tactic or "").strip(),
        severity=severity or "",
        status=status or "",
        disposition=disposition or "",
        since=since,
        until=until,
    )
    try:
        page = await search_incidents(session, f, limit=limit, cursor=cursor)
    except SearchError as exc:
        raise invalid(exc.field, exc.message) from None
    return {
        "incidents": [incident_summary(i, state.settings) for i in page.incidents],
        "next_cursor": page.next_cursor,
        "next": page.next_link("/v1/incidents", f, limit),
    }


@router.get("/v1/approvals", tags=["approvals"])
async def list_approvals(
    session: SessionDep,
    _: Identity = require_roles(*READERS),
    status: Literal["pending", "approved", "rejected", "expired"] | None = None,
    technique: str | None = Query(None, max_length=32, description="e.g. AML.T0057 (prefix)"),
    subject: str | None = Query(None, max_length=300, description="part of the subject key"),
    channel: Annotated[
        str | None,
        Query(
            pattern=r"^[a-z][a-z0-9_-]{0,15}$",
            description="announced on or decided through this channel: slack, email, api, ui",
        ),
    ] = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    q = _with_facts().order_by(Approval.requested_at.desc()).limit(limit)
    if status:
        q = q.where(Approval.status == status)
    if channel:
        announced = select(ApprovalMessage.approval_id).where(
            ApprovalMessage.channel == channel, ApprovalMessage.kind == "announce"
        )
        q = q.where(Approval.id.in_(announced) | (Approval.decision_channel == channel))
    rows = (await session.execute(_incident_filters(q, technique, subject))).all()
    on = await announced_on(session, [a.id for a, _, _ in rows])
    return {"approvals": [approval_json(a, act, inc, on.get(a.id, [])) for a, act, inc in rows]}


class DecisionIn(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000)

    @field_validator("comment")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # As every channel's comment (Slack, web UI, e-mail): PostgreSQL text cannot hold NUL,
        # a lone surrogate cannot be encoded for Temporal or PostgreSQL (the decision would
        # fail after it was accepted), and C0/C1 controls have no place in a comment.
        if v is not None and has_unsafe_chars(v, text=True, bidi=False):
            raise ValueError("must not contain control characters or lone surrogates")
        return v


class DecisionRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# The decision endpoint answers within about 2 s whatever the workers are doing.
ACCEPT_SECONDS = 1.5  # waiting for a worker to validate the decision
DECISION_DEADLINE_SECONDS = 0.5  # then waiting for it to be recorded
# A decision no worker validated in time is sent again, under the same update ID (Temporal
# keeps one update per ID), until a worker accepts or refuses it: an update the server holds
# only in memory (admitted, not yet accepted) can be lost, e.g. when the workflow task that
# carries it times out on a worker that died. Bounded below the signature's 5-minute age.
RESEND_EVERY_SECONDS = 2.0
RESEND_FOR_SECONDS = 240.0
_RESENDS: set[asyncio.Task[None]] = set()


async def _resend_decision(handle: Any, req: DecisionRequest, update_id: str) -> None:
    deadline = time.monotonic() + RESEND_FOR_SECONDS
    while time.monotonic() < deadline:
        await asyncio.sleep(RESEND_EVERY_SECONDS)
        try:
            await handle.start_update(
                UPDATE_DECIDE,
                req,
                id=update_id,
                wait_for_stage=WorkflowUpdateStage.ACCEPTED,
                result_type=DecisionResult,
                rpc_timeout=timedelta(seconds=10),
            )
            return  # accepted: the workflow records it
        except WorkflowUpdateRPCTimeoutOrCancelledError:
            continue
        except (WorkflowUpdateFailedError, RPCError):
            return  # refused (the validator says why in the worker's log) or the run is gone


async def send_decision(
    state: StateDep,
    session: SessionDep,
    approval_id: str,
    req: DecisionRequest,
    *,
    deadline: float = DECISION_DEADLINE_SECONDS,
) -> DecisionResult:
    """The one gate every channel (API, Slack, web UI, e-mail) goes through: the rule's
    approver groups (`soar.approvers`), then a Temporal update whose validator refuses
    unknown, already-decided or unauthorized decisions and a second approval by the same
    approver.

    Never holds the caller for long: once the workflow has accepted the decision (the
    validator passed, so it is settled and first-decision-wins holds), the answer waits at
    most `deadline` seconds for it to be recorded, then says it is accepted but unconfirmed.
    """
    approval = await session.get(Approval, approval_id)
    if approval is None:
        raise DecisionRefused(404, f"approval {approval_id} not found")
    if approval.status != "pending":
        raise DecisionRefused(409, f"approval {approval_id} is already {approval.status}")
    if approval.expires_at is not None and approval.expires_at <= datetime.now(UTC):
        # Pending past its time: the workflow has not got to expiring it yet (its worker is
        # down or behind). No decision in time means the action is not taken.
        why = f"approval {approval_id} expired at {approval.expires_at.isoformat()}"
        gate.log_refusal(req, why)
        DECISIONS.labels(channel=req.channel, outcome="refused").inc()
        raise DecisionRefused(409, why)
    if await gate.self_approval(session, approval, req):
        why = f"{req.actor} may not decide an action against their own account"
        gate.log_refusal(req, why)
        DECISIONS.labels(channel=req.channel, outcome="refused").inc()
        raise DecisionRefused(403, why)
    if await gate.own_request(session, approval, req):
        why = f"{req.actor} asked for this action; a second person must decide it"
        gate.log_refusal(req, why)
        DECISIONS.labels(channel=req.channel, outcome="refused").inc()
        raise DecisionRefused(403, why)
    refusal = await decision_refusal(session, approval, req.approver)
    if refusal is not None:
        DECISIONS.labels(channel=req.channel, outcome="refused").inc()
        raise DecisionRefused(403, refusal)
    client = temporal_or_503(state)
    handle = client.get_workflow_handle(approval.workflow_id)
    req = gate.signed(state, req)  # the workflow accepts nothing unsigned (soar/decisions.py)
    update_id = f"decide-{uuid.uuid4()}"
    try:
        update = await handle.start_update(
            UPDATE_DECIDE,
            req,
            id=update_id,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=DecisionResult,
            rpc_timeout=timedelta(seconds=ACCEPT_SECONDS),
        )
        try:
            result: DecisionResult = await asyncio.wait_for(
                asyncio.shield(update.result()), timeout=deadline
            )
        except TimeoutError:
            status = "approved" if req.decision == "approve" else "rejected"
            if status == "approved" and len(approval.votes or ()) + 1 < approval.quorum:
                status = "pending"  # counted towards the quorum, as far as we can tell
            result = DecisionResult(
                approval_id, status, req.actor, "", confirmed=False, quorum=approval.quorum
            )
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # No worker validated it in time (busy, or restarting). The server keeps the request
        # and delivers it when a worker polls: submitted, not refused. Poll the approval.
        # In case the server loses it before a worker accepts it, it is sent again.
        task = asyncio.create_task(_resend_decision(handle, req, update_id))
        _RESENDS.add(task)
        task.add_done_callback(_RESENDS.discard)
        return DecisionResult(approval_id, "submitted", req.actor, "", confirmed=False)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause or exc)
        gate.log_refusal(req, message)
        DECISIONS.labels(channel=req.channel, outcome="refused").inc()
        raise DecisionRefused(409, message) from None
    except RPCError as exc:
        raise DecisionRefused(409, f"the incident workflow is not running: {exc.message}") from None
    DECISIONS.labels(channel=req.channel, outcome=result.status).inc()
    return result


@router.post("/v1/approvals/{approval_id}/decision", tags=["approvals"])
async def decide(
    approval_id: str,
    body: DecisionIn,
    state: StateDep,
    session: SessionDep,
    identity: IdentityDep,
) -> Any:
    if identity.role not in DECIDER_ROLES:
        raise HTTPException(403, f"role {identity.role!r} may not decide approvals")
    req = DecisionRequest(
        approval_id=approval_id,
        decision=body.decision,
        actor=identity.name,
        role=identity.role,
        channel="api",
        comment=body.comment,
        approver=identity.name,
    )
    try:
        result = await send_decision(state, session, approval_id, req)
    except DecisionRefused as exc:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        raise HTTPException(exc.status, str(exc), headers=headers) from None
    answer: dict[str, Any] = {
        "approval_id": result.approval_id,
        "status": result.status,
        "decided_by": result.decided_by,
        "decided_at": result.decided_at or None,
    }
    if result.quorum > 1:
        answer |= {"approvals": result.approvals, "quorum": result.quorum}
    if not result.confirmed:
        # Not recorded yet: say where to look instead of holding the caller. "accepted": the
        # workflow validated it (first decision wins holds) and records it; "submitted": no
        # worker has validated it yet, it may still be refused.
        answer["state"] = "accepted" if result.status != "submitted" else "submitted"
        if result.status == "submitted":
            answer["status"] = "pending"
        answer["poll"] = f"/v1/approvals/{approval_id}"
        return JSONResponse(answer, status_code=202)
    return answer


@router.get("/v1/approvals/{approval_id}", tags=["approvals"])
async def get_approval(
    approval_id: str, session: SessionDep, _: Identity = require_roles(*READERS)
) -> dict[str, Any]:
    found = (await session.execute(_with_facts().where(Approval.id == approval_id))).first()
    if found is None:
        raise HTTPException(404, f"approval {approval_id} not found")
    row, action, inc = found
    return approval_json(row, action, inc, (await announced_on(session, [row.id])).get(row.id, []))
