"""Searching the action log: filters, keyset pages with an opaque cursor, streamed exports.

Rows come back as plain dicts keyed by column name, ordered by `seq`. A cursor is the last
`seq` of a page bound to a fingerprint of the filters it was issued for, so it cannot be
replayed against another query (that would silently skip or repeat rows).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Connection,
    Select,
    Text,
    cast,
    false,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from soar.bounds import LIKE_ESCAPE, like_prefix, query_datetime_error, to_utc
from soar.models import ActionLogEntry, AtlasTactic, AtlasTechnique, AtlasTechniqueTactic

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
STREAM_BATCH = 2000

LogRow = dict[str, Any]

_T = ActionLogEntry.__table__.c
COLUMNS: tuple[str, ...] = (
    "seq",
    "at",
    "event_key",
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
    "hash",
)
# `details` is read as text and parsed here: psycopg's JSONB loader spends as long sniffing the
# encoding of each value as parsing it, and this is most of the cost of a page.
_SELECTED = [cast(_T[n], Text).label(n) if n == "details" else _T[n] for n in COLUMNS]
_DETAILS = COLUMNS.index("details")


class AuditQueryError(ValueError):
    """Bad input to a log query; `field` names the parameter at fault."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class AuditFilter:
    """What to look for. All given filters must hold. `technique` also matches its
    sub-techniques (AML.T0051 matches AML.T0051.000); `since` is inclusive, `until` exclusive."""

    incident_id: str | None = None
    technique: str | None = None
    tactic: str | None = None
    subject: str | None = None
    actor: str | None = None
    action: str | None = None
    outcome: str | None = None
    event: str | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, str) and "\x00" in value:
                raise AuditQueryError(f.name, "must not contain NUL characters")
        for name in ("technique", "tactic"):
            value = getattr(self, name)
            if value is not None:
                # ATLAS IDs are upper case; accept what people type.
                object.__setattr__(self, name, value.strip().upper() or None)
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is None:
                continue
            # Out of the window, converting to UTC (the fingerprint, the SQL) could overflow.
            message = query_datetime_error(value)
            if message is not None:
                raise AuditQueryError(name, message)
            object.__setattr__(self, name, to_utc(value))
        if self.since and self.until and self.since >= self.until:
            raise AuditQueryError("until", "must be later than since")

    def as_params(self) -> dict[str, str]:
        """The filters that are set, as strings (for fingerprints and query strings)."""
        out: dict[str, str] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            out[f.name] = (
                value.astimezone(UTC).isoformat() if isinstance(value, datetime) else str(value)
            )
        return out

    def fingerprint(self) -> str:
        raw = json.dumps(self.as_params(), sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(raw).hexdigest()[:16]


def conditions(f: AuditFilter, *, family: Sequence[str] | None = None) -> list[ColumnElement[bool]]:
    """WHERE clauses for `f`. `family`, when given, is the technique and every sub-technique
    of it present in the log (see `technique_family`): the same rows as the LIKE, but the
    (technique, at) index can find them."""
    where: list[ColumnElement[bool]] = []
    for name in ("incident_id", "tactic", "subject", "actor", "action", "outcome", "event"):
        value = getattr(f, name)
        if value is not None:
            where.append(_T[name] == value)
    if f.technique is not None and family is not None:
        where.append(_T.technique.in_(family) if family else false())
    elif f.technique is not None:
        sub = _T.technique.like(like_prefix(f.technique + "."), escape=LIKE_ESCAPE)
        where.append(or_(_T.technique == f.technique, sub))
    if f.since is not None:
        where.append(_T.at >= f.since)
    if f.until is not None:
        where.append(_T.at < f.until)
    return where


# Every distinct technique in the log, one index probe each (a "loose index scan"): a handful
# of probes, and correct under any collation since it only walks the index order.
_DISTINCT_TECHNIQUES = text(
    "WITH RECURSIVE t(v) AS ("
    " (SELECT technique FROM action_log WHERE technique IS NOT NULL ORDER BY technique LIMIT 1)"
    " UNION ALL"
    " SELECT (SELECT technique FROM action_log WHERE technique > t.v ORDER BY technique LIMIT 1)"
    " FROM t WHERE t.v IS NOT NULL"
    ") SELECT v FROM t WHERE v IS NOT NULL"
)


async def technique_family(db: AsyncSession | AsyncConnection, technique: str) -> list[str]:
    """`technique` and its sub-techniques, as far as they occur in the log."""
    values = (await db.execute(_DISTINCT_TECHNIQUES)).scalars()
    return [v for v in values if v == technique or v.startswith(technique + ".")]


def log_select(
    f: AuditFilter,
    *,
    after_seq: int | None = None,
    limit: int | None = None,
    family: Sequence[str] | None = None,
) -> Select[Any]:
    """The query for rows matching `f` after `after_seq`, in seq order."""
    where = conditions(f, family=family)
    where.append(_T.seq.is_not(None))  # sealed rows only: seq is the order auditors page by
    if after_seq is not None:
        where.append(_T.seq > after_seq)
    if limit is not None and f.incident_id is None and (f.since or f.until):
        # Costing a LIMIT, the planner likes to walk the primary key (already in seq order)
        # and filter, assuming matches are spread evenly over it. Rows of a time window are
        # not: they sit together, often far from the start, and that walk reads most of the
        # table. So collect the window's matches first (the planner picks the at / technique /
        # tactic / actor index), then take the page by seq: the cost follows the size of the
        # window, not of the log. An incident's rows are few and its (incident_id, seq) index
        # is in seq order already.
        matches = select(_T.seq).where(*where).cte("matches").prefix_with("MATERIALIZED")
        page = select(matches.c.seq).order_by(matches.c.seq).limit(limit)
        return select(*_SELECTED).where(_T.seq.in_(page)).order_by(_T.seq)
    stmt = select(*_SELECTED).where(*where).order_by(_T.seq)
    return stmt.limit(limit) if limit is not None else stmt


# --- cursors -----------------------------------------------------------------------------------


def encode_cursor(last_seq: int, f: AuditFilter) -> str:
    raw = json.dumps({"v": 1, "after": last_seq, "f": f.fingerprint()}, separators=(",", ":"))
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


# A cursor we issue is about 80 characters; anything much longer is not one of ours (and an
# attacker's "[[[[..." would make the JSON parser recurse until RecursionError).
MAX_CURSOR_CHARS = 512


def decode_cursor(cursor: str, f: AuditFilter) -> int:
    """The `seq` to continue after; refuses a malformed cursor or one issued for other filters."""
    try:
        raw = cursor.strip()
        if len(raw) > MAX_CURSOR_CHARS:
            raise ValueError
        padded = raw + "=" * (-len(raw) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        after, fp = data["after"], data["f"]
        if data.get("v") != 1 or not isinstance(after, int) or not 0 <= after < 2**63:
            raise ValueError
    except (ValueError, KeyError, TypeError, binascii.Error, RecursionError):
        # UnicodeDecodeError and an integer over Python's digit limit are ValueErrors too
        raise AuditQueryError("cursor", "malformed cursor") from None
    if fp != f.fingerprint():
        raise AuditQueryError(
            "cursor",
            "this cursor belongs to a query with other filters; repeat the same filters "
            "or start again without a cursor",
        )
    return int(after)


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise AuditQueryError("limit", f"must be between 1 and {MAX_LIMIT}")
    return limit


# --- running them ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AuditPage:
    items: list[LogRow]
    next_cursor: str | None


def as_row(values: Any) -> LogRow:
    row = dict(zip(COLUMNS, values, strict=True))
    row["details"] = json.loads(values[_DETAILS])
    return row


async def search(
    session: AsyncSession,
    *,
    filters: AuditFilter,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> AuditPage:
    """One page of matching rows; `next_cursor` is None on the last page."""
    check_limit(limit)
    after = decode_cursor(cursor, filters) if cursor else None
    family = await technique_family(session, filters.technique) if filters.technique else None
    stmt = log_select(filters, after_seq=after, limit=limit + 1, family=family)
    result = await session.execute(stmt)
    rows = [as_row(r) for r in result.all()]
    more = len(rows) > limit
    items = rows[:limit]
    next_cursor = encode_cursor(items[-1]["seq"], filters) if more else None
    return AuditPage(items=items, next_cursor=next_cursor)


async def stream(
    conn: AsyncConnection,
    *,
    filters: AuditFilter,
    after_seq: int | None = None,
    batch: int = STREAM_BATCH,
) -> AsyncIterator[LogRow]:
    """Every matching row, read through a server-side cursor `batch` rows at a time: memory
    stays flat however large the export."""
    stmt = log_select(filters, after_seq=after_seq).execution_options(yield_per=batch)
    result = await conn.stream(stmt)
    try:
        async for part in result.partitions():
            for r in part:
                yield as_row(r)
    finally:
        await result.close()


def stream_sync(
    conn: Connection,
    *,
    filters: AuditFilter,
    after_seq: int | None = None,
    batch: int = STREAM_BATCH,
) -> Iterator[LogRow]:
    stmt = log_select(filters, after_seq=after_seq).execution_options(yield_per=batch)
    result = conn.execute(stmt)
    try:
        for part in result.partitions():
            for r in part:
                yield as_row(r)
    finally:
        result.close()


# --- the catalog, for names in exports ---------------------------------------------------------


@dataclass(frozen=True)
class CatalogNames:
    """ATLAS names and links needed to describe log rows; loaded once per export."""

    version: str
    techniques: dict[str, tuple[str, str | None]]  # id -> (name, parent id)
    tactics: dict[str, str]  # id -> name
    tactics_of: dict[str, tuple[str, ...]]  # technique id -> tactic ids


async def catalog_names(session: AsyncSession) -> CatalogNames:
    from soar.atlas.store import catalog_version

    version = await catalog_version(session)
    techniques = {
        r[0]: (r[1], r[2])
        for r in await session.execute(
            select(AtlasTechnique.id, AtlasTechnique.name, AtlasTechnique.parent_id)
        )
    }
    tactics = {r[0]: r[1] for r in await session.execute(select(AtlasTactic.id, AtlasTactic.name))}
    links: dict[str, list[str]] = {}
    for tech, tac in await session.execute(
        select(AtlasTechniqueTactic.technique_id, AtlasTechniqueTactic.tactic_id).order_by(
            AtlasTechniqueTactic.technique_id, AtlasTechniqueTactic.tactic_id
        )
    ):
        links.setdefault(tech, []).append(tac)
    return CatalogNames(
        version=version,
        techniques=techniques,
        tactics=tactics,
        tactics_of={k: tuple(v) for k, v in links.items()},
    )


# --- the summary report ------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont)."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return round(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo), 3)


def durations(values: list[float]) -> dict[str, Any]:
    return {"count": len(values), "p50": percentile(values, 0.5), "p95": percentile(values, 0.95)}


_APPROVAL_STATES = ("approved", "rejected", "expired", "pending")


# How analysts closed the incidents ("undetermined": not said, or still open).
_DISPOSITIONS = ("true_positive", "false_positive", "benign", "undetermined")


def _bucket() -> dict[str, Any]:
    return {
        "detections": 0,
        "incidents": 0,
        "dispositions": dict.fromkeys(_DISPOSITIONS, 0),
        "blocks_applied": 0,
        "approvals": dict.fromkeys(_APPROVAL_STATES, 0),
        "_ttc": [],
        "_ttd": [],
    }


async def summary(
    session: AsyncSession, *, since: datetime, until: datetime, names: CatalogNames
) -> dict[str, Any]:
    """Counts and response times for [since, until). Detections count by when they were
    received, incidents by when they opened, blocks by when they were applied, approvals by
    when they were requested. Time to contain: an incident's first detection received until its
    first enforcement action applied. Time to decision: approval requested until decided.
    A technique with several tactics counts under each of them in `by_tactic`."""
    from soar.actions import enforcement_types
    from soar.models import Action, Approval, Detection, Incident

    if since >= until:
        raise AuditQueryError("until", "must be later than since")
    enforcement = sorted(enforcement_types())
    per: dict[str, dict[str, Any]] = {}

    def bucket(technique: str) -> dict[str, Any]:
        return per.setdefault(technique, _bucket())

    det = await session.execute(
        select(Detection.technique, func.count())
        .where(Detection.received_at >= since, Detection.received_at < until)
        .group_by(Detection.technique)
    )
    for technique, n in det:
        bucket(technique)["detections"] += n
    inc = await session.execute(
        select(Incident.technique, Incident.disposition, func.count())
        .where(Incident.opened_at >= since, Incident.opened_at < until)
        .group_by(Incident.technique, Incident.disposition)
    )
    for technique, disposition, n in inc:
        b = bucket(technique)
        b["incidents"] += n
        key = disposition if disposition in _DISPOSITIONS else "undetermined"
        b["dispositions"][key] += n
    blocks_by_action: dict[str, int] = {}
    blk = await session.execute(
        select(Incident.technique, Action.action_type, func.count())
        .join(Incident, Incident.id == Action.incident_id)
        .where(
            Action.applied_at >= since,
            Action.applied_at < until,
            Action.action_type.in_(enforcement),
        )
        .group_by(Incident.technique, Action.action_type)
    )
    for technique, action_type, n in blk:
        bucket(technique)["blocks_applied"] += n
        blocks_by_action[action_type] = blocks_by_action.get(action_type, 0) + n
    appr = await session.execute(
        select(Incident.technique, Approval.status, func.count())
        .join(Incident, Incident.id == Approval.incident_id)
        .where(Approval.requested_at >= since, Approval.requested_at < until)
        .group_by(Incident.technique, Approval.status)
    )
    for technique, status, n in appr:
        approvals = bucket(technique)["approvals"]
        approvals[status] = approvals.get(status, 0) + n

    first_detection = (
        select(func.min(Detection.received_at))
        .where(Detection.incident_id == Incident.id)
        .scalar_subquery()
    )
    first_block = (
        select(func.min(Action.applied_at))
        .where(
            Action.incident_id == Incident.id,
            Action.action_type.in_(enforcement),
            Action.applied_at.is_not(None),
        )
        .scalar_subquery()
    )
    contain = await session.execute(
        select(Incident.technique, func.extract("epoch", first_block - first_detection)).where(
            Incident.opened_at >= since, Incident.opened_at < until
        )
    )
    for technique, seconds in contain:
        if seconds is not None:
            bucket(technique)["_ttc"].append(max(float(seconds), 0.0))
    decide = await session.execute(
        select(
            Incident.technique, func.extract("epoch", Approval.decided_at - Approval.requested_at)
        )
        .join(Incident, Incident.id == Approval.incident_id)
        .where(
            Approval.requested_at >= since,
            Approval.requested_at < until,
            Approval.decided_at.is_not(None),
            Approval.status.in_(("approved", "rejected")),
        )
    )
    for technique, seconds in decide:
        if seconds is not None:
            bucket(technique)["_ttd"].append(max(float(seconds), 0.0))

    by_tactic: dict[str, dict[str, Any]] = {}
    total = _bucket()
    for technique, b in per.items():
        targets = [total] + [
            by_tactic.setdefault(tac, _bucket()) for tac in names.tactics_of.get(technique, ())
        ]
        for t in targets:
            _add(t, b)
    return {
        "since": since.astimezone(UTC).isoformat(),
        "until": until.astimezone(UTC).isoformat(),
        "catalog_version": names.version,
        "totals": {**_public(total), "blocks_by_action": dict(sorted(blocks_by_action.items()))},
        "by_technique": [
            {"technique": t, "name": names.techniques.get(t, (None, None))[0], **_public(b)}
            for t, b in sorted(per.items(), key=lambda kv: (-kv[1]["detections"], kv[0]))
        ],
        "by_tactic": [
            {"tactic": t, "name": names.tactics.get(t), **_public(b)}
            for t, b in sorted(by_tactic.items(), key=lambda kv: (-kv[1]["detections"], kv[0]))
        ],
    }


def _add(into: dict[str, Any], b: dict[str, Any]) -> None:
    for k in ("detections", "incidents", "blocks_applied"):
        into[k] += b[k]
    for k, v in b["approvals"].items():
        into["approvals"][k] = into["approvals"].get(k, 0) + v
    for k, v in b["dispositions"].items():
        into["dispositions"][k] = into["dispositions"].get(k, 0) + v
    into["_ttc"].extend(b["_ttc"])
    into["_ttd"].extend(b["_ttd"])


def _public(b: dict[str, Any]) -> dict[str, Any]:
    return {
        "detections": b["detections"],
        "incidents": b["incidents"],
        "dispositions": b["dispositions"],
        "blocks_applied": b["blocks_applied"],
        "approvals": b["approvals"],
        "time_to_contain_seconds": durations(b["_ttc"]),
        "time_to_decision_seconds": durations(b["_ttd"]),
    }
