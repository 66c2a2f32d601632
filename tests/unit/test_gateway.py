"""soar.gateway without a stack: the block table, SSE parsing, Standard Webhooks signing,
the reporter's answer handling and spool, and the middleware's refusals."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI, Request, WebSocket
from standardwebhooks.webhooks import Webhook
from starlette.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

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
    # 503: retried in place; 429: to the back of the spool, the others go first
    assert wire.seen == [ids[0], ids[0], ids[1], ids[2], ids[0]]
    assert (rep.stats.accepted, rep.stats.refused, rep.stats.duplicates) == (1, 1, 1)
    assert rep.stats.retries == 2 and rep.stats.deferred == 1


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


@pytest.mark.parametrize(
    "raw",
    [" s-1 ", "a\tb", "s-2\u00c2\u00a0", "x" * 300, "\x9bq", "a\u2028b", "\u202es-1", "\x85s"],
)
def test_a_hostile_id_is_reported_and_checked_in_the_form_the_intake_stores(raw: str) -> None:
    """The attacker chooses the header a gateway reads the session from: whatever it holds,
    the detection is accepted, and the block it leads to is the one the next request meets
    (before, such ids got every detection refused, 422, or the block put on another string)."""
    from soar.intake.schema import parse_detection

    body = make_detection("AML.T0051", tenant="acme", session=raw, prompt="ignore all")
    det, _ = parse_detection(body)  # not refused
    stored = det.subject.session
    assert stored
    client = EnforcementClient("http://unused", "t")
    client.table.add(block("a", stored, seconds=30))
    client.heard_at = time.monotonic()
    assert client.check("session", raw, "acme").blocked
    assert client.check_subject("acme", session=raw).blocked
    assert client.is_blocked("session", raw, "acme")
    assert client.has_effect("block", "session", raw, " acme ")
    assert not client.check("session", raw + "z", "acme").blocked


def test_an_empty_tenant_is_the_default_tenant_on_both_sides() -> None:
    from soar.intake.schema import parse_detection

    det, _ = parse_detection(make_detection("AML.T0051", tenant=" ", session="s-1"))
    assert det.subject.tenant == "default"
    client = EnforcementClient("http://unused", "t")
    client.table.add(Block("a", "session", "default", "s-1", None, "inc-a", "AML.T0051"))
    client.heard_at = time.monotonic()
    assert client.check_subject("", session="s-1").blocked
    assert client.is_blocked("session", "s-1", " ")


def _sse(*events: tuple[str, object, int | None]) -> bytes:
    out = []
    for name, data, eid in events:
        out.append(f"event: {name}\n" + (f"id: {eid}\n" if eid is not None else ""))
        out.append(f"data: {json.dumps(data)}\n\n")
    return "".join(out).encode()


async def test_the_feed_survives_a_raising_callback_and_malformed_events() -> None:
    """An exception from the app's on_change, or an event whose data is no JSON object, ended
    the feed's task for good (the table froze: with fail_mode "open", new blocks never came)."""
    calls = {"n": 0}

    def stream(request: httpx.Request) -> httpx.Response:
        calls["n"] += 1
        if calls["n"] == 1:
            body = _sse(
                ("snapshot", {}, None),
                ("synced", {}, 1),
                ("block", block("a", "s-1").as_event(), 2),  # on_change raises on this one
                ("heartbeat", [1, 2], None),  # not an object: the connection is dropped
            )
        else:
            body = _sse(("block", block("b", "s-2").as_event(), 3))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    def on_change(event: str, b: Block) -> None:
        raise KeyError("the app's bug")

    client = EnforcementClient(
        "http://soar.test",
        "t",
        transport=httpx.MockTransport(stream),
        on_change=on_change,
        backoff_initial=0.01,
    )
    async with client:
        for _ in range(500):
            if client.check("session", "s-2", "acme").blocked:
                break
            await asyncio.sleep(0.01)
    assert client.check("session", "s-1", "acme").blocked
    assert client.check("session", "s-2", "acme").blocked
    assert calls["n"] >= 2 and client.stats.errors >= 1


