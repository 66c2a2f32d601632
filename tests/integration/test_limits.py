"""Limits without loss, against the real stack: token buckets per source and per subject
(429 with Retry-After, every 202 durable), and a PostgreSQL outage (503 with Retry-After,
then every retried detection accepted exactly once)."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import psycopg
import pytest
from sqlalchemy.engine import make_url
from temporalio.client import Client

from soar.stack.proc import free_port
from tests.support import add_source, detection, make_settings, running_stack

pytestmark = pytest.mark.timeout(180)


def _count(db_url: str) -> int:
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM detections").fetchone()
    return int(row[0]) if row else 0


async def test_a_flooding_subject_gets_429_and_nothing_accepted_is_lost(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(
        db_url, temporal_address, task_queue, subject_rate_per_second=2.0, subject_burst=5
    )
    async with running_stack(settings, temporal_client, worker=False) as stack:
        codes: list[int] = []
        for i in range(30):
            r = await stack.post_detection(
                detection(id=f"f-{i}", subject={"tenant": "acme", "user": "flooder"})
            )
            codes.append(r.status_code)
            if r.status_code == 429:
                assert int(r.headers["retry-after"]) >= 1
        # Another subject is not held back by the flooder.
        other = await stack.post_detection(
            detection(id="calm", subject={"tenant": "acme", "user": "someone-else"})
        )
        assert other.status_code == 202
    assert 429 in codes and codes[:5] == [202] * 5
    assert _count(db_url) == codes.count(202) + 1


async def test_a_flooding_source_gets_429(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(
        db_url, temporal_address, task_queue, source_rate_per_second=1.0, source_burst=3
    )
    noisy = add_source(db_url, "noisy")
    async with running_stack(settings, temporal_client, worker=False) as stack:
        codes = [
            (
                await stack.post_detection(
                    detection(id=f"n-{i}", subject={"tenant": "acme", "user": f"u-{i}"}),
                    secret=noisy,
                )
            ).status_code
            for i in range(8)
        ]
        quiet = await stack.post_detection(detection(id="q", subject={"user": "q"}))
    assert codes[:3] == [202] * 3 and codes.count(429) >= 4
    assert quiet.status_code == 202  # the default source has its own bucket
    assert _count(db_url) == codes.count(202) + 1


class Cuttable:
    """A TCP proxy in front of PostgreSQL that can be cut and restored, as an outage."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.port = free_port()
        self.server: asyncio.Server | None = None
        self.links: set[asyncio.StreamWriter] = set()

    async def up(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def down(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for w in list(self.links):
            w.transport.abort()
        self.links.clear()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.links |= {writer, up_w}

        async def pipe(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            with contextlib.suppress(Exception):
                while data := await r.read(65536):
                    w.write(data)
                    await w.drain()
            w.close()

        await asyncio.gather(pipe(reader, up_w), pipe(up_r, writer))


async def test_postgres_down_gives_503_and_retries_land_exactly_once(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    url = make_url(db_url)
    proxy = Cuttable(url.host or "127.0.0.1", url.port or 5432)
    await proxy.up()
    via = url.set(port=proxy.port).render_as_string(hide_password=False)
    settings = make_settings(via, temporal_address, task_queue)
    bodies = [
        detection(id=f"o-{i}", subject={"tenant": "acme", "user": f"o-{i}"}) for i in range(6)
    ]
    async with running_stack(settings, temporal_client, worker=False) as stack:
        for b in bodies[:3]:
            assert (await stack.post_detection(b)).status_code == 202
        await proxy.down()
        answers: list[Any] = []
        for b in bodies:
            answers.append(await stack.post_detection(b))
        assert all(r.status_code == 503 for r in answers), [r.status_code for r in answers]
        assert all(int(r.headers["retry-after"]) >= 1 for r in answers)
        assert "traceback" not in answers[0].text.lower()
        ready = await stack.http.get("/readyz")
        assert ready.status_code == 503
        await proxy.up()
        # The source retries everything it was not sure of: each lands once.
        retried = [await stack.post_detection(b) for b in bodies]
        assert [r.status_code for r in retried] == [200] * 3 + [202] * 3
        again = [await stack.post_detection(b) for b in bodies]
        assert [r.status_code for r in again] == [200] * 6
    await proxy.down()
    assert _count(db_url) == 6
