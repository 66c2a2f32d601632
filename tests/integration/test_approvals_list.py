"""GET /v1/approvals says what each approval would allow (the action, the incident's
technique, severity and subject) and filters by technique and subject."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import Client

from tests.support import bearer, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(120)


async def test_approvals_carry_what_they_would_allow_and_filter_by_technique_and_subject(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as stack:
        leak = detection(
            technique="AML.T0057",
            severity="high",
            subject={"tenant": "acme", "api_key": "k-77", "session": "s-77"},
        )
        injection = detection(
            severity="critical", subject={"tenant": "acme", "user": "u-5", "session": "s-5"}
        )
        for body in (leak, injection):
            assert (await stack.post_detection(body)).status_code == 202

        async def listed(**params: str) -> list[dict[str, Any]]:
            r = await stack.http.get(
                "/v1/approvals", params={"status": "pending", **params}, headers=bearer("approver")
            )
            assert r.status_code == 200, r.text
            items: list[dict[str, Any]] = r.json()["approvals"]
            return items

        async def both() -> list[dict[str, Any]]:
            items = await listed()
            return items if len(items) == 2 else []

        items = {a["action"]["type"]: a for a in await eventually(both, timeout=15)}
        revoke, disable = items["revoke_api_key"], items["disable_user"]
        assert revoke["action"] == {
            "type": "revoke_api_key",
            "target": "k-77",
            "risk": "high",
            "rule": "escalate-compromised-identity",
            "label": "Revoke API key",
            "duration_seconds": None,
            "irreversible": True,
        }
        assert (revoke["technique"], revoke["severity"], revoke["subject"]) == (
            "AML.T0057",
            "high",
            "api_key:k-77",
        )
        assert disable["action"]["target"] == "u-5" and disable["subject"] == "user:u-5"
        assert (disable["technique"], disable["severity"]) == ("AML.T0051", "critical")

        assert [a["action"]["type"] for a in await listed(technique="aml.t0057")] == [
            "revoke_api_key"
        ]
        assert [a["action"]["type"] for a in await listed(technique="AML.T0051")] == [
            "disable_user"
        ]
        assert [a["approval_id"] for a in await listed(subject="u-5")] == [disable["approval_id"]]
        assert await listed(subject="%") == []  # a wildcard is a character like any other
        assert await listed(technique="AML.T0057", subject="u-5") == []

        one = await stack.http.get(
            f"/v1/approvals/{revoke['approval_id']}", headers=bearer("approver")
        )
        assert one.json() == revoke
        inc = await stack.incident(revoke["incident_id"])
        assert inc["approvals"][0]["action"]["type"] == "revoke_api_key"

        bad = await stack.http.get(
            "/v1/approvals", params={"technique": "T" * 40}, headers=bearer("approver")
        )
        assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.technique"
