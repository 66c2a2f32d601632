"""IncidentWorkflow: one durable run per open incident.

Per detection: contain first (record, ATLAS facts, plan, apply low-risk enforcement in one
activity), then everything else in the background: assessment (history, risk, summary),
outbound hooks, notices, tickets, approvals for high-risk actions, and a durable timer per
temporary block that lifts it when its time is up. The incident closes once it has been
quiet for the correlation window and nothing is pending.

Bulkheads: containment, decisions, approvals, lifting, failure records and closing run on
the workflow's own (core) task queue; every step that talks to Slack, Jira or an outbound
hook runs on the external queue, retried with growing backoff for at most
`external_max_age_seconds`, then given up and logged as failed (core).

Bounded history: after `MAX_DETECTIONS_PER_RUN` detections (or when the server suggests it)
the run continues as new, carrying its state: dedup ids, active keys, block timers, pending
approvals (with their deadlines and whether they were escalated) and the external steps
still being retried. A repeat of a technique and severity assessed within the last minute
is contained but not assessed again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.actions import ActionActivities
    from activities.analyst import AnalystActivities
    from activities.approvals import ApprovalActivities
    from activities.containment import ContainmentActivities
    from activities.summaries import SummaryActivities
    from activities.tickets import TicketActivities
    from soar import actions, decisions
    from soar.bounds import has_unsafe_chars
    from soar.contracts import (
        ActionRef,
        AnalystCloseInput,
        AnalystStep,
        ApprovalEvent,
        ApprovalInput,
        ApprovalOutcome,
        ApprovalRef,
        CloseInput,
        ContainInput,
        ContainNowInput,
        ContainNowResult,
        DecisionRecord,
        EnrichInput,
        ExtendInput,
        FailureInput,
        HookInput,
        LiftInput,
        LiftResult,
        StepFailure,
        SummariseInput,
        SummaryResult,
        TicketNote,
        approval_id_for,
    )
    from soar.domain import (
        ANALYST_KINDS,
        ANALYST_ROLES,
        DECIDER_ROLES,
        DISPOSITIONS,
        MAX_EXTEND_SECONDS,
        MAX_REASON,
        SIGNAL_DETECTION,
        UPDATE_ANALYST,
        UPDATE_DECIDE,
        AnalystRequest,
        AnalystResult,
        CarriedAction,
        CarriedApproval,
        CarriedState,
        CarriedStep,
        DecisionRequest,
        DecisionResult,
        DetectionFacts,
        IncidentInput,
        TimedBlock,
    )

# Keeps every run's history well under Temporal's limits for a subject that floods us: a
# detection costs about 5-25 events (signal, containment marker, task, a ticket note and a
# hook for a new block, its timer and lift), so 250 stay far below 10,000.
MAX_DETECTIONS_PER_RUN = 250
RECENT_IDS = 1000
MAX_CARRIED_STEPS = 1000  # more than this still retrying: finish some before handing over
MAX_CARRIED_QUEUE = 1000  # detections queued at the hand-over, carried (~0.5 MB at most)
MAX_MERGED = 50  # ticket notes merged into one comment while Jira is slow or busy
MAX_NOTE_TEXT = 20_000
HANDOVER_WAIT = timedelta(seconds=2)  # for core steps in flight, before containing more
ASSESS_COALESCE = timedelta(minutes=1)
DEFAULT_EXTERNAL_MAX_AGE = 3600
PATCH_BULKHEADS = "bulkheads-v1"
PATCH_QUORUM = "approval-quorum-v1"  # an approval may need several distinct approvers
PATCH_SUMMARY = "summary-v1"
# The assessment as a local activity: no activity task through the server (it is short,
# idempotent, and touches only PostgreSQL, like containment).
PATCH_LOCAL_ASSESS = "local-assess-v1"
# An approved action with a duration (e.g. disable_user for a day) lifts itself at its time,
# like a low-risk block: logged, hooked ("lifted"), and liftable or extendable by an analyst.
PATCH_APPROVED_TIMER = "approved-timer-v1"

_P = TypeVar("_P")
_R = TypeVar("_R")
_CORE_TIMEOUT = timedelta(seconds=30)
_FAST = RetryPolicy(
    initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=10)
)
# Slack, Jira, hooks: growing backoff, no attempt limit; the schedule-to-close timeout (the
# external retry budget) decides when a step is given up.
_EXTERNAL = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    backoff_coefficient=2.0,
    maximum_interval=timedelta(seconds=60),
)
# What runs started before the bulkheads used (kept for their replay).
_EXTERNAL_V0 = RetryPolicy(
    initial_interval=timedelta(seconds=1),
    maximum_interval=timedelta(seconds=60),
    maximum_attempts=8,
)


@dataclass
class _Approval:
    ref: ApprovalRef
    status: str = "pending"  # pending | approved | rejected | expired
    recorded: bool = False
    escalated: bool = False
    # True while only its timers are running: the approval can then be carried across
    # continue-as-new (anything else, e.g. a decision being applied, is finished first).
    waiting: bool = False
    escalate_at: datetime | None = None
    expire_at: datetime | None = None
    # The approvals counted towards the quorum so far: (approver, actor), in order. Part of
    # the workflow's state (rebuilt on replay, carried across continue-as-new).
    votes: list[tuple[str, str]] = field(default_factory=list)
    requested_by: str = ""  # an analyst's "contain now": someone else must decide it


@dataclass
class _Step:
    """An external step; `open` while it may be handed to the next run (waiting for the
    ticket lock or in its Slack / Jira / hook activity)."""

    carried: CarriedStep
    open: bool = True
    handed: bool = False  # cancelled for the hand-over: the next run starts it again
    started: bool = False  # a note: holds the ticket lock, no more notes merged into it
    merged: int = 1  # a note: how many notes it carries
    keys: tuple[str, ...] = ()  # a note: the event keys merged into it


@dataclass
class _State:
    detection_count: int = 0
    recent_ids: deque[str] = field(default_factory=lambda: deque(maxlen=RECENT_IDS))
    active_keys: set[str] = field(default_factory=set)
    generations: dict[str, int] = field(default_factory=dict)
    timed_blocks: dict[str, TimedBlock] = field(default_factory=dict)


@workflow.defn(name="IncidentWorkflow")
class IncidentWorkflow:
    @workflow.init
    def __init__(self, inp: IncidentInput) -> None:
        self._queue: list[DetectionFacts] = []
        self._state = _State()
        self._approvals: dict[str, _Approval] = {}
        self._tasks: set[asyncio.Task[object]] = set()
        self._timers: set[asyncio.Task[object]] = set()
        # Tasks that may be handed over at continue-as-new, while their predicate holds.
        self._carriable: dict[asyncio.Task[object], Callable[[], bool]] = {}
        self._steps: dict[asyncio.Task[object], _Step] = {}  # in start order
        self._input = inp
        self._run_detections = 0
        # Ticket operations run one at a time, in the order they were asked for, so the
        # ticket exists before its first comment and the comments read in order.
        self._ticket_lock = asyncio.Lock()
        self._ticketing = True
        self._hooked: frozenset[str] | None = None
        self._ext_queue = inp.external_task_queue
        self._ext_age = inp.external_max_age_seconds
        self._assessed: dict[tuple[str, str], datetime] = {}
        self._v1 = False  # set in run(): the bulkhead behaviour (not for older histories)
        self._handed: list[CarriedStep] = []
        self._last_note: _Step | None = None
        self._sleeping: set[str] = set()  # block timers waiting (not lifting): carriable
        # An analyst's actions: each block's timer task (cancelled to lift or extend early),
        # the disposition once an analyst closed the incident (carried), whether it closed
        # by itself, and a "contain now" in flight.
        self._lift_tasks: dict[str, asyncio.Task[object]] = {}
        self._closed_as = inp.carried.closed_as if inp.carried is not None else ""
        self._ended = False
        self._containing = False
        self._lifting: set[str] = set()  # actions without a timer being lifted now
        # Serialising an analyst's actions with containment and with each other: a detection
        # being contained (its result not yet taken up), and the timed blocks being lifted or
        # extended now. Each is refused by the validator while the other is in flight.
        self._handling = False
        self._block_busy: set[str] = set()
        # Restored here, not in run(): a decision sent to the new run must find its approval
        # even when it is delivered in the run's very first activation.
        if inp.carried is not None:
            for c in inp.carried.approvals:
                self._approvals[c.approval_id] = _Approval(
                    ApprovalRef(c.approval_id, _action(c.action), c.expires_at, c.quorum),
                    votes=[(who, by) for who, by in c.votes],
                    escalated=c.escalated,
                    waiting=True,
                    escalate_at=datetime.fromisoformat(c.escalate_at),
                    expire_at=datetime.fromisoformat(c.expire_at),
                    requested_by=c.requested_by,
                )

    # --- messages ---------------------------------------------------------------------------

    @workflow.signal(name=SIGNAL_DETECTION)
    def add_detection(self, detection: DetectionFacts) -> None:
        self._queue.append(detection)

    @workflow.update(name=UPDATE_DECIDE)
    async def decide(self, req: DecisionRequest) -> DecisionResult:
        approval = self._approvals[req.approval_id]
        quorum = approval.ref.quorum
        if req.decision == "approve" and quorum > 1 and workflow.patched(PATCH_QUORUM):
            # Counted before the first await: a second update from the same approver is
            # refused, and the one that completes the quorum decides.
            approval.votes.append((_approver(req), req.actor))
            if len(approval.votes) < quorum:
                return await self._count_approval(approval, req)
        # Settle the decision before the first await: a second update sees it decided.
        approval.status = "approved" if req.decision == "approve" else "rejected"
        decided_at = await self._record_decision(approval, req)
        approval.recorded = True
        self._show_outcome(approval, approval.status, req.actor, decided_at)
        self._note(
            f"{approval.ref.approval_id}:decided",
            f"Approval for {approval.ref.action.action_type} {approval.ref.action.target}: "
            f"{approval.status} by {req.actor}" + (f" ({req.comment})" if req.comment else ""),
        )
        return DecisionResult(
            req.approval_id,
            approval.status,
            req.actor,
            decided_at,
            approvals=len(approval.votes),
            quorum=approval.ref.quorum,
        )

    async def _record_decision(self, approval: _Approval, req: DecisionRequest) -> str:
        """The decision (or one vote of a quorum) in the database and the action log; when."""
        decided_at = workflow.now().isoformat()
        await _core(
            ApprovalActivities.record_decision,
            DecisionRecord(
                approval=approval.ref,
                decision=req.decision,
                actor=req.actor,
                channel=req.channel,
                comment=req.comment,
                decided_at=decided_at,
                **self._votes_of(approval, req),
            ),
        )
        return decided_at

    def _show_outcome(self, approval: _Approval, event: str, by: str | None, at: str) -> None:
        """Every channel shows what became of the approval (an external step)."""
        self._step(
            CarriedStep(
                "outcome",
                self._now_iso(),
                action=_carry(approval.ref.action),
                approval_id=approval.ref.approval_id,
                approval_expires_at=approval.ref.expires_at,
                event=event,
                by=by,
                at=at,
            )
        )

    def _votes_of(self, approval: _Approval, req: DecisionRequest) -> dict[str, Any]:
        """The quorum fields of the decision's record (none for a one-approver rule, so that
        its record is what it always was)."""
        if approval.ref.quorum <= 1:
            return {}
        return {
            "approver": _approver(req),
            "votes": tuple(by for _, by in approval.votes),
            "approvers": tuple(who for who, _ in approval.votes),
            "quorum": approval.ref.quorum,
        }

    async def _count_approval(self, approval: _Approval, req: DecisionRequest) -> DecisionResult:
        """An approval short of the quorum: recorded (the action log gets a row), shown in
        the channels ("1 of 2 approvals"), and the approval stays pending."""
        decided_at = await self._record_decision(approval, req)
        count = f"{len(approval.votes)} of {approval.ref.quorum}"
        self._show_outcome(approval, "pending", req.actor, decided_at)
        self._note(
            f"{approval.ref.approval_id}:vote:{len(approval.votes)}",
            f"Approval for {approval.ref.action.action_type} {approval.ref.action.target}: "
            f"approved by {req.actor} ({count})",
        )
        return DecisionResult(
            req.approval_id,
            "pending",
            req.actor,
            decided_at,
            approvals=len(approval.votes),
            quorum=approval.ref.quorum,
        )

    @decide.validator
    def _validate_decision(self, req: DecisionRequest) -> None:
        # Validators do not run on replay: histories recorded before decisions were signed
        # replay unchanged, and a refusal leaves nothing in the history.
        _refuse(
            self._decision_refusal(req),
            "approval.refused",
            approval=req.approval_id[:100],
            actor=req.actor[:200],
            role=req.role[:32],
            channel=req.channel[:32],
        )

    def _decision_refusal(self, req: DecisionRequest) -> str | None:
        # The signature first: nothing in an unsigned request (role, actor) is believed.
        unsigned = decisions.refusal(req, decisions.installed_keys(), now=workflow.now())
        if unsigned is not None:
            return unsigned
        if req.decision not in ("approve", "reject"):
            return "decision must be 'approve' or 'reject'"
        if req.role not in DECIDER_ROLES:
            return f"role {req.role!r} may not decide approvals (approver or admin)"
        approval = self._approvals.get(req.approval_id)
        if approval is None:
            return f"unknown approval {req.approval_id}"
        if approval.status != "pending":
            return f"approval {req.approval_id} is already {approval.status}"
        deadline = _deadline(approval)
        if deadline is not None and _signed_at(req) >= deadline:
            # Decided after the deadline, and here before the expiry only because this
            # workflow was behind (its worker down): a decision and the expiry timer landing in
            # one activation let the decision win, which must not make a late one count.
            return (
                f"approval {req.approval_id} expired at {deadline.isoformat()} (decided after it)"
            )
        who = _approver(req)
        if approval.requested_by and approval.requested_by in (who, req.actor):
            return f"{req.actor} asked for this action; a second person must decide it"
        if req.decision == "approve" and any(w == who for w, _ in approval.votes):
            return (
                f"{req.actor} has already approved {req.approval_id}; it needs "
                f"{approval.ref.quorum} distinct approvers"
            )
        return None

    @workflow.query(name="pending_approvals")
    def pending_approvals(self) -> list[str]:
        return [k for k, a in self._approvals.items() if a.status == "pending"]

    # --- an analyst's actions ----------------------------------------------------------------

    @workflow.update(name=UPDATE_ANALYST)
    async def analyst_action(self, req: AnalystRequest) -> AnalystResult:
        iid = self._input.incident_id
        step = AnalystStep(iid, req.actor, req.reason, f"{iid}:analyst:{req.nonce}", req.channel)
        # The validator refused these already, unless two requests came in one activation
        # (each validated before the other's handler ran): checked again here, before any await.
        busy = self._analyst_busy(req)
        if busy is not None:
            raise ApplicationError(busy, non_retryable=True)
        if req.kind == "lift":
            block = self._state.timed_blocks.get(req.action_id)
            if block is not None:
                at = await self._lift_early(block, step)
            else:
                at = await self._lift_untimed(req.action_id, step)
            return AnalystResult("lift", "lifted", req.actor, at, action_id=req.action_id)
        if req.kind == "extend":
            return await self._extend(req, step)
        if req.kind == "contain":
            return await self._contain_now(req, step)
        if req.kind == "close":
            return await self._close_as(req, step)
        await _core(AnalystActivities.record_note, step)
        self._note(step.event_key, f"Note by {req.actor}: {req.reason}")
        return AnalystResult("note", "noted", req.actor, self._now_iso())

    @analyst_action.validator
    def _validate_analyst_action(self, req: AnalystRequest) -> None:
        _refuse(
            self._analyst_refusal(req),
            "analyst.refused",
            kind=req.kind[:16],
            actor=req.actor[:200],
            role=req.role[:32],
        )

    def _analyst_busy(self, req: AnalystRequest) -> str | None:
        if req.kind in ("lift", "extend") and req.action_id in self._block_busy:
            return f"{req.action_id[:80]} is being lifted or extended; try again in a moment"
        if req.kind == "lift" and req.action_id in self._lifting:
            return f"{req.action_id[:80]} is being lifted"
        if req.kind == "lift" and req.action_id not in self._state.timed_blocks and self._handling:
            return "a detection is being contained; try again in a moment"
        if req.kind in ("contain", "close") and self._containing:
            return "a contain now is in progress; try again in a moment"
        if req.kind == "contain" and self._handling:
            return "a detection is being contained; try again in a moment"
        return None

    def _analyst_refusal(self, req: AnalystRequest) -> str | None:
        unsigned = decisions.refusal(req, decisions.installed_keys(), now=workflow.now())
        if unsigned is not None:
            return unsigned
        if req.role not in ANALYST_ROLES:
            return f"role {req.role!r} may not act on incidents (analyst or admin)"
        if req.kind not in ANALYST_KINDS:
            return f"unknown action {req.kind[:16]!r}: one of {', '.join(ANALYST_KINDS)}"
        if len(req.reason) > MAX_REASON or has_unsafe_chars(req.reason, text=True, bidi=False):
            return f"the reason must be at most {MAX_REASON} characters, without control characters"
        if req.kind == "note" and not req.reason.strip():
            return "a note needs some text"
        closed = "the incident is closed" if self._closed_as or self._ended else None
        if req.kind == "lift" and req.action_id not in self._state.timed_blocks:
            # Not a timed block of this run: one without an expiry (the activity checks it is
            # in force and not irreversible), once at a time.
            if not req.action_id:
                return "which action? (action_id)"
            # (busy: a block a detection just applied is not a timed block here yet)
            return self._analyst_busy(req)
        if req.kind in ("lift", "extend"):
            block = self._state.timed_blocks.get(req.action_id)
            if block is None:
                return f"{req.action_id[:80]} is not a temporary block in force in this incident"
            if busy := self._analyst_busy(req):
                return busy
            if datetime.fromisoformat(block.expires_at) <= workflow.now():
                return f"{req.action_id[:80]} has reached its expiry: it is being lifted"
            if req.kind == "extend" and not 0 < req.seconds <= MAX_EXTEND_SECONDS:
                return f"extend by 1 to {MAX_EXTEND_SECONDS} seconds"
            return None
        if req.kind == "contain":
            if closed:
                return closed
            if not req.action_id:
                return "which action? (action_id)"
            return self._analyst_busy(req)
        if req.kind == "close":
            if closed:
                return closed
            if busy := self._analyst_busy(req):
                return busy
            if req.disposition not in DISPOSITIONS:
                return f"disposition must be one of {', '.join(DISPOSITIONS)}"
            pending = sum(1 for a in self._approvals.values() if a.status == "pending")
            if pending:
                return f"{pending} approval(s) pending: decide them (or let them expire) first"
        return None

    async def _lift_early(self, block: TimedBlock, step: AnalystStep) -> str:
        """Cancel the block's timer and lift it now; its timer lifts nothing later. The log
        row has the timer's key, so a block is lifted once in the log."""
        st = self._state
        task = self._lift_tasks.pop(block.action_id, None)
        if task is not None:
            task.cancel()
        st.timed_blocks.pop(block.action_id, None)  # a second lift is refused from here on
        self._block_busy.add(block.action_id)
        try:
            done: LiftResult = await _core(
                AnalystActivities.lift_block_now, LiftInput(step, block.action_id, block.expires_at)
            )
        except ActivityError as err:  # refused: the timer keeps its job
            st.timed_blocks[block.action_id] = block
            self._lift_timer(block)
            raise ApplicationError(_cause(err), non_retryable=True) from None
        finally:
            self._block_busy.discard(block.action_id)
        self._lifted(done.action, step)
        return done.at

    async def _lift_untimed(self, action_id: str, step: AnalystStep) -> str:
        """Lift an action in force without an expiry (e.g. an approved quarantine)."""
        self._lifting.add(action_id)
        try:
            done: LiftResult = await _core(
                AnalystActivities.lift_block_now, LiftInput(step, action_id)
            )
        except ActivityError as err:
            raise ApplicationError(_cause(err), non_retryable=True) from None
        finally:
            self._lifting.discard(action_id)
        self._lifted(done.action, step)
        return done.at

    def _lifted(self, ref: ActionRef, step: AnalystStep) -> None:
        """After a lift: the action may be taken again, and the ticket and hook are told."""
        st = self._state
        st.active_keys.discard(ref.action_key)
        st.generations[ref.action_key] = st.generations.get(ref.action_key, 1) + 1
        why = f": {step.reason}" if step.reason else ""
        self._note(f"{ref.action_id}:lifted", f"Lifted {ref.action_key} by {step.actor}{why}")
        self._hook(dataclasses.replace(ref, status="applied"), "lifted")

    async def _extend(self, req: AnalystRequest, step: AnalystStep) -> AnalystResult:
        st = self._state
        block = st.timed_blocks[req.action_id]
        until = datetime.fromisoformat(block.expires_at) + timedelta(seconds=req.seconds)
        moved = dataclasses.replace(block, expires_at=until.isoformat())
        task = self._lift_tasks.pop(block.action_id, None)
        if task is not None:
            task.cancel()
        st.timed_blocks[block.action_id] = moved
        self._block_busy.add(block.action_id)
        try:
            await _core(
                AnalystActivities.extend_block, ExtendInput(step, block.action_id, moved.expires_at)
            )
        except ActivityError as err:
            st.timed_blocks[block.action_id] = block
            self._lift_timer(block)
            raise ApplicationError(_cause(err), non_retryable=True) from None
        finally:
            self._block_busy.discard(block.action_id)
        self._lift_timer(moved)
        self._note(
            step.event_key, f"Extended {block.action_key} until {moved.expires_at} by {req.actor}"
        )
        return AnalystResult(
            "extend",
            "extended",
            req.actor,
            self._now_iso(),
            action_id=block.action_id,
            expires_at=moved.expires_at,
        )

    async def _contain_now(self, req: AnalystRequest, step: AnalystStep) -> AnalystResult:
        st = self._state
        self._containing = True
        try:
            done: ContainNowResult = await _core(
                AnalystActivities.contain_now,
                ContainNowInput(
                    step,
                    req.action_id,
                    tuple(sorted(st.active_keys)),
                    tuple(sorted(st.generations.items())),
                ),
            )
        except ActivityError as err:
            raise ApplicationError(_cause(err), non_retryable=True) from None
        finally:
            self._containing = False
        ref = done.action
        st.active_keys.add(ref.action_key)
        st.generations[ref.action_key] = done.generation
        approval_id = ""
        if ref.status == "applied":
            self._note(
                f"{ref.action_id}:applied",
                f"Applied {ref.action_type} {ref.target} (contain now, by {req.actor})"
                + (f" until {ref.expires_at}" if ref.expires_at else ""),
            )
            self._hook(ref, "applied")
            if ref.expires_at:
                block = TimedBlock(
                    ref.action_id,
                    ref.action_key,
                    ref.expires_at,
                    ref.action_type,
                    ref.incident_id,
                    ref.tenant,
                    ref.target,
                    ref.technique,
                )
                st.timed_blocks[ref.action_id] = block
                self._lift_timer(block, ref)
        elif ref.status == "pending_approval":
            approval_id = approval_id_for(ref.action_id)
            self._start_approval(ref, done.quorum, requested_by=req.actor)
        return AnalystResult(
            "contain",
            ref.status,
            req.actor,
            self._now_iso(),
            action_id=ref.action_id,
            approval_id=approval_id,
            expires_at=ref.expires_at or "",
        )

    async def _close_as(self, req: AnalystRequest, step: AnalystStep) -> AnalystResult:
        """Close with a disposition. A false positive or a benign incident had no business
        being blocked: its temporary blocks are lifted now. A true positive keeps them until
        their time (the run waits for their timers, then ends)."""
        self._closed_as = req.disposition  # before the first await: a second close is refused
        if req.disposition != "true_positive":
            why = f"closed as {req.disposition}" + (f": {req.reason}" if req.reason else "")
            for block in list(self._state.timed_blocks.values()):
                if datetime.fromisoformat(block.expires_at) <= workflow.now():
                    continue  # being lifted by its timer
                if (
                    self._state.timed_blocks.get(block.action_id) is not block
                    or block.action_id in self._block_busy
                ):
                    continue  # lifted or being changed by another analyst meanwhile
                try:
                    await self._lift_early(block, dataclasses.replace(step, reason=why))
                except ApplicationError as err:  # not in force after all: its timer decides
                    workflow.logger.warning("close: %s not lifted: %s", block.action_id, err)
        try:
            at = await _core(
                AnalystActivities.close_incident_as, AnalystCloseInput(step, req.disposition)
            )
        except ActivityError as err:
            self._closed_as = ""
            raise ApplicationError(_cause(err), non_retryable=True) from None
        self._note(
            step.event_key,
            f"Closed as {req.disposition} by {req.actor}"
            + (f": {req.reason}" if req.reason else ""),
        )
        return AnalystResult("close", "closed", req.actor, at, disposition=req.disposition)

    # --- main loop --------------------------------------------------------------------------

    @workflow.run
    async def run(self, inp: IncidentInput) -> str:
        self._v1 = workflow.patched(PATCH_BULKHEADS)
        if inp.carried is not None:
            self._restore(inp.carried)
        window = timedelta(seconds=inp.correlation_window_seconds)
        while True:
            if self._closed_as:
                break  # closed by an analyst
            if not (self._v1 and self._queue):  # (no timer needed for a queue already there)
                await _wait(lambda: bool(self._queue) or bool(self._closed_as), window)
            if self._queue:
                while self._queue:
                    await self._handle(self._queue.pop(0))
                    if self._v1 and self._should_continue_as_new():
                        break  # a sustained flood never empties the queue: hand over now
                if self._should_continue_as_new():
                    if self._v1:
                        # Containment never waits long for the hand-over: only core steps
                        # are waited for (they are quick); approvals, external steps and
                        # what is queued (a sustained flood never leaves the queue empty, up
                        # to MAX_CARRIED_QUEUE) are carried to the next run.
                        ready = (
                            len(self._queue) > MAX_CARRIED_QUEUE
                            or (not self._busy(handover=True) and workflow.all_handlers_finished())
                        ) or await _wait(
                            lambda: (
                                len(self._queue) > MAX_CARRIED_QUEUE
                                or (
                                    not self._busy(handover=True)
                                    and workflow.all_handlers_finished()
                                )
                            ),
                            HANDOVER_WAIT,
                        )
                        if (
                            ready
                            and len(self._queue) <= MAX_CARRIED_QUEUE
                            and await self._hand_over_steps()
                        ):
                            self._continue_as_new(inp)
                        continue
                    # Signals still queued would be lost by continue-as-new: only go once
                    # every in-flight step (other than block timers, which are carried) is
                    # done and the queue is empty.
                    await workflow.wait_condition(lambda: not self._busy(timers=False))
                    if not self._queue:
                        await workflow.wait_condition(workflow.all_handlers_finished)
                        if not self._queue:
                            self._continue_as_new(inp)
                continue
            # Quiet for a whole window: wait for what is still pending, then try to close.
            if self._busy():
                await workflow.wait_condition(
                    lambda: bool(self._queue) or not self._busy() or bool(self._closed_as)
                )
                continue
            if self._closed_as:
                break
            closed = await _core(
                ContainmentActivities.close_incident,
                CloseInput(inp.incident_id, inp.correlation_window_seconds),
            )
            if closed:
                self._ended = True
                break
        # A detection signalled while the incident was closing (an outbox redelivery) is
        # still contained, on this incident's record.
        while self._queue:
            await self._handle(self._queue.pop(0))
        await workflow.wait_condition(lambda: not self._busy(timers=False))
        while self._closed_as:
            # Closed by an analyst: the blocks kept lift at their time (logged as ever).
            await workflow.wait_condition(lambda: bool(self._queue) or not self._busy())
            if not self._queue:
                break
            while self._queue:
                await self._handle(self._queue.pop(0))
        self._ended = True
        async with self._ticket_lock:
            await self._external(
                TicketActivities.close_ticket,
                inp.incident_id,
                CarriedStep("close_ticket", self._now_iso(), incident_id=inp.incident_id),
                seconds=60,
            )
        await workflow.wait_condition(workflow.all_handlers_finished)
        return "closed"

    def _busy(self, *, timers: bool = True, handover: bool = False) -> bool:
        for t in self._tasks:
            if t.done() or (not timers and not handover and t in self._timers):
                continue
            if handover and self._carriable.get(t, _never)():
                continue
            return True
        return False

    async def _hand_over_steps(self) -> bool:
        """Cancel the external steps still open (their activities must not outlive the run)
        and keep them for the next run. False, with the steps started again here, when
        something arrived meanwhile."""
        open_steps = [(t, s) for t, s in self._steps.items() if s.open and not t.done()]
        for t, s in open_steps:
            s.handed = True
            t.cancel()
        await workflow.wait_condition(lambda: all(t.done() for t, _ in open_steps))
        if (
            len(self._queue) > MAX_CARRIED_QUEUE
            or self._busy(handover=True)
            or not workflow.all_handlers_finished()
        ):
            for _, s in open_steps:
                self._step(s.carried)
            return False
        self._handed = [s.carried for _, s in open_steps]
        return True

    def _spawn(
        self,
        coro: Coroutine[Any, Any, object],
        *,
        timer: bool = False,
        carriable: Callable[[], bool] | None = None,
    ) -> asyncio.Task[object]:
        task: asyncio.Task[object] = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        if timer:
            self._timers.add(task)
            task.add_done_callback(self._timers.discard)
        if carriable is not None:
            self._carriable[task] = carriable
            task.add_done_callback(lambda t: self._carriable.pop(t, None))
        return task

    def _now_iso(self) -> str:
        return workflow.now().isoformat()

    async def _handle(self, det: DetectionFacts) -> None:
        st = self._state
        if det.key in st.recent_ids:
            return
        st.recent_ids.append(det.key)
        st.detection_count += 1
        self._run_detections += 1
        inp = self._input
        if self._containing:
            # An analyst's "contain now" is choosing a new generation of an action: plan after
            # it, from the keys it leaves, so the two never take the same action row.
            await workflow.wait_condition(lambda: not self._containing)
        # A local activity: containment runs in the same workflow task, without a round trip
        # through the server's activity queue. It is short and idempotent, so re-running it
        # after a worker crash is safe.
        self._handling = True
        try:
            result = await workflow.execute_local_activity_method(
                ContainmentActivities.contain_detection,
                ContainInput(
                    incident_id=inp.incident_id,
                    detection=det,
                    repeat_count=st.detection_count,
                    active_keys=tuple(sorted(st.active_keys)),
                    generations=tuple(sorted(st.generations.items())),
                ),
                start_to_close_timeout=_CORE_TIMEOUT,
                retry_policy=_FAST,
            )
        finally:
            self._handling = False
        for ref in (*result.applied, *result.deferred, *result.needs_approval):
            st.active_keys.add(ref.action_key)
        self._ticketing = result.ticketing
        self._hooked = None if result.hooked is None else frozenset(result.hooked)
        if not inp.external_task_queue and result.external_task_queue:
            self._ext_queue = result.external_task_queue
        if not inp.external_max_age_seconds and result.external_max_age_seconds:
            self._ext_age = result.external_max_age_seconds
        # The ticket (a deferred action) is asked for first, so it takes the ticket lock
        # before the notes about the blocks just applied.
        for ref in result.deferred:
            if self._v1 and not _enforces(ref.action_type):
                self._step(CarriedStep("action", self._now_iso(), action=_carry(ref)))
            else:
                self._spawn(self._run_action(ref))
        for ref in result.applied:
            self._note(
                f"{ref.action_id}:applied",
                f"Applied {ref.action_type} {ref.target}"
                + (f" until {ref.expires_at}" if ref.expires_at else ""),
            )
            self._hook(ref, "applied")
            if ref.expires_at:
                st.timed_blocks[ref.action_id] = TimedBlock(
                    ref.action_id,
                    ref.action_key,
                    ref.expires_at,
                    ref.action_type,
                    ref.incident_id,
                    ref.tenant,
                    ref.target,
                    ref.technique,
                )
                self._lift_timer(st.timed_blocks[ref.action_id], ref)
        if self._should_assess(det):
            self._spawn(self._assess(det))
        quorums = dict(result.quorums)
        for ref in result.needs_approval:
            self._start_approval(ref, quorums.get(ref.action_id, 1))

    def _should_assess(self, det: DetectionFacts) -> bool:
        """A flood of one technique is assessed once a minute, not once per detection: the
        assessment (history, risk, summary) would say the same, and it costs history."""
        if not self._v1:
            return True
        key, at = (det.technique, det.severity), workflow.now()
        last = self._assessed.get(key)
        if last is not None and at - last < ASSESS_COALESCE:
            return False
        self._assessed[key] = at
        return True

    # --- background steps -------------------------------------------------------------------

    async def _assess(self, det: DetectionFacts) -> None:
        enrich = EnrichInput(self._input.incident_id, det)
        if workflow.patched(PATCH_LOCAL_ASSESS):
            result = await workflow.execute_local_activity_method(
                ContainmentActivities.enrich_incident,
                enrich,
                start_to_close_timeout=timedelta(seconds=60),
                retry_policy=_FAST,
            )
        else:
            result = await _core(ContainmentActivities.enrich_incident, enrich, seconds=60)
        # The ticket usually opens before the assessment is ready: add it as a comment.
        self._note(
            f"{det.key}:assessed",
            f"Assessment (risk {result.risk_score:g}/100): {result.summary}",
        )
        # (Not for a summary the assessment wrote already, the offline one: deterministic on
        # replay, since the recorded result says so; older histories lack the field.)
        if workflow.patched(PATCH_SUMMARY) and not result.summarised:
            await self._summarise(det, result.risk_score)

    async def _summarise(self, det: DetectionFacts, risk_score: float) -> None:
        """The summary (offline or model-written) on the external queue: text for people,
        stored beside the plan; nothing here reads it back."""
        try:
            done: SummaryResult = await workflow.execute_activity_method(
                SummaryActivities.summarise_incident,
                SummariseInput(self._input.incident_id, det, risk_score),
                task_queue=(self._ext_queue or None) if self._v1 else None,
                start_to_close_timeout=timedelta(seconds=150),
                retry_policy=RetryPolicy(initial_interval=timedelta(seconds=1), maximum_attempts=3),
            )
        except ActivityError:
            workflow.logger.warning("summary of %s gave up", det.key)
            return
        if done.note:
            self._note(f"{det.key}:summary", done.note)

    # External steps: each one a task that may be carried to the next run.

    def _step(self, carried: CarriedStep) -> _Step:
        step = _Step(carried)
        task = self._spawn(
            self._run_step(step),
            carriable=lambda: step.open and len(self._steps) <= MAX_CARRIED_STEPS,
        )
        self._steps[task] = step
        task.add_done_callback(lambda t: self._steps.pop(t, None))
        return step

    async def _run_step(self, step: _Step) -> None:
        c = step.carried
        if c.kind == "action" and c.action is not None:
            ref = _action(c.action)
            if _is_ticket(ref.action_type):
                async with self._ticket_lock:
                    await self._execute_action(ref, step)
            else:
                await self._execute_action(ref, step)
        elif c.kind == "hook" and c.action is not None:
            await self._deliver_hook(_action(c.action), c.event, step)
        elif c.kind in ("announce", "remind") and c.action is not None:
            aref = ApprovalRef(c.approval_id, _action(c.action), c.approval_expires_at)
            announce = c.kind == "announce"
            fn = (
                ApprovalActivities.announce_approval
                if announce
                else ApprovalActivities.remind_approval
            )
            await self._external(fn, aref, c, step=step)
        elif c.kind == "outcome" and c.action is not None:
            aref = ApprovalRef(c.approval_id, _action(c.action), c.approval_expires_at)
            outcome = ApprovalOutcome(aref, c.event, c.by, c.at)
            await self._external(ApprovalActivities.show_approval_outcome, outcome, c, step=step)
        elif c.kind == "note":
            async with self._ticket_lock:
                step.started = True
                c = step.carried  # notes asked for meanwhile were merged into it
                note = TicketNote(c.incident_id, c.event_key, c.text)
                await self._external(TicketActivities.note_ticket, note, c, step=step, seconds=60)
        step.open = False

    async def _external(
        self,
        fn: Callable[[Any, _P], Awaitable[object]],
        arg: _P,
        c: CarriedStep,
        *,
        step: _Step | None = None,
        seconds: int = 30,
    ) -> bool:
        """One external step: on the external queue, retried with growing backoff until the
        retry budget (counted from when it was first asked for, across runs) is spent; then
        logged as failed. Returns whether it succeeded."""
        name = fn.__name__  # the activity's name
        if not self._v1:
            return await self._attempt(
                fn, arg, seconds=seconds, retry=_EXTERNAL_V0, failed=lambda _: _gave_up(name)
            )
        budget = timedelta(seconds=self._ext_age or DEFAULT_EXTERNAL_MAX_AGE)
        left = budget - (workflow.now() - datetime.fromisoformat(c.started_at))
        reason = f"gave up after {int(budget.total_seconds())} s of retries"
        if left > timedelta(seconds=1):
            try:
                await workflow.execute_activity_method(
                    fn,
                    arg,
                    task_queue=self._ext_queue or None,
                    start_to_close_timeout=min(timedelta(seconds=seconds), left),
                    schedule_to_close_timeout=left,
                    retry_policy=_EXTERNAL,
                )
            except ActivityError as err:
                if step is not None and step.handed:
                    return False  # cancelled for the hand-over, not given up
                reason = f"{reason}: {_cause(err)}"
            else:
                if step is not None:
                    step.open = False
                return True
        if step is not None:
            step.open = False
        await self._step_failed(name, c, reason)
        return False

    async def _attempt(
        self,
        fn: Callable[[Any, _P], Awaitable[object]],
        arg: _P,
        *,
        seconds: int,
        retry: RetryPolicy,
        failed: Callable[[str], Awaitable[None]],
    ) -> bool:
        """A step tried with `retry` on the workflow's own queue; when it gives up, `failed`
        gets the cause (and records it). Returns whether it succeeded."""
        try:
            await workflow.execute_activity_method(
                fn, arg, start_to_close_timeout=timedelta(seconds=seconds), retry_policy=retry
            )
        except ActivityError as err:
            await failed(_cause(err))
            return False
        return True

    async def _step_failed(self, name: str, c: CarriedStep, reason: str) -> None:
        """The failure row of a given-up step (core queue); hooks and actions have theirs."""
        action = _action(c.action) if c.action is not None else None
        if c.kind == "action" and action is not None:
            await self._record_failure(action, reason)
            return
        if c.kind == "hook" and action is not None:
            await self._record_failure(action, f"hook ({c.event}) failed: {reason}", hook=c.event)
            return
        incident = action.incident_id if action is not None else c.incident_id
        if c.kind in ("note", "close_ticket"):
            key = (
                f"{c.event_key}:ticket-failed"
                if c.kind == "note"
                else f"{incident}:ticket-close-failed"
            )
            event = "ticket.failed"
        else:
            key, event = f"{c.approval_id}:{c.kind}-failed", f"approval.{c.kind}_failed"
        await _core(
            ActionActivities.record_step_failure,
            StepFailure(incident, name, event, key, reason[:500], action, c.approval_id or None),
        )

    def _hook(self, ref: ActionRef, event: str) -> None:
        if self._hooked is not None and ref.action_type not in self._hooked:
            return
        if self._v1:
            self._step(CarriedStep("hook", self._now_iso(), action=_carry(ref), event=event))
        else:
            self._spawn(self._deliver_hook(ref, event))

    async def _deliver_hook(self, ref: ActionRef, event: str, step: _Step | None = None) -> None:
        """The outbound hook call; a failure is logged against the action, which stays in
        force. `step`: a hook step already scheduled (for a type with a hook)."""
        if step is None and self._hooked is not None and ref.action_type not in self._hooked:
            return
        hook = HookInput(ref, event)
        if self._v1:
            c = (
                step.carried
                if step is not None
                else CarriedStep("hook", self._now_iso(), action=_carry(ref), event=event)
            )
            await self._external(ActionActivities.deliver_hook, hook, c, step=step)
            return

        async def failed(reason: str) -> None:
            await self._record_failure(ref, f"hook ({event}) failed: {reason}", hook=event)

        await self._attempt(
            ActionActivities.deliver_hook, hook, seconds=30, retry=_EXTERNAL_V0, failed=failed
        )

    async def _run_action(self, ref: ActionRef) -> bool:
        if _is_ticket(ref.action_type):
            async with self._ticket_lock:
                return await self._execute_action(ref)
        done = await self._execute_action(ref)
        if done and _announces(ref.action_type):
            self._note(f"{ref.action_id}:applied", f"Applied {ref.action_type} {ref.target}")
            if self._v1:
                self._hook(ref, "applied")
            else:
                await self._deliver_hook(ref, "applied")
        return done

    async def _execute_action(self, ref: ActionRef, step: _Step | None = None) -> bool:
        if self._v1 and not _enforces(ref.action_type):  # a notice or a ticket: external
            c = (
                step.carried
                if step is not None
                else CarriedStep("action", self._now_iso(), action=_carry(ref))
            )
            return await self._external(ActionActivities.run_action, ref, c, step=step, seconds=60)

        async def failed(reason: str) -> None:
            await self._record_failure(ref, reason)

        return await self._attempt(
            ActionActivities.run_action,
            ref,
            seconds=60,
            retry=_FAST if self._v1 else _EXTERNAL_V0,
            failed=failed,
        )

    def _note(self, event_key: str, text: str) -> None:
        if not self._ticketing:
            return
        if self._v1:
            text = text[:4000]
            last = self._last_note
            if last is not None and last.open and not last.started and last.merged < MAX_MERGED:
                # Still waiting for the ticket lock: one comment for both (a flood gives one
                # comment per round, not one per detection). Deterministic batch key.
                c = last.carried
                keys = (*(last.keys or (c.event_key,)), event_key)
                last.keys = keys
                digest = hashlib.sha256("|".join(keys).encode()).hexdigest()[:32]
                last.carried = dataclasses.replace(
                    c, event_key=f"notes-{digest}", text=f"{c.text}\n{text}"[:MAX_NOTE_TEXT]
                )
                last.merged += 1
                return
            self._last_note = self._step(
                CarriedStep(
                    "note",
                    self._now_iso(),
                    incident_id=self._input.incident_id,
                    event_key=event_key,
                    text=text,
                )
            )
            return
        note = TicketNote(self._input.incident_id, event_key, text)

        async def write() -> None:
            async with self._ticket_lock:
                await self._external(
                    TicketActivities.note_ticket, note, CarriedStep("note", ""), seconds=60
                )

        self._spawn(write())

    async def _record_failure(self, ref: ActionRef, reason: str, hook: str | None = None) -> None:
        await _core(ActionActivities.record_action_failure, FailureInput(ref, reason, hook))

    def _lift_timer(self, block: TimedBlock, ref: ActionRef | None = None) -> None:
        # Carried across continue-as-new (as a timed block) while it sleeps, not while its
        # lift_block activity runs.
        task = self._spawn(
            self._lift_when_due(block, ref),
            timer=True,
            carriable=lambda: block.action_id in self._sleeping,
        )
        self._lift_tasks[block.action_id] = task
        task.add_done_callback(
            lambda t: (
                self._lift_tasks.pop(block.action_id)
                if self._lift_tasks.get(block.action_id) is t
                else None
            )
        )

    async def _lift_when_due(self, block: TimedBlock, ref: ActionRef | None = None) -> None:
        due = datetime.fromisoformat(block.expires_at) - workflow.now()
        if due.total_seconds() > 0:
            self._sleeping.add(block.action_id)
            try:
                await asyncio.sleep(due.total_seconds())
            finally:
                self._sleeping.discard(block.action_id)
        await _core(ActionActivities.lift_block, block)
        self._note(f"{block.action_id}:lifted", f"Lifted {block.action_key} (expired)")
        st = self._state
        st.timed_blocks.pop(block.action_id, None)
        st.active_keys.discard(block.action_key)
        st.generations[block.action_key] = st.generations.get(block.action_key, 1) + 1
        if ref is None and block.action_type:  # restored after continue-as-new
            ref = ActionRef(
                action_id=block.action_id,
                incident_id=block.incident_id,
                action_key=block.action_key,
                action_type=block.action_type,
                risk="low",
                tenant=block.tenant,
                target=block.target,
                technique=block.technique,
                expires_at=block.expires_at,
                status="applied",
            )
        if ref is not None:
            if self._v1:
                self._hook(ref, "lifted")
            else:
                await self._deliver_hook(ref, "lifted")

    # --- approvals --------------------------------------------------------------------------

    def _start_approval(self, action: ActionRef, quorum: int = 1, requested_by: str = "") -> None:
        # Known (and decidable) before its row is reported back: the row may be committed
        # and visible to people while the worker that wrote it dies.
        approval = self._approvals.setdefault(
            approval_id_for(action.action_id),
            _Approval(
                ApprovalRef(approval_id_for(action.action_id), action, "", quorum),
                requested_by=requested_by,
            ),
        )
        self._spawn(
            self._approval_flow(approval),
            carriable=lambda: approval.waiting and approval.status == "pending",
        )

    async def _approval_flow(self, approval: _Approval) -> None:
        timeout = self._input.approval_timeout_seconds
        action = approval.ref.action
        quorum = approval.ref.quorum
        ref = await _core(
            ApprovalActivities.request_approval,
            ApprovalInput(action, timeout, quorum, approval.requested_by),
        )
        # The quorum is the workflow's own (decisions may have been counted already).
        approval.ref = dataclasses.replace(ref, quorum=quorum)
        # Deadlines in workflow time (the row's expires_at is the same instant, give or take
        # the activity's latency, on the database's clock).
        approval.expire_at = workflow.now() + timedelta(seconds=timeout)
        approval.escalate_at = approval.expire_at - timedelta(seconds=timeout / 2)
        if self._v1:
            self._step(
                CarriedStep(
                    "announce",
                    self._now_iso(),
                    action=_carry(action),
                    approval_id=ref.approval_id,
                    approval_expires_at=ref.expires_at,
                )
            )
        else:
            announce = CarriedStep("announce", "")
            self._spawn(self._external(ApprovalActivities.announce_approval, ref, announce))
        await self._await_decision(approval)

    async def _await_decision(self, approval: _Approval) -> None:
        """Escalate at half time (unless done already), expire at the end, or apply the
        decision: the same in the run that asked and in a run the approval was carried to."""
        assert approval.escalate_at is not None and approval.expire_at is not None
        ref, action = approval.ref, approval.ref.action
        approval.waiting = True
        # Judge by the status, not by whether the wait timed out: a decision and the timer
        # can land in the same activation, and the decision must win then.
        if not approval.escalated:
            await _wait_until(lambda: approval.status != "pending", approval.escalate_at)
            if approval.status == "pending":
                approval.waiting = False
                await _core(
                    ApprovalActivities.escalate_approval,
                    ApprovalEvent(ref, "escalated", notify=not self._v1),
                    seconds=60,
                )
                approval.escalated = True
                if self._v1:
                    self._step(
                        CarriedStep(
                            "remind",
                            self._now_iso(),
                            action=_carry(action),
                            approval_id=ref.approval_id,
                            approval_expires_at=ref.expires_at,
                        )
                    )
                approval.waiting = True
        await _wait_until(lambda: approval.status != "pending", approval.expire_at)
        approval.waiting = False
        if approval.status == "pending":
            approval.status = "expired"
            await _core(
                ApprovalActivities.expire_approval,
                ApprovalEvent(ref, "expired", notify=not self._v1),
                seconds=60,
            )
            if self._v1:
                self._show_outcome(approval, "expired", None, self._now_iso())
            self._state.active_keys.discard(action.action_key)
            self._note(
                f"{ref.approval_id}:expired",
                f"Approval for {action.action_type} {action.target} expired: not taken",
            )
            return
        await workflow.wait_condition(lambda: approval.recorded)
        if approval.status == "approved":
            applied = await self._run_action(action)
            if (
                applied
                and action.duration_seconds
                and _enforces(action.action_type)
                and workflow.patched(PATCH_APPROVED_TIMER)
            ):
                # (Its expiry in the store is counted from when the activity applied it, a
                # moment before this: the timer lifts it just after it lapsed there.)
                until = workflow.now() + timedelta(seconds=action.duration_seconds)
                block = TimedBlock(
                    action.action_id,
                    action.action_key,
                    until.isoformat(),
                    action.action_type,
                    action.incident_id,
                    action.tenant,
                    action.target,
                    action.technique,
                )
                self._state.timed_blocks[action.action_id] = block
                self._lift_timer(block, dataclasses.replace(action, expires_at=block.expires_at))
        else:
            self._state.active_keys.discard(action.action_key)

    # --- bounded history --------------------------------------------------------------------

    def _should_continue_as_new(self) -> bool:
        if not self._v1 and any(a.status == "pending" for a in self._approvals.values()):
            return False  # older runs: a pending approval lived in the run's state only
        limit = self._input.max_detections_per_run or MAX_DETECTIONS_PER_RUN
        info = workflow.info()
        return self._run_detections >= limit or info.is_continue_as_new_suggested()

    def _continue_as_new(self, inp: IncidentInput) -> None:
        """Called in the activation that found nothing in flight but timers, waiting
        approvals and external steps (handed over), and no unfinished handler; no await in
        between, so nothing can slip in. Queued detections are carried."""
        st = self._state
        approvals = tuple(
            CarriedApproval(
                approval_id=a.ref.approval_id,
                action=_carry(a.ref.action),
                expires_at=a.ref.expires_at,
                escalate_at=a.escalate_at.isoformat(),
                expire_at=a.expire_at.isoformat(),
                escalated=a.escalated,
                quorum=a.ref.quorum,
                votes=tuple(a.votes),
                requested_by=a.requested_by,
            )
            for a in self._approvals.values()
            if a.status == "pending" and a.escalate_at is not None and a.expire_at is not None
        )
        steps = tuple(self._handed)
        carried = CarriedState(
            detection_count=st.detection_count,
            recent_detection_ids=tuple(st.recent_ids),
            active_keys=tuple(sorted(st.active_keys)),
            generations=tuple(sorted(st.generations.items())),
            timed_blocks=tuple(st.timed_blocks.values()),
            approvals=approvals,
            steps=steps,
            ticketing=self._ticketing,
            hooked=None if self._hooked is None else tuple(sorted(self._hooked)),
            queued=tuple(self._queue),
            closed_as=self._closed_as,
        )
        workflow.continue_as_new(
            dataclasses.replace(
                inp,
                carried=carried,
                external_task_queue=self._ext_queue,
                external_max_age_seconds=self._ext_age,
            )
        )

    def _restore(self, c: CarriedState) -> None:
        st = self._state
        st.detection_count = c.detection_count
        st.recent_ids.extend(c.recent_detection_ids)
        st.active_keys = set(c.active_keys)
        st.generations = dict(c.generations)
        self._ticketing = c.ticketing
        self._hooked = None if c.hooked is None else frozenset(c.hooked)
        self._queue[:0] = c.queued  # before anything signalled to this run
        for block in c.timed_blocks:
            st.timed_blocks[block.action_id] = block
            self._lift_timer(block)
        for step in c.steps:
            self._step(step)
        for approval in list(self._approvals.values()):  # restored in __init__
            self._spawn(
                self._await_decision(approval),
                carriable=lambda a=approval: a.waiting and a.status == "pending",  # type: ignore[misc]
            )


