"""The enforcement replica and stream against real PostgreSQL (and Temporal for the worker):
commit-ordered change ids, SSE snapshot / changes / resume, bounded subscribers, staleness,
and two API processes seeing a worker-committed block within 100 ms."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
import weakref
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import psycopg
import pytest
from temporalio.client import Client

from soar.replica import EnforcementReplica, libpq_url
from tests.support import (
    ApiServer,
    bearer,
    detection,
    eventually,
    make_settings,
    running_stack,
)

pytestmark = pytest.mark.timeout(90)


def seed(conn: psycopg.Connection[Any], target: str, *, seconds: float | None = 600) -> str:
    """An incident, an action and its block, as the worker writes them (no commit)."""
    inc, act = "inc-" + uuid.uuid4().hex[:12], "act-" + uuid.uuid4().hex[:12]
    now = datetime.now(UTC)
    until = now + timedelta(seconds=seconds) if seconds is not None else None
    conn.execute(
        "INSERT INTO incidents (id, tenant, subject_key, status, workflow_id, technique, "
        "severity, detection_count, opened_at, last_detection_at) "
        "VALUES (%s, 'acme', %s, 'open', %s, 'AML.T0051', 'high', 1, %s, %s)",
        (inc, f"session:{target}:{inc}", "wf-" + inc, now, now),
    )
    conn.execute(
        "INSERT INTO actions (id, incident_id, action_key, action_type, risk, tenant, target, "
        "status, rule, params) VALUES (%s, %s, %s, 'block_session', 'low', 'acme', %s, "
        "'applied', 'r', '{}')",
        (act, inc, "block_session:" + target, target),
    )
    conn.execute(
        "INSERT INTO enforcement_blocks (action_id, kind, tenant, target, incident_id, "
        "technique, created_at, until) VALUES (%s, 'session', 'acme', %s, %s, 'AML.T0051', %s, %s)",
        (act, target, inc, now, until),
    )
    return act


def commit_block(db_url: str, target: str, *, seconds: float | None = 600) -> str:
    with psycopg.connect(libpq_url(db_url)) as conn:
        act = seed(conn, target, seconds=seconds)
    return act


def lift(db_url: str, action_id: str) -> None:
    with psycopg.connect(libpq_url(db_url)) as conn:
        conn.execute(
            "UPDATE enforcement_blocks SET lifted_at = now() WHERE action_id = %s", (action_id,)
        )


def test_change_ids_follow_commit_order_not_start_order(db_url: str) -> None:
    url = libpq_url(db_url)
    with (
        psycopg.connect(url, autocommit=True) as listener,
        psycopg.connect(url) as a,
        psycopg.connect(url) as b,
    ):
        listener.execute("LISTEN enforcement")
        first = seed(a, "s-first")  # A starts first (and would draw the lower bigserial)...
        second = seed(b, "s-second")
        b.commit()  # ...but B commits first
        a.commit()
        rows = listener.execute(
            "SELECT seq, action_id, op FROM enforcement_changes ORDER BY seq"
        ).fetchall()
        assert [r[1] for r in rows] == [second, first]
        assert all(r[2] == "block" for r in rows)
        notes = [int(n.payload) for n in listener.notifies(timeout=2, stop_after=2)]
        assert notes == [r[0] for r in rows]
        # A lift is one more change; an update that is not a lift is none.
        a.execute("UPDATE enforcement_blocks SET lifted_at = now() WHERE action_id = %s", (first,))
        a.execute("UPDATE enforcement_blocks SET lifted_at = now() WHERE action_id = %s", (first,))
        a.commit()
        ops = listener.execute("SELECT op, action_id FROM enforcement_changes ORDER BY seq")
        assert ops.fetchall()[2:] == [("lift", first)]


_LINES: weakref.WeakKeyDictionary[httpx.Response, AsyncIterator[str]] = weakref.WeakKeyDictionary()


async def read_events(resp: httpx.Response, n: int) -> list[tuple[str, str | None, Any]]:
    """The next n events (heartbeats skipped): (event, id, data)."""
    out: list[tuple[str, str | None, Any]] = []
    event, eid, data = "", None, ""
    lines = _LINES.setdefault(resp, resp.aiter_lines())
    while len(out) < n:
        line = await asyncio.wait_for(anext(lines), timeout=10)
        if line == "":
            if event != "heartbeat":
                out.append((event, eid, json.loads(data)))
            event, eid, data = "", None, ""
        elif line.startswith("event: "):
            event = line[7:]
        elif line.startswith("id: "):
            eid = line[4:]
        elif line.startswith("data: "):
            data = line[6:]
    return out


async def test_stream_snapshot_then_changes_and_resume_without_gap(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    before = commit_block(db_url, "s-before")
    async with running_stack(settings, temporal_client, worker=False) as stack:
        stack.api.server.config.timeout_graceful_shutdown = 1
        assert (await stack.http.get("/v1/enforcement/stream")).status_code == 401
        r = await stack.http.get("/v1/enforcement/stream", headers=bearer("auditor"))
        assert r.status_code == 403
        bad = await stack.http.get(
            "/v1/enforcement/stream", headers={**bearer("gateway"), "Last-Event-ID": "12x"}
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "Last-Event-ID"

        async with stack.http.stream(
            "GET", "/v1/enforcement/stream", headers=bearer("gateway")
        ) as resp:
            assert resp.status_code == 200
            assert resp.headers["content-type"].startswith("text/event-stream")
            snap = await read_events(resp, 3)
            assert [e[0] for e in snap] == ["snapshot", "block", "synced"]
            assert snap[1][2] == {
                "kind": "session",
                "tenant": "acme",
                "target": "s-before",
                "until": snap[1][2]["until"],
                "incident_id": snap[1][2]["incident_id"],
                "technique": "AML.T0051",
                "action_id": before,
            }
            head = int(snap[2][1] or 0)
            added = await asyncio.to_thread(commit_block, db_url, "s-live")
            await asyncio.to_thread(lift, db_url, before)
            live = await read_events(resp, 2)
            assert [(e[0], e[2]["action_id"]) for e in live] == [("block", added), ("lift", before)]
            ids = [int(e[1] or 0) for e in live]
            assert head < ids[0] < ids[1]
        # Served from memory: the check sees the live block, not the lifted one.
        assert (await stack.enforcement("sessions", "s-live"))["blocked"]
        assert not (await stack.enforcement("sessions", "s-before"))["blocked"]

        missed = await asyncio.to_thread(commit_block, db_url, "s-missed")
        async with stack.http.stream(
            "GET",
            "/v1/enforcement/stream",
            headers={**bearer("gateway"), "Last-Event-ID": str(ids[0])},
        ) as resp:
            resumed = await read_events(resp, 3)
        # Replayed from the table, or live if this replica had not applied it yet: in order,
        # once each, and never a snapshot.
        changes = [(e[0], e[2]["action_id"]) for e in resumed if e[0] != "synced"]
        assert changes == [("lift", before), ("block", missed)]
        assert [e[0] for e in resumed].count("synced") == 1
        # An id from a database that never had it: a snapshot, which says to reset.
        async with stack.http.stream(
            "GET",
            "/v1/enforcement/stream",
            params={"last_event_id": "99999999"},
            headers=bearer("gateway"),
        ) as resp:
            fresh = await read_events(resp, 4)
        assert fresh[0][0] == "snapshot" and fresh[0][2]["blocks"] == 2
        assert {e[2]["action_id"] for e in fresh[1:3]} == {added, missed}

        # An id as a gateway reads it from a request is looked up as the intake stores it.
        from soar.bounds import canonical_id

        await asyncio.to_thread(commit_block, db_url, canonical_id("a\tb") or "")
        await eventually(lambda: _blocked(stack, "a%09b"), timeout=3, interval=0.05)
        assert (await stack.enforcement("sessions", " s-live "))["blocked"]

        # Expiry is evaluated locally: nothing is written when a 1 s block runs out.
        await asyncio.to_thread(commit_block, db_url, "s-short", seconds=1.0)
        await eventually(lambda: _blocked(stack, "s-short"), timeout=2, interval=0.01)
        await eventually(lambda: _unblocked(stack, "s-short"), timeout=3, interval=0.05)


async def _blocked(stack: Any, target: str) -> bool:
    return bool((await stack.enforcement("sessions", target))["blocked"])


async def _unblocked(stack: Any, target: str) -> bool:
    return not (await stack.enforcement("sessions", target))["blocked"]


async def test_slow_subscriber_is_dropped_and_stale_feed_is_reported(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    replica = EnforcementReplica(libpq_url(db_url), queue_size=10)
    replica.start()
    try:
        assert await replica.wait_loaded(within=5)
        got = replica.subscribe()
        assert got is not None
        sub, snap = got
        with psycopg.connect(libpq_url(db_url)) as conn:
            for i in range(15):
                seed(conn, f"s-flood-{i}")
        assert await replica.wait_seq(snap.head + 15, within=5)
        assert sub.dropped and replica.subscribers == 0
        assert sub.queue.qsize() == 1 and sub.queue.get_nowait() is None  # memory let go
        assert len(replica.table) == 15
    finally:
        await replica.stop()

    # A feed probed every 3 s with a 1 s limit goes stale between probes: /readyz says so,
    # and the check is answered from the database meanwhile.
    settings = make_settings(
        db_url,
        temporal_address,
        task_queue,
        enforcement_poll_seconds=3.0,
        enforcement_max_staleness_seconds=1.0,
    )
    async with running_stack(settings, temporal_client, worker=False) as stack:

        async def stale() -> dict[str, Any] | None:
            r = await stack.http.get("/readyz")
            body: dict[str, Any] = r.json()
            return body if r.status_code == 503 else None

        body = await eventually(stale, timeout=5, interval=0.1)
        assert body["checks"]["enforcement"].startswith("stale: feed")
        assert body["checks"]["database"] == "ok"
        assert (await stack.enforcement("sessions", "s-flood-3"))["blocked"]


@pytest.fixture
async def notifications(db_url: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
    conn = await psycopg.AsyncConnection.connect(libpq_url(db_url), autocommit=True)
    await conn.execute("LISTEN enforcement")
    yield conn
    await conn.close()


async def test_two_api_processes_answer_a_worker_block_within_100ms(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    notifications: psycopg.AsyncConnection[Any],
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    second = ApiServer(make_settings(db_url, temporal_address, task_queue))
    await asyncio.to_thread(second.start)
    try:
        async with (
            running_stack(settings, temporal_client) as stack,
            httpx.AsyncClient(base_url=second.url, timeout=5) as other,
        ):
            r = await stack.post_detection(detection(subject={"tenant": "acme", "session": "s-2"}))
            assert r.status_code == 202, r.text
            # The commit instant: the notification is delivered when the worker commits.
            async for _ in notifications.notifies(timeout=15, stop_after=1):
                committed = time.monotonic()
            seen = await asyncio.gather(_first_blocked(stack.http), _first_blocked(other))
            # Both replicas answer from memory right after the commit. The 100 ms target is
            # a figure of bench/enforcement.py; here, on a loaded CI machine, a bound that
            # only a replica not fed by LISTEN/NOTIFY (reconciling every 60 s) would miss.
            assert all(t - committed <= 1.0 for t in seen), [t - committed for t in seen]
    finally:
        await asyncio.to_thread(second.stop)


async def _first_blocked(http: httpx.AsyncClient) -> float:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        r = await http.get(
            "/v1/enforcement/sessions/s-2", params={"tenant": "acme"}, headers=bearer("gateway")
        )
        if r.json()["blocked"]:
            return time.monotonic()
        await asyncio.sleep(0.002)
    raise AssertionError("never blocked")


async def test_a_stream_ends_when_its_token_is_disabled(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    """The token was checked once, at connect: a gateway token disabled since kept receiving
    every tenant's blocked users and API keys for as long as the stream stayed open."""
    from soar.auth import token_hash
    from tests.support import TOKENS

    settings = make_settings(
        db_url,
        temporal_address,
        task_queue,
        enforcement_token_cache_seconds=0.5,
        enforcement_stream_heartbeat_seconds=0.2,
    )
    digest = token_hash(TOKENS["gateway"])
    async with running_stack(settings, temporal_client, worker=False) as stack:
        stack.api.server.config.timeout_graceful_shutdown = 1
        async with stack.http.stream(
            "GET", "/v1/enforcement/stream", headers=bearer("gateway")
        ) as resp:
            assert resp.status_code == 200
            await read_events(resp, 2)  # snapshot ... synced (no block needed)
            try:
                with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
                    conn.execute(
                        "UPDATE principals SET disabled = true WHERE token_hash = %s", (digest,)
                    )

                async def ended() -> None:
                    async for _ in _LINES[resp]:
                        pass

                await asyncio.wait_for(ended(), timeout=5)
            finally:
                with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
                    conn.execute(
                        "UPDATE principals SET disabled = false WHERE token_hash = %s", (digest,)
                    )
