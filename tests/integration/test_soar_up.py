"""`soar up` as a user runs it: pointed at existing PostgreSQL and Temporal it starts
neither embedded server, comes up ready, and Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from soar.stack.proc import free_port

pytestmark = pytest.mark.timeout(120)


def test_up_with_existing_servers_then_ctrl_c(
    db_url: str, temporal_address: str, tmp_path: Path
) -> None:
    port = free_port()
    home = tmp_path / "home"
    env = {**os.environ, "SOAR_DATABASE_URL": db_url, "SOAR_TEMPORAL_ADDRESS": temporal_address,
           "SOAR_HOME": str(home), "SOAR_API_PORT": str(port),
           "SOAR_TEMPORAL_TASK_QUEUE": "tq-up-test"}  # fmt: skip
    cmd = [sys.executable, "-m", "soar.cli", "up"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
                              daemon=True)  # fmt: skip
    reader.start()
    try:
        # Ready as soar up itself says it, not merely /readyz: a Ctrl-C before that is an
        # interrupted start (exit 130).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("is ready" in ln for ln in lines):
            time.sleep(0.1)
        assert any("is ready" in ln for ln in lines), "".join(lines)
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
        children = psutil.Process(proc.pid).children(recursive=True)
        assert len(children) == 2  # the worker and the API, nothing embedded
        assert not (home / "pgdata").exists() and not (home / "temporal.db").exists()
        assert (home / "webhook-secret").read_text().startswith("whsec_")
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "atlas-soar is ready" in out and "stopped." in out
    assert str(home) in out and "webhook secret" in out
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
