"""Decisions nobody can forge: a client on Temporal's port cannot approve (unsigned or badly
signed, whatever role it claims), the same decision through the API works, and an approver
cannot decide an action against their own account."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import select
from temporalio.client import Client, WorkflowUpdateFailedError

from soar.api.gate import decider_identities, subject_identities
from soar.db import make_async_engine, session_factory
from soar.decisions import sign_decision
from soar.domain import DecisionRequest
from soar.models import Approval, Principal, PrincipalAddress
from tests.support import api_tokens, bearer, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(120)

SELF_TOKEN = "u-self-approver-token-0123456789"


async def pending(stack: Any, incident_id: str, n: int) -> list[dict[str, Any]] | None:
    r = await stack.http.get("/v1/approvals", params={"status": "pending"}, headers=bearer("admin"))
    found = [a for a in r.json()["approvals"] if a["incident_id"] == incident_id]
    return found if len(found) == n else None


async def revoke_pending(stack: Any, tag: str) -> tuple[str, str, dict[str, Any]]:
    """A critical leak (user u-TAG, session s-TAG, key k-TAG) posted; once its two approvals
    are pending: the incident id, the workflow id, and the revoke_api_key approval."""
    r = await stack.post_detection(
        detection(
            technique="AML.T0057",
            severity="critical",
            subject={
                "tenant": "acme",
                "user": f"u-{tag}",
                "session": f"s-{tag}",
                "api_key": f"k-{tag}",
            },
        )
    )
    assert r.status_code == 202, r.text
    iid, wid = r.json()["incident_id"], r.json()["workflow_id"]
    approvals = await eventually(lambda: pending(stack, iid, 2), timeout=20)
    types = {a["action_id"]: a["type"] for a in (await stack.incident(iid))["actions"]}
    revoke = next(a for a in approvals if types[a["action_id"]] == "revoke_api_key")
    return iid, wid, revoke


async def action_of(stack: Any, incident_id: str, action_id: str) -> dict[str, Any]:
    inc = await stack.incident(incident_id)
    return next(a for a in inc["actions"] if a["action_id"] == action_id)


async def test_raw_temporal_client_cannot_approve_but_the_api_can(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    caplog.set_level(logging.WARNING)
    async with running_stack(settings, temporal_client) as stack:
        iid, wid, revoke = await revoke_pending(stack, "t")
        apr = revoke["approval_id"]
        handle = temporal_client.get_workflow_handle(wid)

        # As the attack was tried: the decide update straight to Temporal, as "admin".
        forged = [
            DecisionRequest(apr, "approve", "mallory", "admin", channel="api"),
            sign_decision(
                DecisionRequest(apr, "approve", "mallory", "admin"),
                b"a-key-the-attacker-made-up-0123456789",
                now=datetime.now(UTC),
            ),
        ]
        for req in forged:
            with pytest.raises(WorkflowUpdateFailedError) as caught:
                await handle.execute_update("decide", req)
            assert "sign" in str(caught.value.cause)
        refusals = [m for m in caplog.messages if m.startswith("approval.refused")]
        assert any("not signed" in m and "'mallory'" in m for m in refusals), refusals
        assert any("does not verify" in m for m in refusals), refusals
        # Nothing taken, nothing recorded: still pending, the key not revoked.
        row = await stack.http.get(f"/v1/approvals/{apr}", headers=bearer("admin"))
        assert row.json()["status"] == "pending" and row.json()["decided_by"] is None
        assert not await stack.revoked("k-t")
        assert (await action_of(stack, iid, revoke["action_id"]))["status"] == "pending_approval"

        # The same decision through the API (the gate signs it): taken.
        ok = await stack.http.post(
            f"/v1/approvals/{apr}/decision", json={"decision": "approve"}, headers=bearer("admin")
        )
        assert ok.status_code in (200, 202), ok.text
        await eventually(lambda: stack.revoked("k-t"), timeout=20)
        row = await stack.http.get(f"/v1/approvals/{apr}", headers=bearer("admin"))
        assert row.json()["status"] == "approved" and row.json()["decided_by"] == "admin-user"


async def test_no_self_approval(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    tokens = api_tokens() + f",u-self:approver:{SELF_TOKEN}"
    settings = make_settings(db_url, temporal_address, task_queue, api_tokens=tokens)
    caplog.set_level(logging.WARNING)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(
            detection(
                technique="AML.T0057",
                severity="critical",
                subject={"tenant": "acme", "user": "U-SELF", "session": "s-u", "api_key": "k-u"},
            )
        )
        iid = r.json()["incident_id"]
        approvals = await eventually(lambda: pending(stack, iid, 2), timeout=20)
        for a in approvals:
            refused = await stack.http.post(
                f"/v1/approvals/{a['approval_id']}/decision",
                json={"decision": "approve"},
                headers={"Authorization": f"Bearer {SELF_TOKEN}"},
            )
            assert refused.status_code == 403, refused.text
            assert "own account" in refused.json()["detail"]
        assert any(m.startswith("approval.refused") and "own account" in m for m in caplog.messages)
        assert not (await stack.enforcement("users", "U-SELF"))["blocked"]

        # Identities are matched through the principal: name, Slack ID, tags in the actor.
        engine = make_async_engine(db_url)
        try:
            async with session_factory(engine)() as s, s.begin():
                p = await s.scalar(select(Principal).where(Principal.name == "u-self"))
                assert p is not None
                s.add(PrincipalAddress(principal_id=p.id, channel="slack", address="UALICE1"))
            async with session_factory(engine)() as s:
                approval = await s.get(Approval, approvals[0]["approval_id"])
                assert approval is not None
                subject = await subject_identities(s, approval)
                assert "u-self" in subject
                assert "u-self" in await decider_identities(s, "slack:UALICE1")
                assert "u-self" in await decider_identities(s, "Someone (slack:UALICE1)")
                assert not await decider_identities(s, "admin-user") & subject
        finally:
            await engine.dispose()
        # Another approver may decide it.
        ok = await stack.http.post(
            f"/v1/approvals/{approvals[0]['approval_id']}/decision",
            json={"decision": "reject"},
            headers=bearer("approver"),
        )
        assert ok.status_code in (200, 202), ok.text


async def test_a_decision_after_the_expiry_is_refused_while_the_workflow_is_behind(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    """The worker is down when the approval's time runs out. An approval after that is
    refused by the API (409), and one that reaches the workflow anyway (signed, straight to
    Temporal) is refused there when a worker comes back: no decision in time, nothing taken."""
    from atlas_soar.worker import build_context, make_worker
    from soar.decisions import decision_keys

    settings = make_settings(db_url, temporal_address, task_queue, approval_timeout_seconds=6)
    async with running_stack(settings, temporal_client, worker=False) as stack:
        assert settings.database_url
        ctx = build_context(settings, settings.database_url)
        # workers of their own clients (the stack's client holds the stack's unstarted one)
        first = await Client.connect(temporal_address)
        async with make_worker(first, ctx, task_queue=task_queue):
            iid, wid, revoke = await revoke_pending(stack, "l")
            apr = revoke["approval_id"]
            # escalated at half time: the workflow holds its deadline (set before that)
            await eventually(lambda: _escalated(db_url, apr), timeout=20)
        # no worker: the deadline passes with the workflow unable to expire the approval
        row = await stack.http.get(f"/v1/approvals/{apr}", headers=bearer("admin"))
        assert row.json()["status"] == "pending"
        deadline = datetime.fromisoformat(row.json()["expires_at"])
        await asyncio.sleep(max(0.0, (deadline - datetime.now(UTC)).total_seconds()) + 1.0)
        late = await stack.http.post(
            f"/v1/approvals/{apr}/decision", json={"decision": "approve"}, headers=bearer("admin")
        )
        assert late.status_code == 409 and "expired" in late.text, late.text
        # past the API: a decision the gate signed after the deadline, sent to Temporal
        signed = sign_decision(
            DecisionRequest(apr, "approve", "admin-user", "admin", approver="admin-user"),
            decision_keys(settings)[0],
            now=datetime.now(UTC),
        )
        handle = temporal_client.get_workflow_handle(wid)
        sent = asyncio.create_task(handle.execute_update("decide", signed))
        await asyncio.sleep(1)
        second = await Client.connect(temporal_address)
        async with make_worker(second, ctx, task_queue=task_queue):
            with pytest.raises(WorkflowUpdateFailedError) as caught:
                await asyncio.wait_for(sent, timeout=30)
            assert "expired" in str(caught.value.cause)

            async def expired() -> bool:
                got = await stack.http.get(f"/v1/approvals/{apr}", headers=bearer("admin"))
                return bool(got.json()["status"] == "expired")

            await eventually(expired, timeout=20)
        assert not await stack.revoked("k-l")
        assert (await action_of(stack, iid, revoke["action_id"]))["status"] != "applied"


def _escalated(db_url: str, approval_id: str) -> bool:
    import psycopg

    from soar.replica import libpq_url

    with psycopg.connect(libpq_url(db_url), autocommit=True) as conn:
        row = conn.execute(
            "SELECT escalated_at FROM approvals WHERE id = %s", (approval_id,)
        ).fetchone()
    return bool(row and row[0] is not None)
