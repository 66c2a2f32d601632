"""The worker's own /metrics (Prometheus text format): the worker is a separate process
from the API, so what it records (containment latency, activities, outbound calls, the
log sealer) is scraped from it, on `SOAR_WORKER_METRICS_PORT` (unset: not served)."""

from __future__ import annotations

import logging
import threading
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import start_http_server

log = logging.getLogger("soar.metrics")


class MetricsServer:
    def __init__(self, server: WSGIServer, thread: threading.Thread) -> None:
        self.server, self.thread = server, thread
        self.port: int = server.server_port

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def serve_worker_metrics(settings: Any) -> MetricsServer | None:
    port = getattr(settings, "worker_metrics_port", None)
    if not port:
        return None
    host = getattr(settings, "worker_metrics_host", "127.0.0.1")
    server, thread = start_http_server(int(port), addr=host)
    log.info("worker metrics on http://%s:%s/metrics", host, port)
    return MetricsServer(server, thread)
