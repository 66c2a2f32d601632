"""The sealer never seals a new log's rows without its sealing-start row first.

``soar_seal`` (0004) decided whether to write the sealing-start row (the boundary between
application-hashed and database-sealed rows) from one statement's snapshot, and chose the rows
to seal from a later one: under READ COMMITTED each statement sees the rows committed before it
starts. A writer that committed between the two, on a log that had no sealed row yet, had its
rows sealed from seq 1 with no sealing-start row before them, and every later call saw a sealed
head and wrote none: ``soar verify`` then read every row as application-hashed and reported all
of them changed (seen once in 32-writer tests). Now a call that would seal rows of such a log
without having written that row seals nothing; the next call writes it first.

The function's text is taken from the database (``pg_get_functiondef``) and changed in one
place, so its grants, owner and settings stay as they are.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None

_OLD = "IF ids IS NULL THEN"
# legacy_head: no database-sealed row yet; done = 0: this call wrote no sealing-start row
_NEW = "IF ids IS NULL OR (legacy_head AND done = 0) THEN"


def _replace(old: str, new: str) -> None:
    op.execute(
        f"""
        DO $$
        DECLARE d text := pg_get_functiondef('soar_seal(integer)'::regprocedure);
        BEGIN
            IF position('{old}' IN d) = 0 THEN
                RAISE EXCEPTION 'soar_seal: the text to change is not there (changed by hand?)';
            END IF;
            EXECUTE replace(d, '{old}', '{new}');
        END $$
        """
    )


def upgrade() -> None:
    _replace(_OLD, _NEW)


def downgrade() -> None:
    _replace(_NEW, _OLD)
