"""`soar ingest --dry-run`: each line validated by the intake's own schema, mapped and
enriched (ATLAS technique, tactics, mitigations, the offline summary) and printed as JSON.
Nothing is sent, recorded or checkpointed; no model is called."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from soar.atlas import BUILTIN_CATALOG
from soar.atlas.store import TechniqueInfo
from soar.detect import Engine
from soar.ingest.checkpoint import Result
from soar.ingest.lines import parse_line
from soar.intake.schema import DetectionInvalid, NothingDetected, parse_detection
from soar.intake.service import prepare
from soar.summaries import SummaryFacts, offline_summary

InfoLookup = Callable[[str], Awaitable[TechniqueInfo | None]]


async def builtin_info(technique: str) -> TechniqueInfo | None:
    """What `technique_info` reads from the database, from the built-in catalog."""
    cat = BUILTIN_CATALOG
    tech = cat.technique(technique)
    if tech is None:
        return None
    parent = cat.technique(tech.parent_id) if tech.parent_id else None
    tactics = sorted((t, cat.tactic(t).name if cat.tactic(t) else t) for t in tech.tactic_ids)  # type: ignore[union-attr]
    ids = [technique] + ([tech.parent_id] if tech.parent_id else [])
    mitigations = sorted({(m.id, m.name) for i in ids for m in cat.mitigations_for(i)})
    return TechniqueInfo(
        id=tech.id,
        name=tech.name,
        parent_id=tech.parent_id,
        parent_name=parent.name if parent else None,
        tactics=tuple(tactics),
        mitigations=tuple(mitigations),
    )


async def enrich_line(
    number: int,
    raw: bytes,
    *,
    engine: Engine,
    info: InfoLookup,
    technique: str | None,
    tenant: str,
) -> tuple[Result, dict[str, Any] | None]:
    """The line's result, and the enriched alert to print (None for a blank line)."""
    line = parse_line(number, raw, engine=engine, technique=technique, tenant=tenant)
    if line is None:
        return Result(number, "blank"), None
    out: dict[str, Any] = {"line": number, "kind": line.kind, "id": line.key}
    if line.body is None:
        out.update(status=line.kind, reason=line.reason)
        return Result(number, line.kind, line.key, line.reason), out
    try:
        det, _ = parse_detection(line.body)
    except DetectionInvalid as exc:
        reason = "; ".join(f"{e['field']}: {e['message']}" for e in exc.errors[:10])
        out.update(status="invalid", reason=reason)
        return Result(number, "invalid", line.key, reason), out
    except NothingDetected:
        out.update(status="clean", reason="the finding reports nothing detected")
        return Result(number, "clean", line.key), out
    found = await info(det.technique)
    if found is None:
        reason = f"technique: unknown ATLAS technique {det.technique}"
        out.update(status="invalid", reason=reason)
        return Result(number, "invalid", det.id, reason), out
    prepared = prepare(det)
    facts = SummaryFacts(
        tenant=det.subject.tenant,
        technique=det.technique,
        technique_name=found.name,
        tactics=found.tactics,
        mitigations=found.mitigations,
        severity=det.severity.value,
        confidence=det.confidence,
        source=det.source,
        excerpt=prepared.excerpt,
    )
    summary = offline_summary(facts)
    out.update(
        status="ok",
        id=det.id,
        technique={"id": det.technique, "name": found.name},
        tactics=[{"id": t, "name": n} for t, n in found.tactics],
        mitigations=[{"id": m, "name": n} for m, n in found.mitigations],
        severity=det.severity.value,
        confidence=det.confidence,
        subject=prepared.subject.key,
        tenant=det.subject.tenant,
        excerpt=prepared.excerpt,
        prompt_sha256=prepared.prompt_sha256,
        summary=summary.summary,
        likely_intent=summary.likely_intent,
        next_steps=[{"step": s.step, "mitigation": s.mitigation} for s in summary.next_steps],
        summarised_by=summary.written_by,
        at=datetime.now(UTC).isoformat(),
    )
    return Result(number, "accepted", det.id), out
