"""POST /v1/detections: signed, attributed, limited, validated, deduplicated, durable
before the 202.

The order is cheapest refusal first: size and content type, the signature (which names the
source), the source's rate, the JSON (depth-limited, large bodies off the event loop), the
fields, the source's tenants, the subject's rate, then the database.
"""

from __future__ import annotations

import hashlib
import logging
import time
from typing import Any

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from soar.api.body import BodyTooLarge, read_capped
from soar.api.deps import AppState, StateDep
from soar.api.jsonsafe import OFF_LOOP_BYTES, JSONRefused, parse_json, printable
from soar.atlas.store import technique_exists
from soar.audit.chain import LogEvent, append
from soar.intake.schema import (
    DetectionInvalid,
    NativeDetection,
    NothingDetected,
    parse_detection,
)
from soar.intake.service import Prepared, dispatch, mark_dispatched, prepare, record_detection
from soar.metrics import INTAKE_SECONDS, count_detection
from soar.observability import annotate
from soar.ratelimit import TokenBuckets, retry_after
from soar.sources import Credential, SourceRegistry, Unverified, verify

router = APIRouter()
log = logging.getLogger("soar.intake")


def _problem(
    status: int,
    message: str,
    errors: list[dict[str, str]] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body: dict[str, object] = {"error": printable(message)}
    if errors is not None:
        body["errors"] = [{k: printable(v) for k, v in e.items()} for e in errors]
    return JSONResponse(body, status_code=status, headers=headers)


def _limited(what: str, wait: float, source: str) -> JSONResponse:
    count_detection("throttled", source=source, reason=what)
    return _problem(
        429,
        f"rate limit of this {what} exceeded; retry later",
        headers={"Retry-After": retry_after(wait)},
    )


def _buckets(state: AppState, name: str) -> TokenBuckets:
    found = state.extras.get(name)
    if not isinstance(found, TokenBuckets):
        s = state.settings
        rate, burst = (
            (s.source_rate_per_second, s.source_burst)
            if name == "source_buckets"
            else (s.subject_rate_per_second, s.subject_burst)
        )
        found = TokenBuckets(rate, burst)
        state.extras[name] = found
    return found


def _parse(payload: Any, source: str) -> tuple[NativeDetection, str, Prepared]:
    detection, fmt = parse_detection(payload)
    detection = detection.model_copy(update={"source": source})
    return detection, fmt, prepare(detection)


async def _refuse_tenant(state: AppState, cred: Credential, d: NativeDetection) -> JSONResponse:
    reason = f"source {cred.source} may not report for tenant {d.subject.tenant}"
    digest = hashlib.sha256(f"{cred.source}\x1f{d.id}\x1f{d.subject.tenant}".encode()).hexdigest()
    async with state.factory() as session, session.begin():
        await append(
            session,
            LogEvent(
                event_key=f"intake-refused:{digest[:40]}",
                event="intake.refused",
                actor=f"source:{cred.source}",
                outcome="refused",
                tenant=d.subject.tenant,
                technique=d.technique,
                details={"source": cred.source, "detection_id": d.id, "reason": reason},
            ),
        )
    count_detection("refused", source=cred.source, reason="tenant")
    return _problem(403, reason)


@router.post("/v1/detections", status_code=202, tags=["intake"])
async def receive_detection(request: Request, state: StateDep) -> Response:
    started = time.perf_counter()
    settings = state.settings
    try:
        body = await read_capped(request, settings.max_body_bytes)
    except BodyTooLarge as exc:
        count_detection("refused", reason="too_large")
        return _problem(413, str(exc))
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "application/json" and not ctype.endswith("+json"):
        count_detection("refused", reason="content_type")
        return _problem(415, "content-type must be application/json")

    registry: SourceRegistry = state.extras["sources"]  # type: ignore[assignment]
    try:
        cred = verify(await registry.credentials(), body, request.headers)
    except Unverified as exc:
        count_detection("refused", reason="signature")
        return _problem(401, f"signature rejected: {exc}")

    if wait := _buckets(state, "source_buckets").take(cred.source):
        return _limited("source", wait, cred.source)

    try:
        payload = await parse_json(body)
    except JSONRefused as exc:
        count_detection("refused", source=cred.source, reason="invalid_json")
        return _problem(422, "invalid JSON", [{"field": "body", "message": exc.message}])
    try:
        if len(body) > OFF_LOOP_BYTES:
            detection, fmt, prepared = await anyio.to_thread.run_sync(_parse, payload, cred.source)
        else:
            detection, fmt, prepared = _parse(payload, cred.source)
    except DetectionInvalid as exc:
        count_detection("refused", source=cred.source, reason="invalid")
        return _problem(422, "invalid detection", exc.errors)
    except NothingDetected:
        count_detection("clean", source=cred.source)
        return Response(status_code=204)

    if cred.tenants is not None and detection.subject.tenant not in cred.tenants:
        return await _refuse_tenant(state, cred, detection)

    subject_key = f"{detection.subject.tenant}\x1f{prepared.subject.key}"
    if wait := _buckets(state, "subject_buckets").take(subject_key):
        return _limited("subject", wait, cred.source)

    async with state.factory() as session, session.begin():
        known = await technique_exists(session, detection.technique)
        recorded = (
            await record_detection(session, detection, fmt=fmt, prepared=prepared)
            if known
            else None
        )
    if recorded is None:
        count_detection("refused", source=cred.source, reason="unknown_technique")
        return _problem(
            422,
            "invalid detection",
            [
                {
                    "field": "technique",
                    "message": f"unknown ATLAS technique {detection.technique} "
                    "(not in the loaded catalog; see `soar atlas load`)",
                }
            ],
        )

    annotate(incident_id=recorded.incident_id, detection_id=recorded.detection_id[:200])
    answer = {
        "incident_id": recorded.incident_id,
        "workflow_id": recorded.workflow_id,
        "detection_id": recorded.detection_id,
        "duplicate": recorded.duplicate,
    }
    if recorded.duplicate:
        count_detection("duplicate", source=cred.source)
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
                external_task_queue=settings.external_task_queue,
                external_max_age_seconds=settings.external_max_age_seconds,
            )
            async with state.factory() as session, session.begin():
                await mark_dispatched(session, source=detection.source, external_id=detection.id)
        except Exception as exc:
            log.warning(
                "signal for %s deferred to the outbox sweeper: %s",
                recorded.incident_id,
                type(exc).__name__,
            )
    count_detection("accepted", source=cred.source)
    INTAKE_SECONDS.observe(time.perf_counter() - started)
    return JSONResponse(answer, status_code=202)
