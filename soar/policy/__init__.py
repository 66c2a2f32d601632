"""The response policy: YAML playbooks (see `soar.policy.playbook` for the format) and their
pure evaluation into a `soar.domain.Plan`."""

from __future__ import annotations

from soar.policy.engine import RuleVerdict, evaluate, explain
from soar.policy.playbook import (
    ActionSpec,
    Condition,
    KnownIds,
    Playbook,
    PlaybookError,
    Rule,
    default_playbook,
    load_playbook,
    load_playbook_text,
    parse_duration,
)

__all__ = [
    "ActionSpec",
    "Condition",
    "KnownIds",
    "Playbook",
    "PlaybookError",
    "Rule",
    "RuleVerdict",
    "default_playbook",
    "evaluate",
    "explain",
    "load_playbook",
    "load_playbook_text",
    "parse_duration",
]
