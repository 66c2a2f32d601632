"""`soar policy check` catches what matters: every problem in one run, technique and tactic
patterns checked against the ATLAS catalog, irreversible actions refused as `risk: low`
unless the rule opts in; and the default playbook passes all of it."""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from soar import actions
from soar.atlas import BUILTIN_CATALOG, parse_atlas_file
from soar.policy import KnownIds, PlaybookError, default_playbook, load_playbook_text
from soar.policy.playbook import DEFAULT_PLAYBOOK_RESOURCE, OPT_IN

BUILTIN = KnownIds.of(BUILTIN_CATALOG, "the built-in catalog")


def _reference() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:  # read in place (main tree or a worktree beside it)
        for candidate in (parent / "shared", parent.parent / "shared"):
            found = candidate / "reference" / "atlas" / "ATLAS.yaml"
            if found.is_file():
                return found
    pytest.skip("ATLAS reference file not found")


def check(path: Path, *args: str) -> tuple[int, list[str]]:
    """`soar policy check` with no database configured: (exit code, non-empty lines)."""
    from atlas_soar.cli import app

    clean = {k: None for k in os.environ if k.startswith("SOAR_")}
    result = CliRunner().invoke(
        app, ["policy", "check", *args, str(path)], env={**clean, "SOAR_HOME": "/nonexistent"}
    )
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    assert "Traceback" not in result.output
    return result.exit_code, [ln for ln in result.output.splitlines() if ln.strip()]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "playbook.yaml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


THREE_MISTAKES = """
    name: p
    rules:
      - name: r1
        when:
          severity_at_least: severe
        actions:
          - {type: block_session, risk: medium, duration: 5m}
      - name: r2
        when: {techniques: ["AML.T0051*"]}
        actions:
          - {type: shutdown, risk: low}
    """


def test_every_problem_is_reported_in_one_run_one_line_each(tmp_path: Path) -> None:
    path = write(tmp_path, THREE_MISTAKES)
    code, lines = check(path)
    assert code == 1
    assert lines == [
        f"error: {path} line 5: rules[0].when.severity_at_least: 'severe' is not one of info, "
        "low, medium, high, critical",
        f"error: {path} line 7: rules[0].actions[0].risk: 'medium' is not one of low, high",
        f"error: {path} line 11: rules[1].actions[0].type: 'shutdown' is not one of "
        + ", ".join(actions.names()),
        f"error: {path}: 3 problems",
    ]


def test_the_error_carries_each_problem_and_reads_as_the_first() -> None:
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(textwrap.dedent(THREE_MISTAKES).lstrip("\n"), "p.yaml")
    error = info.value
    assert [(p.line, p.path) for p in error.problems] == [
        (5, "rules[0].when.severity_at_least"),
        (7, "rules[0].actions[0].risk"),
        (11, "rules[1].actions[0].type"),
    ]
    assert (error.line, error.path) == (5, "rules[0].when.severity_at_least")
    assert str(error).splitlines() == [p.message for p in error.problems]


def test_a_mistake_does_not_hide_the_next_in_the_same_mapping() -> None:
    # unknown and duplicate keys, a bad value: all three, in the order of the file
    text = "name: p\ncolour: blue\nrules:\n  - name: r\n    when: {severity_at_least: x}\n"
    text += "    actions: [{type: notify, risk: low, ttl: 1}]\n    name: again\n"
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(text, "p.yaml")
    assert [(p.line, p.path, p.reason.split(" (")[0]) for p in info.value.problems] == [
        (2, "colour", "unknown key"),
        (
            5,
            "rules[0].when.severity_at_least",
            "'x' is not one of info, low, medium, high, critical",
        ),
        (6, "rules[0].actions[0].ttl", "unknown key"),
        (7, "rules[0].name", "duplicate key"),
    ]


def test_a_value_its_tag_cannot_read_is_a_problem_with_its_line() -> None:
    text = "name: p\nrules:\n  - name: r\n    when: {repeat_count_at_least: !!int abc}\n"
    text += "    actions: [{type: notify, risk: low}]\n"
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(text, "p.yaml")
    assert [(p.line, p.path) for p in info.value.problems] == [
        (4, "rules[0].when.repeat_count_at_least")
    ]
    assert "cannot read value 'abc'" in str(info.value)


