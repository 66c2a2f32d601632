"""The incident summary: facts in, summary out (offline or model-written), stored beside the
enrichment and logged as `summary.generated`. It runs after the plan and the risk score are
settled and writes nothing they are made of."""

from __future__ import annotations

from sqlalchemy import bindparam, text
from sqlalchemy.dialects.postgresql import JSONB
from temporalio import activity

from activities.context import SYSTEM, ActivityContext, now
from soar.atlas.store import TechniqueInfo, technique_info
from soar.audit.chain import LogEvent, append
from soar.contracts import SummariseInput, SummaryResult
from soar.db import transaction
from soar.domain import DetectionFacts
from soar.models import Incident
from soar.summaries import MODEL, Outcome, Summary, SummaryFacts

NOTE_MAX = 4000


def ticket_note(summary: Summary) -> str:
    """The ticket comment for a model-written summary (the ticketing adapter escapes it)."""
    steps = "\n".join(
        f"- {s.step}" + (f" ({s.mitigation})" if s.mitigation else "") for s in summary.next_steps
    )
    text = (
        f"Summary written by model {summary.model} (untrusted; for reading only, it changes "
        f"no action):\n{summary.summary}\nLikely intent: {summary.likely_intent}\n"
        f"Suggested next steps:\n{steps}"
    )
    return text[:NOTE_MAX]


# The summary beside the assessment, in one statement (the row is locked by the UPDATE).
_ANALYSIS_UPDATE = text(
    "UPDATE incidents SET enrichment = coalesce(enrichment, '{}'::jsonb)"
    " || jsonb_build_object('analysis', :analysis) WHERE id = :iid"
).bindparams(bindparam("analysis", type_=JSONB))


class SummaryActivities:
    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    async def _facts(self, inp: SummariseInput) -> SummaryFacts:
        async with self.ctx.factory() as s:
            info = await technique_info(s, inp.detection.technique)
            inc = await s.get(Incident, inp.incident_id)
        history = ((inc.enrichment or {}) if inc else {}).get("history_24h") or {}
        count = history.get("detections")
        return summary_facts(
            inp.detection, info, inp.risk_score, count if isinstance(count, int) else None
        )

    @activity.defn(name="summarise_incident")
    async def summarise_incident(self, inp: SummariseInput) -> SummaryResult:
        det = inp.detection
        facts = await self._facts(inp)
        outcome = await self.ctx.summariser.summarise(facts)
        summary, call = outcome.summary, outcome.call
        async with transaction(self.ctx.factory) as s:
            await s.execute(
                _ANALYSIS_UPDATE,
                {"iid": inp.incident_id, "analysis": analysis_of(summary, det)},
            )
            await append(s, summary_event(inp.incident_id, det, facts, outcome))
        note = ticket_note(summary) if summary.written_by == MODEL else ""
        return SummaryResult(summary.written_by, call.outcome, note)


def summary_facts(
    det: DetectionFacts,
    info: TechniqueInfo | None,
    risk_score: float | None,
    detections_24h: int | None,
) -> SummaryFacts:
    sub = det.subject
    return SummaryFacts(
        tenant=sub.tenant,
        technique=det.technique,
        technique_name=info.name if info else "",
        tactics=info.tactics if info else (),
        mitigations=info.mitigations if info else (),
        severity=det.severity,
        confidence=det.confidence,
        source=det.source,
        excerpt=det.excerpt,
        risk_score=risk_score,
        detections_24h=detections_24h,
        subject_kinds=tuple(
            k
            for k, v in (("user", sub.user), ("session", sub.session), ("api_key", sub.api_key))
            if v
        ),
    )


def analysis_of(summary: Summary, det: DetectionFacts) -> dict[str, object]:
    """What is stored as the incident's `enrichment.analysis`."""
    return {
        **summary.as_json(),
        "detection_id": det.detection_id,
        "generated_at": now().isoformat(),
    }


def summary_event(
    incident_id: str, det: DetectionFacts, facts: SummaryFacts, outcome: Outcome
) -> LogEvent:
    return LogEvent(
        event_key=f"{incident_id}:{det.key}:summary",
        event="summary.generated",
        actor=SYSTEM,
        outcome=outcome.call.outcome,
        incident_id=incident_id,
        tenant=det.subject.tenant,
        subject=det.subject.key,
        technique=det.technique,
        tactic=facts.tactics[0][0] if facts.tactics else None,
        details={**outcome.call.as_json(), "written_by": outcome.summary.written_by},
    )
