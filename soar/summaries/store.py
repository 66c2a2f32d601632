"""The summary cache and the daily token budget, in PostgreSQL (shared by every worker)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from sqlalchemy import select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soar.models import ModelUsage, SummaryCacheEntry
from soar.summaries.base import Summary


def today() -> date:
    return datetime.now(UTC).date()


class SummaryStore:
    def __init__(self, factory: async_sessionmaker[AsyncSession], *, cache_seconds: int) -> None:
        self._factory = factory
        self._ttl = timedelta(seconds=cache_seconds)

    async def cached(self, prompt_sha256: str, model: str) -> tuple[Summary, str] | None:
        """The summary served before for this exact prompt and model, and its answer's
        digest; None when there is none younger than the cache's lifetime."""
        async with self._factory() as s:
            row = await s.scalar(
                select(SummaryCacheEntry).where(
                    SummaryCacheEntry.prompt_sha256 == prompt_sha256,
                    SummaryCacheEntry.model == model,
                    SummaryCacheEntry.created_at > datetime.now(UTC) - self._ttl,
                )
            )
        if row is None:
            return None
        return Summary.from_json(row.summary), row.response_sha256

    async def remember(
        self, prompt_sha256: str, model: str, summary: Summary, response_sha256: str
    ) -> None:
        async with self._factory() as s, s.begin():
            await s.execute(
                pg_insert(SummaryCacheEntry)
                .values(
                    prompt_sha256=prompt_sha256,
                    model=model,
                    response_sha256=response_sha256,
                    summary=summary.as_json(),
                    created_at=datetime.now(UTC),
                )
                .on_conflict_do_update(
                    index_elements=["prompt_sha256", "model"],
                    set_={
                        "response_sha256": response_sha256,
                        "summary": summary.as_json(),
                        "created_at": datetime.now(UTC),
                    },
                )
            )

    async def reserve(self, tenant: str, tokens: int, budget: int) -> bool:
        """Take `tokens` from the tenant's budget for today, atomically across workers;
        False (nothing taken) when that would go over `budget`."""
        if tokens > budget:
            return False
        async with self._factory() as s, s.begin():
            stmt = (
                pg_insert(ModelUsage)
                .values(tenant=tenant, day=today(), tokens=tokens, calls=1)
                .on_conflict_do_update(
                    index_elements=["tenant", "day"],
                    set_={
                        "tokens": ModelUsage.tokens + tokens,
                        "calls": ModelUsage.calls + 1,
                    },
                    where=text("model_usage.tokens + :add <= :budget").bindparams(
                        add=tokens, budget=budget
                    ),
                )
                .returning(ModelUsage.tokens)
            )
            return (await s.scalar(stmt)) is not None

    async def settle(self, tenant: str, delta: int) -> None:
        """Correct today's reservation by what the call really used (may be negative)."""
        if delta == 0:
            return
        async with self._factory() as s, s.begin():
            await s.execute(
                text(
                    "UPDATE model_usage SET tokens = GREATEST(0, tokens + :d) "
                    "WHERE tenant = :t AND day = :day"
                ),
                {"d": delta, "t": tenant, "day": today()},
            )

    async def used_today(self, tenant: str) -> int:
        async with self._factory() as s:
            found = await s.scalar(
                select(ModelUsage.tokens).where(
                    ModelUsage.tenant == tenant, ModelUsage.day == today()
                )
            )
        return int(found or 0)
