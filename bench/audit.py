"""Benchmark of the audit log: filtered queries, CSV export and chain verification.

    .venv/bin/python bench/audit.py [--rows 1000000] [--keep]

Builds a database with a synthetic, correctly hash-chained action log (generated in Python and
loaded with COPY), then measures through the code the API uses:

- p50/p95 latency of the first page (100 rows) filtered by incident, by technique over a week
  and by actor;
- the rate of a full CSV export (rows/s, streamed as the API streams it);
- the rate of `verify` (rows/s), async (the API) and sync (the CLI).

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

from soar.audit.chain import GENESIS, row_hash

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
LOG_COLUMNS = (
    "seq",
    "event_key",
    "at",
    "incident_id",
    "tenant",
    "subject",
    "event",
    "action",
    "actor",
    "outcome",
    "technique",
    "tactic",
    "details",
    "prev_hash",
    "hash",
)


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


async def measure(url: str, rows: int, samples: int) -> list[tuple[str, str, str]]:
    from sqlalchemy import text

    from soar.audit import formats, query
    from soar.audit.verify import averify_chain, verify_chain
    from soar.db import make_async_engine, make_sync_engine, session_factory

    engine = make_async_engine(url, pool_size=2)
    factory = session_factory(engine)
    results: list[tuple[str, str, str]] = []
    rng = random.Random(1)
    async with factory() as s:
        incidents = [
            r[0]
            for r in await s.execute(
                text(
                    "SELECT incident_id FROM action_log WHERE incident_id IS NOT NULL "
                    "ORDER BY random() LIMIT :n"
                ),
                {"n": samples + 1},
            )
        ]
        actors = [
            r[0] for r in await s.execute(text("SELECT actor FROM action_log GROUP BY actor"))
        ]
        bounds = (await s.execute(text("SELECT min(at), max(at) FROM action_log"))).one()
        await s.execute(text("ANALYZE action_log"))
        await s.commit()

    async def page(f: query.AuditFilter) -> int:
        async with factory() as s:
            return len((await query.search(s, filters=f, limit=100)).items)

    def window(days: float) -> dict[str, datetime]:
        span = (bounds[1] - bounds[0]) - timedelta(days=days)
        since = bounds[0] + span * rng.random()
        return {"since": since, "until": since + timedelta(days=days)}

    hot = ("AML.T0051", "AML.T0057", "AML.T0024.000", "AML.T0040")
    cases: dict[str, Callable[[int], Awaitable[object]]] = {
        "by incident": lambda i: page(query.AuditFilter(incident_id=incidents[i])),
        "by technique, one week": lambda i: page(
            query.AuditFilter(technique=rng.choice(hot), **window(7))
        ),
        "by actor": lambda i: page(query.AuditFilter(actor=actors[i % len(actors)])),
        "by tactic, one week": lambda i: page(query.AuditFilter(tactic="AML.TA0010", **window(7))),
        "by subject": lambda i: page(query.AuditFilter(subject=f"user:u-{rng.randrange(5000)}")),
        "unfiltered, one day": lambda i: page(query.AuditFilter(**window(1))),
    }
    for name, run in cases.items():
        lat = await _latencies(run, samples)
        results.append(
            (
                f"query {name} (first 100)",
                f"p50 {statistics.median(lat):.1f} ms / p95 {_pct(lat, 0.95):.1f} ms",
                "p95 < 50 ms",
            )
        )

    sink = open(os.devnull, "w")  # noqa: SIM115
    t = time.perf_counter()
    async with factory() as s:
        conn = await s.connection()
        exported = 0
        async for chunk in formats.arender_chunks(
            "csv", query.stream(conn, filters=query.AuditFilter())
        ):
            sink.write(chunk)
            exported += chunk.count("\n")
    dt = time.perf_counter() - t
    sink.close()
    results.append(
        ("CSV export, full log (API path)", f"{(exported - 1) / dt:,.0f} rows/s ({dt:.1f} s)", "")
    )

    t = time.perf_counter()
    async with factory() as s:
        res = await averify_chain(await s.connection())
    dt = time.perf_counter() - t
    assert res.ok and res.rows == rows, res
    results.append(
        ("verify, async (API)", f"{res.rows / dt:,.0f} rows/s ({dt:.1f} s)", ">= 50k rows/s")
    )
    await engine.dispose()

    sync_engine = make_sync_engine(url)
    t = time.perf_counter()
    with sync_engine.connect() as c:
        res = verify_chain(c)
    dt = time.perf_counter() - t
    sync_engine.dispose()
    assert res.ok and res.rows == rows, res
    results.append(
        ("verify, sync (CLI)", f"{res.rows / dt:,.0f} rows/s ({dt:.1f} s)", ">= 50k rows/s")
    )
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
    args = ap.parse_args()

    from soar.stack.bootstrap import migrate_and_seed

    pg = None
    external = os.environ.get("SOAR_DATABASE_URL")
    if external:
        admin = libpq_url(external).rsplit("/", 1)[0] + "/postgres"
    else:
        from soar.stack.postgres import EmbeddedPostgres

        pg = EmbeddedPostgres(Path(tempfile.mkdtemp(prefix="soar-bench-")) / "data")
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
        results += asyncio.run(measure(url, args.rows, args.samples))
    finally:
        if not args.keep:
            with psycopg.connect(admin, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        if pg is not None:
            pg.stop()
    width = max(len(r[0]) for r in results)
    print(f"\naudit log benchmark, {args.rows:,} rows\n")
    print(f"{'measure':<{width}}  {'result':<38}  target")
    print(f"{'-' * width}  {'-' * 38}  {'-' * 14}")
    for label, value, target in results:
        print(f"{label:<{width}}  {value:<38}  {target}")
    if args.keep:
        print(f"\ndatabase kept: {url}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
