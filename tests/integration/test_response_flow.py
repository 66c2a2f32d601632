"""Correlation, approval expiry, and a worker killed mid-incident (real processes)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from temporalio.client import Client

from soar.audit.chain import verify_rows
from tests.support import (
    DECISION_KEY,
    WEBHOOK_SECRET,
    bearer,
    detection,
    eventually,
    make_settings,
    running_stack,
)

pytestmark = pytest.mark.timeout(180)


def events(db_url: str, incident_id: str) -> list[str]:
    with psycopg.connect(db_url) as c:
        rows = c.execute(
            "SELECT event FROM action_log WHERE incident_id = %s ORDER BY seq", (incident_id,)
        ).fetchall()
    return [r[0] for r in rows]


async def pending_for(stack: Any, incident_id: str) -> list[dict[str, Any]]:
    r = await stack.http.get("/v1/approvals", params={"status": "pending"}, headers=bearer("admin"))
    return [a for a in r.json()["approvals"] if a["incident_id"] == incident_id]


async def test_three_detections_on_one_subject_make_one_escalated_incident(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as stack:
        ids = []
        for i in range(3):
            r = await stack.post_detection(
                detection(
                    severity="medium",
                    subject={
                        "tenant": "acme",
                        "user": "u-3",
                        "session": f"s-3{i}",
                        "api_key": "k-3",
                    },
                )
            )
            assert r.status_code == 202, r.text
            ids.append(r.json()["incident_id"])
        assert len(set(ids)) == 1
        approvals = await eventually(lambda: _two(stack, ids[0]), timeout=15)
        inc = await stack.incident(ids[0])
        assert inc["detection_count"] == 3
        types = {a["type"]: a["status"] for a in inc["actions"]}
        assert types["revoke_api_key"] == "pending_approval"
        assert types["disable_user"] == "pending_approval"
        assert "escalate-compromised-identity" in inc["plan"]["rules_fired"]
        assert len(approvals) == 2
        # Every session seen was contained.
        for i in range(3):
            assert (await stack.enforcement("sessions", f"s-3{i}"))["blocked"]


async def _two(stack: Any, iid: str) -> list[dict[str, Any]] | None:
    found = await pending_for(stack, iid)
    return found if len(found) == 2 else None


async def test_no_decision_in_time_escalates_then_expires(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue, approval_timeout_seconds=3)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(
            detection(
                technique="AML.T0057",
                severity="critical",
                subject={"tenant": "acme", "api_key": "k-x"},
            )
        )
        iid = r.json()["incident_id"]
        await eventually(lambda: "approval.expired" in events(db_url, iid), timeout=20)
        evs = events(db_url, iid)
        assert evs.index("approval.requested") < evs.index("approval.escalated")
        assert evs.index("approval.escalated") < evs.index("approval.expired")
        assert not await stack.revoked("k-x")  # only blocked for a while
        assert (await stack.enforcement("api-keys", "k-x"))["blocked"]
        inc = await stack.incident(iid)
        assert [a["status"] for a in inc["approvals"]] == ["expired"]
        assert {a["type"]: a["status"] for a in inc["actions"]}["revoke_api_key"] == "expired"
        late = await stack.http.post(
            f"/v1/approvals/{inc['approvals'][0]['approval_id']}/decision",
            json={"decision": "approve"},
            headers=bearer("approver"),
        )
        assert late.status_code == 409 and "expired" in late.json()["detail"]


class HookReceiver:
    """An LLM gateway's admin API: counts every call by its idempotency key."""

    def __init__(self) -> None:
        self.calls: Counter[str] = Counter()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                from standardwebhooks.webhooks import Webhook

                Webhook(WEBHOOK_SECRET).verify(body, dict(self.headers))
                receiver.calls[self.headers["webhook-id"]] += 1
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def start_worker(settings: Any, hooks: dict[str, str]) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        SOAR_DATABASE_URL=settings.database_url,
        SOAR_TEMPORAL_ADDRESS=settings.temporal_address,
        SOAR_TEMPORAL_TASK_QUEUE=settings.temporal_task_queue,
        SOAR_ACTION_HOOKS=json.dumps(hooks),
        SOAR_HOOK_SECRET=WEBHOOK_SECRET,
        SOAR_DECISION_KEY=DECISION_KEY,
        SOAR_LOG_LEVEL="WARNING",
    )
    return subprocess.Popen([sys.executable, "-m", "atlas_soar", "worker"], env=env)


async def test_worker_killed_between_block_and_approval_loses_and_repeats_nothing(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    hooks = HookReceiver()
    urls = {t: hooks.url for t in ("block_session", "revoke_api_key", "disable_user")}
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client, worker=False) as stack:
        worker = start_worker(settings, urls)
        try:
            r = await stack.post_detection(
                detection(
                    technique="AML.T0057",
                    severity="critical",
                    subject={"tenant": "acme", "user": "u-k", "session": "s-k", "api_key": "k-k"},
                )
            )
            iid = r.json()["incident_id"]
            await eventually(lambda: _blocked(stack, "sessions", "s-k"), timeout=20)
            approvals = await eventually(lambda: _two(stack, iid), timeout=20)
            await eventually(lambda: len(hooks.calls) == 1, timeout=20)

            worker.send_signal(signal.SIGKILL)
            worker.wait()
            worker = start_worker(settings, urls)

            for a in approvals:
                # While the new worker starts, the API does not wait for it: 202, and the
                # decision lands once the worker is back.
                ok = await stack.http.post(
                    f"/v1/approvals/{a['approval_id']}/decision",
                    json={"decision": "approve"},
                    headers=bearer("approver"),
                    timeout=30,
                )
                assert ok.status_code in (200, 202), ok.text
                if ok.status_code == 202:
                    assert ok.json()["poll"] == f"/v1/approvals/{a['approval_id']}"
            await eventually(lambda: stack.revoked("k-k"), timeout=30)
            await eventually(lambda: _blocked(stack, "users", "u-k"), timeout=30)
            await eventually(lambda: len(hooks.calls) == 3, timeout=30)
        finally:
            worker.send_signal(signal.SIGTERM)
            worker.wait(timeout=20)

    assert all(n == 1 for n in hooks.calls.values()), hooks.calls
    with psycopg.connect(db_url) as c:
        applied = c.execute(
            "SELECT action, count(*) FROM action_log WHERE incident_id = %s"
            " AND event = 'action.applied' GROUP BY action",
            (iid,),
        ).fetchall()
        blocks = c.execute("SELECT count(*) FROM enforcement_blocks").fetchone()
        cur = c.cursor()
        cur.execute("SELECT * FROM action_log ORDER BY seq")
        cols = [d.name for d in cur.description or ()]
        rows = [dict(zip(cols, r, strict=True)) for r in cur.fetchall()]
    assert dict(applied) == {
        "block_session": 1,
        "block_api_key": 1,
        "revoke_api_key": 1,
        "disable_user": 1,
    }
    assert blocks == (4,)
    verdict = verify_rows(rows)
    assert verdict.problem is None and verdict.checked == len(rows)


async def _blocked(stack: Any, kind: str, target: str) -> bool:
    return bool((await stack.enforcement(kind, target))["blocked"])