def _enforces(action_type: str) -> bool:
    """Enforcement runs on the core queue; notices and tickets are external steps."""
    found = actions.find(action_type)
    return found is not None and found.enforces


def _is_ticket(action_type: str) -> bool:
    found = actions.find(action_type)
    return found is not None and found.executor == "ticket"


def _announces(action_type: str) -> bool:
    """Noted on the ticket and sent to its hook once applied (not a notice)."""
    found = actions.find(action_type)
    return found is None or "applied" in found.hook_events


def _deadline(approval: _Approval) -> datetime | None:
    """When the approval expires: the earlier of the workflow's own deadline and the row's
    (which channels show; the workflow's is set a little later, or much later when its worker
    died between writing the row and hearing back)."""
    found = [approval.expire_at] if approval.expire_at is not None else []
    try:
        if approval.ref.expires_at:
            row = datetime.fromisoformat(approval.ref.expires_at)
            if row.tzinfo is not None:
                found.append(row)
    except ValueError:
        pass
    return min(found) if found else None


def _signed_at(req: DecisionRequest) -> datetime:
    """When the gate signed the decision (checked valid by the signature check before)."""
    return datetime.fromisoformat(req.issued_at)


def _approver(req: DecisionRequest) -> str:
    """Who decides, for "distinct approvers": the principal, else the channel's actor."""
    return req.approver or req.actor


