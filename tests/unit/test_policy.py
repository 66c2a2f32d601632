"""The response policy: playbook loading / validation and pure evaluation."""

from __future__ import annotations

import dataclasses
import textwrap
from pathlib import Path

import pytest

from soar.domain import DetectionFacts, Plan, Risk, Subject
from soar.policy import (
    Playbook,
    PlaybookError,
    default_playbook,
    evaluate,
    explain,
    load_playbook,
    load_playbook_text,
    parse_duration,
)

FULL_SUBJECT = Subject(tenant="acme", user="u-42", session="s-9", api_key="k-1")


def detection(
    technique: str = "AML.T0051",
    severity: str = "high",
    confidence: float = 0.9,
    subject: Subject = FULL_SUBJECT,
) -> DetectionFacts:
    return DetectionFacts(
        detection_id="det-1",
        technique=technique,
        severity=severity,
        confidence=confidence,
        source="llm-gateway",
        observed_at="2026-11-21T10:15:00Z",
        subject=subject,
    )


def by_type(plan: Plan) -> dict[str, tuple[str, str, int | None]]:
    """action_type -> (risk, target, duration_seconds); fails on duplicates of a type."""
    out: dict[str, tuple[str, str, int | None]] = {}
    for action in plan.actions:
        assert action.action_type not in out, f"{action.action_type} planned twice"
        out[action.action_type] = (action.risk, action.target, action.duration_seconds)
    return out


def pb(text: str) -> Playbook:
    return load_playbook_text(textwrap.dedent(text).lstrip("\n"), "playbook.yaml")


def load_error(text: str) -> PlaybookError:
    with pytest.raises(PlaybookError) as info:
        pb(text)
    return info.value


# -- default playbook ---------------------------------------------------------------------


def test_default_playbook_loads() -> None:
    playbook = default_playbook()
    assert playbook.name == "default"
    assert len(playbook.rules) >= 2
    assert len({rule.name for rule in playbook.rules}) == len(playbook.rules)
    assert playbook.source == "default_playbook.yaml"


def test_prompt_injection_high_blocks_session_for_15_minutes_without_high_risk() -> None:
    plan = evaluate(default_playbook(), detection("AML.T0051", "high", 0.92))
    actions = by_type(plan)
    assert actions == {
        "block_session": ("low", "s-9", 900),
        "open_ticket": ("low", "incident", None),
        "notify": ("low", "slack", None),
    }
    assert all(a.risk == Risk.low for a in plan.actions)
    assert plan.rules_fired == ("contain-prompt-injection",)
    assert {a.rule for a in plan.actions} == {"contain-prompt-injection"}


@pytest.mark.parametrize("technique", ["AML.T0051.001", "AML.T0051.000", "AML.T0054"])
def test_injection_patterns_cover_subtechniques_and_jailbreak(technique: str) -> None:
    plan = evaluate(default_playbook(), detection(technique, "medium"))
    assert "contain-prompt-injection" in plan.rules_fired
    assert by_type(plan)["block_session"] == ("low", "s-9", 900)


def test_pattern_does_not_match_a_different_technique() -> None:
    # AML.T0051* must not catch e.g. AML.T0050 or a prefix-only look-alike.
    plan = evaluate(default_playbook(), detection("AML.T0050", "high"))
    assert plan.actions == ()
    assert plan.rules_fired == ()


def test_low_severity_injection_does_nothing() -> None:
    plan = evaluate(default_playbook(), detection("AML.T0051", "low"))
    assert "contain-prompt-injection" not in plan.rules_fired
    assert plan.actions == ()


def test_leakage_critical_revokes_key_with_high_risk() -> None:
    subject = Subject(tenant="acme", api_key="k-1", session="s-2")
    plan = evaluate(default_playbook(), detection("AML.T0057", "critical", subject=subject))
    actions = by_type(plan)
    assert actions["revoke_api_key"] == ("high", "k-1", None)
    # containment first: a low-risk temporary block of the session
    assert actions["block_session"] == ("low", "s-2", 900)
    # no user on the subject: disable_user is skipped, not planned with an empty target
    assert "disable_user" not in actions
    assert "escalate-compromised-identity" in plan.rules_fired


@pytest.mark.parametrize("technique", ["AML.T0024.000", "AML.T0056", "AML.T0057"])
def test_leakage_escalates_at_any_severity(technique: str) -> None:
    plan = evaluate(default_playbook(), detection(technique, "low"))
    actions = by_type(plan)
    assert actions["revoke_api_key"] == ("high", "k-1", None)
    assert actions["disable_user"] == ("high", "u-42", None)


