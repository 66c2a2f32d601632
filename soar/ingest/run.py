"""Sending a file of detections to the intake: signed, paced, resumable.

Each line is posted to `POST /v1/detections` of the running API, signed with a source's
webhook secret, so the webhook's rules apply unchanged: signature -> source attribution,
tenant allow-list, rate limits (a 429 is waited out, never dropped), validation (a 422 names
the field), the body limit, idempotency (a repeat is a 200 duplicate). Lines with the same
detection id are sent one after the other, in file order.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any

import httpx

from soar.api.jsonsafe import JSONRefused, parse_json_sync
from soar.detect import Engine
from soar.gateway.reporter import sign
from soar.ingest.checkpoint import Checkpoint, Result, Tally
from soar.ingest.lines import MAX_LINE_BYTES, Line, detection_key, is_alert, kind_of, parse_line

SENT_WINDOW = 256  # lines pre-registered in the checkpoint before they are sent
SETTLED_KEPT = 10_000  # answers past the settled prefix kept in the checkpoint (not resent)
SAVE_EVERY = 1.0  # seconds between checkpoint writes (also at every pre-registration)
RETRY_AFTER_MAX = 60.0
SKIP_CHUNK = 1024 * 1024  # the rest of an over-long line is read (and dropped) this much at once
MAX_SKIP_BYTES = 1024**3  # a stream's line longer than this stops the run (see read_lines)


class Aborted(Exception):
    """The run cannot go on (API unreachable for too long, signature refused); what is done
    is in the checkpoint."""


class InputChanged(Exception):
    """The input's first lines differ from those the checkpoint was made from."""


class EndlessLine(Aborted):
    """A stream's line runs on past MAX_SKIP_BYTES without a line break."""


def read_lines(f: IO[bytes], *, skip_max: int | None = None) -> Iterator[tuple[bytes, str]]:
    """Each line (at most MAX_LINE_BYTES + 1 bytes of it: a longer one is invalid) and the
    SHA-256 of the input up to the end of that line (the prefix digest). The rest of an
    over-long line is read and hashed a chunk at a time and dropped, never held whole. With
    `skip_max` (a stream, which may never end: /dev/zero), a line running on past that many
    bytes raises EndlessLine; a regular file's line is read to its end, however long."""
    hasher = hashlib.sha256()
    number = 0
    while True:
        raw = f.readline(MAX_LINE_BYTES + 1)
        if not raw:
            return
        number += 1
        hasher.update(raw)
        if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
            size = len(raw)
            while more := f.readline(SKIP_CHUNK):
                hasher.update(more)
                size += len(more)
                if more.endswith(b"\n"):
                    break
                if skip_max is not None and size > skip_max:
                    raise EndlessLine(
                        f"line {number}: over {skip_max:,} bytes without a line break "
                        "(is this a JSONL stream?)"
                    )
        yield raw, hasher.hexdigest()


def _reasons(r: httpx.Response) -> str:
    try:
        data = r.json()
    except ValueError:
        return f"HTTP {r.status_code}"
    if not isinstance(data, dict):
        return f"HTTP {r.status_code}"
    errors = data.get("errors")
    if isinstance(errors, list) and errors:
        return "; ".join(
            f"{e.get('field')}: {e.get('message')}" for e in errors[:10] if isinstance(e, dict)
        )
    return str(data.get("error") or f"HTTP {r.status_code}")[:500]


def _wait_of(r: httpx.Response, default: float) -> float:
    try:
        return min(RETRY_AFTER_MAX, max(0.05, float(r.headers.get("retry-after", default))))
    except ValueError:
        return default


