"""Approvals that do not know Slack: channel ids in their own tables, approver groups,
approval rules (quorum, groups, escalation) on the approval, e-mail approval links.

Revision ID: 0006
Revises: 0005

Existing data moves: `approvals.slack_channel` / `slack_ts` become `approval_messages` rows
(channel slack, kind announce), `principals.slack_user_id` becomes a `principal_addresses`
row (channel slack). The downgrade moves them back (one Slack message and one Slack ID each,
which is all the old columns could hold).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.add_column(
        "approvals", sa.Column("quorum", sa.Integer(), server_default=sa.text("1"), nullable=False)
    )
    op.add_column(
        "approvals",
        sa.Column(
            "approver_groups", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False
        ),
    )
    op.add_column("approvals", sa.Column("escalate_to", sa.String(64), nullable=True))
    op.add_column("approvals", sa.Column("escalated_at", _TZ, nullable=True))
    op.add_column(
        "approvals",
        sa.Column("votes", JSONB(), server_default=sa.text("'[]'::jsonb"), nullable=False),
    )

    op.create_table(
        "approval_messages",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("approval_id", sa.String(80), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("conversation", sa.String(320), nullable=False),
        sa.Column("message_id", sa.String(256), nullable=False),
        sa.Column("created_at", _TZ, server_default=sa.text("now()"), nullable=False),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approvals.id"],
            name=op.f("fk_approval_messages_approval_id_approvals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_approval_messages")),
        sa.UniqueConstraint(
            "approval_id",
            "channel",
            "kind",
            "conversation",
            name="uq_approval_messages_approval_channel_kind_conversation",
        ),
    )
    op.create_index(op.f("ix_approval_messages_approval_id"), "approval_messages", ["approval_id"])
    op.execute(
        "INSERT INTO approval_messages (approval_id, channel, kind, conversation, message_id) "
        "SELECT id, 'slack', 'announce', slack_channel, slack_ts FROM approvals "
        "WHERE slack_ts IS NOT NULL AND slack_channel IS NOT NULL"
    )
    op.drop_column("approvals", "slack_channel")
    op.drop_column("approvals", "slack_ts")

    op.create_table(
        "principal_addresses",
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.Column("channel", sa.String(16), nullable=False),
        sa.Column("address", sa.String(320), nullable=False),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_principal_addresses_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("principal_id", "channel", name=op.f("pk_principal_addresses")),
        sa.UniqueConstraint("channel", "address", name="uq_principal_addresses_channel_address"),
    )
    op.execute(
        "INSERT INTO principal_addresses (principal_id, channel, address) "
        "SELECT id, 'slack', slack_user_id FROM principals WHERE slack_user_id IS NOT NULL"
    )
    op.drop_constraint("uq_principals_slack_user_id", "principals", type_="unique")
    op.drop_column("principals", "slack_user_id")

    op.create_table(
        "approver_groups",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("created_at", _TZ, server_default=sa.text("now()"), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_approver_groups")),
    )
    op.create_table(
        "approver_group_members",
        sa.Column("group_name", sa.String(64), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_name"],
            ["approver_groups.name"],
            name=op.f("fk_approver_group_members_group_name_approver_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_approver_group_members_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint(
            "group_name", "principal_id", name=op.f("pk_approver_group_members")
        ),
    )

    op.create_table(
        "approval_links",
        sa.Column("token_hash", sa.String(64), nullable=False),
        sa.Column("approval_id", sa.String(80), nullable=False),
        sa.Column("principal_id", sa.Integer(), nullable=False),
        sa.Column("created_at", _TZ, server_default=sa.text("now()"), nullable=False),
        sa.Column("expires_at", _TZ, nullable=False),
        sa.Column("used_at", _TZ, nullable=True),
        sa.ForeignKeyConstraint(
            ["approval_id"],
            ["approvals.id"],
            name=op.f("fk_approval_links_approval_id_approvals"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["principal_id"],
            ["principals.id"],
            name=op.f("fk_approval_links_principal_id_principals"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_approval_links")),
    )
    op.create_index(op.f("ix_approval_links_approval_id"), "approval_links", ["approval_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_approval_links_approval_id"), table_name="approval_links")
    op.drop_table("approval_links")
    op.drop_table("approver_group_members")
    op.drop_table("approver_groups")

    op.add_column("principals", sa.Column("slack_user_id", sa.String(32), nullable=True))
    op.create_unique_constraint("uq_principals_slack_user_id", "principals", ["slack_user_id"])
    op.execute(
        "UPDATE principals p SET slack_user_id = left(a.address, 32) FROM principal_addresses a "
        "WHERE a.principal_id = p.id AND a.channel = 'slack'"
    )
    op.drop_table("principal_addresses")

    op.add_column("approvals", sa.Column("slack_channel", sa.String(64), nullable=True))
    op.add_column("approvals", sa.Column("slack_ts", sa.String(64), nullable=True))
    op.execute(
        "UPDATE approvals a SET slack_channel = left(m.conversation, 64), "
        "slack_ts = left(m.message_id, 64) FROM approval_messages m "
        "WHERE m.approval_id = a.id AND m.channel = 'slack' AND m.kind = 'announce'"
    )
    op.drop_index(op.f("ix_approval_messages_approval_id"), table_name="approval_messages")
    op.drop_table("approval_messages")
    for column in ("votes", "escalated_at", "escalate_to", "approver_groups", "quorum"):
        op.drop_column("approvals", column)
