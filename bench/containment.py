"""Containment benchmark: webhook-to-block-effective latency and throughput of the real
stack, side by side with a bare Temporal baseline measured in the same run on the same
server (a minimal workflow with one no-op activity, started from this process).

    .venv/bin/python bench/containment.py [--n 200] [--rate 5] [--concurrency 50]

Starts an embedded PostgreSQL and Temporal dev server in a temporary folder (or uses
SOAR_DATABASE_URL / SOAR_TEMPORAL_ADDRESS), the worker and the API as separate processes,
then sends N signed detections at a steady rate and N as a burst. Every detection is on a
new subject, so each one starts its own incident workflow, as the baseline does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import uuid
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path

import psycopg
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import UnsandboxedWorkflowRunner, Worker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.stack import bench_stack, cpu_seconds
from tests.support import detection, sign


@activity.defn(name="bench_noop")
async def noop(x: int) -> int:
    return x


@workflow.defn(name="BenchBare")
class BareWorkflow:
    @workflow.run
    async def run(self, x: int) -> int:
        return int(
            await workflow.execute_activity(
                "bench_noop", x, start_to_close_timeout=timedelta(seconds=10)
            )
        )


@dataclass
class Stats:
    name: str
    latencies: list[float]
    wall: float
    sent: int
    effective: int
    cpu: dict[str, float] = field(default_factory=dict)  # CPU seconds per process, this phase

    def row(self) -> str:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return lat[min(len(lat) - 1, int(p * len(lat)))] * 1000 if lat else float("nan")

        thr = self.effective / self.wall if self.wall else 0.0
        return (
            f"{self.name:<34} {len(lat):>5} {pct(0.5):>8.1f} {pct(0.95):>8.1f} "
            f"{pct(0.99):>8.1f} {thr:>8.1f} {self.sent - self.effective:>5}"
        )


async def paced(n: int, rate: float, concurrency: int, one: object) -> tuple[list[float], float]:
    sem = asyncio.Semaphore(concurrency)
    out: list[float] = []

    async def run(i: int) -> None:
        async with sem:
            out.append(await one(i))  # type: ignore[operator]

    started = time.perf_counter()
    tasks = []
    for i in range(n):
        if rate > 0:
            delay = started + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(run(i)))
    await asyncio.gather(*tasks)
    return out, time.perf_counter() - started


async def bare(client: Client, n: int, rate: float, concurrency: int, label: str) -> Stats:
    """Open loop, like the webhook: a start returns at once and the time runs until the
    activity's result is back, so queueing inside the system is measured on both sides."""
    waits: list[asyncio.Task[float]] = []

    async def finish(handle: object, t0: float) -> float:
        await handle.result()  # type: ignore[attr-defined]
        return time.perf_counter() - t0

    async def one(i: int) -> float:
        t0 = time.perf_counter()
        handle = await client.start_workflow(
            BareWorkflow.run, i, id=f"bare-{uuid.uuid4().hex}", task_queue="bench-bare"
        )
        waits.append(asyncio.create_task(finish(handle, t0)))
        return 0.0

    started = time.perf_counter()
    await paced(n, rate, concurrency, one)
    lat = list(await asyncio.gather(*waits))
    return Stats(label, lat, time.perf_counter() - started, n, len(lat))


