"""Walk the whole action log and report every problem, optionally against signed checkpoints.

The log is cut into seq ranges. Each range is read with one query and checked on its own
(`check_range`): seq gapless, every link, every hash recomputed in Python from the stored
values (application-hashed rows with `chain.row_hash`, sealed rows with `chain.sealed_content`
/ `sealed_link`). The joins between ranges (the first row's seq and link) are checked here,
so ranges can be checked in any order: the CLI checks them in a pool of processes, each with
its own connection. Rows are read as tuples with `at` already in the hashed ISO form and
`details` as jsonb text, so a sealed row costs two SHA-256 and a join, no JSON work.

Problems are all kept (up to `chain.MAX_KEPT`, the rest counted); `VerifyResult.problem` is
the first in seq order and `rows` the rows intact before it, as before. Unsealed rows are not
part of the chain yet: they are counted, with the oldest one's age. With checkpoints
(soar.audit.checkpoint) the walk also proves the log still holds each signed row with the
signed hash: a shorter log is named as truncated, another hash as rewritten history.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing import get_all_start_methods, get_context
from typing import Any

from sqlalchemy import Connection, Engine, Text, cast, func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection

from soar.audit.chain import (
    GENESIS,
    HASHED_FIELDS,
    MARKER,
    MAX_KEPT,
    SEAL_TAG,
    ChainProblem,
    row_hash,
)
from soar.models import ActionLogEntry

BATCH = 10_000  # rows per range in one process
PARALLEL_RANGE = 50_000  # rows per range handed to another process
ALL_LEGACY = 2**63 - 1

Progress = Callable[[int], None]
Batch = Sequence[Sequence[Any]]

_NAMES = (*HASHED_FIELDS, "hash")
_SEQ, _DETAILS, _PREV, _HASH = 0, _NAMES.index("details"), _NAMES.index("prev_hash"), 14
_T = ActionLogEntry.__table__.c
# `at` as chain._iso renders it, so no datetime is parsed or formatted per row.
_AT_ISO = func.to_char(func.timezone("UTC", _T.at), 'YYYY-MM-DD"T"HH24:MI:SS.US"+00:00"')
_COLUMNS = [
    _AT_ISO if n == "at" else cast(_T.details, Text) if n == "details" else _T[n] for n in _NAMES
]


def _range_stmt(lo: int | None, hi: int) -> Any:
    where = [_T.seq <= hi] if lo is None else [_T.seq >= lo, _T.seq <= hi]
    return select(*_COLUMNS).where(*where).order_by(_T.seq)


_HEAD = select(func.max(_T.seq))
_MARKER_ROW = select(_T.seq, cast(_T.details, Text)).where(
    _T.event_key == MARKER, _T.seq.is_not(None)
)
_BACKLOG = text(
    "SELECT count(*), extract(epoch FROM clock_timestamp() - min(at))::float8 "
    "FROM action_log WHERE seq IS NULL"
)


@dataclass(frozen=True)
class Checkpoint:
    """A signed (seq, hash) the log must still hold; `name` says where it came from."""

    seq: int
    hash: str
    name: str
    at: str = ""


@dataclass(frozen=True)
class VerifyResult:
    """The verdict. `rows`, `head_seq`, `head_hash`: the rows intact before the first problem
    and the newest of them (all rows and the newest when intact); `problems`: every problem
    found, in seq order (at most MAX_KEPT; `problem_count` counts all)."""

    ok: bool
    rows: int
    problem: ChainProblem | None
    head_seq: int
    head_hash: str
    problems: tuple[ChainProblem, ...] = ()
    problem_count: int = 0
    rows_read: int = 0
    legacy_until: int | None = None
    checkpoints: int = 0
    unsealed: int = field(default=0, compare=False)
    oldest_unsealed: float | None = field(default=None, compare=False)

    def as_dict(self, max_problems: int = 100) -> dict[str, Any]:
        backlog = {
            "unsealed_rows": self.unsealed,
            "oldest_unsealed_seconds": (
                None if self.oldest_unsealed is None else round(self.oldest_unsealed, 3)
            ),
        }
        if self.problem is None:
            return {
                "ok": True,
                "rows": self.rows,
                "head_seq": self.head_seq,
                "head_hash": self.head_hash,
                "checkpoints": self.checkpoints,
                **backlog,
            }
        return {
            "ok": False,
            "rows_checked": self.rows,
            "first_bad_seq": self.problem.seq,
            "reason": self.problem.reason,
            "last_good_seq": self.head_seq,
            "problem_count": self.problem_count,
            "problems": [{"seq": p.seq, "reason": p.reason} for p in self.problems[:max_problems]],
            "rows_read": self.rows_read,
            "checkpoints": self.checkpoints,
            **backlog,
        }


@dataclass
class RangeResult:
    """One range's findings. `first`/`last`: (seq, prev_hash) of its first row and
    (seq, hash) of its last, for the joins; `found`: the hashes of wanted seqs."""

    rows: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    problem_count: int = 0
    first: tuple[int, str | None] | None = None
    last: tuple[int, str | None] | None = None
    found: dict[int, str | None] = field(default_factory=dict)

    def flag(self, seq: int, reason: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_KEPT:
            self.problems.append(ChainProblem(seq, reason))


def _gap(expected: int, seq: int) -> str:
    return f"row(s) {expected if seq == expected + 1 else f'{expected}..{seq - 1}'} missing"


def check_range(
    rows: Batch,
    *,
    expected: int | None,
    prev: str | None,
    legacy_until: int,
    want: frozenset[int] = frozenset(),
) -> RangeResult:
    """Check rows in seq order. `expected`/`prev`: the first row's seq and link, or None when
    another range's end decides them (the caller checks that join). Module level so that a
    process pool can run it."""
    out = RangeResult()
    sha, tag, nul = hashlib.sha256, SEAL_TAG, b"\x00"
    flag = out.flag
    for r in rows:
        seq = r[0]
        ph, h = r[_PREV], r[_HASH]
        if out.first is None:
            out.first = (seq, ph)
        if expected is not None and seq != expected:
            if seq > expected:
                flag(expected, _gap(expected, seq))
            else:
                flag(seq, f"row {seq} out of order")
        elif prev is not None and ph != prev:
            flag(seq, f"row {seq}: link broken (prev_hash does not match row {seq - 1})")
        if h is None or ph is None:
            ok = False
        elif seq > legacy_until:
            parts = [b"n" if v is None else b"v" + v.encode() for v in r[1:_PREV]]
            content = nul.join([tag, b"v" + str(seq).encode(), *parts])
            ok = sha((ph + sha(content).hexdigest()).encode()).hexdigest() == h
        else:
            row = dict(zip(_NAMES, r, strict=True))
            row["details"] = json.loads(r[_DETAILS])
            ok = row_hash(row) == h
        if not ok:
            flag(seq, f"row {seq}: content changed (hash mismatch)")
        if seq in want:
            out.found[seq] = h
        prev, expected = h, seq + 1
        out.rows += 1
    if out.first is not None:
        out.last = (expected - 1 if expected is not None else out.first[0], prev)
    return out


# --- the walk ------------------------------------------------------------------------------


@dataclass
class _Plan:
    head: int
    legacy_until: int
    marker_problem: ChainProblem | None
    ranges: list[tuple[int | None, int]]


def _plan(head: int, marker: Any, size: int) -> _Plan:
    legacy_until, problem = ALL_LEGACY, None
    if marker is not None:
        mseq, mdetails = int(marker[0]), marker[1]
        legacy_until = mseq - 1
        try:
            named = json.loads(mdetails).get("legacy_until_seq")
        except (ValueError, AttributeError):
            named = None
        if named != legacy_until:
            problem = ChainProblem(
                mseq, f"row {mseq}: the sealing-start row names row {named}, not {mseq - 1}"
            )
    size = max(size, 1)
    ranges: list[tuple[int | None, int]] = []
    lo = 1
    while lo <= head or not ranges:
        hi = max(lo + size - 1, 1)
        ranges.append((None if lo == 1 else lo, hi))
        lo = hi + 1
    return _Plan(head, legacy_until, problem, ranges)


class _Fold:
    """Joins range results in seq order and folds them into one verdict."""

    def __init__(self, plan: _Plan, checkpoints: Sequence[Checkpoint]) -> None:
        self.plan = plan
        self.checkpoints = sorted(checkpoints, key=lambda c: (c.seq, c.name))
        self.want = frozenset(c.seq for c in self.checkpoints)
        self.found: dict[int, str | None] = {}
        self.problems: list[ChainProblem] = []
        self.count = 0
        self.rows = 0
        self.last: tuple[int, str | None] = (0, GENESIS)
        if plan.marker_problem is not None:
            self._flag(plan.marker_problem)

    def _flag(self, p: ChainProblem) -> None:
        self.count += 1
        if len(self.problems) < MAX_KEPT:
            self.problems.append(p)

    def add(self, lo: int | None, hi: int, r: RangeResult) -> None:
        if r.first is not None and lo is not None:  # the join to the rows before
            seq, ph = r.first
            last_seq, last_hash = self.last
            if seq > last_seq + 1:
                self._flag(ChainProblem(last_seq + 1, _gap(last_seq + 1, seq)))
            elif ph != last_hash:
                self._flag(
                    ChainProblem(
                        seq, f"row {seq}: link broken (prev_hash does not match row {seq - 1})"
                    )
                )
        self.count += r.problem_count - len(r.problems)
        for p in r.problems:
            self._flag(p)
        self.rows += r.rows
        self.found.update(r.found)
        if r.last is not None:
            self.last = r.last

    def finish(self, first_good_hash: Callable[[int], str]) -> VerifyResult:
        head_seq = self.last[0]
        self._check_points(head_seq)
        problems = sorted(self.problems, key=lambda p: p.seq)
        legacy = None if self.plan.legacy_until == ALL_LEGACY else self.plan.legacy_until
        if not problems:
            return VerifyResult(
                True,
                self.rows,
                None,
                head_seq,
                str(self.last[1]),
                (),
                0,
                self.rows,
                legacy,
                len(self.checkpoints),
            )
        first = problems[0]
        good = max(first.seq - 1, 0)
        return VerifyResult(
            False,
            good,
            first,
            good,
            first_good_hash(good),
            tuple(problems),
            self.count,
            self.rows,
            legacy,
            len(self.checkpoints),
        )

    def _check_points(self, head_seq: int) -> None:
        matched = 0
        for c in self.checkpoints:
            if c.seq <= 0:
                continue
            if c.seq > head_seq:
                self._flag(
                    ChainProblem(
                        head_seq + 1,
                        f"log truncated: checkpoint {c.name} signed row {c.seq}, the log ends at "
                        f"row {head_seq} (rows {head_seq + 1}..{c.seq} gone)",
                    )
                )
            elif c.seq not in self.found:
                self._flag(
                    ChainProblem(c.seq, f"row {c.seq}, signed in checkpoint {c.name}, is gone")
                )
            elif self.found[c.seq] != c.hash:
                since = f"after row {matched}" if matched else "at or before it"
                self._flag(
                    ChainProblem(
                        c.seq,
                        f"row {c.seq}: history rewritten (hash differs from checkpoint {c.name}; "
                        f"changed {since})",
                    )
                )
            else:
                matched = max(matched, c.seq)


def _hash_at(conn: Connection, seq: int) -> str:
    if seq <= 0:
        return GENESIS
    h = conn.execute(select(_T.hash).where(_T.seq == seq)).scalar()
    return str(h) if h is not None else GENESIS


def _backlog(conn: Connection) -> tuple[int, float | None]:
    n, age = conn.execute(_BACKLOG).one()
    return int(n), None if age is None else max(float(age), 0.0)


# Forked children: one connection each, reused for every range they check.
_CHILD: dict[str, Engine] = {}


def _child_init(url: str) -> None:
    from soar.db import make_sync_engine

    _CHILD["engine"] = make_sync_engine(url)


def _child_range(lo: int | None, hi: int, legacy_until: int, want: frozenset[int]) -> RangeResult:
    with _CHILD["engine"].connect() as conn:
        rows = conn.execute(_range_stmt(lo, hi)).all()
    return check_range(
        rows,
        expected=1 if lo is None else None,
        prev=GENESIS if lo is None else None,
        legacy_until=legacy_until,
        want=want,
    )


def _pool(workers: int, url: str) -> ProcessPoolExecutor | None:
    if workers <= 1 or "fork" not in get_all_start_methods():
        return None
    # fork: the child needs nothing but this module, and spawn would re-run the caller's
    # __main__. Only the sync path (the CLI, single-threaded) forks; a server does not.
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=get_context("fork"),
        initializer=_child_init,
        initargs=(url,),
    )


def default_workers() -> int:
    return min(os.cpu_count() or 1, 4)


def verify_chain(
    conn: Connection,
    *,
    progress: Progress | None = None,
    batch: int = BATCH,
    workers: int = 1,
    checkpoints: Iterable[Checkpoint] = (),
) -> VerifyResult:
    """Verify from a sync connection, in this process or in `workers` forked ones (each
    with its own connection; worth it from about 100k rows)."""
    head = int(conn.execute(_HEAD).scalar() or 0)
    marker = conn.execute(_MARKER_ROW).first()
    size = batch if workers <= 1 else max(batch, PARALLEL_RANGE)
    plan = _plan(head, marker, size)
    fold = _Fold(plan, list(checkpoints))
    url = conn.engine.url.render_as_string(hide_password=False)
    pool = _pool(workers, url)
    try:
        if pool is None:
            # Hash one range in a thread while the next is read: the server renders rows
            # while Python hashes.
            with ThreadPoolExecutor(max_workers=1) as hasher:
                pending: tuple[int | None, int, Future[RangeResult]] | None = None
                for lo, hi in plan.ranges:
                    rows = conn.execute(_range_stmt(lo, hi)).all()
                    if pending is not None:
                        fold.add(pending[0], pending[1], pending[2].result())
                        if progress is not None:
                            progress(fold.rows)
                    pending = (
                        lo,
                        hi,
                        hasher.submit(
                            check_range,
                            rows,
                            expected=1 if lo is None else None,
                            prev=GENESIS if lo is None else None,
                            legacy_until=plan.legacy_until,
                            want=fold.want,
                        ),
                    )
                if pending is not None:
                    fold.add(pending[0], pending[1], pending[2].result())
                    if progress is not None:
                        progress(fold.rows)
        else:
            futures = [
                pool.submit(_child_range, lo, hi, plan.legacy_until, fold.want)
                for lo, hi in plan.ranges
            ]
            for (lo, hi), fut in zip(plan.ranges, futures, strict=True):
                fold.add(lo, hi, fut.result())
                if progress is not None:
                    progress(fold.rows)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    result = fold.finish(lambda s: _hash_at(conn, s))
    unsealed, oldest = _backlog(conn)
    return _with_backlog(result, unsealed, oldest)


def _with_backlog(r: VerifyResult, unsealed: int, oldest: float | None) -> VerifyResult:
    from dataclasses import replace

    return replace(r, unsealed=unsealed, oldest_unsealed=oldest)


async def averify_chain(
    conn: AsyncConnection,
    *,
    progress: Progress | None = None,
    batch: int = BATCH,
    checkpoints: Iterable[Checkpoint] = (),
) -> VerifyResult:
    """Verify from an async connection. Hashing runs in a thread, never on the event loop,
    while the next range is read: a server stays responsive during a long walk."""
    head = int((await conn.execute(_HEAD)).scalar() or 0)
    marker = (await conn.execute(_MARKER_ROW)).first()
    plan = _plan(head, marker, batch)
    fold = _Fold(plan, list(checkpoints))

    def check(lo: int | None, rows: Batch) -> RangeResult:
        return check_range(
            rows,
            expected=1 if lo is None else None,
            prev=GENESIS if lo is None else None,
            legacy_until=plan.legacy_until,
            want=fold.want,
        )

    pending: tuple[int | None, int, asyncio.Future[RangeResult]] | None = None
    try:
        for lo, hi in plan.ranges:
            rows = (await conn.execute(_range_stmt(lo, hi))).all()
            if pending is not None:
                fold.add(pending[0], pending[1], await pending[2])
                if progress is not None:
                    progress(fold.rows)
            pending = (lo, hi, asyncio.ensure_future(asyncio.to_thread(check, lo, rows)))
        if pending is not None:
            fold.add(pending[0], pending[1], await pending[2])
            if progress is not None:
                progress(fold.rows)
            pending = None
    finally:
        if pending is not None:
            pending[2].cancel()
    good: dict[int, str] = {}
    first = min((p.seq for p in fold.problems), default=None)
    if first is not None and first > 1:
        h = (await conn.execute(select(_T.hash).where(_T.seq == first - 1))).scalar()
        good[first - 1] = str(h) if h is not None else GENESIS
    result = fold.finish(lambda s: good.get(s, GENESIS))
    n, age = (await conn.execute(_BACKLOG)).one()
    return _with_backlog(result, int(n), None if age is None else max(float(age), 0.0))


def chain_length(conn: Connection) -> int:
    """The newest seq: the row count of an intact (gapless) chain, read from the index."""
    return int(conn.execute(_HEAD).scalar() or 0)


async def achain_length(conn: AsyncConnection) -> int:
    return int((await conn.execute(_HEAD)).scalar() or 0)
