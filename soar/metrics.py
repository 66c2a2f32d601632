"""Prometheus metrics exposed at /metrics."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

# API: one count per answer of POST /v1/detections. outcome: accepted | duplicate | refused |
# throttled | clean (a finding that reports nothing); reason: why refused or throttled
# (signature, too_large, content_type, invalid_json, invalid, unknown_technique, tenant;
# source, subject). source: the registered source that signed it ("unknown" before that).
DETECTIONS = Counter(
    "soar_detections_total",
    "Detections answered by the intake, by source, outcome and reason",
    ["source", "outcome", "reason"],
)
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

# --- issue 17: what on-call asks. Which process exposes which: deploy/README.md. ----------

# Worker: from the API's receipt of a detection to the commit that made its block effective.
CONTAINMENT_SECONDS = Histogram(
    "soar_containment_latency_seconds",
    "Detection received by the API to its low-risk block committed (effective) by the worker",
    buckets=(0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1, 2, 5, 10, 30),
)
ACTIVITY_SECONDS = Histogram(
    "soar_activity_duration_seconds",
    "Incident workflow activities by name and outcome (ok | error)",
    ["activity", "outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# Worker (and the API for Slack interactions): calls to the outside world.
# target: hook | slack | jira | llm; outcome: ok | error.
OUTBOUND_CALLS = Counter(
    "soar_outbound_calls_total", "Calls to hooks, Slack, Jira, the LLM", ["target", "outcome"]
)
OUTBOUND_SECONDS = Histogram(
    "soar_outbound_call_duration_seconds",
    "Latency of calls to hooks, Slack, Jira, the LLM",
    ["target", "outcome"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
# API, read from PostgreSQL at scrape time (the same in every API replica).
INCIDENTS_OPEN = Gauge("soar_incidents_open", "Open incidents, by severity", ["severity"])
APPROVALS_PENDING = Gauge(
    "soar_approvals_pending",
    "Pending approvals by how long they have waited (age: 0-15m | 15m-1h | 1h-4h | 4h+)",
    ["age"],
)
APPROVAL_OLDEST_PENDING = Gauge(
    "soar_approvals_oldest_pending_age_seconds", "Age of the oldest pending approval (0: none)"
)
# API: the enforcement replica this process answers checks from (soar/replica.py).
REPLICA_STALENESS = Gauge(
    "soar_enforcement_replica_staleness_seconds",
    "Seconds since this API process's enforcement replica last read its feed",
)
REPLICA_BEHIND = Gauge(
    "soar_enforcement_replica_lag_changes",
    "Enforcement changes committed in PostgreSQL but not yet applied to this replica",
)
REPLICA_FRESH = Gauge(
    "soar_enforcement_replica_fresh", "1 when the replica answers checks, 0 when the database does"
)


def count_detection(outcome: str, *, source: str = "unknown", reason: str = "") -> None:
    """One intake answer. `source` is a registered source's name (bounded by the admin who
    registers sources), cut short so a label never grows without bound."""
    DETECTIONS.labels(source=source[:64], outcome=outcome, reason=reason).inc()
