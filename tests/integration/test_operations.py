"""/healthz, /readyz (503 naming what is down), /metrics, and start-up errors."""

from __future__ import annotations

import os
import subprocess
import sys

import httpx
from temporalio.client import Client

from tests.support import ApiServer, make_settings, running_stack


async def test_health_ready_metrics(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client, worker=False) as stack:
        assert (await stack.http.get("/healthz")).json() == {"status": "ok"}
        ready = await stack.http.get("/readyz")
        assert ready.status_code == 200
        assert ready.json()["checks"] == {"database": "ok", "temporal": "ok", "enforcement": "ok"}
        metrics = await stack.http.get("/metrics")
        assert "soar_detections_total" in metrics.text


def test_readyz_names_what_is_unreachable(db_url: str, task_queue: str) -> None:
    from soar.stack.proc import free_port

    settings = make_settings(db_url, f"127.0.0.1:{free_port()}", task_queue)
    api = ApiServer(settings)
    api.thread.start()
    try:
        for _ in range(100):
            try:
                r = httpx.get(f"{api.url}/readyz", timeout=2)
                break
            except httpx.HTTPError:
                import time

                time.sleep(0.05)
        assert r.status_code == 503
        assert r.json()["checks"]["database"] == "ok"
        assert r.json()["checks"]["temporal"].startswith("unreachable")
    finally:
        api.stop()


def test_bad_setting_is_one_line_and_non_zero() -> None:
    env = {**os.environ, "SOAR_API_PORT": "not-a-port"}
    proc = subprocess.run(
        [sys.executable, "-m", "atlas_soar", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = [
        ln
        for ln in proc.stderr.splitlines()
        if ln.strip() and "Warning" not in ln and "return Path" not in ln
    ]
    assert len(lines) == 1 and "SOAR_API_PORT" in lines[0], proc.stderr