class RawPoster:
    """A load generator that costs next to nothing per request, so the client is not what
    is measured: requests are built and signed before the phase starts, and sent over
    keep-alive HTTP/1.1 connections (one per request in flight) with plain asyncio streams.
    httpx, used before, cost the bench process about 100 ms of CPU per detection, as much as
    the product's processes together, on a 2-core machine where they compete for CPU."""

    def __init__(self, base: str, connections: int) -> None:
        host, _, port = base.removeprefix("http://").partition(":")
        self.host, self.port = host, int(port.rstrip("/"))
        self.free: asyncio.Queue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = (
            asyncio.Queue()
        )
        self.size = connections
        self.opened = 0

    @staticmethod
    def request(body: bytes, headers: dict[str, str]) -> bytes:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        return (
            f"POST /v1/detections HTTP/1.1\r\nhost: bench\r\ncontent-length: {len(body)}\r\n"
            f"{head}\r\n"
        ).encode() + body

    async def post(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        if self.free.empty() and self.opened < self.size:
            self.opened += 1
            self.free.put_nowait(await asyncio.open_connection(self.host, self.port))
        reader, writer = await self.free.get()
        try:
            writer.write(raw)
            status_line = await reader.readline()
            status = int(status_line.split()[1])
            headers: dict[str, str] = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                k, _, v = line.decode("latin-1").partition(":")
                headers[k.strip().lower()] = v.strip()
            body = await reader.readexactly(int(headers.get("content-length", "0")))
        except BaseException:
            writer.close()
            self.opened -= 1
            raise
        self.free.put_nowait((reader, writer))
        return status, headers, body

    async def close(self) -> None:
        while not self.free.empty():
            _, writer = self.free.get_nowait()
            writer.close()


async def contain(
    base: str, db_url: str, n: int, rate: float, concurrency: int, label: str
) -> Stats:
    run = uuid.uuid4().hex[:6]
    sent_at: dict[str, float] = {}
    retried = [0]
    poster = RawPoster(base, concurrency)
    prepared: list[tuple[str, bytes]] = []
    for i in range(n):
        session = f"bench-{run}-{i}"
        body = json.dumps(
            detection(
                id=f"bench-{run}-{i}",
                subject={"tenant": "bench", "session": session, "user": f"bu-{run}-{i}"},
            )
        ).encode()
        prepared.append((session, RawPoster.request(body, sign(body))))

    async def one(i: int) -> float:
        session, raw = prepared[i]
        sent_at[session] = time.time()
        # As a source does: a 429 / 503 is retried after Retry-After (counted).
        for _ in range(20):
            status, headers, answer = await poster.post(raw)
            if status not in (429, 503):
                break
            retried[0] += 1
            await asyncio.sleep(min(float(headers.get("retry-after", "1")), 5.0))
        assert status == 202, answer
        return 0.0

    try:
        _, _ = await paced(n, rate, concurrency, one)
    finally:
        await poster.close()
    deadline = time.time() + 60
    with psycopg.connect(db_url) as conn:
        while True:
            rows = conn.execute(
                "SELECT target, extract(epoch from created_at) FROM enforcement_blocks"
                " WHERE tenant = 'bench' AND kind = 'session' AND target LIKE %s",
                (f"bench-{run}-%",),
            ).fetchall()
            if len(rows) >= n or time.time() > deadline:
                break
            time.sleep(0.2)
    lat = [float(ts) - sent_at[t] for t, ts in rows]
    first = min(sent_at.values())
    wall = max(float(ts) for _, ts in rows) - first if rows else 0.0
    if retried[0]:
        print(f"{label}: {retried[0]} answer(s) 429/503, retried", file=sys.stderr)
    return Stats(label, lat, wall, n, len(rows))


def cpu_snapshot(pids: dict[str, int]) -> dict[str, float]:
    return {name: cpu_seconds(pid, children=name != "bench") for name, pid in pids.items()}


async def settle(pids: dict[str, int], *, idle: float = 0.1, limit: float = 90.0) -> None:
    """Wait until the stack is quiet: a phase's incidents are assessed and summarised after
    their blocks are effective, and that work is theirs too. Quiet: the product's processes
    together use under `idle` of a core over half a second, twice in a row."""
    names = [n for n in pids if n != "bench"]
    deadline = time.monotonic() + limit
    last, calm = sum(cpu_snapshot({n: pids[n] for n in names}).values()), 0
    while calm < 2 and time.monotonic() < deadline:
        await asyncio.sleep(0.5)
        now_cpu = sum(cpu_snapshot({n: pids[n] for n in names}).values())
        calm = calm + 1 if now_cpu - last < idle * 0.5 else 0
        last = now_cpu


async def measured(pids: dict[str, int], phase: object) -> Stats:
    """Run one phase and charge it the CPU each process used meanwhile, until quiet."""
    await settle(pids)
    before = cpu_snapshot(pids)
    stats: Stats = await phase  # type: ignore[misc]
    await settle(pids)
    after = cpu_snapshot(pids)
    stats.cpu = {k: after[k] - before[k] for k in pids}
    return stats


def cpu_table(results: list[Stats], names: list[str]) -> list[str]:
    """CPU milliseconds per incident (per workflow for the baseline), by process."""
    head = f"{'CPU ms per incident':<34} " + " ".join(f"{n:>9}" for n in names)
    lines = [head]
    for s in results:
        per = max(s.effective, 1)
        cells = " ".join(f"{1000 * s.cpu.get(n, 0.0) / per:>9.1f}" for n in names)
        lines.append(f"{s.name:<34} {cells}")
    return lines


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=200, help="detections per phase (default 200)")
    ap.add_argument("--rate", type=float, default=5.0, help="steady rate per second")
    ap.add_argument("--concurrency", type=int, default=50, help="requests in flight in a burst")
    ap.add_argument(
        "--sandbox", action="store_true", help="run the worker with SOAR_WORKFLOW_SANDBOX=true"
    )
    ap.add_argument(
        "--profile",
        metavar="DIR",
        help="run the worker and the API under cProfile, writing DIR/worker.prof and "
        "DIR/api.prof when they stop (read them with `python -m pstats`)",
    )
    ap.add_argument("--phases", default="steady,burst", help="which phases: steady,burst")
    args = ap.parse_args()

    env = {"SOAR_WORKFLOW_SANDBOX": "true" if args.sandbox else "false"}
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    with bench_stack(profile_dir=args.profile, **env) as stack:
        db_url, base = stack.db_url, stack.base
        client = await Client.connect(stack.address)
        results: list[Stats] = []
        pids = {**stack.pids, "bench": os.getpid()}
        # Unsandboxed: this script is __main__, which the sandbox cannot re-import.
        async with Worker(
            client,
            task_queue="bench-bare",
            workflows=[BareWorkflow],
            activities=[noop],
            workflow_runner=UnsandboxedWorkflowRunner(),
        ):
            print(f"warming up ... ({args.n} detections per phase)", file=sys.stderr)
            await bare(client, 20, 0, 5, "warm-up")
            await contain(base, db_url, 20, 0, 5, "warm-up")
            plan = {
                "steady": (f"steady {args.rate:g}/s", args.rate, args.concurrency),
                "burst": ("burst", 0.0, args.concurrency),
            }
            for label, rate, conc in (plan[p] for p in phases):
                print(f"measuring {label} ...", file=sys.stderr)
                results.append(
                    await measured(
                        pids, bare(client, args.n, rate, conc, f"bare 1-activity, {label}")
                    )
                )
                results.append(
                    await measured(
                        pids, contain(base, db_url, args.n, rate, conc, f"containment, {label}")
                    )
                )
        print()
        print(
            f"{'':<34} {'n':>5} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'per s':>8} {'lost':>5}"
        )
        for s in results:
            print(s.row())
        for i in range(0, len(results), 2):
            b, c = results[i], results[i + 1]
            ratio = statistics.median(c.latencies) / statistics.median(b.latencies)
            thr = (c.effective / c.wall) / (b.effective / b.wall) if b.wall and c.wall else 0.0
            phase = b.name.split(", ")[1]
            print(
                f"containment/bare ({phase}): p50 {ratio:.2f}x (target <= 1.5x), "
                f"throughput {thr:.2f}x"
            )
        print()
        # The baseline's CPU is in "bench" (its worker runs there) and "temporal"; the
        # product's in "worker", "api", "postgres" and "temporal" (the load generator's
        # signing and posting is in "bench" too).
        for line in cpu_table(results, list(pids)):
            print(line)


if __name__ == "__main__":
    asyncio.run(main())
