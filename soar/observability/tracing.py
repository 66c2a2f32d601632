"""OpenTelemetry traces, configured by the standard `OTEL_*` variables; off when unset.

One trace per detection: the intake's server span (soar/observability/http.py), then
Temporal's spans (the SDK's TracingInterceptor on the client, so on the workers too:
signal-with-start, the workflow run, each activity), then a client span per call to a hook,
Slack, Jira or the LLM (`outbound`). The trace context reaches the workflow in Temporal
headers and the outbound hook in a `traceparent` header.

Read here: `OTEL_SDK_DISABLED`, `OTEL_TRACES_EXPORTER` (`otlp`, the default; `console`;
`none`), `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT` (unset: no tracing at all, nothing is
wrapped), `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL` (`http/protobuf`, the default, or `grpc`,
which needs the `opentelemetry-exporter-otlp-proto-grpc` package), `OTEL_SERVICE_NAME`. The
SDK itself reads the rest (headers, timeout, compression, certificate, sampler, batch sizes,
resource attributes).
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from dataclasses import dataclass

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)

PROTOCOLS = ("http/protobuf", "grpc")
GRPC_PACKAGE = "opentelemetry-exporter-otlp-proto-grpc"


class TracingConfigError(ValueError):
    """One line naming the OTEL_* variable and what is wrong with it."""


@dataclass
class _State:
    provider: TracerProvider | None = None
    tracer: trace.Tracer | None = None


_state = _State()


def _get(env: Mapping[str, str], *names: str) -> str:
    for name in names:
        value = env.get(name, "").strip()
        if value:
            return value
    return ""


def exporter_from_env(env: Mapping[str, str]) -> SpanExporter | None:
    """The span exporter the variables ask for, or None (tracing off). Raises
    TracingConfigError for a value that cannot work."""
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return None
    kinds = [k.strip().lower() for k in env.get("OTEL_TRACES_EXPORTER", "otlp").split(",")]
    kinds = [k for k in kinds if k]
    if not kinds or kinds == ["none"]:
        return None
    for kind in kinds:
        if kind not in ("otlp", "console", "none"):
            raise TracingConfigError(
                f"OTEL_TRACES_EXPORTER: {kind[:40]!r} is not supported (otlp, console or none)"
            )
    if "console" in kinds:
        return ConsoleSpanExporter()
    endpoint = _get(env, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")
    if not endpoint:
        return None
    if not endpoint.lower().startswith(("http://", "https://")):
        raise TracingConfigError("OTEL_EXPORTER_OTLP_ENDPOINT: expected an http:// or https:// URL")
    var = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "").strip()
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = _get(env, var).lower() or "http/protobuf"
    if protocol not in PROTOCOLS:
        raise TracingConfigError(
            f"{var}: {protocol[:40]!r} is not supported (http/protobuf or grpc)"
        )
    if protocol == "grpc":
        if importlib.util.find_spec("opentelemetry.exporter.otlp.proto.grpc") is None:
            raise TracingConfigError(
                f"{var}=grpc needs the {GRPC_PACKAGE} package, which is not installed; "
                "install it or use http/protobuf"
            )
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (  # type: ignore[import-not-found]
            OTLPSpanExporter as GrpcExporter,
        )

        exporter: SpanExporter = GrpcExporter()
        return exporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def configure_tracing(
    service: str,
    *,
    env: Mapping[str, str] | None = None,
    exporter: SpanExporter | None = None,
) -> bool:
    """Turn tracing on for this process when the variables (or `exporter`, for tests) ask
    for it; returns whether it is on. Call before connecting to Temporal and before
    building the app. Raises TracingConfigError for a bad variable."""
    env = os.environ if env is None else env
    batch = exporter is None
    if exporter is None:
        exporter = exporter_from_env(env)
    if exporter is None:
        return False
    attrs = {} if env.get("OTEL_SERVICE_NAME", "").strip() else {SERVICE_NAME: service}
    provider = TracerProvider(resource=Resource.create(attrs))
    # Batched in production (export off the request path); at once for tests.
    provider.add_span_processor(
        BatchSpanProcessor(exporter) if batch else SimpleSpanProcessor(exporter)
    )
    if batch:
        # Libraries that trace through the global API (e.g. an LLM client's own
        # instrumentation) report to the same place; set once per process.
        trace.set_tracer_provider(provider)
    _state.provider = provider
    _state.tracer = provider.get_tracer("atlas-soar")
    return True


def tracing_enabled() -> bool:
    return _state.tracer is not None


def tracer() -> trace.Tracer | None:
    return _state.tracer


def shutdown_tracing() -> None:
    """Flush and stop (the end of a process, or of a test)."""
    provider, _state.provider, _state.tracer = _state.provider, None, None
    if provider is not None:
        provider.shutdown()
