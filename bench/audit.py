"""Benchmark of the audit log: filtered queries, CSV export and chain verification.

    .venv/bin/python bench/audit.py [--rows 1000000] [--keep]

Builds a database with a synthetic, correctly hash-chained action log (generated in Python and
loaded with COPY), then measures through the code the API uses:

- p50/p95 latency of the first page (100 rows) filtered by incident, by technique over a week
  and by actor (and a few more), optionally (`--covering`) again with the indexes we suggest;
- the rate of a full CSV export (rows/s, streamed as the API streams it);
- the rate of `verify` (rows/s): async as the API runs it, sync as the CLI runs it (in one
  process, and in a pool of processes).

It runs against SOAR_DATABASE_URL's server (in a new database it drops afterwards unless
--keep) or, when that is unset, an embedded PostgreSQL in a temporary directory.

`synthetic_rows` and `copy_rows` are also what the tests use to build large logs quickly.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from soar.audit.chain import GENESIS, HASHED_FIELDS, row_hash

# Techniques with their first tactic, as the product logs them (tactic = the first one).
TECHNIQUES: tuple[tuple[str, str], ...] = (
    ("AML.T0051", "AML.TA0005"),
    ("AML.T0051.000", "AML.TA0005"),
    ("AML.T0051.001", "AML.TA0005"),
    ("AML.T0054", "AML.TA0012"),
    ("AML.T0057", "AML.TA0010"),
    ("AML.T0024", "AML.TA0010"),
    ("AML.T0024.000", "AML.TA0010"),
    ("AML.T0056", "AML.TA0010"),
    ("AML.T0043", "AML.TA0001"),
    ("AML.T0040", "AML.TA0000"),
    ("AML.T0029", "AML.TA0011"),
    ("AML.T0015", "AML.TA0007"),
)
SOURCES = ("source:llm-gateway", "source:prompt-shield", "source:waf")
APPROVERS = ("alice", "bob", "slack:U024BE7LH", "slack:U0G9QF9C6")
SYSTEM = "system:atlas-soar"
LOG_COLUMNS = (*HASHED_FIELDS, "hash")  # the table, in the order the chain hashes it


def _incident_steps(rng: random.Random, n_incident: int) -> list[dict[str, Any]]:
    """The rows one incident writes, in order, without seq/at/hashes."""
    technique, tactic = TECHNIQUES[rng.randrange(len(TECHNIQUES))]
    tenant = f"tenant-{rng.randrange(5)}"
    user = f"u-{rng.randrange(5000)}"
    iid = f"inc-{n_incident:08d}"
    base = {
        "incident_id": iid,
        "tenant": tenant,
        "subject": f"user:{user}",
        "technique": technique,
        "tactic": tactic,
    }
    det = f"det-{n_incident:08d}"
    sev = rng.choice(("low", "medium", "high", "critical"))
    steps: list[dict[str, Any]] = [
        {
            "event": "detection.received",
            "actor": rng.choice(SOURCES),
            "outcome": "ok",
            "key": f"{iid}:{det}:received",
            "details": {
                "detection_id": det,
                "severity": sev,
                "confidence": round(rng.random(), 2),
                "model": "gpt-x",
                "prompt_sha256": uuid.UUID(int=rng.getrandbits(128)).hex * 2,
            },
        },
        {
            "event": "incident.enriched",
            "actor": SYSTEM,
            "outcome": "ok",
            "key": f"{iid}:{det}:enriched",
            "details": {"technique_name": "x", "tactics": [tactic]},
        },
        {
            "event": "response.planned",
            "actor": SYSTEM,
            "outcome": "ok",
            "key": f"{iid}:{det}:planned",
            "details": {"rules_fired": ["contain"]},
        },
        {
            "event": "action.applied",
            "action": "block_session",
            "actor": SYSTEM,
            "outcome": "applied",
            "key": f"{iid}:block:applied",
            "details": {"action_id": f"{iid}-block", "target": f"s-{user}", "risk": "low"},
        },
        {
            "event": "ticket.created",
            "action": "open_ticket",
            "actor": SYSTEM,
            "outcome": "applied",
            "key": f"{iid}:ticket:applied",
            "details": {"action_id": f"{iid}-ticket", "key": f"SEC-{n_incident}"},
        },
    ]
    if sev in ("high", "critical"):
        steps.append(
            {
                "event": "approval.requested",
                "action": "revoke_api_key",
                "actor": SYSTEM,
                "outcome": "pending",
                "key": f"{iid}:appr:requested",
                "details": {"approval_id": f"{iid}-appr"},
            }
        )
        fate = rng.random()
        if fate < 0.6:
            steps.append(
                {
                    "event": "approval.decided",
                    "action": "revoke_api_key",
                    "actor": rng.choice(APPROVERS),
                    "outcome": "approved",
                    "key": f"{iid}:appr:decided",
                    "details": {"decision": "approve"},
                }
            )
            steps.append(
                {
                    "event": "action.applied",
                    "action": "revoke_api_key",
                    "actor": SYSTEM,
                    "outcome": "applied",
                    "key": f"{iid}:revoke:applied",
                    "details": {"action_id": f"{iid}-revoke", "target": "k-1"},
                }
            )
        elif fate < 0.8:
            steps.append(
                {
                    "event": "approval.decided",
                    "action": "revoke_api_key",
                    "actor": rng.choice(APPROVERS),
                    "outcome": "rejected",
                    "key": f"{iid}:appr:decided",
                    "details": {"decision": "reject"},
                }
            )
        else:
            steps.append(
                {
                    "event": "approval.expired",
                    "action": "revoke_api_key",
                    "actor": SYSTEM,
                    "outcome": "expired",
                    "key": f"{iid}:appr:expired",
                    "details": {"action_taken": False},
                }
            )
    if rng.random() < 0.05:
        steps.append(
            {
                "event": "action.failed",
                "action": "notify",
                "actor": SYSTEM,
                "outcome": "failed",
                "key": f"{iid}:notify:failed",
                "details": {"error": "Slack: channel_not_found"},
            }
        )
    steps.append(
        {
            "event": "action.rolled_back",
            "action": "block_session",
            "actor": SYSTEM,
            "outcome": "expired",
            "key": f"{iid}:block:lifted",
            "details": {"action_id": f"{iid}-block", "unblocked": True},
        }
    )
    steps.append(
        {
            "event": "incident.closed",
            "actor": SYSTEM,
            "outcome": "ok",
            "key": f"{iid}:closed",
            "details": {"severity": sev, "detections": 1},
        }
    )
    out = []
    for s in steps:
        row = {"action": None, **base, **s}
        row["event_key"] = row.pop("key")
        out.append(row)
    return out


def synthetic_rows(
    n: int,
    *,
    end: datetime | None = None,
    days: float = 90.0,
    seed: int = 7,
    first_seq: int = 1,
    prev_hash: str = GENESIS,
) -> Iterator[dict[str, Any]]:
    """`n` chained rows, spread evenly over `days` up to `end`. About one row in 500 has no
    incident, technique or tactic (a refused Slack click), as the product writes them."""
    rng = random.Random(seed)
    end = end or datetime.now(UTC).replace(microsecond=0)
    step = timedelta(days=days) / max(n, 1)
    start = end - step * n
    pending: list[dict[str, Any]] = []
    incident = 0
    prev = prev_hash
    for i in range(n):
        if not pending:
            incident += 1
            pending = _incident_steps(rng, incident)
        row: dict[str, Any]
        if rng.random() < 0.002:
            row = {
                "event_key": f"refusal-{seed}-{i}",
                "event": "approval.refused",
                "actor": f"slack:U{rng.randrange(10**6):06d}",
                "outcome": "refused",
                "incident_id": None,
                "tenant": None,
                "subject": None,
                "action": None,
                "technique": None,
                "tactic": None,
                "details": {"reason": "not an approver"},
            }
        else:
            row = pending.pop(0)
        row["seq"] = first_seq + i
        row["at"] = start + step * i
        row["prev_hash"] = prev
        # What JSONB gives back is what gets hashed: round-trip the details through JSON.
        row["details"] = json.loads(json.dumps(row["details"]))
        row["hash"] = prev = row_hash(row)
        yield row


def copy_rows(conninfo: str, rows: Iterable[dict[str, Any]]) -> int:
    """Load rows with COPY (one transaction). Returns how many."""
    n = 0
    with psycopg.connect(conninfo) as conn, conn.cursor() as cur:
        with cur.copy(f"COPY action_log ({', '.join(LOG_COLUMNS)}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(
                    [json.dumps(row[c]) if c == "details" else row[c] for c in LOG_COLUMNS]
                )
                n += 1
        conn.commit()
    return n


def libpq_url(url: str) -> str:
    """A URL psycopg.connect accepts, from any SQLAlchemy-style PostgreSQL URL."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql://{rest}" if sep and scheme.startswith("postgres") else url