def _carry(ref: ActionRef) -> CarriedAction:
    return CarriedAction(**dataclasses.asdict(ref))


def _action(c: CarriedAction) -> ActionRef:
    return ActionRef(**dataclasses.asdict(c))


def _never() -> bool:
    return False


async def _core(fn: Callable[[Any, _P], Awaitable[_R]], arg: _P, *, seconds: int = 30) -> _R:
    """A core step: on the workflow's own queue, retried quickly until it succeeds."""
    return await workflow.execute_activity_method(
        fn, arg, start_to_close_timeout=timedelta(seconds=seconds), retry_policy=_FAST
    )


def _refuse(why: str | None, event: str, **fields: str) -> None:
    """A validator's refusal: logged (fields bounded by the caller), then raised."""
    if why is None:
        return
    said = " ".join(f"{k}={v!r}" for k, v in fields.items())
    workflow.logger.warning("%s %s why: %s", event, said, why)
    raise ValueError(why)


async def _gave_up(name: str) -> None:
    workflow.logger.warning("external step %s gave up", name)


async def _wait(condition: Callable[[], bool], within: timedelta) -> bool:
    try:
        await workflow.wait_condition(condition, timeout=within)
    except TimeoutError:
        return False
    return True


async def _wait_until(condition: Callable[[], bool], deadline: datetime) -> bool:
    left = deadline - workflow.now()
    if condition():
        return True
    if left <= timedelta(0):
        return False
    return await _wait(condition, left)


def _cause(err: ActivityError) -> str:
    cause: BaseException = err
    while getattr(cause, "cause", None) is not None:
        cause = cause.cause  # type: ignore[attr-defined]
    return str(cause)[:500]
