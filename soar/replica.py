"""The API's in-memory replica of the active enforcement blocks.

Each API process keeps one. Its feed is the `enforcement_changes` table (migration 0005),
whose `seq` is assigned at commit under a transaction-scoped advisory lock, so seq order is
commit order and "every change with seq > N" is a complete, gap-free resume point for
replicas and stream clients alike, across API processes and restarts.

- Start: one REPEATABLE READ transaction reads the active blocks and the head `seq`
  together (a consistent cut).
- Current: a dedicated psycopg connection LISTENs on `enforcement`. On every notification,
  and every `enforcement_poll_seconds` without one, it reads the changes with `seq > last`;
  so a lost notification only delays a change to the next probe, and a successful probe is
  what keeps the replica "fresh".
- Reconnect: reads `seq > last` if the table still holds everything after `last`; if the
  retention pruned some, a full reload, and every stream subscriber is dropped (it comes
  back with Last-Event-ID and gets a fresh snapshot).
- Reconciliation every `enforcement_reconcile_seconds`: a fresh snapshot is compared with
  memory and replaces it on any difference (logged); expired entries are purged and the
  change table is pruned to its retention (never its newest row).
- Expiry is evaluated at lookup (BlockTable).
- A replica whose last successful probe is older than `enforcement_max_staleness_seconds`
  is `fresh == False`: /readyz says so and the enforcement check asks the database.

Stream subscribers get each change as it is applied through a bounded queue; a subscriber
whose queue is full is dropped (its queue emptied and closed) rather than allowed to grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import psycopg
from sqlalchemy.engine import make_url

from soar.db import sqlalchemy_url
from soar.gateway.table import Block, BlockTable

log = logging.getLogger(__name__)

CHANNEL = "enforcement"
_PAGE = 5000
_BLOCK_COLUMNS = "action_id, kind, tenant, target, until, incident_id, technique"
CHANGES_SQL = (
    f"SELECT seq, op, {_BLOCK_COLUMNS} FROM enforcement_changes "
    "WHERE seq > %s ORDER BY seq LIMIT %s"
)
ACTIVE_SQL = (
    f"SELECT {_BLOCK_COLUMNS} FROM enforcement_blocks "
    "WHERE lifted_at IS NULL AND (until IS NULL OR until > now())"
)
HEAD_SQL = "SELECT coalesce(max(seq), 0), min(seq) FROM enforcement_changes"


@dataclass(frozen=True, slots=True)
class Change:
    seq: int
    op: str  # block | lift
    block: Block


def _block(row: Sequence[Any]) -> Block:
    return Block(row[0], row[1], row[2], row[3], row[4], row[5], row[6])


def change_from_row(row: Sequence[Any]) -> Change:
    return Change(int(row[0]), str(row[1]), _block(row[2:]))


def libpq_url(url: str) -> str:
    return make_url(sqlalchemy_url(url)).set(drivername="postgresql").render_as_string(False)


@dataclass(eq=False)
class Subscriber:
    queue: asyncio.Queue[Change | None]
    dropped: bool = False


@dataclass
class Snapshot:
    blocks: list[Block]
    head: int


async def read_snapshot(conn: psycopg.AsyncConnection[Any]) -> Snapshot:
    """Active blocks and the head seq in one REPEATABLE READ transaction."""
    await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    try:
        rows = await (await conn.execute(ACTIVE_SQL)).fetchall()
        head_row = await (await conn.execute(HEAD_SQL)).fetchone()
    finally:
        await conn.execute("COMMIT")
    head = int(head_row[0]) if head_row else 0
    return Snapshot([_block(r) for r in rows], head)


async def resumable(conn: psycopg.AsyncConnection[Any], after: int) -> bool:
    """True when every change with seq > after is still in the table (nothing pruned past
    it, and `after` is not ahead of the head, e.g. a database restored from an old backup)."""
    row = await (await conn.execute(HEAD_SQL)).fetchone()
    head, low = (int(row[0]), row[1]) if row else (0, None)
    if after > head:
        return False
    return low is None or after >= int(low) - 1


@dataclass
class EnforcementReplica:
    conninfo: str
    max_staleness: float = 5.0
    poll_seconds: float = 1.0
    reconcile_seconds: float = 60.0
    retention_seconds: int = 7 * 24 * 3600
    queue_size: int = 1000
    max_subscribers: int = 1000

    table: BlockTable = field(default_factory=BlockTable)
    last_seq: int = 0
    loaded: bool = False
    connected: bool = False
    error: str | None = None
    fresh_at: float = 0.0  # monotonic time of the last successful read of the feed
    _subs: set[Subscriber] = field(default_factory=set)
    _task: asyncio.Task[None] | None = None
    _applied: asyncio.Event = field(default_factory=asyncio.Event)

    @classmethod
    def from_settings(cls, url: str, settings: Any) -> EnforcementReplica:
        return cls(
            libpq_url(url),
            max_staleness=settings.enforcement_max_staleness_seconds,
            poll_seconds=settings.enforcement_poll_seconds,
            reconcile_seconds=settings.enforcement_reconcile_seconds,
            retention_seconds=settings.enforcement_change_retention_seconds,
            queue_size=settings.enforcement_stream_queue,
            max_subscribers=settings.enforcement_stream_max_clients,
        )

    # -- reading -------------------------------------------------------------------------

    @property
    def staleness(self) -> float:
        return time.monotonic() - self.fresh_at if self.loaded else float("inf")

    @property
    def fresh(self) -> bool:
        return self.loaded and time.monotonic() - self.fresh_at <= self.max_staleness

    def lookup(self, kind: str, target: str, tenant: str) -> Block | None:
        return self.table.lookup(kind, target, tenant)

    def effects(self, kind: str, target: str, tenant: str) -> dict[str, Block]:
        return self.table.effects(kind, target, tenant)

    async def wait_loaded(self, within: float) -> bool:
        return await self.wait_seq(0, within)

    async def wait_seq(self, seq: int, within: float) -> bool:
        """Waits until the replica is loaded and has applied `seq`; False after `within`."""
        deadline = time.monotonic() + within
        while not self.loaded or self.last_seq < seq:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self._applied.clear()
            try:
                await asyncio.wait_for(self._applied.wait(), timeout=left)
            except TimeoutError:
                return self.loaded and self.last_seq >= seq
        return True

    # -- subscribers (the SSE stream) ----------------------------------------------------

    def subscribe(self) -> tuple[Subscriber, Snapshot] | None:
        """A new subscriber and, at the same instant, the blocks and the seq it follows on
        from: every change after `head` reaches its queue. None when at capacity."""
        if len(self._subs) >= self.max_subscribers:
            return None
        sub = Subscriber(asyncio.Queue(self.queue_size))
        self._subs.add(sub)
        return sub, Snapshot(self.table.blocks(), self.last_seq)

    def unsubscribe(self, sub: Subscriber) -> None:
        self._subs.discard(sub)

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def _drop(self, sub: Subscriber) -> None:
        sub.dropped = True
        self._subs.discard(sub)
        while not sub.queue.empty():
            sub.queue.get_nowait()
        sub.queue.put_nowait(None)

    def _publish(self, change: Change) -> None:
        for sub in list(self._subs):
            try:
                sub.queue.put_nowait(change)
            except asyncio.QueueFull:
                log.warning(
                    "enforcement stream: a client fell %d events behind; dropped", self.queue_size
                )
                self._drop(sub)

    # -- the feed ------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="enforcement-replica")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        for sub in list(self._subs):
            self._drop(sub)
        self.connected = False

    async def _run(self) -> None:
        backoff = 0.1
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.conninfo, autocommit=True, connect_timeout=5
                )
                async with conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    await self._resync(conn)
                    self.connected, self.error, backoff = True, None, 0.1
                    await self._follow(conn)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the database went away: reconnect, resync
                self.connected = False
                self.error = f"{type(exc).__name__}"
                log.warning("enforcement replica: feed lost (%s); reconnecting", self.error)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)

    async def _resync(self, conn: psycopg.AsyncConnection[Any]) -> None:
        if self.loaded and await resumable(conn, self.last_seq):
            await self._apply_changes(conn)
        else:
            await self._reload(conn, drop_subscribers=self.loaded)
        self.fresh_at = time.monotonic()

    async def _follow(self, conn: psycopg.AsyncConnection[Any]) -> None:
        next_reconcile = time.monotonic() + self.reconcile_seconds
        while True:
            async for _ in conn.notifies(timeout=self.poll_seconds, stop_after=1):
                pass
            # A notification, or a quiet interval: either way read what is new. The read
            # doubles as the probe that keeps the replica fresh.
            await self._apply_changes(conn)
            self.fresh_at = time.monotonic()
            if time.monotonic() >= next_reconcile:
                await self._reconcile(conn)
                next_reconcile = time.monotonic() + self.reconcile_seconds

    async def _apply_changes(self, conn: psycopg.AsyncConnection[Any]) -> int:
        n = 0
        while True:
            rows = await (await conn.execute(CHANGES_SQL, (self.last_seq, _PAGE))).fetchall()
            for row in rows:
                change = change_from_row(row)
                if change.op == "block":
                    self.table.add(change.block)
                else:
                    self.table.remove(change.block.action_id)
                self.last_seq = change.seq
                self._publish(change)
            n += len(rows)
            if rows:
                self._applied.set()
            if len(rows) < _PAGE:
                return n

    async def _reload(self, conn: psycopg.AsyncConnection[Any], *, drop_subscribers: bool) -> None:
        snap = await read_snapshot(conn)
        table = BlockTable()
        for b in snap.blocks:
            table.add(b)
        self.table, self.last_seq, self.loaded = table, snap.head, True
        self._applied.set()
        if drop_subscribers:
            for sub in list(self._subs):
                self._drop(sub)

    async def _reconcile(self, conn: psycopg.AsyncConnection[Any]) -> None:
        self.table.purge_expired()
        await conn.execute(
            "DELETE FROM enforcement_changes WHERE at < now() - make_interval(secs => %s) "
            "AND seq < (SELECT max(seq) FROM enforcement_changes)",
            (float(self.retention_seconds),),
        )
        snap = await read_snapshot(conn)
        if snap.head != self.last_seq:
            return  # changes in flight; the next round compares a quiet cut
        now = time.time()
        mine = self.table.action_ids(now)
        theirs = {b.action_id for b in snap.blocks if b.until_ts > now}
        if mine != theirs:
            log.warning(
                "enforcement replica: drift repaired (%d missing, %d extra)",
                len(theirs - mine),
                len(mine - theirs),
            )
            table = BlockTable()
            for b in snap.blocks:
                table.add(b)
            self.table = table
