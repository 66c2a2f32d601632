"""An analyst's actions in IncidentWorkflow (time-skipping test server, fake activities):
what they leave in the workflow's state survives continue-as-new, a lifted block's timer
lifts nothing, and closing as a true positive keeps the other blocks until their time."""

from __future__ import annotations

import asyncio
import gzip
import os
import uuid
from pathlib import Path
from typing import Any

import pytest
from temporalio import activity
from temporalio.client import WorkflowUpdateFailedError
from temporalio.worker import Worker

from soar.contracts import (
    ActionRef,
    AnalystCloseInput,
    AnalystStep,
    ApprovalInput,
    ContainNowInput,
    ContainNowResult,
    ExtendInput,
    LiftInput,
    LiftResult,
)
from soar.decisions import sign_decision
from soar.domain import AnalystRequest, AnalystResult, DecisionRequest, DecisionResult
from tests.workflow.test_incident_workflow import (
    _CLOCK,
    DECISION_KEY,
    Fakes,
    det,
    env,  # noqa: F401 (the module's time-skipping server)
    refused,
    runs_of,
    signed,
    start,
    wait_for,
)
from workflows.incident import IncidentWorkflow

pytestmark = pytest.mark.timeout(60)


class AnalystFakes(Fakes):
    def __init__(self) -> None:
        super().__init__()
        self.requested_by: list[str] = []

    def activities(self) -> list[object]:
        fakes = self
        every = super().activities()
        # request_approval is replaced below, to see who asked.
        base = [a for a in every if getattr(a, "__name__", "") != "request"]
        assert len(base) == len(every) - 1

        @activity.defn(name="request_approval")
        async def request(inp: ApprovalInput) -> Any:
            from soar.contracts import ApprovalRef, approval_id_for

            fakes.requested_by.append(inp.requested_by)
            ref = ApprovalRef(approval_id_for(inp.action.action_id), inp.action, "later")
            fakes.approvals[ref.approval_id] = ref
            fakes.log.append("approval requested")
            return ref

        @activity.defn(name="lift_block_now")
        async def lift_now(inp: LiftInput) -> LiftResult:
            fakes.log.append(f"lifted now {inp.action_id} by {inp.step.actor}")
            session = inp.action_id.rsplit(":", 2)[-2]
            ref = ActionRef(
                action_id=inp.action_id,
                incident_id=inp.step.incident_id,
                action_key=f"block_session:{session}",
                action_type="block_session",
                risk="low",
                tenant="acme",
                target=session,
                technique="AML.T0051",
                status="lifted",
            )
            return LiftResult("2026-12-02T00:00:00+00:00", ref)

        @activity.defn(name="extend_block")
        async def extend(inp: ExtendInput) -> str:
            return inp.expires_at

        @activity.defn(name="contain_now")
        async def contain_now(inp: ContainNowInput) -> ContainNowResult:
            fakes.log.append(f"contain now by {inp.step.actor}")
            ref = ActionRef(
                action_id=f"{inp.step.incident_id}:revoke_api_key:k-1:2",
                incident_id=inp.step.incident_id,
                action_key="revoke_api_key:k-1",
                action_type="revoke_api_key",
                risk="high",
                tenant="acme",
                target="k-1",
                technique="AML.T0051",
                status="pending_approval",
            )
            return ContainNowResult(ref, 2)

        @activity.defn(name="close_incident_as")
        async def close_as(inp: AnalystCloseInput) -> str:
            fakes.log.append(f"closed as {inp.disposition} by {inp.step.actor}")
            return "2026-12-02T00:00:00+00:00"

        @activity.defn(name="record_note")
        async def note(step: AnalystStep) -> None:
            fakes.log.append(f"note {step.reason}")

        return [*base, request, lift_now, extend, contain_now, close_as, note]


async def record(environment: Any, handle: Any, name: str) -> None:
    """SOAR_RECORD_HISTORIES=DIR: every run's history there, for test_replay.py (how the
    v2 histories in tests/fixtures/histories were made)."""
    out = os.environ.get("SOAR_RECORD_HISTORIES")
    if not out:
        return
    client = environment.client
    for n, (run_id, _) in enumerate(await runs_of(environment, handle)):
        history = await client.get_workflow_handle(handle.id, run_id=run_id).fetch_history()
        path = Path(out) / f"v2-{name}-{n}.json.gz"
        path.write_bytes(gzip.compress(history.to_json().encode()))


async def act(handle: Any, req: AnalystRequest) -> AnalystResult:
    now = await _CLOCK[0].get_current_time()
    result: AnalystResult = await handle.execute_update(
        "analyst_action", sign_decision(req, DECISION_KEY, now=now), result_type=AnalystResult
    )
    return result


