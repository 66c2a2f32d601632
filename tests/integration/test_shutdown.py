"""Ctrl-C and SIGTERM stop the worker and the API cleanly: exit 0, no "Fatal Python error"
(the Temporal client's threads outliving the interpreter), work in flight finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from soar.stack.proc import free_port
from tests.support import TOKENS, api_tokens

pytestmark = pytest.mark.timeout(150)
SOAR = (sys.executable, "-m", "atlas_soar")


def _reader(proc: subprocess.Popen[str], lines: list[str]) -> threading.Thread:
    t = threading.Thread(
        target=lambda: lines.extend(iter(proc.stdout.readline, "")),  # type: ignore[union-attr]
        daemon=True,
    )
    t.start()
    return t


def _wait_for(lines: list[str], text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not any(text in ln for ln in lines):
        time.sleep(0.1)
    assert any(text in ln for ln in lines), "".join(lines)


def test_ctrl_c_on_soar_up_stops_everything_cleanly(
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
        "SOAR_TEMPORAL_TASK_QUEUE": "tq-shutdown-test",
        "SOAR_LOG_LEVEL": "INFO",
    }
    # Its own process group, as a shell gives a foreground job: a terminal's Ctrl-C is
    # SIGINT to the whole group.
    proc = subprocess.Popen(
        [sys.executable, "-m", "atlas_soar", "up"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    reader = _reader(proc, lines)
    try:
        _wait_for(lines, "is ready", 60)
        # Work in flight at the moment of the Ctrl-C: a detection just accepted.
        sent = subprocess.run(
            [*SOAR, "send", "--technique", "AML.T0051", "--session", "s-stop", "--tenant", "acme"],
            env={k: v for k, v in env.items() if k != "SOAR_DATABASE_URL"},
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        proc.wait(timeout=90)
        reader.join(timeout=10)
    out = "".join(lines)
    assert "Fatal Python error" not in out, out
    assert "Traceback" not in out, out
    assert "exited with code" not in out and "killed" not in out, out
    assert proc.returncode == 0, out
    assert "stopped." in out
    # The detection in flight was contained before the worker let go.
    import psycopg

    with psycopg.connect(db_url) as c:
        blocked = c.execute(
            "SELECT count(*) FROM enforcement_blocks WHERE target = 's-stop'"
        ).fetchone()
    assert blocked is not None and blocked[0] == 1


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_worker_and_api_exit_zero_on_a_signal(
    db_url: str, temporal_address: str, sig: signal.Signals
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "SOAR_DATABASE_URL": db_url,
        "SOAR_TEMPORAL_ADDRESS": temporal_address,
        "SOAR_TEMPORAL_TASK_QUEUE": f"tq-sig-{sig.value}",
        "SOAR_WEBHOOK_SECRET": "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=",
        "SOAR_API_TOKENS": api_tokens(),
        "SOAR_API_PORT": str(port),
        "SOAR_LOG_LEVEL": "INFO",
    }
    assert TOKENS  # the API needs its bootstrap tokens
    procs = {
        cmd: subprocess.Popen(
            [sys.executable, "-m", "atlas_soar", cmd],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for cmd in ("worker", "api")
    }
    outs: dict[str, list[str]] = {cmd: [] for cmd in procs}
    readers = [_reader(p, outs[cmd]) for cmd, p in procs.items()]
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    _wait_for(outs["worker"], "worker queues", 30)
    for p in procs.values():
        p.send_signal(sig)
    for p in procs.values():
        p.wait(timeout=30)
    for r in readers:
        r.join(timeout=10)
    for cmd, p in procs.items():
        out = "".join(outs[cmd])
        assert "Fatal Python error" not in out, out
        assert p.returncode == 0, f"{cmd}: {p.returncode}\n{out}"
    assert any("stopping gracefully" in ln for ln in outs["worker"]), outs["worker"]
