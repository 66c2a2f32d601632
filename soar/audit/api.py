"""Auditors' HTTP API: search and export the action log, verify the chain, reports.

Roles `auditor` and `admin` only. Bad input is a 422 naming the parameter, in the same shape
as every other validation error of the API.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from fastapi.responses import JSONResponse, Response, StreamingResponse

from soar.api.deps import SessionDep, StateDep, require_roles
from soar.audit import formats, query
from soar.audit.verify import averify_chain
from soar.bounds import check_query_datetime, invalid

router = APIRouter(tags=["audit"])
_READ = require_roles("auditor", "admin")
DEFAULT_REPORT_DAYS = 30

Format = Literal["json", "jsonl", "csv", "ocsf"]
Text = Annotated[str | None, Query(max_length=300)]


def _filters(**values: Any) -> query.AuditFilter:
    try:
        return query.AuditFilter(**values)
    except query.AuditQueryError as exc:
        raise invalid(exc.field, exc.message) from None


@router.get("/v1/audit", dependencies=[_READ])
async def audit_log(
    state: StateDep,
    session: SessionDep,
    incident_id: Text = None,
    technique: Text = None,
    tactic: Text = None,
    subject: Text = None,
    actor: Text = None,
    action: Text = None,
    outcome: Text = None,
    event: Text = None,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
    limit: Annotated[int | None, Query(ge=1, le=query.MAX_LIMIT)] = None,
    fmt: Annotated[Format, Query(alias="format")] = "json",
) -> Response:
    """The action log in seq order. `format=json` answers one page (`limit`, default 100) with
    `next_cursor`; `jsonl`, `csv` and `ocsf` (one OCSF event per line) stream every matching
    row, or one page when `limit` is given, with the next cursor in `X-Next-Cursor`."""
    f = _filters(
        incident_id=incident_id,
        technique=technique,
        tactic=tactic,
        subject=subject,
        actor=actor,
        action=action,
        outcome=outcome,
        event=event,
        since=check_query_datetime(since, "since"),
        until=check_query_datetime(until, "until"),
    )
    names = await query.catalog_names(session) if fmt == "ocsf" else None
    try:
        after = query.decode_cursor(cursor, f) if cursor else None
        page = (
            await query.search(
                session, filters=f, cursor=cursor, limit=limit or query.DEFAULT_LIMIT
            )
            if fmt == "json" or limit is not None
            else None
        )
    except query.AuditQueryError as exc:
        raise invalid(exc.field, exc.message) from None
    if page is not None:
        if fmt == "json":
            return JSONResponse(
                formats.json_page(page.items, page.next_cursor, limit or query.DEFAULT_LIMIT)
            )
        headers = {"X-Next-Cursor": page.next_cursor} if page.next_cursor else {}
        body = "".join(formats.render_lines(fmt, page.items, names))
        return Response(body, media_type=formats.MEDIA_TYPES[fmt], headers=headers)

    async def rows() -> AsyncIterator[str]:
        # Its own session: the request's is closed by the time the body is sent.
        async with state.factory() as s:
            conn = await s.connection()
            async for chunk in formats.arender_chunks(
                fmt, query.stream(conn, filters=f, after_seq=after), names
            ):
                yield chunk

    ext = "csv" if fmt == "csv" else "jsonl"
    return StreamingResponse(
        rows(),
        media_type=formats.MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="atlas-soar-audit-{fmt}.{ext}"'},
    )


@router.get("/v1/audit/verify", dependencies=[_READ])
async def audit_verify(state: StateDep) -> JSONResponse:
    """Walk the whole chain. 200 `{"ok": true, "rows"}`, or 409 naming the first bad row."""
    async with state.factory() as s:
        conn = await s.connection()
        result = await averify_chain(conn)
    return JSONResponse(result.as_dict(), status_code=200 if result.ok else 409)


def _period(since: datetime | None, until: datetime | None) -> tuple[datetime, datetime]:
    """The report's [start, end) in UTC; both bounds inside the query window, so neither the
    default period nor the conversion to UTC can overflow."""
    end = check_query_datetime(until, "until") or datetime.now(UTC)
    start = check_query_datetime(since, "since") or end - timedelta(days=DEFAULT_REPORT_DAYS)
    if start >= end:
        raise invalid("until", "must be later than since")
    return start, end


Since = Annotated[
    datetime | None, Query(description=f"inclusive; default {DEFAULT_REPORT_DAYS} days ago")
]
Until = Annotated[datetime | None, Query(description="exclusive; default now")]


@router.get("/v1/reports/summary", dependencies=[_READ])
async def report_summary(
    session: SessionDep, since: Since = None, until: Until = None
) -> dict[str, Any]:
    """Detections, incidents, blocks applied, approvals, per technique and per tactic, with
    time to contain and time to decision (p50/p95, seconds)."""
    start, end = _period(since, until)
    names = await query.catalog_names(session)
    return await query.summary(session, since=start, until=end, names=names)


@router.get("/v1/reports/atlas-layer", dependencies=[_READ])
async def report_atlas_layer(
    session: SessionDep, since: Since = None, until: Until = None
) -> dict[str, Any]:
    """An ATLAS Navigator layer: techniques scored by detections in the period."""
    start, end = _period(since, until)
    names = await query.catalog_names(session)
    report = await query.summary(session, since=start, until=end, names=names)
    counts = {
        row["technique"]: {k: row[k] for k in ("detections", "incidents", "blocks_applied")}
        for row in report["by_technique"]
    }
    return formats.navigator_layer(counts, names, since=start, until=end)
