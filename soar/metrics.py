"""Prometheus metrics exposed at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

DETECTIONS = Counter("soar_detections_total", "Detections received", ["outcome"])
INTAKE_SECONDS = Histogram(
    "soar_intake_seconds",
    "Time from request to durable 202",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DECISIONS = Counter("soar_approval_decisions_total", "Approval decisions", ["channel", "outcome"])

# The action log's sealer (soar.audit.seal): how far behind the writers it runs.
LOG_SEAL_DELAY = Histogram(
    "soar_audit_seal_delay_seconds",
    "Action log: age of the oldest row of each sealed batch when it was sealed (every row of "
    "the batch waited at most this long)",
    buckets=(0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1, 2, 5, 10, 30, 60),
)
LOG_SEALED = Counter("soar_audit_sealed_rows_total", "Action log rows sealed by this process")
LOG_UNSEALED = Gauge("soar_audit_unsealed_rows", "Action log rows written but not sealed yet")
LOG_OLDEST_UNSEALED = Gauge(
    "soar_audit_oldest_unsealed_seconds", "Age of the oldest unsealed action log row (0: none)"
)
LOG_HEAD_SEQ = Gauge("soar_audit_head_seq", "The newest sealed action log seq")
