"""Model summaries: a cache of validated answers by prompt digest, and tokens spent per
tenant and day (the daily budget).

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "summary_cache",
        sa.Column("prompt_sha256", sa.String(64), nullable=False),
        sa.Column("model", sa.String(256), nullable=False),
        sa.Column("response_sha256", sa.String(64), nullable=False),
        sa.Column("summary", JSONB(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("prompt_sha256", "model", name=op.f("pk_summary_cache")),
    )
    op.create_index(
        op.f("ix_summary_cache_created_at"), "summary_cache", ["created_at"], unique=False
    )
    op.create_table(
        "model_usage",
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("tokens", sa.BigInteger(), nullable=False),
        sa.Column("calls", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("tenant", "day", name=op.f("pk_model_usage")),
    )


def downgrade() -> None:
    op.drop_table("model_usage")
    op.drop_index(op.f("ix_summary_cache_created_at"), table_name="summary_cache")
    op.drop_table("summary_cache")
