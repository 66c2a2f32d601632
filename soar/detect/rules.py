"""Rule packs: YAML files of ATLAS-tagged detection rules, validated with line and reason.

A pack::

    pack: prompt-injection          # required, unique among the loaded packs
    description: "..."              # optional
    rules:                          # required, at least one
      - id: pi.ignore-previous      # required, unique among all loaded rules
        technique: AML.T0051.000    # required, an ATLAS technique or sub-technique ID known
                                    #   to the catalog the packs are checked against
        kind: prompt                # prompt | output | both (default prompt)
        score: 0.9                  # required, 0 < score <= 1
        why: "..."                  # required, the explanation shown with a finding
        keywords: [ignore, forget]  # optional: lower-case words (letters and digits, matched
                                    #   as whole words) or phrases (anything else, matched
                                    #   as substrings); a match of the pattern counts only
                                    #   when it holds one of them
        pattern: '...'              # a regular expression (RE2 syntax) run on the normalised
                                    #   (lower-case) text; a literal space in it matches any
                                    #   run of whitespace (spaces_as_whitespace), or
        detector: secrets           # a built-in detector: secrets | pii | invisible |
                                    #   mixed-script | encoded (exactly one of pattern/detector)
        unless: '...'               # optional, with pattern: a match is discarded when this
                                    #   pattern (RE2) also matches at its start (an exception
                                    #   such as "you are now ready", which RE2, having no
                                    #   lookahead, cannot write inside the pattern)
        unless_before: '...'        # optional, with pattern: a match is discarded when this
                                    #   pattern (RE2) matches the text just before it (up to 48
                                    #   bytes, ending where the match starts): an exception
                                    #   such as "trying to ignore ..." (RE2 has no lookbehind)
        group: role-play            # optional: rules of one group (and technique) are one
                                    #   piece of evidence: only the highest score of the group
                                    #   counts, however many of its rules match (see
                                    #   soar.detect.engine.technique_scores)

Patterns are RE2 (:mod:`soar.detect.matcher`): matching is linear in the text for any pattern,
by construction (no backtracking). What RE2 does not have is refused at load time, like any
other mistake: backreferences, lookaround assertions, possessive quantifiers, atomic groups;
so is a pattern whose compiled program is over :data:`soar.detect.matcher.MAX_PROGRAM`
instructions (bounded repetitions are expanded: ``(?:a{0,90}){0,90}`` is too large). The
message names the file, the line and the path, e.g.
``prompt.yaml line 12: rules[3].pattern: lookbehind assertions are not supported (RE2
syntax)``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Final, Literal

from yaml.nodes import Node, SequenceNode

from soar.detect.matcher import PatternError, Regex, spaces_as_whitespace
from soar.yamlnodes import NodeError, NodeParser, compose, line_of, read_text

__all__ = [
    "DETECTORS",
    "Rule",
    "RulePack",
    "RulePackError",
    "builtin_packs",
    "load_pack",
    "load_pack_text",
]

Kind = Literal["prompt", "output", "both"]
DETECTORS: Final = ("secrets", "pii", "invisible", "mixed-script", "encoded")

_TOP_KEYS = ("pack", "description", "rules")
_RULE_KEYS = (
    "id",
    "technique",
    "kind",
    "score",
    "why",
    "keywords",
    "pattern",
    "detector",
    "unless",
    "unless_before",
    "group",
)
_ID_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
_TECHNIQUE_RE = re.compile(r"AML\.T\d{4}(?:\.\d{3})?")
_MAX_PATTERN: Final = 4000
_WORD_RE = re.compile(r"[a-z0-9]+")


class RulePackError(NodeError):
    """An invalid rule pack. ``line`` is 1-based (None when the file could not be read).

    The loader stops at the first mistake: ``problems`` holds just this one."""


@dataclass(frozen=True)
class Rule:
    id: str
    technique: str
    kind: Kind
    score: float
    why: str
    keywords: tuple[str, ...] = ()
    # keywords split for the prefilter: whole words (UTF-8 bytes) and substrings
    words: frozenset[bytes] = frozenset()
    phrases: tuple[str, ...] = ()
    pattern: Regex | None = None
    detector: str | None = None
    unless: Regex | None = None
    # tested on the bytes before a match, anchored at their end (see the pack format)
    unless_before: Regex | None = None
    pack: str = ""
    line: int = 0
    # rules of one group (and technique) count as one piece of evidence
    group: str = ""

    def applies_to(self, kind: str) -> bool:
        return self.kind == "both" or self.kind == kind


@dataclass(frozen=True)
class RulePack:
    name: str
    rules: tuple[Rule, ...]
    source: str
    description: str = ""


def load_pack(path: str | Path, known_techniques: Iterable[str] | None = None) -> RulePack:
    text = read_text(path, RulePackError, "the rule pack")
    return load_pack_text(text, str(path), known_techniques)


def load_pack_text(
    text: str, source: str = "<rules>", known_techniques: Iterable[str] | None = None
) -> RulePack:
    """Parse and validate one pack. ``known_techniques``: the IDs a rule may name (None: any
    well-formed ID)."""
    root = compose(text, source, RulePackError, "the rule pack")
    known = frozenset(known_techniques) if known_techniques is not None else None
    return _Parser(source, known).pack(root)


def package_files(package: str, suffix: str) -> list[tuple[str, str]]:
    """(name, text) of the files of ``package`` ending in ``suffix``, in file name order."""
    folder = resources.files(package)
    entries = sorted(folder.iterdir(), key=lambda e: e.name)
    return [(e.name, e.read_text("utf-8")) for e in entries if e.name.endswith(suffix)]


def builtin_packs(known_techniques: Iterable[str] | None = None) -> tuple[RulePack, ...]:
    """The packs shipped in ``soar/detect/packs/*.yaml``, in file name order."""
    known = tuple(known_techniques) if known_techniques is not None else None
    return tuple(
        load_pack_text(text, name, known)
        for name, text in package_files("soar.detect.packs", ".yaml")
    )


class _Parser(NodeParser[RulePackError]):
    """Raises the first problem, in the wording rule packs have always used."""

    collect = False
    strip = False
    KEY_NOT_STRING = "keys must be strings"
    NOT_SCALAR = "expected a single value"

    def __init__(self, source: str, known: frozenset[str] | None) -> None:
        super().__init__(source, RulePackError)
        self.known = known

    def unknown_key(self, key: str, allowed: tuple[str, ...]) -> str:
        return f"unknown key {key!r} (allowed: {', '.join(allowed)})"

    def missing_key(self, path: str, key: str) -> tuple[str, str]:
        return (f"{path}.{key}" if path else key), "required key is missing"

    def not_a_string(self, value: object) -> str:
        return "expected a non-empty string"

    def regex(self, node: Node, path: str) -> Regex:
        source = self.string(node, path)
        if len(source) > _MAX_PATTERN:
            raise self.error(node, path, f"longer than {_MAX_PATTERN} characters")
        try:
            # a space in a rule matches any run of whitespace (two spaces, a line break)
            return Regex(spaces_as_whitespace(source))
        except PatternError as exc:
            raise self.error(node, path, str(exc)) from exc

    def pack(self, root: Node) -> RulePack:
        fields = self.mapping(root, "", _TOP_KEYS)
        name = self.string(self.require(fields, "pack", root, ""), "pack")
        description = (
            self.string(fields["description"], "description") if "description" in fields else ""
        )
        rules_node = self.require(fields, "rules", root, "")
        if not isinstance(rules_node, SequenceNode) or not rules_node.value:
            raise self.error(rules_node, "rules", "expected a non-empty list of rules")
        rules: list[Rule] = []
        seen: set[str] = set()
        for i, item in enumerate(rules_node.value):
            rule = self.rule(item, f"rules[{i}]", name)
            if rule.id in seen:
                raise self.error(item, f"rules[{i}].id", f"duplicate rule id {rule.id!r}")
            seen.add(rule.id)
            rules.append(rule)
        self.raise_problems()  # none: this parser raises each as found
        return RulePack(name, tuple(rules), self.source, description)

    def rule(self, node: Node, path: str, pack: str) -> Rule:
        fields = self.mapping(node, path, _RULE_KEYS)
        id_node = self.require(fields, "id", node, path)
        rule_id = self.string(id_node, f"{path}.id")
        if not _ID_RE.fullmatch(rule_id):
            raise self.error(id_node, f"{path}.id", "use lower-case letters, digits, '.', '_', '-'")
        tech_node = self.require(fields, "technique", node, path)
        technique = self.string(tech_node, f"{path}.technique")
        if not _TECHNIQUE_RE.fullmatch(technique):
            raise self.error(tech_node, f"{path}.technique", f"{technique!r} is not an ATLAS ID")
        if self.known is not None and technique not in self.known:
            raise self.error(
                tech_node, f"{path}.technique", f"{technique!r} is not in the ATLAS catalog"
            )
        kind = "prompt"
        if "kind" in fields:
            kind = self.string(fields["kind"], f"{path}.kind")
            if kind not in ("prompt", "output", "both"):
                raise self.error(
                    fields["kind"], f"{path}.kind", f"{kind!r} is not one of prompt, output, both"
                )
        score_node = self.require(fields, "score", node, path)
        score = self.scalar(score_node, f"{path}.score")
        if isinstance(score, bool) or not isinstance(score, int | float) or not 0 < score <= 1:
            raise self.error(score_node, f"{path}.score", "expected a number in (0, 1]")
        why = self.string(self.require(fields, "why", node, path), f"{path}.why")
        keywords: tuple[str, ...] = ()
        if "keywords" in fields:
            kw_node = fields["keywords"]
            if not isinstance(kw_node, SequenceNode) or not kw_node.value:
                raise self.error(kw_node, f"{path}.keywords", "expected a non-empty list")
            words = []
            for j, w in enumerate(kw_node.value):
                word = self.string(w, f"{path}.keywords[{j}]")
                if word != word.lower():
                    raise self.error(w, f"{path}.keywords[{j}]", "keywords must be lower case")
                words.append(word)
            keywords = tuple(words)
        if ("pattern" in fields) == ("detector" in fields):
            raise self.error(node, path, "give exactly one of 'pattern' and 'detector'")
        pattern: Regex | None = None
        detector: str | None = None
        unless: Regex | None = None
        unless_before: Regex | None = None
        if "pattern" in fields:
            pattern = self.regex(fields["pattern"], f"{path}.pattern")
            if "unless" in fields:
                unless = self.regex(fields["unless"], f"{path}.unless")
            if "unless_before" in fields:
                before = self.regex(fields["unless_before"], f"{path}.unless_before")
                unless_before = Regex(f"(?:{before.source})\\z")
        else:
            d_node = fields["detector"]
            detector = self.string(d_node, f"{path}.detector")
            if detector not in DETECTORS:
                raise self.error(
                    d_node, f"{path}.detector", f"{detector!r} is not one of {', '.join(DETECTORS)}"
                )
            for key in ("unless", "unless_before"):
                if key in fields:
                    raise self.error(fields[key], f"{path}.{key}", "only a pattern can have one")
        group = ""
        if "group" in fields:
            group = self.string(fields["group"], f"{path}.group")
            if not _ID_RE.fullmatch(group):
                why = "use lower-case letters, digits, '.', '_', '-'"
                raise self.error(fields["group"], f"{path}.group", why)
        return Rule(
            group=group,
            id=rule_id,
            technique=technique,
            kind=kind,  # type: ignore[arg-type]
            score=float(score),
            why=why,
            keywords=keywords,
            words=frozenset(k.encode() for k in keywords if _WORD_RE.fullmatch(k)),
            phrases=tuple(k for k in keywords if not _WORD_RE.fullmatch(k)),
            pattern=pattern,
            detector=detector,
            unless=unless,
            unless_before=unless_before,
            pack=pack,
            line=line_of(node),
        )
