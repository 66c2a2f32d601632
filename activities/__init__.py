"""Every side effect the incident workflow asks for, in two bulkheads.

Core (the main task queue): containment, assessment, approvals and decisions, lifting
blocks, failure records, closing, the audit log. External (their own queue, their own
concurrency limit): everything that talks to Slack, Jira, a model or an outbound hook, so an outage
there that keeps hundreds of steps retrying never delays a decision or a containment.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.actions import ActionActivities
from activities.analyst import AnalystActivities
from activities.approvals import ApprovalActivities
from activities.containment import ContainmentActivities
from activities.context import ActivityContext
from activities.summaries import SummaryActivities
from activities.tickets import TicketActivities


def build_activities(ctx: ActivityContext) -> list[Callable[..., Any]]:
    """All of them: what the core worker registers (a workflow whose input names no external
    queue, e.g. one started before the bulkheads, runs every step on its own queue)."""
    c, a, p = ContainmentActivities(ctx), ActionActivities(ctx), ApprovalActivities(ctx)
    n = AnalystActivities(ctx)
    return [
        c.contain_detection,
        c.enrich_incident,
        c.close_incident,
        a.record_action_failure,
        a.record_step_failure,
        a.lift_block,
        p.request_approval,
        p.record_decision,
        p.escalate_approval,
        p.expire_approval,
        n.lift_block_now,
        n.extend_block,
        n.contain_now,
        n.close_incident_as,
        n.record_note,
        *build_external_activities(ctx),
    ]


def build_external_activities(ctx: ActivityContext) -> list[Callable[..., Any]]:
    """What the external worker registers: the steps that talk to Slack, Jira and hooks.
    run_action is on both: the workflow sends approved enforcement (revoke_api_key, ...) to
    the core queue and notices / ticket creation (notify, open_ticket) to the external one."""
    a, p, t = ActionActivities(ctx), ApprovalActivities(ctx), TicketActivities(ctx)
    m = SummaryActivities(ctx)
    return [
        a.run_action,
        a.deliver_hook,
        p.announce_approval,
        p.remind_approval,
        p.show_approval_outcome,
        t.note_ticket,
        t.close_ticket,
        m.summarise_incident,  # a model call may be slow: never on the core queue
    ]
