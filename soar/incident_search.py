"""Searching incidents (API and web UI): filters and keyset pages with an opaque cursor.

Newest first by `opened_at`, ties by id. A cursor is the last row's (opened_at, id), so a
page never repeats or skips a row while new incidents open."""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

from sqlalchemy import and_, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from soar.bounds import (
    EARLIEST,
    LIKE_ESCAPE,
    QUERY_LATEST,
    has_unsafe_chars,
    like_contains,
    like_prefix,
)
from soar.domain import DISPOSITIONS, Severity
from soar.models import AtlasTechnique, AtlasTechniqueTactic, Incident

STATUSES = ("open", "closed")
# "none": closed (or open) without a disposition.
DISPOSITION_FILTERS = (*DISPOSITIONS, "none")
SEVERITIES = tuple(s.value for s in Severity)
MAX_LIMIT = 500


class SearchError(ValueError):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


@dataclass(frozen=True)
class IncidentFilter:
    subject: str = ""  # part of the subject key
    technique: str = ""  # a prefix: a parent matches its sub-techniques
    tactic: str = ""  # an ATLAS tactic id
    severity: str = ""
    status: str = ""
    disposition: str = ""
    since: datetime | None = None  # opened at or after
    until: datetime | None = None  # opened before

    def check(self) -> None:
        if self.status and self.status not in STATUSES:
            raise SearchError("status", f"one of {', '.join(STATUSES)}")
        if self.severity and self.severity not in SEVERITIES:
            raise SearchError("severity", f"one of {', '.join(SEVERITIES)}")
        if self.disposition and self.disposition not in DISPOSITION_FILTERS:
            raise SearchError("disposition", f"one of {', '.join(DISPOSITION_FILTERS)}")
        for name, value in (("technique", self.technique), ("tactic", self.tactic)):
            # Matched as text (LIKE-escaped): anything else simply matches nothing.
            if len(value) > 32 or any(ord(c) < 32 or c == "\x7f" for c in value):
                raise SearchError(name, "at most 32 characters, no control characters")
        if len(self.subject) > 300 or any(ord(c) < 32 or c == "\x7f" for c in self.subject):
            raise SearchError("subject", "at most 300 characters, no control characters")
        if self.since and self.until and self.since >= self.until:
            raise SearchError("until", "must be later than since")

    def params(self) -> dict[str, str]:
        """The filters as query parameters (for the next page's link)."""
        out = {
            k: v
            for k, v in (
                ("subject", self.subject),
                ("technique", self.technique),
                ("tactic", self.tactic),
                ("severity", self.severity),
                ("status", self.status),
                ("disposition", self.disposition),
            )
            if v
        }
        if self.since:
            out["since"] = self.since.isoformat()
        if self.until:
            out["until"] = self.until.isoformat()
        return out


def encode_cursor(inc: Incident) -> str:
    raw = json.dumps([inc.opened_at.isoformat(), inc.id]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A cursor we issue is about 70 characters.
MAX_CURSOR_CHARS = 512


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """The (opened_at, id) to continue after. Anything else is a SearchError: a forged id with
    NUL or a lone surrogate would fail in PostgreSQL (a 500), "[[[[..." in json (recursion)."""
    try:
        text = cursor.strip()
        if len(text) > MAX_CURSOR_CHARS:
            raise ValueError
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        at, iid = json.loads(raw)
        when = datetime.fromisoformat(at)
        if not isinstance(iid, str) or when.tzinfo is None or len(iid) > 80:
            raise ValueError
        if has_unsafe_chars(iid):
            raise ValueError
        when = when.astimezone(UTC)  # (OverflowError near the ends of the datetime range)
        if not EARLIEST <= when <= QUERY_LATEST:
            raise ValueError
    except (ValueError, TypeError, OverflowError, RecursionError):
        raise SearchError("cursor", "malformed cursor") from None
    return when, iid


@dataclass(frozen=True)
class IncidentPage:
    incidents: list[Incident]
    next_cursor: str | None

    def next_link(self, base: str, f: IncidentFilter, limit: int) -> str | None:
        if self.next_cursor is None:
            return None
        query = {**f.params(), "limit": str(limit), "cursor": self.next_cursor}
        return f"{base}?{urlencode(query, quote_via=quote)}"


async def search_incidents(
    session: AsyncSession, f: IncidentFilter, *, limit: int = 50, cursor: str | None = None
) -> IncidentPage:
    f.check()
    limit = max(1, min(limit, MAX_LIMIT))
    q: Any = select(Incident).order_by(Incident.opened_at.desc(), Incident.id.desc())
    if f.status:
        q = q.where(Incident.status == f.status)
    if f.severity:
        q = q.where(Incident.severity == f.severity)
    if f.disposition == "none":
        q = q.where(Incident.disposition.is_(None))
    elif f.disposition:
        q = q.where(Incident.disposition == f.disposition)
    if f.technique:
        q = q.where(Incident.technique.like(like_prefix(f.technique.upper()), escape=LIKE_ESCAPE))
    if f.subject:
        q = q.where(Incident.subject_key.like(like_contains(f.subject), escape=LIKE_ESCAPE))
    if f.tactic:
        # A technique is under a tactic itself or through its parent (sub-techniques).
        linked = select(AtlasTechniqueTactic.technique_id).where(
            AtlasTechniqueTactic.tactic_id == f.tactic.upper()
        )
        children = select(AtlasTechnique.id).where(AtlasTechnique.parent_id.in_(linked))
        q = q.where(or_(Incident.technique.in_(linked), Incident.technique.in_(children)))
    if f.since:
        q = q.where(Incident.opened_at >= f.since)
    if f.until:
        q = q.where(Incident.opened_at < f.until)
    if cursor:
        at, iid = decode_cursor(cursor)
        q = q.where(or_(Incident.opened_at < at, and_(Incident.opened_at == at, Incident.id < iid)))
    rows = list((await session.scalars(q.limit(limit + 1))).all())
    more = len(rows) > limit
    rows = rows[:limit]
    return IncidentPage(rows, encode_cursor(rows[-1]) if more and rows else None)


def temporal_run_url(ui: str, namespace: str, workflow_id: str) -> str:
    """The incident's workflow in Temporal's web UI (its latest run)."""
    return f"{ui.rstrip('/')}/namespaces/{quote(namespace, safe='')}/workflows/" + quote(
        workflow_id, safe=""
    )
