"""Connecting to Temporal (the embedded dev server, a cluster, or Temporal Cloud)."""

from __future__ import annotations

import asyncio

from temporalio.client import Client

from soar.observability.temporal import temporal_interceptors


async def connect(address: str, namespace: str, *, attempts: int = 40) -> Client:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await Client.connect(
                address, namespace=namespace, interceptors=temporal_interceptors()
            )
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise ConnectionError(f"Temporal at {address} is not reachable: {last}")
