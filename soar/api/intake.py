"""POST /v1/detections: signed, validated, deduplicated, durable before the 202."""

from __future__ import annotations

import json
import logging
import time

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from soar.api.body import BodyTooLarge, read_capped
from soar.api.deps import StateDep
from soar.atlas.store import technique_exists
from soar.intake.schema import DetectionInvalid, parse_detection
from soar.intake.service import dispatch, mark_dispatched, record_detection
from soar.metrics import DETECTIONS, INTAKE_SECONDS

router = APIRouter()
log = logging.getLogger("soar.intake")


def _problem(status: int, message: str, errors: list[dict[str, str]] | None = None) -> JSONResponse:
    body: dict[str, object] = {"error": message}
    if errors is not None:
        body["errors"] = errors
    return JSONResponse(body, status_code=status)


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


@router.post("/v1/detections", status_code=202, tags=["intake"])
async def receive_detection(request: Request, state: StateDep) -> JSONResponse:
    started = time.perf_counter()
    settings = state.settings
    limit = settings.max_body_bytes
    try:
        body = await read_capped(request, limit)
    except BodyTooLarge as exc:
        return _problem(413, str(exc))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        return _problem(415, "content-type must be application/json")

    verifier: Webhook = state.extras["webhook"]  # type: ignore[assignment]
    try:
        verifier.verify(body, dict(request.headers), json_parse=False)
    except WebhookVerificationError as exc:
        DETECTIONS.labels(outcome="unauthorized").inc()
        return _problem(401, f"signature rejected: {exc}")
    except Exception:  # malformed headers or body make the library raise anything
        DETECTIONS.labels(outcome="unauthorized").inc()
        return _problem(401, "signature rejected: malformed webhook headers or body")

    try:
        payload = json.loads(body, parse_constant=_no_constant)
    except (json.JSONDecodeError, UnicodeDecodeError, ValueError) as exc:
        where = f" at line {exc.lineno} column {exc.colno}" if isinstance(
            exc, json.JSONDecodeError) else ""  # fmt: skip
        return _problem(422, "invalid JSON", [{"field": "body", "message": f"invalid JSON{where}"}])
    try:
        detection, fmt = parse_detection(payload)
    except DetectionInvalid as exc:
        DETECTIONS.labels(outcome="invalid").inc()
        return _problem(422, "invalid detection", exc.errors)

    async with state.factory() as session, session.begin():
        known = await technique_exists(session, detection.technique)
        recorded = await record_detection(session, detection, fmt=fmt) if known else None
    if recorded is None:
        DETECTIONS.labels(outcome="invalid").inc()
        return _problem(422, "invalid detection", [{
            "field": "technique",
            "message": f"unknown ATLAS technique {detection.technique} "
            "(not in the loaded catalog; see `soar atlas load`)",
        }])  # fmt: skip

    answer = {
        "incident_id": recorded.incident_id,
        "workflow_id": recorded.workflow_id,
        "detection_id": recorded.detection_id,
        "duplicate": recorded.duplicate,
    }
    if recorded.duplicate:
        DETECTIONS.labels(outcome="duplicate").inc()
        return JSONResponse(answer, status_code=200)

    # Durable from here on: if signalling fails, the worker's outbox sweeper re-sends it.
    assert recorded.facts is not None
    if state.temporal is not None:
        try:
            await dispatch(
                state.temporal,
                task_queue=settings.temporal_task_queue,
                incident_id=recorded.incident_id,
                facts=recorded.facts,
                correlation_window_seconds=settings.correlation_window_seconds,
                approval_timeout_seconds=settings.approval_timeout_seconds,
            )
            async with state.factory() as session, session.begin():
                await mark_dispatched(session, source=detection.source, external_id=detection.id)
        except Exception as exc:
            log.warning("signal for %s deferred to the outbox sweeper: %s", recorded.incident_id,
                        type(exc).__name__)  # fmt: skip
    DETECTIONS.labels(outcome="accepted").inc()
    INTAKE_SECONDS.observe(time.perf_counter() - started)
    return JSONResponse(answer, status_code=202)
