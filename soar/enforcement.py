"""The enforcement store: blocks in PostgreSQL that LLM gateways check on their hot path.

The rows are the truth; every committed block or lift is also numbered in commit order in
`enforcement_changes` (migration 0005), which feeds the in-memory replica each API process
answers checks from (soar/replica.py) and `GET /v1/enforcement/stream` (soar/api/stream.py).
`check` (the database) is the fallback when a replica's feed is stale."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from soar.gateway.table import Block
from soar.models import EnforcementBlock

KIND_OF_ACTION = {
    "block_session": "session",
    "block_api_key": "api_key",
    "revoke_api_key": "api_key",
    "disable_user": "user",
}
ENFORCEMENT_ACTIONS = frozenset(KIND_OF_ACTION)


@dataclass(frozen=True)
class BlockStatus:
    blocked: bool
    until: datetime | None
    incident_id: str | None
    technique: str | None

    def as_json(self) -> dict[str, object]:
        return {
            "blocked": self.blocked,
            "until": self.until.isoformat() if self.until else None,
            "reason": {"incident_id": self.incident_id, "technique": self.technique}
            if self.blocked
            else None,
        }


def status_of(block: Block | None) -> BlockStatus:
    """The answer of a check from a replica's lookup (the longest-lasting active block)."""
    if block is None:
        return BlockStatus(False, None, None, None)
    return BlockStatus(True, block.until, block.incident_id, block.technique)


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


async def lift_block(session: AsyncSession, *, action_id: str, now: datetime) -> bool:
    result = await session.execute(
        update(EnforcementBlock)
        .where(EnforcementBlock.action_id == action_id, EnforcementBlock.lifted_at.is_(None))
        .values(lifted_at=now)
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


async def check(session: AsyncSession, *, kind: str, target: str, tenant: str) -> BlockStatus:
    """The longest-lasting active block wins (a permanent one over any temporary one)."""
    now = datetime.now(UTC)
    rows = (
        await session.execute(
            select(EnforcementBlock.until, EnforcementBlock.incident_id, EnforcementBlock.technique)
            .where(EnforcementBlock.kind == kind, EnforcementBlock.target == target)
            .where(EnforcementBlock.tenant == tenant, EnforcementBlock.lifted_at.is_(None))
            .where(or_(EnforcementBlock.until.is_(None), EnforcementBlock.until > now))
        )
    ).all()
    if not rows:
        return BlockStatus(False, None, None, None)
    far = now + timedelta(days=365 * 100)
    best = max(rows, key=lambda r: r[0] or far)
    return BlockStatus(True, best[0], best[1], best[2])