# --- measuring ---------------------------------------------------------------------------------


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _latencies(run: Callable[[int], Awaitable[object]], n: int) -> list[float]:
    await run(-1)  # warm the plan and connection
    out = []
    for i in range(n):
        t = time.perf_counter()
        await run(i)
        out.append((time.perf_counter() - t) * 1000)
    return out


Result = tuple[str, str, str]

# Not in the schema: what the audit queries would use if the (technique|tactic|·, at) indexes
# carried seq (`--covering` measures with them).
COVERING = (
    "CREATE INDEX IF NOT EXISTS bench_technique_at_seq ON action_log (technique, at) INCLUDE (seq)",
    "CREATE INDEX IF NOT EXISTS bench_tactic_at_seq ON action_log (tactic, at) INCLUDE (seq)",
    "CREATE INDEX IF NOT EXISTS bench_at_seq ON action_log (at) INCLUDE (seq)",
)


async def measure_queries(url: str, samples: int, label: str = "") -> list[Result]:
    """p50/p95 of the first page (100 rows) of the common filtered queries, through
    `query.search` as the API calls it, each in a fresh session from the pool."""
    from sqlalchemy import text

    from soar.audit import query
    from soar.db import make_async_engine, session_factory

    engine = make_async_engine(url, pool_size=2)
    factory = session_factory(engine)
    rng = random.Random(1)
    async with factory() as s:
        incidents = list(
            (
                await s.execute(
                    text(
                        "SELECT incident_id FROM action_log TABLESAMPLE SYSTEM (1) "
                        "WHERE incident_id IS NOT NULL LIMIT :n"
                    ),
                    {"n": samples + 1},
                )
            ).scalars()
        )
        actors = list((await s.execute(text("SELECT DISTINCT actor FROM action_log"))).scalars())
        bounds = (await s.execute(text("SELECT min(at), max(at) FROM action_log"))).one()

    async def page(f: query.AuditFilter) -> int:
        async with factory() as s:
            return len((await query.search(s, filters=f, limit=100)).items)

    def window(days: float, **filters: str) -> query.AuditFilter:
        span = (bounds[1] - bounds[0]) - timedelta(days=days)
        since = bounds[0] + span * rng.random()
        return query.AuditFilter(since=since, until=since + timedelta(days=days), **filters)

    hot = ("AML.T0051", "AML.T0057", "AML.T0024.000", "AML.T0040")
    cases: dict[str, Callable[[int], Awaitable[object]]] = {
        "by incident": lambda i: page(query.AuditFilter(incident_id=incidents[i])),
        "by technique, one week": lambda i: page(window(7, technique=rng.choice(hot))),
        "by actor": lambda i: page(query.AuditFilter(actor=actors[i % len(actors)])),
        "by tactic, one week": lambda i: page(window(7, tactic="AML.TA0010")),
        "by subject": lambda i: page(query.AuditFilter(subject=f"user:u-{rng.randrange(5000)}")),
        "all rows, one day": lambda i: page(window(1)),
    }
    results: list[Result] = []
    try:
        for name, run in cases.items():
            lat = await _latencies(run, samples)
            results.append(
                (
                    f"query {name}{label}",
                    f"p50 {statistics.median(lat):.1f} ms / p95 {_pct(lat, 0.95):.1f} ms",
                    "p95 < 50 ms"
                    if name in ("by incident", "by technique, one week", "by actor")
                    else "",
                )
            )
    finally:
        await engine.dispose()
    return results


