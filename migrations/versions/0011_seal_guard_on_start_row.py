"""The sealer's guard of 0010 asks whether the sealing-start row is there, not the head row.

0010 made a call of ``soar_seal`` that would seal rows of a log with no database-sealed row
yet, without having written the sealing-start row itself, seal nothing. It took "no
database-sealed row yet" from the head row (the highest seq) having no ``sealed_at``. A log
loaded back by the table's owner from an export (whose columns carry no ``sealed_at``), or
rows with a seq and no ``sealed_at`` imported at its head, has such a head after sealing
started: each call found the start row already there (so wrote none), took ``done = 0`` for
the race, and sealed nothing, forever. Now the guard also needs the start row to be missing
(not sealed): a log that has one is sealed after it as before 0010. The race 0010 closed
stays closed: on a new log there is no start row until a call writes and seals it.

``legacy_head`` stays in the guard, so a log that the race broke before 0010 (rows sealed by
the database, no start row) goes on being sealed as under 0010 instead of never again.

As in 0010, the function's text is taken from the database (``pg_get_functiondef``) and
changed in one place, so its grants, owner and settings stay as they are.

Revision ID: 0011
Revises: 0010
"""

from __future__ import annotations

from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None

MARKER = "atlas-soar:log-sealing-started"  # as in 0004 (the sealing-start row's event_key)

_OLD = "IF ids IS NULL OR (legacy_head AND done = 0) THEN"
# ... and no sealed sealing-start row: only then would this call seal rows before it
_NEW = (
    "IF ids IS NULL OR (legacy_head AND done = 0 AND NOT EXISTS (SELECT 1 FROM action_log m"
    f" WHERE m.event_key = '{MARKER}' AND m.seq IS NOT NULL)) THEN"
)


def _literal(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _replace(old: str, new: str) -> None:
    op.execute(
        f"""
        DO $$
        DECLARE d text := pg_get_functiondef('soar_seal(integer)'::regprocedure);
        BEGIN
            IF position({_literal(old)} IN d) = 0 THEN
                RAISE EXCEPTION 'soar_seal: the text to change is not there (changed by hand?)';
            END IF;
            EXECUTE replace(d, {_literal(old)}, {_literal(new)});
        END $$
        """
    )


def upgrade() -> None:
    _replace(_OLD, _NEW)


def downgrade() -> None:
    _replace(_NEW, _OLD)
