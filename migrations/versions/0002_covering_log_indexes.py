"""Covering indexes for the auditors' time-window queries on the action log.

Revision ID: 0002
Revises: 0001
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

_INDEXES = (
    ("ix_action_log_technique_at", ["technique", "at"]),
    ("ix_action_log_tactic_at", ["tactic", "at"]),
    ("ix_action_log_at", ["at"]),
)


def upgrade() -> None:
    for name, cols in _INDEXES:
        op.drop_index(name, table_name="action_log")
        op.create_index(name, "action_log", cols, postgresql_include=["seq"])


def downgrade() -> None:
    for name, cols in _INDEXES:
        op.drop_index(name, table_name="action_log")
        op.create_index(name, "action_log", cols)
