"""An analyst's actions: an incident's disposition, who closed it and why; who asked for an
approval ("contain now"); a block's new expiry in the enforcement feed.

Revision ID: 0009
Revises: 0008

Extending a block updates `enforcement_blocks.until`; the feed (0005) numbered only inserts
and lifts, so replicas and gateways would keep the old expiry. `enforcement_change()` now
also numbers an update of `until` on an active block, as a `block` event (a client replaces
the entry of that action id), under the same commit-order lock.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None

LOCK_KEY = 0x454E464F52  # as in 0005

_FUNCTION = """
CREATE OR REPLACE FUNCTION enforcement_change() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    s bigint;
BEGIN
    PERFORM pg_advisory_xact_lock({lock});
    s := nextval('enforcement_change_seq');
    INSERT INTO enforcement_changes
        (seq, op, action_id, kind, tenant, target, until, incident_id, technique, at)
    VALUES
        (s, CASE WHEN {op} THEN 'block' ELSE 'lift' END, NEW.action_id, NEW.kind,
         NEW.tenant, NEW.target, NEW.until, NEW.incident_id, NEW.technique, clock_timestamp());
    PERFORM pg_notify('enforcement', s::text);
    RETURN NULL;
END
$$
"""
OP_NOW = "TG_OP = 'INSERT' OR NEW.lifted_at IS NULL"
OP_0005 = "TG_OP = 'INSERT'"


def upgrade() -> None:
    op.add_column("incidents", sa.Column("disposition", sa.String(16), nullable=True))
    op.add_column("incidents", sa.Column("closed_by", sa.String(256), nullable=True))
    op.add_column("incidents", sa.Column("close_reason", sa.Text(), nullable=True))
    op.add_column("approvals", sa.Column("requested_by", sa.String(256), nullable=True))
    op.execute(_FUNCTION.format(lock=LOCK_KEY, op=OP_NOW))
    op.execute(
        "CREATE CONSTRAINT TRIGGER enforcement_block_extended AFTER UPDATE ON "
        "enforcement_blocks DEFERRABLE INITIALLY DEFERRED FOR EACH ROW "
        "WHEN (OLD.lifted_at IS NULL AND NEW.lifted_at IS NULL "
        "AND OLD.until IS DISTINCT FROM NEW.until) "
        "EXECUTE FUNCTION enforcement_change()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS enforcement_block_extended ON enforcement_blocks")
    op.execute(_FUNCTION.format(lock=LOCK_KEY, op=OP_0005))
    op.drop_column("approvals", "requested_by")
    op.drop_column("incidents", "close_reason")
    op.drop_column("incidents", "closed_by")
    op.drop_column("incidents", "disposition")
