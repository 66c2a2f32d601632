"""Who a Slack user is to us, and whether they may decide approvals.

Approvers are the Slack user IDs in SOAR_SLACK_APPROVERS plus principals (the same table as
API tokens and web UI logins) whose `slack_user_id` is set and whose role is approver or
admin. A principal that is disabled is refused even when its Slack ID is in the
environment list: disabling someone must take effect without a redeploy.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from soar.config import Settings
from soar.domain import DECIDER_ROLES
from soar.models import Principal


@dataclass(frozen=True)
class SlackDecider:
    """Allowed to decide: the actor string keeps the Slack user ID for the audit log."""

    slack_user_id: str
    actor: str
    role: str


async def slack_decider(
    *, session: AsyncSession, settings: Settings, slack_user_id: str
) -> SlackDecider | None:
    """The decider behind a Slack user, or None when they may not decide."""
    principal = await session.scalar(
        select(Principal).where(Principal.slack_user_id == slack_user_id)
    )
    if principal is not None:
        if principal.disabled:
            return None
        if principal.role in DECIDER_ROLES:
            return SlackDecider(
                slack_user_id, f"{principal.name} (slack:{slack_user_id})", principal.role
            )
    if slack_user_id in settings.slack_approver_ids:
        # Named in the environment: an approver, whatever lesser role a row gives them.
        name = f"{principal.name} (slack:{slack_user_id})" if principal else None
        return SlackDecider(slack_user_id, name or f"slack:{slack_user_id}", "approver")
    return None


async def approver_slack_ids(*, session: AsyncSession, settings: Settings) -> tuple[str, ...]:
    """Everyone to mention in a reminder: the environment list and the database grants."""
    rows = await session.scalars(
        select(Principal.slack_user_id).where(
            Principal.slack_user_id.is_not(None),
            Principal.role.in_(DECIDER_ROLES),
            Principal.disabled.is_(False),
        )
    )
    disabled = set(
        await session.scalars(
            select(Principal.slack_user_id).where(
                Principal.slack_user_id.is_not(None), Principal.disabled.is_(True)
            )
        )
    )
    ids = {r for r in rows if r} | (settings.slack_approver_ids - disabled)
    return tuple(sorted(ids))
