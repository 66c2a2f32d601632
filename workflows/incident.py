"""IncidentWorkflow: one durable run per open incident.

Per detection: contain first (record, ATLAS facts, plan, apply low-risk enforcement in one
activity), then everything else in the background: assessment (history, risk, summary),
outbound hooks, notices, tickets, approvals for high-risk actions, and a durable timer per
temporary block that lifts it when its time is up. The incident closes once it has been
quiet for the correlation window and nothing is pending.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError

with workflow.unsafe.imports_passed_through():
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
        TicketNote,
        approval_id_for,
    )
    from soar.domain import (
        SIGNAL_DETECTION,
        UPDATE_DECIDE,
        CarriedState,
        DecisionRequest,
        DecisionResult,
        DetectionFacts,
        IncidentInput,
        TimedBlock,
    )

DECIDER_ROLES = frozenset({"approver", "admin"})
MAX_DETECTIONS_PER_RUN = 500  # keeps history bounded for a subject that floods us
RECENT_IDS = 1000

_FAST = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
_EXTERNAL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)


@dataclass
class _Approval:
    ref: ApprovalRef
    status: str = "pending"  # pending | approved | rejected | expired
    decision: DecisionRequest | None = None
    recorded: bool = False


@dataclass
class _State:
    detection_count: int = 0
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    active_keys: set[str] = field(default_factory=set)
    generations: dict[str, int] = field(default_factory=dict)
    timed_blocks: dict[str, TimedBlock] = field(default_factory=dict)


@workflow.defn(name="IncidentWorkflow")
class IncidentWorkflow:
    def __init__(self) -> None:
        self._queue: list[DetectionFacts] = []
        self._state = _State()
        self._approvals: dict[str, _Approval] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._timers: set[asyncio.Task[None]] = set()
        self._input: IncidentInput | None = None
        self._run_detections = 0
        # Ticket operations run one at a time, in the order they were asked for, so the
        # ticket exists before its first comment and the comments read in order.
        self._ticket_lock = asyncio.Lock()
        self._ticketing = True
        self._hooked: frozenset[str] | None = None

    # --- messages ---------------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_DETECTION)
    def add_detection(self, detection: DetectionFacts) -> None:
        self._queue.append(detection)

    @workflow.update(name=UPDATE_DECIDE)
    async def decide(self, req: DecisionRequest) -> DecisionResult:
        approval = self._approvals[req.approval_id]
        # Settle the decision before the first await: a second update sees it decided.
        approval.status = "approved" if req.decision == "approve" else "rejected"
        approval.decision = req
        decided_at = workflow.now().isoformat()
        await workflow.execute_activity(
            "record_decision",
            DecisionRecord(
                approval=approval.ref,
                decision=req.decision,
                actor=req.actor,
                channel=req.channel,
                comment=req.comment,
                decided_at=decided_at,
            ),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )
        approval.recorded = True
        self._spawn(self._show_outcome(
            ApprovalOutcome(approval.ref, approval.status, req.actor, decided_at)
        ))  # fmt: skip
        self._note(
            f"{approval.ref.approval_id}:decided",
            f"Approval for {approval.ref.action.action_type} {approval.ref.action.target}: "
            f"{approval.status} by {req.actor}" + (f" ({req.comment})" if req.comment else ""),
        )
        return DecisionResult(req.approval_id, approval.status, req.actor, decided_at)

    @decide.validator
    def _validate_decision(self, req: DecisionRequest) -> None:
        if req.decision not in ("approve", "reject"):
            raise ValueError("decision must be 'approve' or 'reject'")
        if req.role not in DECIDER_ROLES:
            raise ValueError(f"role {req.role!r} may not decide approvals (approver or admin)")
        approval = self._approvals.get(req.approval_id)
        if approval is None:
            raise ValueError(f"unknown approval {req.approval_id}")
        if approval.status != "pending":
            raise ValueError(f"approval {req.approval_id} is already {approval.status}")

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[str]:
        return [k for k, a in self._approvals.items() if a.status == "pending"]

    # --- main loop --------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: IncidentInput) -> str:
        self._input = inp
        if inp.carried is not None:
            self._restore(inp.carried)
        window = timedelta(seconds=inp.correlation_window_seconds)
        while True:
            await _wait(lambda: bool(self._queue), window)
            if self._queue:
                while self._queue:
                    await self._handle(self._queue.pop(0))
                if self._should_continue_as_new():
                    # Signals still queued would be lost by continue-as-new: only go once
                    # every in-flight step (other than block timers, which are carried) is
                    # done and the queue is empty.
                    await workflow.wait_condition(lambda: not self._busy(timers=False))
                    if not self._queue:
                        await self._continue_as_new(inp)
                continue
            # Quiet for a whole window: wait for what is still pending, then try to close.
            if self._busy():
                await workflow.wait_condition(lambda: bool(self._queue) or not self._busy())
                continue
            closed = await workflow.execute_activity(
                "close_incident",
                CloseInput(inp.incident_id, inp.correlation_window_seconds),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_FAST,
            )
            if closed:
                break
        # A detection signalled while the incident was closing (an outbox redelivery) is
        # still contained, on this incident's record.
        while self._queue:
            await self._handle(self._queue.pop(0))
        await workflow.wait_condition(lambda: not self._busy(timers=False))
        async with self._ticket_lock:
            await self._ticket_step("close_ticket", inp.incident_id)
        await workflow.wait_condition(workflow.all_handlers_finished)
        return "closed"

    def _busy(self, *, timers: bool = True) -> bool:
        return any(not t.done() for t in self._tasks if timers or t not in self._timers)

    def _spawn(self, coro: object, *, timer: bool = False) -> None:
        task: asyncio.Task[None] = asyncio.create_task(coro)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if timer:
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)

    async def _handle(self, det: DetectionFacts) -> None:
        st = self._state
        if det.key in st.recent_ids:
            return
        st.recent_ids.append(det.key)
        st.detection_count += 1
        self._run_detections += 1
        assert self._input is not None
        # A local activity: containment runs in the same workflow task, without a round trip
        # through the server's activity queue. It is short and idempotent, so re-running it
        # after a worker crash is safe.
        result: ContainResult = await workflow.execute_local_activity(
            "contain_detection",
            ContainInput(
                incident_id=self._input.incident_id,
                detection=det,
                repeat_count=st.detection_count,
                active_keys=tuple(sorted(st.active_keys)),
                generations=tuple(sorted(st.generations.items())),
            ),
            result_type=ContainResult,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )
        for ref in (*result.applied, *result.deferred, *result.needs_approval):
            st.active_keys.add(ref.action_key)
        self._ticketing = result.ticketing
        self._hooked = None if result.hooked is None else frozenset(result.hooked)
        # The ticket (a deferred action) is asked for first, so it takes the ticket lock
        # before the notes about the blocks just applied.
        for ref in result.deferred:
            self._spawn(self._run_action(ref))
        for ref in result.applied:
            self._note(f"{ref.action_id}:applied", f"Applied {ref.action_type} {ref.target}"
                       + (f" until {ref.expires_at}" if ref.expires_at else ""))  # fmt: skip
            self._spawn(self._deliver_hook(ref, "applied"))
            if ref.expires_at:
                st.timed_blocks[ref.action_id] = TimedBlock(
                    ref.action_id, ref.action_key, ref.expires_at, ref.action_type,
                    ref.incident_id, ref.tenant, ref.target, ref.technique,
                )  # fmt: skip
                self._spawn(self._lift_when_due(st.timed_blocks[ref.action_id], ref), timer=True)
        self._spawn(self._assess(det))
        for ref in result.needs_approval:
            self._spawn(self._approval_flow(ref))

    # --- background steps -------------------------------------------------------------------

    async def _assess(self, det: DetectionFacts) -> None:
        assert self._input is not None
        result: EnrichResult = await workflow.execute_activity(
            "enrich_incident",
            EnrichInput(self._input.incident_id, det),
            result_type=EnrichResult,
            start_to_close_timeout=timedelta(seconds=60),
            retry_policy=_FAST,
        )
        # The ticket usually opens before the assessment is ready: add it as a comment.
        self._note(
            f"{det.key}:assessed",
            f"Assessment (risk {result.risk_score:g}/100): {result.summary}",
        )

    async def _deliver_hook(self, ref: ActionRef, event: str) -> None:
        if self._hooked is not None and ref.action_type not in self._hooked:
            return
        try:
            await workflow.execute_activity(
                "deliver_hook",
                HookInput(ref, event),
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_EXTERNAL,
            )
        except ActivityError as err:
            await self._record_failure(ref, f"hook ({event}) failed: {_cause(err)}", hook=event)

    async def _run_action(self, ref: ActionRef) -> None:
        if ref.action_type == "open_ticket":
            async with self._ticket_lock:
                await self._execute_action(ref)
            return
        if await self._execute_action(ref) and ref.action_type != "notify":
            self._note(f"{ref.action_id}:applied", f"Applied {ref.action_type} {ref.target}")
            await self._deliver_hook(ref, "applied")

    async def _execute_action(self, ref: ActionRef) -> bool:
        try:
            await workflow.execute_activity(
                "run_action",
                ref,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_EXTERNAL,
            )
        except ActivityError as err:
            await self._record_failure(ref, _cause(err))
            return False
        return True

    def _note(self, event_key: str, text: str) -> None:
        assert self._input is not None
        if not self._ticketing:
            return
        note = TicketNote(self._input.incident_id, event_key, text)

        async def write() -> None:
            async with self._ticket_lock:
                await self._ticket_step("note_ticket", note)

        self._spawn(write())

    async def _ticket_step(self, name: str, arg: object) -> None:
        """Jira trouble never holds up the response: retried with backoff, then given up
        (the activity logs the failure)."""
        try:
            await workflow.execute_activity(
                name, arg, start_to_close_timeout=timedelta(seconds=60), retry_policy=_EXTERNAL
            )
        except ActivityError:
            workflow.logger.warning("ticket step %s gave up", name)

    async def _record_failure(self, ref: ActionRef, reason: str, hook: str | None = None) -> None:
        await workflow.execute_activity(
            "record_action_failure",
            FailureInput(ref, reason, hook),
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )

    async def _lift_when_due(self, block: TimedBlock, ref: ActionRef | None = None) -> None:
        due = datetime.fromisoformat(block.expires_at) - workflow.now()
        if due.total_seconds() > 0:
            await asyncio.sleep(due.total_seconds())
        await workflow.execute_activity(
            "lift_block",
            block,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )
        self._note(f"{block.action_id}:lifted", f"Lifted {block.action_key} (expired)")
        st = self._state
        st.timed_blocks.pop(block.action_id, None)
        st.active_keys.discard(block.action_key)
        st.generations[block.action_key] = st.generations.get(block.action_key, 1) + 1
        if ref is None and block.action_type:  # restored after continue-as-new
            ref = ActionRef(
                action_id=block.action_id, incident_id=block.incident_id,
                action_key=block.action_key, action_type=block.action_type, risk="low",
                tenant=block.tenant, target=block.target, technique=block.technique,
                expires_at=block.expires_at, status="applied",
            )  # fmt: skip
        if ref is not None:
            await self._deliver_hook(ref, "lifted")

    async def _approval_flow(self, action: ActionRef) -> None:
        assert self._input is not None
        timeout = self._input.approval_timeout_seconds
        # Known (and decidable) before its row is reported back: the row may be committed
        # and visible to people while the worker that wrote it dies.
        approval = self._approvals.setdefault(
            approval_id_for(action.action_id),
            _Approval(ApprovalRef(approval_id_for(action.action_id), action, "")),
        )
        ref: ApprovalRef = await workflow.execute_activity(
            "request_approval",
            ApprovalInput(action, timeout),
            result_type=ApprovalRef,
            start_to_close_timeout=timedelta(seconds=30),
            retry_policy=_FAST,
        )
        approval.ref = ref
        self._spawn(self._announce(ref))
        half = timedelta(seconds=timeout / 2)
        # Judge by the status, not by whether the wait timed out: a decision and the timer
        # can land in the same activation, and the decision must win then.
        await _wait(lambda: approval.status != "pending", half)
        if approval.status == "pending":
            await workflow.execute_activity(
                "escalate_approval",
                ApprovalEvent(ref, "escalated"),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_FAST,
            )
            # Judge by the status, not by whether the wait timed out: a decision and the timer
        # can land in the same activation, and the decision must win then.
        await _wait(lambda: approval.status != "pending", half)
        if approval.status == "pending":
            approval.status = "expired"
            await workflow.execute_activity(
                "expire_approval",
                ApprovalEvent(ref, "expired"),
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_FAST,
            )
            self._state.active_keys.discard(action.action_key)
            self._note(
                f"{ref.approval_id}:expired",
                f"Approval for {action.action_type} {action.target} expired: not taken",
            )
            return
        await workflow.wait_condition(lambda: approval.recorded)
        if approval.status == "approved":
            await self._run_action(action)
        else:
            self._state.active_keys.discard(action.action_key)

    async def _show_outcome(self, outcome: ApprovalOutcome) -> None:
        try:
            await workflow.execute_activity(
                "show_approval_outcome",
                outcome,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_EXTERNAL,
            )
        except ActivityError:
            workflow.logger.warning("outcome of %s not shown", outcome.approval.approval_id)

    async def _announce(self, ref: ApprovalRef) -> None:
        """Tell the humans (Slack when configured). Never blocks the decision: the approval
        stays decidable through the API and web UI if Slack is down."""
        try:
            await workflow.execute_activity(
                "announce_approval",
                ref,
                start_to_close_timeout=timedelta(seconds=30),
                retry_policy=_EXTERNAL,
            )
        except ActivityError:
            workflow.logger.warning("approval %s could not be announced", ref.approval_id)

    # --- bounded history --------------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        if any(a.status == "pending" for a in self._approvals.values()):
            return False  # a pending approval lives in this run's state
        info = workflow.info()
        return self._run_detections >= MAX_DETECTIONS_PER_RUN or info.is_continue_as_new_suggested()

    async def _continue_as_new(self, inp: IncidentInput) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        if self._queue:
            return  # arrived while handlers finished: handle them in this run first
        st = self._state
        carried = CarriedState(
            detection_count=st.detection_count,
            recent_detection_ids=tuple(st.recent_ids),
            active_keys=tuple(sorted(st.active_keys)),
            generations=tuple(sorted(st.generations.items())),
            timed_blocks=tuple(st.timed_blocks.values()),
        )
        workflow.continue_as_new(
            IncidentInput(
                incident_id=inp.incident_id,
                tenant=inp.tenant,
                subject_key=inp.subject_key,
                correlation_window_seconds=inp.correlation_window_seconds,
                approval_timeout_seconds=inp.approval_timeout_seconds,
                carried=carried,
            )
        )

    def _restore(self, c: CarriedState) -> None:
        st = self._state
        st.detection_count = c.detection_count
        st.recent_ids.extend(c.recent_detection_ids)
        st.active_keys = set(c.active_keys)
        st.generations = dict(c.generations)
        for block in c.timed_blocks:
            st.timed_blocks[block.action_id] = block
            self._spawn(self._lift_when_due(block), timer=True)


async def _wait(condition: object, within: timedelta) -> bool:
    try:
        await workflow.wait_condition(condition, timeout=within)  # type: ignore[arg-type]
    except TimeoutError:
        return False
    return True


def _cause(err: ActivityError) -> str:
    cause: BaseException = err
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause  # type: ignore[attr-defined]
    return str(cause)[:500]
