"""GET /v1/enforcement/stream: the blocks as Server-Sent Events (CONTRACT.md).

Without `Last-Event-ID` (header, or `?last_event_id=` for clients that cannot set headers):

    event: snapshot      data {"head": H, "blocks": n}   reset: what follows is everything
    event: block         data {kind, tenant, target, until, incident_id, technique, action_id}
    ... (n times, no id: a client cut off mid-snapshot resumes with a fresh snapshot)
    event: synced        id: H   data {"head": H}
    event: block|lift    id: seq ...                      every change as it commits

With `Last-Event-ID: N` the changes after N are replayed from `enforcement_changes` (the
ids are the commit-ordered `seq` of that table, the same in every API process and across
restarts, so a client may resume on another process), then `synced`, then live changes;
no snapshot. If N is no longer resumable (older than the retention, or ahead of the
database), a snapshot as above: the `snapshot` event tells the client to reset.

The snapshot and the subscription are taken at one instant from this process's replica,
and a replay covers exactly (N, head at that instant]: no gap, no duplicate.
`event: heartbeat` (data {"head", "stale"}) every `enforcement_stream_heartbeat_seconds`;
`stale: true` means this process's own feed is older than its limit, so a client should not
count the heartbeat as proof that it is current. A client more than
`enforcement_stream_queue` events behind is disconnected; it resumes with its last id.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import psycopg
from fastapi import APIRouter, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from sqlalchemy.exc import SQLAlchemyError

from soar.api.deps import StateDep
from soar.api.response import EnforcementIdentity, enforcement_identity, replica_of
from soar.gateway.table import Block
from soar.replica import CHANGES_SQL, Change, EnforcementReplica, change_from_row, resumable

router = APIRouter(tags=["enforcement"])
_MAX_ID_DIGITS = 19  # bigint
_PAGE = 1000


def _event(name: str, data: dict[str, object], event_id: int | None = None) -> bytes:
    head = f"event: {name}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


def change_event(change: Change) -> bytes:
    return _event(change.op, change.block.as_event(), change.seq)


class _BadId(Exception):
    def __init__(self, field: str) -> None:
        super().__init__(field)
        self.field = field


def _parse_last_id(raw: str | None, field: str) -> int | None:
    if raw is None or raw.strip() == "":
        return None
    value = raw.strip()
    if not value.isascii() or not value.isdigit() or len(value) > _MAX_ID_DIGITS:
        raise _BadId(field)
    return int(value)


async def _replay(replica: EnforcementReplica, after: int, upto: int) -> AsyncIterator[bytes]:
    async with await psycopg.AsyncConnection.connect(
        replica.conninfo, autocommit=True, connect_timeout=5
    ) as conn:
        last = after
        while last < upto:
            rows = await (await conn.execute(CHANGES_SQL, (last, _PAGE))).fetchall()
            changes = [c for c in map(change_from_row, rows) if c.seq <= upto]
            for change in changes:
                yield change_event(change)
                last = change.seq
            if len(rows) < _PAGE or not changes:
                return


async def _can_resume(replica: EnforcementReplica, after: int) -> bool:
    if after > replica.last_seq:
        # A client coming from a process that is a few milliseconds ahead of this one.
        await replica.wait_seq(after, within=2.0)
        if after > replica.last_seq:
            return False
    async with await psycopg.AsyncConnection.connect(
        replica.conninfo, autocommit=True, connect_timeout=5
    ) as conn:
        return await resumable(conn, after)


@router.get("/v1/enforcement/stream", response_model=None)
async def enforcement_stream(
    request: Request, state: StateDep, _: EnforcementIdentity, last_event_id: str | None = None
) -> StreamingResponse | JSONResponse:
    header = request.headers.get("last-event-id")
    try:
        after = _parse_last_id(header, "Last-Event-ID")
        if after is None:
            after = _parse_last_id(last_event_id, "last_event_id")
    except _BadId as bad:
        return JSONResponse(
            {
                "error": "invalid request",
                "errors": [
                    {"field": bad.field, "message": "must be a non-negative integer event id"}
                ],
            },
            status_code=422,
        )
    replica = replica_of(state)
    if replica is None or not replica.loaded:
        raise HTTPException(503, "the enforcement replica is loading", headers={"Retry-After": "2"})
    if after is not None:
        try:
            if not await _can_resume(replica, after):
                after = None
        except psycopg.Error:
            raise HTTPException(
                503, "the database is unavailable; retry later", headers={"Retry-After": "5"}
            ) from None
    got = replica.subscribe()
    if got is None:
        raise HTTPException(503, "too many stream clients", headers={"Retry-After": "5"})
    sub, snap = got
    heartbeat = state.settings.enforcement_stream_heartbeat_seconds
    recheck = max(float(state.settings.enforcement_token_cache_seconds), 1.0)
    loop = asyncio.get_running_loop()
    checked_at = loop.time()

    async def still_allowed() -> bool:
        """The token, verified again once per token cache period: a stream opened with a token
        since disabled (or downgraded) ends, as every other request of it is refused. A
        database error keeps the stream (the replica goes on; the next check tries again)."""
        nonlocal checked_at
        if loop.time() - checked_at < recheck:
            return True
        checked_at = loop.time()
        try:
            await enforcement_identity(request, state)
        except HTTPException:
            return False
        except (OSError, SQLAlchemyError):
            return True
        return True

    async def body() -> AsyncIterator[bytes]:
        try:
            if after is None:
                yield _snapshot_head(snap.head, snap.blocks)
                for block in snap.blocks:
                    yield _event("block", block.as_event())
            else:
                async for chunk in _replay(replica, after, snap.head):
                    yield chunk
            yield _event("synced", {"head": snap.head}, snap.head)
            sent_at = loop.time()
            while True:
                if not await still_allowed():
                    return
                # woken for the next heartbeat or the next token check, whichever comes first
                due = min(sent_at + heartbeat, checked_at + recheck)
                try:
                    item = await asyncio.wait_for(
                        sub.queue.get(), timeout=max(due - loop.time(), 0.01)
                    )
                except TimeoutError:
                    if loop.time() - sent_at >= heartbeat:
                        beat: dict[str, object] = {
                            "head": replica.last_seq,
                            "stale": not replica.fresh,
                        }
                        yield _event("heartbeat", beat)
                        sent_at = loop.time()
                    continue
                if item is None:  # dropped: too far behind, or the replica reset
                    return
                if not await still_allowed():  # the event waited: the token may be gone
                    return
                yield change_event(item)
                sent_at = loop.time()
        except psycopg.Error:
            return  # the replay lost the database: the client resumes from its last id
        finally:
            replica.unsubscribe(sub)

    return StreamingResponse(
        body(),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


def _snapshot_head(head: int, blocks: list[Block]) -> bytes:
    return _event("snapshot", {"head": head, "blocks": len(blocks)})