def test_critical_severity_alone_escalates() -> None:
    plan = evaluate(default_playbook(), detection("AML.T0043", "critical"))
    assert plan.rules_fired == ("escalate-compromised-identity",)
    actions = by_type(plan)
    assert actions["revoke_api_key"][0] == "high"
    assert actions["disable_user"][0] == "high"
    assert actions["open_ticket"][0] == "low"
    assert actions["notify"][0] == "low"


def test_repeat_count_escalates_only_from_three() -> None:
    playbook = default_playbook()
    two = evaluate(playbook, detection("AML.T0051", "high"), repeat_count=2)
    three = evaluate(playbook, detection("AML.T0051", "high"), repeat_count=3)
    assert "escalate-compromised-identity" not in two.rules_fired
    assert not any(a.risk == "high" for a in two.actions)
    assert three.rules_fired == ("contain-prompt-injection", "escalate-compromised-identity")
    actions = by_type(three)  # also proves ticket / notice are deduplicated
    assert actions["revoke_api_key"] == ("high", "k-1", None)
    assert actions["disable_user"] == ("high", "u-42", None)
    assert actions["block_session"] == ("low", "s-9", 900)
    # the first rule that planned a shared action keeps it
    ticket = next(a for a in three.actions if a.action_type == "open_ticket")
    assert ticket.rule == "contain-prompt-injection"


def test_missing_subject_fields_skip_actions() -> None:
    user_only = Subject(tenant="acme", user="u-42")
    plan = evaluate(default_playbook(), detection("AML.T0051", "critical", subject=user_only))
    actions = by_type(plan)
    assert "block_session" not in actions
    assert "revoke_api_key" not in actions
    assert actions["disable_user"] == ("high", "u-42", None)
    assert all(a.target for a in plan.actions)
    reasons = {
        v.name: v.reasons
        for v in explain(default_playbook(), detection("AML.T0051", "critical", subject=user_only))
    }
    assert (
        "skipped block_session: the subject has no session" in reasons["contain-prompt-injection"]
    )
    assert (
        "skipped revoke_api_key: the subject has no api_key"
        in reasons["escalate-compromised-identity"]
    )


def test_evaluation_is_pure_and_does_not_share_params() -> None:
    playbook = default_playbook()
    first = evaluate(playbook, detection())
    first.actions[0].params["reason"] = "tampered"
    second = evaluate(playbook, detection())
    assert second.actions[0].params["reason"] != "tampered"
    assert evaluate(playbook, detection()) == second


# -- evaluation semantics on custom playbooks ----------------------------------------------

SEMANTICS = """
name: semantics
rules:
  - name: and-conditions
    when:
      techniques: ["aml.t0051*"]
      tactics: ["AML.TA0005"]
      confidence_at_least: 0.8
    actions:
      - {type: block_api_key, risk: low, duration: 2h}
  - name: notify-security
    when:
      severity_at_least: info
    actions:
      - {type: notify, risk: low, params: {channel: "#sec"}}
      - {type: block_api_key, risk: high}
"""


def test_conditions_are_anded_and_tactics_match_any() -> None:
    playbook = pb(SEMANTICS)
    hit = evaluate(playbook, detection(confidence=0.8), tactics=["AML.TA0000", "AML.TA0005"])
    assert hit.rules_fired == ("and-conditions", "notify-security")
    low_conf = evaluate(playbook, detection(confidence=0.79), tactics=["AML.TA0005"])
    no_tactic = evaluate(playbook, detection(confidence=0.9), tactics=["AML.TA0000"])
    assert low_conf.rules_fired == ("notify-security",)
    assert no_tactic.rules_fired == ("notify-security",)


def test_high_risk_wins_over_low_for_the_same_key_and_channel_param_is_target() -> None:
    plan = evaluate(pb(SEMANTICS), detection(), tactics=["AML.TA0005"])
    assert [a.key for a in plan.actions] == ["block_api_key:k-1", "notify:#sec"]
    block = plan.actions[0]
    assert block.risk == "high"
    assert block.rule == "notify-security"
    verdict = explain(pb(SEMANTICS), detection(), tactics=["AML.TA0005"])[1]
    assert any("high risk replaces" in reason for reason in verdict.reasons)


def test_low_risk_does_not_replace_high() -> None:
    playbook = pb("""
        name: p
        rules:
          - name: first
            when: {severity_at_least: info}
            actions: [{type: disable_user, risk: high}]
          - name: second
            when: {severity_at_least: info}
            actions: [{type: disable_user, risk: low, duration: 1d}]
            allow_irreversible_low_risk: true
        """)
    plan = evaluate(playbook, detection())
    assert len(plan.actions) == 1
    assert (plan.actions[0].risk, plan.actions[0].rule) == ("high", "first")
    assert plan.actions[0].duration_seconds is None


