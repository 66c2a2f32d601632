"""The action log: writers append, the database seals; the hashed forms, and verify.

Design (migration 0004, deploy/postgres-grants.sql, README "For auditors"):

- **Writers never wait on each other.** `write_many` (and `append`) is one `INSERT ... ON
  CONFLICT (event_key) DO NOTHING` of unsealed rows (`seq`, `prev_hash`, `hash` NULL) that
  reads nothing back: no lock beyond the row's unique index, so the same key appended twice
  at once is still written once (the second insert waits for the first's transaction).
  `append_many` also returns the rows, for callers that need them.
- **The database decides time and order.** A BEFORE INSERT trigger sets `at` from the
  database clock and drops any `seq`/`hash`/`prev_hash`/`sealed_at`/`at` an INSERT tried to
  set (only the table's owner, who could switch the trigger off anyway, may import hashed
  rows). `soar_seal(max_rows)` is a SECURITY DEFINER function owned by the table's owner: it
  takes the unsealed rows in insertion order (`id`), gives them the next gapless `seq`s and
  chains them. The app role may call it but not change it, and its UPDATE is the only one the
  trigger lets through. One sealer at a time (a try-lock inside the function); the worker
  calls it every 200 ms (`soar.audit.seal.seal_forever`), so the delay until a row is sealed
  is bounded by that period plus the batch time; `/metrics` and `soar audit verify` show it.
- **Hashes.** A sealed row's `hash = SHA-256(prev_hash || SHA-256(content))` in hex, where
  content is `sealed_content`: a tag then the fields NUL-separated, each `n` (NULL) or `v`
  and its UTF-8 text; `at` as UTC ISO 8601 with microseconds, `details` as PostgreSQL's own
  `jsonb` text. The per-row content hashes are computed set-based in SQL; only the 64-byte
  link is sequential. Rows from before migration 0004 keep their application-made hashes
  (`row_hash`: SHA-256 of canonical JSON including prev_hash); the first row the database
  seals (`MARKER`) records the last of them in `details.legacy_until_seq`, and the chain
  continues from that row's hash.
- **Verify** (soar.audit.verify) recomputes every hash in Python from the stored values,
  checks seq is gapless and every link, reports every problem (not only the first), and with
  signed checkpoints (soar.audit.checkpoint) also truncation and consistent re-hashing.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.ext.asyncio import AsyncSession

from soar.models import ActionLogEntry

GENESIS = "0" * 64
MARKER = "atlas-soar:log-sealing-started"  # the first row the database sealed
SEAL_TAG = b"atlas-soar/log/v2"

HASHED_FIELDS = (
    "seq",
    "event_key",
    "at",
    "incident_id",
    "tenant",
    "subject",
    "event",
    "action",
    "actor",
    "outcome",
    "technique",
    "tactic",
    "details",
    "prev_hash",
)
SEALED_FIELDS = HASHED_FIELDS[:-1]  # the content of a sealed row; prev_hash is in the link

# What a writer gives: the hashed content but for what the database decides (seq, at).
INSERTED_FIELDS = (HASHED_FIELDS[1], *HASHED_FIELDS[3:-1])
_RETURNED = ("id", "seq", "at", *INSERTED_FIELDS, "prev_hash", "hash", "sealed_at")
_WRITE_SQL = (
    f"INSERT INTO action_log ({', '.join(INSERTED_FIELDS)}) "
    "SELECT "
    + ", ".join(f"e.j -> '{c}'" if c == "details" else f"e.j ->> '{c}'" for c in INSERTED_FIELDS)
    + " FROM jsonb_array_elements(CAST(:rows AS jsonb)) WITH ORDINALITY AS e(j, n) "
    "ORDER BY e.n "
    "ON CONFLICT (event_key) DO NOTHING"
)
_WRITE = text(_WRITE_SQL)
_INSERT = text(f"{_WRITE_SQL} RETURNING {', '.join(_RETURNED)}")


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


# --- the hashed forms ----------------------------------------------------------------------


def _iso(at: datetime) -> str:
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def canonical(row: dict[str, Any]) -> bytes:
    """The application-hashed form (rows sealed before migration 0004)."""
    content = {k: row[k] for k in HASHED_FIELDS}
    content["at"] = _iso(content["at"]) if isinstance(content["at"], datetime) else content["at"]
    return json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def row_hash(row: dict[str, Any]) -> str:
    """The hash of a row of the application-hashed chain (before migration 0004)."""
    return hashlib.sha256(canonical(row)).hexdigest()


def sealed_content(values: Sequence[str | None]) -> bytes:
    """What the database hashes for a sealed row: `values` are SEALED_FIELDS as text (seq in
    decimal, `at` in `_iso` form, `details` as PostgreSQL renders jsonb)."""
    return b"\x00".join([SEAL_TAG, *(b"n" if v is None else b"v" + v.encode() for v in values)])


def sealed_link(prev_hash: str, content: bytes) -> str:
    inner = hashlib.sha256(content).hexdigest()
    return hashlib.sha256((prev_hash + inner).encode()).hexdigest()


def sealed_hash(row: dict[str, Any]) -> str:
    """The hash of a sealed row given as a dict (an export, a query result): `details` as
    parsed JSON or as jsonb text, `at` as a datetime or ISO text."""
    at = row["at"]
    details = row["details"]
    values = [
        str(row["seq"]),
        row["event_key"],
        _iso(at) if isinstance(at, datetime) else at,
        *(row[k] for k in SEALED_FIELDS[3:-1]),
        details if isinstance(details, str) else jsonb_text(details),
    ]
    return sealed_link(row["prev_hash"], sealed_content(values))


def _jsonb_string(s: str) -> str:
    # PostgreSQL escapes ", \ and the C0 controls exactly as json.dumps(ensure_ascii=False).
    return json.dumps(s, ensure_ascii=False)


def _jsonb_number(value: int | float | Decimal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    # jsonb keeps numbers as `numeric`, printed without an exponent; a float from a JSON
    # text is the shortest form of what was stored, which is what json.dumps wrote.
    d = value if isinstance(value, Decimal) else Decimal(repr(value))
    out = format(d, "f")
    return "0" + out[1:] if out.startswith("-0") and d.is_zero() else out


def jsonb_text(value: Any) -> str:
    """`value` (parsed JSON) as PostgreSQL prints it as jsonb: object keys shortest first,
    then by bytes; `", "` and `": "` separators; numbers as `numeric`."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _jsonb_string(value)
    if isinstance(value, int | float | Decimal):
        return _jsonb_number(value)
    if isinstance(value, dict):
        keys = sorted(value, key=lambda k: (len(k.encode()), k.encode()))
        return "{" + ", ".join(f"{_jsonb_string(k)}: {jsonb_text(value[k])}" for k in keys) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(jsonb_text(v) for v in value) + "]"
    raise TypeError(f"not a JSON value: {type(value).__name__}")


