"""quarantine_model, defined in one module: its target is the detection's model, it asks for
an approval by default, gateways ask for it under /v1/enforcement/models/..."""

from __future__ import annotations

from soar import actions
from soar.domain import DetectionFacts, Risk, Subject
from soar.enforcement import EnforcementStatus
from soar.gateway import Block, BlockTable
from soar.policy import evaluate, explain, load_playbook_text
from soar.policy.playbook import risk_notes

PLAYBOOK = """
name: p
rules:
  - name: pull-the-model
    when: {techniques: ["AML.T0018*", "AML.T0020*"]}
    actions:
      - {type: quarantine_model, risk: high}
"""


def det(model: str | None) -> DetectionFacts:
    return DetectionFacts(
        "d-1",
        "AML.T0018",
        "critical",
        0.9,
        "gw",
        "2026-11-21T10:00:00Z",
        Subject("acme", "u-1"),
        model=model,
    )


def test_the_target_is_the_detections_model_and_it_waits_for_approval() -> None:
    playbook = load_playbook_text(PLAYBOOK, "p.yaml")
    (a,) = evaluate(playbook, det("gpt-x")).actions
    assert (a.action_type, a.risk, a.target, a.duration_seconds) == (
        "quarantine_model",
        "high",
        "gpt-x",
        None,
    )
    assert evaluate(playbook, det(None)).actions == ()
    (verdict,) = explain(playbook, det(None))
    assert "skipped quarantine_model: the detection names no model" in verdict.reasons
    definition = actions.definition("quarantine_model")
    assert definition.default_risk == Risk.high and definition.label == "Quarantine model"
    assert (
        "quarantine_model runs with risk low"
        in risk_notes(load_playbook_text(PLAYBOOK.replace("risk: high", "risk: low"), "p.yaml"))[0]
    )


def test_gateways_ask_for_it_under_models() -> None:
    kind = actions.kind_of_path("models")
    assert kind is not None and kind.name == "model"
    definition = actions.definition("quarantine_model")
    assert definition.enforcement is not None
    assert definition.enforcement.stored_kind({}) == "model"
    table = BlockTable()
    table.add(Block("act-1", "model", "acme", "gpt-x", None, "inc-1", "AML.T0018"))
    assert table.lookup("model", "gpt-x", "acme") is not None
    status = EnforcementStatus("model", table.effects("model", "gpt-x", "acme")).as_json()
    assert status["blocked"] is True and status["until"] is None
    assert status["reason"] == {"incident_id": "inc-1", "technique": "AML.T0018"}
