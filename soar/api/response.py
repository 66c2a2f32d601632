"""GET /v1/enforcement/..., /v1/incidents, /v1/approvals and the decision endpoint."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta
from typing import Any, Literal

from fastapi import APIRouter, HTTPException, Query
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select
from temporalio.client import (
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.service import RPCError

from soar import enforcement
from soar.api.deps import IdentityDep, SessionDep, StateDep, require_roles, temporal_or_503
from soar.auth import Identity
from soar.bounds import LIKE_ESCAPE, like_contains, like_prefix
from soar.domain import UPDATE_DECIDE, DecisionRequest, DecisionResult
from soar.metrics import DECISIONS
from soar.models import Action as ActionRow
from soar.models import ActionLogEntry, Approval, Detection, Incident

router = APIRouter()
_KINDS = {"sessions": "session", "api-keys": "api_key", "users": "user"}
READERS = ("analyst", "approver", "auditor", "admin")
# Who may ask whether something is blocked: LLM gateways (role gateway, which may do nothing
# else) and the people who run the response. Auditors read the log, not the live state.
ENFORCEMENT_READERS = ("gateway", "analyst", "approver", "admin")


@router.get("/v1/enforcement/{kind}/{target}", tags=["enforcement"])
async def enforcement_check(
    kind: Literal["sessions", "api-keys", "users"],
    target: str,
    session: SessionDep,
    _: Identity = require_roles(*ENFORCEMENT_READERS),
    tenant: str = "default",
) -> dict[str, object]:
    status = await enforcement.check(session, kind=_KINDS[kind], target=target, tenant=tenant)
    return status.as_json()


def _ts(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def approval_json(a: Approval) -> dict[str, Any]:
    return {
        "approval_id": a.id, "incident_id": a.incident_id, "action_id": a.action_id,
        "status": a.status, "requested_at": _ts(a.requested_at), "expires_at": _ts(a.expires_at),
        "decided_at": _ts(a.decided_at), "decided_by": a.decided_by,
        "channel": a.decision_channel, "comment": a.comment,
    }  # fmt: skip


async def incident_json(session: SessionDep, inc: Incident) -> dict[str, Any]:
    dets = (await session.scalars(
        select(Detection).where(Detection.incident_id == inc.id).order_by(Detection.received_at)
    )).all()  # fmt: skip
    actions = (await session.scalars(
        select(ActionRow).where(ActionRow.incident_id == inc.id).order_by(ActionRow.created_at)
    )).all()  # fmt: skip
    approvals = (await session.scalars(
        select(Approval).where(Approval.incident_id == inc.id).order_by(Approval.requested_at)
    )).all()  # fmt: skip
    timeline = (await session.scalars(
        select(ActionLogEntry).where(ActionLogEntry.incident_id == inc.id)
        .order_by(ActionLogEntry.seq)
    )).all()  # fmt: skip
    return {
        "incident_id": inc.id, "workflow_id": inc.workflow_id, "status": inc.status,
        "tenant": inc.tenant, "subject": inc.subject_key, "technique": inc.technique,
        "severity": inc.severity, "detection_count": inc.detection_count,
        "opened_at": _ts(inc.opened_at), "last_detection_at": _ts(inc.last_detection_at),
        "closed_at": _ts(inc.closed_at), "risk_score": inc.risk_score,
        "enrichment": inc.enrichment, "plan": inc.plan,
        "ticket": {"key": inc.ticket_key, "url": inc.ticket_url} if inc.ticket_key else None,
        "detections": [
            {"detection_id": d.external_id, "source": d.source, "technique": d.technique,
             "severity": d.severity, "confidence": d.confidence,
             "subject": {"tenant": d.tenant, "user": d.subject_user,
                         "session": d.subject_session, "api_key": d.subject_api_key},
             "observed_at": _ts(d.observed_at), "received_at": _ts(d.received_at),
             "prompt_sha256": d.prompt_sha256, "excerpt": d.excerpt, "format": d.format}
            for d in dets
        ],
        "actions": [
            {"action_id": a.id, "type": a.action_type, "risk": a.risk, "target": a.target,
             "status": a.status, "rule": a.rule, "applied_at": _ts(a.applied_at),
             "expires_at": _ts(a.expires_at), "finished_at": _ts(a.finished_at),
             "error": a.error}
            for a in actions
        ],
        "approvals": [approval_json(a) for a in approvals],
        "timeline": [
            {"seq": e.seq, "at": _ts(e.at), "event": e.event, "action": e.action,
             "actor": e.actor, "outcome": e.outcome, "details": e.details}
            for e in timeline
        ],
    }  # fmt: skip


@router.get("/v1/incidents/{incident_id}", tags=["incidents"])
async def get_incident(
    incident_id: str, session: SessionDep, _: Identity = require_roles(*READERS)
) -> dict[str, Any]:
    inc = await session.get(Incident, incident_id)
    if inc is None:
        raise HTTPException(404, f"incident {incident_id} not found")
    return await incident_json(session, inc)


@router.get("/v1/incidents", tags=["incidents"])
async def list_incidents(
    session: SessionDep,
    _: Identity = require_roles(*READERS),
    status: Literal["open", "closed"] | None = None,
    technique: str | None = None,
    subject: str | None = None,
    limit: int = Query(50, ge=1, le=500),
) -> dict[str, Any]:
    q = select(Incident).order_by(Incident.opened_at.desc()).limit(limit)
    if status:
        q = q.where(Incident.status == status)
    if technique:
        q = q.where(Incident.technique.like(like_prefix(technique.upper()), escape=LIKE_ESCAPE))
    if subject:
        q = q.where(Incident.subject_key.like(like_contains(subject), escape=LIKE_ESCAPE))
    rows = (await session.scalars(q)).all()
    return {"incidents": [
        {"incident_id": i.id, "status": i.status, "subject": i.subject_key,
         "technique": i.technique, "severity": i.severity, "opened_at": _ts(i.opened_at),
         "detection_count": i.detection_count, "risk_score": i.risk_score}
        for i in rows
    ]}  # fmt: skip


@router.get("/v1/approvals", tags=["approvals"])
async def list_approvals(
    session: SessionDep,
    _: Identity = require_roles(*READERS),
    status: Literal["pending", "approved", "rejected", "expired"] | None = None,
    limit: int = Query(100, ge=1, le=1000),
) -> dict[str, Any]:
    q = select(Approval).order_by(Approval.requested_at.desc()).limit(limit)
    if status:
        q = q.where(Approval.status == status)
    return {"approvals": [approval_json(a) for a in (await session.scalars(q)).all()]}


class DecisionIn(BaseModel):
    decision: Literal["approve", "reject"]
    comment: str | None = Field(default=None, max_length=2000)

    @field_validator("comment")
    @classmethod
    def _printable(cls, v: str | None) -> str | None:
        # PostgreSQL text cannot hold NUL; other control characters have no place here.
        if v is not None and any(ord(c) < 32 and c not in "\n\t" for c in v):
            raise ValueError("must not contain control characters")
        return v


class DecisionRefused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


# The decision endpoint answers within about 2 s whatever the workers are doing.
ACCEPT_SECONDS = 1.5  # waiting for a worker to validate the decision
DECISION_DEADLINE_SECONDS = 0.5  # then waiting for it to be recorded


async def send_decision(
    state: StateDep,
    session: SessionDep,
    approval_id: str,
    req: DecisionRequest,
    *,
    deadline: float = DECISION_DEADLINE_SECONDS,
) -> DecisionResult:
    """The one gate every channel (API, Slack, web UI) goes through: a Temporal update whose
    validator refuses unknown, already-decided or unauthorized decisions.

    Never holds the caller for long: once the workflow has accepted the decision (the
    validator passed, so it is settled and first-decision-wins holds), the answer waits at
    most `deadline` seconds for it to be recorded, then says it is accepted but unconfirmed.
    """
    approval = await session.get(Approval, approval_id)
    if approval is None:
        raise DecisionRefused(404, f"approval {approval_id} not found")
    if approval.status != "pending":
        raise DecisionRefused(409, f"approval {approval_id} is already {approval.status}")
    client = temporal_or_503(state)
    handle = client.get_workflow_handle(approval.workflow_id)
    try:
        update = await handle.start_update(
            UPDATE_DECIDE,
            req,
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
            result = DecisionResult(approval_id, status, req.actor, "", confirmed=False)
    except WorkflowUpdateRPCTimeoutOrCancelledError:
        # No worker validated it in time (busy, or restarting). The server keeps the request
        # and delivers it when a worker polls: submitted, not refused. Poll the approval.
        return DecisionResult(approval_id, "submitted", req.actor, "", confirmed=False)
    except WorkflowUpdateFailedError as exc:
        cause = exc.cause
        message = getattr(cause, "message", None) or str(cause or exc)
        DECISIONS.labels(channel=req.channel, outcome="refused").inc()
        raise DecisionRefused(409, message) from None
    except RPCError as exc:
        raise DecisionRefused(409, f"the incident workflow is not running: {exc.message}") from None
    DECISIONS.labels(channel=req.channel, outcome=result.status).inc()
    return result


@router.post("/v1/approvals/{approval_id}/decision", tags=["approvals"])
async def decide(
    approval_id: str, body: DecisionIn, state: StateDep, session: SessionDep,
    identity: IdentityDep,
) -> Any:  # fmt: skip
    if identity.role not in ("approver", "admin"):
        raise HTTPException(403, f"role {identity.role!r} may not decide approvals")
    req = DecisionRequest(
        approval_id=approval_id, decision=body.decision, actor=identity.name,
        role=identity.role, channel="api", comment=body.comment,
    )  # fmt: skip
    try:
        result = await send_decision(state, session, approval_id, req)
    except DecisionRefused as exc:
        headers = {"Retry-After": "5"} if exc.status == 503 else None
        raise HTTPException(exc.status, str(exc), headers=headers) from None
    answer = {
        "approval_id": result.approval_id,
        "status": result.status,
        "decided_by": result.decided_by,
        "decided_at": result.decided_at or None,
    }
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
    row = await session.get(Approval, approval_id)
    if row is None:
        raise HTTPException(404, f"approval {approval_id} not found")
    return approval_json(row)
