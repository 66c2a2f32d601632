"""Operations: /healthz, /readyz, /metrics."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy import text

from soar.api.deps import StateDep
from soar.observability.gauges import refresh_gauges
from soar.replica import EnforcementReplica

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz")
async def readyz(state: StateDep) -> JSONResponse:
    checks: dict[str, str] = {}
    try:
        async with state.factory() as session:
            await asyncio.wait_for(session.execute(text("SELECT 1")), timeout=3)
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if state.temporal is None:
        checks["temporal"] = f"unreachable: {state.temporal_error or 'not connected'}"
    else:
        try:
            await asyncio.wait_for(state.temporal.service_client.check_health(), timeout=3)
            checks["temporal"] = "ok"
        except Exception as exc:
            checks["temporal"] = f"unreachable: {type(exc).__name__}"
    replica = state.extras.get("replica")
    if isinstance(replica, EnforcementReplica):
        # Checks still answer when the feed is stale (from the database), but this process
        # is behind: a load balancer should prefer one whose replica is current.
        if replica.fresh:
            checks["enforcement"] = "ok"
        elif not replica.loaded:
            checks["enforcement"] = "loading; checks answered from the database"
        else:
            checks["enforcement"] = (
                f"stale: feed {replica.staleness:.1f}s old (limit {replica.max_staleness:g}s); "
                "checks answered from the database"
            )
    ok = all(v == "ok" for v in checks.values())
    return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)


@router.get("/metrics")
async def metrics(state: StateDep) -> Response:
    # Open incidents, pending approvals, the log's unsealed backlog, the replica's lag.
    await refresh_gauges(state.factory, state.extras.get("replica"))
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
