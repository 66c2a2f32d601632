"""LlamaFirewall (Meta PurpleLlama): a ``ScanResult``.

Shape, ``LlamaFirewall/src/llamafirewall/llamafirewall_data_types.py``::

    {"decision": "allow" | "human_in_the_loop_required" | "block",
     "reason": str, "score": float, "status": "success" | "error" | "skipped"}

``decision`` may also be given as the enum name (``"BLOCK"``, ``"ScanDecision.BLOCK"``).
Nothing detected (None): ``allow``. The scanner behind a decision is recognised from the
``reason`` text its scanner writes (``scanners/*.py``): :data:`REASONS`; when
``LlamaFirewall.scan`` combined several scanners the reason reads ``ScannerType.X: ... - score:
s; ...`` (the parts in no fixed order: ``"; ".join(set(reasons))``).

The reason holds attacker-written text: PromptGuard copies the whole prompt into it (``Full
text: "..."``), the hidden-ASCII scanner the decoded hidden text, the alignment check the
model's reading of the trace. So nothing in it may lower what a finding is: every scanner it
names (a ``ScannerType.X:`` part, or a scanner's own wording from :data:`REASONS`) is a
candidate, and the most severe candidate is the finding (ties: the one named first, since text
copied into a part comes after that part's own start). A part whose text starts with "No "
("No prompt injection detected") is a scanner that found nothing and is no candidate (no
scanner's finding text starts so). The scores written in the reason are not read: text in it
can forge them. So text in the reason can raise a finding's severity, never lower it, and can
change its technique only by raising it. The reason itself is never stored: only the
scanner's name. ``block`` keeps the table's severity, ``human_in_the_loop_required`` is at most
medium. Confidence: ``score``.
"""

from __future__ import annotations

import re
from typing import Any, Final

from soar.detect.adapters._base import (
    ROOT,
    FindingInvalid,
    MappedFinding,
    Severity,
    field,
    get_mapping,
    get_number,
    get_str,
    required,
)

FORMAT: Final = "llamafirewall"

# (scanner, how its reason starts or what it contains (lower case), technique, severity)
REASONS: Final[tuple[tuple[str, str, str, Severity], ...]] = (
    ("prompt_guard", "likely to be a prompt injection", "AML.T0051.000", "high"),
    ("hidden_ascii", "hidden ascii", "AML.T0068", "high"),
    ("code_shield", "unsafe function call", "AML.T0050", "medium"),
    ("regex", "regex match: prompt injection", "AML.T0051.000", "medium"),
    ("regex", "regex match: email", "AML.T0057", "medium"),
    ("regex", "regex match: phone", "AML.T0057", "medium"),
    ("regex", "regex match: credit card", "AML.T0057", "high"),
    ("regex", "regex match: social security", "AML.T0057", "high"),
    ("regex", "regex match", "AML.T0051", "low"),
    ("pii_detection", "pii", "AML.T0057", "medium"),
    ("agent_alignment", "conclusion", "AML.T0051.001", "high"),
    ("agent_alignment", "alignment", "AML.T0051.001", "high"),
)
# ScannerType name (combined reasons) -> the scanner key above
SCANNER_TYPES: Final[dict[str, tuple[str, Severity]]] = {
    "PROMPT_GUARD": ("AML.T0051.000", "high"),
    "HIDDEN_ASCII": ("AML.T0068", "high"),
    "CODE_SHIELD": ("AML.T0050", "medium"),
    "AGENT_ALIGNMENT": ("AML.T0051.001", "high"),
    "PII_DETECTION": ("AML.T0057", "medium"),
    "REGEX": ("AML.T0051", "low"),
}
UNMAPPED: Final[tuple[str, Severity]] = ("AML.T0051", "low")
_DECISIONS: Final = ("allow", "human_in_the_loop_required", "block")
_PART = re.compile(r"ScannerType\.([A-Z_]{1,40}): ")
_RANK: Final[dict[str, int]] = {"low": 0, "medium": 1, "high": 2, "critical": 3}
_MAX_REASON: Final = 65_536


def _decision(raw: str, path: str) -> str:
    value = raw.strip().lower().removeprefix("scandecision.")
    if value not in _DECISIONS:
        raise FindingInvalid(path, f"expected one of {', '.join(_DECISIONS)}")
    return value


def map_result(result: Any) -> MappedFinding | None:
    obj = get_mapping(result, ROOT)
    decision = _decision(
        get_str(required(obj, "decision", ROOT), field(ROOT, "decision"), 64),
        field(ROOT, "decision"),
    )
    score = get_number(required(obj, "score", ROOT), field(ROOT, "score"), -1.0, 1.0)
    reason = get_str(obj.get("reason", ""), field(ROOT, "reason"), 65_536)
    if "status" in obj:
        status = get_str(obj["status"], field(ROOT, "status"), 64).lower()
        if status.removeprefix("scanstatus.") not in ("success", "error", "skipped"):
            raise FindingInvalid(field(ROOT, "status"), "expected success, error or skipped")
    if decision == "allow":
        return None
    scanner, technique, severity = _classify(reason)
    if decision == "human_in_the_loop_required" and severity in ("high", "critical"):
        severity = "medium"
    confidence = round(min(1.0, max(0.0, score)), 4)
    return MappedFinding(technique, severity, confidence, scanner, decision)


def _classify(reason: str) -> tuple[str, str, Severity]:
    """The most severe scanner the reason names (see the module docstring), as (scanner,
    technique, severity); ("unknown", ...) when it names none."""
    text = reason[:_MAX_REASON]
    low = text.lower()
    # (-rank, where, scanner, technique, severity): the smallest wins
    candidates: list[tuple[int, int, str, str, Severity]] = []
    # the parts of scanners that found nothing, up to their score: their words ("No PII
    # detected") name no finding
    nothing: list[tuple[int, int]] = []
    for m in _PART.finditer(text):
        if low.startswith("no ", m.end()):
            end = low.find(" - score: ", m.end())
            nothing.append((m.start(), end if end >= 0 else len(low)))
            continue
        technique, severity = SCANNER_TYPES.get(m.group(1), UNMAPPED)
        candidates.append((-_RANK[severity], m.start(), m.group(1).lower(), technique, severity))
    for scanner, marker, technique, severity in REASONS:
        at = low.find(marker)
        while at >= 0 and any(a <= at < b for a, b in nothing):
            at = low.find(marker, at + 1)
        if at >= 0:
            candidates.append((-_RANK[severity], at, scanner, technique, severity))
    if not candidates:
        return "unknown", *UNMAPPED
    _, _, scanner, technique, severity = min(candidates)
    return scanner, technique, severity
