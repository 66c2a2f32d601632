"""LlamaFirewall (Meta PurpleLlama): a ``ScanResult``.

Shape, ``LlamaFirewall/src/llamafirewall/llamafirewall_data_types.py``::

    {"decision": "allow" | "human_in_the_loop_required" | "block",
     "reason": str, "score": float, "status": "success" | "error" | "skipped"}

``decision`` may also be given as the enum name (``"BLOCK"``, ``"ScanDecision.BLOCK"``).
Nothing detected (None): ``allow``. The scanner behind a decision is recognised from the
``reason`` text its scanner writes (``scanners/*.py``): :data:`REASONS`, first match wins; when
``LlamaFirewall.scan`` combined several scanners the reason reads ``ScannerType.X: ... - score:
s; ...`` and the part with the highest score is used. The reason itself (PromptGuard puts the
full prompt text in it) is never stored: only the scanner's name. ``block`` keeps the table's
severity, ``human_in_the_loop_required`` is at most medium. Confidence: ``score``.
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
_PART = re.compile(r"ScannerType\.([A-Z_]{1,40}): .{0,20000}? - score: (-?[0-9.]{1,20})", re.S)


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
    parts = [(float(s), name) for name, s in _PART.findall(reason[:65_536]) if _is_float(s)]
    if parts:
        _, name = max(parts)
        technique, severity = SCANNER_TYPES.get(name, UNMAPPED)
        return name.lower(), technique, severity
    low = reason[:4096].lower()
    for scanner, marker, technique, severity in REASONS:
        if marker in low:
            return scanner, technique, severity
    return "unknown", *UNMAPPED


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True
