"""Benchmark of appending to the action log, side by side with plain INSERTs; seal delay;
verify rate at a million rows.

    .venv/bin/python bench/log_append.py [--seconds 10] [--writers 1,8,32] [--verify-rows 1000000]

For each writer count, `--seconds` of transactions of 6 rows (a containment step's worth)
through `soar.audit.chain.write_many` (the product's write path) with the worker's sealing
loop running (`soar.audit.seal.seal_forever`, every 200 ms, in a process of its own), and
the same rows as one plain multi-row INSERT per transaction into `plain_log`, a copy of the
table (same columns, same indexes, no trigger, no chain). The two alternate for `--rounds`
rounds (which goes first alternates too) and the median of each is reported, so a burst of
other load on the machine does not decide the ratio. Rows/s are counted at commit. The seal delay
is `sealed_at - at` of every row written at that load (at = the database clock at INSERT,
inside the writer's transaction). Then `--verify-rows` sealed rows are generated in SQL,
sealed by `soar_seal` (its rate is reported) and verified as `soar audit verify` does, in
1 process and in more.

Runs against SOAR_DATABASE_URL's server (in a new database, dropped afterwards unless
--keep) or, when that is unset, an embedded PostgreSQL in a temporary directory.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.audit import libpq_url
from soar.audit.chain import INSERTED_FIELDS, LogEvent, write_many

PLAIN = """
CREATE TABLE plain_log (
    id bigserial PRIMARY KEY,
    seq bigint UNIQUE,
    event_key varchar(300) NOT NULL UNIQUE,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    incident_id varchar(40), tenant varchar(128), subject varchar(300),
    event varchar(64) NOT NULL, action varchar(32), actor varchar(256) NOT NULL,
    outcome varchar(32) NOT NULL, technique varchar(32), tactic varchar(32),
    details jsonb NOT NULL, prev_hash varchar(64), hash varchar(64), sealed_at timestamptz
);
CREATE INDEX ON plain_log (incident_id, seq);
CREATE INDEX ON plain_log (technique, at) INCLUDE (seq);
CREATE INDEX ON plain_log (tactic, at) INCLUDE (seq);
CREATE INDEX ON plain_log (actor, seq);
CREATE INDEX ON plain_log (subject, seq);
CREATE INDEX ON plain_log (at) INCLUDE (seq);
"""
_COLS = INSERTED_FIELDS  # what a writer gives, as the log's write path does


def events(tag: str, w: int, i: int) -> list[LogEvent]:
    """What one containment transaction logs: 6 rows of one incident."""
    iid = f"inc-{tag}-{w}-{i}"
    base: dict[str, Any] = {
        "incident_id": iid,
        "tenant": f"tenant-{w % 5}",
        "subject": f"user:u-{(w * 7919 + i) % 5000}",
        "technique": "AML.T0051.000",
        "tactic": "AML.TA0005",
    }
    steps = (
        ("detection.received", None, "source:llm-gateway", "ok"),
        ("incident.enriched", None, "system:atlas-soar", "ok"),
        ("response.planned", None, "system:atlas-soar", "ok"),
        ("action.requested", "block_session", "system:atlas-soar", "requested"),
        ("action.applied", "block_session", "system:atlas-soar", "applied"),
        ("ticket.created", "open_ticket", "system:atlas-soar", "applied"),
    )
    return [
        LogEvent(
            event_key=f"{iid}:{n}",
            event=event,
            action=action,
            actor=actor,
            outcome=outcome,
            details={"detection_id": f"det-{tag}-{w}-{i}", "n": n, "confidence": 0.87},
            **base,
        )
        for n, (event, action, actor, outcome) in enumerate(steps)
    ]


async def run_writers(url: str, mode: str, writers: int, seconds: float, tag: str) -> float:
    """Rows/s committed by `writers` concurrent writers for `seconds`."""
    from sqlalchemy import text

    from soar.db import make_async_engine, session_factory

    engine = make_async_engine(url, pool_size=writers)
    factory = session_factory(engine)
    placeholders = ", ".join(
        "("
        + ", ".join(f"CAST(:{c}{k} AS jsonb)" if c == "details" else f":{c}{k}" for c in _COLS)
        + ")"
        for k in range(6)
    )
    plain = text(f"INSERT INTO plain_log ({', '.join(_COLS)}) VALUES {placeholders}")
    rows = 0
    end = 0.0

    async def writer(w: int) -> None:
        nonlocal rows
        i = 0
        while time.perf_counter() < end:
            evs = events(tag, w, i)
            async with factory() as s, s.begin():
                if mode == "log":
                    await write_many(s, evs)
                else:
                    params: dict[str, Any] = {}
                    for k, ev in enumerate(evs):
                        for c in _COLS:
                            v = getattr(ev, c)
                            params[f"{c}{k}"] = json.dumps(v) if c == "details" else v
                    await s.execute(plain, params)
            rows += len(evs)
            i += 1

    try:
        async with factory() as s:  # connect them all before the clock starts
            await s.execute(text("SELECT 1"))
        end = time.perf_counter() + seconds
        t = time.perf_counter()
        await asyncio.gather(*(writer(w) for w in range(writers)))
        took = time.perf_counter() - t
    finally:
        await engine.dispose()
    return rows / took


SEALER = """
import asyncio, sys
sys.path.insert(0, sys.argv[2])
from soar.audit.seal import seal_forever
from soar.db import make_async_engine, session_factory
asyncio.run(seal_forever(session_factory(make_async_engine(sys.argv[1], pool_size=1)), 0.2))
"""


async def append_phase(url: str, writers: int, seconds: float, tag: str) -> float:
    """Writers through the log, the sealer in its own process as in `soar worker`."""
    root = str(Path(__file__).resolve().parents[1])
    sealer = subprocess.Popen([sys.executable, "-c", SEALER, url, root])
    try:
        rate = await run_writers(url, "log", writers, seconds, tag)
        while True:  # until the sealer has caught up
            with psycopg.connect(url) as c:
                left = c.execute("SELECT count(*) FROM action_log WHERE seq IS NULL").fetchone()
            if left == (0,):
                break
            await asyncio.sleep(0.1)
    finally:
        sealer.terminate()
        sealer.wait(timeout=10)
    return rate


def seal_delays(url: str, tag: str) -> tuple[float, float, float]:
    with psycopg.connect(url) as c:
        row = c.execute(
            "SELECT percentile_disc(0.5) WITHIN GROUP (ORDER BY d),"
            " percentile_disc(0.99) WITHIN GROUP (ORDER BY d), max(d) FROM ("
            " SELECT extract(epoch FROM sealed_at - at)::float8 AS d FROM action_log"
            " WHERE event_key LIKE %s) x",
            (f"inc-{tag}-%",),
        ).fetchone()
    assert row is not None
    return float(row[0]), float(row[1]), float(row[2])


def build_sealed(url: str, n: int) -> tuple[float, float]:
    """`n` more rows inserted in SQL as the app would, then sealed by soar_seal; seconds."""
    t = time.perf_counter()
    with psycopg.connect(url) as c:
        base = c.execute("SELECT coalesce(max(id), 0) FROM action_log").fetchone()
        assert base is not None
        done = 0
        while done < n:
            k = min(100_000, n - done)
            c.execute(
                "INSERT INTO action_log (event_key, incident_id, tenant, subject, event, action,"
                " actor, outcome, technique, tactic, details)"
                " SELECT 'v-' || g, 'inc-' || (g / 6), 'tenant-' || (g %% 5),"
                " 'user:u-' || (g %% 5000), 'action.applied', 'block_session',"
                " 'system:atlas-soar', 'applied', 'AML.T0051.000', 'AML.TA0005',"
                " jsonb_build_object('action_id', 'a-' || g, 'target', 's-' || (g %% 977),"
                " 'risk', 'low', 'confidence', (g %% 100) / 100.0, 'n', g)"
                " FROM generate_series(%s::bigint, %s::bigint) g",
                (done + 1, done + k),
            )
            c.commit()
            done += k
    inserted = time.perf_counter() - t
    t = time.perf_counter()
    with psycopg.connect(url, autocommit=True) as c:
        while c.execute("SELECT sealed FROM soar_seal(50000)").fetchone() != (0,):
            pass
        c.execute("VACUUM ANALYZE action_log")
    return inserted, time.perf_counter() - t


def measure_verify(url: str, workers: int) -> tuple[float, int]:
    from soar.audit.verify import verify_chain
    from soar.db import make_sync_engine

    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            t = time.perf_counter()
            res = verify_chain(conn, workers=workers)
            took = time.perf_counter() - t
    finally:
        engine.dispose()
    assert res.ok, res.problems[:3]
    return res.rows / took, res.rows


async def measure(url: str, args: argparse.Namespace) -> list[tuple[str, str]]:
    with psycopg.connect(url, autocommit=True) as c:
        c.execute(PLAIN)
    out: list[tuple[str, str]] = []
    delay_at_max = (0.0, 0.0, 0.0)
    ratios: list[str] = []
    for n in args.writers:
        plains: list[float] = []
        logs: list[float] = []
        for r in range(args.rounds):
            first_plain = r % 2 == 0
            if first_plain:
                plains.append(await run_writers(url, "plain", n, args.seconds, f"p{n}-{r}"))
            logs.append(await append_phase(url, n, args.seconds, f"b{n}-{r}"))
            if not first_plain:
                plains.append(await run_writers(url, "plain", n, args.seconds, f"p{n}-{r}"))
            print(
                f"  {n} writers, round {r + 1}: log {logs[-1]:,.0f} / plain {plains[-1]:,.0f}",
                file=sys.stderr,
            )
        plain = statistics.median(plains)
        log = statistics.median(logs)
        d = seal_delays(url, f"b{n}")
        out.append(
            (
                f"{n:>2} writers: log / plain rows/s",
                f"{log:,.0f} / {plain:,.0f} = {log / plain:.2f}x; "
                f"seal delay p50 {d[0] * 1000:.0f} ms, p99 {d[1] * 1000:.0f} ms, "
                f"max {d[2] * 1000:.0f} ms",
            )
        )
        ratios.append(f"{log / plain:.2f}x")
        delay_at_max = d
        print(out[-1][0], out[-1][1], file=sys.stderr)
    out.append(("seal delay p99 at the most writers (target < 1 s)", f"{delay_at_max[1]:.3f} s"))
    if args.verify_rows:
        with psycopg.connect(url) as c:
            have = c.execute("SELECT count(*) FROM action_log").fetchone()
        assert have is not None
        more = max(args.verify_rows - int(have[0]), 0)
        print(f"building {more:,} more sealed rows ...", file=sys.stderr)
        _, seal = build_sealed(url, more)
        out.append(("soar_seal rate (batches of 50,000)", f"{more / seal:,.0f} rows/s"))
        for workers in sorted({1, min(os.cpu_count() or 1, 4)}):
            rate, rows = measure_verify(url, workers)
            out.append((f"verify {rows:,} rows, {workers} process(es)", f"{rate:,.0f} rows/s"))
            print(out[-1][0], out[-1][1], file=sys.stderr)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--writers", default="1,8,32")
    ap.add_argument("--rounds", type=int, default=3, help="alternating rounds per writer count")
    ap.add_argument("--verify-rows", type=int, default=1_000_000)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    args = ap.parse_args()
    args.writers = [int(x) for x in args.writers.split(",")]

    from soar.stack.bootstrap import migrate_and_seed

    pg = None
    scratch = None
    external = os.environ.get("SOAR_DATABASE_URL")
    if external:
        admin = libpq_url(external).rsplit("/", 1)[0] + "/postgres"
    else:
        from soar.stack.postgres import EmbeddedPostgres

        scratch = Path(tempfile.mkdtemp(prefix="soar-bench-log-"))
        pg = EmbeddedPostgres(scratch / "data")
        pg.start()
        admin = pg.admin_url()
    name = "soar_bench_log_" + uuid.uuid4().hex[:8]
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
        version = conn.info.server_version
    try:
        migrate_and_seed(url)
        results = asyncio.run(measure(url, args))
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if pg is not None:
            pg.stop()
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(r[0]) for r in results)
    print(
        f"\naction log append benchmark: {args.seconds:g} s per phase, transactions of 6 rows, "
        f"PostgreSQL {version // 10000}, {os.cpu_count()} CPUs\n"
    )
    for label, value in results:
        print(f"{label:<{width}}  {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
