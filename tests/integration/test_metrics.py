"""/metrics answers what on-call asks once detections have flowed: containment latency,
detections by source and outcome, open incidents, pending approvals by age, decisions by
channel, hook / Slack / Jira calls, the log sealer, the enforcement replica; and the
worker's own /metrics port serves what the worker records."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from soar.observability.serve import serve_worker_metrics
from soar.stack.proc import free_port
from tests.fakes.jira_api import FakeJira
from tests.fakes.slack_api import FakeSlack
from tests.integration.test_tracing import TraceparentHook
from tests.support import (
    WEBHOOK_SECRET,
    bearer,
    detection,
    eventually,
    make_settings,
    running_stack,
    sign,
)

pytestmark = pytest.mark.timeout(120)

PLAYBOOK = """\
name: observed
rules:
  - name: contain
    when: {techniques: ['AML.T0051*'], severity_at_least: medium}
    actions:
      - {type: block_session, risk: low, duration: 15m}
      - {type: open_ticket, risk: low}
      - {type: notify, risk: low}
  - name: escalate
    when: {severity_at_least: critical}
    actions:
      - {type: revoke_api_key, risk: high}
"""
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def samples(text: str) -> Samples:
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found[(s.name, frozenset(s.labels.items()))] = s.value
    return found


def value(found: Samples, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (-1: none at all)."""
    hits = [v for (n, ls), v in found.items() if n == name and set(labels.items()) <= set(ls)]
    return sum(hits) if hits else -1.0


@pytest.fixture
def fakes() -> Iterator[tuple[FakeSlack, FakeJira]]:
    with FakeSlack(token="xoxb-test") as slack, FakeJira(basic_auth=("bot", "tok")) as jira:
        yield slack, jira


