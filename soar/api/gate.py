"""What the decision gate adds before a decision reaches Temporal: no self-approval, and the
signature the workflow insists on (soar/decisions.py).

Self-approval, the rule: the decider's identities are the principal's name, its Slack user
ID and its e-mail address (when set), plus every `kind:value` tag in the actor string
(`alice (slack:U024BE7LH)`, `slack:U024BE7LH`, `alice (email:alice@example.com)`), each
resolved to its principal's identities too. The action's subject is the incident's user
(every `subject.user` of its detections and the incident's correlation key) and, for an
action on a user (`disable_user`), its target. Compared exactly, ignoring case and outer
spaces; any match refuses the decision (403, logged `approval.refused`).
"""

from __future__ import annotations

import logging
import re
from datetime import UTC, datetime
from typing import TypeVar

from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from soar import actions
from soar.api.deps import AppState
from soar.decisions import decision_keys, sign_decision
from soar.domain import AnalystRequest, DecisionRequest
from soar.models import Action, Approval, Detection, Incident, Principal, PrincipalAddress

log = logging.getLogger("soar.approvals")

_TAG = re.compile(r"\b([a-z]+):([^\s()]+)")
_MAX_SUBJECTS = 200


def _norm(v: str | None) -> str:
    return (v or "").strip().casefold()


def log_refusal(req: DecisionRequest, why: str) -> None:
    log.warning(
        "approval.refused approval=%r actor=%r role=%r channel=%r why: %s",
        req.approval_id[:100],
        req.actor[:200],
        req.role[:32],
        req.channel[:32],
        why[:300],
    )


async def decider_identities(session: AsyncSession, actor: str) -> set[str]:
    names = {actor.split(" (", 1)[0].strip()}
    names |= {value for _, value in _TAG.findall(actor)}
    names.discard("")
    found = set(names)
    # A principal matches by name, or by any address a channel knows it by (its Slack
    # member ID, its e-mail address: principal_addresses); all of its identities count.
    by_address = select(PrincipalAddress.principal_id).where(PrincipalAddress.address.in_(names))
    matched = (
        await session.scalars(
            select(Principal.id).where(or_(Principal.name.in_(names), Principal.id.in_(by_address)))
        )
    ).all()
    if matched:
        found |= set(
            (await session.scalars(select(Principal.name).where(Principal.id.in_(matched)))).all()
        )
        found |= set(
            (
                await session.scalars(
                    select(PrincipalAddress.address).where(
                        PrincipalAddress.principal_id.in_(matched)
                    )
                )
            ).all()
        )
    return {_norm(x) for x in found if x}


async def incident_subjects(session: AsyncSession, incident_id: str) -> set[str]:
    """The users an incident is about: its correlation key's and every detection's."""
    out: set[str] = set()
    incident = await session.get(Incident, incident_id)
    if incident is not None and incident.subject_key.startswith("user:"):
        out.add(incident.subject_key.removeprefix("user:"))
    users = await session.scalars(
        select(Detection.subject_user)
        .where(Detection.incident_id == incident_id, Detection.subject_user.is_not(None))
        .distinct()
        .limit(_MAX_SUBJECTS)
    )
    out |= {u for u in users if u}
    return {_norm(x) for x in out if _norm(x)}


async def subject_identities(session: AsyncSession, approval: Approval) -> set[str]:
    out: set[str] = set()
    action = await session.get(Action, approval.action_id)
    spec = actions.find(action.action_type) if action is not None else None
    if action is not None and spec is not None and spec.target == "user":
        out.add(_norm(action.target))
    return out | await incident_subjects(session, approval.incident_id)


async def self_approval(session: AsyncSession, approval: Approval, req: DecisionRequest) -> bool:
    return bool(
        await decider_identities(session, req.actor) & await subject_identities(session, approval)
    )


async def own_request(session: AsyncSession, approval: Approval, req: DecisionRequest) -> bool:
    """Whether the decider is the analyst who asked for the action ("contain now"): a second
    person must decide it."""
    if not approval.requested_by:
        return False
    mine = await decider_identities(session, req.actor)
    return bool(mine & await decider_identities(session, approval.requested_by))


async def own_incident(session: AsyncSession, incident_id: str, actor: str) -> bool:
    """Whether the analyst is one of the incident's subjects (may not act on it)."""
    return bool(
        await decider_identities(session, actor) & await incident_subjects(session, incident_id)
    )


_Req = TypeVar("_Req", DecisionRequest, AnalystRequest)


def signed(state: AppState, req: _Req) -> _Req:
    keys = state.extras.get("decision_keys")
    if not isinstance(keys, tuple):
        keys = decision_keys(state.settings)
        state.extras["decision_keys"] = keys
    return sign_decision(req, keys[0], now=datetime.now(UTC))
