"""Enforcement changes: a feed of every committed block and lift, numbered in commit order.

Revision ID: 0005
Revises: 0004

`enforcement_changes.seq` is the event id of `GET /v1/enforcement/stream` and the position
every API replica and gateway resumes from. It is assigned by a DEFERRABLE INITIALLY
DEFERRED constraint trigger on `enforcement_blocks` (INSERT, and the UPDATE that sets
`lifted_at`), which runs at COMMIT and first takes a transaction-scoped advisory lock. The
lock is held from that instant until the commit is complete and visible (PostgreSQL makes a
transaction visible before it releases its locks), so a later transaction can only draw its
`seq` after every smaller `seq` is visible: seq order is commit order, and a reader that has
seen `seq = N` will never later see a row with a smaller one. A plain bigserial could commit
out of order (A draws 5, B draws 6 and commits first; a reader resuming from 6 misses 5).
Numbers may skip (a transaction that fails after drawing one); events never do. The trigger
then sends `NOTIFY enforcement, '<seq>'`, delivered at commit; listeners read the table for
`seq > last`, so a lost notification loses nothing.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

# Distinct from the action-log chain's lock key (soar/audit/chain.py).
LOCK_KEY = 0x454E464F52  # "ENFOR"

FUNCTION = f"""
CREATE FUNCTION enforcement_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({LOCK_KEY});
    s := nextval('enforcement_change_seq');
    INSERT INTO enforcement_changes
        (seq, op, action_id, kind, tenant, target, until, incident_id, technique, at)
    VALUES
        (s, CASE WHEN TG_OP = 'INSERT' THEN 'block' ELSE 'lift' END, NEW.action_id, NEW.kind,
         NEW.tenant, NEW.target, NEW.until, NEW.incident_id, NEW.technique, clock_timestamp());
    PERFORM pg_notify('enforcement', s::text);
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    op.create_table(
        "enforcement_changes",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("op", sa.String(8), nullable=False),
        sa.Column("action_id", sa.String(80), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("tenant", sa.String(128), nullable=False),
        sa.Column("target", sa.String(256), nullable=False),
        sa.Column("until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("incident_id", sa.String(40), nullable=False),
        sa.Column("technique", sa.String(32), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("seq", name=op.f("pk_enforcement_changes")),
    )
    op.execute("CREATE SEQUENCE enforcement_change_seq")
    op.execute(FUNCTION)
    op.execute(
        "CREATE CONSTRAINT TRIGGER enforcement_block_added AFTER INSERT ON enforcement_blocks "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION enforcement_change()"
    )
    op.execute(
        "CREATE CONSTRAINT TRIGGER enforcement_block_lifted AFTER UPDATE ON enforcement_blocks "
        "DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "WHEN (OLD.lifted_at IS NULL AND NEW.lifted_at IS NOT NULL) "
        "EXECUTE FUNCTION enforcement_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS enforcement_block_lifted ON enforcement_blocks")
    op.execute("DROP TRIGGER IF EXISTS enforcement_block_added ON enforcement_blocks")
    op.execute("DROP FUNCTION IF EXISTS enforcement_change()")
    op.execute("DROP SEQUENCE IF EXISTS enforcement_change_seq")
    op.drop_table("enforcement_changes")
