"""Response playbooks: the YAML schema and its line-aware loader.

A playbook maps detections to response actions::

    name: default                        # required
    description: "..."                   # optional, free text
    rules:                               # required, at least one rule
      - name: contain-prompt-injection   # required, unique within the playbook
        description: "..."               # optional
        when:                            # required, at least one condition; all are ANDed
          techniques: ["AML.T0051*"]     # fnmatch patterns (*, ?, [..]), case-insensitive;
                                         #   "AML.T0051*" matches AML.T0051 and AML.T0051.000
          tactics: ["AML.TA0005"]        # patterns; match if any tactic of the technique matches
          severity_at_least: medium      # info|low|medium|high|critical
          confidence_at_least: 0.5       # 0..1
          repeat_count_at_least: 3       # detections on this subject within the incident window
          any:                           # at least one of these sub-conditions must hold;
            - {severity_at_least: critical}   # each takes the same keys (nesting allowed)
            - {repeat_count_at_least: 3}
        actions:                         # required, at least one
          - type: block_session          # an action type of soar.actions (one module each)
            risk: low                    # required: low (automatic) | high (needs approval)
            duration: 15m                # optional, <int><s|m|h|d>; only for temporary
                                         #   action types (block_session, disable_user, ...)
            params: {reason: "..."}      # optional, string -> string
                                         #   (notify: `channel`, default "slack"; an action
                                         #   with several target kinds: `target_kind`)
        approvers: [secops-leads]        # optional: only members of these groups (see
                                         #   `soar users group`) may decide the rule's
                                         #   high-risk actions; unset: any approver or admin
        quorum: 2                        # optional, 1..10 (default 1): distinct approvals
                                         #   needed; the first reject ends it
        escalate_to: sre-oncall          # optional: at half the approval timeout this group
                                         #   is notified and may decide too

Every mistake is refused at load time with a `PlaybookError` naming the source, the line of
the offending node and the path to it, e.g.
``playbook.yaml line 14: rules[2].when.severity_at_least: 'severe' is not one of info, ...``.
Unknown keys, duplicate mapping keys and duplicate rule names are errors too: a typo in a
security policy must never silently turn a rule off.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from soar import actions
from soar.domain import Risk, Severity

DEFAULT_PLAYBOOK_RESOURCE = "default_playbook.yaml"

_DURATION_RE = re.compile(r"^\s*(\d+)\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_TOP_KEYS = ("name", "description", "rules")
_RULE_KEYS = ("name", "description", "when", "actions", "approvers", "quorum", "escalate_to")
_APPROVAL_KEYS = ("approvers", "quorum", "escalate_to")
MAX_QUORUM = 10
GROUP_NAME = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
GROUP_NAME_RULE = (
    "lower-case letters, digits and . _ - (at most 64, starting with a letter or digit)"
)
_CONDITION_KEYS = (
    "techniques",
    "tactics",
    "severity_at_least",
    "confidence_at_least",
    "repeat_count_at_least",
    "any",
)
_ACTION_KEYS = ("type", "risk", "duration", "params")


class PlaybookError(ValueError):
    """An invalid playbook. `line` is 1-based (None when the file could not be read)."""

    def __init__(self, source: str, line: int | None, path: str, reason: str) -> None:
        self.source = source
        self.line = line
        self.path = path
        self.reason = reason
        where = source if line is None else f"{source} line {line}"
        super().__init__(f"{where}: {path}: {reason}" if path else f"{where}: {reason}")


@dataclass(frozen=True)
class Condition:
    """Conditions that must all hold; `any_of` holds if at least one sub-condition does.
    A field left as None is not checked."""

    techniques: tuple[str, ...] | None = None
    tactics: tuple[str, ...] | None = None
    severity_at_least: Severity | None = None
    confidence_at_least: float | None = None
    repeat_count_at_least: int | None = None
    any_of: tuple[Condition, ...] = ()
    line: int = 0


@dataclass(frozen=True)
class ActionSpec:
    action_type: str  # a name of soar.actions
    risk: Risk
    duration_seconds: int | None = None
    params: dict[str, str] = field(default_factory=dict)
    line: int = 0


@dataclass(frozen=True)
class Rule:
    name: str
    when: Condition
    actions: tuple[ActionSpec, ...]
    description: str = ""
    line: int = 0
    # Who decides the rule's high-risk actions: members of these groups (empty: anyone with
    # the approver or admin role), how many distinct approvals, who is added at half time.
    approvers: tuple[str, ...] = ()
    quorum: int = 1
    escalate_to: str | None = None

    def approval_summary(self) -> str:
        """What a high-risk action of this rule needs, in one line."""
        count = f"{self.quorum} distinct approvals" if self.quorum > 1 else "1 approval"
        who = " from " + ", ".join(self.approvers) if self.approvers else " from any approver"
        esc = f"; escalates to {self.escalate_to} at half the timeout" if self.escalate_to else ""
        return count + who + esc


@dataclass(frozen=True)
class Playbook:
    name: str
    rules: tuple[Rule, ...]
    source: str
    description: str = ""

    def rule(self, name: str) -> Rule | None:
        return next((r for r in self.rules if r.name == name), None)


def load_playbook(path: str | Path) -> Playbook:
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlaybookError(source, None, "", f"cannot read the playbook: {exc}") from exc
    return load_playbook_text(text, source)


def load_playbook_text(text: str, source: str = "<playbook>") -> Playbook:
    try:
        # compose, not load: the node tree keeps the line of every value.
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "malformed YAML"
        raise PlaybookError(source, line, "", f"invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise PlaybookError(source, None, "", f"invalid YAML: {exc}") from exc
    if root is None:
        raise PlaybookError(source, 1, "", "the playbook is empty")
    return _Parser(source).playbook(root)


@lru_cache(maxsize=1)
def default_playbook() -> Playbook:
    """The built-in playbook, shipped as package data."""
    text = resources.files("soar.policy").joinpath(DEFAULT_PLAYBOOK_RESOURCE).read_text("utf-8")
    return load_playbook_text(text, DEFAULT_PLAYBOOK_RESOURCE)


def parse_duration(text: str) -> int:
    """'15m' -> 900. Raises ValueError on anything else."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 4h or 1d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    return seconds


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


