"""Batched appends keep the chain: one order after sealing, each key once, also under
concurrent writers; the app cannot choose the sealed fields."""

from __future__ import annotations

import asyncio

import psycopg
import pytest

from soar.audit.chain import MARKER, LogEvent, append, append_many, verify_rows
from soar.db import make_async_engine, session_factory


def rows(db_url: str) -> list[dict[str, object]]:
    """The log after sealing everything, without the sealing-start row."""
    with psycopg.connect(db_url) as c:
        while c.execute("SELECT sealed FROM soar_seal(1000)").fetchone() != (0,):
            c.commit()
        c.commit()
        cur = c.cursor()
        cur.execute("SELECT * FROM action_log ORDER BY seq")
        cols = [d.name for d in cur.description or ()]
        out = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    assert out[0]["event_key"] == MARKER
    assert verify_rows(out).problem is None
    return out[1:]


def ev(key: str, **details: object) -> LogEvent:
    return LogEvent(event_key=key, event="test.event", actor="tester", details=dict(details))


async def test_batch_writes_each_key_once_in_order(db_url: str) -> None:
    engine = make_async_engine(db_url, pool_size=2)
    factory = session_factory(engine)
    try:
        async with factory() as s, s.begin():
            await append(s, ev("a", n=1))
        async with factory() as s, s.begin():
            out = await append_many(s, [ev("b", n=2), ev("a", n=99), ev("c", x=1e16), ev("b")])
        assert [e.event_key for e in out] == ["b", "a", "c", "b"]
        assert out[1].details == {"n": 1}  # the existing row, not rewritten
    finally:
        await engine.dispose()
    log = rows(db_url)
    assert [r["event_key"] for r in log] == ["a", "b", "c"]
    assert [r["seq"] for r in log] == [2, 3, 4]
    assert log[2]["details"] == {"x": 10**16}


async def test_concurrent_batches_form_one_chain(db_url: str) -> None:
    engine = make_async_engine(db_url, pool_size=8)
    factory = session_factory(engine)

    async def writer(w: int) -> None:
        for i in range(10):
            async with factory() as s, s.begin():
                await append_many(s, [ev(f"w{w}-{i}-{j}", w=w) for j in range(3)])

    try:
        await asyncio.gather(*(writer(w) for w in range(6)))
    finally:
        await engine.dispose()
    log = rows(db_url)
    assert len(log) == 6 * 10 * 3
    assert [r["seq"] for r in log] == list(range(2, 182))
    for w in range(6):  # each transaction's rows keep their order
        mine = [r["event_key"] for r in log if r["details"] == {"w": w}]
        assert mine == [f"w{w}-{i}-{j}" for i in range(10) for j in range(3)]


async def test_inserts_cannot_choose_order_time_or_hashes(db_url: str) -> None:
    """Run as a role that does not own the table (the app in production)."""
    with psycopg.connect(db_url, autocommit=True) as c:
        c.execute("DROP ROLE IF EXISTS chain_app_test")
        c.execute("CREATE ROLE chain_app_test")
        c.execute("GRANT SELECT, INSERT ON action_log TO chain_app_test")
    try:
        with psycopg.connect(db_url) as c:
            c.execute("SET ROLE chain_app_test")
            c.execute(
                "INSERT INTO action_log (seq, event_key, at, event, actor, outcome, details,"
                " prev_hash, hash, sealed_at) VALUES (7, 'forged', '2000-01-01', 'e', 'a', 'ok',"
                " '{}', repeat('0', 64), repeat('f', 64), '2000-01-01')"
            )
            got = c.execute(
                "SELECT seq, prev_hash, hash, sealed_at, at > now() - interval '1 minute'"
                " FROM action_log WHERE event_key = 'forged'"
            ).fetchone()
            assert got == (None, None, None, None, True)
            c.commit()
        # Even granted UPDATE by mistake, it cannot seal rows itself: the sealing flag is
        # anyone's to set, but only the table's owner (soar_seal) may use it.
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("GRANT UPDATE ON action_log TO chain_app_test")
        with psycopg.connect(db_url) as c:
            forge = (
                "UPDATE action_log SET seq = 1, prev_hash = repeat('0', 64), hash = repeat('1', 64)"
                " WHERE event_key = 'forged'"
            )
            for flag in ("off", "on"):
                c.execute("SET ROLE chain_app_test")  # again: a rollback undoes SET ROLE
                c.execute("SELECT set_config('soar.sealing', %s, false)", (flag,))
                with pytest.raises(psycopg.errors.InsufficientPrivilege, match="append-only"):
                    c.execute(forge)
                c.rollback()
    finally:
        with psycopg.connect(db_url, autocommit=True) as c:
            c.execute("REVOKE ALL ON action_log FROM chain_app_test")
            c.execute("DROP ROLE chain_app_test")
