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
        allow_irreversible_low_risk: true  # optional (default false): the rule may run an
                                         #   irreversible action (revoke_api_key) or one
                                         #   that locks a person out (disable_user) with
                                         #   risk: low, i.e. without an approval

Every mistake is refused at load time with a `PlaybookError` naming the source, the line of
the offending node and the path to it, e.g.
``playbook.yaml line 14: rules[2].when.severity_at_least: 'severe' is not one of info, ...``;
a file with several mistakes is refused with all of them (`PlaybookError.problems`, one line
each, in the order of the file). Unknown keys, duplicate mapping keys and duplicate rule
names are errors too: a typo in a security policy must never silently turn a rule off. With
`known` (the loaded ATLAS catalog's IDs), a technique or tactic pattern that matches none of
them is an error as well (`AML.T9051*`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from importlib import resources
from pathlib import Path

from yaml.nodes import MappingNode, Node

from soar import actions
from soar.atlas.parse import Catalog
from soar.domain import Risk, Severity
from soar.yamlnodes import NodeError, NodeParser, Recorded, compose, line_of, read_text

DEFAULT_PLAYBOOK_RESOURCE = "default_playbook.yaml"

_DURATION_RE = re.compile(r"^\s*(\d{1,12})\s*([smhd])\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}

_TOP_KEYS = ("name", "description", "rules")
OPT_IN = "allow_irreversible_low_risk"
_RULE_KEYS = (
    "name",
    "description",
    "when",
    "actions",
    "approvers",
    "quorum",
    "escalate_to",
    OPT_IN,
)
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


class PlaybookError(NodeError):
    """An invalid playbook. `line` is 1-based (None when the file could not be read).

    A playbook with several mistakes is refused with all of them: `problems` lists each (one
    line of `str()` each, in the order of the file); `line`, `path` and `reason` are those of
    the first."""


@dataclass(frozen=True)
class KnownIds:
    """The ATLAS IDs technique and tactic patterns are checked against: each pattern must
    match at least one of them. `source` says which catalog, for the messages."""

    techniques: frozenset[str]
    tactics: frozenset[str]
    source: str

    @classmethod
    def of(cls, catalog: Catalog, source: str) -> KnownIds:
        return cls(
            techniques=frozenset(t.id.upper() for t in catalog.techniques),
            tactics=frozenset(t.id.upper() for t in catalog.tactics),
            source=source,
        )


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


def load_playbook(path: str | Path, *, known: KnownIds | None = None) -> Playbook:
    """The playbook in a file. `known`: check technique and tactic patterns against these
    IDs (None: not checked)."""
    text = read_text(path, PlaybookError, "the playbook")
    return load_playbook_text(text, str(path), known=known)


def load_playbook_text(
    text: str, source: str = "<playbook>", *, known: KnownIds | None = None
) -> Playbook:
    root = compose(text, source, PlaybookError, "the playbook")
    return _Parser(source, known).playbook(root)


@lru_cache(maxsize=1)
def default_playbook() -> Playbook:
    """The built-in playbook, shipped as package data."""
    text = resources.files("soar.policy").joinpath(DEFAULT_PLAYBOOK_RESOURCE).read_text("utf-8")
    return load_playbook_text(text, DEFAULT_PLAYBOOK_RESOURCE)


# A block, an approval window or a repeat window longer than a year is a typo; far larger
# ones would overflow the database's integer column or a timedelta at containment.
MAX_DURATION_SECONDS = 365 * 86400


def parse_duration(text: str) -> int:
    """'15m' -> 900. Raises ValueError on anything else."""
    match = _DURATION_RE.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a duration like 30s, 15m, 4h or 1d")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if seconds <= 0:
        raise ValueError(f"{text!r}: a duration must be positive")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"{text!r}: a duration must be at most 365d")
    return seconds


class _Parser(NodeParser[PlaybookError]):
    """Walks the composed node tree, building the dataclasses. A mistake is recorded and the
    walk goes on with the next value, so that one run names every problem; `playbook`
    raises them all at the end as one PlaybookError."""

    def __init__(self, source: str, known: KnownIds | None = None) -> None:
        super().__init__(source, PlaybookError)
        self.known = known

    # -- schema ----------------------------------------------------------------------------

    def playbook(self, root: Node) -> Playbook:
        fields = self.mapping(root, "", _TOP_KEYS)
        name = self.attempt(lambda: self.string(self.require(fields, "name", root, ""), "name"))
        description = (
            self.attempt(lambda: self.string(fields["description"], "description"))
            if "description" in fields
            else ""
        )
        rules: list[Rule] = []
        seen: dict[str, int] = {}
        rule_nodes = self.attempt(
            lambda: self.sequence(self.require(fields, "rules", root, ""), "rules", "rules")
        )
        for index, rule_node in enumerate(rule_nodes or ()):
            rule = self.attempt(self.rule, rule_node, f"rules[{index}]", seen)
            if rule is not None:
                rules.append(rule)
        self.raise_problems()
        assert name is not None
        return Playbook(
            name=name, rules=tuple(rules), source=self.source, description=description or ""
        )

    def rule(self, node: Node, path: str, seen: dict[str, int]) -> Rule | None:
        """The rule, or None when it has a problem (recorded). `seen`: rule name -> line."""
        before = len(self.problems)
        fields = self.mapping(node, path, _RULE_KEYS)
        name = self.attempt(
            lambda: self.string(self.require(fields, "name", node, path), f"{path}.name")
        )
        if name is not None and name in seen:
            self.problem(
                fields["name"],
                f"{path}.name",
                f"duplicate rule name {name!r} (first defined on line {seen[name]})",
            )
        elif name is not None:
            seen[name] = line_of(node)
        description = (
            self.attempt(lambda: self.string(fields["description"], f"{path}.description"))
            if "description" in fields
            else ""
        )
        when = self.attempt(
            lambda: self.condition(self.require(fields, "when", node, path), f"{path}.when")
        )
        action_nodes = self.attempt(
            lambda: self.sequence(
                self.require(fields, "actions", node, path), f"{path}.actions", "actions"
            )
        )
        parsed: list[tuple[int, Node, ActionSpec]] = []
        for index, action_node in enumerate(action_nodes or ()):
            spec = self.attempt(self.action, action_node, f"{path}.actions[{index}]")
            if spec is not None:
                parsed.append((index, action_node, spec))
        specs = [spec for _, _, spec in parsed]
        # With an action left out by a mistake, what the rule asks approvers for is unknown.
        complete = action_nodes is not None and len(specs) == len(action_nodes)
        approval = self.attempt(lambda: self.approval(fields, tuple(specs), path, complete))
        self.irreversible_low_risk(fields, parsed, path, complete)
        if len(self.problems) > before:
            return None
        assert name is not None and when is not None and approval is not None
        approvers, quorum, escalate_to = approval
        return Rule(
            name=name,
            when=when,
            actions=tuple(specs),
            description=description or "",
            line=line_of(node),
            approvers=approvers,
            quorum=quorum,
            escalate_to=escalate_to,
        )

    def irreversible_low_risk(
        self,
        fields: dict[str, Node],
        parsed: list[tuple[int, Node, ActionSpec]],
        path: str,
        complete: bool,
    ) -> None:
        """An action nothing can undo (or that locks a person out) runs without an approval
        only when the rule says so in so many words. `parsed`: (index, node, spec) of the
        actions that loaded; `complete`: all of them did."""
        allowed = False
        if OPT_IN in fields:
            allowed = bool(self.attempt(self.boolean, fields[OPT_IN], f"{path}.{OPT_IN}"))
        guarded = [
            (index, node, spec)
            for index, node, spec in parsed
            if spec.risk == Risk.low and actions.definition(spec.action_type).must_be_approved
        ]
        if allowed and complete and not guarded:
            self.problem(
                fields[OPT_IN],
                f"{path}.{OPT_IN}",
                "the rule runs no irreversible action with risk: low (nothing to allow)",
            )
        if allowed:
            return
        for index, node, spec in guarded:
            definition = actions.definition(spec.action_type)
            what = "is irreversible" if definition.irreversible else "locks a person out"
            self.problem(
                node,
                f"{path}.actions[{index}].risk",
                f"{spec.action_type} {what}: risk: low would run it without an approval; "
                f"use risk: high, or set {OPT_IN}: true on the rule if that is meant",
            )

    def approval(
        self,
        fields: dict[str, Node],
        actions: tuple[ActionSpec, ...],
        path: str,
        complete: bool = True,
    ) -> tuple[tuple[str, ...], int, str | None]:
        """The rule's `approvers`, `quorum` and `escalate_to`."""
        given = [k for k in _APPROVAL_KEYS if k in fields]
        if given and complete and not any(a.risk == Risk.high for a in actions):
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
            quorum = self.whole_number(fields["quorum"], f"{path}.quorum", 1, MAX_QUORUM)
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
        before = len(self.problems)
        fields = self.mapping(node, path, _CONDITION_KEYS)
        if not fields and len(self.problems) == before:
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
            techniques = self.attempt(
                lambda: self.patterns(fields["techniques"], f"{path}.techniques", "technique")
            )
        if "tactics" in fields:
            tactics = self.attempt(
                lambda: self.patterns(fields["tactics"], f"{path}.tactics", "tactic")
            )
        if "severity_at_least" in fields:
            chosen = self.attempt(
                lambda: self.choice(
                    fields["severity_at_least"],
                    f"{path}.severity_at_least",
                    [s.value for s in Severity],
                )
            )
            severity = Severity(chosen) if chosen is not None else None
        if "confidence_at_least" in fields:
            confidence = self.attempt(lambda: self.confidence(fields["confidence_at_least"], path))
        if "repeat_count_at_least" in fields:
            repeat = self.attempt(
                self.whole_number,
                fields["repeat_count_at_least"],
                f"{path}.repeat_count_at_least",
                1,
            )
        if "any" in fields:
            subs = self.attempt(lambda: self.sequence(fields["any"], f"{path}.any", "conditions"))
            parsed = [
                self.attempt(self.condition, sub, f"{path}.any[{index}]")
                for index, sub in enumerate(subs or ())
            ]
            any_of = tuple(c for c in parsed if c is not None)
        if len(self.problems) > before:
            # The caller must not build a rule on a partial condition.
            raise Recorded
        return Condition(
            techniques=techniques,
            tactics=tactics,
            severity_at_least=severity,
            confidence_at_least=confidence,
            repeat_count_at_least=repeat,
            any_of=any_of,
            line=line_of(node),
        )

    def confidence(self, node: Node, path: str) -> float:
        value = self.number(node, f"{path}.confidence_at_least")
        if not 0.0 <= value <= 1.0:
            raise self.error(node, f"{path}.confidence_at_least", f"{value:g} is outside 0..1")
        return value

    def patterns(self, node: Node, path: str, kind: str) -> tuple[str, ...]:
        """Technique or tactic patterns; with a catalog, each must match one of its IDs."""
        before = len(self.problems)
        out: list[str] = []
        for index, item in enumerate(self.sequence(node, path, "patterns")):
            # ATLAS ids are upper case; normalising here makes the match case-insensitive.
            text = self.attempt(self.string, item, f"{path}[{index}]")
            if text is None:
                continue
            pattern = text.upper()
            if self.known is not None:
                ids = self.known.techniques if kind == "technique" else self.known.tactics
                if not any(fnmatchcase(i, pattern) for i in ids):
                    self.problem(
                        item,
                        f"{path}[{index}]",
                        f"{pattern!r} matches no {kind} in {self.known.source}",
                    )
                    continue
            out.append(pattern)
        if len(self.problems) > before:
            raise Recorded
        return tuple(out)

    def action(self, node: Node, path: str) -> ActionSpec:
        before = len(self.problems)
        fields = self.mapping(node, path, _ACTION_KEYS)
        action_type = self.attempt(
            lambda: self.choice(
                self.require(fields, "type", node, path), f"{path}.type", actions.names()
            )
        )
        definition = actions.definition(action_type) if action_type is not None else None
        # Risk is required: defaulting either way would hide whether a human must approve.
        chosen = self.attempt(
            lambda: self.choice(
                self.require(fields, "risk", node, path), f"{path}.risk", [r.value for r in Risk]
            )
        )
        duration_seconds = None
        if "duration" in fields and definition is not None:
            duration_seconds = self.attempt(
                lambda: self.duration(fields["duration"], f"{path}.duration", definition)
            )
        params: dict[str, str] = {}
        if "params" in fields:
            params = self.attempt(lambda: self.params(fields["params"], path, definition)) or {}
        if len(self.problems) > before:
            raise Recorded
        assert action_type is not None and chosen is not None
        return ActionSpec(
            action_type=action_type,
            risk=Risk(chosen),
            duration_seconds=duration_seconds,
            params=params,
            line=line_of(node),
        )

    def duration(self, node: Node, path: str, definition: actions.ActionDefinition) -> int:
        if not definition.temporary:
            temporary = [a.name for a in actions.ACTIONS.values() if a.temporary]
            raise self.error(
                node,
                path,
                f"{definition.name} is not temporary; duration only applies to "
                + ", ".join(sorted(temporary)),
            )
        raw = self.scalar(node, path)
        try:
            if not isinstance(raw, str):
                raise ValueError(f"{raw!r} has no unit; write it like 30s, 15m, 4h or 1d")
            return parse_duration(raw)
        except ValueError as exc:
            raise self.error(node, path, str(exc)) from exc

    def params(
        self, node: Node, path: str, definition: actions.ActionDefinition | None
    ) -> dict[str, str]:
        if not isinstance(node, MappingNode):
            raise self.error(node, f"{path}.params", "expected a mapping of strings")
        params: dict[str, str] = {}
        for key_node, value_node in node.value:
            key = self.string(key_node, f"{path}.params")
            value_path = f"{path}.params.{key}"
            if key in params:
                raise self.error(key_node, value_path, "duplicate key")
            value = self.scalar(value_node, value_path)
            if value is None or isinstance(value, list | dict):
                raise self.error(value_node, value_path, "expected a string value")
            # The source text, so `on: yes` stays "yes" rather than becoming "True".
            params[key] = str(value_node.value)
        for key, reason in definition.param_errors(params) if definition else ():
            raise self.error(node, f"{path}.params.{key}", reason)
        return params


def risk_notes(playbook: Playbook) -> list[str]:
    """Where a rule runs without approval an action whose definition asks for one, and where
    it asks an approver to revoke an API key without blocking the key in the meantime."""
    notes = [
        f"line {spec.line}: rule {rule.name!r}: {spec.action_type} runs with risk low, "
        "without an approval (its default risk is high)"
        for rule in playbook.rules
        for spec in rule.actions
        if spec.risk == Risk.low and actions.definition(spec.action_type).default_risk == Risk.high
    ]
    for rule in playbook.rules:
        types = {(a.action_type, a.risk) for a in rule.actions}
        revoke = next((a for a in rule.actions if a.action_type == "revoke_api_key"), None)
        if revoke and revoke.risk == Risk.high and ("block_api_key", Risk.low) not in types:
            notes.append(
                f"line {revoke.line}: rule {rule.name!r}: the key stays usable while its "
                "revocation waits for an approver; add {type: block_api_key, risk: low, "
                "duration: 15m} to contain it at once"
            )
    return notes
