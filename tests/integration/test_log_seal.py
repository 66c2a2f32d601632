"""The database seals the log: concurrent writers without a lock, one gapless order after
sealing, the boundary with the application-hashed rows of before, exports verifiable offline.
Also on the system PostgreSQL 15 (127.0.0.1:5432) when it answers."""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
from sqlalchemy.exc import DBAPIError

from bench.audit import copy_rows, synthetic_rows
from soar.audit import query
from soar.audit.chain import MARKER, LogEvent, append, append_many, jsonb_text, verify_rows
from soar.audit.seal import backlog, seal_forever, seal_once
from soar.audit.verify import VerifyResult, averify_chain, verify_chain
from soar.db import make_async_engine, make_sync_engine, session_factory
from tests.conftest import as_role, fresh_database

pytestmark = pytest.mark.timeout(180)

SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def ev(key: str, **details: Any) -> LogEvent:
    return LogEvent(event_key=key, event="test.event", actor="tester", details=details)


def log_rows(url: str) -> list[dict[str, Any]]:
    with psycopg.connect(url) as c:
        cur = c.execute("SELECT * FROM action_log ORDER BY seq NULLS LAST, id")
        cols = [d.name for d in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


def verify_sync(url: str, **kw: Any) -> VerifyResult:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return verify_chain(conn, **kw)
    finally:
        engine.dispose()


async def seal_all(url: str) -> int:
    engine = make_async_engine(url, pool_size=1)
    total = 0
    try:
        while True:
            async with session_factory(engine)() as s, s.begin():
                r = await seal_once(s, 1000)
            total += r.sealed
            if r.sealed == 0:
                return total
    finally:
        await engine.dispose()


async def test_32_writers_one_gapless_order_after_sealing(db_url: str) -> None:
    engine = make_async_engine(db_url, pool_size=32)
    factory = session_factory(engine)
    stop = asyncio.Event()

    async def writer(w: int) -> None:
        for i in range(15):
            async with factory() as s, s.begin():
                batch = [ev(f"w{w}-{i}-{j}", w=w, i=i) for j in range(4)]
                # Writers w and w^1 append the same shared event at the same moment.
                batch.append(ev(f"shared-{w // 2}-{i}", by=w))
                out = await append_many(s, batch)
                assert [e.event_key for e in out] == [e.event_key for e in batch]

    try:
        sealer = asyncio.create_task(seal_forever(factory, 0.05, stop=stop))
        await asyncio.gather(*(writer(w) for w in range(32)))
        stop.set()
        await sealer
    finally:
        await engine.dispose()
    await seal_all(db_url)
    rows = log_rows(db_url)
    keys = [r["event_key"] for r in rows if r["event_key"] != MARKER]
    expected = {f"w{w}-{i}-{j}" for w in range(32) for i in range(15) for j in range(4)}
    expected |= {f"shared-{p}-{i}" for p in range(16) for i in range(15)}
    assert len(keys) == len(set(keys)) == len(expected)  # none lost, none twice
    assert set(keys) == expected
    assert [r["seq"] for r in rows] == list(range(1, len(rows) + 1))
    assert all(r["hash"] and r["sealed_at"] and r["sealed_at"] >= r["at"] for r in rows)
    # A writer's batch keeps its order in the sealed order.
    seq_of = {r["event_key"]: r["seq"] for r in rows}
    for w in range(32):
        for i in range(15):
            seqs = [seq_of[f"w{w}-{i}-{j}"] for j in range(4)]
            assert seqs == sorted(seqs)
    result = verify_sync(db_url)
    assert result.ok, result.problems[:5]
    assert result.rows == len(rows) and result.unsealed == 0
    assert result.legacy_until == 0  # a new log: every row sealed by the database
    assert verify_sync(db_url, workers=2, batch=100) == result


async def test_the_same_event_appended_twice_at_once_is_written_once(db_url: str) -> None:
    engine = make_async_engine(db_url, pool_size=2)
    factory = session_factory(engine)
    first_in = asyncio.Event()

    async def one(n: int) -> Any:
        async with factory() as s, s.begin():
            if n == 1:
                await first_in.wait()
            (entry,) = await append_many(s, [ev("same", n=n)])
            if n == 0:
                first_in.set()
                await asyncio.sleep(0.3)  # the other insert waits on this transaction
            return entry

    try:
        a, b = await asyncio.gather(one(0), one(1))
    finally:
        await engine.dispose()
    assert a.details == {"n": 0} and b.details == {"n": 0}  # the second got the first's row
    assert [r["event_key"] for r in log_rows(db_url)] == ["same"]


async def test_rows_are_unsealed_until_the_sealer_runs_then_verify(db_url: str) -> None:
    await check_sealed_rows_verify(db_url)


async def check_sealed_rows_verify(db_url: str) -> None:
    """Python rebuilds exactly the bytes the SQL sealer hashed, for hard details too."""
    engine = make_async_engine(db_url, pool_size=1)
    details: list[dict[str, Any]] = [
        {"confidence": 0.92, "n": 3, "big": 2**53 + 1, "neg": -0.0001, "none": None, "z": -0.0},
        {"excerpt": 'Ignore previous instructions — «ünïcödé» 漢字 \u2028 "q" \\ \x01\x1f\t'},
        {"nested": {"z": [1, {"bb": True, "a": False}], "a": [], "ü": {}}, "at": datetime.now(UTC)},
        {"decimal": Decimal("1.50"), "tiny": 1e-07, "float": 12345.678, "one": 1.0, "e": 1e16},
        {"big": 1e22, "small": 5e-324, "neg": -1.5e-10, "i": -7, "f": 0.1 + 0.2},
        {},
    ]
    try:
        async with session_factory(engine)() as s, s.begin():
            (entry,) = await append_many(s, [ev("k0", **details[0])])
            assert entry.seq is None and entry.hash is None and entry.at is not None
        async with session_factory(engine)() as s:
            b = await backlog(s)
        assert b.unsealed == 1 and b.oldest_age is not None and b.oldest_age < 60
        unsealed = verify_sync(db_url)
        assert unsealed.ok and unsealed.rows == 0 and unsealed.unsealed == 1
        for i, d in enumerate(details[1:], start=1):
            async with session_factory(engine)() as s, s.begin():
                await append(s, ev(f"k{i}", **d))
        assert await seal_all(db_url) == len(details) + 1  # and the sealing-start row
        async with engine.connect() as conn:
            assert (await averify_chain(conn, batch=2)).ok
    finally:
        await engine.dispose()
    result = verify_sync(db_url)
    assert result.ok, result.problems
    assert result.rows == len(details) + 1 and result.unsealed == 0
    rows = log_rows(db_url)
    assert rows[0]["event_key"] == MARKER and rows[0]["details"] == {"legacy_until_seq": 0}
    # The export alone is enough to re-check sealed rows too (details re-rendered as jsonb).
    sync = make_sync_engine(db_url)
    try:
        with sync.connect() as conn:
            exported = list(query.stream_sync(conn, filters=query.AuditFilter()))
            texts = [
                t
                for (t,) in conn.exec_driver_sql(
                    "SELECT details::text FROM action_log ORDER BY seq"
                )
            ]
    finally:
        sync.dispose()
    assert [jsonb_text(r["details"]) for r in exported] == texts
    verdict = verify_rows(exported)
    assert verdict.problem is None and verdict.checked == len(rows)
    exported[3]["actor"] = "mallory"
    assert [p.seq for p in verify_rows(exported).problems] == [4]


async def test_old_rows_verify_as_before_and_the_boundary_is_recorded(db_url: str) -> None:
    copy_rows(db_url, synthetic_rows(500, seed=3))  # the application-hashed chain of before
    engine = make_async_engine(db_url, pool_size=1)
    try:
        for i in range(20):
            async with session_factory(engine)() as s, s.begin():
                await append(s, ev(f"new-{i}", i=i))
    finally:
        await engine.dispose()
    assert await seal_all(db_url) == 21
    rows = log_rows(db_url)
    assert rows[500]["event_key"] == MARKER and rows[500]["seq"] == 501
    assert rows[500]["details"] == {"legacy_until_seq": 500}
    assert rows[500]["prev_hash"] == rows[499]["hash"]  # one chain across the boundary
    result = verify_sync(db_url, batch=97)
    assert result.ok and result.rows == 521 and result.legacy_until == 500
    assert verify_rows(rows).problem is None  # offline: the boundary is found by itself
    with psycopg.connect(db_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE action_log SET outcome = 'x' WHERE seq IN (250, 510)")
        conn.commit()
    bad = verify_sync(db_url, batch=97)
    assert [p.seq for p in bad.problems] == [250, 510]
    assert all("content changed" in p.reason for p in bad.problems)
    assert bad.rows == 249 and bad.problem_count == 2


# --- the same on the system PostgreSQL 15 --------------------------------------------------


@pytest.fixture
def pg15_url() -> Iterator[str]:
    from soar.stack.bootstrap import migrate_and_seed

    try:
        conn = psycopg.connect(SYSTEM_PG, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432")
    name = "soar_seal_" + uuid.uuid4().hex[:8]
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
    url = f"postgresql://postgres@127.0.0.1:5432/{name}"
    try:
        migrate_and_seed(url)
        yield url
    finally:
        with psycopg.connect(SYSTEM_PG, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.pg15
async def test_sealing_and_verify_agree_on_postgresql_15(pg15_url: str) -> None:
    with psycopg.connect(pg15_url) as c:
        assert c.info.server_version >= 110000
    await check_sealed_rows_verify(pg15_url)


def seal_sync(url: str) -> int:
    """Call the sealer until a call seals nothing (at most 100 calls); how many it sealed."""
    total = 0
    with psycopg.connect(url) as c:
        for _ in range(100):
            row = c.execute("SELECT sealed FROM soar_seal(1000)").fetchone()
            c.commit()
            if row is None or row[0] == 0:
                break
            total += row[0]
    return total


def insert_rows(url: str, *keys: str) -> None:
    """Rows as a writer inserts them: unsealed, the database's clock."""
    with psycopg.connect(url) as c:
        for k in keys:
            c.execute(
                "INSERT INTO action_log (event_key, event, actor, outcome, details)"
                " VALUES (%s, 'test.event', 'tester', 'ok', '{}')",
                (k,),
            )
        c.commit()


def unsealed(url: str) -> int:
    with psycopg.connect(url) as c:
        row = c.execute("SELECT count(*) FROM action_log WHERE seq IS NULL").fetchone()
    assert row is not None
    return int(row[0])


# Any number of 32 bits: the test holds it to stop a copy of the sealer half-way.
PAUSE = 0x50415553


def test_the_sealer_seals_no_rows_of_a_new_log_before_its_start_row(db_url: str) -> None:
    # Migration 0010: a writer that commits between soar_seal's look for unsealed rows and its
    # choice of rows to seal must not have them sealed without the sealing-start row before
    # them. The window is between two statements of the function, so the test runs a copy of
    # the function the database has, made to wait there (on an advisory lock the test holds)
    # while a writer commits; against 0004's function the writer's row is sealed as seq 1.
    with psycopg.connect(db_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT pg_get_functiondef('soar_seal(integer)'::regprocedure)"
        ).fetchone()
        assert row is not None
        body: str = row[0]
        at = "            SELECT array_agg(c.id ORDER BY c.s)"
        assert body.count(at) == 1 and body.count("public.soar_seal(") == 1
        admin.execute(
            body.replace("public.soar_seal(", "public.soar_seal_paused(").replace(
                at, f"            PERFORM pg_advisory_xact_lock({PAUSE});\n{at}"
            )
        )
        admin.execute("SELECT pg_advisory_lock(%s)", (PAUSE,))
        got: list[Any] = []

        def sealer() -> None:
            with psycopg.connect(db_url) as s:
                got.append(
                    s.execute("SELECT sealed, head_seq FROM soar_seal_paused(100)").fetchone()
                )
                s.commit()

        thread = threading.Thread(target=sealer)
        thread.start()
        try:
            deadline = time.monotonic() + 20
            while admin.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
                " AND classid = 0 AND objid = %s",
                (PAUSE,),
            ).fetchone() != (1,):
                assert time.monotonic() < deadline, "the sealer never reached the pause"
                time.sleep(0.01)
            insert_rows(db_url, "between-two-looks")  # the log was empty at the first look
        finally:
            admin.execute("SELECT pg_advisory_unlock(%s)", (PAUSE,))
            thread.join(30)
        assert got == [(0, 0)]  # sealed nothing: no start row was written by that call
    assert seal_sync(db_url) == 2
    rows = log_rows(db_url)
    assert [r["event_key"] for r in rows] == [MARKER, "between-two-looks"]
    result = verify_sync(db_url)
    assert result.ok and result.rows == 2 and result.legacy_until == 0


@pytest.fixture
def restored_url(pg_server: str, template_db: str) -> Iterator[str]:
    """A second new database: where an export of db_url's log is loaded back."""
    with fresh_database(pg_server, "r_", template_db) as url:
        yield url


def test_a_restored_log_keeps_being_sealed(db_url: str, restored_url: str) -> None:
    # The export's columns (soar.audit.query.COLUMNS) carry no sealed_at: a log loaded back
    # from it by the table's owner has every row sealed (seq and hash) with sealed_at NULL,
    # its sealing-start row too. 0010's guard read "the head row has no sealed_at" as "no
    # database-sealed row yet", wrote no start row (there is one) and sealed nothing, forever.
    insert_rows(db_url, "a", "b", "c")
    assert seal_sync(db_url) == 4
    cols = ", ".join(query.COLUMNS)
    with psycopg.connect(db_url) as src, psycopg.connect(restored_url) as dst:
        with (
            src.cursor().copy(
                f"COPY (SELECT {cols} FROM action_log ORDER BY seq) TO STDOUT"
            ) as out,
            dst.cursor().copy(f"COPY action_log ({cols}) FROM STDIN") as into,
        ):
            for chunk in out:
                into.write(chunk)
        dst.commit()
    before = verify_sync(restored_url)
    assert before.ok and before.rows == 4 and before.legacy_until == 0
    insert_rows(restored_url, "d", "e")
    assert seal_sync(restored_url) == 2
    insert_rows(restored_url, "f")
    assert seal_sync(restored_url) == 1
    assert unsealed(restored_url) == 0
    rows = log_rows(restored_url)
    assert [r["seq"] for r in rows] == list(range(1, 8))
    assert [r["event_key"] for r in rows] == [MARKER, "a", "b", "c", "d", "e", "f"]
    assert sum(r["event_key"] == MARKER for r in rows) == 1  # no second start row
    after = verify_sync(restored_url)
    assert after.ok, after.problems
    assert after.rows == 7 and after.legacy_until == 0 and after.unsealed == 0


def test_a_legacy_log_restored_the_same_way_gets_its_start_row(db_url: str) -> None:
    # The other side of the guard: a log with no start row (application-hashed rows only,
    # loaded with seq and no sealed_at) still gets one before the database seals anything.
    copy_rows(db_url, synthetic_rows(30, seed=5))
    insert_rows(db_url, "new-1", "new-2")
    assert seal_sync(db_url) == 3
    rows = log_rows(db_url)
    assert rows[30]["event_key"] == MARKER and rows[30]["details"] == {"legacy_until_seq": 30}
    assert [r["event_key"] for r in rows[31:]] == ["new-1", "new-2"]
    result = verify_sync(db_url)
    assert result.ok and result.rows == 33 and result.legacy_until == 30


def test_a_log_sealed_without_its_start_row_before_0010_goes_on_being_sealed(
    db_url: str,
) -> None:
    # What the race left before 0010: rows sealed by the database (sealed_at set), no start
    # row. Verify reads them as application-hashed; stopping the sealer would only add a
    # backlog that never shrinks, so the guard leaves such a log to be sealed as under 0010.
    with psycopg.connect(db_url) as c:
        c.execute(
            "INSERT INTO action_log (seq, event_key, at, event, actor, outcome, details,"
            " prev_hash, hash, sealed_at) VALUES (1, 'sealed-before-0010', now(), 'test.event',"
            " 'tester', 'ok', '{}', repeat('0', 64), repeat('a', 64), now())"
        )
        c.commit()
    insert_rows(db_url, "after")
    assert seal_sync(db_url) == 1
    rows = log_rows(db_url)
    assert [(r["seq"], r["event_key"]) for r in rows] == [(1, "sealed-before-0010"), (2, "after")]
    assert rows[1]["prev_hash"] == "a" * 64


# --- the sealing-start row is the sealer's alone (migration 0012) ------------------------------

# The spoof a writer would want sealed as the start row: the database's own actor and event,
# and a boundary that is not the log's (verify would read "names row 41, not 0" for ever).
SPOOF = (
    "INSERT INTO action_log (event_key, event, actor, outcome, details)"
    " VALUES (%s, 'log.sealing_started', 'system:database', 'ok', '{\"legacy_until_seq\": 41}')"
)


def refused(exc: pytest.ExceptionInfo[psycopg.Error]) -> None:
    """The refusal names the field and says whose keys these are."""
    assert isinstance(exc.value, psycopg.errors.InsufficientPrivilege)
    assert exc.value.diag.column_name == "event_key"
    message = str(exc.value.diag.message_primary)
    assert "event_key" in message and "reserved" in message and "soar_seal" in message


async def test_a_writer_cannot_write_the_sealing_start_row(granted_db: str) -> None:
    # A writer that could insert the start row's key before the first seal had its row taken
    # as the start row (0004's INSERT ... ON CONFLICT DO NOTHING, then "the unsealed row with
    # that key"): its actor, event and boundary sealed as seq 1, and verify failing for ever
    # on a log nobody changed. Only the sealer (the table's owner) may write such keys.
    app_url = as_role(granted_db, "soar_app")
    with psycopg.connect(app_url) as conn:
        for sql, key in (
            (SPOOF, MARKER),
            (SPOOF + " ON CONFLICT (event_key) DO NOTHING", MARKER),
            (SPOOF, "atlas-soar:any-other-key"),  # the whole namespace is the database's
        ):
            with pytest.raises(psycopg.Error) as exc:
                conn.execute(sql, (key,))
            refused(exc)
            conn.rollback()
        # The sealer's flag is anyone's to set: it is no key here either.
        conn.execute("SELECT set_config('soar.sealing', 'on', false)")
        with pytest.raises(psycopg.Error) as exc:
            conn.execute(SPOOF, (MARKER,))
        refused(exc)
        conn.rollback()
        copy = "COPY action_log (event_key, event, actor, outcome, details) FROM STDIN"
        with pytest.raises(psycopg.Error) as exc, conn.cursor().copy(copy) as cp:  # nor COPY
            cp.write_row((MARKER, "log.sealing_started", "system:database", "ok", "{}"))
        refused(exc)
        conn.rollback()
    engine = make_async_engine(app_url, pool_size=1)
    try:
        # The product's write path: refused too; the transaction's other rows with it.
        with pytest.raises(DBAPIError) as wrapped:
            async with session_factory(engine)() as s, s.begin():
                await append_many(s, [ev("before"), ev(MARKER, legacy_until_seq=41)])
        assert isinstance(wrapped.value.orig, psycopg.errors.InsufficientPrivilege)
        for k in ("a", "b"):  # and the app's own keys are written as ever
            async with session_factory(engine)() as s, s.begin():
                await append(s, ev(k))
    finally:
        await engine.dispose()
    assert unsealed(granted_db) == 2
    with psycopg.connect(app_url) as conn:  # the app runs the sealer (as soar_owner)
        assert conn.execute("SELECT sealed, head_seq FROM soar_seal(100)").fetchone() == (3, 3)
        conn.commit()
    rows = log_rows(granted_db)
    assert [r["event_key"] for r in rows] == [MARKER, "a", "b"]
    assert rows[0]["details"] == {"legacy_until_seq": 0}
    result = verify_sync(as_role(granted_db, "soar_auditor"))
    assert result.ok, result.problems
    assert result.rows == 3 and result.legacy_until == 0 and result.unsealed == 0


def test_no_other_role_but_the_owner_writes_reserved_keys(granted_db: str) -> None:
    # The rule is who runs the INSERT, not which role: any role granted INSERT on the log
    # (here one made for the test) is refused; the table's owner (imports) is not.
    role = "soar_test_writer_" + uuid.uuid4().hex[:8]
    with psycopg.connect(granted_db, autocommit=True) as admin:
        admin.execute(f"CREATE ROLE {role} NOLOGIN")
        try:
            admin.execute(f"GRANT USAGE ON SCHEMA public TO {role}")
            admin.execute(f"GRANT SELECT, INSERT ON action_log TO {role}")
            admin.execute(f"GRANT EXECUTE ON FUNCTION soar_seal(integer) TO {role}")
            admin.execute(f"SET ROLE {role}")
            with pytest.raises(psycopg.Error) as exc:
                admin.execute(SPOOF, (MARKER,))
            refused(exc)
            admin.execute(SPOOF.replace("%s", "'its-own-key'"))
            assert admin.execute("SELECT sealed FROM soar_seal(100)").fetchone() == (2,)
            admin.execute("RESET ROLE")
            admin.execute("SET ROLE soar_owner")  # the owner may (a log loaded back, say)
            admin.execute(SPOOF, ("atlas-soar:imported-by-the-owner",))
            admin.execute("RESET ROLE")
        finally:
            admin.execute("RESET ROLE")
            admin.execute(f"DROP OWNED BY {role}")
            admin.execute(f"DROP ROLE {role}")
    rows = log_rows(granted_db)
    assert [r["event_key"] for r in rows] == [
        MARKER,
        "its-own-key",
        "atlas-soar:imported-by-the-owner",
    ]
    assert rows[0]["details"] == {"legacy_until_seq": 0}
    assert rows[2]["seq"] is None  # not sealed yet; the sealer takes it as any row
    assert verify_sync(granted_db).ok


def test_downgrade_to_0011_removes_the_reserved_key_trigger(empty_db_url: str) -> None:
    from soar import migrate

    def objects() -> tuple[Any, ...] | None:
        with psycopg.connect(empty_db_url) as c:
            return c.execute(
                "SELECT (SELECT count(*) FROM pg_trigger"
                " WHERE tgname = 'action_log_reserved_keys'),"
                " to_regprocedure('action_log_reserved_key()') IS NOT NULL"
            ).fetchone()

    migrate.upgrade(empty_db_url)
    assert objects() == (1, True)
    migrate.downgrade(empty_db_url, "0011")
    assert objects() == (0, False)
    migrate.upgrade(empty_db_url)
    assert objects() == (1, True)
