"""Temporal interceptors: the SDK's TracingInterceptor when tracing is on, and this
module's activity metrics always. Given to `Client.connect`, they apply to every Worker
built on that client too."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from temporalio import activity
from temporalio.client import Interceptor as ClientInterceptor
from temporalio.worker import (
    ActivityInboundInterceptor,
    ExecuteActivityInput,
    Interceptor,
)

from soar.metrics import ACTIVITY_SECONDS, CONTAINMENT_SECONDS
from soar.observability.tracing import tracer

CONTAIN = "contain_detection"


class ActivityMetrics(ClientInterceptor, Interceptor):
    """Duration and outcome of every activity; for `contain_detection`, the containment
    latency (the API's receipt of the detection to the commit that applied its block)."""

    def intercept_activity(self, next: ActivityInboundInterceptor) -> ActivityInboundInterceptor:
        return _ActivityMetricsInbound(next)


class _ActivityMetricsInbound(ActivityInboundInterceptor):
    async def execute_activity(self, input: ExecuteActivityInput) -> Any:
        name = activity.info().activity_type
        started = time.perf_counter()
        outcome = "error"
        try:
            result = await super().execute_activity(input)
            outcome = "ok"
        finally:
            ACTIVITY_SECONDS.labels(activity=name, outcome=outcome).observe(
                time.perf_counter() - started
            )
        if name == CONTAIN:
            _observe_containment(input.args, result)
        return result


def _observe_containment(args: Any, result: Any) -> None:
    applied = getattr(result, "applied", ())
    det = getattr(args[0], "detection", None) if args else None
    received = getattr(det, "received_at", None)
    if not applied or not isinstance(received, str):
        return
    try:
        at = datetime.fromisoformat(received)
    except ValueError:
        return
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    CONTAINMENT_SECONDS.observe(max((datetime.now(UTC) - at).total_seconds(), 0.0))


def temporal_interceptors() -> list[ClientInterceptor]:
    """For `Client.connect(..., interceptors=...)`."""
    found: list[ClientInterceptor] = [ActivityMetrics()]
    t = tracer()
    if t is not None:
        from temporalio.contrib.opentelemetry import TracingInterceptor

        found.insert(0, TracingInterceptor(t))
    return found
