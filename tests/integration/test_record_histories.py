"""Records histories of the current IncidentWorkflow from a real stack, for
tests/workflow/test_replay.py to replay after later changes (`v2-*`: local assessment,
offline summary written by the assessment). Skipped unless SOAR_RECORD_HISTORIES=1:

    SOAR_RECORD_HISTORIES=1 .venv/bin/pytest -q tests/integration/test_record_histories.py
"""

from __future__ import annotations

import gzip
import os
from pathlib import Path
from typing import Any

import pytest
from temporalio.client import Client

from tests.support import bearer, detection, eventually, make_settings, running_stack

OUT = Path(__file__).parents[1] / "fixtures" / "histories"

pytestmark = pytest.mark.skipif(
    os.environ.get("SOAR_RECORD_HISTORIES") != "1", reason="records fixtures on request only"
)


async def _save(client: Client, workflow_id: str, name: str) -> None:
    history = await client.get_workflow_handle(workflow_id).fetch_history()
    (OUT / f"v2-{name}.json.gz").write_bytes(gzip.compress(history.to_json().encode(), mtime=0))


async def test_record_containment_assessment_and_a_decision(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as stack:
        subject = {"tenant": "acme", "user": "u-h2", "session": "s-h2", "api_key": "k-h2"}
        first = await stack.post_detection(
            detection(technique="AML.T0057", severity="critical", subject=subject)
        )
        iid = first.json()["incident_id"]
        # The same technique again within a minute: contained, not assessed again.
        await stack.post_detection(
            detection(technique="AML.T0057", severity="critical", subject=subject)
        )
        await stack.post_detection(detection(technique="AML.T0051", subject=subject))

        async def pending() -> list[dict[str, Any]]:
            got = await stack.http.get(
                "/v1/approvals",
                params={"status": "pending", "incident_id": iid},
                headers=bearer("admin"),
            )
            return list(got.json()["approvals"])

        approvals = await eventually(pending, timeout=30)
        ok = await stack.http.post(
            f"/v1/approvals/{approvals[0]['approval_id']}/decision",
            json={"decision": "approve"},
            headers=bearer("approver"),
        )
        assert ok.status_code in (200, 202), ok.text
        if len(approvals) > 1:
            no = await stack.http.post(
                f"/v1/approvals/{approvals[1]['approval_id']}/decision",
                json={"decision": "reject", "comment": "not this one"},
                headers=bearer("approver"),
            )
            assert no.status_code in (200, 202), no.text

        async def decided() -> bool:
            return not await pending()

        await eventually(decided, timeout=30)
        inc = await stack.http.get(f"/v1/incidents/{iid}", headers=bearer("admin"))
        await _save(stack.client, inc.json()["workflow_id"], "assessed_locally_and_decided")