# --- appending -----------------------------------------------------------------------------


async def append(session: AsyncSession, ev: LogEvent) -> None:
    """Append one event inside the caller's transaction (written once per `event_key`)."""
    await write_many(session, [ev])


async def write_many(session: AsyncSession, events: Iterable[LogEvent]) -> None:
    """The product's write path: append events in order with one statement and read nothing
    back; an event whose key is already logged is not written again. No lock is taken:
    concurrent writers do not wait for each other. Rows are unsealed (`seq` None) until the
    sealer has run after the commit."""
    evs = list(events)
    if evs:
        await session.execute(_WRITE, {"rows": _payload(evs)})


def _payload(evs: list[LogEvent]) -> str:
    return json.dumps(
        [
            {c: getattr(ev, c) for c in INSERTED_FIELDS} | {"details": _finite(ev.details)}
            for ev in evs
        ],
        default=str,
        allow_nan=False,
    )


async def append_many(session: AsyncSession, events: Iterable[LogEvent]) -> list[ActionLogEntry]:
    """Like `write_many`, and return the rows: the ones written and, for keys that were
    already logged, the rows as they are (one more SELECT)."""
    evs = list(events)
    if not evs:
        return []
    payload = _payload(evs)
    got: dict[str, ActionLogEntry] = {}
    for r in await session.execute(_INSERT, {"rows": payload}):
        got[r.event_key] = ActionLogEntry(**dict(r._mapping))
    missing = {ev.event_key for ev in evs} - got.keys()
    if missing:
        for e in await session.scalars(
            select(ActionLogEntry).where(ActionLogEntry.event_key.in_(missing))
        ):
            got[e.event_key] = e
    return [got[ev.event_key] for ev in evs]


