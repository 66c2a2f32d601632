"""throttle_subject, defined in one module: planned by the example gateway playbook, reported
as a throttle (not a block) by the enforcement answer, and mapped in the OCSF export."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from soar import actions
from soar.atlas.builtin import BUILTIN_CATALOG
from soar.audit import formats
from soar.audit.query import CatalogNames
from soar.domain import DetectionFacts, Subject
from soar.enforcement import EnforcementStatus
from soar.gateway import Block, BlockTable
from soar.policy import PlaybookError, evaluate, load_playbook, load_playbook_text

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "playbooks" / "gateway.yaml"


def det(severity: str = "low", **subject: str) -> DetectionFacts:
    return DetectionFacts(
        "d-1", "AML.T0051", severity, 0.6, "gw", "2026-11-21T10:00:00Z", Subject("acme", **subject)
    )


def test_the_example_playbook_throttles_a_weak_probe_on_its_most_durable_identity() -> None:
    playbook = load_playbook(EXAMPLE)
    plan = evaluate(playbook, det(user="u-42", session="s-9", api_key="k-1"))
    (throttle,) = plan.actions
    assert (throttle.action_type, throttle.risk, throttle.target) == (
        "throttle_subject",
        "low",
        "u-42",
    )
    assert throttle.duration_seconds == 1800 and throttle.params["target_kind"] == "user"
    # No user: the API key; a rule may also name the identity.
    (by_key,) = evaluate(playbook, det(session="s-9", api_key="k-1")).actions
    assert (by_key.target, by_key.params["target_kind"]) == ("k-1", "api_key")
    # Medium severity: blocked and throttled.
    kinds = {a.action_type for a in evaluate(playbook, det("medium", session="s-9")).actions}
    assert {"throttle_subject", "block_session"} <= kinds


def test_a_rule_may_choose_the_identity_and_is_refused_a_wrong_one() -> None:
    text = """
name: p
rules:
  - name: r
    when: {severity_at_least: info}
    actions:
      - {type: throttle_subject, risk: low, duration: 10m, params: {target_kind: session}}
"""
    (a,) = evaluate(load_playbook_text(text), det(user="u-42", session="s-9")).actions
    assert (a.target, a.params["target_kind"]) == ("s-9", "session")
    with pytest.raises(
        PlaybookError, match=r"params\.target_kind: 'tenant' is not one of user, api_key"
    ):
        load_playbook_text(text.replace("target_kind: session", "target_kind: tenant"), "p.yaml")


def test_the_enforcement_answer_says_throttled_not_blocked() -> None:
    definition = actions.definition("throttle_subject")
    assert definition.enforcement is not None
    kind = definition.enforcement.stored_kind({"target_kind": "session"})
    assert kind == "throttle:session"
    until = datetime.now(UTC) + timedelta(minutes=10)
    table = BlockTable()
    table.add(Block("act-1", kind, "acme", "s-9", until, "inc-1", "AML.T0051"))
    status = EnforcementStatus("session", table.effects("session", "s-9", "acme")).as_json()
    assert status == {
        "blocked": False,
        "throttled": True,
        "effect": "throttle",
        "until": until.isoformat(),
        "reason": {"incident_id": "inc-1", "technique": "AML.T0051"},
    }
    clear = EnforcementStatus("user", {}).as_json()
    assert clear["throttled"] is False and clear["blocked"] is False
    # A kind no action throttles carries no flag for it.
    assert "throttled" not in EnforcementStatus("model", {}).as_json()


def test_ocsf_reads_a_throttle_as_a_delay() -> None:
    names = CatalogNames(BUILTIN_CATALOG.version, {}, {}, {})
    row = {
        "seq": 7,
        "event_key": "act-1:applied",
        "at": datetime(2026, 11, 21, tzinfo=UTC),
        "incident_id": "inc-1",
        "tenant": "acme",
        "subject": "user:u-42",
        "event": "action.applied",
        "action": "throttle_subject",
        "actor": "system:atlas-soar",
        "outcome": "applied",
        "technique": "AML.T0051",
        "tactic": "AML.TA0005",
        "details": {"action_id": "act-1", "target": "u-42", "risk": "low"},
        "prev_hash": "0" * 64,
        "hash": "1" * 64,
    }
    event = formats.ocsf_event(row, names)
    assert (event["class_uid"], event["activity_name"]) == (7001, "Isolate")
    assert (event["disposition_id"], event["action"]) == (14, "Modified")
