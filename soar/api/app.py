"""The HTTP API: intake, enforcement checks, incidents, approvals, audit, operations.

`create_api` builds the core of it; the routers of the outer layers (web UI, Slack) are
passed in by the composition root (`atlas_soar.app`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from temporalio.client import Client
from temporalio.service import RPCError, RPCStatusCode

from soar.api import analyst, docs, health, intake, response, stream
from soar.api.deps import AppState
from soar.api.jsonsafe import printable
from soar.audit import api as audit_api
from soar.auth import sync_bootstrap_tokens
from soar.config import Settings, SettingsError
from soar.db import make_async_engine, session_factory
from soar.observability.http import instrument_app
from soar.replica import EnforcementReplica
from soar.sources import SourceRegistry
from soar.temporal_client import connect

RETRY_AFTER = "5"
_UNAVAILABLE = (OperationalError, InterfaceError, PoolTimeout, ConnectionError, TimeoutError)


def _unavailable(what: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"{what} is unavailable; retry later"},
        status_code=503,
        headers={"Retry-After": RETRY_AFTER},
    )


def create_api(
    settings: Settings,
    *,
    database_url: str,
    temporal_address: str,
    webhook_secret: str,
    temporal: Client | None = None,
    routers: Sequence[APIRouter] = (),
) -> FastAPI:
    engine = make_async_engine(database_url)
    state = AppState(settings=settings, factory=session_factory(engine), temporal=temporal)
    secrets_key = settings.secrets_key.get_secret_value() if settings.secrets_key else None
    state.extras["sources"] = SourceRegistry(
        state.factory, default_secret=webhook_secret or None, secrets_key=secrets_key
    )

    async def _connect_temporal() -> None:
        while state.temporal is None:
            try:
                state.temporal = await connect(
                    temporal_address, settings.temporal_namespace, attempts=1, settings=settings
                )
            except (ConnectionError, SettingsError) as exc:
                state.temporal_error = str(exc)
                await asyncio.sleep(1)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with state.factory() as session, session.begin():
            await sync_bootstrap_tokens(session, settings.bootstrap_tokens)
        task = asyncio.create_task(_connect_temporal())
        # Enforcement checks from memory (soar/replica.py); until the first load they, and
        # /readyz, fall back to / report the database.
        replica = EnforcementReplica.from_settings(database_url, settings)
        state.extras["replica"] = replica
        replica.start()
        await replica.wait_loaded(within=5.0)
        try:
            yield
        finally:
            task.cancel()
            await replica.stop()
            await engine.dispose()

    app = FastAPI(
        title="atlas-soar",
        summary="Response orchestration for attacks on AI systems (MITRE ATLAS)",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    docs.install(app)
    app.state.soar = state

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [
            {
                "field": printable(".".join(str(p) for p in e["loc"] if p != "body") or "body"),
                "message": printable(str(e["msg"]).removeprefix("Value error, ")),
            }
            for e in exc.errors()
        ]
        return JSONResponse({"error": "invalid request", "errors": errors}, status_code=422)

    @app.exception_handler(DataError)
    async def _bad_data(request: Request, exc: DataError) -> JSONResponse:
        # e.g. a NUL character in a path or query value: the input's fault, not ours.
        return JSONResponse(
            {
                "error": "invalid request",
                "errors": [
                    {"field": "request", "message": "contains characters that cannot be stored"}
                ],
            },
            status_code=422,
        )

    for exc_type in _UNAVAILABLE:

        @app.exception_handler(exc_type)
        async def _down(request: Request, exc: Exception) -> JSONResponse:
            # PostgreSQL down, the pool exhausted, a dependency timing out: the caller may
            # retry, and nothing it was told was accepted is lost.
            first = (str(exc).splitlines() or [""])[0][:200]
            logging.getLogger("soar.api").warning("unavailable: %s: %s", type(exc).__name__, first)
            return _unavailable("the database")

    @app.exception_handler(RPCError)
    async def _temporal(request: Request, exc: RPCError) -> JSONResponse:
        if exc.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
            return _unavailable("Temporal")
        return JSONResponse({"error": "the workflow service refused the request"}, 409)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        # Never a stack trace to the caller; the detail is in the server log.
        return JSONResponse({"error": "internal error"}, status_code=500)

    core = (
        health.router,
        intake.router,
        stream.router,
        response.router,
        analyst.router,
        audit_api.router,
    )
    for router in (*core, *routers):
        app.include_router(router)
    app.add_middleware(response.EnforcementFastPath, state=state)
    instrument_app(app)  # a server span per request when OTEL_* asks for traces
    return app
