"""Amazon Bedrock Guardrails: the answer of ``ApplyGuardrail``.

Shape (Bedrock Runtime API reference, ``ApplyGuardrail``; botocore's service model
``bedrock-runtime/2023-09-30``)::

    {"action": "GUARDRAIL_INTERVENED" | "NONE", "actionReason": str,
     "outputs": [{"text"}], "usage": {...}, "guardrailCoverage": {...},
     "assessments": [{
        "topicPolicy": {"topics": [{"name", "type": "DENY", "action": "BLOCKED"|"NONE",
                                    "detected"}]},
        "contentPolicy": {"filters": [{"type": "INSULTS"|"HATE"|"SEXUAL"|"VIOLENCE"|
                                       "MISCONDUCT"|"PROMPT_ATTACK",
                                       "confidence": "NONE"|"LOW"|"MEDIUM"|"HIGH",
                                       "filterStrength", "action", "detected"}]},
        "wordPolicy": {"customWords": [{"match", "action", "detected"}],
                       "managedWordLists": [{"match", "type": "PROFANITY", "action"}]},
        "sensitiveInformationPolicy": {"piiEntities": [{"match", "type", "action"}],
                                       "regexes": [{"name", "match", "regex", "action"}]},
        "contextualGroundingPolicy": {"filters": [...]}, ...}]}

Nothing detected (None): ``action`` ``NONE``. Otherwise every entry whose ``action`` is not
``NONE`` (or that says ``detected: true``) is mapped (:data:`CONTENT`, :data:`PII`); the most
serious wins. Contextual grounding and automated reasoning judge answer quality, not attacks:
they are not mapped, and an intervention only they caused is answered as nothing detected.
The ``match`` values (the sensitive text itself) are never stored.
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
    get_str,
    label,
    pick,
    required,
)

FORMAT: Final = "bedrock-guardrails"

CONTENT: Final[dict[str, tuple[str, Severity]]] = {
    "PROMPT_ATTACK": ("AML.T0051", "high"),
    "HATE": ("AML.T0048.002", "medium"),
    "INSULTS": ("AML.T0048.002", "low"),
    "SEXUAL": ("AML.T0048.002", "medium"),
    "VIOLENCE": ("AML.T0048.002", "medium"),
    "MISCONDUCT": ("AML.T0048.002", "medium"),
}
CONFIDENCE: Final = {"NONE": 0.2, "LOW": 0.4, "MEDIUM": 0.7, "HIGH": 0.9}
_HIGH_PII: Final = frozenset(
    {
        "AWS_ACCESS_KEY",
        "AWS_SECRET_KEY",
        "PASSWORD",
        "CREDIT_DEBIT_CARD_NUMBER",
        "CREDIT_DEBIT_CARD_CVV",
        "US_SOCIAL_SECURITY_NUMBER",
        "INTERNATIONAL_BANK_ACCOUNT_NUMBER",
        "US_BANK_ACCOUNT_NUMBER",
        "PIN",
    }
)

TOPIC: Final[tuple[str, Severity]] = ("AML.T0054", "low")
WORDS: Final[tuple[str, Severity]] = ("AML.T0048.002", "low")
_ACTIONS: Final = ("GUARDRAIL_INTERVENED", "NONE")


def _acted(obj: Any, path: str) -> bool:
    action = get_str(required(obj, "action", path), field(path, "action"), 64)
    detected = get_bool(obj["detected"], field(path, "detected")) if "detected" in obj else False
    return action != "NONE" or detected


def _items(policy: Any, path: str, key: str) -> list[tuple[str, Any]]:
    if key not in policy or policy[key] is None:
        return []
    p = field(path, key)
    return [
        (field(p, i), get_mapping(x, field(p, i))) for i, x in enumerate(get_list(policy[key], p))
    ]


def _assessment(a: Any, path: str) -> list[MappedFinding]:
    obj = get_mapping(a, path)
    out: list[MappedFinding] = []
    if obj.get("contentPolicy") is not None:
        pp = field(path, "contentPolicy")
        for p, f in _items(get_mapping(obj["contentPolicy"], pp), pp, "filters"):
            if not _acted(f, p):
                continue
            ftype = get_str(required(f, "type", p), field(p, "type"), 64)
            technique, severity = CONTENT.get(ftype, ("AML.T0051", "low"))
            level = f.get("confidence", "MEDIUM")
            level = get_str(level, field(p, "confidence"), 16)
            out.append(
                MappedFinding(
                    technique, severity, CONFIDENCE.get(level, 0.5), label(ftype), "contentPolicy"
                )
            )
    if obj.get("topicPolicy") is not None:
        pp = field(path, "topicPolicy")
        for p, t in _items(get_mapping(obj["topicPolicy"], pp), pp, "topics"):
            if _acted(t, p):
                name = get_str(required(t, "name", p), field(p, "name"), 256)
                out.append(MappedFinding(*TOPIC, 0.6, label(name), "topicPolicy"))
    if obj.get("wordPolicy") is not None:
        pp = field(path, "wordPolicy")
        policy = get_mapping(obj["wordPolicy"], pp)
        for key in ("customWords", "managedWordLists"):
            for p, w in _items(policy, pp, key):
                if _acted(w, p):
                    out.append(MappedFinding(*WORDS, 0.6, key, "wordPolicy"))
    if obj.get("sensitiveInformationPolicy") is not None:
        pp = field(path, "sensitiveInformationPolicy")
        policy = get_mapping(obj["sensitiveInformationPolicy"], pp)
        for p, e in _items(policy, pp, "piiEntities"):
            if _acted(e, p):
                etype = get_str(required(e, "type", p), field(p, "type"), 64)
                pii_severity: Severity = "high" if etype in _HIGH_PII else "medium"
                out.append(
                    MappedFinding("AML.T0057", pii_severity, 0.8, label(etype), "piiEntities")
                )
        for p, r in _items(policy, pp, "regexes"):
            if _acted(r, p):
                name = get_str(r.get("name", "regex"), field(p, "name"), 256)
                out.append(MappedFinding("AML.T0057", "medium", 0.7, label(name), "regexes"))
    return out


def map_result(result: Any) -> MappedFinding | None:
    obj = get_mapping(result, ROOT)
    action = get_str(required(obj, "action", ROOT), field(ROOT, "action"), 64)
    if action not in _ACTIONS:
        raise FindingInvalid(field(ROOT, "action"), "expected GUARDRAIL_INTERVENED or NONE")
    path = field(ROOT, "assessments")
    assessments = get_list(required(obj, "assessments", ROOT), path)
    candidates = [m for i, a in enumerate(assessments) for m in _assessment(a, field(path, i))]
    if action == "NONE":
        return None
    return pick(candidates)
