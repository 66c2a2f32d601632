"""Isolation benchmark: Slack healthy vs Slack unreachable, side by side in one run.

    .venv/bin/python bench/isolation.py [--flood 1000] [--n 100] [--rate 5]

For each case a fresh stack (bench/stack.py: embedded PostgreSQL + Temporal, worker and API
as processes) with Slack configured: once pointed at a local fake Slack that answers, once
at a closed port. Then:
1. --flood critical detections, each a new incident with two approvals whose Slack
   messages are posted (healthy) or retried in the background (unreachable);
2. once the flood is contained (its approvals exist; with Slack unreachable their messages
   are still retrying), containment latency (webhook to block in the enforcement store) for
   --n detections at --rate per second;
3. one more critical detection: time until its approval appears in `GET /v1/approvals`, the
   decision's answer time through the API, and the time until the approved revoke is in
   force (checked with a gateway token).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import psycopg

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import bench_stack
from soar.stack.proc import free_port
from tests.fakes.slack_api import FakeSlack
from tests.support import TOKENS, detection, sign

ADMIN = {"Authorization": f"Bearer {TOKENS['admin']}"}
GATEWAY = {"Authorization": f"Bearer {TOKENS['gateway']}"}


def critical(run: str, i: int | str) -> dict[str, Any]:
    subject = {"tenant": "iso", "user": f"u-{run}-{i}", "api_key": f"k-{run}-{i}"}
    return detection(technique="AML.T0057", severity="critical", subject=subject)


async def post(http: httpx.AsyncClient, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body).encode()
    return await http.post("/v1/detections", content=raw, headers=sign(raw))


async def flood(http: httpx.AsyncClient, run: str, n: int) -> int:
    sem = asyncio.Semaphore(16)
    ok = 0

    async def one(i: int) -> None:
        nonlocal ok
        async with sem:
            if (await post(http, critical(run, i))).status_code == 202:
                ok += 1

    await asyncio.gather(*(one(i) for i in range(n)))
    return ok


async def containment(http: httpx.AsyncClient, db_url: str, n: int, rate: float) -> list[float]:
    run = uuid.uuid4().hex[:6]
    sent: dict[str, float] = {}
    for i in range(n):
        session = f"c-{run}-{i}"
        body = detection(subject={"tenant": "iso", "session": session, "user": session})
        sent[session] = time.time()
        r = await post(http, body)
        assert r.status_code == 202, r.text
        await asyncio.sleep(1 / rate)
    deadline = time.time() + 60
    with psycopg.connect(db_url) as conn:
        while True:
            rows = conn.execute(
                "SELECT target, extract(epoch from created_at) FROM enforcement_blocks"
                " WHERE kind = 'session' AND target LIKE %s",
                (f"c-{run}-%",),
            ).fetchall()
            if len(rows) >= n or time.time() > deadline:
                break
            time.sleep(0.2)
    return [float(ts) - sent[t] for t, ts in rows]


async def absorbed(db_url: str, approvals: int, limit: float = 300.0) -> float:
    """Seconds until the flood's approvals all exist (its containment is done); its Slack
    messages may still be retrying. The measurements start after that."""
    t0 = time.time()
    with psycopg.connect(db_url) as conn:
        while time.time() - t0 < limit:
            row = conn.execute("SELECT count(*) FROM approvals").fetchone()
            if row and row[0] >= approvals:
                break
            time.sleep(0.5)
    return time.time() - t0


async def decision(http: httpx.AsyncClient, run: str) -> dict[str, float]:
    body = critical(run, "final")
    t0 = time.perf_counter()
    r = await post(http, body)
    iid = r.json()["incident_id"]
    mine: list[dict[str, Any]] = []
    while time.perf_counter() - t0 < 120 and len(mine) < 2:  # revoke_api_key, disable_user
        listed = (await http.get("/v1/approvals?status=pending&limit=1000", headers=ADMIN)).json()
        mine = [a for a in listed["approvals"] if a["incident_id"] == iid]
        if len(mine) < 2:
            await asyncio.sleep(0.05)
    appeared = time.perf_counter() - t0
    if not mine:
        return {"approval_appears_s": float("nan")}
    answered = t1 = 0.0
    for a in mine:  # approve both (revoke the key, disable the user)
        t1 = time.perf_counter()
        d = await http.post(
            f"/v1/approvals/{a['approval_id']}/decision",
            headers=ADMIN,
            json={"decision": "approve"},
        )
        answered = max(answered, time.perf_counter() - t1)
        assert d.status_code in (200, 202), d.text
    key = body["subject"]["api_key"]
    while time.perf_counter() - t1 < 60:
        e = await http.get(f"/v1/enforcement/api-keys/{key}?tenant=iso", headers=GATEWAY)
        if e.json().get("blocked"):
            break
        await asyncio.sleep(0.05)
    applied = time.perf_counter() - t1
    return {"approval_appears_s": appeared, "decision_answer_s": answered, "applied_s": applied}


async def one_case(label: str, slack_url: str, args: argparse.Namespace) -> dict[str, Any]:
    env = {
        "SOAR_SLACK_BOT_TOKEN": "xoxb-bench",
        "SOAR_SLACK_SIGNING_SECRET": "bench-signing-secret-0123456789",
        "SOAR_SLACK_APPROVAL_CHANNEL": "C-BENCH",
        "SOAR_SLACK_API_URL": slack_url,
        "SOAR_SUBJECT_BURST": "100000",
        "SOAR_SOURCE_BURST": "100000",
        "SOAR_SOURCE_RATE_PER_SECOND": "100000",
    }
    print(f"{label}: starting a stack, Slack at {slack_url}", file=sys.stderr)
    with bench_stack(**env) as stack:
        async with httpx.AsyncClient(base_url=stack.base, timeout=60) as http:
            run = uuid.uuid4().hex[:6]
            accepted = await flood(http, run, args.flood)
            settled = await absorbed(stack.db_url, 2 * accepted)
            lat = await containment(http, stack.db_url, args.n, args.rate)
            dec = await decision(http, run)
    p50 = statistics.median(lat) * 1000 if lat else float("nan")
    p95 = sorted(lat)[int(len(lat) * 0.95) - 1] * 1000 if lat else float("nan")
    return {
        "case": label,
        "flood": accepted,
        "settled": settled,
        "n": len(lat),
        "p50": p50,
        "p95": p95,
        **dec,
    }


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--flood", type=int, default=1000)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--rate", type=float, default=5.0)
    args = ap.parse_args()
    rows = []
    with FakeSlack() as slack:
        rows.append(await one_case("Slack healthy", slack.api_url, args))
    dead = f"http://127.0.0.1:{free_port()}/api/"
    rows.append(await one_case("Slack unreachable", dead, args))
    print()
    head = (
        f"{'case':<18} {'flood 202':>9} {'absorbed s':>10} {'contain p50 ms':>15} {'p95 ms':>8}"
        f" {'approval shown s':>17} {'decision s':>11} {'applied s':>10}"
    )
    print(head + "\n" + "-" * len(head))
    for r in rows:
        print(
            f"{r['case']:<18} {r['flood']:>9} {r['settled']:>10.1f} {r['p50']:>15.1f}"
            f" {r['p95']:>8.1f}"
            f" {r.get('approval_appears_s', float('nan')):>17.2f}"
            f" {r.get('decision_answer_s', float('nan')):>11.2f}"
            f" {r.get('applied_s', float('nan')):>10.2f}"
        )
    print("targets with Slack unreachable: decision < 2 s, applied < 5 s, p50 unchanged")


if __name__ == "__main__":
    asyncio.run(main())
