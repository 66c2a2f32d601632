"""The action registry: one definition per action type, read by everything that names one."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from approvals import slack_blocks
from soar import actions
from soar.actions.base import API_KEY, BLOCK, SESSION, USER, ActionDefinition, Enforcement
from soar.actions.registry import _check
from soar.domain import DECIDER_ROLES, DetectionFacts, Risk, Subject
from soar.enforcement import EnforcementStatus
from soar.gateway import Block, BlockTable
from soar.policy import PlaybookError, load_playbook_text
from soar.policy.playbook import risk_notes

BUILT_IN = {"block_session", "block_api_key", "revoke_api_key", "disable_user", "notify"}


def det(**subject: str) -> DetectionFacts:
    return DetectionFacts(
        "d-1",
        "AML.T0051",
        "high",
        0.9,
        "gw",
        "2026-11-21T10:00:00Z",
        Subject(tenant="acme", **subject),
        model="gpt-x",
    )


def test_every_module_is_registered_under_its_own_name() -> None:
    assert BUILT_IN | {"open_ticket"} <= set(actions.names())
    for name, a in actions.ACTIONS.items():
        assert a.name == name and a.label and a.past and a.description
        assert a.executor in ("enforcement", "notice", "ticket")
        assert not (a.temporary and a.irreversible), name
        assert set(a.hook_events) <= {"applied", "lifted"}
        assert ("lifted" in a.hook_events) == a.temporary, name


def test_one_label_table_for_the_ui_and_slack() -> None:
    # The web UI's Jinja global and Slack's Block Kit read the same labels.
    from approvals.web import _env

    for name in actions.names():
        assert slack_blocks.action_label(name) == _env.globals["action_label"](name)
    assert actions.label("block_api_key") == "Block API key"
    assert actions.label("retired_action") == "Retired action"  # an old row still reads


def test_enforcement_kinds_are_the_store_kinds_of_before() -> None:
    kinds = {n: a.enforcement.stored_kind({}) for n, a in actions.ACTIONS.items() if a.enforcement}
    assert {k: kinds[k] for k in BUILT_IN - {"notify"}} == {
        "block_session": "session",
        "block_api_key": "api_key",
        "revoke_api_key": "api_key",
        "disable_user": "user",
    }
    assert {"notify", "open_ticket"}.isdisjoint(actions.enforcement_types())
    assert actions.kind_of_path("api-keys") is API_KEY and actions.kind_of_path("nope") is None


def test_targets_come_from_the_detection() -> None:
    session = actions.definition("block_session")
    found = session.target_of(det(session="s-9"), {})
    assert found is not None and found.value == "s-9"
    assert session.target_of(det(user="u-1"), {}) is None
    assert session.missing({}) == "the subject has no session"
    channel = actions.definition("notify").target_of(det(), {"channel": "#sec"})
    assert channel is not None and channel.value == "#sec"


def test_a_definition_with_several_target_kinds_records_the_one_chosen() -> None:
    a = ActionDefinition(
        name="mute",
        label="Mute",
        past="Muted",
        description="-",
        default_risk=Risk.low,
        executor="enforcement",
        target="subject",
        enforcement=Enforcement(BLOCK, (USER, API_KEY, SESSION)),
    )
    first = a.target_of(det(session="s-9", api_key="k-1"), {})
    assert first is not None and (first.value, first.params) == ("k-1", {"target_kind": "api_key"})
    chosen = a.target_of(det(session="s-9", api_key="k-1"), {"target_kind": "session"})
    assert chosen is not None and chosen.value == "s-9"
    assert a.target_of(det(user="u-1"), {"target_kind": "session"}) is None
    assert a.missing({}) == "the subject has none of user, api_key, session"
    assert a.param_errors({"target_kind": "tenant"}) == [
        ("target_kind", "'tenant' is not one of user, api_key, session")
    ]
    assert (
        a.enforcement is not None and a.enforcement.stored_kind({"target_kind": "user"}) == "user"
    )


def test_a_bad_definition_stops_the_registry() -> None:
    with pytest.raises(ValueError, match="exactly one of enforcement and resolve"):
        ActionDefinition("x", "X", "X", "-", Risk.low, "notice", "t")
    long_effect = ActionDefinition(
        name="x",
        label="X",
        past="X",
        description="-",
        default_risk=Risk.low,
        executor="enforcement",
        target="session",
        enforcement=Enforcement(actions.Effect("slow_down_a_lot", "slowed"), (SESSION,)),
    )
    with pytest.raises(ValueError, match="does not fit the store"):
        _check({"x": long_effect})


def test_a_playbook_names_only_registered_types_and_params_they_take() -> None:
    text = """
name: p
rules:
  - name: r
    when: {severity_at_least: info}
    actions:
      - {type: revoke_api_key, risk: low}
    allow_irreversible_low_risk: true
"""
    playbook = load_playbook_text(text, "p.yaml")
    (note,) = risk_notes(playbook)
    assert "revoke_api_key runs with risk low" in note and note.startswith("line 7:")
    with pytest.raises(PlaybookError, match="is not one of block_api_key, block_session"):
        load_playbook_text(text.replace("revoke_api_key", "shutdown"), "p.yaml")


def test_block_table_keeps_milder_effects_apart_from_blocks() -> None:
    until = datetime.now(UTC) + timedelta(minutes=5)
    t = BlockTable()
    t.add(Block("a-1", "throttle:session", "acme", "s-9", until, "inc-1", "AML.T0051"))
    assert t.lookup("session", "s-9", "acme") is None  # a throttle is not a block
    assert list(t.effects("session", "s-9", "acme")) == ["throttle"]
    t.add(Block("a-2", "session", "acme", "s-9", None, "inc-2", "AML.T0051"))
    assert list(t.effects("session", "s-9", "acme")) == ["block", "throttle"]
    status = EnforcementStatus("session", t.effects("session", "s-9", "acme")).as_json()
    assert status["blocked"] is True and status["effect"] == "block"
    assert status["until"] is None and status["reason"] == {
        "incident_id": "inc-2",
        "technique": "AML.T0051",
    }


def test_the_decider_roles_are_defined_once() -> None:
    from approvals import principals, web_auth
    from workflows import incident

    assert {"approver", "admin"} == DECIDER_ROLES
    assert incident.DECIDER_ROLES is DECIDER_ROLES
    assert principals.DECIDER_ROLES is DECIDER_ROLES and web_auth.DECIDER_ROLES is DECIDER_ROLES
