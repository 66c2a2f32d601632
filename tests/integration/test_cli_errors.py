"""Each mistake a user makes is one clear line and a non-zero exit, never a traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(120)

NEEDS_DB = [
    ["report"],
    ["audit", "search"],
    ["audit", "verify"],
    ["atlas", "show", "AML.T0051"],
    ["users", "list"],
    ["sources", "list"],
]
WHSEC = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def run(args: list[str], **env: str) -> tuple[int, str]:
    from atlas_soar.cli import app

    clean = {k: None for k in os.environ if k.startswith("SOAR_")}
    result = CliRunner().invoke(app, args, env={**clean, "SOAR_HOME": "/nonexistent", **env})
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    return result.exit_code, result.output


def one_line(output: str) -> str:
    lines = [ln for ln in output.splitlines() if ln.strip()]
    assert len(lines) == 1, output
    assert "Traceback" not in output
    return lines[0]


@pytest.mark.parametrize("args", NEEDS_DB, ids=" ".join)
def test_an_unreachable_database_is_one_line(args: list[str]) -> None:
    code, out = run(args, SOAR_DATABASE_URL="postgresql://nobody@127.0.0.1:1/soar")
    line = one_line(out)
    assert code == 1
    assert "unreachable" in line or "cannot reach the database" in line


@pytest.fixture
def empty_db(pg_server: str) -> Iterator[str]:
    name = "soar_empty_" + uuid.uuid4().hex[:8]
    with psycopg.connect(pg_server, autocommit=True) as c:
        c.execute(f"CREATE DATABASE {name}")
    try:
        yield pg_server.rsplit("/", 1)[0] + f"/{name}"
    finally:
        with psycopg.connect(pg_server, autocommit=True) as c:
            c.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.mark.parametrize("args", NEEDS_DB, ids=" ".join)
def test_a_database_that_is_not_migrated_says_run_soar_migrate(
    args: list[str], empty_db: str
) -> None:
    code, out = run(args, SOAR_DATABASE_URL=empty_db)
    assert code == 1
    assert "soar migrate" in one_line(out)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bad_policy(tmp_path: Path) -> Path:
    bad = tmp_path / "policy.yaml"
    bad.write_text(
        "name: broken\nrules:\n  - name: r\n    when: {severity_at_least: huge}\n"
        "    actions: [{type: notify, risk: low}]\n"
    )
    return bad


@pytest.mark.parametrize("command", ["worker", "api"])
def test_a_bad_playbook_names_the_variable_file_and_line(
    command: str, tmp_path: Path, db_url: str
) -> None:
    bad = _bad_policy(tmp_path)
    code, out = run(
        [command],
        SOAR_DATABASE_URL=db_url,
        SOAR_TEMPORAL_ADDRESS="127.0.0.1:1",
        SOAR_WEBHOOK_SECRET=WHSEC,
        SOAR_API_PORT=str(_free_port()),
        SOAR_POLICY_FILE=str(bad),
    )
    line = one_line(out)
    assert code == 1
    assert line.startswith("error: SOAR_POLICY_FILE: ") and str(bad) in line and "line" in line


def test_soar_up_refuses_a_bad_playbook_before_starting_anything(tmp_path: Path) -> None:
    bad = _bad_policy(tmp_path)
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env.update(SOAR_HOME=str(home), SOAR_POLICY_FILE=str(bad), SOAR_API_PORT=str(_free_port()))
    done = subprocess.run(
        [sys.executable, "-m", "atlas_soar", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "SOAR_POLICY_FILE" in done.stderr and str(bad) in done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert not (home / "pgdata").exists()


@pytest.mark.parametrize("command", ["worker", "api"])
def test_an_unreachable_temporal_is_one_line_at_start(command: str, db_url: str) -> None:
    # A process of its own: the worker leaves with os._exit (soar/stack/lifecycle.py).
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env.update(
        SOAR_HOME="/nonexistent",
        SOAR_DATABASE_URL=db_url,
        SOAR_TEMPORAL_ADDRESS="127.0.0.1:1",
        SOAR_WEBHOOK_SECRET=WHSEC,
        SOAR_API_PORT=str(_free_port()),
    )
    done = subprocess.run(
        [sys.executable, "-m", "atlas_soar", command],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    line = one_line(done.stdout + done.stderr)
    assert done.returncode == 1
    assert "Temporal at 127.0.0.1:1" in line and "SOAR_TEMPORAL_ADDRESS" in line


def test_soar_send_with_no_api_running_is_one_line() -> None:
    code, out = run(
        ["send", "--technique", "AML.T0051", "--session", "s-1"],
        SOAR_WEBHOOK_SECRET=WHSEC,
        SOAR_API_PORT=str(_free_port()),
    )
    assert code != 0
    assert "unreachable" in one_line(out) or "not reachable" in one_line(out)
