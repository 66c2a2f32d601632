"""Recording a detection durably and handing it to its incident workflow.

The detection row is the outbox: it is committed before the answer, and the workflow is
signalled after; a crash in between is repaired by `redeliver_undispatched`, and the
workflow ignores a detection it has already seen.
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client
from temporalio.common import WorkflowIDReusePolicy

from soar.domain import (
    SIGNAL_DETECTION,
    DetectionFacts,
    IncidentInput,
    Severity,
    Subject,
    workflow_id_for,
)
from soar.intake.schema import NativeDetection
from soar.models import Detection, Incident
from soar.redact import prompt_digest, redact

log = logging.getLogger("soar.intake")
REDACT_WINDOW = 4096


@dataclass(frozen=True)
class Recorded:
    incident_id: str
    workflow_id: str
    detection_id: str
    duplicate: bool
    facts: DetectionFacts | None = None
    new_incident: bool = False


@dataclass(frozen=True)
class Prepared:
    """What the intake computes before it opens a transaction: the CPU-heavy part (the
    prompt's digest and redacted excerpt), so it can run off the event loop."""

    subject: Subject
    prompt_sha256: str | None
    excerpt: str | None


def prepare(d: NativeDetection) -> Prepared:
    prompt = d.evidence.prompt if d.evidence else None
    return Prepared(
        subject=Subject(
            tenant=d.subject.tenant,
            user=d.subject.user,
            session=d.subject.session,
            api_key=d.subject.api_key,
        ),
        prompt_sha256=prompt_digest(prompt) if prompt else None,
        # Only the head is ever shown; masking a bounded prefix keeps a huge prompt from
        # stalling the API (the digest still covers the whole prompt).
        excerpt=redact(prompt[:REDACT_WINDOW]) if prompt else None,
    )


def to_facts(
    d: NativeDetection, received_at: datetime, prepared: Prepared | None = None
) -> DetectionFacts:
    p = prepared or prepare(d)
    return DetectionFacts(
        detection_id=d.id,
        technique=d.technique,
        severity=d.severity.value,
        confidence=d.confidence,
        source=d.source,
        observed_at=(d.observed_at or received_at).isoformat(),
        subject=p.subject,
        prompt_sha256=p.prompt_sha256,
        excerpt=p.excerpt,
        model=d.evidence.model if d.evidence else None,
        received_at=received_at.isoformat(),
    )


def _lock_id(*parts: str) -> int:
    digest = hashlib.sha256("\x1f".join(parts).encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


async def record_detection(
    session: AsyncSession,
    d: NativeDetection,
    *,
    fmt: str = "native",
    prepared: Prepared | None = None,
) -> Recorded:
    """Insert the detection and attach it to the open incident of its subject, creating one
    if none is open. Runs in the caller's transaction."""
    # Two copies of one detection arriving at the same instant queue on this lock.
    await session.execute(
        text("SELECT pg_advisory_xact_lock(:k)"), {"k": _lock_id("det", d.source, d.id)}
    )
    existing = (
        await session.execute(
            select(Detection.incident_id).where(
                Detection.source == d.source, Detection.external_id == d.id
            )
        )
    ).first()
    if existing:
        iid = existing[0]
        return Recorded(iid, workflow_id_for(iid), d.id, duplicate=True)

    now = datetime.now(UTC)
    facts = to_facts(d, now, prepared)
    subject = facts.subject
    incident, created = await _open_incident(session, subject, facts, now)
    session.add(
        Detection(
            source=d.source,
            external_id=d.id,
            incident_id=incident.id,
            tenant=subject.tenant,
            technique=facts.technique,
            severity=facts.severity,
            confidence=facts.confidence,
            subject_user=subject.user,
            subject_session=subject.session,
            subject_api_key=subject.api_key,
            observed_at=datetime.fromisoformat(facts.observed_at),
            received_at=now,
            prompt_sha256=facts.prompt_sha256,
            excerpt=facts.excerpt,
            model=facts.model,
            format=fmt,
        )
    )
    await session.flush()
    return Recorded(incident.id, incident.workflow_id, d.id, False, facts, created)


async def _open_incident(
    session: AsyncSession, subject: Subject, facts: DetectionFacts, now: datetime
) -> tuple[Incident, bool]:
    key = subject.key
    # The partial unique index allows one open incident per subject; ON CONFLICT makes two
    # simultaneous first detections agree on the same incident.
    new_id = "inc-" + uuid.uuid4().hex[:20]
    inserted = await session.scalar(
        pg_insert(Incident)
        .values(
            id=new_id,
            tenant=subject.tenant,
            subject_key=key,
            status="open",
            workflow_id=workflow_id_for(new_id),
            technique=facts.technique,
            severity=facts.severity,
            detection_count=1,
            opened_at=now,
            last_detection_at=now,
        )
        .on_conflict_do_nothing(
            index_elements=["tenant", "subject_key"], index_where=text("status = 'open'")
        )
        .returning(Incident.id)
    )
    if inserted:
        incident = await session.get(Incident, inserted)
        assert incident is not None
        return incident, True
    incident = await session.scalar(
        select(Incident)
        .where(Incident.tenant == subject.tenant, Incident.subject_key == key)
        .where(Incident.status == "open")
        .with_for_update()
    )
    if incident is None:  # closed between our insert attempt and this read: try once more
        return await _open_incident(session, subject, facts, now)
    incident.detection_count += 1
    incident.last_detection_at = now
    if Severity(facts.severity).rank > Severity(incident.severity).rank:
        incident.severity = facts.severity
    return incident, False


async def dispatch(
    client: Client,
    *,
    task_queue: str,
    incident_id: str,
    facts: DetectionFacts,
    correlation_window_seconds: int,
    approval_timeout_seconds: int,
    external_task_queue: str = "",
    external_max_age_seconds: int = 0,
) -> None:
    """Signal-with-start: the first detection starts the incident's workflow, later ones
    join it."""
    await client.start_workflow(
        "IncidentWorkflow",
        IncidentInput(
            incident_id=incident_id,
            tenant=facts.subject.tenant,
            subject_key=facts.subject.key,
            correlation_window_seconds=correlation_window_seconds,
            approval_timeout_seconds=approval_timeout_seconds,
            external_task_queue=external_task_queue,
            external_max_age_seconds=external_max_age_seconds,
        ),
        id=workflow_id_for(incident_id),
        task_queue=task_queue,
        start_signal=SIGNAL_DETECTION,
        start_signal_args=[facts],
        id_reuse_policy=WorkflowIDReusePolicy.ALLOW_DUPLICATE,
    )


async def mark_dispatched(session: AsyncSession, *, source: str, external_id: str) -> None:
    await session.execute(
        update(Detection)
        .where(Detection.source == source, Detection.external_id == external_id)
        .values(dispatched_at=datetime.now(UTC))
    )


def facts_from_row(row: Detection) -> DetectionFacts:
    return DetectionFacts(
        detection_id=row.external_id,
        technique=row.technique,
        severity=row.severity,
        confidence=row.confidence,
        source=row.source,
        observed_at=row.observed_at.isoformat(),
        subject=Subject(
            tenant=row.tenant,
            user=row.subject_user,
            session=row.subject_session,
            api_key=row.subject_api_key,
        ),
        prompt_sha256=row.prompt_sha256,
        excerpt=row.excerpt,
        model=row.model,
        received_at=row.received_at.isoformat(),
    )


async def redeliver_undispatched(
    factory: async_sessionmaker[AsyncSession],
    client: Client,
    *,
    task_queue: str,
    older_than: timedelta,
    correlation_window_seconds: int,
    approval_timeout_seconds: int,
    limit: int = 200,
) -> int:
    """Signal every detection that was committed but never handed to its workflow."""
    cutoff = datetime.now(UTC) - older_than
    async with factory() as session:
        rows = (
            await session.scalars(
                select(Detection)
                .where(Detection.dispatched_at.is_(None), Detection.received_at < cutoff)
                .order_by(Detection.received_at)
                .limit(limit)
            )
        ).all()
    sent = 0
    for row in rows:
        await dispatch(
            client,
            task_queue=task_queue,
            incident_id=row.incident_id,
            facts=facts_from_row(row),
            correlation_window_seconds=correlation_window_seconds,
            approval_timeout_seconds=approval_timeout_seconds,
        )
        async with factory() as session, session.begin():
            await mark_dispatched(session, source=row.source, external_id=row.external_id)
        sent += 1
    if sent:
        log.info("redelivered %d undispatched detection(s)", sent)
    return sent