class Poster:
    """Posts one signed detection; waits out 429 / 503 / network trouble for at most
    `give_up_seconds` per line."""

    def __init__(
        self,
        client: httpx.AsyncClient | None,
        *,
        base_url: str,
        secret: str,
        give_up_seconds: float = 300.0,
    ) -> None:
        self.client = client
        self.url = base_url.rstrip("/") + "/v1/detections"
        self.secret = secret
        self.give_up = give_up_seconds

    async def post(self, body: dict[str, Any]) -> tuple[str, str | None]:
        raw = json.dumps(body).encode()
        deadline = time.monotonic() + self.give_up
        backoff = 0.2
        while True:
            msg_id, stamp = "msg_" + uuid.uuid4().hex, int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(stamp),
                "webhook-signature": sign(self.secret, msg_id, stamp, raw),
            }
            wait = backoff
            assert self.client is not None, "Poster.client is set before the run"
            try:
                r = await self.client.post(self.url, content=raw, headers=headers)
            except httpx.TransportError as exc:
                problem = f"cannot reach {self.url}: {type(exc).__name__}"
            else:
                s = r.status_code
                if s == 202:
                    return "accepted", None
                if s == 200:
                    return "duplicate", None
                if s == 204:
                    return "clean", None
                if s in (403, 413, 422):
                    return "invalid", _reasons(r)
                if s == 401:
                    raise Aborted(f"the API refused the signature: {_reasons(r)}")
                if s not in (429, 500, 502, 503, 504):
                    raise Aborted(f"unexpected answer HTTP {s} from {self.url}")
                problem = f"HTTP {s} from {self.url}"
                if s in (429, 503):
                    wait = _wait_of(r, backoff)
            if time.monotonic() + wait > deadline:
                raise Aborted(f"{problem}, for more than {self.give_up:g} s")
            await asyncio.sleep(wait * (1 + random.random() * 0.1))
            backoff = min(backoff * 2, 10.0)


class Pacer:
    """At most `rate` lines a second (None: unpaced)."""

    def __init__(self, rate: float | None) -> None:
        self.interval = 1.0 / rate if rate else 0.0
        self.next_at = time.monotonic()

    async def wait(self) -> None:
        if not self.interval:
            return
        now = time.monotonic()
        if self.next_at > now:
            await asyncio.sleep(self.next_at - now)
        self.next_at = max(now, self.next_at) + self.interval


@dataclass
class Options:
    technique: str | None = None
    tenant: str = "default"
    rate: float | None = None
    concurrency: int = 8


def _key_only(raw: bytes) -> str | None:
    """The detection id a line of the already-done prefix stands for (no engine scan); None
    for a line the first run found invalid (too long, not JSON, nested too deep)."""
    if len(raw) > MAX_LINE_BYTES:
        return None
    try:
        obj = parse_json_sync(raw.strip())
    except (JSONRefused, UnicodeDecodeError):
        return None
    if not isinstance(obj, dict):
        return None
    if is_alert(obj):
        return f"{obj.get('source', '')}:{obj.get('id', '')}".strip()
    return detection_key(obj, kind_of(obj))


