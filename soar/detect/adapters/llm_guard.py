"""LLM Guard (Protect AI): the API's scan answer or the library's ``scan_prompt`` triple.

Accepted ``result`` shapes (github.com/protectai/llm-guard):

* API ``POST /scan/prompt`` / ``/analyze/prompt`` (and ``.../output``), ``llm_guard_api/app/
  schemas.py``: ``{"is_valid": bool, "scanners": {"<Scanner>": risk score}}``, optionally
  ``"sanitized_prompt"`` / ``"sanitized_output"``;
* the library, ``llm_guard/evaluate.py``: ``scan_prompt()`` / ``scan_output()`` return
  ``(sanitized, {"<Scanner>": is_valid}, {"<Scanner>": risk score})``, posted as a JSON array.

Nothing detected (None): ``is_valid`` true, or every scanner valid. Otherwise each failing
scanner (risk score > 0 in the API shape, ``false`` in the triple) is looked up in
:data:`TABLE`; the most serious one wins. Risk scores are in -1..1 (LLM Guard gives -1 for
"certainly fine"); the confidence is the score clipped to 0..1. Quality scanners (``None`` in
the table) are not detections; an unknown scanner maps to ``AML.T0051``, severity low.
"""

from __future__ import annotations

from typing import Any, Final

from soar.detect.adapters._base import (
    ROOT,
    FindingInvalid,
    MappedFinding,
    Severity,
    field,
    get_bool,
    get_list,
    get_mapping,
    get_number,
    label,
    pick,
    required,
)

FORMAT: Final = "llm-guard"

# scanner -> (technique, severity), or None: not a security detection
TABLE: Final[dict[str, tuple[str, Severity] | None]] = {
    "PromptInjection": ("AML.T0051.000", "high"),
    "InvisibleText": ("AML.T0068", "medium"),
    "Secrets": ("AML.T0057", "high"),
    "Anonymize": ("AML.T0057", "low"),
    "Sensitive": ("AML.T0057", "high"),
    "MaliciousURLs": ("AML.T0077", "medium"),
    "NoRefusal": ("AML.T0054", "medium"),
    "Toxicity": ("AML.T0048.002", "medium"),
    "Bias": ("AML.T0048.002", "low"),
    "BanSubstrings": ("AML.T0051.000", "low"),
    "BanTopics": ("AML.T0054", "low"),
    "BanCode": ("AML.T0050", "low"),
    "Code": ("AML.T0050", "low"),
    "BanCompetitors": ("AML.T0048.001", "low"),
    "Regex": ("AML.T0057", "low"),
    "TokenLimit": ("AML.T0034.001", "low"),
    "Gibberish": ("AML.T0043", "low"),
    "Language": None,
    "LanguageSame": None,
    "Sentiment": None,
    "Relevance": None,
    "FactualConsistency": None,
    "ReadingTime": None,
    "JSON": None,
    "URLReachability": None,
    "Deanonymize": None,
}
UNMAPPED: Final[tuple[str, Severity]] = ("AML.T0051", "low")


def _mapped(name: str, score: float) -> MappedFinding | None:
    entry = TABLE.get(name, UNMAPPED)
    if entry is None:
        return None
    technique, severity = entry
    confidence = min(1.0, max(0.0, score))
    if name not in TABLE:
        confidence = min(confidence, 0.5)
    return MappedFinding(technique, severity, round(confidence, 4), label(name), FORMAT)


def map_result(result: Any) -> MappedFinding | None:
    if isinstance(result, list):
        return _map_triple(result)
    obj = get_mapping(result, ROOT)
    valid = get_bool(required(obj, "is_valid", ROOT), field(ROOT, "is_valid"))
    scanners_path = field(ROOT, "scanners")
    scanners = get_mapping(required(obj, "scanners", ROOT), scanners_path)
    scores = {
        str(k): get_number(v, field(scanners_path, str(k)), -1.0, 1.0) for k, v in scanners.items()
    }
    if valid:
        return None
    failing = {k: s for k, s in scores.items() if s > 0}
    candidates = [m for k, s in failing.items() if (m := _mapped(k, s)) is not None]
    if not failing:
        # invalid, but no scanner has a positive risk score: the tool still said "not valid"
        candidates = [m for k in scores if (m := _mapped(k, 0.5)) is not None] or [
            MappedFinding(*UNMAPPED, 0.5, "is_valid", FORMAT)
        ]
    return pick(candidates)


def _map_triple(result: list[Any]) -> MappedFinding | None:
    items = get_list(result, ROOT)
    if len(items) != 3:
        raise FindingInvalid(ROOT, "expected [sanitized, results_valid, results_score]")
    valid_path, score_path = field(ROOT, 1), field(ROOT, 2)
    valid = get_mapping(items[1], valid_path)
    scores = get_mapping(items[2], score_path)
    flags = {str(k): get_bool(v, field(valid_path, str(k))) for k, v in valid.items()}
    numbers = {
        str(k): get_number(v, field(score_path, str(k)), -1.0, 1.0) for k, v in scores.items()
    }
    candidates = [
        m
        for k, ok in flags.items()
        if not ok and (m := _mapped(k, numbers.get(k, 0.5))) is not None
    ]
    return pick(candidates)
