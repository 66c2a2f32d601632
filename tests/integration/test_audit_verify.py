"""Chain verification against a real database: an intact chain passes, and each way of tampering
with it as a superuser (bypassing the append-only triggers) is caught at the right row."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal

import psycopg
import pytest
from typer.testing import CliRunner

from bench.audit import copy_rows, synthetic_rows
from soar.audit.chain import LogEvent, append, row_hash
from soar.audit.verify import VerifyResult, averify_chain, verify_chain
from soar.db import make_async_engine, make_sync_engine, session_factory
from tests.conftest import as_role

pytestmark = pytest.mark.timeout(120)

ROWS = 3000


@pytest.fixture
def log_url(db_url: str) -> str:
    copy_rows(db_url, synthetic_rows(ROWS, seed=5))
    return db_url


def tamper(url: str, *statements: str) -> None:
    """What an attacker with superuser rights could do: switch the triggers off and edit."""
    with psycopg.connect(url) as conn:
        conn.execute("SET session_replication_role = replica")
        for sql in statements:
            conn.execute(sql)
        conn.commit()


def verify_sync(url: str, **kw: object) -> VerifyResult:
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            return verify_chain(conn, **kw)  # type: ignore[arg-type]
    finally:
        engine.dispose()


async def verify_async(url: str) -> VerifyResult:
    engine = make_async_engine(url, pool_size=1)
    try:
        async with engine.connect() as conn:
            return await averify_chain(conn, batch=700)
    finally:
        await engine.dispose()


def seal(url: str) -> None:
    with psycopg.connect(url) as conn:
        while conn.execute("SELECT sealed FROM soar_seal(1000)").fetchone() != (0,):
            conn.commit()
        conn.commit()


def stored_hash(url: str, seq: int) -> str:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT hash FROM action_log WHERE seq = %s", (seq,)).fetchone()
    assert row is not None
    return str(row[0])


async def test_an_intact_chain_passes_in_every_mode(log_url: str) -> None:
    seen: list[int] = []
    result = verify_sync(log_url, batch=1000, progress=seen.append)
    assert result.ok and result.problem is None
    assert result.rows == ROWS
    assert (result.head_seq, result.head_hash) == (ROWS, stored_hash(log_url, ROWS))
    assert seen == [1000, 2000, 3000]
    assert result.as_dict() == {
        "ok": True,
        "rows": ROWS,
        "head_seq": ROWS,
        "head_hash": result.head_hash,
        "checkpoints": 0,
        "unsealed_rows": 0,
        "oldest_unsealed_seconds": None,
    }
    assert await verify_async(log_url) == result
    assert verify_sync(log_url, batch=400, workers=2) == result


async def test_an_empty_log_is_intact(db_url: str) -> None:
    result = verify_sync(db_url)
    assert result.ok and result.rows == 0 and result.head_seq == 0


async def test_rows_written_by_the_product_verify(db_url: str) -> None:
    """The append path (JSONB round trip, timestamps with microseconds, unicode, numbers)
    and the verifier agree on every byte that is hashed."""
    engine = make_async_engine(db_url, pool_size=1)
    details: list[dict[str, object]] = [
        {"confidence": 0.92, "n": 3, "big": 2**53 + 1, "neg": -0.0001, "none": None},
        {"excerpt": 'Ignore previous instructions — «ünïcödé» 漢字 \u2028 "quoted" \\ done'},
        {"nested": {"z": [1, {"b": True, "a": False}], "a": []}, "at": datetime.now(UTC)},
        {"decimal": Decimal("1.50"), "tiny": 1e-07, "float": 12345.678, "one": 1.0},
        {},
    ]
    try:
        for i, d in enumerate(details):
            async with session_factory(engine)() as s, s.begin():
                await append(
                    s,
                    LogEvent(
                        event_key=f"k{i}",
                        event="incident.enriched",
                        actor="system:atlas-soar",
                        incident_id="inc-1",
                        technique="AML.T0051",
                        details=d,
                    ),
                )
    finally:
        await engine.dispose()
    unsealed = verify_sync(db_url)
    assert unsealed.ok and unsealed.rows == 0 and unsealed.unsealed == len(details)
    seal(db_url)
    result = verify_sync(db_url)
    assert result.ok, result.problem
    assert result.rows == len(details) + 1  # and the sealing-start row
    assert (await verify_async(db_url)).ok


async def test_floats_jsonb_renders_without_exponent_verify(db_url: str) -> None:
    engine = make_async_engine(db_url, pool_size=1)
    try:
        async with session_factory(engine)() as s, s.begin():
            await append(
                s,
                LogEvent(
                    event_key="k",
                    event="incident.assessed",
                    actor="system:atlas-soar",
                    details={"score": 1e16},
                ),
            )
    finally:
        await engine.dispose()
    seal(db_url)
    assert verify_sync(db_url).ok


CaseMaker = Callable[[str], int]


def _change_a_field(url: str) -> int:
    tamper(url, "UPDATE action_log SET outcome = 'rejected' WHERE seq = 1234")
    return 1234


def _change_details(url: str) -> int:
    tamper(
        url,
        'UPDATE action_log SET details = details || \'{"target": "s-other"}\'::jsonb '
        "WHERE seq = 777",
    )
    return 777


def _change_the_time(url: str) -> int:
    tamper(url, "UPDATE action_log SET at = at + interval '1 microsecond' WHERE seq = 2500")
    return 2500


def _delete_a_row(url: str) -> int:
    tamper(url, "DELETE FROM action_log WHERE seq = 2000")
    return 2000


def _swap_two_rows(url: str) -> int:
    tamper(
        url,
        "UPDATE action_log SET seq = -1 WHERE seq = 1500",
        "UPDATE action_log SET seq = 1500 WHERE seq = 1510",
        "UPDATE action_log SET seq = 1510 WHERE seq = -1",
    )
    return 1500


def _rewrite_a_row_and_its_hash(url: str) -> int:
    """A careful forger recomputes the changed row's own hash; the next row's link breaks."""
    with psycopg.connect(url) as conn:
        cols = (
            "seq, event_key, at, incident_id, tenant, subject, event, action, actor, "
            "outcome, technique, tactic, details, prev_hash"
        )
        values = conn.execute(f"SELECT {cols} FROM action_log WHERE seq = 900").fetchone()
    assert values is not None
    row = dict(zip([c.strip() for c in cols.split(",")], values, strict=True))
    row["actor"] = "alice"
    tamper(url, f"UPDATE action_log SET actor = 'alice', hash = '{row_hash(row)}' WHERE seq = 900")
    return 901


def _forge_a_link(url: str) -> int:
    tamper(url, "UPDATE action_log SET prev_hash = repeat('0', 64) WHERE seq = 42")
    return 42


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (_change_a_field, "content changed"),
        (_change_details, "content changed"),
        (_change_the_time, "content changed"),
        (_delete_a_row, "row(s) 2000 missing"),
        (_swap_two_rows, "link broken"),
        (_rewrite_a_row_and_its_hash, "link broken"),
        (_forge_a_link, "link broken"),
    ],
    ids=["field", "details", "time", "delete", "swap", "rehash", "link"],
)
async def test_tampering_is_caught_and_the_first_bad_row_named(
    log_url: str, make: CaseMaker, reason: str
) -> None:
    bad = make(log_url)
    for result in (
        verify_sync(log_url, batch=500),
        await verify_async(log_url),
        verify_sync(log_url, batch=300, workers=2),
    ):
        assert not result.ok
        assert result.problem is not None
        assert result.problem.seq == bad, result.problem
        assert reason in result.problem.reason
        assert result.rows == bad - 1
        assert result.head_seq == bad - 1
        body = result.as_dict()
        assert body["first_bad_seq"] == bad and body["rows_checked"] == bad - 1


def test_cli_verify_exits_0_then_1_naming_the_row(log_url: str) -> None:
    from atlas_soar.cli import app

    runner = CliRunner()
    env = {"SOAR_DATABASE_URL": log_url}
    ok = runner.invoke(app, ["audit", "verify"], env=env)
    assert ok.exit_code == 0, ok.output
    assert f"{ROWS} rows" in ok.output
    _delete_a_row(log_url)
    bad = runner.invoke(app, ["audit", "verify", "--workers", "1"], env=env)
    assert bad.exit_code == 1
    assert "row 2000" in bad.output and "missing" in bad.output


# --- production grants (deploy/postgres-grants.sql) -------------------------------------------


async def test_production_grants_let_the_app_append_but_never_rewrite(granted_db: str) -> None:
    admin = granted_db
    app_url = as_role(admin, "soar_app")
    engine = make_async_engine(app_url, pool_size=1)
    try:
        for i in range(3):
            async with session_factory(engine)() as s, s.begin():
                await append(
                    s,
                    LogEvent(
                        event_key=f"k{i}",
                        event="detection.received",
                        actor="source:test",
                        technique="AML.T0051",
                    ),
                )
    finally:
        await engine.dispose()
    with psycopg.connect(app_url) as conn:
        for sql in (
            "UPDATE action_log SET actor = 'x'",
            "DELETE FROM action_log",
            "TRUNCATE action_log",
            "ALTER TABLE action_log DISABLE TRIGGER action_log_no_update_delete",
            "INSERT INTO atlas_tactics (id, name) VALUES ('x', 'y')",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
            conn.rollback()
        # The app cannot choose order, time or hashes: what it sets is not kept.
        conn.execute(
            "INSERT INTO action_log (seq, event_key, at, event, actor, outcome, details,"
            " prev_hash, hash, sealed_at) VALUES (1, 'forged', '2000-01-01', 'e', 'a', 'ok',"
            " '{}', repeat('0', 64), repeat('f', 64), '2000-01-01')"
        )
        assert conn.execute(
            "SELECT seq, prev_hash, hash, sealed_at, at > now() - interval '1 hour'"
            " FROM action_log WHERE event_key = 'forged'"
        ).fetchone() == (None, None, None, None, True)
        conn.commit()
        # Nor can it seal by hand: the flag the sealer sets is no key without its owner.
        conn.execute("SELECT set_config('soar.sealing', 'on', false)")
        for sql in (
            "UPDATE action_log SET seq = 1, prev_hash = repeat('0', 64), hash = 'x'"
            " WHERE event_key = 'forged'",
            "CREATE OR REPLACE FUNCTION soar_seal(max_rows integer DEFAULT 5000) RETURNS"
            " TABLE (sealed integer, head_seq bigint, oldest_delay_seconds double precision)"
            " LANGUAGE sql AS 'SELECT 0, 0::bigint, 0::float8'",
            "ALTER FUNCTION soar_seal(integer) OWNER TO soar_app",
            "DROP TRIGGER action_log_db_fields ON action_log",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(sql)
            conn.rollback()
        # It may run the sealer, which works under the owner's rights.
        sealed = conn.execute("SELECT sealed, head_seq FROM soar_seal(100)").fetchone()
        conn.commit()
        assert sealed == (5, 5)  # the sealing-start row, k0..k2, forged
    auditor_url = as_role(admin, "soar_auditor")
    with (
        psycopg.connect(auditor_url) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute("SELECT soar_seal(1)")
    result = verify_sync(auditor_url)
    assert result.ok and result.rows == 5 and result.unsealed == 0
    with psycopg.connect(auditor_url) as conn:
        assert conn.execute("SELECT count(*) FROM incidents").fetchone() == (0,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT token_hash FROM principals")
        conn.rollback()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT token_hash FROM approval_links")
        conn.rollback()
        assert conn.execute("SELECT count(used_at) FROM approval_links").fetchone() == (0,)
        with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
            conn.execute("INSERT INTO action_log (seq) VALUES (99)")
