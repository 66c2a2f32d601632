"""`soar policy check` and `soar policy explain` as a user runs them."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from atlas_soar.cli import app
from tests.support import detection

runner = CliRunner()


def test_check_accepts_a_valid_playbook_and_names_line_of_a_bad_one(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(
        "name: mine\nrules:\n  - name: r1\n    when:\n      techniques: ['AML.T0051*']\n"
        "    actions:\n      - type: block_session\n        risk: low\n        duration: 5m\n"
    )
    result = runner.invoke(app, ["policy", "check", str(good)])
    assert result.exit_code == 0 and "valid" in result.output

    bad = tmp_path / "bad.yaml"
    bad.write_text(good.read_text().replace("risk: low", "risk: medium"))
    result = runner.invoke(app, ["policy", "check", str(bad)])
    assert result.exit_code == 1
    assert "line 8" in result.output and "risk" in result.output


def test_explain_shows_rules_and_plan_without_running_anything(tmp_path: Path) -> None:
    det = tmp_path / "det.json"
    det.write_text(json.dumps(detection(technique="AML.T0057", severity="critical")))
    result = runner.invoke(app, ["policy", "explain", "default", str(det)])
    assert result.exit_code == 0, result.output
    assert "fires" in result.output
    assert "revoke_api_key k-1" in result.output and "risk high" in result.output
    assert "block_session s-9 for 900s" in result.output

    det.write_text(json.dumps(detection(confidence=3)))
    result = runner.invoke(app, ["policy", "explain", "default", str(det)])
    assert result.exit_code == 1 and "confidence" in result.output