class _Parser:
    """Walks the composed node tree, building the dataclasses or raising PlaybookError."""

    def __init__(self, source: str) -> None:
        self.source = source
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: Node, path: str, reason: str) -> PlaybookError:
        return PlaybookError(self.source, _line(node), path, reason)

    # -- generic node helpers -------------------------------------------------------------

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Node]:
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected a mapping with keys {', '.join(allowed)}")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                raise self.error(key_node, path, "keys must be plain strings")
            key = str(key_node.value)
            key_path = f"{path}.{key}" if path else key
            if key not in allowed:
                raise self.error(key_node, key_path, f"unknown key (allowed: {', '.join(allowed)})")
            if key in out:
                raise self.error(key_node, key_path, "duplicate key")
            out[key] = value_node
        return out

    def require(self, fields: dict[str, Node], key: str, parent: Node, path: str) -> Node:
        if key not in fields:
            raise self.error(parent, path, f"missing required key {key!r}")
        return fields[key]

    def sequence(self, node: Node, path: str, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(node, path, f"expected a list of {what}")
        if not node.value:
            raise self.error(node, path, f"must list at least one of {what}")
        return list(node.value)

    def scalar(self, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            raise self.error(node, path, "expected a single value, not a list or mapping")
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as exc:
            raise self.error(node, path, f"cannot read value: {exc}") from exc

    def string(self, node: Node, path: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, path, f"expected a non-empty string, got {value!r}")
        return value.strip()

    def number(self, node: Node, path: str) -> float:
        value = self.scalar(node, path)
        # bool is an int subclass: `true` must not pass as 1.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(node, path, f"expected a number, got {value!r}")
        return float(value)

    def choice(self, node: Node, path: str, options: list[str]) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or value not in options:
            raise self.error(node, path, f"{value!r} is not one of {', '.join(options)}")
        return value

    # -- schema ----------------------------------------------------------------------------

    def playbook(self, root: Node) -> Playbook:
        fields = self.mapping(root, "", _TOP_KEYS)
        name = self.string(self.require(fields, "name", root, ""), "name")
        description = (
            self.string(fields["description"], "description") if "description" in fields else ""
        )
        rules_node = self.require(fields, "rules", root, "")
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        for index, rule_node in enumerate(self.sequence(rules_node, "rules", "rules")):
            rule = self.rule(rule_node, f"rules[{index}]")
            if rule.name in seen:
                name_node = self.mapping(rule_node, "", _RULE_KEYS)["name"]
                raise self.error(
                    name_node,
                    f"rules[{index}].name",
                    f"duplicate rule name {rule.name!r} (first defined on line {seen[rule.name]})",
                )
            seen[rule.name] = rule.line
            rules.append(rule)
        return Playbook(name=name, rules=tuple(rules), source=self.source, description=description)

    def rule(self, node: Node, path: str) -> Rule:
        fields = self.mapping(node, path, _RULE_KEYS)
        name = self.string(self.require(fields, "name", node, path), f"{path}.name")
        description = (
            self.string(fields["description"], f"{path}.description")
            if "description" in fields
            else ""
        )
        when = self.condition(self.require(fields, "when", node, path), f"{path}.when")
        action_nodes = self.sequence(
            self.require(fields, "actions", node, path), f"{path}.actions", "actions"
        )
        actions = tuple(
            self.action(action_node, f"{path}.actions[{index}]")
            for index, action_node in enumerate(action_nodes)
        )
        approvers, quorum, escalate_to = self.approval(fields, actions, path)
        return Rule(
            name=name,
            when=when,
            actions=actions,
            description=description,
            line=_line(node),
            approvers=approvers,
            quorum=quorum,
            escalate_to=escalate_to,
        )

    def approval(
        self, fields: dict[str, Node], actions: tuple[ActionSpec, ...], path: str
    ) -> tuple[tuple[str, ...], int, str | None]:
        """The rule's `approvers`, `quorum` and `escalate_to`."""
        given = [k for k in _APPROVAL_KEYS if k in fields]
        if given and not any(a.risk == Risk.high for a in actions):
            key = given[0]
            raise self.error(
                fields[key],
                f"{path}.{key}",
                "the rule has no high-risk action to approve (approval rules apply to "
                "actions with risk: high)",
            )
        approvers: list[str] = []
        if "approvers" in fields:
            for index, item in enumerate(
                self.sequence(fields["approvers"], f"{path}.approvers", "groups")
            ):
                group = self.group(item, f"{path}.approvers[{index}]")
                if group in approvers:
                    raise self.error(
                        item, f"{path}.approvers[{index}]", f"duplicate group {group!r}"
                    )
                approvers.append(group)
        quorum = 1
        if "quorum" in fields:
            node = fields["quorum"]
            value = self.scalar(node, f"{path}.quorum")
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or not 1 <= value <= MAX_QUORUM
            ):
                raise self.error(
                    node,
                    f"{path}.quorum",
                    f"expected a whole number 1..{MAX_QUORUM}, got {value!r}",
                )
            quorum = value
        escalate_to = (
            self.group(fields["escalate_to"], f"{path}.escalate_to")
            if "escalate_to" in fields
            else None
        )
        return tuple(approvers), quorum, escalate_to

    def group(self, node: Node, path: str) -> str:
        value = self.string(node, path)
        if not GROUP_NAME.match(value):
            raise self.error(node, path, f"{value!r} is not a group name ({GROUP_NAME_RULE})")
        return value

    def condition(self, node: Node, path: str) -> Condition:
        fields = self.mapping(node, path, _CONDITION_KEYS)
        if not fields:
            # An empty `when` would match every detection; make a catch-all explicit.
            raise self.error(
                node,
                path,
                "needs at least one condition (for a catch-all use severity_at_least: info)",
            )
        techniques = tactics = None
        severity = None
        confidence = None
        repeat = None
        any_of: tuple[Condition, ...] = ()
        if "techniques" in fields:
            techniques = self.patterns(fields["techniques"], f"{path}.techniques")
        if "tactics" in fields:
            tactics = self.patterns(fields["tactics"], f"{path}.tactics")
        if "severity_at_least" in fields:
            severity = Severity(
                self.choice(
                    fields["severity_at_least"],
                    f"{path}.severity_at_least",
                    [s.value for s in Severity],
                )
            )
        if "confidence_at_least" in fields:
            value_node = fields["confidence_at_least"]
            confidence = self.number(value_node, f"{path}.confidence_at_least")
            if not 0.0 <= confidence <= 1.0:
                raise self.error(
                    value_node,
                    f"{path}.confidence_at_least",
                    f"{confidence:g} is outside 0..1",
                )
        if "repeat_count_at_least" in fields:
            value_node = fields["repeat_count_at_least"]
            value = self.scalar(value_node, f"{path}.repeat_count_at_least")
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise self.error(
                    value_node,
                    f"{path}.repeat_count_at_least",
                    f"expected a whole number >= 1, got {value!r}",
                )
            repeat = value
        if "any" in fields:
            subs = self.sequence(fields["any"], f"{path}.any", "conditions")
            any_of = tuple(
                self.condition(sub, f"{path}.any[{index}]") for index, sub in enumerate(subs)
            )
        return Condition(
            techniques=techniques,
            tactics=tactics,
            severity_at_least=severity,
            confidence_at_least=confidence,
            repeat_count_at_least=repeat,
            any_of=any_of,
            line=_line(node),
        )

    def patterns(self, node: Node, path: str) -> tuple[str, ...]:
        items = self.sequence(node, path, "patterns")
        # ATLAS ids are upper case; normalising here makes the match case-insensitive.
        return tuple(
            self.string(item, f"{path}[{index}]").upper() for index, item in enumerate(items)
        )

    def action(self, node: Node, path: str) -> ActionSpec:
        fields = self.mapping(node, path, _ACTION_KEYS)
        type_node = self.require(fields, "type", node, path)
        action_type = self.choice(type_node, f"{path}.type", actions.names())
        definition = actions.definition(action_type)
        # Risk is required: defaulting either way would hide whether a human must approve.
        risk = Risk(
            self.choice(
                self.require(fields, "risk", node, path), f"{path}.risk", [r.value for r in Risk]
            )
        )
        duration_seconds = None
        if "duration" in fields:
            duration_node = fields["duration"]
            if not definition.temporary:
                temporary = [a.name for a in actions.ACTIONS.values() if a.temporary]
                raise self.error(
                    duration_node,
                    f"{path}.duration",
                    f"{action_type} is not temporary; duration only applies to "
                    + ", ".join(sorted(temporary)),
                )
            raw = self.scalar(duration_node, f"{path}.duration")
            try:
                if not isinstance(raw, str):
                    raise ValueError(f"{raw!r} has no unit; write it like 30s, 15m, 4h or 1d")
                duration_seconds = parse_duration(raw)
            except ValueError as exc:
                raise self.error(duration_node, f"{path}.duration", str(exc)) from exc
        params: dict[str, str] = {}
        if "params" in fields:
            params_node = fields["params"]
            if not isinstance(params_node, MappingNode):
                raise self.error(params_node, f"{path}.params", "expected a mapping of strings")
            for key_node, value_node in params_node.value:
                key = self.string(key_node, f"{path}.params")
                value_path = f"{path}.params.{key}"
                if key in params:
                    raise self.error(key_node, value_path, "duplicate key")
                value = self.scalar(value_node, value_path)
                if value is None or isinstance(value, list | dict):
                    raise self.error(value_node, value_path, "expected a string value")
                # The source text, so `on: yes` stays "yes" rather than becoming "True".
                params[key] = str(value_node.value)
            for key, reason in definition.param_errors(params):
                raise self.error(params_node, f"{path}.params.{key}", reason)
        return ActionSpec(
            action_type=action_type,
            risk=risk,
            duration_seconds=duration_seconds,
            params=params,
            line=_line(node),
        )


def risk_notes(playbook: Playbook) -> list[str]:
    """Where a rule runs without approval an action whose definition asks for one."""
    return [
        f"line {spec.line}: rule {rule.name!r}: {spec.action_type} runs with risk low, "
        "without an approval (its default risk is high)"
        for rule in playbook.rules
        for spec in rule.actions
        if spec.risk == Risk.low and actions.definition(spec.action_type).default_risk == Risk.high
    ]
