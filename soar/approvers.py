"""Who may decide an approval: the rule's approver groups (plus its escalation group once the
approval has been escalated), or, when the rule names no group, every principal with the
approver or admin role. The decision gate (`soar.api.response.send_decision`) asks this for
every channel; the channels ask it whom to notify."""

from __future__ import annotations

from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from soar.connectors import Contact
from soar.domain import DECIDER_ROLES
from soar.models import Approval, ApproverGroupMember, Principal, PrincipalAddress


def groups_now(approval: Approval) -> tuple[str, ...]:
    """The groups whose members may decide at this moment (empty: no group restriction)."""
    groups = list(approval.approver_groups or ())
    if groups and approval.escalate_to and approval.escalated_at is not None:
        groups.append(approval.escalate_to)
    return tuple(dict.fromkeys(groups))


async def group_members(session: AsyncSession, groups: Iterable[str]) -> list[Principal]:
    names = list(groups)
    if not names:
        return []
    rows = await session.scalars(
        select(Principal)
        .join(ApproverGroupMember, ApproverGroupMember.principal_id == Principal.id)
        .where(ApproverGroupMember.group_name.in_(names))
        .order_by(Principal.name)
    )
    return list(dict.fromkeys(rows.all()))


async def decision_refusal(
    session: AsyncSession, approval: Approval, principal_name: str
) -> str | None:
    """Why `principal_name` may not decide `approval` under its rule, or None. The role is
    checked by the workflow itself; this adds the rule's groups."""
    groups = groups_now(approval)
    if not groups:
        return None
    who = principal_name or "this user"
    if principal_name:
        member = await session.scalar(
            select(ApproverGroupMember.group_name)
            .join(Principal, Principal.id == ApproverGroupMember.principal_id)
            .where(
                Principal.name == principal_name,
                Principal.disabled.is_(False),
                ApproverGroupMember.group_name.in_(groups),
            )
            .limit(1)
        )
        if member is not None:
            return None
    return f"{who} is not in the approver groups of this rule ({', '.join(groups)})"


async def addresses_of(
    session: AsyncSession, principal_ids: Iterable[int]
) -> dict[int, tuple[tuple[str, str], ...]]:
    ids = list(principal_ids)
    if not ids:
        return {}
    found: dict[int, list[tuple[str, str]]] = {}
    rows = await session.execute(
        select(PrincipalAddress.principal_id, PrincipalAddress.channel, PrincipalAddress.address)
        .where(PrincipalAddress.principal_id.in_(ids))
        .order_by(PrincipalAddress.channel)
    )
    for pid, channel, address in rows.all():
        found.setdefault(pid, []).append((channel, address))
    return {k: tuple(v) for k, v in found.items()}


async def eligible_principals(session: AsyncSession, approval: Approval) -> list[Contact]:
    """Everyone who may decide the approval now, with their channel addresses."""
    groups = groups_now(approval)
    if groups:
        people = await group_members(session, groups)
    else:
        people = list(
            (
                await session.scalars(
                    select(Principal)
                    .where(Principal.role.in_(DECIDER_ROLES))
                    .order_by(Principal.name)
                )
            ).all()
        )
    people = [p for p in people if not p.disabled and p.role in DECIDER_ROLES]
    addresses = await addresses_of(session, [p.id for p in people])
    return [Contact(p.name, addresses.get(p.id, ()), p.id) for p in people]
