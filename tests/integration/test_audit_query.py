"""Searching a 100k-row action log: every filter combination against plain SQL, keyset paging,
cursors bound to their filters, streamed exports."""

from __future__ import annotations

import csv
import io
import itertools
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from bench.audit import copy_rows, synthetic_rows
from soar.audit import query
from soar.audit.query import AuditFilter, AuditQueryError
from soar.db import make_async_engine, make_sync_engine, session_factory

pytestmark = pytest.mark.timeout(240)

ROWS = 100_000

# The filters the API documents, each as plain SQL (what an auditor would type in psql).
SQL_FOR = {
    "incident_id": "incident_id = %(incident_id)s",
    "technique": "(technique = %(technique)s OR technique LIKE %(technique)s || '.%%')",
    "tactic": "tactic = %(tactic)s",
    "subject": "subject = %(subject)s",
    "actor": "actor = %(actor)s",
    "action": "action = %(action)s",
    "outcome": "outcome = %(outcome)s",
    "event": "event = %(event)s",
    "since": "at >= %(since)s",
    "until": "at < %(until)s",
}


@pytest.fixture(scope="module")
def log_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A migrated database holding a 100k-row chained log, shared by this module's tests."""
    name = "audit_q_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name} TEMPLATE {template_db}")
    url = pg_server.rsplit("/", 1)[0] + f"/{name}"
    copy_rows(url, synthetic_rows(ROWS, seed=11))
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE action_log")
    yield url
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
async def session(log_url: str) -> AsyncIterator[AsyncSession]:
    engine = make_async_engine(log_url, pool_size=1)
    async with session_factory(engine)() as s:
        yield s
    await engine.dispose()


def sql_seqs(db: str | psycopg.Connection[Any], values: dict[str, Any]) -> list[int]:
    where = " AND ".join(SQL_FOR[k] for k in values) or "TRUE"
    sql = f"SELECT seq FROM action_log WHERE {where} ORDER BY seq"
    if isinstance(db, str):
        with psycopg.connect(db) as conn:
            return [r[0] for r in conn.execute(sql, values)]
    return [r[0] for r in db.execute(sql, values)]


async def all_pages(s: AsyncSession, f: AuditFilter, limit: int) -> list[int]:
    seqs: list[int] = []
    cursor: str | None = None
    while True:
        page = await query.search(s, filters=f, cursor=cursor, limit=limit)
        assert len(page.items) <= limit
        seqs += [r["seq"] for r in page.items]
        if page.next_cursor is None:
            return seqs
        assert len(page.items) == limit
        cursor = page.next_cursor


def probe_values(url: str) -> dict[str, Any]:
    """Filter values taken from one decided approval on a sub-technique of AML.T0051 by a
    person: selective enough that all 1024 combinations stay quick, and `technique` given as
    the parent so sub-technique matching is exercised."""
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT incident_id, technique, tactic, subject, actor, action, outcome, event, at "
            "FROM action_log WHERE event = 'approval.decided' AND technique LIKE 'AML.T0051.%%' "
            "AND actor NOT LIKE 'slack:%%' AND seq > %s ORDER BY seq LIMIT 1",
            (ROWS // 2,),
        ).fetchone()
    assert row is not None
    incident, technique, tactic, subject, actor, action, outcome, event, at = row
    return {
        "incident_id": incident,
        "technique": technique.rsplit(".", 1)[0],
        "tactic": tactic,
        "subject": subject,
        "actor": actor,
        "action": action,
        "outcome": outcome,
        "event": event,
        "since": at - timedelta(days=3),
        "until": at + timedelta(days=3),
    }


async def test_every_filter_combination_returns_what_sql_returns_page_by_page(
    session: AsyncSession, log_url: str
) -> None:
    probe = probe_values(log_url)
    names = list(SQL_FOR)
    checked = 0
    with psycopg.connect(log_url) as conn:
        for n in range(len(names) + 1):
            for combo in itertools.combinations(names, n):
                values = {k: probe[k] for k in combo}
                expected = sql_seqs(conn, values)
                got = await all_pages(session, AuditFilter(**values), limit=1000)
                assert got == expected, f"filters {combo}"
                checked += 1
    assert checked == 2 ** len(names)


async def test_paging_through_the_whole_log_yields_every_row_once(session: AsyncSession) -> None:
    seqs = await all_pages(session, AuditFilter(), limit=997)
    assert seqs == list(range(1, ROWS + 1))


async def test_paging_a_time_window_with_small_pages(session: AsyncSession, log_url: str) -> None:
    probe = probe_values(log_url)
    values = {"technique": "AML.T0024", "since": probe["since"], "until": probe["until"]}
    expected = sql_seqs(log_url, values)
    assert len(expected) > 500
    assert await all_pages(session, AuditFilter(**values), limit=100) == expected


async def test_technique_matches_sub_techniques_and_not_lookalikes(session: AsyncSession) -> None:
    page = await query.search(session, filters=AuditFilter(technique="aml.t0024"), limit=1000)
    found = {r["technique"] for r in page.items}
    assert found == {"AML.T0024", "AML.T0024.000"}
    # LIKE wildcards in the input are taken literally.
    for odd in ("AML.T002_", "AML.T00%", "%"):
        assert (await query.search(session, filters=AuditFilter(technique=odd))).items == []


