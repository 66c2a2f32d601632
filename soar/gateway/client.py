"""EnforcementClient: a local replica of atlas-soar's blocks, fed by the enforcement stream.

    client = EnforcementClient("http://127.0.0.1:8000", token, fail_mode="open")
    await client.start()                      # or: with client.running_in_thread(): ...
    client.is_blocked("session", "s-9", "acme")   # a dict lookup: no I/O, microseconds

The client holds one `GET /v1/enforcement/stream` connection. It applies `block` / `lift`
events to an in-process BlockTable, remembers the last event id and, when the connection
breaks, reconnects with exponential backoff (with jitter) sending `Last-Event-ID`, so it
resumes without a gap and without applying an event twice (events at or below the last id
are ignored). A `snapshot` event is assembled aside and swapped in whole at `synced`, so the
table is never seen half-loaded.

Freshness: the feed counts as current while something was heard within `max_staleness`
seconds (events, or heartbeats of a server whose own feed is current). Beyond that,
`fail_mode="open"` keeps answering from the last known blocks (unknown subjects pass);
`fail_mode="closed"` answers blocked for everyone until the feed is back. `check()` says
which (`reason="stale"`).

Effects milder than a block (e.g. `throttle`, which asks the gateway to slow the subject
down) arrive on the same stream: `check()` lists every effect in force on the target in
`Decision.effects`, and `has_effect("throttle", "session", "s-9")` asks for one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

import httpx

from soar.bounds import canonical_subject
from soar.gateway.table import KINDS, Block, BlockTable

log = logging.getLogger("soar.gateway")

FailMode = Literal["open", "closed"]
_MAX_LINE = 64 * 1024
_ALIASES = {"sessions": "session", "api-keys": "api_key", "api_keys": "api_key", "users": "user"}


@dataclass(frozen=True, slots=True)
class Decision:
    """`until`, `incident_id` and `technique` are those of the strongest effect in force (a
    block, else the first of `effects`); `reason` is "blocked", "stale", "clear", or the
    name of that milder effect."""

    blocked: bool
    until: datetime | None = None
    incident_id: str | None = None
    technique: str | None = None
    reason: str = "clear"
    kind: str | None = None
    target: str | None = None
    effects: tuple[str, ...] = ()


_CLEAR = Decision(False)


@dataclass
class ClientStats:
    connects: int = 0
    snapshots: int = 0
    resumes: int = 0
    events: int = 0  # block/lift events applied
    ignored: int = 0  # events at or below the last id (never applied twice)
    errors: int = 0
    # action id -> block events applied; only with track_actions=True (tests, audits)
    applied: dict[str, int] | None = None


class SSEParser:
    """Incremental text/event-stream parsing (the WHATWG rules we need)."""

    def __init__(self) -> None:
        self.event = ""
        self.data: list[str] = []
        self.id: str | None = None

    def feed(self, line: str) -> tuple[str, str, str | None] | None:
        """One line without its newline; returns (event, data, id) at a blank line."""
        if line == "":
            if not self.data and not self.event:
                return None
            out = (self.event or "message", "\n".join(self.data), self.id)
            self.event, self.data, self.id = "", [], None
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self.event = value
        elif name == "data":
            self.data.append(value)
        elif name == "id" and "\0" not in value:
            self.id = value
        return None


class EnforcementClient:
    def __init__(
        self,
        base_url: str,
        token: str,
        *,
        fail_mode: FailMode = "open",
        max_staleness: float = 15.0,
        backoff_initial: float = 0.1,
        backoff_max: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
        on_change: Callable[[str, Block], None] | None = None,
        track_actions: bool = False,
    ) -> None:
        if fail_mode not in ("open", "closed"):
            raise ValueError("fail_mode: must be 'open' or 'closed'")
        self.base_url = base_url.rstrip("/")
        self._token = token
        self.fail_mode: FailMode = fail_mode
        self.max_staleness = max_staleness
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self._transport = transport
        self.on_change = on_change
        self.table = BlockTable()
        self.last_event_id: int | None = None
        self.heard_at = 0.0  # monotonic; 0: never synced
        self.synced = asyncio.Event()
        self.stats = ClientStats(applied={} if track_actions else None)
        self._task: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the hot path --------------------------------------------------------------------

    @property
    def fresh(self) -> bool:
        return self.heard_at > 0 and time.monotonic() - self.heard_at <= self.max_staleness

    @property
    def staleness(self) -> float:
        return time.monotonic() - self.heard_at if self.heard_at else float("inf")

    def is_blocked(self, kind: str, target: str, tenant: str = "default") -> bool:
        """Whether ``target`` of ``tenant`` is blocked (ids as read from a request: see
        :meth:`check`)."""
        target, tenant = canonical_subject(target, tenant)
        if self.table.lookup(_ALIASES.get(kind, kind), target, tenant) is not None:
            return True
        return self.fail_mode == "closed" and not self.fresh

    def has_effect(self, effect: str, kind: str, target: str, tenant: str = "default") -> bool:
        target, tenant = canonical_subject(target, tenant)
        return effect in self.table.effects(_ALIASES.get(kind, kind), target, tenant)

    def check(self, kind: str, target: str, tenant: str = "default") -> Decision:
        """Whether ``target`` (a session, user or API key as read from a request) of ``tenant``
        is blocked or under another effect. The values are taken in the form the intake stores
        (:func:`soar.bounds.canonical_id`), as the reporter sends them."""
        k = _ALIASES.get(kind, kind)
        target, tenant = canonical_subject(target, tenant)
        found = self.table.effects(k, target, tenant)
        if "block" not in found and self.fail_mode == "closed" and not self.fresh:
            return Decision(True, None, None, None, "stale", k, target, tuple(found))
        if not found:
            return _CLEAR
        effect, b = next(iter(found.items()))  # block first
        reason = "blocked" if effect == "block" else effect
        return Decision(
            effect == "block", b.until, b.incident_id, b.technique, reason, k, target, tuple(found)
        )

    def check_subject(
        self,
        tenant: str,
        *,
        session: str | None = None,
        user: str | None = None,
        api_key: str | None = None,
    ) -> Decision:
        """The first of session, api key, user that is blocked (the one blocked longest
        among them when several are); else the one under a milder effect the longest; else
        clear."""
        found: list[Decision] = []
        for kind, target in (("session", session), ("api_key", api_key), ("user", user)):
            if target:
                d = self.check(kind, target, tenant)
                if d.blocked or d.effects:
                    found.append(d)
        if not found:
            return _CLEAR
        return max(
            found,
            key=lambda d: (d.blocked, d.until.timestamp() if d.until else float("inf")),
        )

    # -- running -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="soar-enforcement-client")

    async def wait_synced(self, within: float = 10.0) -> bool:
        try:
            await asyncio.wait_for(self.synced.wait(), timeout=within)
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> EnforcementClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.contextmanager
    def running_in_thread(self, within: float = 10.0) -> Iterator[EnforcementClient]:
        """For synchronous apps: the feed runs in a daemon thread with its own event loop;
        `is_blocked` stays a plain call from any thread."""
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            loop.run_until_complete(self.start())
            ready.set()
            with contextlib.suppress(asyncio.CancelledError):
                loop.run_until_complete(self._task)  # type: ignore[arg-type]
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True, name="soar-enforcement")
        self._thread.start()
        ready.wait(within)
        deadline = time.monotonic() + within
        while not self.synced.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        try:
            yield self
        finally:
            loop = self._loop
            if loop is not None and self._task is not None:
                loop.call_soon_threadsafe(self._task.cancel)
            self._thread.join(timeout=5)

    async def _run(self) -> None:
        backoff = self.backoff_initial
        timeout = httpx.Timeout(10.0, read=self.max_staleness)
        async with httpx.AsyncClient(timeout=timeout, transport=self._transport) as http:
            while True:
                try:
                    if await self._session(http):
                        backoff = self.backoff_initial
                except asyncio.CancelledError:
                    raise
                except (httpx.HTTPError, ValueError, OSError) as exc:
                    self.stats.errors += 1
                    log.warning("enforcement stream: %s; reconnecting", type(exc).__name__)
                except Exception as exc:  # anything else must not end the feed for good
                    self.stats.errors += 1
                    log.exception("enforcement stream: %s; reconnecting", type(exc).__name__)
                delay = backoff * (0.5 + random.random())  # jitter, not crypto
                await asyncio.sleep(delay)
                backoff = min(backoff * 2, self.backoff_max)

    async def _session(self, http: httpx.AsyncClient) -> bool:
        """One connection; True if it got as far as `synced` (the backoff then restarts)."""
        headers = {"Authorization": f"Bearer {self._token}", "Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = str(self.last_event_id)
        url = f"{self.base_url}/v1/enforcement/stream"
        synced = False
        async with http.stream("GET", url, headers=headers) as resp:
            if resp.status_code != 200:
                await resp.aread()
                self.stats.errors += 1
                log.warning("enforcement stream: HTTP %d", resp.status_code)
                return False
            self.stats.connects += 1
            if self.last_event_id is not None:
                self.stats.resumes += 1
            parser = SSEParser()
            pending: BlockTable | None = None
            async for line in resp.aiter_lines():
                if len(line) > _MAX_LINE:
                    raise ValueError("stream line too long")
                got = parser.feed(line.rstrip("\r"))
                if got is None:
                    continue
                event, data, event_id = got
                if event == "snapshot":
                    pending = BlockTable()
                    self.stats.snapshots += 1
                    self.last_event_id = None
                elif event == "synced":
                    if pending is not None:
                        self.table, pending = pending, None
                    self._set_id(event_id)
                    self.heard_at = time.monotonic()
                    self.synced.set()
                    synced = True
                elif event == "heartbeat":
                    beat = json.loads(data)
                    if not isinstance(beat, dict):
                        raise ValueError("heartbeat: not a JSON object")
                    if not beat.get("stale"):
                        self.heard_at = time.monotonic()
                elif event in ("block", "lift"):
                    self._apply(event, data, event_id, pending)
        return synced

    def _set_id(self, event_id: str | None) -> None:
        if event_id is not None and event_id.isdigit():
            self.last_event_id = int(event_id)

    def _apply(
        self, event: str, data: str, event_id: str | None, pending: BlockTable | None
    ) -> None:
        raw = json.loads(data)
        if not isinstance(raw, dict):
            raise ValueError(f"{event}: not a JSON object")
        block = Block.from_event(raw)
        if pending is not None and event_id is None:
            pending.add(block)  # a snapshot entry
            return
        if event_id is None or not event_id.isdigit():
            return
        seq = int(event_id)
        if self.last_event_id is not None and seq <= self.last_event_id:
            self.stats.ignored += 1
            return
        target = pending if pending is not None else self.table
        if event == "block":
            target.add(block)
            counts = self.stats.applied
            if counts is not None:
                counts[block.action_id] = counts.get(block.action_id, 0) + 1
        else:
            target.remove(block.action_id)
        self.last_event_id = seq
        self.stats.events += 1
        self.heard_at = time.monotonic()
        if self.on_change is not None:
            try:
                self.on_change(event, block)
            except Exception:  # the app's callback: the table is up to date all the same
                log.exception("enforcement stream: on_change raised (ignored)")


__all__ = ["KINDS", "ClientStats", "Decision", "EnforcementClient", "FailMode", "SSEParser"]
