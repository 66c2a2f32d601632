"""Walk the whole hash chain, streamed in batches through a server-side cursor.

Each batch is checked by a `chain.ChainVerifier` resumed at the batch's first seq and the
stored hash of the row before it, so batches are independent: the CLI checks a long chain in
a pool of processes while it reads, and the first problem in seq order wins.
Rows are read as tuples with `at` already in the hashed ISO form and `details` as JSON text,
so the reader does no per-row work beyond the driver's.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_all_start_methods, get_context
from typing import Any

from sqlalchemy import Connection, Text, cast, func, select
from sqlalchemy.ext.asyncio import AsyncConnection

from soar.audit.chain import GENESIS, HASHED_FIELDS, ChainProblem, ChainVerifier
from soar.models import ActionLogEntry

BATCH = 10_000

Progress = Callable[[int], None]
Batch = list[tuple[Any, ...]]

_NAMES = (*HASHED_FIELDS, "hash")
_DETAILS = _NAMES.index("details")
_T = ActionLogEntry.__table__.c
# The chain hashes `at` as UTC ISO 8601 with microseconds (chain._iso); PostgreSQL renders
# exactly that, which saves parsing and re-formatting a datetime per row.
_AT_ISO = func.to_char(func.timezone("UTC", _T.at), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
_COLUMNS = [
    _AT_ISO if n == "at" else cast(_T.details, Text) if n == "details" else _T[n] for n in _NAMES
]
_STMT = select(*_COLUMNS).order_by(_T.seq)


@dataclass(frozen=True)
class VerifyResult:
    """The verdict, with the newest good link: publishing `head_seq`/`head_hash` elsewhere lets
    a later check prove the tail was not cut off either."""

    ok: bool
    rows: int
    problem: ChainProblem | None
    head_seq: int
    head_hash: str

    def as_dict(self) -> dict[str, Any]:
        if self.problem is None:
            return {
                "ok": True,
                "rows": self.rows,
                "head_seq": self.head_seq,
                "head_hash": self.head_hash,
            }
        return {
            "ok": False,
            "rows_checked": self.rows,
            "first_bad_seq": self.problem.seq,
            "reason": self.problem.reason,
            "last_good_seq": self.head_seq,
        }


@dataclass(frozen=True)
class BatchResult:
    checked: int
    problem: ChainProblem | None
    head_seq: int
    head_hash: str


def check_batch(first_seq: int, prev_hash: str, rows: Batch) -> BatchResult:
    """Check rows that should start at `first_seq` and link to `prev_hash`. Module level so
    that a process pool can run it."""
    v = ChainVerifier(_expected_seq=first_seq, _prev=prev_hash)
    names, di, loads, feed = _NAMES, _DETAILS, json.loads, v.feed
    for values in rows:
        row = dict(zip(names, values, strict=False))  # the select has exactly these
        row["details"] = loads(values[di])
        if not feed(row):
            break
    if v.checked == 0:
        return BatchResult(0, v.problem, first_seq - 1, prev_hash)
    last = rows[v.checked - 1]  # the rows before a problem are all good
    return BatchResult(v.checked, v.problem, int(last[0]), str(last[-1]))


class _Walk:
    """Hands batches out in order and folds their results, stopping at the first problem."""

    def __init__(self, progress: Progress | None) -> None:
        self.progress = progress
        self.next_seq, self.prev = 1, GENESIS
        self.checked = 0
        self.head_seq, self.head_hash = 0, GENESIS
        self.problem: ChainProblem | None = None

    def job(self, part: Sequence[Any], *, plain: bool = False) -> tuple[int, str, Batch]:
        """The next batch's arguments; `plain` tuples when they go to another process."""
        rows: Batch = [tuple(r) for r in part] if plain else list(part)
        args = (self.next_seq, self.prev, rows)
        # The next batch resumes after this one's last row as stored; if this batch is bad,
        # its own result stops the walk before the next one's counts.
        self.next_seq, self.prev = int(rows[-1][0]) + 1, str(rows[-1][-1])
        return args

    def fold(self, r: BatchResult) -> bool:
        """Take one batch's result (in order); False once the chain is known to be broken."""
        if self.problem is not None:
            return False
        self.checked += r.checked
        if r.checked:
            self.head_seq, self.head_hash = r.head_seq, r.head_hash
        self.problem = r.problem
        if self.progress is not None:
            self.progress(self.checked)
        return r.problem is None

    def result(self) -> VerifyResult:
        return VerifyResult(
            self.problem is None, self.checked, self.problem, self.head_seq, self.head_hash
        )


def _pool(workers: int) -> ProcessPoolExecutor | None:
    if workers <= 1 or "fork" not in get_all_start_methods():
        return None
    # fork: the child needs nothing but check_batch, and spawn would re-run the caller's
    # __main__. Only the sync path (the CLI, single-threaded) forks; a server does not.
    return ProcessPoolExecutor(max_workers=workers, mp_context=get_context("fork"))


def default_workers() -> int:
    return min(os.cpu_count() or 1, 4)


def verify_chain(
    conn: Connection,
    *,
    progress: Progress | None = None,
    batch: int = BATCH,
    workers: int = 1,
) -> VerifyResult:
    """Verify from a sync connection, hashing in this process or in `workers` forked ones
    (worth it from about 100k rows)."""
    pool = _pool(workers)
    walk = _Walk(progress)
    result = conn.execute(_STMT.execution_options(yield_per=batch))
    try:
        if pool is None:
            for part in result.partitions():
                if not walk.fold(check_batch(*walk.job(part))):
                    break
        else:
            inflight: deque[Future[BatchResult]] = deque()
            for part in result.partitions():
                inflight.append(pool.submit(check_batch, *walk.job(part, plain=True)))
                if len(inflight) > 2 * workers and not walk.fold(inflight.popleft().result()):
                    break
            while inflight and walk.fold(inflight.popleft().result()):
                pass
    finally:
        result.close()
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return walk.result()


async def averify_chain(
    conn: AsyncConnection, *, progress: Progress | None = None, batch: int = BATCH
) -> VerifyResult:
    """Verify from an async connection. Hashing runs in a thread, never on the event loop,
    while the next batch is read: a server stays responsive during a long walk."""
    walk = _Walk(progress)
    result = await conn.stream(_STMT.execution_options(yield_per=batch))
    pending: asyncio.Future[BatchResult] | None = None
    try:
        async for part in result.partitions():
            job = walk.job(part)
            if pending is not None and not walk.fold(await pending):
                pending = None
                break
            pending = asyncio.ensure_future(asyncio.to_thread(check_batch, *job))
        if pending is not None:
            walk.fold(await pending)
            pending = None
    finally:
        if pending is not None:
            pending.cancel()
        await result.close()
    return walk.result()


def chain_length(conn: Connection) -> int:
    """The newest seq: the row count of an intact (gapless) chain, read from the index."""
    return int(conn.execute(select(func.max(_T.seq))).scalar() or 0)


async def achain_length(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.max(_T.seq)))).scalar() or 0)
