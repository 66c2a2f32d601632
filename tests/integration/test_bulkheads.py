"""Bulkheads, end to end: real PostgreSQL, real Temporal, the real worker with its two
queues, and Slack unreachable (a closed port). Dozens of Slack steps retry on the external
queue; a new critical detection still gets its approval row at once, and a decision through
the API returns quickly and the approved action is applied within seconds."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from temporalio.client import Client

from soar.db import sqlalchemy_url
from soar.stack.proc import free_port
from tests.support import Stack, bearer, detection, eventually, make_settings, running_stack

# Approvals with no Slack message posted yet.
UNPOSTED = (
    "SELECT count(*) FROM approvals a WHERE NOT EXISTS (SELECT 1 FROM approval_messages m "
    "WHERE m.approval_id = a.id AND m.channel = 'slack')"
)
pytestmark = pytest.mark.timeout(120)

FLOOD = 30  # critical detections, each on its own subject: 2 approvals, 2 Slack posts each


def sql(db_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with engine.begin() as c:
            result = c.execute(text(query), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def critical(user: str, key: str) -> dict[str, Any]:
    subject = {"tenant": "acme", "user": user, "session": f"s-{user}", "api_key": key}
    return detection(technique="AML.T0057", severity="critical", subject=subject)


async def revoked(stack: Stack, key: str) -> bool:
    return await stack.revoked(key)


async def test_decisions_are_fast_while_slack_is_down_and_steps_retry(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    dead_slack = f"http://127.0.0.1:{free_port()}/api/"  # nothing listens there
    settings = make_settings(
        db_url,
        temporal_address,
        task_queue,
        slack_bot_token="xoxb-test",
        slack_signing_secret="8f742231b10e8888abcd99yyyzzz85a5",
        slack_approval_channel="C-SEC",
        slack_api_url=dead_slack,
        approval_timeout_seconds=3600,
        # A narrow external bulkhead, so it is saturated by the retrying Slack steps.
        external_max_concurrent_activities=2,
    )
    assert settings.external_task_queue == f"{task_queue}-external"
    async with running_stack(settings, temporal_client) as stack:
        for n in range(FLOOD):
            r = await stack.post_detection(critical(f"u-flood-{n}", f"k-flood-{n}"))
            assert r.status_code == 202, r.text

        def slack_steps_failing() -> bool:
            rows = sql(db_url, UNPOSTED)
            return bool(rows[0][0] >= FLOOD)

        await eventually(slack_steps_failing, timeout=30)

        # A new critical detection: its approval row appears at once (core queue), although
        # every Slack post is failing and queued behind the others.
        key = "k-new-" + uuid.uuid4().hex[:6]
        t0 = time.monotonic()
        r = await stack.post_detection(critical("u-new", key))
        assert r.status_code == 202, r.text
        incident_id = r.json()["incident_id"]

        def approval_of() -> str | None:
            rows = sql(
                db_url,
                "SELECT a.id FROM approvals a JOIN actions x ON x.id = a.action_id "
                "WHERE a.incident_id = :i AND x.action_type = 'revoke_api_key'",
                i=incident_id,
            )
            return rows[0][0] if rows else None

        approval_id = await eventually(approval_of, timeout=10)
        appeared = time.monotonic() - t0
        assert appeared < 5.0, f"approval row after {appeared:.1f}s"

        t1 = time.monotonic()
        r = await stack.http.post(
            f"/v1/approvals/{approval_id}/decision",
            json={"decision": "approve", "comment": "bulkhead test"},
            headers=bearer("approver"),
        )
        answered = time.monotonic() - t1
        assert r.status_code in (200, 202), r.text
        assert r.json()["status"] == "approved", r.text  # validated by the workflow
        await eventually(lambda: revoked(stack, key), timeout=5)
        applied = time.monotonic() - t1
        print(
            f"\napproval row {appeared:.2f}s; decision answered {answered:.2f}s "
            f"({r.status_code}); revoke applied {applied:.2f}s after the decision"
        )
        assert answered < 3.0
        rows = sql(db_url, "SELECT status, decided_by FROM approvals WHERE id = :a", a=approval_id)
        assert tuple(rows[0]) == ("approved", "approver-user")
        # The Slack steps are still retrying on the external queue, not given up yet.
        pending = sql(db_url, UNPOSTED)[0][0]
        assert pending >= FLOOD
        failed = sql(
            db_url, "SELECT count(*) FROM action_log WHERE event = 'approval.announce_failed'"
        )[0][0]
        assert failed == 0
