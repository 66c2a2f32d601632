"""Connecting to Temporal (the embedded dev server, a cluster, or Temporal Cloud)."""

from __future__ import annotations

import asyncio

from temporalio.client import Client


async def connect(address: str, namespace: str, *, attempts: int = 40) -> Client:
    last: Exception | None = None
    for _ in range(attempts):
        try:
            return await Client.connect(address, namespace=namespace)
        except Exception as exc:
            last = exc
            await asyncio.sleep(0.25)
    raise ConnectionError(f"Temporal at {address} is not reachable: {last}")