async def measure_export(url: str) -> Result:
    """A full CSV export as the API streams it (server-side cursor, chunks of lines)."""
    from soar.audit import formats, query
    from soar.db import make_async_engine

    engine = make_async_engine(url, pool_size=1)
    lines = 0
    t = time.perf_counter()
    try:
        async with engine.connect() as conn:
            rows = query.stream(conn, filters=query.AuditFilter())
            async for chunk in formats.arender_chunks("csv", rows):
                lines += chunk.count("\n")
    finally:
        await engine.dispose()
    dt = time.perf_counter() - t
    return ("CSV export, whole log (API path)", f"{(lines - 1) / dt:,.0f} rows/s ({dt:.1f} s)", "")


async def measure_verify_async(url: str, rows: int) -> Result:
    from soar.audit.verify import averify_chain
    from soar.db import make_async_engine

    engine = make_async_engine(url, pool_size=1)
    t = time.perf_counter()
    try:
        async with engine.connect() as conn:
            res = await averify_chain(conn)
    finally:
        await engine.dispose()
    dt = time.perf_counter() - t
    assert res.ok and res.rows == rows, res
    return (
        "verify, API (async, 1 process)",
        f"{rows / dt:,.0f} rows/s ({dt:.1f} s)",
        ">= 50k rows/s",
    )


