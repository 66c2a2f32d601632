"""A server span per API request (when tracing is on): the root of a detection's trace, or
the child of the caller's when it sends a W3C `traceparent`. Health, metrics and the
enforcement checks (the gateways' hot path and long-lived streams) are not traced."""

from __future__ import annotations

from typing import Any

from opentelemetry import propagate
from opentelemetry.trace import SpanKind, StatusCode
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soar.observability.tracing import tracer, tracing_enabled

UNTRACED = ("/healthz", "/readyz", "/metrics", "/v1/enforcement/")


class TracingMiddleware:
    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        t = tracer()
        path = scope.get("path", "") if scope["type"] == "http" else ""
        if t is None or not path or path.startswith(UNTRACED):
            await self.app(scope, receive, send)
            return
        carrier = {
            k.decode("latin-1"): v.decode("latin-1")
            for k, v in scope.get("headers", [])
            if k in (b"traceparent", b"tracestate")
        }
        method = str(scope.get("method", "GET"))
        status = 0

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        with t.start_as_current_span(
            method,
            context=propagate.extract(carrier),
            kind=SpanKind.SERVER,
            attributes={"http.request.method": method, "url.path": path[:200]},
        ) as span:
            await self.app(scope, receive, send_status)
            route: Any = scope.get("route")
            if route is not None and isinstance(getattr(route, "path", None), str):
                span.update_name(f"{method} {route.path}")
                span.set_attribute("http.route", route.path)
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)


def instrument_app(app: Any) -> None:
    """Add the tracing middleware when tracing is on (nothing at all when it is off)."""
    if tracing_enabled():
        app.add_middleware(TracingMiddleware)
