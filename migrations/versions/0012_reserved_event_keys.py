"""Event keys starting with ``atlas-soar:`` are the database's: only the table's owner writes them.

The sealing-start row (0004) has the event_key ``atlas-soar:log-sealing-started``. ``soar_seal``
writes it with ``INSERT ... ON CONFLICT (event_key) DO NOTHING`` and then seals "the unsealed
row with that key" as the first database-sealed row, and ``soar audit verify`` takes the
sealed row with that key as the boundary. A writer (``soar_app``: INSERT on action_log) could
insert a row with that key itself before the first seal: the sealer then sealed the writer's
row as the start row, with the writer's actor, event and ``details.legacy_until_seq``, and
verify reported an untouched log broken for ever ("the sealing-start row names row 41, not
0"); on a log with no start row at all (one the race of 0010 broke) the writer's row was
sealed wherever it came and verify moved the boundary there.

Now a BEFORE INSERT trigger refuses any row whose event_key starts with ``atlas-soar:``
unless the inserting role owns the table (the sealer runs as the owner: SECURITY DEFINER;
the owner's imports, a log loaded back, keep working) or is a superuser; both could switch
the trigger off anyway. ``current_user`` is what decides, not a setting: a writer can set
any custom setting (``soar.sealing`` included) but cannot become the owner. The application
never writes such keys (its keys start with an incident, action or approval id, or its own
prefixes). The trigger's WHEN clause keeps the function off every other insert.

A row a writer inserted with such a key before this migration is not touched (the log is
append-only); an unsealed one would still be taken as the start row.

Revision ID: 0012
Revises: 0011
"""

from __future__ import annotations

from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

RESERVED = "atlas-soar:"  # the sealing-start row's key (0004) is the one in use


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION action_log_reserved_key() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            IF current_user IS DISTINCT FROM
                   (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID)
               AND NOT coalesce(
                   (SELECT rolsuper FROM pg_roles WHERE rolname = current_user), false) THEN
                RAISE EXCEPTION USING
                    MESSAGE = format('action_log.event_key %s is reserved: keys starting with'
                        || ' %L are written only by the database''s sealer (soar_seal)',
                        quote_literal(left(NEW.event_key, 80)), '{RESERVED}'),
                    ERRCODE = 'insufficient_privilege', COLUMN = 'event_key',
                    TABLE = 'action_log',
                    HINT = 'Use an event_key that does not start with ''{RESERVED}''.';
            END IF;
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER action_log_reserved_keys BEFORE INSERT ON action_log FOR EACH ROW "
        f"WHEN (left(NEW.event_key, {len(RESERVED)}) = '{RESERVED}') "
        "EXECUTE FUNCTION action_log_reserved_key()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS action_log_reserved_keys ON action_log")
    op.execute("DROP FUNCTION IF EXISTS action_log_reserved_key()")
