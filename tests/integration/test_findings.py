"""Findings of other detectors through the real intake: each adapter's finding in the
envelope becomes an incident with the mapped technique; a clean result is 204 and recorded
nowhere; a result of the wrong shape is 422 naming the field."""

from __future__ import annotations

import psycopg
import pytest
from temporalio.client import Client

from tests.support import detection, make_settings, running_stack
from tests.unit.test_adapters import CASES, load

pytestmark = pytest.mark.timeout(120)
BAD = {
    "llm-guard": "bad_scanners_type.json",
    "llamafirewall": "bad_decision.json",
    "lakera-guard": "bad_flagged.json",
    "azure-prompt-shields": "bad_document.json",
    "bedrock-guardrails": "bad_assessments.json",
    "nemo-guardrails": "bad_no_log.json",
}


def _envelope(fmt: str, result: object, i: int) -> dict[str, object]:
    body = detection(id=f"f-{i}", subject={"tenant": "acme", "session": f"fs-{i}"})
    for key in ("technique", "severity", "confidence"):
        body.pop(key)
    body["finding"] = {"format": fmt, "result": result}
    return body


async def test_each_detector_finding_becomes_an_incident_or_a_204(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue, subject_burst=1000)
    async with running_stack(settings, temporal_client, worker=False) as stack:
        for i, (name, expected) in enumerate(CASES):
            fmt = name.split("/")[0]
            r = await stack.post_detection(_envelope(fmt, load(name), i))
            if expected is None:
                assert r.status_code == 204 and r.content == b"", (name, r.text)
                continue
            assert r.status_code == 202, (name, r.text)
            inc = await stack.incident(r.json()["incident_id"])
            det = inc["detections"][-1]
            assert (det["technique"], det["severity"]) == expected[:2], name
        for fmt, bad in BAD.items():
            r = await stack.post_detection(_envelope(fmt, load(f"{fmt}/{bad}"), 999))
            assert r.status_code == 422, (fmt, r.text)
            assert r.json()["errors"][0]["field"].startswith("finding."), (fmt, r.text)
        r = await stack.post_detection(_envelope("virus-total", {}, 1000))
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "finding.format"
        both = {**_envelope("lakera-guard", {}, 1001), "technique": "AML.T0051"}
        r = await stack.post_detection(both)
        assert r.status_code == 422 and r.json()["errors"][0]["field"] == "technique"
    with psycopg.connect(db_url) as c:
        row = c.execute("SELECT count(*) FROM detections").fetchone()
    assert row is not None and row[0] == sum(1 for _, e in CASES if e is not None)
