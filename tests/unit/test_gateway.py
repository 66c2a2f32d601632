"""soar.gateway without a stack: the block table, SSE parsing, Standard Webhooks signing,
the reporter's answer handling and spool, and the middleware's refusals."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request
from standardwebhooks.webhooks import Webhook

from soar.gateway import (
    Block,
    BlockTable,
    DetectionReporter,
    EnforcementClient,
    EnforcementMiddleware,
    Subject,
    make_detection,
)
from soar.gateway.client import SSEParser
from soar.gateway.reporter import sign
from tests.support import WEBHOOK_SECRET


def block(aid: str, target: str = "s-1", seconds: float | None = 60) -> Block:
    until = datetime.now(UTC) + timedelta(seconds=seconds) if seconds is not None else None
    return Block(aid, "session", "acme", target, until, "inc-" + aid, "AML.T0051")


def test_table_longest_block_wins_expiry_and_lift() -> None:
    t = BlockTable()
    t.add(block("a", seconds=10))
    t.add(block("b", seconds=None))
    t.add(block("c", seconds=-1))
    found = t.lookup("session", "s-1", "acme")
    assert found is not None and found.action_id == "b"
    assert t.lookup("session", "s-1", "other") is None
    assert t.remove("b") is not None
    found = t.lookup("session", "s-1", "acme")
    assert found is not None and found.action_id == "a"
    assert t.lookup("session", "s-1", "acme", now=time.time() + 11) is None
    assert t.purge_expired() == 1 and len(t) == 1
    z = block("z")
    assert Block.from_event(z.as_event()) == z
    with pytest.raises(ValueError, match="target"):
        Block.from_event({**block("z").as_event(), "target": 5})


def test_sse_parser() -> None:
    p = SSEParser()
    got = [p.feed(x) for x in [": hi", "event: block", "id: 7", "data: {", "data: }", ""]]
    assert got[-1] == ("block", "{\n}", "7") and got[:-1] == [None] * 5
    assert p.feed("") is None


def test_signature_verifies_with_standardwebhooks() -> None:
    body = json.dumps(make_detection("AML.T0051", session="s")).encode()
    ts = int(time.time())
    headers = {
        "webhook-id": "msg_1",
        "webhook-timestamp": str(ts),
        "webhook-signature": sign(WEBHOOK_SECRET, "msg_1", ts, body),
    }
    assert Webhook(WEBHOOK_SECRET).verify(body.decode(), headers)


class Scripted(httpx.AsyncBaseTransport):
    """Answers from a script of status codes, recording each detection id posted."""

    def __init__(self, script: list[int]) -> None:
        self.script = script
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.seen.append(json.loads(request.content)["id"])
        status = self.script.pop(0) if self.script else 202
        body = {"duplicate": True} if status == 200 else {"errors": [{"field": "technique"}]}
        return httpx.Response(status, json=body, headers={"Retry-After": "0"})


async def test_reporter_retries_in_order_and_skips_permanent_refusals(tmp_path: Path) -> None:
    wire = Scripted([503, 429, 202, 422, 200])
    rep = DetectionReporter("http://x", WEBHOOK_SECRET, tmp_path, transport=wire, fsync=False)
    ids = [await rep.report(make_detection("AML.T0051", session=f"s{i}")) for i in range(3)]
    assert rep.pending == 3
    async with rep:
        assert await rep.flush(5)
    assert wire.seen == [ids[0], ids[0], ids[0], ids[1], ids[2]]
    assert (rep.stats.accepted, rep.stats.refused, rep.stats.duplicates) == (1, 1, 1)
    assert rep.stats.retries == 2


async def test_spool_survives_a_new_reporter(tmp_path: Path) -> None:
    first = DetectionReporter("http://x", WEBHOOK_SECRET, tmp_path, fsync=False)
    ids = [await first.report(make_detection("AML.T0051", user=f"u{i}")) for i in range(4)]
    wire = Scripted([])
    second = DetectionReporter("http://x", WEBHOOK_SECRET, tmp_path, transport=wire)
    assert second.pending == 4
    async with second:
        assert await second.flush(5)
    assert wire.seen == ids
    with pytest.raises(ValueError, match="secret"):
        DetectionReporter("http://x", "nope", tmp_path)


def _app(client: EnforcementClient) -> FastAPI:
    app = FastAPI()

    def extract(request: Request) -> Subject | None:
        s = request.headers.get("x-session")
        return Subject("acme", session=s) if s else None

    @app.post("/chat")
    async def chat(body: dict[str, Any]) -> dict[str, Any]:
        return body

    app.add_middleware(EnforcementMiddleware, client=client, extract=extract)
    return app


async def test_middleware_refuses_blocked_and_fails_closed_when_stale() -> None:
    client = EnforcementClient("http://unused", "t")
    client.table.add(block("a", "s-bad", seconds=30))
    client.heard_at = time.monotonic()
    transport = httpx.ASGITransport(app=_app(client))
    async with httpx.AsyncClient(transport=transport, base_url="http://app") as http:
        r = await http.post("/chat", json={"q": 1}, headers={"x-session": "s-bad"})
        assert r.status_code == 403 and r.json()["incident_id"] == "inc-a"
        assert 29 <= int(r.headers["retry-after"]) <= 30
        ok = await http.post("/chat", json={"q": 1}, headers={"x-session": "s-good"})
        assert ok.status_code == 200 and ok.json() == {"q": 1}
        client.fail_mode = "closed"
        client.heard_at = time.monotonic() - 60
        stale = await http.post("/chat", json={"q": 1}, headers={"x-session": "s-good"})
        assert stale.status_code == 503 and stale.headers["retry-after"] == "5"
        assert (await http.post("/chat", json={"q": 1})).status_code == 200  # not enforced