UNKNOWN_PATTERN = """
    name: p
    rules:
      - name: r
        when:
          techniques: ["AML.T0051*", "AML.T9051*", "aml.t0057"]
          tactics: ["AML.TA0005", "AML.TA00*9"]
        actions: [{type: notify, risk: low}]
    """


def test_a_technique_pattern_must_match_the_catalog(tmp_path: Path) -> None:
    path = write(tmp_path, UNKNOWN_PATTERN)
    code, lines = check(path)
    assert code == 1
    assert lines[0] == (
        f"error: {path} line 5: rules[0].when.techniques[1]: 'AML.T9051*' matches no technique "
        f"in the built-in ATLAS catalog {BUILTIN_CATALOG.version}"
    )
    assert lines[1:] == [f"error: {path}: 1 problem"]  # T0051*, t0057 and the tactics match

    fixed = write(tmp_path, UNKNOWN_PATTERN.replace('"AML.T9051*", ', ""))
    code, lines = check(fixed)
    assert code == 0, lines
    assert "is valid" in lines[0] and "built-in ATLAS catalog" in lines[0]


def test_a_tactic_pattern_must_match_the_catalog() -> None:
    text = textwrap.dedent(UNKNOWN_PATTERN).lstrip("\n").replace("AML.TA00*9", "AML.TA99*")
    text = text.replace('"AML.T9051*", ', "")
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(text, "p.yaml", known=BUILTIN)
    (problem,) = info.value.problems
    assert (problem.line, problem.path) == (6, "rules[0].when.tactics[1]")
    assert problem.reason == "'AML.TA99*' matches no tactic in the built-in catalog"
    # Without a catalog to check against, patterns are only checked for their form.
    assert load_playbook_text(text, "p.yaml").rules[0].when.tactics == ("AML.TA0005", "AML.TA99*")


def test_atlas_option_checks_against_a_full_release(tmp_path: Path) -> None:
    reference = _reference()
    # AML.T0010 (AI Supply Chain Compromise) is in ATLAS 5.6.0, not in the built-in catalog.
    path = write(tmp_path, UNKNOWN_PATTERN.replace("AML.T9051*", "AML.T0010*"))
    code, lines = check(path)
    assert code == 1 and "'AML.T0010*' matches no technique" in lines[0]
    code, lines = check(path, "--atlas", str(reference))
    assert code == 0, lines
    assert "ATLAS 5.6.0" in lines[0]
    code, lines = check(path, "--atlas", str(tmp_path / "missing.yaml"))
    assert code == 1 and lines[0].startswith("error: --atlas:")


IRREVERSIBLE = """
    name: p
    rules:
      - name: r
        when: {severity_at_least: critical}
        actions:
          - {type: block_api_key, risk: low, duration: 15m}
          - {type: revoke_api_key, risk: low}
    """


def opted_in(value: str) -> str:
    return IRREVERSIBLE.rstrip(" ") + f"        {OPT_IN}: {value}\n"


def test_an_irreversible_action_is_refused_as_low_risk(tmp_path: Path) -> None:
    code, lines = check(write(tmp_path, IRREVERSIBLE))
    assert code == 1
    assert "line 7: rules[0].actions[1].risk: revoke_api_key is irreversible" in lines[0]
    assert f"{OPT_IN}: true" in lines[0] and len(lines) == 2


def test_the_rule_may_opt_in_explicitly_and_is_still_warned(tmp_path: Path) -> None:
    code, lines = check(write(tmp_path, opted_in("true")))
    assert code == 0, lines
    assert any("warning:" in ln and "revoke_api_key runs with risk low" in ln for ln in lines)
    code, lines = check(write(tmp_path, opted_in("yes please")))
    assert code == 1 and f"rules[0].{OPT_IN}: expected true or false, got 'yes please'" in lines[1]
    assert "revoke_api_key is irreversible" in lines[0]  # not allowed by a bad opt-in
    code, lines = check(write(tmp_path, opted_in("false")))
    assert code == 1 and "revoke_api_key is irreversible" in lines[0]


def test_an_opt_in_with_nothing_to_allow_is_refused() -> None:
    text = textwrap.dedent(IRREVERSIBLE).replace("revoke_api_key, risk: low", "notify, risk: low")
    with pytest.raises(PlaybookError, match=f"{OPT_IN}: the rule runs no irreversible action"):
        load_playbook_text(text + f"    {OPT_IN}: true\n", "p.yaml")


def guarded() -> list[str]:
    return sorted(name for name, a in actions.ACTIONS.items() if a.must_be_approved)


