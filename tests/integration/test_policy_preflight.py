"""`soar worker` and `soar api` validate SOAR_POLICY_FILE as `soar policy check` does: every
problem one line, and technique patterns against the catalog loaded in the database."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytestmark = pytest.mark.timeout(120)

WHSEC = "whsec_" + "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY"


def start(command: str, policy: Path, db_url: str) -> tuple[int, list[str]]:
    from atlas_soar.cli import app
    from soar.stack.proc import free_port

    clean = {k: None for k in os.environ if k.startswith("SOAR_")}
    env = {
        **clean,
        "SOAR_HOME": "/nonexistent",
        "SOAR_DATABASE_URL": db_url,
        # Unreachable: the playbook must be refused before Temporal is tried.
        "SOAR_TEMPORAL_ADDRESS": "127.0.0.1:1",
        "SOAR_WEBHOOK_SECRET": WHSEC,
        "SOAR_API_PORT": str(free_port()),
        "SOAR_POLICY_FILE": str(policy),
    }
    result = CliRunner().invoke(app, [command], env=env)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()]


@pytest.mark.parametrize("command", ["worker", "api"])
def test_every_problem_is_one_line_naming_the_variable(
    command: str, tmp_path: Path, db_url: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: p\nrules:\n  - name: r\n    when: {severity_at_least: huge}\n"
        "    actions: [{type: revoke_api_key, risk: low}]\n"
    )
    code, lines = start(command, policy, db_url)
    assert code == 1
    assert len(lines) == 2, lines
    assert lines[0].startswith(f"error: SOAR_POLICY_FILE: {policy} line 4: ")
    assert lines[1].startswith(f"error: SOAR_POLICY_FILE: {policy} line 5: ")
    assert "revoke_api_key is irreversible" in lines[1]


@pytest.mark.parametrize("command", ["worker", "api"])
def test_a_technique_the_loaded_catalog_lacks_is_refused(
    command: str, tmp_path: Path, db_url: str
) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: p\nrules:\n  - name: r\n    when: {techniques: ['AML.T9051*']}\n"
        "    actions: [{type: notify, risk: low}]\n"
    )
    code, lines = start(command, policy, db_url)
    assert code == 1
    (line,) = lines
    assert line.startswith(f"error: SOAR_POLICY_FILE: {policy} line 4: rules[0].when.techniques[0]")
    assert "'AML.T9051*' matches no technique in the loaded ATLAS catalog" in line

    # A known one passes the playbook check; the start then fails on Temporal, not on it.
    policy.write_text(policy.read_text().replace("AML.T9051*", "AML.T0051*"))
    code, lines = start(command, policy, db_url)
    assert code == 1 and not any("SOAR_POLICY_FILE" in ln for ln in lines), lines


def test_soar_up_checks_the_playbook_against_the_catalog_before_the_worker_starts(
    tmp_path: Path, db_url: str, temporal_address: str
) -> None:
    import subprocess
    import sys

    from soar.stack.proc import free_port

    policy = tmp_path / "policy.yaml"
    policy.write_text(
        "name: p\nrules:\n  - name: r\n    when: {tactics: ['AML.TA0099']}\n"
        "    actions: [{type: notify, risk: low}]\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("SOAR_")}
    env.update(
        SOAR_HOME=str(tmp_path / "home"),
        SOAR_DATABASE_URL=db_url,
        SOAR_TEMPORAL_ADDRESS=temporal_address,
        SOAR_API_PORT=str(free_port()),
        SOAR_POLICY_FILE=str(policy),
    )
    done = subprocess.run(
        [sys.executable, "-m", "atlas_soar", "up"],
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [ln for ln in done.stderr.splitlines() if ln.startswith("error:")]
    assert errors == [
        f"error: SOAR_POLICY_FILE: {policy} line 4: rules[0].when.tactics[0]: 'AML.TA0099' "
        "matches no tactic in the loaded ATLAS catalog builtin-2 (built-in)"
    ], done.stderr
    assert "is ready" not in done.stdout and "Traceback" not in done.stdout + done.stderr
