"""A 202 means durable: with Temporal down at intake time, the detection is kept and the
outbox sweeper hands it to its workflow later; containment follows."""

from __future__ import annotations

from datetime import timedelta

import psycopg
from temporalio.client import Client

from atlas_soar.worker import build_context, make_worker
from soar.intake.service import redeliver_undispatched
from soar.stack.proc import free_port
from tests.support import ApiServer, detection, eventually, make_settings, sign


async def test_detection_accepted_while_temporal_is_down_is_contained_later(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    import asyncio
    import json

    import httpx

    down = make_settings(db_url, f"127.0.0.1:{free_port()}", task_queue)
    api = ApiServer(down)
    api.thread.start()
    try:
        raw = json.dumps(detection(id="det-outbox", subject={"tenant": "acme", "session": "s-ob"}))
        body = raw.encode()
        for _ in range(200):
            try:
                r = httpx.post(f"{api.url}/v1/detections", content=body, headers=sign(body))
                break
            except httpx.HTTPError:
                await asyncio.sleep(0.05)
        assert r.status_code == 202, r.text
    finally:
        api.stop()
    with psycopg.connect(db_url) as c:
        assert c.execute("SELECT dispatched_at FROM detections").fetchall() == [(None,)]

    settings = make_settings(db_url, temporal_address, task_queue)
    ctx = build_context(settings, db_url)
    worker = make_worker(temporal_client, ctx, task_queue=task_queue)
    async with worker:
        sent = await redeliver_undispatched(
            ctx.factory,
            temporal_client,
            task_queue=task_queue,
            older_than=timedelta(0),
            correlation_window_seconds=3600,
            approval_timeout_seconds=3600,
        )
        assert sent == 1

        def blocked() -> bool:
            with psycopg.connect(db_url) as c:
                row = c.execute(
                    "SELECT count(*) FROM enforcement_blocks WHERE target = 's-ob'"
                ).fetchone()
            return bool(row and row[0] == 1)

        await eventually(blocked, timeout=15)
        again = await redeliver_undispatched(
            ctx.factory,
            temporal_client,
            task_queue=task_queue,
            older_than=timedelta(0),
            correlation_window_seconds=3600,
            approval_timeout_seconds=3600,
        )
        assert again == 0