async def test_analyst_state_survives_continue_as_new_and_close_keeps_true_positive_blocks(
    env: Any,  # noqa: F811
) -> None:
    fakes, tq = AnalystFakes(), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0), max_detections_per_run=5)
        iid = handle.id.removeprefix("incident-")
        first = (await handle.describe()).run_id

        async def contained() -> bool:
            return "contain d-0 x1" in fakes.log

        await wait_for(contained, "first detection contained")
        # Contain now (high risk): an approval asked for by alice.
        done = await act(handle, AnalystRequest("contain", "alice", "analyst", action_id="a-1"))
        assert done.status == "pending_approval"
        approval = done.approval_id

        async def asked() -> bool:
            return fakes.requested_by == ["alice"]

        await wait_for(asked, "approval requested by alice")
        for n in range(1, 9):
            await handle.signal("add_detection", det(n, session=f"s-{n}"))

        async def handed_over() -> bool:
            d = await env.client.get_workflow_handle(handle.id).describe()
            return bool(d.run_id != first and "contain d-8 x9" in fakes.log)

        await wait_for(handed_over, "continue-as-new")
        by_id = env.client.get_workflow_handle(handle.id)
        # Carried: who asked (alice may not decide it) and the block timers (lift one now).
        await refused(
            by_id,
            DecisionRequest(approval, "approve", "alice", "approver", approver="alice"),
            "second person",
        )
        ok = await by_id.execute_update(
            "decide",
            await signed(DecisionRequest(approval, "approve", "bob", "approver", approver="bob")),
            result_type=DecisionResult,
        )
        assert ok.status == "approved"
        s1 = f"{iid}:block_session:s-1:1"
        lifted = await act(by_id, AnalystRequest("lift", "carol", "analyst", action_id=s1))
        assert lifted.status == "lifted"
        with pytest.raises(WorkflowUpdateFailedError) as again:
            await act(by_id, AnalystRequest("extend", "carol", "analyst", action_id=s1, seconds=60))
        assert "not a temporary block in force" in str(again.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as unsigned:
            await by_id.execute_update(
                "analyst_action", AnalystRequest("note", "eve", "admin", reason="x")
            )
        assert "not signed" in str(unsigned.value.cause)
        with pytest.raises(WorkflowUpdateFailedError) as role:
            await act(by_id, AnalystRequest("note", "dave", "approver", reason="x"))
        assert "may not act" in str(role.value.cause)

        closed = await act(
            by_id, AnalystRequest("close", "carol", "analyst", disposition="true_positive")
        )
        assert closed.status == "closed"
        with pytest.raises(WorkflowUpdateFailedError) as twice:
            await act(by_id, AnalystRequest("close", "carol", "analyst", disposition="benign"))
        assert "closed" in str(twice.value.cause)
        # The run waits for the blocks kept, lifted at their time, then ends.
        assert await handle.result() == "closed"
        await record(env, handle, "analyst_state_survives_continue_as_new")
    assert fakes.log.count("closed as true_positive by carol") == 1
    assert "closed" not in fakes.log  # the automatic close never ran
    assert f"lifted now {s1} by carol" in fakes.log
    lifts = [e for e in fakes.log if e.startswith("lift block_session")]
    assert "lift block_session:s-1" not in lifts  # its timer did nothing
    assert {f"lift block_session:s-{n}" for n in range(2, 9)} <= set(lifts)
    assert fakes.log.count("run revoke_api_key:k-1") == 1


class SlowExtendFakes(AnalystFakes):
    """Extending takes a while, so a second request on the same block arrives meanwhile."""

    def activities(self) -> list[object]:
        found = [a for a in super().activities() if activity_name(a) != "extend_block"]

        @activity.defn(name="extend_block")
        async def extend(inp: ExtendInput) -> str:
            self.log.append(f"extending {inp.action_id}")
            await asyncio.sleep(1.0)
            return inp.expires_at

        return [*found, extend]


def activity_name(fn: object) -> str:
    defn = getattr(fn, "__temporal_activity_definition", None)
    return str(getattr(defn, "name", ""))


async def test_a_block_being_extended_is_not_lifted_meanwhile_and_its_timer_stays_dead(
    env: Any,  # noqa: F811
) -> None:
    fakes, tq = SlowExtendFakes(), "tq-" + uuid.uuid4().hex[:6]
    async with Worker(
        env.client, task_queue=tq, workflows=[IncidentWorkflow], activities=fakes.activities()
    ):
        handle = await start(env, tq, det(0))
        iid = handle.id.removeprefix("incident-")

        async def contained() -> bool:
            return "contain d-0 x1" in fakes.log

        await wait_for(contained, "first detection contained")
        s0 = f"{iid}:block_session:s-9:1"
        extending = asyncio.create_task(
            act(handle, AnalystRequest("extend", "carol", "analyst", action_id=s0, seconds=60))
        )

        async def started() -> bool:
            return f"extending {s0}" in fakes.log

        await wait_for(started, "extend in flight")
        with pytest.raises(WorkflowUpdateFailedError) as busy:
            await act(handle, AnalystRequest("lift", "dave", "analyst", action_id=s0))
        assert "being lifted or extended" in str(busy.value.cause)
        assert (await extending).status == "extended"
        # Now it may be lifted, once; its timer then lifts nothing.
        lifted = await act(handle, AnalystRequest("lift", "dave", "analyst", action_id=s0))
        assert lifted.status == "lifted"
        closed = await act(handle, AnalystRequest("close", "dave", "analyst", disposition="benign"))
        assert closed.status == "closed"
        assert await handle.result() == "closed"
    assert fakes.log.count(f"lifted now {s0} by dave") == 1
    assert "lift block_session:s-9" not in fakes.log
