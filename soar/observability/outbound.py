"""Calls to the outside world (hooks, Slack, Jira, the LLM): one client span and one count
and latency sample each, whatever the transport."""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager

from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind

from soar.metrics import OUTBOUND_CALLS, OUTBOUND_SECONDS
from soar.observability.tracing import tracer

TARGETS = frozenset({"hook", "slack", "jira", "llm"})


@contextmanager
def outbound(
    target: str, operation: str, headers: MutableMapping[str, str] | None = None
) -> Iterator[None]:
    """Wrap one call to `target` (hook | slack | jira | llm). An exception leaving the block
    counts as an error (and is re-raised). With tracing on, the span is a child of the
    current one (the activity's) and `headers`, when given, get its `traceparent`."""
    if target not in TARGETS:
        raise ValueError(f"unknown outbound target {target!r}")
    started = time.perf_counter()
    outcome = "error"
    t = tracer()
    try:
        if t is None:
            yield
        else:
            with t.start_as_current_span(
                f"{target} {operation[:80]}",
                kind=SpanKind.CLIENT,
                attributes={"soar.outbound.target": target, "soar.outbound.operation": operation},
            ):
                if headers is not None:
                    propagate.inject(headers)
                yield
        outcome = "ok"
    finally:
        OUTBOUND_CALLS.labels(target=target, outcome=outcome).inc()
        OUTBOUND_SECONDS.labels(target=target, outcome=outcome).observe(
            time.perf_counter() - started
        )


def annotate(**attributes: str | int | bool) -> None:
    """Ids on the current span (e.g. the incident a detection joined), so a trace can be
    found by them; nothing when tracing is off."""
    span = trace.get_current_span()
    if span.is_recording():
        span.set_attributes({f"soar.{k}": v for k, v in attributes.items()})
