"""Contain, assess, close: the steps of an incident that touch only PostgreSQL.

`contain_detection` is the hot path. It records the detection, attaches the ATLAS facts,
plans, and makes every low-risk block effective, in one transaction; so containment never
waits for the slower assessment, hooks, notices or tickets that follow.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Boolean, Float, bindparam, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from temporalio import activity

from activities.context import SYSTEM, ActivityContext, action_id_for, now, ref_of
from activities.summaries import analysis_of, summary_event, summary_facts
from soar import actions
from soar.atlas.store import technique_info
from soar.audit.chain import LogEvent, append, write_many
from soar.contracts import (
    ActionRef,
    CloseInput,
    ContainInput,
    ContainResult,
    EnrichInput,
    EnrichResult,
)
from soar.db import transaction
from soar.domain import DetectionFacts, PlannedAction, Severity
from soar.enforcement import add_block, add_blocks
from soar.models import Action, Approval, Detection, Incident
from soar.policy import evaluate
from soar.summaries import OfflineSummariser

_SEVERITY_WEIGHT = {"info": 0.1, "low": 0.3, "medium": 0.55, "high": 0.8, "critical": 1.0}
_TACTIC_WEIGHT = {"AML.TA0010": 15.0, "AML.TA0011": 10.0, "AML.TA0005": 5.0}


def _base(inp_incident: str, det: DetectionFacts, tactic: str | None) -> dict[str, Any]:
    return {
        "incident_id": inp_incident,
        "tenant": det.subject.tenant,
        "subject": det.subject.key,
        "technique": det.technique,
        "tactic": tactic,
    }


class ContainmentActivities:
    def __init__(self, ctx: ActivityContext) -> None:
        self.ctx = ctx

    @activity.defn(name="contain_detection")
    async def contain_detection(self, inp: ContainInput) -> ContainResult:
        det = inp.detection
        iid = inp.incident_id
        async with transaction(self.ctx.factory) as s:
            info = await technique_info(s, det.technique)
            tactic_ids = [t[0] for t in info.tactics] if info else []
            tactic = tactic_ids[0] if tactic_ids else None
            base = _base(iid, det, tactic)
            plan = evaluate(
                self.ctx.playbook, det, tactics=tactic_ids, repeat_count=inp.repeat_count
            )
            active = set(inp.active_keys)
            generations = dict(inp.generations)
            applied: list[ActionRef] = []
            deferred: list[ActionRef] = []
            approval: list[ActionRef] = []
            t = now()
            wanted = [pa for pa in plan.actions if pa.key not in active]  # (others: in force
            # or awaiting a decision in this incident already)
            rows, fresh = await self._insert_actions(s, iid, det, wanted, generations, t)

            # The log rows are written last, in one batch: the chain lock is held from then
            # until commit, as briefly as possible.
            events = [
                LogEvent(
                    event_key=f"{iid}:{det.key}:received",
                    event="detection.received",
                    actor=f"source:{det.source}",
                    details={
                        "detection_id": det.detection_id,
                        "severity": det.severity,
                        "confidence": det.confidence,
                        "prompt_sha256": det.prompt_sha256,
                        "excerpt": det.excerpt,
                        "model": det.model,
                        "observed_at": det.observed_at,
                        "repeat_count": inp.repeat_count,
                    },
                    **base,
                ),
                LogEvent(
                    event_key=f"{iid}:{det.key}:enriched",
                    event="incident.enriched",
                    actor=SYSTEM,
                    details={
                        "technique_name": info.name if info else None,
                        "parent": info.parent_id if info else None,
                        "tactics": [
                            {"id": t, "name": n} for t, n in (info.tactics if info else ())
                        ],
                        "mitigations": [
                            {"id": m, "name": n} for m, n in (info.mitigations if info else ())
                        ],
                    },
                    **base,
                ),
                LogEvent(
                    event_key=f"{iid}:{det.key}:planned",
                    event="response.planned",
                    actor=SYSTEM,
                    details={
                        "rules_fired": list(plan.rules_fired),
                        "actions": [
                            {
                                "action_id": r.id,
                                "type": r.action_type,
                                "risk": r.risk,
                                "target": r.target,
                                "duration_seconds": r.duration_seconds,
                            }
                            for _, r in rows
                        ],
                        "playbook": self.ctx.playbook.name,
                    },
                    **base,
                ),
            ]
            events += [
                action_event(
                    row,
                    "requested",
                    base=base,
                    risk=row.risk,
                    rule=row.rule,
                    duration_seconds=row.duration_seconds,
                )
                for _, row in rows
            ]
            # New rows were inserted with their outcome (applied, skipped) already: their
            # blocks are added in one statement. A row that was there already (this activity
            # retried after a crash) goes the long way, from the state it was left in.
            await add_blocks(
                s,
                [
                    block_of(row, det.technique, t)
                    for _, row in rows
                    if row.id in fresh and row.status == "applied"
                ],
            )
            for pa, row in rows:
                if row.id in fresh:
                    if row.status == "applied":
                        events.append(applied_event(row, actor=SYSTEM, base=base))
                    elif row.status == "skipped":
                        events.append(skipped_event(row, row.error or "", base=base))
                else:
                    if row.status == "planned" and pa.risk == "low" and _enforces(pa.action_type):
                        events.append(
                            await apply_enforcement(
                                s, row, det.technique, t, actor=SYSTEM, base=base
                            )
                        )
                    if row.status == "planned" and (reason := self._unavailable(row.action_type)):
                        events.append(await skip_action(s, row, reason, base=base))
                # The workflow tracks actions by their key without the generation suffix.
                ref = ref_of(row, det.technique, action_key=pa.key)
                if row.status == "applied":
                    applied.append(ref)
                elif row.status == "pending_approval":
                    approval.append(ref)
                elif row.status == "planned":
                    deferred.append(ref)
            await s.execute(
                _PLAN_UPDATE,
                {"iid": iid, "playbook": self.ctx.playbook.name, "rules": list(plan.rules_fired)},
            )
            await write_many(s, events)
        return ContainResult(
            applied=tuple(applied),
            deferred=tuple(deferred),
            needs_approval=tuple(approval),
            quorums=self._quorums(approval),
            ticketing=self.ctx.ticketing.enabled,
            hooked=tuple(sorted(self.ctx.hooks.urls)),
            external_task_queue=self.ctx.settings.external_task_queue,
            external_max_age_seconds=self.ctx.settings.external_max_age_seconds,
        )

    def _quorums(self, refs: list[ActionRef]) -> tuple[tuple[str, int], ...]:
        """The quorum of each approval's rule, where it needs more than one approval."""
        found = []
        for ref in refs:
            rule = self.ctx.playbook.rule(ref.rule) if ref.rule else None
            if rule is not None and rule.quorum > 1:
                found.append((ref.action_id, rule.quorum))
        return tuple(found)

    def _unavailable(self, action_type: str) -> str | None:
        executor = actions.definition(action_type).executor
        if executor == "notice" and not self.ctx.notifier.enabled:
            return "Slack is not configured"
        if executor == "ticket" and not self.ctx.ticketing.enabled:
            return "Jira is not configured"
        return None

    async def _insert_actions(
        self,
        s: AsyncSession,
        iid: str,
        det: DetectionFacts,
        wanted: list[PlannedAction],
        generations: dict[str, int],
        at: datetime,
    ) -> tuple[list[tuple[PlannedAction, Action]], set[str]]:
        """Insert the planned actions in one statement, each with the outcome it gets at once
        (a low-risk block applied, an action whose channel is not configured skipped, a
        high-risk one pending approval). Returns them in plan order, and the IDs that were
        inserted now (the others were there already)."""
        if not wanted:
            return [], set()
        values = []
        for pa in wanted:
            gen = generations.get(pa.key, 1)
            v: dict[str, Any] = {
                "id": action_id_for(iid, pa.key, gen),
                "incident_id": iid,
                "action_key": pa.key if gen == 1 else f"{pa.key}#{gen}",
                "action_type": pa.action_type,
                "risk": pa.risk,
                "tenant": det.subject.tenant,
                "target": pa.target,
                "status": "pending_approval" if pa.risk == "high" else "planned",
                "rule": pa.rule,
                "params": dict(pa.params),
                "duration_seconds": pa.duration_seconds,
                "applied_at": None,
                "expires_at": None,
                "finished_at": None,
                "error": None,
            }
            if v["status"] == "planned" and pa.risk == "low" and _enforces(pa.action_type):
                until = at + timedelta(seconds=pa.duration_seconds) if pa.duration_seconds else None
                v |= {"status": "applied", "applied_at": at, "expires_at": until}
            elif v["status"] == "planned" and (reason := self._unavailable(pa.action_type)):
                v |= {"status": "skipped", "finished_at": at, "error": reason}
            values.append(v)
        inserted = await s.scalars(
            pg_insert(Action)
            .values(values)
            .on_conflict_do_nothing(index_elements=["id"])
            .returning(Action),
            execution_options={"populate_existing": True},
        )
        by_id = {row.id: row for row in inserted}
        fresh = set(by_id)
        if missing := [v["id"] for v in values if v["id"] not in by_id]:
            found = await s.scalars(
                select(Action)
                .where(Action.id.in_(missing))
                .execution_options(populate_existing=True)
            )
            by_id |= {row.id: row for row in found}
        return [(pa, by_id[v["id"]]) for pa, v in zip(wanted, values, strict=True)], fresh

    @activity.defn(name="enrich_incident")
    async def enrich_incident(self, inp: EnrichInput) -> EnrichResult:
        det = inp.detection
        since = now() - timedelta(hours=24)
        async with transaction(self.ctx.factory) as s:
            info = await technique_info(s, det.technique)
            sub = det.subject
            conds = []
            for col, val in (
                (Detection.subject_user, sub.user),
                (Detection.subject_session, sub.session),
                (Detection.subject_api_key, sub.api_key),
            ):
                if val:
                    conds.append(col == val)
            targets = [v for v in (sub.user, sub.session, sub.api_key) if v]
            counted = (
                await s.execute(
                    select(
                        select(func.count())
                        .select_from(Detection)
                        .where(Detection.tenant == sub.tenant, Detection.received_at >= since)
                        .where(or_(*conds))
                        .scalar_subquery(),
                        select(func.count())
                        .select_from(Action)
                        .where(Action.tenant == sub.tenant, Action.target.in_(targets))
                        .where(Action.created_at >= since, Action.incident_id != inp.incident_id)
                        .scalar_subquery(),
                    )
                )
            ).one()
            history, prior_actions = int(counted[0] or 0), int(counted[1] or 0)
            tactic_ids = [t[0] for t in info.tactics] if info else []
            score = 60.0 * _SEVERITY_WEIGHT.get(det.severity, 0.5) * max(det.confidence, 0.2)
            score += min(history - 1, 10) * 3.0 + min(prior_actions, 5) * 2.0
            score += max((_TACTIC_WEIGHT.get(t, 0.0) for t in tactic_ids), default=0.0)
            score = round(max(0.0, min(100.0, score)), 1)
            mitigations = info.mitigations if info else ()
            tactic_names = ", ".join(f"{t} {n}" for t, n in info.tactics) if info else "-"
            summary = (
                f"{det.technique} {info.name if info else ''} ({tactic_names}) on "
                f"{sub.key} in {sub.tenant}: severity {det.severity}, confidence "
                f"{det.confidence:.2f}; {history} detection(s) on this subject in 24 h"
                + (f"; excerpt: {det.excerpt}" if det.excerpt else "")
            )
            enrichment = {
                "technique": {
                    "id": det.technique,
                    "name": info.name if info else None,
                    "parent": info.parent_id if info else None,
                },
                "tactics": [{"id": t, "name": n} for t, n in (info.tactics if info else ())],
                "mitigations": [{"id": m, "name": n} for m, n in mitigations],
                "history_24h": {"detections": history, "actions_other_incidents": prior_actions},
                "risk_score": score,
                "summary": summary,
            }
            events: list[LogEvent] = []
            summarised = isinstance(self.ctx.summariser, OfflineSummariser)
            if summarised:
                # The offline summary costs nothing to write: here, rather than as a step of
                # its own (summarise_incident, for a model, which may be slow).
                facts = summary_facts(det, info, score, history)
                outcome = await self.ctx.summariser.summarise(facts)
                enrichment["analysis"] = analysis_of(outcome.summary, det)
                events.append(summary_event(inp.incident_id, det, facts, outcome))
            # The summary (summarise_incident) is written beside it: the last one is kept.
            await s.execute(
                _ENRICH_UPDATE,
                {
                    "iid": inp.incident_id,
                    "score": score,
                    "enrichment": enrichment,
                    "with_analysis": summarised,
                },
            )
            await write_many(
                s,
                [
                    LogEvent(
                        event_key=f"{inp.incident_id}:{det.key}:assessed",
                        event="incident.assessed",
                        actor=SYSTEM,
                        details={"risk_score": score, "history_24h": history, "summary": summary},
                        **_base(inp.incident_id, det, tactic_ids[0] if tactic_ids else None),
                    ),
                    *events,
                ],
            )
        return EnrichResult(risk_score=score, summary=summary, summarised=summarised)

    @activity.defn(name="close_incident")
    async def close_incident(self, inp: CloseInput) -> bool:
        async with transaction(self.ctx.factory) as s:
            inc = await s.get(Incident, inp.incident_id, with_for_update=True)
            if inc is None:
                return True
            if inc.status == "closed":
                return True
            pending = await s.scalar(
                select(func.count())
                .select_from(Approval)
                .where(Approval.incident_id == inc.id, Approval.status == "pending")
            )
            quiet_since = datetime.now(UTC) - timedelta(seconds=inp.quiet_seconds)
            # A detection that joined after the workflow's timer started keeps it open.
            if pending or inc.last_detection_at > quiet_since + timedelta(seconds=1):
                return False
            await s.execute(
                update(Incident)
                .where(Incident.id == inc.id)
                .values(status="closed", closed_at=text("now()"))
            )
            await append(
                s,
                LogEvent(
                    event_key=f"{inc.id}:closed",
                    event="incident.closed",
                    actor=SYSTEM,
                    incident_id=inc.id,
                    tenant=inc.tenant,
                    subject=inc.subject_key,
                    technique=inc.technique,
                    details={"detections": inc.detection_count, "severity": inc.severity},
                ),
            )
        return True


