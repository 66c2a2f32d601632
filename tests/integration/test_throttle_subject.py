"""throttle_subject against the real stack: a weak probe throttles the user (not a block) at
once, the check endpoint, the stream and the gateway client all say so, and the throttle
lifts itself at its expiry, logged like any action."""

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
        "name: t\nrules:\n  - name: slow-down\n    when:\n      techniques: ['AML.T0051*']\n"
        "    actions:\n      - {type: throttle_subject, risk: low, duration: 3s}\n"
    )
    return pb


async def test_a_probe_throttles_the_user_then_the_throttle_lifts_itself(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue, policy_file=playbook())
    async with (
        running_stack(settings, temporal_client) as stack,
        EnforcementClient(stack.api.url, TOKENS["gateway"]) as gateway,
    ):
        stack.api.server.config.timeout_graceful_shutdown = 1
        assert await gateway.wait_synced(10)
        r = await stack.post_detection(detection(severity="low"))
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]

        async def throttled() -> dict[str, object] | None:
            status = await stack.enforcement("users", "u-42")
            return status if status["throttled"] else None

        status = await eventually(throttled, timeout=10)
        assert status["blocked"] is False and status["effect"] == "throttle"
        assert status["until"] and status["reason"] == {
            "incident_id": iid,
            "technique": "AML.T0051",
        }
        session = await stack.enforcement("sessions", "s-9")
        assert session["blocked"] is False and session["throttled"] is False
        await eventually(lambda: gateway.has_effect("throttle", "user", "u-42", "acme"))
        decision = gateway.check_subject("acme", user="u-42", session="s-9")
        assert not decision.blocked and decision.effects == ("throttle",)
        assert decision.reason == "throttle" and decision.incident_id == iid
        assert not gateway.is_blocked("user", "u-42", "acme")

        (action,) = (await stack.incident(iid))["actions"]
        assert (action["type"], action["target"], action["status"]) == (
            "throttle_subject",
            "u-42",
            "applied",
        )
        await eventually(
            lambda: not gateway.has_effect("throttle", "user", "u-42", "acme"), timeout=10
        )
        assert (await stack.enforcement("users", "u-42"))["throttled"] is False

        async def rolled_back() -> list[dict[str, object]]:
            resp = await stack.http.get(
                "/v1/audit",
                params={"incident_id": iid, "action": "throttle_subject"},
                headers=bearer("auditor"),
            )
            items: list[dict[str, object]] = resp.json()["items"]
            return items if any(i["event"] == "action.rolled_back" for i in items) else []

        events = [i["event"] for i in await eventually(rolled_back, timeout=10)]
        assert events.index("action.applied") < events.index("action.rolled_back")
