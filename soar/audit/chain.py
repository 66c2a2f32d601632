"""The hash-chained action log: canonical row form, append (exactly once), verify.

Every row's hash is SHA-256 over the canonical JSON of its content, which includes the
previous row's hash; `seq` is gapless. Writers take one transaction-scoped advisory lock, so
the chain has one global order however many workers append at once.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from soar.models import ActionLogEntry

GENESIS = "0" * 64
_LOCK_KEY = 0x41544C4153  # "ATLAS": the one advisory lock that orders the chain

HASHED_FIELDS = (
    "seq", "event_key", "at", "incident_id", "tenant", "subject", "event", "action",
    "actor", "outcome", "technique", "tactic", "details", "prev_hash",
)  # fmt: skip


@dataclass(frozen=True)
class LogEvent:
    """One step to record. `event_key` makes the write idempotent: the same key is written
    once, whatever retries or workflow replays happen."""

    event_key: str
    event: str
    actor: str
    outcome: str = "ok"
    incident_id: str | None = None
    tenant: str | None = None
    subject: str | None = None
    action: str | None = None
    technique: str | None = None
    tactic: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(row: dict[str, Any]) -> bytes:
    content = {k: row[k] for k in HASHED_FIELDS}
    content["at"] = _iso(content["at"]) if isinstance(content["at"], datetime) else content["at"]
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row: dict[str, Any]) -> str:
    return hashlib.sha256(canonical(row)).hexdigest()


async def append(session: AsyncSession, ev: LogEvent) -> ActionLogEntry:
    """Append inside the caller's transaction; returns the existing row if the key is known.
    Call it last in a transaction: the chain lock is held until commit."""
    return (await append_many(session, [ev]))[0]


async def append_many(session: AsyncSession, events: Iterable[LogEvent]) -> list[ActionLogEntry]:
    """Append several events in order with five statements in all, whatever their number;
    events whose key is already logged are returned as they are, not written again."""
    evs = list(events)
    if not evs:
        return []
    # Outside the lock: hash exactly what JSONB gives back (1e16 comes back as an integer,
    # -0.0 as 0), normalised for all events in one round trip.
    details = await _as_jsonb(session, [ev.details for ev in evs])
    await session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _LOCK_KEY})
    keys = [ev.event_key for ev in evs]
    existing = {
        e.event_key: e
        for e in await session.scalars(
            select(ActionLogEntry).where(ActionLogEntry.event_key.in_(keys))
        )
    }
    newest = select(ActionLogEntry.seq, ActionLogEntry.hash).order_by(ActionLogEntry.seq.desc())
    last = (await session.execute(newest.limit(1))).first()
    seq, prev = (last[0], last[1]) if last else (0, GENESIS)
    now = datetime.now(UTC)
    out: list[ActionLogEntry] = []
    added: list[ActionLogEntry] = []
    for ev, detail in zip(evs, details, strict=True):
        if ev.event_key in existing:
            out.append(existing[ev.event_key])
            continue
        seq += 1
        row: dict[str, Any] = {
            "seq": seq,
            "event_key": ev.event_key,
            "at": now,
            "incident_id": ev.incident_id,
            "tenant": ev.tenant,
            "subject": ev.subject,
            "event": ev.event,
            "action": ev.action,
            "actor": ev.actor,
            "outcome": ev.outcome,
            "technique": ev.technique,
            "tactic": ev.tactic,
            "details": detail,
            "prev_hash": prev,
        }
        entry = ActionLogEntry(**row, hash=row_hash(row))
        prev = entry.hash
        existing[ev.event_key] = entry  # the same key twice in one batch is written once
        added.append(entry)
        out.append(entry)
    session.add_all(added)
    await session.flush()
    return out


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; PostgreSQL refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


async def _as_jsonb(session: AsyncSession, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    raw = json.dumps(_finite(items), default=str, allow_nan=False)
    normal: list[dict[str, Any]] = (
        await session.execute(text("SELECT CAST(:d AS jsonb)"), {"d": raw})
    ).scalar_one()
    return normal


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    reason: str


@dataclass
class ChainVerifier:
    """Feed rows in seq order; the first problem found is kept."""

    checked: int = 0
    problem: ChainProblem | None = None
    _expected_seq: int = 1
    _prev: str = GENESIS

    def feed(self, row: dict[str, Any]) -> bool:
        """Returns False once a problem is found."""
        if self.problem is not None:
            return False
        seq = int(row["seq"])
        if seq != self._expected_seq:
            if seq > self._expected_seq:
                gap = (
                    f"{self._expected_seq}"
                    if seq == self._expected_seq + 1
                    else (f"{self._expected_seq}..{seq - 1}")
                )
                self.problem = ChainProblem(self._expected_seq, f"row(s) {gap} missing")
            else:
                self.problem = ChainProblem(seq, f"row {seq} out of order")
            return False
        if row["prev_hash"] != self._prev:
            self.problem = ChainProblem(
                seq, f"row {seq}: link broken (prev_hash does not match row {seq - 1})"
            )
            return False
        if row_hash(row) != row["hash"]:
            self.problem = ChainProblem(seq, f"row {seq}: content changed (hash mismatch)")
            return False
        self._prev = row["hash"]
        self._expected_seq += 1
        self.checked += 1
        return True


def verify_rows(rows: Iterable[dict[str, Any]]) -> ChainVerifier:
    v = ChainVerifier()
    for row in rows:
        if not v.feed(row):
            break
    return v