async def test_rows_without_technique_only_appear_unfiltered(
    session: AsyncSession, log_url: str
) -> None:
    refusals = sql_seqs(log_url, {"event": "approval.refused"})
    assert refusals
    page = await query.search(session, filters=AuditFilter(event="approval.refused"), limit=1000)
    row = page.items[0]
    assert row["technique"] is None and row["incident_id"] is None
    assert row["details"] == {"reason": "not an approver"}


async def test_a_cursor_only_continues_the_query_it_came_from(session: AsyncSession) -> None:
    f = AuditFilter(technique="AML.T0051")
    page = await query.search(session, filters=f, limit=10)
    assert page.next_cursor
    again = await query.search(
        session, filters=AuditFilter(technique="aml.t0051"), cursor=page.next_cursor, limit=10
    )
    assert again.items[0]["seq"] > page.items[-1]["seq"]
    with pytest.raises(AuditQueryError) as err:
        await query.search(
            session, filters=AuditFilter(technique="AML.T0057"), cursor=page.next_cursor
        )
    assert err.value.field == "cursor"
    for bad in ("", "not-base64!", "eyJ2IjoyfQ", query.encode_cursor(5, f)[:-3]):
        with pytest.raises(AuditQueryError) as err:
            query.decode_cursor(bad or "x", f)
        assert err.value.field == "cursor"


async def test_limit_bounds(session: AsyncSession) -> None:
    assert len((await query.search(session, filters=AuditFilter())).items) == 100
    assert len((await query.search(session, filters=AuditFilter(), limit=1000)).items) == 1000
    for bad in (0, 1001):
        with pytest.raises(AuditQueryError) as err:
            await query.search(session, filters=AuditFilter(), limit=bad)
        assert err.value.field == "limit"


def test_a_window_that_ends_before_it_starts_is_refused() -> None:
    at = datetime.fromisoformat("2026-11-21T10:00:00+00:00")
    with pytest.raises(AuditQueryError) as err:
        AuditFilter(since=at, until=at)
    assert err.value.field == "until"
    naive = AuditFilter(since=datetime(2026, 11, 21, 10))
    assert naive.since == at  # a time without offset is UTC


async def test_streams_return_every_matching_row_in_order(log_url: str) -> None:
    f = AuditFilter(actor="system:atlas-soar", event="action.rolled_back")
    expected = sql_seqs(log_url, {"actor": f.actor, "event": f.event})
    engine = make_async_engine(log_url, pool_size=1)
    try:
        async with engine.connect() as conn:
            got = [r["seq"] async for r in query.stream(conn, filters=f, batch=500)]
        assert got == expected
        async with engine.connect() as conn:
            after = expected[len(expected) // 2]
            rest = [r["seq"] async for r in query.stream(conn, filters=f, after_seq=after)]
        assert rest == [s for s in expected if s > after]
    finally:
        await engine.dispose()
    sync_engine = make_sync_engine(log_url)
    try:
        with sync_engine.connect() as conn:
            rows = list(query.stream_sync(conn, filters=AuditFilter(), batch=5000))
        assert [r["seq"] for r in rows] == list(range(1, ROWS + 1))
        assert set(rows[0]) == set(query.COLUMNS)
    finally:
        sync_engine.dispose()


def test_cli_export_and_search(log_url: str) -> None:
    from typer.testing import CliRunner

    from atlas_soar.cli import app

    runner = CliRunner()
    env = {"SOAR_DATABASE_URL": log_url, "COLUMNS": "250"}
    probe = probe_values(log_url)
    window = ["--since", probe["since"].isoformat(), "--until", probe["until"].isoformat()]
    expected = sql_seqs(
        log_url, {"technique": "AML.T0051", "since": probe["since"], "until": probe["until"]}
    )

    out = runner.invoke(
        app, ["audit", "export", "--format", "csv", "--technique", "AML.T0051", *window], env=env
    )
    assert out.exit_code == 0, out.output
    records = list(csv.DictReader(io.StringIO(out.stdout)))
    assert [int(r["seq"]) for r in records] == expected

    out = runner.invoke(
        app, ["audit", "export", "--format", "json", "--technique", "AML.T0051", *window], env=env
    )
    assert [r["seq"] for r in json.loads(out.stdout)] == expected
    empty = runner.invoke(
        app, ["audit", "export", "--format", "json", "--actor", "nobody"], env=env
    )
    assert json.loads(empty.stdout) == []

    out = runner.invoke(
        app, ["audit", "export", "--format", "ocsf", "--incident", probe["incident_id"]], env=env
    )
    events = [json.loads(line) for line in out.stdout.splitlines()]
    assert events and {e["class_uid"] for e in events} <= {2004, 7001}

    out = runner.invoke(app, ["audit", "search", "--incident", probe["incident_id"]], env=env)
    assert out.exit_code == 0, out.output
    assert "approval.decided" in out.stdout and probe["incident_id"] in out.stdout

    out = runner.invoke(app, ["audit", "search", "--limit", "5"], env=env)
    assert "--cursor" in out.stdout
    cursor = out.stdout.split("--cursor", 1)[1].split()[0]
    nxt = runner.invoke(app, ["audit", "search", "--limit", "5", "--cursor", cursor], env=env)
    assert nxt.exit_code == 0 and "\u2502 6 " in nxt.stdout

    for args, name in (
        (["--since", "tomorrow"], "--since"),
        (["--cursor", cursor, "--actor", "x"], "--cursor"),
        (["--format", "xml"], "--format"),
    ):
        cmd = ["audit", "export" if name == "--format" else "search", *args]
        bad = runner.invoke(app, cmd, env=env)
        assert bad.exit_code == 2, (args, bad.output)
        assert name in bad.output