class Ingest:
    """One run over an input. `on_result` is called for every line as it is settled."""

    def __init__(
        self,
        *,
        poster: Poster,
        checkpoint: Checkpoint,
        options: Options,
        engine: Engine | None = None,
        on_result: Callable[[Result], None] | None = None,
    ) -> None:
        self.poster = poster
        self.ckpt = checkpoint
        self.opts = options
        self.engine = engine or Engine.default()
        self.on_result = on_result or (lambda r: None)
        self.resumed = checkpoint.done
        self.resumed_sent_upto = checkpoint.sent_upto  # 0 for a fresh checkpoint
        self._pending: dict[int, Result] = {}
        # Lines past the prefix the interrupted run had the intake's answer for: not resent.
        self._known = {r.line: r for r in checkpoint.settled if r.line > checkpoint.done}
        self._digests: dict[int, str] = {}
        self._seen: set[str] = set()
        self._inflight: dict[str, asyncio.Future[None]] = {}
        self._saved_at = time.monotonic()
        self._abort: Aborted | None = None

    # --- the prefix of settled lines -------------------------------------------------------

    def _settle(self, r: Result) -> None:
        self._pending[r.line] = r
        self.on_result(r)
        c = self.ckpt
        while (c.done + 1) in self._pending:
            c.done += 1
            c.tally.add(self._pending.pop(c.done))
            c.prefix_sha256 = self._digests.pop(c.done)
        if time.monotonic() - self._saved_at > SAVE_EVERY:
            self._save()

    def _save(self) -> None:
        lines = sorted(self._pending)[:SETTLED_KEPT]
        self.ckpt.settled = [self._pending[n] for n in lines]
        self.ckpt.save()
        self._saved_at = time.monotonic()

    def tally(self) -> Tally:
        return self.ckpt.tally.merged(list(self._pending.values()))

    # --- one line ----------------------------------------------------------------------------

    async def _send(self, line: Line) -> Result:
        assert line.body is not None
        key = line.key
        if key is not None:
            while key in self._inflight:
                await self._inflight[key]
            earlier = key in self._seen
            self._seen.add(key)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self._inflight[key] = done
        try:
            outcome, reason = await self.poster.post(line.body)
        finally:
            if key is not None:
                self._inflight.pop(key, None)
                done.set_result(None)
        if (
            outcome == "duplicate"
            and key is not None
            and not earlier
            and line.number <= self.resumed_sent_upto
        ):
            # Maybe sent by the interrupted run, whose answer was lost: accepted then, or a
            # duplicate already (the window is registered before its lines are sent).
            outcome = "resumed"
        return Result(line.number, outcome, key, reason)

    async def _task(self, line: Line, sem: asyncio.Semaphore) -> None:
        try:
            self._settle(await self._send(line))
        except Aborted as exc:
            self._abort = self._abort or exc
        except Exception as exc:  # never lose a line silently: stop, keep the checkpoint
            self._abort = self._abort or Aborted(
                f"line {line.number}: {type(exc).__name__}: {exc}"[:300]
            )
        finally:
            sem.release()

    # --- the run -----------------------------------------------------------------------------

    async def _batches(self, f: IO[bytes], regular: bool) -> AsyncIterator[list[tuple[bytes, str]]]:
        """Lines read in a worker thread: 256 at a time from a regular file, one at a time
        from a stream (each line is sent as soon as it arrives). EndlessLine is raised after
        the lines read before it."""
        lines = read_lines(f, skip_max=None if regular else MAX_SKIP_BYTES)

        def take() -> tuple[list[tuple[bytes, str]], EndlessLine | None]:
            out: list[tuple[bytes, str]] = []
            try:
                for item in lines:
                    out.append(item)
                    if len(out) >= (256 if regular else 1):
                        break
            except EndlessLine as exc:
                return out, exc
            return out, None

        while True:
            batch, endless = await asyncio.to_thread(take)
            if batch:
                yield batch
            if endless is not None:
                raise endless
            if not batch:
                return

    async def run(self, f: IO[bytes], *, regular: bool = True) -> Tally:
        number = 0
        sem = asyncio.Semaphore(self.opts.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        pacer = Pacer(self.opts.rate)
        try:
            try:
                async for batch in self._batches(f, regular):
                    number = await self._batch(batch, number, sem, tasks, pacer)
                    if self._abort is not None:
                        break
            except EndlessLine as exc:
                self._abort = self._abort or exc
            if tasks:  # the lines in flight are settled, even when stopping
                await asyncio.gather(*tasks)
            if self._abort is not None:
                raise self._abort
            if number < self.resumed:
                raise InputChanged(
                    f"the input has {number} lines, fewer than the {self.resumed} done before"
                )
            if self.ckpt.done < number:
                raise Aborted(f"lines {self.ckpt.done + 1}-{number} were not settled")
        finally:
            # Interrupted (Ctrl-C cancels us) or not: keep what is settled.
            for t in tasks:
                t.cancel()
            self._save()
        self.ckpt.remove()
        return self.tally()

    async def _batch(
        self,
        batch: list[tuple[bytes, str]],
        number: int,
        sem: asyncio.Semaphore,
        tasks: set[asyncio.Task[None]],
        pacer: Pacer,
    ) -> int:
        """The batch's lines settled or under way; the number of the last line taken."""
        for raw, digest in batch:
            number += 1
            if number <= self.resumed:
                if key := _key_only(raw):
                    self._seen.add(key)
                if number == self.resumed and digest != self.ckpt.prefix_sha256:
                    raise InputChanged(
                        f"the first {self.resumed} lines differ from those of the interrupted run"
                    )
                continue
            if self._abort is not None:
                break
            self._digests[number] = digest
            known = self._known.pop(number, None)
            if known is not None and (known.key is None or _key_only(raw) != known.key):
                known = None  # not the line that was answered (the input changed): read again
            if known is not None and known.key is not None:
                if known.outcome != "unmapped":
                    self._seen.add(known.key)  # as when it was sent
                self._settle(known)
                continue
            line = parse_line(
                number,
                raw,
                engine=self.engine,
                technique=self.opts.technique,
                tenant=self.opts.tenant,
            )
            if line is None:
                self._settle(Result(number, "blank"))
                continue
            if line.body is None:
                self._settle(Result(number, line.kind, line.key, line.reason))
                continue
            if number > self.ckpt.sent_upto:
                self.ckpt.sent_upto = number + SENT_WINDOW
                self._save()
            await pacer.wait()
            await sem.acquire()
            if self._abort is not None:
                sem.release()
                break
            task = asyncio.create_task(self._task(line, sem))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        return number
