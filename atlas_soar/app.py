"""The HTTP API as it is served: the core API (`soar.api.app`) with the web UI and the Slack
routes of `approvals/`, included explicitly."""

from __future__ import annotations

from fastapi import FastAPI
from temporalio.client import Client

from approvals import email_routes, slack_routes, web, web_incidents
from soar.api.app import create_api
from soar.config import Settings


def create_app(
    settings: Settings,
    *,
    database_url: str,
    temporal_address: str,
    webhook_secret: str,
    temporal: Client | None = None,
) -> FastAPI:
    return create_api(
        settings,
        database_url=database_url,
        temporal_address=temporal_address,
        webhook_secret=webhook_secret,
        temporal=temporal,
        # The e-mailed approval links before the UI's catch-all.
        # The incidents' routes before web.router, whose last route answers 404 for the rest.
        routers=(slack_routes.router, email_routes.router, web_incidents.router, web.router),
    )
