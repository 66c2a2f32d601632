"""The action log is sealed by the database: writers insert, one sealer orders and chains.

Writers insert rows with `seq`, `prev_hash` and `hash` NULL (unsealed) and no lock; a
BEFORE INSERT trigger takes `at` from the database clock and, unless the inserting role owns
the table (imports) or is a superuser, throws away any seq / hash / time the INSERT tried to
set. `soar_seal(max_rows)`, a SECURITY DEFINER function owned by the table's owner, assigns
`seq`, `prev_hash`, `hash` and `sealed_at` in batches; the UPDATE triggers let exactly that
through (unsealed -> sealed, nothing else changed, run by the owner with the sealing flag set)
and refuse every other UPDATE, as before. Rows that exist now keep their application-made
hashes; the first row the database seals (event `log.sealing_started`) records the last row of
that older scheme, in the log itself. See soar/audit/chain.py for the hashed form.

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

SEAL_LOCK = 0x5345414C  # "SEAL": one sealer at a time (writers never take it)
# The first row the database seals; its `details.legacy_until_seq` (always its seq - 1) is the
# last row hashed by the application before this migration.
MARKER = "atlas-soar:log-sealing-started"


# The bytes hashed for a sealed row: a tag, then each field NUL-separated, 'n' for NULL or
# 'v' and its UTF-8 text. PostgreSQL text never holds NUL, so the framing is unambiguous.
# soar.audit.chain.sealed_content builds the same bytes in Python.
def _field(expr: str) -> str:
    # Inline, not a SQL function: a function call per field costs more than the hashing.
    return (
        f"(CASE WHEN {expr} IS NULL THEN convert_to('n', 'UTF8') "
        f"ELSE convert_to('v' || {expr}, 'UTF8') END)"
    )


_AT = "to_char(r.at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"+00:00\"')"
_FIELDS = (
    "s::text",
    "r.event_key",
    _AT,
    "r.incident_id",
    "r.tenant",
    "r.subject",
    "r.event",
    "r.action",
    "r.actor",
    "r.outcome",
    "r.technique",
    "r.tactic",
    "r.details::text",
)
_CONTENT = "convert_to('atlas-soar/log/v2', 'UTF8') || " + " || ".join(
    f"'\\x00'::bytea || {_field(f)}" for f in _FIELDS
)


# What sealing must leave as it is.
_KEPT = (
    "id",
    "event_key",
    "at",
    "incident_id",
    "tenant",
    "subject",
    "event",
    "action",
    "actor",
    "outcome",
    "technique",
    "tactic",
    "details",
)


def upgrade() -> None:
    # --- columns and keys: `id` is the insertion order, `seq` the sealed order ---------------
    op.execute("ALTER TABLE action_log ADD COLUMN id bigint GENERATED ALWAYS AS IDENTITY")
    op.add_column("action_log", sa.Column("sealed_at", sa.DateTime(timezone=True)))
    op.execute("ALTER TABLE action_log DROP CONSTRAINT pk_action_log")
    op.execute("ALTER TABLE action_log ADD CONSTRAINT pk_action_log PRIMARY KEY (id)")
    op.execute("ALTER TABLE action_log ADD CONSTRAINT uq_action_log_seq UNIQUE (seq)")
    for col in ("seq", "prev_hash", "hash"):
        op.alter_column("action_log", col, nullable=True)
    op.execute(
        "ALTER TABLE action_log ADD CONSTRAINT ck_action_log_sealed_together CHECK ("
        "(seq IS NULL) = (hash IS NULL) AND (seq IS NULL) = (prev_hash IS NULL))"
    )
    op.execute("CREATE INDEX ix_action_log_unsealed ON action_log (id) WHERE seq IS NULL")

    # --- the database decides time and order ---------------------------------------------------
    op.execute(
        """
        CREATE FUNCTION action_log_on_insert() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            IF NEW.seq IS NULL AND NEW.prev_hash IS NULL AND NEW.hash IS NULL
               AND NEW.sealed_at IS NULL AND NEW.at IS NULL THEN
                NEW.at := clock_timestamp();  -- the product's path
                RETURN NEW;
            END IF;
            -- Something preset. The table's owner could switch this trigger off anyway, so
            -- its imports (and a superuser's) keep their values; anyone else's are dropped.
            IF current_setting('is_superuser') = 'on' OR current_user =
               (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID) THEN
                NEW.at := coalesce(NEW.at, clock_timestamp());
                RETURN NEW;
            END IF;
            NEW.seq := NULL;
            NEW.prev_hash := NULL;
            NEW.hash := NULL;
            NEW.sealed_at := NULL;
            NEW.at := clock_timestamp();
            RETURN NEW;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER action_log_db_fields BEFORE INSERT ON action_log "
        "FOR EACH ROW EXECUTE FUNCTION action_log_on_insert()"
    )
    op.execute("DROP TRIGGER action_log_no_update_delete ON action_log")
    # The one UPDATE there is: soar_seal sealing unsealed rows, run as the table's owner
    # (SECURITY DEFINER) with a transaction-local flag set. The flag alone is worth nothing
    # (anyone can set a custom setting): once per statement, a flagged UPDATE by anyone but
    # the owner is refused; per row, in the trigger's WHEN (no function call on the sealing
    # path), anything but unsealed -> sealed with the content unchanged is refused.
    op.execute(
        """
        CREATE FUNCTION action_log_seal_gate() RETURNS trigger
        LANGUAGE plpgsql SET search_path = pg_catalog, public AS $$
        BEGIN
            IF current_setting('soar.sealing', true) IS NOT DISTINCT FROM 'on'
               AND current_user IS DISTINCT FROM
                   (SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = TG_RELID) THEN
                RAISE EXCEPTION 'action_log is append-only: only soar_seal() seals rows'
                    USING ERRCODE = 'insufficient_privilege';
            END IF;
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER action_log_seal_gate BEFORE UPDATE ON action_log "
        "FOR EACH STATEMENT EXECUTE FUNCTION action_log_seal_gate()"
    )
    op.execute(
        f"""
        CREATE TRIGGER action_log_no_update_delete BEFORE UPDATE ON action_log
        FOR EACH ROW WHEN (NOT (
            current_setting('soar.sealing', true) IS NOT DISTINCT FROM 'on'
            AND OLD.seq IS NULL AND OLD.hash IS NULL AND OLD.prev_hash IS NULL
            AND NEW.seq IS NOT NULL AND NEW.hash IS NOT NULL AND NEW.prev_hash IS NOT NULL
            AND ({", ".join("NEW." + c for c in _KEPT)})
                IS NOT DISTINCT FROM ({", ".join("OLD." + c for c in _KEPT)})
        ))
        EXECUTE FUNCTION action_log_refuse_change()
        """
    )
    op.execute(
        "CREATE TRIGGER action_log_no_delete BEFORE DELETE ON action_log "
        "FOR EACH ROW EXECUTE FUNCTION action_log_refuse_change()"
    )

    # --- the sealer ----------------------------------------------------------------------------
    op.execute(
        f"""
        CREATE FUNCTION soar_seal(max_rows integer DEFAULT 5000)
        RETURNS TABLE (sealed integer, head_seq bigint, oldest_delay_seconds double precision)
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
        DECLARE
            n integer := least(greatest(coalesce(max_rows, 5000), 1), 100000);
            t timestamptz;
            h_seq bigint;
            h_hash text;
            legacy_head boolean;
            m_id bigint;
            m_ch text;
            done integer := 0;
            ids bigint[];
            seqs bigint[];
            chs text[];
            prevs text[];
            hashes text[];
            oldest timestamptz;
            i integer;
        BEGIN
            -- One sealer at a time, whoever calls; a second caller returns at once.
            IF NOT pg_try_advisory_xact_lock({SEAL_LOCK}) THEN
                RETURN QUERY SELECT 0, NULL::bigint, NULL::double precision;
                RETURN;
            END IF;
            SELECT l.seq, l.hash, l.sealed_at IS NULL INTO h_seq, h_hash, legacy_head
                FROM action_log l WHERE l.seq IS NOT NULL ORDER BY l.seq DESC LIMIT 1;
            IF h_seq IS NULL THEN
                h_seq := 0;
                h_hash := repeat('0', 64);
                legacy_head := true;
            END IF;
            PERFORM set_config('soar.sealing', 'on', true);
            -- Only once there is something to seal: an idle sealer writes nothing.
            IF legacy_head AND EXISTS (SELECT 1 FROM action_log u WHERE u.seq IS NULL) THEN
                -- The database's first sealed row records where the application-hashed
                -- chain (migration 0004's starting point) ends: the boundary is in the log.
                INSERT INTO action_log (event_key, event, actor, outcome, details)
                VALUES ('{MARKER}', 'log.sealing_started', 'system:database', 'ok',
                        jsonb_build_object('legacy_until_seq', h_seq))
                ON CONFLICT (event_key) DO NOTHING;
                SELECT r.id, encode(sha256({_CONTENT}), 'hex') INTO m_id, m_ch
                  FROM (SELECT a.*, h_seq + 1 AS s FROM action_log a
                         WHERE a.event_key = '{MARKER}' AND a.seq IS NULL) r;
                IF m_id IS NOT NULL THEN
                    UPDATE action_log
                       SET seq = h_seq + 1, prev_hash = h_hash, sealed_at = clock_timestamp(),
                           hash = encode(sha256(convert_to(h_hash || m_ch, 'UTF8')), 'hex')
                     WHERE id = m_id
                    RETURNING action_log.seq, action_log.hash INTO h_seq, h_hash;
                    done := 1;
                END IF;
            END IF;
            SELECT array_agg(c.id ORDER BY c.s), array_agg(c.s ORDER BY c.s),
                   array_agg(c.ch ORDER BY c.s), min(c.at)
              INTO ids, seqs, chs, oldest
              FROM (
                SELECT r.id, r.at, s, encode(sha256({_CONTENT}), 'hex') AS ch
                  FROM (SELECT u.*, h_seq + row_number() OVER (ORDER BY u.id) AS s
                          FROM (SELECT * FROM action_log
                                 WHERE seq IS NULL ORDER BY id LIMIT n) u) r
              ) c;
            IF ids IS NULL THEN
                PERFORM set_config('soar.sealing', '', true);
                RETURN QUERY SELECT done, h_seq, NULL::double precision;
                RETURN;
            END IF;
            t := clock_timestamp();  -- after the rows were read: sealed_at >= at, always
            FOR i IN 1 .. array_length(ids, 1) LOOP
                prevs[i] := h_hash;
                h_hash := encode(sha256(convert_to(h_hash || chs[i], 'UTF8')), 'hex');
                hashes[i] := h_hash;
            END LOOP;
            UPDATE action_log l
               SET seq = u.s, prev_hash = u.p, hash = u.h, sealed_at = t
              FROM unnest(ids, seqs, prevs, hashes) AS u(id, s, p, h)
             WHERE l.id = u.id;
            PERFORM set_config('soar.sealing', '', true);
            RETURN QUERY SELECT done + array_length(ids, 1), seqs[array_length(seqs, 1)],
                                extract(epoch FROM t - oldest)::double precision;
        END $$
        """
    )
    # Only who is granted EXECUTE may seal (deploy/postgres-grants.sql grants it to soar_app).
    op.execute("REVOKE ALL ON FUNCTION soar_seal(integer) FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP FUNCTION IF EXISTS soar_seal(integer)")
    op.execute("DROP TRIGGER IF EXISTS action_log_no_update_delete ON action_log")
    op.execute("DROP TRIGGER IF EXISTS action_log_no_delete ON action_log")
    op.execute("DROP TRIGGER IF EXISTS action_log_seal_gate ON action_log")
    op.execute("DROP TRIGGER IF EXISTS action_log_db_fields ON action_log")
    op.execute("DROP FUNCTION IF EXISTS action_log_seal_gate()")
    op.execute("DROP FUNCTION IF EXISTS action_log_on_insert()")
    # Unsealed rows cannot exist in the old schema: a downgrade with unsealed rows fails here.
    op.execute("DROP INDEX IF EXISTS ix_action_log_unsealed")
    op.execute("ALTER TABLE action_log DROP CONSTRAINT IF EXISTS ck_action_log_sealed_together")
    for col in ("seq", "prev_hash", "hash"):
        op.alter_column("action_log", col, nullable=False)
    op.execute("ALTER TABLE action_log DROP CONSTRAINT uq_action_log_seq")
    op.execute("ALTER TABLE action_log DROP CONSTRAINT pk_action_log")
    op.execute("ALTER TABLE action_log ADD CONSTRAINT pk_action_log PRIMARY KEY (seq)")
    op.drop_column("action_log", "sealed_at")
    op.drop_column("action_log", "id")
    op.execute(
        "CREATE TRIGGER action_log_no_update_delete BEFORE UPDATE OR DELETE ON action_log "
        "FOR EACH ROW EXECUTE FUNCTION action_log_refuse_change()"
    )
