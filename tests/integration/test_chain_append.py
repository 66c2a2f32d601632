"""Batched appends keep the chain: one order, each key once, also under concurrent writers."""

from __future__ import annotations

import asyncio

import psycopg

from soar.audit.chain import LogEvent, append, append_many, verify_rows
from soar.db import make_async_engine, session_factory


def rows(db_url: str) -> list[dict[str, object]]:
    with psycopg.connect(db_url) as c:
        cur = c.cursor()
        cur.execute("SELECT * FROM action_log ORDER BY seq")
        cols = [d.name for d in cur.description or ()]
        return [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]


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
    verdict = verify_rows(log)
    assert verdict.problem is None and verdict.checked == 3


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
    assert [r["seq"] for r in log] == list(range(1, 181))
    assert verify_rows(log).problem is None
