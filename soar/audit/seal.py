"""Calling the database's sealer, and how far behind the writers it is.

`soar_seal(max_rows)` (migration 0004) does the work inside PostgreSQL under the table
owner's rights; this module only calls it. `seal_forever` is the loop the worker runs: every
`every` seconds, or at once again while a full batch came back (a backlog). The function
takes a try-lock, so any number of workers may run the loop: one seals, the others return
at once; writers never take that lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession, async_sessionmaker

from soar.metrics import (
    LOG_HEAD_SEQ,
    LOG_OLDEST_UNSEALED,
    LOG_SEAL_DELAY,
    LOG_SEALED,
    LOG_UNSEALED,
)

log = logging.getLogger(__name__)

BATCH = 5000
GAUGES_EVERY = 5.0
_SEAL = text("SELECT sealed, head_seq, oldest_delay_seconds FROM soar_seal(:n)")
_BACKLOG = text(
    "SELECT count(*), extract(epoch FROM clock_timestamp() - min(at))::float8 "
    "FROM action_log WHERE seq IS NULL"
)


@dataclass(frozen=True)
class SealResult:
    sealed: int
    head_seq: int | None
    oldest_delay: float | None  # seconds the oldest row of the batch waited


@dataclass(frozen=True)
class Backlog:
    unsealed: int
    oldest_age: float | None  # seconds; None when every row is sealed


async def seal_once(db: AsyncSession | AsyncConnection, max_rows: int = BATCH) -> SealResult:
    """Seal up to `max_rows` in the caller's transaction (commit it to make them count)."""
    sealed, head, delay = (await db.execute(_SEAL, {"n": max_rows})).one()
    result = SealResult(int(sealed or 0), None if head is None else int(head), delay)
    if result.sealed:
        LOG_SEALED.inc(result.sealed)
        if delay is not None:
            LOG_SEAL_DELAY.observe(max(float(delay), 0.0))
    if result.head_seq is not None:
        LOG_HEAD_SEQ.set(result.head_seq)
    return result


async def backlog(db: AsyncSession | AsyncConnection) -> Backlog:
    """Unsealed rows and the oldest one's age (an index-only look at the unsealed rows)."""
    n, age = (await db.execute(_BACKLOG)).one()
    return Backlog(int(n), None if age is None else max(float(age), 0.0))


async def refresh_seal_gauges(db: AsyncSession | AsyncConnection) -> Backlog:
    """Set the unsealed-rows gauges from the database (for /metrics in any process)."""
    b = await backlog(db)
    LOG_UNSEALED.set(b.unsealed)
    LOG_OLDEST_UNSEALED.set(b.oldest_age or 0.0)
    return b


async def seal_forever(
    factory: async_sessionmaker[AsyncSession],
    every: float = 0.2,
    *,
    max_rows: int = BATCH,
    stop: asyncio.Event | None = None,
) -> None:
    """Seal until cancelled, or until `stop` is set, then seal once more (what was written
    up to the shutdown is sealed on the way out). Errors are logged and retried: a database
    that is away delays sealing, it does not end the loop."""
    failures = 0
    gauges_due = 0.0
    while stop is None or not stop.is_set():
        full = False
        try:
            async with factory() as s, s.begin():
                r = await seal_once(s, max_rows)
            full = r.sealed >= max_rows
            # The backlog gauges are for scrapes (every 15 s or so; the API reads them at
            # scrape time too): every 5 s here, not every pass.
            if (now := time.monotonic()) >= gauges_due:
                gauges_due = now + GAUGES_EVERY
                async with factory() as s:
                    await refresh_seal_gauges(s)
            failures = 0
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the loop must outlive a database restart
            failures += 1
            if failures in (1, 10) or failures % 100 == 0:
                log.warning("sealing the action log failed (%s); retrying", type(exc).__name__)
        if full:
            continue
        delay = every if failures == 0 else min(every * 2 ** min(failures, 5), 5.0)
        if stop is None:
            await asyncio.sleep(delay)
        else:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=delay)
    with contextlib.suppress(Exception):
        for _ in range(100):  # a bounded last pass
            async with factory() as s, s.begin():
                if (await seal_once(s, max_rows)).sealed < max_rows:
                    break
