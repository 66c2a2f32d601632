"""Enforcement at gateway speed, side by side (issue 11).

    .venv/bin/python bench/enforcement.py [--seconds 8] [--detections 200]

1. HTTP, against the API process of a real stack (bench/stack.py): max throughput (wrk) and
   p50/p99 at 1,000 req/s (hey) for /healthz and GET /v1/enforcement/sessions/{id}.
2. In process: soar.gateway's is_blocked p50/p99 over 1,000,000 calls with 100,000 active
   blocks, and the memory of those blocks.
3. Propagation: a detection posted -> visible in a connected gateway replica, and -> the
   HTTP check answering blocked, p50/p99 over N detections.
Baseline (landed code, same machine): /healthz 3,700 req/s; enforcement 400 req/s, p50 36 ms
and p99 150 ms at that load.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import bench_stack
from soar.gateway import Block, EnforcementClient
from tests.support import TOKENS, detection, sign

AUTH = f"Authorization: Bearer {TOKENS['gateway']}"


def wrk(url: str, seconds: int, *, auth: bool) -> float:
    cmd = ["wrk", "-t2", "-c64", f"-d{seconds}s", url]
    if auth:
        cmd[1:1] = ["-H", AUTH]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return float(m.group(1)) if m else 0.0


def hey(url: str, seconds: int, *, auth: bool, rate: int = 1000) -> tuple[float, float, float]:
    workers = 20
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(rate // workers)]
    if auth:
        cmd += ["-H", AUTH]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout

    def pct(p: str) -> float:
        m = re.search(rf"{p}% in ([\d.]+) secs", out)
        return float(m.group(1)) * 1000 if m else float("nan")

    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    return (float(m.group(1)) if m else 0.0), pct("50"), pct("99")


def in_process(n_blocks: int = 100_000, calls: int = 1_000_000) -> dict[str, float]:
    client = EnforcementClient("http://unused", "unused")
    until = datetime.now(UTC) + timedelta(hours=1)
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    for i in range(n_blocks):
        client.table.add(
            Block(
                f"act-{i:08d}-{uuid.uuid4().hex[:12]}",
                "session",
                "acme",
                f"s-{i}",
                until,
                f"inc-{i:08d}",
                "AML.T0051",
            )
        )
    memory = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    targets = [f"s-{random.randrange(2 * n_blocks)}" for _ in range(10_000)]  # half blocked
    samples = [0] * calls
    clock = time.perf_counter_ns
    check = client.is_blocked
    for i in range(calls):
        t = targets[i % 10_000]
        t0 = clock()
        check("session", t, "acme")
        samples[i] = clock() - t0
    samples.sort()
    return {
        "p50_us": samples[calls // 2] / 1000,
        "p99_us": samples[int(calls * 0.99)] / 1000,
        "mem_mib": memory / 2**20,
    }


async def propagation(base: str, n: int) -> dict[str, float]:
    seen: dict[str, float] = {}
    client = EnforcementClient(
        base, TOKENS["gateway"], on_change=lambda op, b: seen.setdefault(b.target, time.monotonic())
    )
    gw: list[float] = []
    api: list[float] = []
    async with client, httpx.AsyncClient(base_url=base, timeout=10) as http:
        assert await client.wait_synced(15)
        for i in range(n):
            session = f"prop-{i}-{uuid.uuid4().hex[:6]}"
            raw = json.dumps(detection(subject={"tenant": "acme", "session": session})).encode()
            t0 = time.monotonic()
            r = await http.post("/v1/detections", content=raw, headers=sign(raw))
            assert r.status_code == 202, r.text
            while True:
                c = await http.get(
                    f"/v1/enforcement/sessions/{session}",
                    params={"tenant": "acme"},
                    headers={"Authorization": f"Bearer {TOKENS['gateway']}"},
                )
                if c.json()["blocked"]:
                    api.append(time.monotonic() - t0)
                    break
                await asyncio.sleep(0.002)
                if time.monotonic() - t0 > 30:
                    raise RuntimeError("never blocked")
            while session not in seen:
                await asyncio.sleep(0.001)
            gw.append(seen[session] - t0)
    q = statistics.quantiles
    return {
        "gw_p50": statistics.median(gw) * 1000,
        "gw_p99": q(gw, n=100)[98] * 1000,
        "api_p50": statistics.median(api) * 1000,
        "api_p99": q(api, n=100)[98] * 1000,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=int, default=8)
    ap.add_argument("--detections", type=int, default=200)
    args = ap.parse_args()
    for tool in ("wrk", "hey"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed")
    proc = in_process()
    with bench_stack() as stack:
        health = f"{stack.base}/healthz"
        check = f"{stack.base}/v1/enforcement/sessions/s-bench?tenant=acme"
        hey(check, 2, auth=True)  # warm-up (token cache, connections)
        h_max = wrk(health, args.seconds, auth=False)
        e_max = wrk(check, args.seconds, auth=True)
        h_rate = hey(health, args.seconds, auth=False)
        e_rate = hey(check, args.seconds, auth=True)
        prop = asyncio.run(propagation(stack.base, args.detections))
    print("\nHTTP (one API process, 2 cores)        max req/s   @1000 req/s p50 / p99 (ms)")
    print(
        f"  /healthz                           {h_max:9.0f}   {h_rate[1]:6.2f} / {h_rate[2]:6.2f}"
    )
    print(
        f"  enforcement check                  {e_max:9.0f}   {e_rate[1]:6.2f} / {e_rate[2]:6.2f}"
    )
    print(
        f"  ratio (target >= 0.8x, p99 <= 1.5x)  {e_max / h_max:7.2f}x   "
        f"p99 {e_rate[2] / h_rate[2]:.2f}x"
    )
    print("  baseline (landed): /healthz 3,700 req/s; enforcement 400 req/s, p50 36 / p99 150 ms")
    print(
        f"\nIn process: is_blocked, 1,000,000 calls, 100,000 blocks: p50 {proc['p50_us']:.2f} us,"
        f" p99 {proc['p99_us']:.2f} us (target < 20); memory {proc['mem_mib']:.1f} MiB"
    )
    print(f"\nPropagation over {args.detections} detections (post -> blocked), ms:")
    print(f"  gateway replica     p50 {prop['gw_p50']:7.1f}   p99 {prop['gw_p99']:7.1f}")
    print(f"  HTTP check          p50 {prop['api_p50']:7.1f}   p99 {prop['api_p99']:7.1f}")


if __name__ == "__main__":
    main()
