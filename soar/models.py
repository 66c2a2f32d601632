"""The relational schema. Alembic revisions in ``migrations/`` are the only way it changes;
a test checks that autogenerate finds no difference between these models and the head."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

TZ = DateTime(timezone=True)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSONB, datetime: TZ}


# --- ATLAS catalog -------------------------------------------------------------------------


class CatalogVersion(Base):
    """Each successful catalog load; the newest row is the catalog in force."""

    __tablename__ = "atlas_catalog_versions"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version: Mapped[str] = mapped_column(String(64))
    source: Mapped[str] = mapped_column(Text)
    sha256: Mapped[str] = mapped_column(String(64))
    loaded_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    tactic_count: Mapped[int] = mapped_column(Integer)
    technique_count: Mapped[int] = mapped_column(Integer)
    mitigation_count: Mapped[int] = mapped_column(Integer)


class AtlasTactic(Base):
    __tablename__ = "atlas_tactics"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")


class AtlasTechnique(Base):
    __tablename__ = "atlas_techniques"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    parent_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("atlas_techniques.id", ondelete="CASCADE"), index=True
    )
    description: Mapped[str] = mapped_column(Text, default="")


class AtlasTechniqueTactic(Base):
    __tablename__ = "atlas_technique_tactics"
    technique_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("atlas_techniques.id", ondelete="CASCADE"), primary_key=True
    )
    tactic_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("atlas_tactics.id", ondelete="CASCADE"), primary_key=True
    )


class AtlasMitigation(Base):
    __tablename__ = "atlas_mitigations"
    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    description: Mapped[str] = mapped_column(Text, default="")


class AtlasTechniqueMitigation(Base):
    __tablename__ = "atlas_technique_mitigations"
    technique_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("atlas_techniques.id", ondelete="CASCADE"), primary_key=True
    )
    mitigation_id: Mapped[str] = mapped_column(
        String(32), ForeignKey("atlas_mitigations.id", ondelete="CASCADE"), primary_key=True
    )


# --- incidents and detections ------------------------------------------------------------


class Incident(Base):
    __tablename__ = "incidents"
    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tenant: Mapped[str] = mapped_column(String(128))
    subject_key: Mapped[str] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="open")
    workflow_id: Mapped[str] = mapped_column(String(200))
    technique: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    detection_count: Mapped[int] = mapped_column(Integer, default=1)
    opened_at: Mapped[datetime] = mapped_column()
    last_detection_at: Mapped[datetime] = mapped_column()
    closed_at: Mapped[datetime | None] = mapped_column()
    risk_score: Mapped[float | None] = mapped_column(Float)
    enrichment: Mapped[dict[str, Any] | None] = mapped_column()
    plan: Mapped[dict[str, Any] | None] = mapped_column()
    ticket_key: Mapped[str | None] = mapped_column(String(64))
    ticket_url: Mapped[str | None] = mapped_column(Text)
    # Set when an analyst closes it (migration 0009): true_positive | false_positive | benign.
    disposition: Mapped[str | None] = mapped_column(String(16))
    closed_by: Mapped[str | None] = mapped_column(String(256))
    close_reason: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        # At most one open incident per (tenant, subject): the database settles the race
        # between two detections that arrive at the same instant.
        Index(
            "uq_incidents_open_subject",
            "tenant",
            "subject_key",
            unique=True,
            postgresql_where=text("status = 'open'"),
        ),
        Index("ix_incidents_status_opened", "status", "opened_at"),
    )


class Detection(Base):
    __tablename__ = "detections"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(String(128))
    external_id: Mapped[str] = mapped_column(String(256))
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    tenant: Mapped[str] = mapped_column(String(128))
    technique: Mapped[str] = mapped_column(String(32))
    severity: Mapped[str] = mapped_column(String(16))
    confidence: Mapped[float] = mapped_column(Float)
    subject_user: Mapped[str | None] = mapped_column(String(256))
    subject_session: Mapped[str | None] = mapped_column(String(256))
    subject_api_key: Mapped[str | None] = mapped_column(String(256))
    observed_at: Mapped[datetime] = mapped_column()
    received_at: Mapped[datetime] = mapped_column()
    prompt_sha256: Mapped[str | None] = mapped_column(String(64))
    excerpt: Mapped[str | None] = mapped_column(Text)
    model: Mapped[str | None] = mapped_column(String(256))
    format: Mapped[str] = mapped_column(String(16), default="native")
    # Transactional outbox: set once the workflow has been signalled; a sweeper re-sends
    # any detection left undispatched by a crash between commit and signal.
    dispatched_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        UniqueConstraint("source", "external_id", name="uq_detections_source_external_id"),
        Index("ix_detections_subject_received", "tenant", "subject_user", "received_at"),
        Index(
            "ix_detections_undispatched",
            "received_at",
            postgresql_where=text("dispatched_at IS NULL"),
        ),
    )


# --- response ------------------------------------------------------------------------------


class Action(Base):
    __tablename__ = "actions"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # idempotency key
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    action_key: Mapped[str] = mapped_column(String(400))
    action_type: Mapped[str] = mapped_column(String(32))
    risk: Mapped[str] = mapped_column(String(8))
    tenant: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(256))
    status: Mapped[str] = mapped_column(String(24))
    rule: Mapped[str] = mapped_column(String(128), default="")
    params: Mapped[dict[str, Any]] = mapped_column(default=dict)
    duration_seconds: Mapped[int | None] = mapped_column(Integer)
    expires_at: Mapped[datetime | None] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    applied_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    error: Mapped[str | None] = mapped_column(Text)

    __table_args__ = (
        UniqueConstraint("incident_id", "action_key", name="uq_actions_incident_action_key"),
    )


class EnforcementBlock(Base):
    """What the gateways' hot-path check reads. A row is active while lifted_at is null
    and `until` is null or in the future."""

    __tablename__ = "enforcement_blocks"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    action_id: Mapped[str] = mapped_column(ForeignKey("actions.id"), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # target kind, or <effect>:<target kind>
    tenant: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(256))
    incident_id: Mapped[str] = mapped_column(String(40))
    technique: Mapped[str] = mapped_column(String(32))
    created_at: Mapped[datetime] = mapped_column()
    until: Mapped[datetime | None] = mapped_column()
    lifted_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index(
            "ix_enforcement_active",
            "kind",
            "target",
            "tenant",
            postgresql_where=text("lifted_at IS NULL"),
        ),
    )


class Approval(Base):
    __tablename__ = "approvals"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    incident_id: Mapped[str] = mapped_column(ForeignKey("incidents.id"), index=True)
    action_id: Mapped[str] = mapped_column(ForeignKey("actions.id"), unique=True)
    workflow_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16), default="pending")
    requested_at: Mapped[datetime] = mapped_column()
    expires_at: Mapped[datetime] = mapped_column()
    decided_at: Mapped[datetime | None] = mapped_column()
    decided_by: Mapped[str | None] = mapped_column(String(256))
    decision_channel: Mapped[str | None] = mapped_column(String(16))
    comment: Mapped[str | None] = mapped_column(Text)
    # The playbook rule's approval requirements, fixed when the approval is requested:
    # distinct approvals needed, the groups whose members may give them (empty: anyone
    # with the approver or admin role) and the group added at half the timeout.
    quorum: Mapped[int] = mapped_column(Integer, default=1, server_default=text("1"))
    approver_groups: Mapped[list[str]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )
    escalate_to: Mapped[str | None] = mapped_column(String(64))
    escalated_at: Mapped[datetime | None] = mapped_column()
    # The analyst who asked for it with "contain now" (migration 0009); None: the playbook.
    # Someone else must decide it.
    requested_by: Mapped[str | None] = mapped_column(String(256))
    # The approvals given so far ({"by", "approver", "channel", "at", "comment"}), in order.
    votes: Mapped[list[dict[str, Any]]] = mapped_column(
        JSONB, default=list, server_default=text("'[]'::jsonb")
    )

    __table_args__ = (Index("ix_approvals_status_requested", "status", "requested_at"),)


class ApprovalMessage(Base):
    """What an approval channel sent about an approval, by the channel's own ids: a Slack
    message (channel id, ts), an e-mail (recipient, Message-ID). `kind` is announce, remind
    or outcome; one of each per recipient, so a retried step sends nothing twice."""

    __tablename__ = "approval_messages"
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(
        ForeignKey("approvals.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))  # slack | email
    kind: Mapped[str] = mapped_column(String(16))
    conversation: Mapped[str] = mapped_column(String(320))  # Slack channel id, address
    message_id: Mapped[str] = mapped_column(String(256))  # Slack ts, Message-ID
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))

    __table_args__ = (
        UniqueConstraint(
            "approval_id",
            "channel",
            "kind",
            "conversation",
            name="uq_approval_messages_approval_channel_kind_conversation",
        ),
    )


class ApprovalLink(Base):
    """A signed, single-use link that lets one approver decide one approval from an e-mail.
    Only the SHA-256 of the token is kept."""

    __tablename__ = "approval_links"
    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    approval_id: Mapped[str] = mapped_column(
        ForeignKey("approvals.id", ondelete="CASCADE"), index=True
    )
    principal_id: Mapped[int] = mapped_column(ForeignKey("principals.id", ondelete="CASCADE"))
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    expires_at: Mapped[datetime] = mapped_column()
    used_at: Mapped[datetime | None] = mapped_column()


# --- audit ---------------------------------------------------------------------------------


class ActionLogEntry(Base):
    """Append-only, hash-chained, sealed by the database (migration 0004, soar.audit.chain).
    Writers insert with `seq`/`prev_hash`/`hash` NULL and `at` taken from the database clock;
    `soar_seal()` gives each row its gapless `seq` and chain link moments later. `id` is the
    insertion order only. The database refuses UPDATE (but sealing), DELETE and TRUNCATE."""

    __tablename__ = "action_log"
    id: Mapped[int] = mapped_column(BigInteger, Identity(always=True), primary_key=True)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    event_key: Mapped[str] = mapped_column(String(300), unique=True)
    at: Mapped[datetime] = mapped_column()
    incident_id: Mapped[str | None] = mapped_column(String(40))
    tenant: Mapped[str | None] = mapped_column(String(128))
    subject: Mapped[str | None] = mapped_column(String(300))
    event: Mapped[str] = mapped_column(String(64))
    action: Mapped[str | None] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(256))
    outcome: Mapped[str] = mapped_column(String(32))
    technique: Mapped[str | None] = mapped_column(String(32))
    tactic: Mapped[str | None] = mapped_column(String(32))
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    prev_hash: Mapped[str | None] = mapped_column(String(64))
    hash: Mapped[str | None] = mapped_column(String(64))
    sealed_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (
        Index("ix_action_log_incident_seq", "incident_id", "seq"),
        # Covering (INCLUDE seq): a time-window query collects its matches from the index
        # alone, then pages by seq.
        Index("ix_action_log_technique_at", "technique", "at", postgresql_include=["seq"]),
        Index("ix_action_log_tactic_at", "tactic", "at", postgresql_include=["seq"]),
        Index("ix_action_log_actor_seq", "actor", "seq"),
        Index("ix_action_log_subject_seq", "subject", "seq"),
        Index("ix_action_log_at", "at", postgresql_include=["seq"]),
        # What the sealer reads: the unsealed rows, in insertion order.
        Index("ix_action_log_unsealed", "id", postgresql_where=text("seq IS NULL")),
    )


# --- people --------------------------------------------------------------------------------


class Principal(Base):
    __tablename__ = "principals"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    token_hash: Mapped[str | None] = mapped_column(String(64), unique=True)
    password_hash: Mapped[str | None] = mapped_column(Text)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    # The token came from SOAR_API_TOKENS: dropped from the setting, it is disabled at start.
    env_token: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class UiSessionRow(Base):
    """A web UI session, server side: the cookie names it (by the SHA-256 of its random id);
    logout, a password change or disabling the principal revokes it (every replica at once)."""

    __tablename__ = "ui_sessions"
    id_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal: Mapped[str] = mapped_column(String(128))
    method: Mapped[str] = mapped_column(String(16))  # password | token
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    expires_at: Mapped[datetime] = mapped_column()
    revoked_at: Mapped[datetime | None] = mapped_column()

    __table_args__ = (Index("ix_ui_sessions_principal", "principal"),)


class PrincipalAddress(Base):
    """Where an approval channel reaches a principal: a Slack member ID, an e-mail address."""

    __tablename__ = "principal_addresses"
    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )
    channel: Mapped[str] = mapped_column(String(16), primary_key=True)  # slack | email
    address: Mapped[str] = mapped_column(String(320))

    __table_args__ = (
        UniqueConstraint("channel", "address", name="uq_principal_addresses_channel_address"),
    )


class ApproverGroup(Base):
    """A named set of principals a playbook rule may require approvals from."""

    __tablename__ = "approver_groups"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))


class ApproverGroupMember(Base):
    __tablename__ = "approver_group_members"
    group_name: Mapped[str] = mapped_column(
        ForeignKey("approver_groups.name", ondelete="CASCADE"), primary_key=True
    )
    principal_id: Mapped[int] = mapped_column(
        ForeignKey("principals.id", ondelete="CASCADE"), primary_key=True
    )


# --- detection sources -----------------------------------------------------------------------


class Source(Base):
    """A detection source with credentials of its own. Detections are attributed to the
    source whose credential verified the signature, never to a name in the body."""

    __tablename__ = "sources"
    name: Mapped[str] = mapped_column(String(128), primary_key=True)
    # Tenants the source may report for; NULL: any tenant.
    tenants: Mapped[list[str] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    revoked_at: Mapped[datetime | None] = mapped_column()


class SourceCredential(Base):
    """A source's verification material: a `whsec_` secret (encrypted at rest when a key is
    configured) or an Ed25519 public key (`whpk_`, Standard Webhooks `v1a`). Rotation adds a
    credential and gives the old one a `not_after`."""

    __tablename__ = "source_credentials"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    source: Mapped[str] = mapped_column(ForeignKey("sources.name"), index=True)
    kind: Mapped[str] = mapped_column(String(16))  # whsec | ed25519
    material: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"))
    not_after: Mapped[datetime | None] = mapped_column()


class EnforcementChange(Base):
    """Every committed block and lift, numbered in commit order by a deferred trigger on
    enforcement_blocks (migration 0005): the event ids of the enforcement stream."""

    __tablename__ = "enforcement_changes"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    op: Mapped[str] = mapped_column(String(8))  # block | lift
    action_id: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(16))
    tenant: Mapped[str] = mapped_column(String(128))
    target: Mapped[str] = mapped_column(String(256))
    until: Mapped[datetime | None] = mapped_column()
    incident_id: Mapped[str] = mapped_column(String(40))
    technique: Mapped[str] = mapped_column(String(32))
    at: Mapped[datetime] = mapped_column()


# --- summaries ---------------------------------------------------------------------------------


class SummaryCacheEntry(Base):
    """A validated model summary, served again for an identical prompt (same SHA-256, same
    model) instead of calling the provider. The prompt itself is never stored."""

    __tablename__ = "summary_cache"
    prompt_sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    model: Mapped[str] = mapped_column(String(256), primary_key=True)
    response_sha256: Mapped[str] = mapped_column(String(64))
    summary: Mapped[dict[str, Any]] = mapped_column()
    created_at: Mapped[datetime] = mapped_column(server_default=text("now()"), index=True)


class ModelUsage(Base):
    """Tokens spent on model summaries per tenant and UTC day: the daily budget."""

    __tablename__ = "model_usage"
    tenant: Mapped[str] = mapped_column(String(128), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    calls: Mapped[int] = mapped_column(Integer, default=0)
