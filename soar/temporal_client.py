"""Connecting to Temporal (the embedded dev server, a cluster, or Temporal Cloud).

TLS is on when any of SOAR_TEMPORAL_TLS, SOAR_TEMPORAL_TLS_CERT / _KEY (mTLS), _CA (the
server's CA; unset: the system's roots) or SOAR_TEMPORAL_API_KEY (Temporal Cloud) is set.
The worker, the API and every CLI command connect through :func:`connect`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from temporalio.client import Client
from temporalio.service import TLSConfig

from soar.config import Settings, SettingsError
from soar.observability.temporal import temporal_interceptors


def tls_config(settings: Settings) -> TLSConfig | None:
    """The TLS settings for the client, or None for a plaintext connection."""
    if not settings.temporal_tls_enabled:
        return None

    def read(name: str) -> bytes | None:
        path = getattr(settings, name)
        if path is None:
            return None
        try:
            data: bytes = path.read_bytes()
        except OSError as exc:  # vanished since the settings were loaded
            msg = f"SOAR_{name.upper()}: {path} cannot be read: {exc.strerror}"
            raise SettingsError(msg) from None
        return data

    return TLSConfig(
        server_root_ca_cert=read("temporal_tls_ca"),
        client_cert=read("temporal_tls_cert"),
        client_private_key=read("temporal_tls_key"),
        domain=settings.temporal_tls_server_name,
    )


def connect_options(settings: Settings | None) -> dict[str, Any]:
    if settings is None:
        return {}
    options: dict[str, Any] = {}
    tls = tls_config(settings)
    if tls is not None:
        options["tls"] = tls
    if settings.temporal_api_key is not None and settings.temporal_api_key.get_secret_value():
        options["api_key"] = settings.temporal_api_key.get_secret_value()
    return options


async def connect(
    address: str, namespace: str, *, attempts: int = 40, settings: Settings | None = None
) -> Client:
    """A client of `address`; with `settings`, over TLS / mTLS / an API key as they say."""
    options = connect_options(settings)
    if "api_key" in options:
        # Temporal Cloud routes API-key calls to the namespace by this header.
        options["rpc_metadata"] = {"temporal-namespace": namespace}
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await Client.connect(
                address,
                namespace=namespace,
                interceptors=temporal_interceptors(),
                **options,
            )
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.25)
    how = " over TLS" if "tls" in options else ""
    first = (str(last).splitlines() or [""])[0][:300]
    raise ConnectionError(f"Temporal at {address}{how} is not reachable: {first}")
