"""Line-aware YAML loading, shared by the rule-pack and playbook loaders.

A file is composed, not loaded: the node tree keeps the line of every value, so a mistake
is named with the file, the line and the path to the offending node, e.g.
``playbook.yaml line 14: rules[2].when.severity_at_least: 'severe' is not one of ...``.
`NodeParser` walks that tree with the generic helpers (mappings with a fixed set of keys,
lists, strings, numbers, choices, booleans); each loader subclasses it with its own schema.

A parser either collects every problem and raises them all at the end (`collect = True`,
the playbook loader: one run names every mistake) or raises the first (`collect = False`,
the rule-pack loader). The wording of the generic problems is each loader's own (pinned by
its tests, read by its users): a loader that words one differently overrides the
`KEY_NOT_STRING` / `NOT_SCALAR` strings or the `unknown_key` / `missing_key` /
`not_a_string` hooks.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, Self, TypeVar, cast

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

__all__ = ["NodeError", "NodeParser", "Recorded", "compose", "line_of", "read_text"]


class NodeError(ValueError):
    """A mistake in a YAML file. `line` is 1-based (None when the file could not be read).

    An error with several problems carries them all: `problems` lists each (one line of
    `str()` each); `line`, `path` and `reason` are those of the first."""

    def __init__(self, source: str, line: int | None, path: str, reason: str) -> None:
        self.source = source
        self.line = line
        self.path = path
        self.reason = reason
        where = source if line is None else f"{source} line {line}"
        self.message = f"{where}: {path}: {reason}" if path else f"{where}: {reason}"
        self.problems: tuple[Self, ...] = (cast(Self, self),)
        super().__init__(self.message)

    @classmethod
    def of(cls, problems: Sequence[Self]) -> Self:
        """One error carrying every problem (at least one)."""
        first = problems[0]
        if len(problems) == 1:
            return first
        error = cls(first.source, first.line, first.path, first.reason)
        error.problems = tuple(problems)
        error.args = ("\n".join(p.message for p in problems),)
        return error


E = TypeVar("E", bound=NodeError)
_T = TypeVar("_T")


def line_of(node: Node) -> int:
    return int(node.start_mark.line) + 1


def read_text(path: str | Path, error: type[E], what: str) -> str:
    """The file's text; `what` names it in the message ("the playbook")."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise error(str(path), None, "", f"cannot read {what}: {exc}") from exc


