"""Incident summaries behind one small interface: the deterministic offline summariser (the
default) or an OpenAI-compatible model under guardrails (`SOAR_LLM_*`).

>>> import asyncio
>>> from soar.summaries import OfflineSummariser, SummaryFacts
>>> facts = SummaryFacts("acme", "AML.T0051", "LLM Prompt Injection", (), (), "high", 0.9, "gw")
>>> asyncio.run(OfflineSummariser().summarise(facts)).summary.written_by
'offline'
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from soar.config import Settings
from soar.summaries.base import (
    MODEL,
    OFFLINE,
    CallRecord,
    NextStep,
    OfflineSummariser,
    Outcome,
    Summariser,
    Summary,
    SummaryFacts,
    offline_summary,
)

__all__ = [
    "MODEL",
    "OFFLINE",
    "CallRecord",
    "NextStep",
    "OfflineSummariser",
    "Outcome",
    "Summariser",
    "Summary",
    "SummaryFacts",
    "build_summariser",
    "offline_summary",
]


def build_summariser(settings: Settings, factory: async_sessionmaker[AsyncSession]) -> Summariser:
    """The model summariser when SOAR_LLM_BASE_URL and SOAR_LLM_MODEL are set, else the
    offline one."""
    if not (settings.llm_base_url and settings.llm_model):
        return OfflineSummariser()
    from soar.summaries.model import ModelSummariser
    from soar.summaries.store import SummaryStore

    return ModelSummariser(
        base_url=settings.llm_base_url,
        api_key=settings.llm_api_key.get_secret_value() if settings.llm_api_key else None,
        model=settings.llm_model,
        store=SummaryStore(factory, cache_seconds=settings.llm_cache_seconds),
        timeout_seconds=settings.llm_timeout_seconds,
        temperature=settings.llm_temperature,
        max_prompt_chars=settings.llm_max_prompt_chars,
        max_output_tokens=settings.llm_max_output_tokens,
        max_response_chars=settings.llm_max_response_chars,
        rate_per_minute=settings.llm_rate_per_minute,
        burst=settings.llm_burst,
        daily_token_budget=settings.llm_daily_token_budget,
    )
