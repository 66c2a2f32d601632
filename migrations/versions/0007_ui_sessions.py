"""Web UI sessions on the server, and which API tokens came from SOAR_API_TOKENS.

`ui_sessions`: one row per signed-in web UI session (keyed by the SHA-256 of the random id
the cookie carries), so logout, a password change and `soar users disable` end sessions on
every API replica at once. `principals.env_token`: the token was set from SOAR_API_TOKENS;
one that disappears from the setting is disabled when the API starts. Every token so far
came from that setting, so existing token principals are marked.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "ui_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("principal", sa.String(length=128), nullable=False),
        sa.Column("method", sa.String(length=16), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id_hash", name=op.f("pk_ui_sessions")),
    )
    op.create_index("ix_ui_sessions_principal", "ui_sessions", ["principal"])
    op.add_column(
        "principals",
        sa.Column("env_token", sa.Boolean(), server_default=sa.text("false"), nullable=False),
    )
    op.execute("UPDATE principals SET env_token = true WHERE token_hash IS NOT NULL")


def downgrade() -> None:
    op.drop_column("principals", "env_token")
    op.drop_index("ix_ui_sessions_principal", table_name="ui_sessions")
    op.drop_table("ui_sessions")
