-- atlas-soar: production roles and privileges for PostgreSQL (13 or later).
--
-- Three roles, three jobs:
--   soar_owner    owns the schema; runs `soar migrate` and `soar atlas load`. Not used by
--                 any long-running process: keep its password out of the app's environment.
--   soar_app      the API and the workers (SOAR_DATABASE_URL). Reads and writes the
--                 operational tables; on action_log it may only SELECT and INSERT, so even a
--                 compromised app cannot rewrite history (the append-only triggers are a
--                 second wall, and the hash chain makes any change visible to
--                 `soar audit verify`). It may EXECUTE soar_seal(), the SECURITY DEFINER
--                 function (owned by soar_owner) that gives rows their seq and hashes; it
--                 cannot choose either itself.
--   soar_auditor  read-only, for auditors and BI tools querying the database directly:
--                 everything except the credential columns of principals.
--
-- How to use it (as a superuser, or a role with CREATEROLE that owns the database):
--   1. CREATE DATABASE atlas_soar;            -- any name
--   2. psql -d atlas_soar -v ON_ERROR_STOP=1 -f deploy/postgres-grants.sql
--   3. ALTER ROLE soar_owner PASSWORD '...';  (and soar_app, soar_auditor), or use your
--      usual authentication (pg_hba / IAM) for the three login roles
--   4. SOAR_DATABASE_URL=postgresql://soar_owner:...@host/atlas_soar soar migrate
--   5. run this file again: step 2 grants on the tables the migration created. Re-run it
--      after every migration; it is idempotent. New tables get no privileges until then.
--
-- Do not make soar_app the owner of any table: a table's owner can disable its triggers.

\set ON_ERROR_STOP on

-- --- roles ------------------------------------------------------------------------------------

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'soar_owner') THEN
        CREATE ROLE soar_owner LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'soar_app') THEN
        CREATE ROLE soar_app LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'soar_auditor') THEN
        CREATE ROLE soar_auditor LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE;
    END IF;
END
$$;

-- An auditor's session cannot write, even by mistake, nor run a query for ever.
ALTER ROLE soar_auditor SET default_transaction_read_only = on;
ALTER ROLE soar_auditor SET statement_timeout = '10min';

-- --- database and schema ----------------------------------------------------------------------

DO $$
BEGIN
    EXECUTE format('ALTER DATABASE %I OWNER TO soar_owner', current_database());
    EXECUTE format('REVOKE ALL ON DATABASE %I FROM PUBLIC', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO soar_app', current_database());
    EXECUTE format('GRANT CONNECT ON DATABASE %I TO soar_auditor', current_database());
END
$$;

ALTER SCHEMA public OWNER TO soar_owner;
REVOKE ALL ON SCHEMA public FROM PUBLIC;
GRANT USAGE ON SCHEMA public TO soar_app, soar_auditor;

-- --- tables (whatever exists now; run again after each migration) -----------------------------

-- One transaction: a live app never sees the moment between the REVOKE and the GRANTs.
BEGIN;

-- Start from nothing each time, so a privilege removed here is removed there too.
REVOKE ALL ON ALL TABLES IN SCHEMA public FROM PUBLIC, soar_app, soar_auditor;
REVOKE ALL ON ALL SEQUENCES IN SCHEMA public FROM PUBLIC, soar_app, soar_auditor;

-- The app: read and write its operational tables; nothing is ever deleted by it.
GRANT SELECT, INSERT, UPDATE ON ALL TABLES IN SCHEMA public TO soar_app;
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO soar_app;

DO $$
DECLARE
    t text;
BEGIN
    -- The action log: append and read only. Order, time and hashes are the database's:
    -- the app may run the sealer (it runs as soar_owner, SECURITY DEFINER) but not change
    -- it, and whatever seq / at / hash an INSERT sets is thrown away by a trigger.
    IF to_regclass('public.action_log') IS NOT NULL THEN
        REVOKE UPDATE ON public.action_log FROM soar_app;
    END IF;
    IF to_regprocedure('public.soar_seal(integer)') IS NOT NULL THEN
        REVOKE ALL ON FUNCTION public.soar_seal(integer) FROM PUBLIC, soar_auditor;
        GRANT EXECUTE ON FUNCTION public.soar_seal(integer) TO soar_app;
    END IF;
    -- Approver groups are managed with `soar users group add|remove|delete`.
    IF to_regclass('public.approver_group_members') IS NOT NULL THEN
        GRANT DELETE ON public.approver_group_members, public.approver_groups TO soar_app;
    END IF;
    -- The ATLAS catalog and the migration bookkeeping belong to soar_owner.
    FOR t IN
        SELECT tablename FROM pg_tables
        WHERE schemaname = 'public'
          AND (tablename LIKE 'atlas\_%' OR tablename = 'alembic_version')
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE ON public.%I FROM soar_app', t);
    END LOOP;
END
$$;

-- The auditor: read everything but the secrets.
GRANT SELECT ON ALL TABLES IN SCHEMA public TO soar_auditor;

DO $$
BEGIN
    IF to_regclass('public.principals') IS NOT NULL THEN
        REVOKE SELECT ON public.principals FROM soar_auditor;
        GRANT SELECT (id, name, role, disabled, created_at)
            ON public.principals TO soar_auditor;
    END IF;
    -- E-mailed decision links: who got one and when it was used, not the token's hash.
    IF to_regclass('public.approval_links') IS NOT NULL THEN
        REVOKE SELECT ON public.approval_links FROM soar_auditor;
        GRANT SELECT (approval_id, principal_id, created_at, expires_at, used_at)
            ON public.approval_links TO soar_auditor;
    END IF;
    -- Source credentials (secrets, encrypted when SOAR_SECRETS_KEY is set): not for auditors.
    IF to_regclass('public.source_credentials') IS NOT NULL THEN
        REVOKE SELECT ON public.source_credentials FROM soar_auditor;
        GRANT SELECT (id, source, kind, created_at, not_after)
            ON public.source_credentials TO soar_auditor;
    END IF;
END
$$;

COMMIT;
