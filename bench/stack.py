"""The real stack for a benchmark: embedded PostgreSQL and Temporal dev server in a
temporary folder (or SOAR_DATABASE_URL / SOAR_TEMPORAL_ADDRESS), migrations, and the worker
and API as separate processes, as `soar up` runs them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soar.stack.bootstrap import migrate_and_seed
from soar.stack.postgres import EmbeddedPostgres
from soar.stack.proc import free_port
from soar.stack.temporal import EmbeddedTemporal
from tests.support import DECISION_KEY, WEBHOOK_SECRET, api_tokens


@dataclass
class BenchStack:
    base: str
    db_url: str
    address: str
    procs: dict[str, subprocess.Popen[bytes]]
    pids: dict[str, int] = field(default_factory=dict)  # every process whose CPU counts


def cpu_seconds(pid: int, *, children: bool = True) -> float:
    """CPU seconds of a process and (unless children=False) its descendants: PostgreSQL's
    backends are the postmaster's children. The bench process itself is counted without
    them, since the stack's processes it started are its descendants too."""
    import psutil

    proc = psutil.Process(pid)
    total = 0.0
    for p in [proc, *(proc.children(recursive=True) if children else [])]:
        try:
            t = p.cpu_times()
        except psutil.NoSuchProcess:  # a backend that just ended
            continue
        total += t.user + t.system
    return total


@contextmanager
def bench_stack(profile_dir: str | None = None, **env_over: str) -> Iterator[BenchStack]:
    """The stack; with `profile_dir`, the worker and the API run under cProfile and write
    `<dir>/<name>.prof` when they stop (they stop cleanly on SIGTERM)."""
    tmp = Path(tempfile.mkdtemp(prefix="soar-bench-"))
    procs: dict[str, subprocess.Popen[bytes]] = {}
    pg = tp = None
    try:
        db_url = os.environ.get("SOAR_DATABASE_URL")
        if not db_url:
            pg = EmbeddedPostgres(tmp / "pgdata")
            pg.start()
            db_url = pg.url
        address = os.environ.get("SOAR_TEMPORAL_ADDRESS")
        if not address:
            tp = EmbeddedTemporal(tmp / "temporal.db")
            tp.start()
            address = tp.address
        migrate_and_seed(db_url)
        port = free_port()
        env = dict(
            os.environ,
            SOAR_DATABASE_URL=db_url,
            SOAR_TEMPORAL_ADDRESS=address,
            SOAR_WEBHOOK_SECRET=WEBHOOK_SECRET,
            SOAR_API_TOKENS=api_tokens(),
            SOAR_DECISION_KEY=DECISION_KEY,
            SOAR_API_PORT=str(port),
            SOAR_LOG_LEVEL="WARNING",
            **env_over,
        )
        for cmd in ("worker", "api"):
            prof: list[str] = []
            if profile_dir:
                Path(profile_dir).mkdir(parents=True, exist_ok=True)
                out = str(Path(profile_dir) / f"{cmd}.prof")
                prof = [str(Path(__file__).with_name("profiled.py")), out]
            argv = [*prof, cmd] if prof else ["-m", "atlas_soar", cmd]
            procs[cmd] = subprocess.Popen([sys.executable, *argv], env=env)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        stack = BenchStack(base, db_url, address, procs)
        stack.pids = {name: p.pid for name, p in procs.items()}
        if tp and tp.proc:
            stack.pids["temporal"] = tp.proc.pid
        if pg and pg.proc:
            stack.pids["postgres"] = pg.proc.pid
        yield stack
    finally:
        for p in procs.values():
            p.terminate()
        for p in procs.values():
            p.wait(timeout=20)
        if tp:
            tp.stop()
        if pg:
            pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
