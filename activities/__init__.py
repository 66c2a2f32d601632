"""Every side effect the incident workflow asks for."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from activities.actions import ActionActivities
from activities.approvals import ApprovalActivities
from activities.containment import ContainmentActivities
from activities.context import ActivityContext
from activities.tickets import TicketActivities


def build_activities(ctx: ActivityContext) -> list[Callable[..., Any]]:
    c, a, p = ContainmentActivities(ctx), ActionActivities(ctx), ApprovalActivities(ctx)
    t = TicketActivities(ctx)
    return [
        c.contain_detection, c.enrich_incident, c.close_incident,
        a.run_action, a.record_action_failure, a.lift_block, a.deliver_hook,
        p.request_approval, p.announce_approval, p.record_decision,
        p.escalate_approval, p.show_approval_outcome, p.expire_approval,
        t.note_ticket, t.close_ticket,
    ]  # fmt: skip