async def test_metrics_after_detections_flow(
    db_url: str,
    temporal_address: str,
    temporal_client: object,
    task_queue: str,
    tmp_path: Path,
    fakes: tuple[FakeSlack, FakeJira],
) -> None:
    slack, jira = fakes
    hook = TraceparentHook()
    playbook = tmp_path / "pb.yaml"
    playbook.write_text(PLAYBOOK)
    settings = make_settings(
        db_url,
        temporal_address,
        task_queue,
        policy_file=playbook,
        action_hooks={"block_session": hook.url},
        hook_secret=WEBHOOK_SECRET,
        slack_bot_token="xoxb-test",
        slack_signing_secret="slack-signing-secret-0123456789",
        slack_approval_channel="C-SEC",
        slack_api_url=slack.api_url,
        jira_url=jira.url,
        jira_user="bot",
        jira_token="tok",
        jira_project="SEC",
        worker_metrics_port=free_port(),
    )
    async with running_stack(settings, temporal_client) as stack:  # type: ignore[arg-type]
        # Counters are per process and other tests ran in this one: compare with the start.
        start = samples((await stack.http.get("/metrics")).text)
        first = detection(subject={"tenant": "acme", "session": "s-m1", "user": "u-m1"})
        assert (await stack.post_detection(first)).status_code == 202
        assert (await stack.post_detection(first)).status_code == 200  # duplicate
        leak = detection(
            technique="AML.T0057",
            severity="critical",
            subject={"tenant": "acme", "api_key": "k-m2"},
        )
        r = await stack.post_detection(leak)
        assert r.status_code == 202
        raw = json.dumps(detection()).encode()
        bad = sign(raw, secret="whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVo0NTY3ODk=")
        assert (
            await stack.http.post("/v1/detections", content=raw, headers=bad)
        ).status_code == 401

        async def pending() -> list[dict[str, object]]:
            got = await stack.http.get(
                "/v1/approvals", params={"status": "pending"}, headers=bearer("admin")
            )
            return list(got.json()["approvals"])

        approval = (await eventually(pending, timeout=20))[0]
        await eventually(lambda: hook.traceparents, timeout=20)
        await eventually(lambda: jira.issue_keys, timeout=30)

        def settled(found: Samples) -> bool:
            # Every count below is recorded after the step it counts (a Slack call is counted
            # when it answers, which can be after the approval row shows): poll until all have.
            outbound = all(
                value(found, "soar_outbound_calls_total", target=t, outcome="ok")
                > max(value(start, "soar_outbound_calls_total", target=t, outcome="ok"), 0.0)
                for t in ("hook", "slack", "jira")
            )
            contained = value(found, "soar_containment_latency_seconds_count") > max(
                value(start, "soar_containment_latency_seconds_count"), 0.0
            )
            return (
                outbound and contained and value(found, "soar_audit_seal_delay_seconds_count") > 0
            )

        async def scraped() -> Samples | None:
            found = samples((await stack.http.get("/metrics")).text)
            return found if settled(found) else None

        before = await eventually(scraped, timeout=30)
        ok = await stack.http.post(
            f"/v1/approvals/{approval['approval_id']}/decision",
            json={"decision": "reject", "comment": "false positive"},
            headers=bearer("approver"),
        )
        assert ok.status_code in (200, 202), ok.text  # (202: recorded a moment later)

        async def decided_shown() -> Samples | None:
            found = samples((await stack.http.get("/metrics")).text)
            return found if value(found, "soar_approvals_pending", age="0-15m") == 0 else None

        after = await eventually(decided_shown, timeout=10)

        # The worker process serves its own (run_worker starts it; this stack's worker runs
        # in the test's process, so start it here).
        server = serve_worker_metrics(settings)
        assert server is not None
        try:
            got = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
        finally:
            server.stop()
        worker_text = got.text

    # Detections, by source and outcome.
    def grew(name: str, **labels: str) -> float:
        return value(before, name, **labels) - max(value(start, name, **labels), 0.0)

    assert grew("soar_detections_total", outcome="accepted", source="default") == 2
    assert grew("soar_detections_total", outcome="duplicate", source="default") == 1
    assert grew("soar_detections_total", outcome="refused", reason="signature") == 1
    # Containment latency: one low-risk block, received to effective, under a second here.
    assert grew("soar_containment_latency_seconds_count") == 1
    assert value(before, "soar_containment_latency_seconds_bucket", le="1.0") >= 1
    assert value(before, "soar_activity_duration_seconds_count", activity="contain_detection") >= 1
    # What is open and waiting.
    assert value(before, "soar_incidents_open", severity="high") >= 1
    assert value(before, "soar_incidents_open", severity="critical") >= 1
    assert value(before, "soar_approvals_pending", age="0-15m") >= 1
    assert value(before, "soar_approvals_pending", age="4h+") == 0
    assert 0 <= value(before, "soar_approvals_oldest_pending_age_seconds") < 900
    # Decisions by channel.
    rejected = {"channel": "api", "outcome": "rejected"}
    decided = value(after, "soar_approval_decisions_total", **rejected)
    assert decided - max(value(start, "soar_approval_decisions_total", **rejected), 0) == 1
    assert value(after, "soar_approvals_pending", age="0-15m") == 0
    # Calls to the outside world.
    for target in ("hook", "slack", "jira"):
        assert grew("soar_outbound_calls_total", target=target, outcome="ok") >= 1, target
        assert value(before, "soar_outbound_call_duration_seconds_count", target=target) >= 1
    # The log sealer and the enforcement replica.
    assert value(before, "soar_audit_seal_delay_seconds_count") >= 1
    assert value(before, "soar_audit_unsealed_rows") >= 0
    assert value(before, "soar_enforcement_replica_fresh") == 1
    assert 0 <= value(before, "soar_enforcement_replica_staleness_seconds") < 5
    assert value(before, "soar_enforcement_replica_lag_changes") >= 0
    # The worker's own port serves what the worker records.
    assert "soar_containment_latency_seconds_count" in worker_text
    assert 'soar_outbound_calls_total{outcome="ok",target="hook"}' in worker_text


def test_worker_metrics_port_is_off_unless_set(db_url: str, temporal_address: str) -> None:
    settings = make_settings(db_url, temporal_address, "tq-none")
    assert settings.worker_metrics_port is None
    assert serve_worker_metrics(settings) is None
