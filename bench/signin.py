"""Sign-in under attack, against a real stack (`soar worker` + `soar api` processes):

1. timing: wrong passwords for a user that exists vs names that do not (medians, interleaved);
2. load: 30 sign-in attempts a second for DURATION seconds while /healthz is polled every
   20 ms: its p50 / p99 and what the sign-ins were answered (throttling off, so every
   attempt asks for a hash: the worst case for the event loop);
3. the default limits: 50 wrong passwords for one user.

    PYTHONPATH=$PWD .venv/bin/python bench/signin.py [--duration 10]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import bench_stack

PASSWORD = "correct horse battery"
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def add_user(db_url: str) -> None:
    env = dict(os.environ, SOAR_DATABASE_URL=db_url)
    cmd = ["users", "add", "alice", "--role", "approver", "--password-stdin"]
    subprocess.run(
        [sys.executable, "-m", "atlas_soar", *cmd],
        input=PASSWORD.encode(),
        env=env,
        check=True,
        capture_output=True,
    )


async def form(http: httpx.AsyncClient) -> str:
    page = await http.get("/ui/login")
    m = _CSRF.search(page.text)
    assert m, page.text[:200]
    return m.group(1)


async def attempt(http: httpx.AsyncClient, csrf: str, name: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    r = await http.post(
        "/ui/login", data={"csrf": csrf, "username": name, "password": "wrong password"}
    )
    return r.status_code, time.perf_counter() - t0


async def timing(base: str, n: int) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        csrf = await form(http)
        await attempt(http, csrf, "warm-up")
        known, unknown = [], []
        for i in range(n):
            known.append((await attempt(http, csrf, "alice"))[1])
            unknown.append((await attempt(http, csrf, f"nobody-{i}"))[1])
    k, u = statistics.median(known), statistics.median(unknown)
    print(
        f"timing: known user {k * 1000:.0f} ms, unknown user {u * 1000:.0f} ms (medians of {n});"
        f" difference {abs(k - u) / max(k, u) * 100:.1f}%"
    )


async def baseline(base: str, duration: float) -> None:
    health: list[float] = []
    stop = time.monotonic() + duration
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            await http.get("/healthz")
            health.append(time.perf_counter() - t0)
            await asyncio.sleep(0.02)
    q = statistics.quantiles(health, n=100)
    print(
        f"baseline (no sign-ins): /healthz n={len(health)} p50 "
        f"{statistics.median(health) * 1000:.1f} ms p99 {q[98] * 1000:.1f} ms"
    )


async def load(base: str, rate: float, duration: float) -> None:
    health: list[float] = []
    answers: collections.Counter[int] = collections.Counter()
    signin_latency: list[float] = []
    stop = time.monotonic() + duration

    async def poll() -> None:
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = await http.get("/healthz")
                health.append(time.perf_counter() - t0)
                assert r.status_code == 200
                await asyncio.sleep(0.02)

    async def signins() -> None:
        async with httpx.AsyncClient(
            base_url=base, timeout=60, limits=httpx.Limits(max_connections=200)
        ) as http:
            csrf = await form(http)
            tasks = []
            i = 0
            t_start = time.monotonic()
            while time.monotonic() < stop:
                name = "alice" if i % 2 else f"nobody-{i}"
                tasks.append(asyncio.create_task(attempt(http, csrf, name)))
                i += 1
                await asyncio.sleep(max(0.0, t_start + i / rate - time.monotonic()))
            for code, took in await asyncio.gather(*tasks):
                answers[code] += 1
                signin_latency.append(took)

    await asyncio.gather(poll(), signins())
    q = statistics.quantiles(health, n=100)
    print(
        f"load: {sum(answers.values())} sign-ins at {rate:.0f}/s for {duration:.0f} s "
        f"(answers {dict(sorted(answers.items()))}, p50 "
        f"{statistics.median(signin_latency) * 1000:.0f} ms); /healthz n={len(health)} "
        f"p50 {statistics.median(health) * 1000:.1f} ms p99 {q[98] * 1000:.1f} ms "
        f"max {max(health) * 1000:.1f} ms"
    )


async def limits(base: str) -> None:
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        csrf = await form(http)
        codes = [(await attempt(http, csrf, "alice"))[0] for _ in range(50)]
    first = codes.index(429) if 429 in codes else None
    print(
        f"limits: 50 wrong passwords for alice: {codes.count(401)} x 401, then 429 from "
        f"attempt {None if first is None else first + 1} ({codes.count(429)} x 429)"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--duration", type=float, default=10.0)
    ap.add_argument("--rate", type=float, default=30.0)
    ap.add_argument("--samples", type=int, default=20)
    args = ap.parse_args()
    off = {"SOAR_SIGNIN_USER_BURST": "1000000", "SOAR_SIGNIN_ADDRESS_BURST": "1000000"}
    with bench_stack(**off) as stack:
        add_user(stack.db_url)
        asyncio.run(baseline(stack.base, 5))
        asyncio.run(timing(stack.base, args.samples))
        asyncio.run(load(stack.base, args.rate, args.duration))
    with bench_stack() as stack:
        add_user(stack.db_url)
        asyncio.run(limits(stack.base))


if __name__ == "__main__":
    main()
