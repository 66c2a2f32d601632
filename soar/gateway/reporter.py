"""DetectionReporter: signed, durable, in-order delivery of detections to atlas-soar.

    reporter = DetectionReporter("http://127.0.0.1:8000", "whsec_...", "/var/lib/app/spool")
    await reporter.start()
    await reporter.report(make_detection("AML.T0051", subject=..., prompt=...))

`report()` appends the detection to a local JSONL spool (flushed and fsync'd before it
returns) and wakes the sender; it never waits for atlas-soar. The sender posts the spool in
order, one at a time, each signed with the source's own secret (Standard Webhooks:
`webhook-id` stable per detection, a fresh `webhook-timestamp` per attempt), and only moves
its offset (a small file beside the spool, replaced atomically) once the answer is final:

- 2xx (202 accepted, 200 duplicate, 204 nothing detected): done;
- 408, 5xx, 401, a network error or a timeout: retried with exponential backoff (jitter),
  honouring `Retry-After`; later detections wait, so the order is kept (every detection
  would meet the same);
- 429 (that subject, or source, over its rate): put at the back of the spool, and the next
  detection is sent, so one subject's flood holds up no other's; when a whole round meets
  nothing but 429s the sender waits as `Retry-After` asks (at most `backoff_max`);
- any other 4xx: permanently refused; logged with the status and the names of the fields
  the answer names (never the prompt), then skipped.

A crash or restart loses nothing: a new reporter on the same spool resumes at the offset.
A detection sent but not yet recorded as done is sent again, which is safe: its `id` is
the idempotency key at intake (the repeat is answered 200 duplicate). The spool holds raw
prompts: it is created mode 0600; keep it on local, private storage.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from soar.bounds import TENANT_MAX, canonical_id

log = logging.getLogger("soar.gateway")

MAX_BODY = 256 * 1024
_MAX_RETRY_AFTER = 300.0


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` header of the Standard Webhooks scheme (v1, HMAC-SHA256)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def make_detection(
    technique: str,
    *,
    tenant: str = "default",
    session: str | None = None,
    user: str | None = None,
    api_key: str | None = None,
    severity: str = "high",
    confidence: float = 0.9,
    source: str = "llm-gateway",
    prompt: str | None = None,
    model: str | None = None,
    detection_id: str | None = None,
) -> dict[str, Any]:
    """A native detection body (CONTRACT.md, Detection intake). The subject's values are
    taken in the form the intake stores (:func:`soar.bounds.canonical_id`: stripped, and
    hashed when the intake would refuse them), as the gateway client checks them: an
    attacker's header with a tab, a C1 byte or 300 characters neither gets the detection
    refused nor the block put on another string than the one checked."""
    subject: dict[str, str] = {"tenant": canonical_id(tenant, TENANT_MAX) or "default"}
    for name, value in (("session", session), ("user", user), ("api_key", api_key)):
        if value := canonical_id(value):
            subject[name] = value
    evidence: dict[str, str] = {}
    if prompt is not None:
        evidence["prompt"] = prompt
    if model is not None:
        evidence["model"] = model
    return {
        "id": detection_id or "det-" + uuid.uuid4().hex,
        "technique": technique,
        "severity": severity,
        "confidence": confidence,
        "source": source,
        "observed_at": datetime.now(UTC).isoformat(),
        "subject": subject,
        "evidence": evidence,
    }


@dataclass
class ReporterStats:
    accepted: int = 0  # 202 / 204
    duplicates: int = 0  # 200 duplicate
    refused: int = 0  # permanent 4xx
    retries: int = 0
    deferred: int = 0  # 429s: put at the back of the spool


class DetectionReporter:
    def __init__(
        self,
        base_url: str,
        secret: str,
        spool_dir: str | os.PathLike[str],
        *,
        timeout: float = 10.0,
        backoff_initial: float = 0.2,
        backoff_max: float = 30.0,
        fsync: bool = True,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        if not secret.startswith("whsec_"):
            raise ValueError("secret: must be a Standard Webhooks secret (whsec_...)")
        base64.b64decode(secret.removeprefix("whsec_"), validate=True)
        self.url = base_url.rstrip("/") + "/v1/detections"
        self._secret = secret
        self.dir = Path(spool_dir)
        self.dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.spool = self.dir / "detections.jsonl"
        self._offset_file = self.dir / "detections.offset"
        self.timeout = timeout
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.fsync = fsync
        self._transport = transport
        self.stats = ReporterStats()
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        if not self.spool.exists():
            fd = os.open(self.spool, os.O_WRONLY | os.O_CREAT, 0o600)
            os.close(fd)
        self.pending = self._count_pending()

    # -- the spool -----------------------------------------------------------------------

    def _offset(self) -> int:
        try:
            return int(self._offset_file.read_text().strip() or 0)
        except (OSError, ValueError):
            return 0

    def _set_offset(self, value: int) -> None:
        tmp = self._offset_file.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            fh.write(str(value))
            if self.fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.replace(tmp, self._offset_file)

    def _count_pending(self) -> int:
        with open(self.spool, "rb") as fh:
            fh.seek(self._offset())
            return sum(1 for line in fh if line.endswith(b"\n"))

    def _append(self, line: bytes) -> None:
        with open(self.spool, "ab") as fh:
            fh.write(line)
            fh.flush()
            if self.fsync:
                os.fsync(fh.fileno())

    async def report(self, detection: dict[str, Any]) -> str:
        """Spools one detection (durable when this returns) and returns its id."""
        if not isinstance(detection.get("id"), str) or not detection["id"]:
            detection = {**detection, "id": "det-" + uuid.uuid4().hex}
        line = json.dumps(detection, separators=(",", ":")).encode() + b"\n"
        if len(line) > MAX_BODY:
            raise ValueError("detection: over 256 KiB once encoded (atlas-soar refuses it)")
        async with self._lock:
            await asyncio.to_thread(self._append, line)
            self.pending += 1
            self._idle.clear()
        self._wake.set()
        return str(detection["id"])

    # -- sending -------------------------------------------------------------------------

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="soar-detection-reporter")
            self._wake.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def __aenter__(self) -> DetectionReporter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def flush(self, within: float = 30.0) -> bool:
        """Waits until every spooled detection has a final answer; False after `within`."""
        deadline = time.monotonic() + within
        while self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._idle.wait(), timeout=left)
        return True

    async def _run(self) -> None:
        async with httpx.AsyncClient(timeout=self.timeout, transport=self._transport) as http:
            while True:
                await self._wake.wait()
                self._wake.clear()
                await self._drain(http)

    async def _drain(self, http: httpx.AsyncClient) -> None:
        offset = self._offset()
        deferrals = 0  # 429s in a row
        while True:
            line = await asyncio.to_thread(self._read_line, offset)
            if line is None:
                async with self._lock:
                    if self.spool.stat().st_size == offset and offset > 0:
                        await asyncio.to_thread(self._compact)
                    if self.pending == 0 or self._count_pending() == 0:
                        self.pending = 0
                        self._idle.set()
                return
            deferred = await self._deliver(http, line)
            if deferred is not None:
                # 429: that subject is over its rate. It goes to the back of the spool and the
                # next detection is sent: one subject's flood holds up no other's. A full
                # round with nothing but 429s waits as asked before the next one.
                async with self._lock:
                    await asyncio.to_thread(self._append, line)
                self.stats.deferred += 1
                deferrals += 1
                if deferrals >= max(self.pending, 1):
                    await asyncio.sleep(deferred)
                    deferrals = 0
            else:
                deferrals = 0
            offset += len(line)
            await asyncio.to_thread(self._set_offset, offset)
            if deferred is None:
                self.pending = max(0, self.pending - 1)

    def _read_line(self, offset: int) -> bytes | None:
        with open(self.spool, "rb") as fh:
            fh.seek(offset)
            line = fh.readline()
        return line if line.endswith(b"\n") else None  # a torn last line is not yet written

    def _compact(self) -> None:
        with open(self.spool, "r+b") as fh:
            fh.truncate(0)
        self._set_offset(0)

    async def _deliver(self, http: httpx.AsyncClient, line: bytes) -> float | None:
        """Posts one detection until its answer is final (None), or, on a 429, gives up for
        now and says how long its subject should wait (the caller puts it at the back)."""
        body = line.rstrip(b"\n")
        try:
            det_id = str(json.loads(body).get("id", ""))
        except (ValueError, AttributeError):
            log.error("detection spool: an unreadable line was skipped")
            self.stats.refused += 1
            return None
        msg_id = "msg_" + hashlib.sha256(det_id.encode()).hexdigest()[:32]
        backoff = self.backoff_initial
        while True:
            ts = int(time.time())
            headers = {
                "content-type": "application/json",
                "webhook-id": msg_id,
                "webhook-timestamp": str(ts),
                "webhook-signature": sign(self._secret, msg_id, ts, body),
            }
            wait: float | None = None
            try:
                resp = await http.post(self.url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                log.warning("detection %s: %s; will retry", det_id[:80], type(exc).__name__)
            else:
                if 200 <= resp.status_code < 300:
                    duplicate = resp.status_code == 200 and _json(resp).get("duplicate") is True
                    if duplicate:
                        self.stats.duplicates += 1
                    else:
                        self.stats.accepted += 1
                    return None
                if resp.status_code == 401:
                    # Not this detection's fault: the signature (a clock more than 5 minutes
                    # off, a secret rotated past its grace) or the source. Every detection
                    # would be refused the same: keep them, and retry until it is fixed.
                    log.error(
                        "detection %s: HTTP 401 (webhook secret, source or clock); holding the "
                        "spool and retrying",
                        det_id[:80],
                    )
                elif resp.status_code not in (408, 429) and resp.status_code < 500:
                    fields = [str(e.get("field"))[:80] for e in _errors(resp)]
                    log.error(
                        "detection %s refused: HTTP %d %s",
                        det_id[:80],
                        resp.status_code,
                        ",".join(fields),
                    )
                    self.stats.refused += 1
                    return None
                elif resp.status_code == 429:
                    wait = _retry_after(resp)
                    log.warning("detection %s: HTTP 429; deferred", det_id[:80])
                    self.stats.retries += 1
                    return min(wait if wait is not None else 1.0, self.backoff_max)
                else:
                    log.warning("detection %s: HTTP %d; will retry", det_id[:80], resp.status_code)
                wait = _retry_after(resp)
            self.stats.retries += 1
            delay = wait if wait is not None else backoff * (0.5 + random.random())  # jitter
            await asyncio.sleep(delay)
            backoff = min(backoff * 2, self.backoff_max)


def _json(resp: httpx.Response) -> dict[str, Any]:
    try:
        data = resp.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _errors(resp: httpx.Response) -> list[dict[str, Any]]:
    errors = _json(resp).get("errors")
    return [e for e in errors if isinstance(e, dict)][:20] if isinstance(errors, list) else []


def _retry_after(resp: httpx.Response) -> float | None:
    raw = resp.headers.get("retry-after", "")
    try:
        return min(max(float(raw), 0.0), _MAX_RETRY_AFTER)
    except ValueError:
        return None


__all__ = ["DetectionReporter", "ReporterStats", "make_detection", "sign"]