def test_any_is_ored_and_combined_with_siblings() -> None:
    playbook = pb("""
        name: p
        rules:
          - name: r
            when:
              severity_at_least: medium
              any:
                - techniques: ["AML.T0057"]
                - repeat_count_at_least: 5
            actions: [{type: open_ticket, risk: low}]
        """)
    assert evaluate(playbook, detection("AML.T0057", "high")).rules_fired == ("r",)
    assert evaluate(playbook, detection("AML.T0001", "high"), repeat_count=5).rules_fired == ("r",)
    assert evaluate(playbook, detection("AML.T0001", "high"), repeat_count=4).rules_fired == ()
    # the sibling condition still applies
    assert evaluate(playbook, detection("AML.T0057", "low")).rules_fired == ()


def test_explain_reports_why_each_rule_matched_or_failed() -> None:
    verdicts = explain(default_playbook(), detection("AML.T0051.001", "low"), repeat_count=1)
    by_name = {v.name: v for v in verdicts}
    assert [v.name for v in verdicts] == [r.name for r in default_playbook().rules]
    injection = by_name["contain-prompt-injection"]
    assert injection.fired is False
    assert injection.reasons == ("severity low is below medium",)
    assert injection.actions == ()
    escalation = by_name["escalate-compromised-identity"]
    assert not escalation.fired
    assert "none of any matched" in escalation.reasons[0]
    assert "repeat count 1 is below 3" in escalation.reasons[0]

    fired = explain(default_playbook(), detection("AML.T0051.001", "high"))[0]
    assert fired.fired is True
    assert fired.reasons == (
        "technique AML.T0051.001 matches AML.T0051*",
        "severity high >= medium",
    )
    assert [a.action_type for a in fired.actions] == ["block_session", "open_ticket", "notify"]


def test_unknown_detection_severity_does_not_match_or_raise() -> None:
    verdict = explain(default_playbook(), detection("AML.T0051", "severe"))[0]
    assert not verdict.fired
    assert verdict.reasons == ("severity 'severe' is not a known severity",)


# -- loading errors, each with the line of the offending node ------------------------------

# Lines once loaded: 1 name, 2 rules, 3 "- name", 4 when, 5 techniques, 6 actions,
# 7 "- type", 8 risk, 9 duration.
VALID_RULE = """
name: p
rules:
  - name: r
    when:
      techniques: ["AML.T0051*"]
    actions:
      - type: block_session
        risk: low
        duration: 15m
"""


def test_valid_rule_loads_with_parsed_values() -> None:
    playbook = pb(VALID_RULE)
    (rule,) = playbook.rules
    assert rule.when.techniques == ("AML.T0051*",)
    (action,) = rule.actions
    assert (action.action_type, action.risk, action.duration_seconds) == (
        "block_session",
        Risk.low,
        900,
    )
    assert rule.line == 3


def test_error_message_format() -> None:
    error = load_error("""
        name: p
        rules:
          - name: r
            when:
              severity_at_least: severe
            actions: [{type: notify, risk: low}]
        """)
    assert str(error) == (
        "playbook.yaml line 5: rules[0].when.severity_at_least: "
        "'severe' is not one of info, low, medium, high, critical"
    )
    assert (error.line, error.path) == (5, "rules[0].when.severity_at_least")
    assert isinstance(error, ValueError)


def sub(old: str, new: str) -> str:
    """VALID_RULE with one edit; the lines of VALID_RULE are listed above it."""
    assert old in VALID_RULE
    return VALID_RULE.replace(old, new)


def cond(line: str) -> str:
    """VALID_RULE with an extra condition on line 5 (techniques moves to line 6)."""
    return sub("      techniques:", f"      {line}\n      techniques:")


A0 = "rules[0].actions[0]"
W0 = "rules[0].when"
BAD_YAML = "name: p\nrules:\n  - name: r\n    when: {techniques: [AML.T0051}\n"

