"""Every side effect the incident workflow asks for, in two bulkheads.

Core (the main task queue): containment, assessment, approvals and decisions, lifting
blocks, failure records, closing, the audit log. External (their own queue, their own
concurrency limit): everything that talks to Slack, Jira, an outbound hook or a model, so
an outage there that keeps hundreds of steps retrying never delays a decision or a containment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from temporalio.activity import _Definition

from activities.actions import ActionActivities
from activities.approvals import ApprovalActivities
from activities.containment import ContainmentActivities
from activities.context import ActivityContext
from activities.summaries import SummaryActivities
from activities.tickets import TicketActivities

# run_action is on both: the workflow sends approved enforcement (revoke_api_key, ...) to the
# core queue and notices / ticket creation (notify, open_ticket) to the external one.
EXTERNAL_ACTIVITIES = frozenset(
    {
        "announce_approval",
        "remind_approval",
        "show_approval_outcome",
        "deliver_hook",
        "run_action",
        "note_ticket",
        "close_ticket",
        "summarise_incident",
    }
)


def build_activities(ctx: ActivityContext) -> list[Callable[..., Any]]:
    """All of them: what the core worker registers (a workflow whose input names no external
    queue, e.g. one started before the bulkheads, runs every step on its own queue)."""
    c, a, p = ContainmentActivities(ctx), ActionActivities(ctx), ApprovalActivities(ctx)
    t = TicketActivities(ctx)
    m = SummaryActivities(ctx)
    return [
        c.contain_detection,
        c.enrich_incident,
        c.close_incident,
        a.run_action,
        a.record_action_failure,
        a.record_step_failure,
        a.lift_block,
        a.deliver_hook,
        p.request_approval,
        p.announce_approval,
        p.record_decision,
        p.escalate_approval,
        p.remind_approval,
        p.show_approval_outcome,
        p.expire_approval,
        t.note_ticket,
        t.close_ticket,
        m.summarise_incident,
    ]


def build_external_activities(ctx: ActivityContext) -> list[Callable[..., Any]]:
    """What the external worker registers: the steps that talk to Slack, Jira and hooks."""
    return [
        fn
        for fn in build_activities(ctx)
        if (d := _Definition.from_callable(fn)) is not None and d.name in EXTERNAL_ACTIVITIES
    ]
