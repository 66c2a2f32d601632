"""Temporal over TLS and mTLS for the worker, the API and the CLI, through a TLS-terminating
proxy in front of the dev server (which has no TLS of its own)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from pathlib import Path

import pytest
from temporalio.client import Client

from soar.temporal_client import connect, connect_options
from tests.fakes.tls_proxy import TlsProxy, make_pki
from tests.support import (
    DECISION_KEY,
    WEBHOOK_SECRET,
    api_tokens,
    detection,
    eventually,
    make_settings,
    running_stack,
)

pytestmark = pytest.mark.timeout(120)


def tls_env(pki_dir: Path, address: str, **over: str) -> dict[str, str]:
    return {
        "SOAR_TEMPORAL_ADDRESS": address,
        "SOAR_TEMPORAL_TLS_CERT": str(pki_dir / "client.pem"),
        "SOAR_TEMPORAL_TLS_KEY": str(pki_dir / "client.key"),
        "SOAR_TEMPORAL_TLS_CA": str(pki_dir / "ca.pem"),
        **over,
    }


async def test_worker_and_api_over_mtls(
    tmp_path: Path, db_url: str, temporal_address: str, task_queue: str
) -> None:
    pki = make_pki(tmp_path)
    async with TlsProxy(pki, temporal_address, require_client_cert=True) as proxy:
        settings = make_settings(
            db_url,
            proxy.address,
            task_queue,
            temporal_tls_cert=pki.client_cert,
            temporal_tls_key=pki.client_key,
            temporal_tls_ca=pki.ca,
            temporal_api_key="cloud-style-api-key",  # sent as a bearer header; dev ignores it
        )
        assert connect_options(settings)["api_key"] == "cloud-style-api-key"
        client: Client = await connect(proxy.address, "default", settings=settings)
        # The worker (this client) and the API (its own client from the settings) both go
        # through the proxy: a detection is contained end to end.
        async with running_stack(settings, client) as stack:
            r = await stack.post_detection(
                detection(subject={"tenant": "acme", "session": "s-tls"})
            )
            assert r.status_code == 202, r.text
            await eventually(lambda: _blocked(stack, "s-tls"), timeout=30, interval=0.2)
            ready = await stack.http.get("/readyz")
            assert ready.status_code == 200, ready.text
        assert proxy.handshakes >= 2

        # No client certificate: the proxy refuses the handshake, one clear error.
        no_cert = make_settings(db_url, proxy.address, task_queue, temporal_tls_ca=pki.ca)
        with pytest.raises(ConnectionError, match=r"over TLS is not reachable"):
            await connect(proxy.address, "default", settings=no_cert, attempts=2)
        # A server certificate from a CA we do not trust: refused as well.
        other = make_pki(tmp_path, prefix="other-")
        wrong_ca = make_settings(
            db_url,
            proxy.address,
            task_queue,
            temporal_tls_cert=pki.client_cert,
            temporal_tls_key=pki.client_key,
            temporal_tls_ca=other.ca,
        )
        with pytest.raises(ConnectionError, match=r"over TLS is not reachable"):
            await connect(proxy.address, "default", settings=wrong_ca, attempts=2)
        # Plaintext to a TLS port: no.
        with pytest.raises(ConnectionError):
            await connect(proxy.address, "default", attempts=2)


async def _blocked(stack: object, session: str) -> bool:
    return bool((await stack.enforcement("sessions", session))["blocked"])  # type: ignore[attr-defined]


async def test_cli_worker_connects_over_mtls(
    tmp_path: Path, db_url: str, temporal_address: str, task_queue: str
) -> None:
    pki = make_pki(tmp_path)
    async with TlsProxy(pki, temporal_address, require_client_cert=True) as proxy:
        env = dict(
            os.environ,
            SOAR_DATABASE_URL=db_url,
            SOAR_TEMPORAL_TASK_QUEUE=task_queue,
            SOAR_WEBHOOK_SECRET=WEBHOOK_SECRET,
            SOAR_API_TOKENS=api_tokens(),
            SOAR_DECISION_KEY=DECISION_KEY,
            SOAR_HOME=str(tmp_path / "home"),
            SOAR_LOG_LEVEL="INFO",
            **tls_env(tmp_path, proxy.address),
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "atlas_soar",
            "worker",
            env=env,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
        )
        try:
            assert proc.stderr is not None
            seen = b""
            async with asyncio.timeout(60):
                while b"worker queues:" not in seen:
                    line = await proc.stderr.readline()
                    assert line, f"worker exited: {seen.decode()[-2000:]}"
                    seen += line
            assert proxy.handshakes >= 1
        finally:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            await proc.wait()


async def test_bad_tls_paths_are_one_line_naming_the_variable(tmp_path: Path) -> None:
    not_pem = tmp_path / "cert.txt"
    not_pem.write_text("hello")
    cases = [
        ({"SOAR_TEMPORAL_TLS_CA": str(tmp_path / "missing.pem")}, "SOAR_TEMPORAL_TLS_CA:"),
        (
            {
                "SOAR_TEMPORAL_TLS_CERT": str(not_pem),
                "SOAR_TEMPORAL_TLS_KEY": str(not_pem),
            },
            "SOAR_TEMPORAL_TLS_CERT: ",
        ),
    ]
    make_pki(tmp_path)
    cases.append(
        ({"SOAR_TEMPORAL_TLS_CERT": str(tmp_path / "client.pem")}, "SOAR_TEMPORAL_TLS_KEY:")
    )
    for env_over, needle in cases:
        env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_TEMPORAL_TLS")}
        env.update(
            SOAR_DATABASE_URL="postgresql://u@127.0.0.1:1/x",
            SOAR_TEMPORAL_ADDRESS="127.0.0.1:1",
            SOAR_HOME=str(tmp_path / "home"),
            **env_over,
        )
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "atlas_soar",
            "worker",
            env=env,
            stderr=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        out, err = await proc.communicate()
        text = (out + err).decode().strip()
        assert proc.returncode != 0
        assert needle in text and len(text.splitlines()) == 1, text
        assert "Traceback" not in text
