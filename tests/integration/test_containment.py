"""Detection to containment against real PostgreSQL and a real Temporal dev server."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import create_engine, text
from temporalio.client import Client

from soar.db import sqlalchemy_url
from tests.support import bearer, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(120)


def log_events(db_url: str, incident_id: str) -> list[tuple[str, str]]:
    engine = create_engine(sqlalchemy_url(db_url))
    with engine.connect() as c:
        rows = c.execute(
            text("SELECT event, outcome FROM action_log WHERE incident_id = :i ORDER BY seq"),
            {"i": incident_id},
        ).all()
    engine.dispose()
    return [(r[0], r[1]) for r in rows]


async def test_prompt_injection_blocks_session_then_lifts_itself(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    import soar.policy.engine  # noqa: F401

    settings = make_settings(db_url, temporal_address, task_queue)
    # A 2-second block instead of 15 minutes, through a playbook file as a user would.
    import tempfile
    from pathlib import Path

    pb = Path(tempfile.mkdtemp()) / "pb.yaml"
    pb.write_text(
        "name: short\nrules:\n  - name: contain\n    when:\n      techniques: ['AML.T0051*']\n"
        "      severity_at_least: medium\n    actions:\n      - type: block_session\n"
        "        risk: low\n        duration: 2s\n"
    )
    settings = make_settings(db_url, temporal_address, task_queue, policy_file=pb)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection(id="det-inj-1"))
        assert r.status_code == 202, r.text
        body = r.json()
        assert body["duplicate"] is False
        t0 = asyncio.get_running_loop().time()
        await eventually(lambda: _blocked(stack, "s-9"), timeout=2.0, interval=0.02)
        assert asyncio.get_running_loop().time() - t0 < 2.0
        status = await stack.enforcement("sessions", "s-9")
        assert status["reason"]["incident_id"] == body["incident_id"]
        assert status["reason"]["technique"] == "AML.T0051"
        await eventually(lambda: _unblocked(stack, "s-9"), timeout=10)
        events = await eventually(
            lambda: _has(db_url, body["incident_id"], "action.rolled_back"), timeout=10
        )
        names = [e for e, _ in events]
        order = [
            "detection.received",
            "incident.enriched",
            "response.planned",
            "action.requested",
            "action.applied",
            "action.rolled_back",
        ]
        positions = [names.index(e) for e in order]
        assert positions == sorted(positions), names
        assert ("action.rolled_back", "expired") in events
        # The same detection again: 200, same ids, nothing started twice.
        again = await stack.post_detection(detection(id="det-inj-1"))
        assert again.status_code == 200
        assert again.json() == {**body, "duplicate": True}


async def _blocked(stack, session_id):  # type: ignore[no-untyped-def]
    return (await stack.enforcement("sessions", session_id))["blocked"]


async def _unblocked(stack, session_id):  # type: ignore[no-untyped-def]
    return not (await stack.enforcement("sessions", session_id))["blocked"]


def _has(db_url: str, incident_id: str, event: str) -> list[tuple[str, str]] | None:
    events = log_events(db_url, incident_id)
    return events if any(e == event for e, _ in events) else None


async def test_critical_leakage_waits_for_approval_then_revokes_key(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(
            detection(
                technique="AML.T0057",
                severity="critical",
                subject={"tenant": "acme", "api_key": "k-77", "session": "s-77"},
            )
        )
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]

        async def pending() -> list[dict[str, object]]:
            resp = await stack.http.get(
                "/v1/approvals", params={"status": "pending"}, headers=bearer("admin")
            )
            return [a for a in resp.json()["approvals"] if a["incident_id"] == iid]

        approvals = await eventually(pending, timeout=10)
        assert len(approvals) == 1
        apr = approvals[0]["approval_id"]
        inc = await stack.incident(iid)
        revoke = [a for a in inc["actions"] if a["type"] == "revoke_api_key"]
        assert revoke and revoke[0]["status"] == "pending_approval"
        assert not await stack.revoked("k-77")  # blocked for 15 minutes only, not revoked

        refused = await stack.http.post(
            f"/v1/approvals/{apr}/decision", json={"decision": "approve"}, headers=bearer("auditor")
        )
        assert refused.status_code == 403
        ok = await stack.http.post(
            f"/v1/approvals/{apr}/decision",
            json={"decision": "approve", "comment": "confirmed leak"},
            headers=bearer("approver"),
        )
        # 202: accepted by the workflow, recorded a moment later (a busy machine).
        assert ok.status_code in (200, 202), ok.text
        assert ok.json()["status"] == "approved"
        await eventually(lambda: stack.revoked("k-77"), timeout=10)
        second = await stack.http.post(
            f"/v1/approvals/{apr}/decision", json={"decision": "reject"}, headers=bearer("admin")
        )
        assert second.status_code == 409
        assert "already approved" in second.json()["detail"]