# id: (playbook text, expected line, expected path, fragment of the reason)
INVALID: dict[str, tuple[str, int, str, str]] = {
    "invalid-yaml": (BAD_YAML, 4, "", "invalid YAML"),
    "empty-document": ("", 1, "", "empty"),
    "empty-rules": ("name: p\nrules: []\n", 2, "rules", "at least one"),
    "null-rules": ("name: p\nrules:\n", 2, "rules", "expected a list"),
    "no-rules": ("name: p\n", 1, "", "missing required key 'rules'"),
    "unknown-top-key": (VALID_RULE.lstrip() + "colour: blue\n", 10, "colour", "unknown key"),
    "unknown-condition-key": (
        sub("techniques:", "technique:"),
        5,
        f"{W0}.technique",
        "unknown key",
    ),
    "unknown-action-key": (
        sub("duration: 15m", "duration: 15m\n        ttl: 1"),
        10,
        f"{A0}.ttl",
        "unknown key",
    ),
    "bad-duration": (sub("15m", "15 minutes"), 9, f"{A0}.duration", "not a duration"),
    "duration-without-unit": (sub("15m", "900"), 9, f"{A0}.duration", "no unit"),
    "zero-duration": (sub("15m", "0m"), 9, f"{A0}.duration", "positive"),
    "duration-on-notify": (sub("block_session", "notify"), 9, f"{A0}.duration", "not temporary"),
    "bad-risk": (sub("risk: low", "risk: medium"), 8, f"{A0}.risk", "'medium' is not one of low"),
    "missing-risk": (sub("        risk: low\n", ""), 7, A0, "missing required key 'risk'"),
    "duplicate-yaml-key": (
        sub("risk: low\n", "risk: low\n        risk: high\n"),
        9,
        f"{A0}.risk",
        "duplicate key",
    ),
    "bad-type": (sub("block_session", "shutdown_model"), 7, f"{A0}.type", "is not one of"),
    "params-list": (
        sub("15m", "15m\n        params: {a: [1]}"),
        10,
        f"{A0}.params.a",
        "a single value",
    ),
    "confidence-high": (
        cond("confidence_at_least: 1.5"),
        5,
        f"{W0}.confidence_at_least",
        "outside 0..1",
    ),
    "confidence-negative": (
        cond("confidence_at_least: -0.1"),
        5,
        f"{W0}.confidence_at_least",
        "outside 0..1",
    ),
    "confidence-bool": (
        cond("confidence_at_least: yes"),
        5,
        f"{W0}.confidence_at_least",
        "expected a number",
    ),
    "repeat-zero": (cond("repeat_count_at_least: 0"), 5, f"{W0}.repeat_count_at_least", ">= 1"),
    "empty-patterns": (sub('["AML.T0051*"]', "[]"), 5, f"{W0}.techniques", "at least one"),
    "empty-when": (sub('techniques: ["AML.T0051*"]', "{}"), 5, W0, "at least one condition"),
}


@pytest.mark.parametrize(("text", "line", "path", "fragment"), INVALID.values(), ids=INVALID)
def test_invalid_playbooks_are_refused_with_line(
    text: str, line: int, path: str, fragment: str
) -> None:
    error = load_error(text)
    assert error.line == line, str(error)
    assert error.path == path, str(error)
    assert fragment in error.reason, str(error)
    assert str(error).startswith(f"playbook.yaml line {line}: ")


def test_duplicate_rule_names_point_at_the_second_name() -> None:
    error = load_error("""
        name: p
        rules:
          - name: same
            when: {severity_at_least: low}
            actions: [{type: notify, risk: low}]
          - name: same
            when: {severity_at_least: high}
            actions: [{type: open_ticket, risk: low}]
        """)
    assert error.line == 6
    assert error.path == "rules[1].name"
    assert "duplicate rule name 'same' (first defined on line 3)" in error.reason


def test_errors_inside_any_carry_their_line() -> None:
    error = load_error("""
        name: p
        rules:
          - name: r
            when:
              any:
                - severity_at_least: high
                - repeat_count: 3
            actions: [{type: notify, risk: low}]
        """)
    assert (error.line, error.path) == (7, "rules[0].when.any[1].repeat_count")


def test_load_playbook_from_file_names_the_file(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(textwrap.dedent(VALID_RULE), encoding="utf-8")
    assert load_playbook(good).source == str(good)
    assert load_playbook(str(good)).rules[0].name == "r"

    bad = tmp_path / "bad.yaml"
    bad.write_text("name: p\nrules:\n  - name: r\n    when: {severity_at_least: x}\n")
    # Two problems (the severity, and no `actions`), one line each in the order of the file.
    with pytest.raises(PlaybookError, match=rf"(?m)^{bad} line 4: rules\[0\]\.when"):
        load_playbook(bad)

    with pytest.raises(PlaybookError, match="cannot read"):
        load_playbook(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("text", "seconds"), [("30s", 30), ("15m", 900), ("4h", 14400), ("1d", 86400)]
)
def test_parse_duration(text: str, seconds: int) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["366d", "99999999999d", "9" * 5000 + "s", "0m"])
def test_a_duration_out_of_range_is_refused(text: str) -> None:
    # (A year of seconds at most: more would overflow the column or a timedelta in containment.)
    with pytest.raises(ValueError, match="duration"):
        parse_duration(text)


def test_playbook_types_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        default_playbook().name = "x"  # type: ignore[misc]
