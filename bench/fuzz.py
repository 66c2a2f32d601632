"""Fuzz a running stack (`make run`) over HTTP with the suite's hostile-input generators.

    .venv/bin/python bench/fuzz.py --cases 100000 --concurrency 16
    .venv/bin/python bench/fuzz.py --url http://127.0.0.1:8000 --secret whsec_... \\
        --token ADMIN_TOKEN --slack-signing-secret ... --seed 7

Mixes signed-and-mutated native detections and OCSF findings (about 55 %), Slack
`block_actions` / `view_submission` payloads signed with the v0 scheme (20 %, only with
`--slack-signing-secret`), datetime queries on /v1/audit and /v1/reports/* and odd values on
the lookup routes (with `--token`). Generation uses a seeded `random.Random` (tests/fuzz/
mutations.py, the same generators the test suite drives with hypothesis).

The webhook secret is read from `SOAR_HOME` (default ~/.local/share/atlas-soar) when
`--secret` is not given. Prints progress every few seconds, then counts by route and status,
every 5xx (first 20, truncated) and the 10 slowest inputs. Exit status 1 when any 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import os
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tests.fuzz import mutations as m


def soar_home() -> Path:
    raw = os.environ.get("SOAR_HOME")
    return Path(raw).expanduser() if raw else Path.home() / ".local/share/atlas-soar"


def read_secret(explicit: str | None) -> str:
    if explicit:
        return explicit
    path = soar_home() / "webhook-secret"
    try:
        return path.read_text().strip()
    except OSError as exc:
        sys.exit(f"no --secret and cannot read {path}: {exc.strerror}")


class Results:
    def __init__(self) -> None:
        self.counts: Counter[tuple[str, str]] = Counter()
        self.slowest: list[tuple[float, int, str]] = []  # min-heap of (seconds, n, text)
        self.errors: list[str] = []
        self.unexpected: list[str] = []
        self.done = 0

    def record(self, req: m.FuzzRequest, outcome: str, seconds: float) -> None:
        self.done += 1
        self.counts[(req.route, outcome)] += 1
        item = (seconds, self.done, f"{outcome} {req.describe(240)}")
        if len(self.slowest) < 10:
            heapq.heappush(self.slowest, item)
        elif seconds > self.slowest[0][0]:
            heapq.heapreplace(self.slowest, item)
        if (outcome.startswith("5") or outcome.startswith("error:")) and len(self.errors) < 20:
            self.errors.append(f"{outcome} {req.describe(400)}")


async def run(args: argparse.Namespace) -> int:
    secrets = m.Secrets(read_secret(args.secret), args.slack_signing_secret, args.token)
    rng = random.Random(args.seed)
    chooser = m.RandomChooser(rng)
    results = Results()
    queue: asyncio.Queue[m.FuzzRequest | None] = asyncio.Queue(maxsize=args.concurrency * 4)
    limits = httpx.Limits(max_connections=args.concurrency)

    async def produce() -> None:
        for _ in range(args.cases):
            req = m.any_case(chooser, secrets)
            if req.route.startswith("GET /v1/") and args.token is None:
                req = m.intake_case(chooser, secrets.webhook)
            await queue.put(req)
            await asyncio.sleep(0)
        for _ in range(args.concurrency):
            await queue.put(None)

    async def consume(http: httpx.AsyncClient) -> None:
        while (req := await queue.get()) is not None:
            started = time.perf_counter()
            try:
                r = await http.request(
                    req.method, req.target(), content=req.body, headers=req.headers
                )
                outcome = str(r.status_code)
                accepted = 200 <= r.status_code < 300 or r.status_code == 429
                if req.expect_2xx and not accepted and len(results.unexpected) < 20:
                    results.unexpected.append(f"{outcome} {req.describe(300)}")
            except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL: never sent
                outcome = f"error:{type(exc).__name__}"
            results.record(req, outcome, time.perf_counter() - started)

    async def progress() -> None:
        start = time.monotonic()
        while True:
            await asyncio.sleep(args.progress)
            elapsed = time.monotonic() - start
            fives = sum(n for (_, o), n in results.counts.items() if o.startswith("5"))
            print(
                f"[{elapsed:6.1f}s] {results.done}/{args.cases} "
                f"({results.done / max(elapsed, 1e-9):.0f}/s), 5xx: {fives}",
                flush=True,
            )

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=args.url, timeout=args.timeout, limits=limits) as http:
        ticker = asyncio.create_task(progress())
        await asyncio.gather(produce(), *(consume(http) for _ in range(args.concurrency)))
        ticker.cancel()
    elapsed = time.monotonic() - started

    print(f"\n{results.done} cases in {elapsed:.1f}s ({results.done / elapsed:.0f}/s)")
    routes = sorted({route for route, _ in results.counts})
    for route in routes:
        row = {o: n for (r, o), n in results.counts.items() if r == route}
        cells = ", ".join(f"{o}: {n}" for o, n in sorted(row.items()))
        print(f"  {route:45} {cells}")
    if results.errors:
        print("\n5xx answers and transport errors (first 20):")
        for line in results.errors:
            print("  " + line)
    if results.unexpected:
        print("\nvalid, signed inputs not accepted (first 20):")
        for line in results.unexpected:
            print("  " + line)
    print("\nslowest 10:")
    for seconds, _, text in sorted(results.slowest, reverse=True):
        print(f"  {seconds * 1000:8.1f} ms  {text}")
    return 1 if any(o.startswith("5") for _, o in results.counts) else 0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", type=int, default=100_000)
    p.add_argument("--url", default=os.environ.get("SOAR_URL", "http://127.0.0.1:8000"))
    p.add_argument("--secret", help="whsec_ webhook secret (default: from SOAR_HOME)")
    p.add_argument("--token", help="bearer token (admin or auditor) for the report routes")
    p.add_argument("--slack-signing-secret", help="SOAR_SLACK_SIGNING_SECRET of the stack")
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("--progress", type=float, default=3.0, help="seconds between progress lines")
    sys.exit(asyncio.run(run(p.parse_args())))


if __name__ == "__main__":
    main()
