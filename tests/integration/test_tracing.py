"""One detection, one trace: the intake's server span, the signal-with-start, the workflow,
containment, and the outbound hook call (whose receiver gets the trace's traceparent)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from soar.observability.tracing import configure_tracing, shutdown_tracing
from soar.temporal_client import connect
from tests.support import WEBHOOK_SECRET, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(90)


class TraceparentHook:
    """An LLM gateway's admin API that remembers the traceparent of each call."""

    def __init__(self) -> None:
        self.traceparents: list[str] = []
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length", 0)))
                hook.traceparents.append(self.headers.get("traceparent", ""))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    assert configure_tracing("atlas-soar-test", exporter=exporter, env={})
    try:
        yield exporter
    finally:
        shutdown_tracing()


def _parent_chain(span: ReadableSpan, by_id: dict[int, ReadableSpan]) -> list[str]:
    names = []
    cur: ReadableSpan | None = span
    while cur is not None and cur.parent is not None:
        cur = by_id.get(cur.parent.span_id)
        if cur is not None:
            names.append(cur.name)
    return names


async def test_one_detection_one_trace_from_intake_to_hook(
    spans: InMemorySpanExporter, db_url: str, temporal_address: str, task_queue: str
) -> None:
    hook = TraceparentHook()
    settings = make_settings(
        db_url,
        temporal_address,
        task_queue,
        action_hooks={"block_session": hook.url},
        hook_secret=WEBHOOK_SECRET,
    )
    client = await connect(temporal_address, "default")  # with the tracing interceptor now
    async with running_stack(settings, client) as stack:
        r = await stack.post_detection(detection(id="det-traced"))
        assert r.status_code == 202, r.text
        incident_id = r.json()["incident_id"]
        await eventually(lambda: hook.traceparents, timeout=30)
        await eventually(
            lambda: any(s.name == "hook block_session" for s in spans.get_finished_spans()),
            timeout=10,
        )
    finished = list(spans.get_finished_spans())
    intake = [s for s in finished if s.name == "POST /v1/detections"]
    assert len(intake) == 1, [s.name for s in finished]
    root = intake[0]
    assert root.kind is SpanKind.SERVER and root.parent is None
    assert root.attributes is not None
    assert root.attributes["soar.incident_id"] == incident_id
    assert root.attributes["http.response.status_code"] == 202
    trace_id = root.context.trace_id
    in_trace = {s.name: s for s in finished if s.context.trace_id == trace_id}
    for name in (
        "SignalWithStartWorkflow:IncidentWorkflow",
        "RunWorkflow:IncidentWorkflow",
        "RunActivity:contain_detection",
        "RunActivity:deliver_hook",
        "hook block_session",
    ):
        assert name in in_trace, sorted(in_trace)
    by_id = {s.context.span_id: s for s in finished}
    # The hook call is the child of its activity, which descends from the intake.
    hook_span = in_trace["hook block_session"]
    assert hook_span.kind is SpanKind.CLIENT
    chain = _parent_chain(hook_span, by_id)
    assert chain[0] == "RunActivity:deliver_hook", chain
    assert chain[-1] == "POST /v1/detections", chain
    assert "POST /v1/detections" in _parent_chain(in_trace["RunActivity:contain_detection"], by_id)
    # The receiver can join the trace: W3C traceparent 00-<trace id>-<span id>-<flags>.
    parts = hook.traceparents[0].split("-")
    assert int(parts[1], 16) == trace_id
    assert int(parts[2], 16) == hook_span.context.span_id


def test_tracing_is_off_without_an_endpoint_and_names_a_bad_protocol() -> None:
    from soar.observability.tracing import TracingConfigError, exporter_from_env

    assert exporter_from_env({}) is None
    assert exporter_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}) is None  # no endpoint
    on = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}
    assert exporter_from_env(on) is not None
    assert exporter_from_env({**on, "OTEL_SDK_DISABLED": "true"}) is None
    assert exporter_from_env({**on, "OTEL_TRACES_EXPORTER": "none"}) is None
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs"):
        exporter_from_env({**on, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"):
        exporter_from_env({**on, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "carrier-pigeon"})
    with pytest.raises(TracingConfigError, match="OTEL_EXPORTER_OTLP_ENDPOINT"):
        exporter_from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "ftp://x"})
