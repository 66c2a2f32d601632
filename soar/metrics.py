"""Prometheus metrics exposed at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

DETECTIONS = Counter("soar_detections_total", "Detections received", ["outcome"])
INTAKE_SECONDS = Histogram(
    "soar_intake_seconds",
    "Time from request to durable 202",
    buckets=(0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
DECISIONS = Counter("soar_approval_decisions_total", "Approval decisions", ["channel", "outcome"])
