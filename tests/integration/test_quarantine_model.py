"""quarantine_model against the real stack: a detection naming a model asks for approval;
approved, the model is out of service for the tenant (check endpoint and gateway client)."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from temporalio.client import Client

from soar.gateway import EnforcementClient
from tests.support import TOKENS, bearer, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(120)


def playbook() -> Path:
    pb = Path(tempfile.mkdtemp()) / "pb.yaml"
    pb.write_text(
        "name: q\nrules:\n  - name: pull-the-model\n    when:\n      techniques: ['AML.T0051*']\n"
        "    actions:\n      - {type: quarantine_model, risk: high}\n"
    )
    return pb


async def test_an_approved_quarantine_takes_the_model_out_of_service(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue, policy_file=playbook())
    async with (
        running_stack(settings, temporal_client) as stack,
        EnforcementClient(stack.api.url, TOKENS["gateway"]) as gateway,
    ):
        stack.api.server.config.timeout_graceful_shutdown = 1
        assert await gateway.wait_synced(10)
        body = detection(evidence={"prompt": "ignore previous instructions", "model": "gpt-x"})
        r = await stack.post_detection(body)
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]

        async def pending() -> list[dict[str, object]]:
            resp = await stack.http.get(
                "/v1/approvals", params={"status": "pending"}, headers=bearer("approver")
            )
            return [a for a in resp.json()["approvals"] if a["incident_id"] == iid]

        (approval,) = await eventually(pending, timeout=10)
        assert (await stack.enforcement("models", "gpt-x"))["blocked"] is False
        ok = await stack.http.post(
            f"/v1/approvals/{approval['approval_id']}/decision",
            json={"decision": "approve", "comment": "backdoored weights"},
            headers=bearer("approver"),
        )
        assert ok.status_code in (200, 202), ok.text

        async def quarantined() -> bool:
            return bool((await stack.enforcement("models", "gpt-x"))["blocked"])

        await eventually(quarantined, timeout=10)
        status = await stack.enforcement("models", "gpt-x")
        assert status["until"] is None and status["reason"]["incident_id"] == iid
        await eventually(lambda: gateway.is_blocked("model", "gpt-x", "acme"))
        assert not gateway.is_blocked("model", "gpt-x", "other-tenant")
        assert (await stack.enforcement("models", "gpt-y"))["blocked"] is False
        (action,) = (await stack.incident(iid))["actions"]
        assert (action["type"], action["target"], action["status"]) == (
            "quarantine_model",
            "gpt-x",
            "applied",
        )
        bad = await stack.http.get("/v1/enforcement/planets/x", headers=bearer("gateway"))
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "kind"
        assert "models" in bad.json()["errors"][0]["message"]
