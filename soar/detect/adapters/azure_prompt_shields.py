"""Azure AI Content Safety Prompt Shields: the answer of ``text:shieldPrompt``.

Shape (learn.microsoft.com, "Quickstart: Prompt Shields", api-version 2024-09-01)::

    {"userPromptAnalysis": {"attackDetected": bool},
     "documentsAnalysis": [{"attackDetected": bool}, ...]}

At least one of the two is required. Nothing detected (None): no ``attackDetected: true``.
A user prompt attack is a direct injection or jailbreak (``AML.T0051.000``, high); an attack in
a document is an indirect injection (``AML.T0051.001``, high). The service gives no score:
confidence 0.9. When both are flagged the user prompt's finding is reported (rule
``userPromptAnalysis``), the documents' as ``documentsAnalysis[i]`` otherwise.
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
    required,
)

FORMAT: Final = "azure-prompt-shields"
TABLE: Final[dict[str, tuple[str, Severity, float]]] = {
    "userPromptAnalysis": ("AML.T0051.000", "high", 0.9),
    "documentsAnalysis": ("AML.T0051.001", "high", 0.9),
}


def map_result(result: Any) -> MappedFinding | None:
    obj = get_mapping(result, ROOT)
    if "userPromptAnalysis" not in obj and "documentsAnalysis" not in obj:
        raise FindingInvalid(
            field(ROOT, "userPromptAnalysis"),
            "required field is missing (or documentsAnalysis)",
        )
    user_hit = False
    if obj.get("userPromptAnalysis") is not None:
        path = field(ROOT, "userPromptAnalysis")
        analysis = get_mapping(obj["userPromptAnalysis"], path)
        user_hit = get_bool(
            required(analysis, "attackDetected", path), field(path, "attackDetected")
        )
    doc_hit: int | None = None
    if obj.get("documentsAnalysis") is not None:
        path = field(ROOT, "documentsAnalysis")
        for i, item in enumerate(get_list(obj["documentsAnalysis"], path)):
            p = field(path, i)
            doc = get_mapping(item, p)
            if get_bool(required(doc, "attackDetected", p), field(p, "attackDetected")):
                doc_hit = i if doc_hit is None else doc_hit
    if user_hit:
        technique, severity, confidence = TABLE["userPromptAnalysis"]
        return MappedFinding(technique, severity, confidence, "userPromptAnalysis", FORMAT)
    if doc_hit is not None:
        technique, severity, confidence = TABLE["documentsAnalysis"]
        return MappedFinding(
            technique, severity, confidence, f"documentsAnalysis[{doc_hit}]", FORMAT
        )
    return None