def measure_verify_sync(url: str, rows: int, workers: int) -> Result:
    from soar.audit.verify import verify_chain
    from soar.db import make_sync_engine

    engine = make_sync_engine(url)
    t = time.perf_counter()
    try:
        with engine.connect() as conn:
            res = verify_chain(conn, workers=workers)
    finally:
        engine.dispose()
    dt = time.perf_counter() - t
    assert res.ok and res.rows == rows, res
    return (
        f"verify, CLI (sync, {workers} process{'es' if workers > 1 else ''})",
        f"{rows / dt:,.0f} rows/s ({dt:.1f} s)",
        ">= 50k rows/s",
    )


def measure(url: str, rows: int, samples: int, *, covering: bool) -> list[Result]:
    from soar.audit.verify import default_workers

    results = asyncio.run(measure_queries(url, samples))
    if covering:
        with psycopg.connect(libpq_url(url), autocommit=True) as conn:
            for sql in COVERING:
                conn.execute(sql)
            conn.execute("VACUUM ANALYZE action_log")
        results += asyncio.run(measure_queries(url, samples, " [covering indexes]"))
    results.append(asyncio.run(measure_export(url)))
    results.append(asyncio.run(measure_verify_async(url, rows)))
    results.append(measure_verify_sync(url, rows, 1))
    if default_workers() > 1:
        results.append(measure_verify_sync(url, rows, default_workers()))
    return results


def build(url: str, rows: int) -> float:
    t = time.perf_counter()
    copy_rows(libpq_url(url), synthetic_rows(rows))
    with psycopg.connect(libpq_url(url), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE action_log")
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--keep", action="store_true", help="keep the benchmark database")
    ap.add_argument(
        "--covering",
        action="store_true",
        help="also measure the queries with (technique|tactic|-, at) INCLUDE (seq) indexes",
    )
    args = ap.parse_args()

    from soar.stack.bootstrap import migrate_and_seed

    pg = None
    external = os.environ.get("SOAR_DATABASE_URL")
    if external:
        admin = libpq_url(external).rsplit("/", 1)[0] + "/postgres"
    else:
        from soar.stack.postgres import EmbeddedPostgres

        scratch = Path(tempfile.mkdtemp(prefix="soar-bench-audit-"))
        pg = EmbeddedPostgres(scratch / "data")
        pg.start()
        admin = pg.admin_url()
    name = "soar_bench_" + uuid.uuid4().hex[:8]
    url = admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    try:
        migrate_and_seed(url)
        print(f"building {args.rows:,} log rows in {name} ...", file=sys.stderr)
        took = build(url, args.rows)
        results = [
            (
                "build (generate + hash + COPY + analyze)",
                f"{args.rows / took:,.0f} rows/s ({took:.1f} s)",
                "",
            )
        ]
        results += measure(url, args.rows, args.samples, covering=args.covering)
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if pg is not None:
            pg.stop()
            shutil.rmtree(scratch, ignore_errors=True)
    width = max(len(r[0]) for r in results)
    print(f"\naudit log benchmark, {args.rows:,} rows, {os.cpu_count()} CPUs\n")
    print(f"{'measure':<{width}}  {'result':<38}  target")
    print(f"{'-' * width}  {'-' * 38}  {'-' * 14}")
    for label, value, target in results:
        print(f"{label:<{width}}  {value:<38}  {target}")
    if args.keep:
        print(f"\ndatabase kept: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
