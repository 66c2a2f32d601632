"""Lakera Guard: the answer of ``POST /v2/guard``.

Shape (docs.lakera.ai, "Guard API Endpoint" and the v2 API reference)::

    {"flagged": bool,
     "metadata": {"request_uuid": str},
     "breakdown": [{"project_id", "policy_id", "detector_id", "detector_type",
                    "detected": bool, "message_id"}],          # when "breakdown": true
     "payload": [{"start", "end", "text", "detector_type", "labels", "message_id"}],
     "dev_info": {...}}

Nothing detected (None): ``flagged`` false. Otherwise every breakdown entry with
``detected: true`` (or, without a breakdown, every payload entry) is mapped by its
``detector_type``: exact name first, then its prefix before ``/`` (:data:`TABLE`); the most
serious one wins. Flagged with neither list: ``AML.T0051`` (medium, confidence 0.5), since
Lakera's default policy flags prompt attacks first. Confidence: 0.9 for a detected entry, or
from a ``confidence`` level ``L1`` (0.95) .. ``L5`` (0.3) when the entry carries one.
"""

from __future__ import annotations

from typing import Any, Final

from soar.detect.adapters._base import (
    ROOT,
    MappedFinding,
    Severity,
    field,
    get_bool,
    get_list,
    get_mapping,
    get_str,
    label,
    pick,
    required,
)

FORMAT: Final = "lakera-guard"

TABLE: Final[dict[str, tuple[str, Severity]]] = {
    "prompt_attack": ("AML.T0051", "high"),
    "prompt_injection": ("AML.T0051.000", "high"),
    "jailbreak": ("AML.T0054", "high"),
    "pii": ("AML.T0057", "medium"),
    "pii/credit_card": ("AML.T0057", "high"),
    "pii/iban_code": ("AML.T0057", "high"),
    "pii/us_social_security_number": ("AML.T0057", "high"),
    "moderated_content": ("AML.T0048.002", "medium"),
    "content_moderation": ("AML.T0048.002", "medium"),
    "unknown_links": ("AML.T0077", "medium"),
}
UNMAPPED: Final[tuple[str, Severity]] = ("AML.T0051", "low")
LEVELS: Final = {"l1": 0.95, "l2": 0.85, "l3": 0.7, "l4": 0.5, "l5": 0.3}


def _entry(item: Any, path: str, need_detected: bool) -> MappedFinding | None:
    obj = get_mapping(item, path)
    if need_detected and not get_bool(required(obj, "detected", path), field(path, "detected")):
        return None
    dtype = get_str(required(obj, "detector_type", path), field(path, "detector_type"), 256)
    key = dtype.strip().lower()
    technique, severity = TABLE.get(key) or TABLE.get(key.split("/", 1)[0]) or UNMAPPED
    confidence = 0.9 if (key in TABLE or key.split("/", 1)[0] in TABLE) else 0.5
    if "confidence" in obj:
        level = get_str(obj["confidence"], field(path, "confidence"), 16).lower()
        confidence = LEVELS.get(level[:2], confidence)
    return MappedFinding(technique, severity, confidence, label(dtype), FORMAT)


def map_result(result: Any) -> MappedFinding | None:
    obj = get_mapping(result, ROOT)
    flagged = get_bool(required(obj, "flagged", ROOT), field(ROOT, "flagged"))
    candidates: list[MappedFinding] = []
    for key, need in (("breakdown", True), ("payload", False)):
        if key not in obj or obj[key] is None:
            continue
        path = field(ROOT, key)
        for i, item in enumerate(get_list(obj[key], path)):
            m = _entry(item, field(path, i), need)
            if m is not None:
                candidates.append(m)
        if candidates:
            break
    if not flagged:
        return None
    return pick(candidates) or MappedFinding("AML.T0051", "medium", 0.5, "flagged", FORMAT)
