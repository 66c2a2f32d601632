"""Operating atlas-soar: traces (OpenTelemetry, off unless the OTEL_* variables ask) and
the Prometheus metrics an on-call engineer asks for (definitions in soar/metrics.py).

The hooks other modules call are one line each: `configure_tracing` (process start),
`temporal_interceptors` (Temporal client), `instrument_app` (FastAPI app), `outbound` (around
a call to a hook, Slack, Jira or the LLM), `annotate` (ids on the current span),
`refresh_gauges` (/metrics), `serve_worker_metrics` (the worker's own /metrics port).
"""

from soar.observability.outbound import annotate, outbound
from soar.observability.tracing import (
    TracingConfigError,
    configure_tracing,
    shutdown_tracing,
    tracing_enabled,
)

__all__ = [
    "TracingConfigError",
    "annotate",
    "configure_tracing",
    "outbound",
    "shutdown_tracing",
    "tracing_enabled",
]
