"""NVIDIA NeMo Guardrails: a generation response with its log of activated rails.

Shape (``nemoguardrails/rails/llm/options.py``: ``GenerationResponse``, ``GenerationLog``,
``ActivatedRail``), from ``rails.generate(..., options={"log": {"activated_rails": True}})``
or the server's ``/v1/chat/completions`` with the same options::

    {"response": [...], "log": {"activated_rails": [
        {"type": "input"|"output"|"dialog"|"retrieval"|..., "name": "<flow name>",
         "decisions": [str], "executed_actions": [...], "stop": bool, ...}], "stats": {...}}}

Nothing detected (None): no activated rail stopped the generation (``stop`` true, or a
decision ``"stop"`` / ``"refuse to respond"``). Each stopping rail is mapped by the first entry
of :data:`NAMES` whose key occurs in its flow name (lower case); an unknown input or dialog rail
maps to ``AML.T0051``, low, an unknown retrieval rail to ``AML.T0051.001``, medium.
Fact-checking and hallucination rails judge quality, not attacks, and are not mapped. NeMo gives
no score: confidence 0.8 (0.4 for unknown rails).
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

FORMAT: Final = "nemo-guardrails"

# (substring of the flow name, technique or None (not an attack), severity)
NAMES: Final[tuple[tuple[str, str | None, Severity], ...]] = (
    ("jailbreak", "AML.T0054", "high"),
    ("prompt injection", "AML.T0051.000", "high"),
    ("injection detection", "AML.T0050", "high"),
    ("sensitive data", "AML.T0057", "medium"),
    ("mask sensitive", "AML.T0057", "medium"),
    ("pii", "AML.T0057", "medium"),
    ("self check input", "AML.T0051.000", "medium"),
    ("content safety", "AML.T0048.002", "medium"),
    ("llama guard", "AML.T0048.002", "medium"),
    ("moderation", "AML.T0048.002", "medium"),
    ("self check output", "AML.T0048.002", "medium"),
    ("topic safety", "AML.T0054", "low"),
    ("fact", None, "info"),
    ("hallucination", None, "info"),
    ("grounding", None, "info"),
)
_STOP_DECISIONS: Final = frozenset({"stop", "refuse to respond", "bot refuse to respond"})


def _stopped(rail: Any, path: str) -> bool:
    if "stop" in rail and get_bool(rail["stop"], field(path, "stop")):
        return True
    if "decisions" in rail and rail["decisions"] is not None:
        dp = field(path, "decisions")
        decisions = get_list(rail["decisions"], dp)
        for i, d in enumerate(decisions):
            if get_str(d, field(dp, i), 1024).strip().lower() in _STOP_DECISIONS:
                return True
    return False


def _mapped(rtype: str, name: str) -> MappedFinding | None:
    low = name.lower()
    for key, technique, severity in NAMES:
        if key in low:
            if technique is None:
                return None
            return MappedFinding(technique, severity, 0.8, label(name), label(rtype))
    if rtype == "retrieval":
        return MappedFinding("AML.T0051.001", "medium", 0.4, label(name), label(rtype))
    return MappedFinding("AML.T0051", "low", 0.4, label(name), label(rtype))


def map_result(result: Any) -> MappedFinding | None:
    obj = get_mapping(result, ROOT)
    log_path = field(ROOT, "log")
    log = get_mapping(required(obj, "log", ROOT), log_path)
    rails_path = field(log_path, "activated_rails")
    rails = get_list(required(log, "activated_rails", log_path), rails_path)
    candidates: list[MappedFinding] = []
    for i, item in enumerate(rails):
        p = field(rails_path, i)
        rail = get_mapping(item, p)
        rtype = get_str(required(rail, "type", p), field(p, "type"), 64)
        name = get_str(required(rail, "name", p), field(p, "name"), 1024)
        if _stopped(rail, p):
            m = _mapped(rtype, name)
            if m is not None:
                candidates.append(m)
    return pick(candidates)