def _enforces(action_type: str) -> bool:
    return actions.definition(action_type).enforces


# The plan's rules fired so far, merged in the database (one statement, no read first), in
# code-point order as sorted() gives.
_PLAN_UPDATE = text(
    "UPDATE incidents SET plan = jsonb_build_object("
    " 'playbook', CAST(:playbook AS text),"
    " 'rules_fired', (SELECT coalesce(jsonb_agg(r ORDER BY r COLLATE \"C\"), '[]'::jsonb) FROM ("
    "  SELECT jsonb_array_elements_text(coalesce(plan->'rules_fired', '[]'::jsonb)) AS r"
    "  UNION SELECT unnest(CAST(:rules AS text[]))) AS u))"
    " WHERE id = :iid"
)


_ENRICH_UPDATE = text(
    "UPDATE incidents SET"
    " risk_score = CASE WHEN risk_score IS NULL OR :score >= risk_score"
    "  THEN :score ELSE risk_score END,"
    " enrichment = CASE WHEN NOT :with_analysis"
    "  AND jsonb_typeof(enrichment->'analysis') IS DISTINCT FROM 'null'"
    "  AND enrichment ? 'analysis'"
    "  THEN :enrichment || jsonb_build_object('analysis', enrichment->'analysis')"
    "  ELSE :enrichment END"
    " WHERE id = :iid"
).bindparams(
    bindparam("enrichment", type_=JSONB),
    bindparam("score", type_=Float),
    bindparam("with_analysis", type_=Boolean),
)
"""The assessment beside the incident; the summary already there is kept unless this one
brings its own (`with_analysis`)."""


