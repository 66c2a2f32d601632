"""Playbook evaluation: pure functions from (playbook, detection, context) to a Plan.

No I/O, no clock, no randomness, so workflow code can call `evaluate` deterministically.

- Every rule whose `when` holds fires and contributes its actions, in playbook order.
- The target of an action comes from the detection (its subject, or its evidence: see the
  action's definition in `soar.actions`); an action whose target the detection lacks is
  skipped.
- Actions are deduplicated on `PlannedAction.key`: the first one wins, except that a
  high-risk action replaces a low-risk one with the same key (the safer reading: a human
  must approve it), keeping the first one's place in the plan.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fnmatch import fnmatchcase

from soar import actions
from soar.domain import DetectionFacts, Plan, PlannedAction, Risk, Severity
from soar.policy.playbook import Condition, Playbook, Rule

__all__ = ["RuleVerdict", "evaluate", "explain"]


@dataclass(frozen=True)
class RuleVerdict:
    """Why a rule fired or not. `reasons` says what matched (fired) or which conditions
    failed (not fired), followed by notes on skipped or deduplicated actions.
    `actions` are the actions this rule asked for, before deduplication."""

    name: str
    fired: bool
    reasons: tuple[str, ...]
    actions: tuple[PlannedAction, ...] = ()


def evaluate(
    playbook: Playbook,
    detection: DetectionFacts,
    *,
    tactics: Sequence[str] = (),
    repeat_count: int = 1,
) -> Plan:
    plan, _ = _run(playbook, detection, tactics, repeat_count)
    return plan


def explain(
    playbook: Playbook,
    detection: DetectionFacts,
    *,
    tactics: Sequence[str] = (),
    repeat_count: int = 1,
) -> list[RuleVerdict]:
    _, verdicts = _run(playbook, detection, tactics, repeat_count)
    return verdicts


@dataclass(frozen=True)
class _Facts:
    technique: str
    tactics: tuple[str, ...]
    severity: str
    confidence: float
    repeat_count: int


def _run(
    playbook: Playbook, detection: DetectionFacts, tactics: Sequence[str], repeat_count: int
) -> tuple[Plan, list[RuleVerdict]]:
    facts = _Facts(
        technique=detection.technique.upper(),
        tactics=tuple(t.upper() for t in tactics),
        severity=detection.severity,
        confidence=detection.confidence,
        repeat_count=repeat_count,
    )
    planned: dict[str, PlannedAction] = {}  # insertion order is plan order
    fired: list[str] = []
    verdicts: list[RuleVerdict] = []
    for rule in playbook.rules:
        matched, reasons = _match(rule.when, facts)
        if not matched:
            verdicts.append(RuleVerdict(rule.name, False, tuple(reasons)))
            continue
        fired.append(rule.name)
        asked, notes = _plan_rule(rule, detection, planned)
        verdicts.append(RuleVerdict(rule.name, True, tuple(reasons + notes), asked))
    return Plan(actions=tuple(planned.values()), rules_fired=tuple(fired)), verdicts


def _plan_rule(
    rule: Rule, detection: DetectionFacts, planned: dict[str, PlannedAction]
) -> tuple[tuple[PlannedAction, ...], list[str]]:
    """Resolves the rule's actions and merges them into `planned` (mutated)."""
    asked: list[PlannedAction] = []
    notes: list[str] = []
    for spec in rule.actions:
        definition = actions.definition(spec.action_type)
        target = definition.target_of(detection, spec.params)
        if target is None:
            notes.append(f"skipped {spec.action_type}: {definition.missing(spec.params)}")
            continue
        action = PlannedAction(
            action_type=spec.action_type,
            risk=spec.risk.value,
            target=target.value,
            params=target.params,  # a copy: the playbook is shared between evaluations
            duration_seconds=spec.duration_seconds,
            rule=rule.name,
        )
        asked.append(action)
        earlier = planned.get(action.key)
        if earlier is None:
            planned[action.key] = action
        elif earlier.risk == Risk.low and action.risk == Risk.high:
            planned[action.key] = action
            notes.append(
                f"{action.key}: high risk replaces the low-risk one from rule {earlier.rule!r}"
            )
        else:
            notes.append(f"{action.key}: already planned by rule {earlier.rule!r}")
    return tuple(asked), notes


def _match(cond: Condition, facts: _Facts) -> tuple[bool, list[str]]:
    """(holds, reasons): the reasons for success when it holds, else the failures."""
    passed: list[str] = []
    failed: list[str] = []

    def check(ok: bool, reason: str) -> None:
        (passed if ok else failed).append(reason)

    if cond.techniques is not None:
        hit = next((p for p in cond.techniques if fnmatchcase(facts.technique, p)), None)
        if hit is not None:
            check(True, f"technique {facts.technique} matches {hit}")
        else:
            check(
                False, f"technique {facts.technique} matches none of {', '.join(cond.techniques)}"
            )
    if cond.tactics is not None:
        pair = next(
            ((t, p) for t in facts.tactics for p in cond.tactics if fnmatchcase(t, p)), None
        )
        if pair is not None:
            check(True, f"tactic {pair[0]} matches {pair[1]}")
        else:
            have = ", ".join(facts.tactics) or "none"
            check(False, f"tactics ({have}) match none of {', '.join(cond.tactics)}")
    if cond.severity_at_least is not None:
        want = cond.severity_at_least
        try:
            rank: int | None = Severity(facts.severity).rank
        except ValueError:
            rank = None
        if rank is None:
            check(False, f"severity {facts.severity!r} is not a known severity")
        else:
            check(
                rank >= want.rank,
                f"severity {facts.severity} "
                f"{'>=' if rank >= want.rank else 'is below'} {want.value}",
            )
    if cond.confidence_at_least is not None:
        ok = facts.confidence >= cond.confidence_at_least
        check(
            ok,
            f"confidence {facts.confidence:g} "
            f"{'>=' if ok else 'is below'} {cond.confidence_at_least:g}",
        )
    if cond.repeat_count_at_least is not None:
        ok = facts.repeat_count >= cond.repeat_count_at_least
        check(
            ok,
            f"repeat count {facts.repeat_count} "
            f"{'>=' if ok else 'is below'} {cond.repeat_count_at_least}",
        )
    if cond.any_of:
        sub_failures: list[str] = []
        for index, sub in enumerate(cond.any_of):
            ok, reasons = _match(sub, facts)
            if ok:
                check(True, f"any[{index}]: {'; '.join(reasons)}")
                break
            sub_failures.append(f"[{index}] {'; '.join(reasons)}")
        else:
            check(False, f"none of any matched: {' | '.join(sub_failures)}")
    return (not failed, failed or passed)