def compose(text: str, source: str, error: type[E], what: str) -> Node:
    """The node tree of `text`; malformed YAML or an empty file raises `error`."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark is not None else None
        problem = exc.problem or exc.context or "malformed YAML"
        raise error(source, line, "", f"invalid YAML: {problem}") from exc
    except yaml.YAMLError as exc:
        raise error(source, None, "", f"invalid YAML: {exc}") from exc
    if root is None:
        raise error(source, 1, "", f"{what} is empty")
    return root


class Recorded(Exception):
    """A part has problems, recorded already: the caller leaves it out."""


class NodeParser(Generic[E]):
    """Walks a composed node tree for one file (`source`), raising or recording `error`s."""

    collect: ClassVar[bool] = True
    strip: ClassVar[bool] = True  # `string` returns the value without surrounding blanks
    KEY_NOT_STRING: ClassVar[str] = "keys must be plain strings"
    NOT_SCALAR: ClassVar[str] = "expected a single value, not a list or mapping"

    def __init__(self, source: str, error: type[E]) -> None:
        self.source = source
        self.error_type = error
        self.problems: list[E] = []
        self._constructor = yaml.constructor.SafeConstructor()

    # -- wording hooks --------------------------------------------------------------------

    def unknown_key(self, key: str, allowed: tuple[str, ...]) -> str:
        return f"unknown key (allowed: {', '.join(allowed)})"

    def missing_key(self, path: str, key: str) -> tuple[str, str]:
        """(path, reason) of a required key missing from the mapping at `path`."""
        return path, f"missing required key {key!r}"

    def not_a_string(self, value: object) -> str:
        return f"expected a non-empty string, got {value!r}"

    # -- problems -------------------------------------------------------------------------

    def error(self, node: Node, path: str, reason: str) -> E:
        return self.error_type(self.source, line_of(node), path, reason)

    def problem(self, node: Node, path: str, reason: str) -> None:
        """Record a problem and go on; a parser that does not collect raises it."""
        if not self.collect:
            raise self.error(node, path, reason)
        self.problems.append(self.error(node, path, reason))

    def attempt(self, make: Callable[..., _T], *args: Any) -> _T | None:
        """make(*args), or None with its problems recorded."""
        try:
            return make(*args)
        except self.error_type as exc:
            if not self.collect:
                raise
            self.problems.extend(exc.problems)
            return None
        except Recorded:
            return None

    def raise_problems(self) -> None:
        """Raise every recorded problem as one error, in the order of the file (a stable
        sort: one line's problems as found)."""
        if self.problems:
            raise self.error_type.of(sorted(self.problems, key=lambda p: p.line or 0))

    # -- node helpers ---------------------------------------------------------------------

    def mapping(self, node: Node, path: str, allowed: tuple[str, ...]) -> dict[str, Node]:
        """The known keys of a mapping; unknown, duplicate or non-string keys are problems
        (when collecting, recorded and left out)."""
        if not isinstance(node, MappingNode):
            raise self.error(node, path, f"expected a mapping with keys {', '.join(allowed)}")
        out: dict[str, Node] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                self.problem(key_node, path, self.KEY_NOT_STRING)
                continue
            key = str(key_node.value)
            key_path = f"{path}.{key}" if path else key
            if key not in allowed:
                self.problem(key_node, key_path, self.unknown_key(key, allowed))
            elif key in out:
                self.problem(key_node, key_path, "duplicate key")
            else:
                out[key] = value_node
        return out

    def require(self, fields: dict[str, Node], key: str, parent: Node, path: str) -> Node:
        if key not in fields:
            raise self.error(parent, *self.missing_key(path, key))
        return fields[key]

    def sequence(self, node: Node, path: str, what: str) -> list[Node]:
        if not isinstance(node, SequenceNode):
            raise self.error(node, path, f"expected a list of {what}")
        if not node.value:
            raise self.error(node, path, f"must list at least one of {what}")
        return list(node.value)

    def scalar(self, node: Node, path: str) -> object:
        if not isinstance(node, ScalarNode):
            raise self.error(node, path, self.NOT_SCALAR)
        try:
            return self._constructor.construct_object(node)
        except yaml.YAMLError as exc:
            raise self.error(node, path, f"cannot read value: {exc}") from exc
        except (ValueError, TypeError, OverflowError) as exc:  # e.g. `!!int abc`
            raise self.error(node, path, f"cannot read value {node.value!r} as {node.tag}") from exc

    def string(self, node: Node, path: str) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or not value.strip():
            raise self.error(node, path, self.not_a_string(value))
        return value.strip() if self.strip else value

    def number(self, node: Node, path: str) -> float:
        value = self.scalar(node, path)
        # bool is an int subclass: `true` must not pass as 1.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.error(node, path, f"expected a number, got {value!r}")
        return float(value)

    def whole_number(self, node: Node, path: str, low: int, high: int | None = None) -> int:
        value = self.scalar(node, path)
        if (
            isinstance(value, bool)
            or not isinstance(value, int)
            or value < low
            or (high is not None and value > high)
        ):
            bounds = f">= {low}" if high is None else f"{low}..{high}"
            raise self.error(node, path, f"expected a whole number {bounds}, got {value!r}")
        return value

    def choice(self, node: Node, path: str, options: Sequence[str]) -> str:
        value = self.scalar(node, path)
        if not isinstance(value, str) or value not in options:
            raise self.error(node, path, f"{value!r} is not one of {', '.join(options)}")
        return value

    def boolean(self, node: Node, path: str) -> bool:
        value = self.scalar(node, path)
        if not isinstance(value, bool):
            raise self.error(node, path, f"expected true or false, got {value!r}")
        return value