def action_event(
    row: Action, outcome: str, *, base: dict[str, Any], actor: str = SYSTEM, **details: Any
) -> LogEvent:
    """The log row of an action reaching `outcome` (requested, applied, skipped)."""
    return LogEvent(
        event_key=f"{row.id}:{outcome}",
        event=f"action.{outcome}",
        actor=actor,
        action=row.action_type,
        outcome=outcome,
        details={"action_id": row.id, "target": row.target, **details},
        **base,
    )


def skipped_event(row: Action, reason: str, *, base: dict[str, Any]) -> LogEvent:
    return action_event(row, "skipped", base=base, reason=reason)


def applied_event(row: Action, *, actor: str, base: dict[str, Any]) -> LogEvent:
    until = row.expires_at.isoformat() if row.expires_at else None
    return action_event(
        row, "applied", base=base, actor=actor, risk=row.risk, until=until, rule=row.rule
    )


def block_of(row: Action, technique: str, at: datetime) -> dict[str, Any]:
    """The enforcement entry of an applied action (soar.enforcement.add_blocks)."""
    enforcement = actions.definition(row.action_type).enforcement
    assert enforcement is not None, row.action_type
    return {
        "action_id": row.id,
        "kind": enforcement.stored_kind(row.params or {}),
        "tenant": row.tenant,
        "target": row.target,
        "incident_id": row.incident_id,
        "technique": technique,
        "created_at": at,
        "until": row.expires_at,
    }


