"""Schema through Alembic only: up, down, up again, and no drift between models and head.
Runs on the embedded PostgreSQL 18 and, when it answers, on the server at 127.0.0.1:5432."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from alembic.util.exc import CommandError
from sqlalchemy import create_engine, inspect, text

from soar import migrate
from soar.db import sqlalchemy_url

SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/postgres"


def _system_pg_db() -> Iterator[str]:
    try:
        conn = psycopg.connect(SYSTEM_PG, autocommit=True, connect_timeout=2)
    except psycopg.OperationalError:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432")
    name = "soar_mig_" + uuid.uuid4().hex[:8]
    with conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield f"postgresql://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(SYSTEM_PG, autocommit=True) as c:
        c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture(params=["embedded", "system"])
def fresh_db(request: pytest.FixtureRequest, empty_db_url: str) -> Iterator[str]:
    if request.param == "embedded":
        yield empty_db_url
    else:
        yield from _system_pg_db()


def _tables(url: str) -> set[str]:
    engine = create_engine(sqlalchemy_url(url))
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade_and_no_drift(fresh_db: str) -> None:
    migrate.upgrade(fresh_db)
    assert {
        "incidents",
        "detections",
        "actions",
        "approvals",
        "action_log",
        "principals",
        "atlas_techniques",
        "atlas_tactics",
        "atlas_mitigations",
        "atlas_technique_mitigations",
        "atlas_catalog_versions",
        "enforcement_blocks",
    } <= _tables(fresh_db)
    migrate.downgrade(fresh_db, "base")
    assert _tables(fresh_db) == set()
    migrate.upgrade(fresh_db)
    # `alembic check` raises when autogenerate finds a difference.
    try:
        command.check(migrate.alembic_config(fresh_db))
    except CommandError as exc:  # pragma: no cover - the failure message is the point
        pytest.fail(f"models and migrations differ: {exc}")


def test_action_log_refuses_update_and_delete(fresh_db: str) -> None:
    migrate.upgrade(fresh_db)
    engine = create_engine(sqlalchemy_url(fresh_db))
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO action_log (seq, event_key, at, event, actor, outcome, details,"
                " prev_hash, hash) VALUES (1, 'k', now(), 'e', 'a', 'ok', '{}', 'p', 'h')"
            )
        )
    for stmt in (
        "UPDATE action_log SET actor = 'x'",
        "DELETE FROM action_log",
        "TRUNCATE action_log",
    ):
        with pytest.raises(Exception, match="append-only"), engine.begin() as c:
            c.execute(text(stmt))
    with engine.connect() as c:
        assert c.execute(text("SELECT actor FROM action_log")).scalar_one() == "a"
    engine.dispose()


def test_0006_moves_slack_ids_into_channel_tables_and_back(empty_db_url: str) -> None:
    """The Slack columns of approvals and principals become rows of approval_messages and
    principal_addresses, and come back on a downgrade."""
    migrate.upgrade(empty_db_url, "0005")
    engine = create_engine(sqlalchemy_url(empty_db_url))
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO incidents (id, tenant, subject_key, status, workflow_id, technique,"
                " severity, detection_count, opened_at, last_detection_at) VALUES ('inc-1',"
                " 'acme', 'user:u-1', 'open', 'incident-inc-1', 'AML.T0057', 'critical', 1,"
                " now(), now())"
            )
        )
        c.execute(
            text(
                "INSERT INTO actions (id, incident_id, action_key, action_type, risk, tenant,"
                " target, status, rule, params) VALUES ('act-1', 'inc-1', 'revoke_api_key:k-1',"
                " 'revoke_api_key', 'high', 'acme', 'k-1', 'pending_approval', 'r', '{}')"
            )
        )
        c.execute(
            text(
                "INSERT INTO approvals (id, incident_id, action_id, workflow_id, status,"
                " requested_at, expires_at, slack_channel, slack_ts) VALUES ('apr-1', 'inc-1',"
                " 'act-1', 'incident-inc-1', 'pending', now(), now(), 'C-SEC', '1700.0001')"
            )
        )
        c.execute(
            text(
                "INSERT INTO principals (name, role, slack_user_id, disabled) VALUES"
                " ('carol', 'approver', 'U-CAROL', false), ('dave', 'analyst', NULL, false)"
            )
        )
    migrate.upgrade(empty_db_url, "0006")
    with engine.connect() as c:
        messages = c.execute(
            text(
                "SELECT approval_id, channel, kind, conversation, message_id FROM approval_messages"
            )
        ).all()
        addresses = c.execute(
            text(
                "SELECT p.name, a.channel, a.address FROM principal_addresses a"
                " JOIN principals p ON p.id = a.principal_id"
            )
        ).all()
        quorum = c.execute(text("SELECT quorum, approver_groups, votes FROM approvals")).one()
    assert [tuple(m) for m in messages] == [("apr-1", "slack", "announce", "C-SEC", "1700.0001")]
    assert [tuple(a) for a in addresses] == [("carol", "slack", "U-CAROL")]
    assert tuple(quorum) == (1, [], [])
    migrate.downgrade(empty_db_url, "0005")
    with engine.connect() as c:
        back = c.execute(text("SELECT slack_channel, slack_ts FROM approvals")).one()
        ids = c.execute(text("SELECT name, slack_user_id FROM principals ORDER BY name")).all()
    engine.dispose()
    assert tuple(back) == ("C-SEC", "1700.0001")
    assert [tuple(i) for i in ids] == [("carol", "U-CAROL"), ("dave", None)]
