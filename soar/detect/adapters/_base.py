"""What every adapter shares: the mapped finding, the error, and typed field access.

An adapter reads one detector's own output (``finding.result`` of the envelope, unchanged) and
returns a :class:`MappedFinding`, or None when the tool reported nothing. The input is
attacker-controlled: every access is checked, sizes are bounded, and an error names the field
(a dotted path inside ``finding.result``) and says what was expected, never echoing its value.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

__all__ = [
    "MAX_ITEMS",
    "FindingInvalid",
    "MappedFinding",
    "Severity",
    "field",
    "get_bool",
    "get_list",
    "get_mapping",
    "get_number",
    "get_str",
    "pick",
]

Severity = Literal["info", "low", "medium", "high", "critical"]
SEVERITY_ORDER: Final = ("info", "low", "medium", "high", "critical")
# More list items or mapping keys than this in one place is refused (bounded work).
MAX_ITEMS: Final = 1000
MAX_LABEL: Final = 64
ROOT: Final = "finding.result"


class FindingInvalid(ValueError):
    """``result`` does not have the shape of the tool's output; ``field`` is a dotted path."""

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class MappedFinding:
    technique: str
    severity: Severity
    confidence: float
    rule: str  # what the tool reported (a scanner, detector or filter), short
    category: str  # the tool's category for it, short


def field(path: str, key: str | int) -> str:
    return f"{path}[{key}]" if isinstance(key, int) else f"{path}.{key}"


def label(value: str) -> str:
    """A tool-given name made safe to store: printable, at most MAX_LABEL characters."""
    clean = "".join(c if c.isprintable() else "?" for c in value[:MAX_LABEL])
    return clean


def get_mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise FindingInvalid(path, "expected an object")
    if len(value) > MAX_ITEMS:
        raise FindingInvalid(path, f"more than {MAX_ITEMS} keys")
    return value


def get_list(value: Any, path: str) -> Sequence[Any]:
    if not isinstance(value, list):
        raise FindingInvalid(path, "expected an array")
    if len(value) > MAX_ITEMS:
        raise FindingInvalid(path, f"more than {MAX_ITEMS} items")
    return value


def get_bool(value: Any, path: str) -> bool:
    if not isinstance(value, bool):
        raise FindingInvalid(path, "expected true or false")
    return value


def get_number(value: Any, path: str, lo: float = 0.0, hi: float = 1.0) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FindingInvalid(path, "expected a number")
    number = float(value)
    if not math.isfinite(number) or not lo <= number <= hi:
        raise FindingInvalid(path, f"expected a number from {lo:g} to {hi:g}")
    return number


def get_str(value: Any, path: str, max_len: int = 4096) -> str:
    if not isinstance(value, str):
        raise FindingInvalid(path, "expected a string")
    if len(value) > max_len:
        raise FindingInvalid(path, f"longer than {max_len} characters")
    return value


def required(obj: Mapping[str, Any], key: str, path: str) -> Any:
    if key not in obj:
        raise FindingInvalid(field(path, key), "required field is missing")
    return obj[key]


def pick(candidates: Sequence[MappedFinding]) -> MappedFinding | None:
    """The most serious candidate: highest severity, then confidence; None when empty."""
    if not candidates:
        return None
    return max(candidates, key=lambda m: (SEVERITY_ORDER.index(m.severity), m.confidence))