async def skip_action(
    s: AsyncSession, row: Action, reason: str, *, base: dict[str, Any]
) -> LogEvent:
    """Mark an action skipped; returns its log event for the caller to append."""
    at = now()
    await s.execute(
        update(Action)
        .where(Action.id == row.id)
        .values(status="skipped", finished_at=at, error=reason)
    )
    row.status = "skipped"
    return skipped_event(row, reason, base=base)


async def apply_enforcement(
    s: AsyncSession,
    row: Action,
    technique: str,
    at: datetime,
    *,
    actor: str,
    base: dict[str, Any],
) -> LogEvent:
    """Make an enforcement action effective (idempotent on the action id); returns its log
    event for the caller to append."""
    until = at + timedelta(seconds=row.duration_seconds) if row.duration_seconds else None
    enforcement = actions.definition(row.action_type).enforcement
    assert enforcement is not None, row.action_type
    await add_block(
        s,
        action_id=row.id,
        kind=enforcement.stored_kind(row.params or {}),
        tenant=row.tenant,
        target=row.target,
        incident_id=row.incident_id,
        technique=technique,
        now=at,
        until=until,
    )
    await s.execute(
        update(Action)
        .where(Action.id == row.id)
        .values(status="applied", applied_at=at, expires_at=until)
    )
    row.status, row.applied_at, row.expires_at = "applied", at, until
    return applied_event(row, actor=actor, base=base)


__all__ = ["SYSTEM", "ContainmentActivities", "Severity", "apply_enforcement"]