def test_revoke_and_disable_are_guarded_and_so_is_every_irreversible_entry() -> None:
    assert {"revoke_api_key", "disable_user"} <= set(guarded())
    assert {n for n, a in actions.ACTIONS.items() if a.irreversible} <= set(guarded())
    assert "block_api_key" not in guarded() and "block_session" not in guarded()


@pytest.mark.parametrize("action_type", guarded())
def test_each_guarded_action_is_refused_as_low_risk_anywhere(action_type: str) -> None:
    text = textwrap.dedent(IRREVERSIBLE).replace("revoke_api_key", action_type)
    with pytest.raises(PlaybookError) as info:
        load_playbook_text(text, "p.yaml")
    (problem,) = info.value.problems
    assert problem.path == "rules[0].actions[1].risk" and action_type in problem.reason
    assert load_playbook_text(text.replace("risk: low}", "risk: high}"), "p.yaml")


def test_the_default_playbook_passes_every_check() -> None:
    from importlib import resources

    text = resources.files("soar.policy").joinpath(DEFAULT_PLAYBOOK_RESOURCE).read_text("utf-8")
    assert load_playbook_text(text, "default", known=BUILTIN).rules == default_playbook().rules
    full = KnownIds.of(parse_atlas_file(_reference()), "ATLAS 5.6.0")
    assert load_playbook_text(text, "default", known=full).name == "default"


def test_without_a_reachable_database_the_built_in_catalog_is_used_and_said(
    tmp_path: Path,
) -> None:
    from atlas_soar.cli import app

    path = write(tmp_path, UNKNOWN_PATTERN.replace('"AML.T9051*", ', ""))
    clean = {k: None for k in os.environ if k.startswith("SOAR_")}
    env = {**clean, "SOAR_HOME": "/nonexistent"}
    env["SOAR_DATABASE_URL"] = "postgresql://nobody@127.0.0.1:1/soar"
    result = CliRunner().invoke(app, ["policy", "check", str(path)], env=env)
    assert result.exit_code == 0, result.output
    note = next(ln for ln in result.output.splitlines() if ln.startswith("note:"))
    assert "database is unreachable" in note and "built-in catalog" in note


def test_explain_names_every_problem_too(tmp_path: Path) -> None:
    from atlas_soar.cli import app

    path = write(tmp_path, THREE_MISTAKES)
    det = tmp_path / "det.json"
    det.write_text("{}")
    result = CliRunner().invoke(app, ["policy", "explain", str(path), str(det)])
    assert result.exit_code == 1
    lines = result.output.splitlines()
    assert [ln.split(": ", 2)[1].split(" line ")[-1] for ln in lines[:3]] == ["5", "7", "11"]
    assert lines[3] == f"error: {path}: 3 problems"


def test_a_revocation_without_a_block_meanwhile_is_warned(tmp_path: Path) -> None:
    text = IRREVERSIBLE.replace("revoke_api_key, risk: low", "revoke_api_key, risk: high")
    code, lines = check(write(tmp_path, text))
    assert code == 0 and not any("warning:" in ln for ln in lines), lines
    code, lines = check(write(tmp_path, text.replace("block_api_key", "block_session")))
    assert code == 0
    (warning,) = [ln for ln in lines if ln.startswith("warning:")]
    assert "line 7: rule 'r': the key stays usable while its revocation waits" in warning


@pytest.mark.parametrize(
    ("technique", "severity"),
    [("AML.T0057", "critical"), ("AML.T0043", "critical"), ("AML.T0024.000", "low")],
)
def test_the_default_playbook_blocks_a_key_at_once_whenever_it_asks_to_revoke_it(
    technique: str, severity: str
) -> None:
    from soar.domain import DetectionFacts, Subject
    from soar.policy import evaluate

    facts = DetectionFacts(
        detection_id="d-1",
        technique=technique,
        severity=severity,
        confidence=0.9,
        source="gw",
        observed_at="2026-12-02T06:00:00Z",
        subject=Subject(tenant="acme", api_key="k-1"),
    )
    plan = {
        a.action_type: (a.risk, a.target, a.duration_seconds)
        for a in evaluate(default_playbook(), facts).actions
    }
    assert plan["block_api_key"] == ("low", "k-1", 900)
    assert plan["revoke_api_key"] == ("high", "k-1", None)
    assert "block_session" not in plan and "disable_user" not in plan