def _finite(value: Any) -> Any:
    """JSON has no NaN or infinity; PostgreSQL refuses them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# --- checking rows in seq order ------------------------------------------------------------

MAX_KEPT = 1000  # problems kept in full; the rest are only counted


@dataclass(frozen=True)
class ChainProblem:
    seq: int
    reason: str


@dataclass
class ChainVerifier:
    """Feed rows (dicts with HASHED_FIELDS and `hash`) in seq order; every problem is kept
    (up to MAX_KEPT, the rest counted) and checking goes on after each.

    Rows with seq <= `legacy_until` are checked as application-hashed rows, later ones as
    sealed rows; `legacy_until=None` (an export, say) means: application-hashed until the
    first row that is a correct sealed row. `checked` counts rows before the first problem."""

    legacy_until: int | None = None
    checked: int = 0
    problems: list[ChainProblem] = field(default_factory=list)
    problem_count: int = 0
    unsealed: int = 0
    _expected_seq: int = 1
    _prev: str = GENESIS
    _auto: bool = True

    def __post_init__(self) -> None:
        self._auto = self.legacy_until is None

    @property
    def problem(self) -> ChainProblem | None:
        return self.problems[0] if self.problems else None

    def _flag(self, seq: int, reason: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_KEPT:
            self.problems.append(ChainProblem(seq, reason))

    def _sealed(self, seq: int) -> bool:
        return self.legacy_until is not None and seq > self.legacy_until

    def feed(self, row: dict[str, Any]) -> bool:
        """Check one row; False when it (or a gap before it) is a problem. An unsealed row
        (no seq yet) is not part of the chain: it is counted in `unsealed` and skipped."""
        if row["seq"] is None:
            self.unsealed += 1
            return True
        seq = int(row["seq"])
        before = self.problem_count
        after_gap = False
        if seq != self._expected_seq:
            if seq > self._expected_seq:
                gap = (
                    f"{self._expected_seq}"
                    if seq == self._expected_seq + 1
                    else f"{self._expected_seq}..{seq - 1}"
                )
                self._flag(self._expected_seq, f"row(s) {gap} missing")
                after_gap = True
            else:
                self._flag(seq, f"row {seq} out of order")
        if not after_gap and row["prev_hash"] != self._prev:
            self._flag(seq, f"row {seq}: link broken (prev_hash does not match row {seq - 1})")
        if not self._hash_ok(seq, row):
            self._flag(seq, f"row {seq}: content changed (hash mismatch)")
        self._prev = str(row["hash"])
        self._expected_seq = seq + 1
        if self.problem_count == before and not self.problems:
            self.checked += 1
        return self.problem_count == before

    def _hash_ok(self, seq: int, row: dict[str, Any]) -> bool:
        stored = row["hash"]
        if stored is None or row["prev_hash"] is None:
            return False
        if self._auto and self.legacy_until is None:
            try:
                if sealed_hash(row) == stored:
                    self.legacy_until = seq - 1  # the sealed part starts here
                    return True
            except (TypeError, KeyError):
                pass
            return bool(row_hash(row) == stored)
        if self._sealed(seq):
            return bool(sealed_hash(row) == stored)
        return bool(row_hash(row) == stored)


def verify_rows(rows: Iterable[dict[str, Any]]) -> ChainVerifier:
    """Check rows (an export, say) from seq 1; every problem is collected."""
    v = ChainVerifier()
    for row in rows:
        v.feed(row)
    return v
