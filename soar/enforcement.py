"""The enforcement store: blocks in PostgreSQL that LLM gateways check on their hot path.

The rows are the truth; every committed block or lift is also numbered in commit order in
`enforcement_changes` (migration 0005), which feeds the in-memory replica each API process
answers checks from (soar/replica.py) and `GET /v1/enforcement/stream` (soar/api/stream.py).
`check` (the database) is the fallback when a replica's feed is stale."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from soar import actions
from soar.gateway.table import Block, split_kind, stored_kind
from soar.models import EnforcementBlock


@dataclass(frozen=True)
class EnforcementStatus:
    """The answer of an enforcement check: every effect in force on one target (the
    longest-lasting entry of each), block first."""

    kind: str
    effects: dict[str, Block]

    @property
    def blocked(self) -> bool:
        return "block" in self.effects

    def as_json(self) -> dict[str, object]:
        """CONTRACT.md: `{"blocked", "until", "reason"}`; `until` and `reason` are those of
        the strongest effect in force (`effect` names it), and every milder effect some
        action may put on this kind of target has its flag (`"throttled": false`)."""
        strongest = next(iter(self.effects.items()), None)
        out: dict[str, object] = {
            "blocked": self.blocked,
            "until": None,
            "reason": None,
            "effect": strongest[0] if strongest else None,
        }
        if strongest is not None:
            b = strongest[1]
            out["until"] = b.until.isoformat() if b.until else None
            out["reason"] = {"incident_id": b.incident_id, "technique": b.technique}
        for effect in actions.effects_for(self.kind):
            if effect.name != "block":
                out[effect.flag] = effect.name in self.effects
        return out


async def add_block(
    session: AsyncSession,
    *,
    action_id: str,
    kind: str,
    tenant: str,
    target: str,
    incident_id: str,
    technique: str,
    now: datetime,
    until: datetime | None,
) -> None:
    await session.execute(
        pg_insert(EnforcementBlock)
        .values(
            action_id=action_id,
            kind=kind,
            tenant=tenant,
            target=target,
            incident_id=incident_id,
            technique=technique,
            created_at=now,
            until=until,
        )
        .on_conflict_do_nothing(index_elements=["action_id"])
    )


async def add_blocks(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Several blocks in one statement (each row as add_block's arguments, `now` named
    `created_at`); idempotent on the action id."""
    if rows:
        await session.execute(
            pg_insert(EnforcementBlock)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["action_id"])
        )


async def lift_block(session: AsyncSession, *, action_id: str, now: datetime) -> bool:
    result = await session.execute(
        update(EnforcementBlock)
        .where(EnforcementBlock.action_id == action_id, EnforcementBlock.lifted_at.is_(None))
        .values(lifted_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def check(session: AsyncSession, *, kind: str, target: str, tenant: str) -> EnforcementStatus:
    """From the database (a replica's feed is stale): the longest-lasting active entry of
    each effect (a permanent one over any temporary one)."""
    now = datetime.now(UTC)
    kinds = [stored_kind(e.name, kind) for e in actions.effects_for(kind)]
    rows = (
        await session.execute(
            select(EnforcementBlock)
            .where(EnforcementBlock.kind.in_(kinds), EnforcementBlock.target == target)
            .where(EnforcementBlock.tenant == tenant, EnforcementBlock.lifted_at.is_(None))
            .where(or_(EnforcementBlock.until.is_(None), EnforcementBlock.until > now))
        )
    ).scalars()
    far = now + timedelta(days=365 * 100)
    best: dict[str, Block] = {}
    for r in rows:
        b = Block(r.action_id, r.kind, r.tenant, r.target, r.until, r.incident_id, r.technique)
        effect = split_kind(r.kind)[0]
        if effect not in best or (b.until or far) > (best[effect].until or far):
            best[effect] = b
    order = [e.name for e in actions.effects_for(kind)]
    return EnforcementStatus(kind, {e: best[e] for e in order if e in best})
