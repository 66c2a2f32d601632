"""Gauges read at scrape time: from PostgreSQL (the same answer in every API replica) and
from this process's enforcement replica."""

from __future__ import annotations

import asyncio
import contextlib
import math
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from soar.audit.seal import refresh_seal_gauges
from soar.metrics import (
    APPROVAL_OLDEST_PENDING,
    APPROVALS_PENDING,
    INCIDENTS_OPEN,
    REPLICA_BEHIND,
    REPLICA_FRESH,
    REPLICA_STALENESS,
)

SEVERITIES = ("info", "low", "medium", "high", "critical")
AGES = ("0-15m", "15m-1h", "1h-4h", "4h+")
_OPEN = text("SELECT severity, count(*) FROM incidents WHERE status = 'open' GROUP BY severity")
_PENDING = text(
    "SELECT count(*) FILTER (WHERE age < 900), "
    "count(*) FILTER (WHERE age >= 900 AND age < 3600), "
    "count(*) FILTER (WHERE age >= 3600 AND age < 14400), "
    "count(*) FILTER (WHERE age >= 14400), coalesce(max(age), 0) "
    "FROM (SELECT extract(epoch FROM now() - requested_at)::float8 AS age "
    "FROM approvals WHERE status = 'pending') p"
)
_HEAD = text("SELECT coalesce(max(seq), 0) FROM enforcement_changes")


async def refresh_db_gauges(session: AsyncSession) -> int:
    """Open incidents, pending approvals, the log's unsealed backlog; returns the newest
    enforcement change seq (for the replica's lag)."""
    counts = {str(sev): int(n) for sev, n in (await session.execute(_OPEN)).all()}
    for sev in {*SEVERITIES, *counts}:
        INCIDENTS_OPEN.labels(severity=sev[:16]).set(counts.get(sev, 0))
    *bands, oldest = (await session.execute(_PENDING)).one()
    for age, n in zip(AGES, bands, strict=True):
        APPROVALS_PENDING.labels(age=age).set(int(n))
    APPROVAL_OLDEST_PENDING.set(max(float(oldest), 0.0))
    await refresh_seal_gauges(session)
    return int(await session.scalar(_HEAD) or 0)


def refresh_replica_gauges(replica: Any, head_seq: int | None) -> None:
    if replica is None:
        return
    staleness = float(replica.staleness)
    REPLICA_STALENESS.set(staleness if math.isfinite(staleness) else -1.0)
    REPLICA_FRESH.set(1 if replica.fresh else 0)
    if head_seq is not None:
        REPLICA_BEHIND.set(max(head_seq - int(replica.last_seq), 0))


async def refresh_gauges(factory: Any, replica: Any, *, within: float = 2.0) -> None:
    """Everything /metrics reads at scrape time; a database that does not answer in
    `within` seconds leaves the last values (the scrape itself never fails)."""
    head: int | None = None
    with contextlib.suppress(Exception):
        async with factory() as session:
            head = await asyncio.wait_for(refresh_db_gauges(session), within)
    refresh_replica_gauges(replica, head)
