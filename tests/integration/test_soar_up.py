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
    env = {
        **os.environ,
        "SOAR_DATABASE_URL": db_url,
        "SOAR_TEMPORAL_ADDRESS": temporal_address,
        "SOAR_HOME": str(home),
        "SOAR_API_PORT": str(port),
        "SOAR_TEMPORAL_TASK_QUEUE": "tq-up-test",
    }
    cmd = [sys.executable, "-m", "atlas_soar", "up"]
    proc = subprocess.Popen(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
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
        _try_it_as_the_readme_says(home, port)
        # The console says what happened, one line each: the detection and the block.
        wanted = ("detection  AML.T0051", "applied    Blocked session s-try")
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not all(any(w in ln for ln in lines) for w in wanted):
            time.sleep(0.1)
        for w in wanted:
            assert sum(w in ln for ln in lines) == 1, "".join(lines)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
        reader.join(timeout=10)
    out = "".join(lines)
    assert proc.returncode == 0, out
    assert "atlas-soar is ready" in out and "stopped." in out
    assert str(home) in out and "webhook secret" in out
    # The worker and the API say what they connected to; the console says what to do next.
    assert "worker (core, external): database" in out and "API on http://" in out
    assert "admin token" in out and "Next" in out and "send --technique AML.T0051" in out
    for child in children:
        assert not child.is_running() or child.status() == psutil.STATUS_ZOMBIE
    assert not (home / "stack.json").exists()


def _try_it_as_the_readme_says(home: Path, port: int) -> None:
    """With only SOAR_HOME set, the CLI finds the running stack: `soar send` posts a signed
    detection, the gateway token in SOAR_HOME reads enforcement, `soar sources` works."""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("SOAR_DATABASE_URL", "SOAR_TEMPORAL_ADDRESS")
    }
    env.update(SOAR_HOME=str(home), SOAR_API_PORT=str(port))
    soar = [sys.executable, "-m", "atlas_soar"]
    sent = subprocess.run(
        [*soar, "send", "--technique", "AML.T0051", "--session", "s-try", "--tenant", "acme"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert sent.returncode == 0 and sent.stdout.startswith("202 "), sent.stdout + sent.stderr
    token = (home / "gateway-token").read_text().strip()
    url = f"http://127.0.0.1:{port}/v1/enforcement/sessions/s-try?tenant=acme"
    assert httpx.get(url, timeout=5).status_code == 401
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        r = httpx.get(url, headers={"Authorization": f"Bearer {token}"}, timeout=5)
        assert r.status_code == 200, r.text
        if r.json()["blocked"]:
            break
        time.sleep(0.2)
    assert r.json()["blocked"] and r.json()["reason"]["technique"] == "AML.T0051"
    added = subprocess.run(
        [*soar, "sources", "add", "try-gw", "--tenant", "acme"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert added.returncode == 0, added.stdout + added.stderr
    assert "whsec_" in added.stdout
    listed = subprocess.run([*soar, "sources", "list"], env=env, capture_output=True, text=True)
    assert "try-gw" in listed.stdout and "whsec_" not in listed.stdout
    # The README's approver and auditor examples, with the admin token `soar up` made.
    admin = home / "admin-token"
    assert admin.stat().st_mode & 0o077 == 0
    auth = {"Authorization": f"Bearer {admin.read_text().strip()}"}
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(f"{base}/v1/approvals?status=pending", headers=auth).status_code == 200
    audit = httpx.get(f"{base}/v1/audit?format=jsonl", headers=auth)
    assert audit.status_code == 200 and "detection.received" in audit.text
