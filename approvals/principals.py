"""Who a Slack user is to us, and everyone an approval channel should reach.

Slack approvers are the Slack user IDs in SOAR_SLACK_APPROVERS plus principals (the same
table as API tokens and web UI logins) with a Slack address (`soar users set-slack`) whose
role is approver or admin. A principal that is disabled is refused even when its Slack ID is
in the environment list: disabling someone must take effect without a redeploy. A rule with
approver groups admits only their members (checked by the decision gate for every channel).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from soar.approvers import eligible_principals, groups_now
from soar.config import Settings
from soar.connectors import Contact
from soar.domain import DECIDER_ROLES
from soar.models import Approval, Principal, PrincipalAddress

SLACK = "slack"


@dataclass(frozen=True)
class SlackDecider:
    """Allowed to decide: the actor string keeps the Slack user ID for the audit log;
    `principal` is the principal's name ("" for someone known only to the environment list)."""

    slack_user_id: str
    actor: str
    role: str
    principal: str = ""


async def principal_at(session: AsyncSession, channel: str, address: str) -> Principal | None:
    return await session.scalar(
        select(Principal)
        .join(PrincipalAddress, PrincipalAddress.principal_id == Principal.id)
        .where(PrincipalAddress.channel == channel, PrincipalAddress.address == address)
    )


async def slack_decider(
    *, session: AsyncSession, settings: Settings, slack_user_id: str
) -> SlackDecider | None:
    """The decider behind a Slack user, or None when they may not decide."""
    principal = await principal_at(session, SLACK, slack_user_id)
    if principal is not None:
        if principal.disabled:
            return None
        if principal.role in DECIDER_ROLES:
            return SlackDecider(
                slack_user_id,
                f"{principal.name} (slack:{slack_user_id})",
                principal.role,
                principal.name,
            )
    if slack_user_id in settings.slack_approver_ids:
        # Named in the environment: an approver, whatever lesser role a row gives them.
        if principal is not None:
            return SlackDecider(
                slack_user_id,
                f"{principal.name} (slack:{slack_user_id})",
                "approver",
                principal.name,
            )
        return SlackDecider(slack_user_id, f"slack:{slack_user_id}", "approver")
    return None


async def approver_contacts(
    *, session: AsyncSession, settings: Settings, approval: Approval
) -> tuple[Contact, ...]:
    """Everyone who may decide the approval now, with the addresses each channel uses: the
    eligible principals and, for a rule without groups, the Slack IDs of the environment
    list (minus those of disabled principals)."""
    contacts = await eligible_principals(session, approval)
    if not groups_now(approval):
        known = {c.address(SLACK) for c in contacts}
        disabled = set(
            await session.scalars(
                select(PrincipalAddress.address)
                .join(Principal, Principal.id == PrincipalAddress.principal_id)
                .where(PrincipalAddress.channel == SLACK, Principal.disabled.is_(True))
            )
        )
        for uid in sorted(settings.slack_approver_ids - disabled):
            if uid not in known:
                contacts.append(Contact(f"slack:{uid}", ((SLACK, uid),)))
    return tuple(contacts)