def test_lookups_from_other_threads_while_the_feed_changes_the_table() -> None:
    """running_in_thread: the feed's thread adds and removes blocks while the app's threads
    look up (iterating the dicts themselves raised 'dictionary changed size')."""
    import sys
    import threading

    table = BlockTable()
    for i in range(8):
        table.add(block(f"k{i}", "s-1", seconds=60))
    stop = threading.Event()

    def feed() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            table.add(block(f"x{n}", "s-1", seconds=60))
            table.remove(f"x{n - 1}")

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    worker = threading.Thread(target=feed)
    worker.start()
    try:
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            table.lookup("session", "s-1", "acme")
            table.blocks()
    finally:
        stop.set()
        worker.join()
        sys.setswitchinterval(interval)


def test_a_blocked_subject_cannot_open_a_websocket() -> None:
    """Anything but plain HTTP went straight to the app: a blocked session opened a
    WebSocket instead of a POST, even with fail_mode "closed"."""
    client = EnforcementClient("http://unused", "t")
    client.table.add(block("a", "s-bad", seconds=30))
    client.heard_at = time.monotonic()
    app = _app(client)

    @app.websocket("/ws")
    async def ws(socket: WebSocket) -> None:
        await socket.accept()
        await socket.send_text("model says hi")
        await socket.close()

    with TestClient(app) as http:
        with http.websocket_connect("/ws", headers={"x-session": "s-good"}) as socket:
            assert socket.receive_text() == "model says hi"
        bad = http.websocket_connect("/ws", headers={"x-session": "s-bad"})
        with pytest.raises(WebSocketDisconnect) as refused, bad as socket:
            socket.receive_text()
        assert refused.value.code == 1008
        client.fail_mode = "closed"
        client.heard_at = time.monotonic() - 60  # the feed is stale: fail closed
        stale = http.websocket_connect("/ws", headers={"x-session": "s-good"})
        with pytest.raises(WebSocketDisconnect), stale as socket:
            socket.receive_text()


async def test_a_401_holds_the_spool_and_retries(tmp_path: Path) -> None:
    """A 401 (a clock more than 5 minutes off, a secret rotated past its grace) is the same
    for every detection: they are kept and sent once it is fixed, not discarded one by one."""
    wire = Scripted([401, 401, 202, 202])
    rep = DetectionReporter("http://x", WEBHOOK_SECRET, tmp_path, transport=wire, fsync=False)
    ids = [await rep.report(make_detection("AML.T0051", session=f"s{i}")) for i in range(2)]
    async with rep:
        assert await rep.flush(5)
    assert wire.seen == [ids[0], ids[0], ids[0], ids[1]]
    assert (rep.stats.accepted, rep.stats.refused) == (2, 0)


class RateLimited(httpx.AsyncBaseTransport):
    """The intake with a subject over its rate: 429 for the attacker's key until `after`
    posts, 202 for everyone else."""

    def __init__(self, refuse: int) -> None:
        self.refuse = refuse
        self.seen: list[str] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        self.seen.append(body["id"])
        if body["subject"].get("api_key") == "k-flood" and self.refuse > 0:
            self.refuse -= 1
            return httpx.Response(429, json={"error": "rate"}, headers={"Retry-After": "0"})
        return httpx.Response(202, json={})


async def test_one_subjects_429s_hold_up_no_other_detection(tmp_path: Path) -> None:
    """An attacker's flood on one API key (a new session each time) hit its rate limit, and
    every later detection, anyone's, waited behind it."""
    wire = RateLimited(refuse=30)
    rep = DetectionReporter("http://x", WEBHOOK_SECRET, tmp_path, transport=wire, fsync=False)
    flood = [
        await rep.report(make_detection("AML.T0051", session=f"s-{i}", api_key="k-flood"))
        for i in range(10)
    ]
    other = await rep.report(make_detection("AML.T0051", session="s-victim", api_key="k-ok"))
    async with rep:
        assert await rep.flush(10)
    # the other detection went out on the first round, before any flood detection's retry
    assert wire.seen.index(other) == 10
    assert set(flood) <= set(wire.seen[11:])
    assert rep.stats.accepted == 11 and rep.stats.deferred == 30
    assert rep.pending == 0
