"""The ATLAS technique IDs that rule packs and adapter mapping tables may name.

The built-in catalog (:mod:`soar.atlas.builtin`) plus the few techniques the detectors need that
it does not hold yet. Every ID here exists in MITRE ATLAS 5.6.0 (tests/unit/test_detect.py
checks them against the reference ATLAS.yaml when it is present).
"""

from __future__ import annotations

from typing import Final

from soar.atlas import BUILTIN_CATALOG

__all__ = ["ADDED_TECHNIQUES", "KNOWN_TECHNIQUES", "technique_name"]

# ID -> name, from ATLAS 5.6.0 (github.com/mitre-atlas/atlas-data, Apache-2.0, (c) MITRE).
ADDED_TECHNIQUES: Final[dict[str, str]] = {
    "AML.T0050": "Command and Scripting Interpreter",
    "AML.T0068": "LLM Prompt Obfuscation",
    "AML.T0077": "LLM Response Rendering",
}

KNOWN_TECHNIQUES: Final[frozenset[str]] = frozenset(
    {t.id for t in BUILTIN_CATALOG.techniques} | set(ADDED_TECHNIQUES)
)

_NAMES: Final[dict[str, str]] = {
    **{t.id: t.name for t in BUILTIN_CATALOG.techniques},
    **ADDED_TECHNIQUES,
}


def technique_name(technique: str) -> str:
    """The ATLAS name of ``technique`` ("" when unknown); sub-techniques get "Parent: Sub"."""
    name = _NAMES.get(technique, "")
    if "." in technique[4:]:
        parent = _NAMES.get(technique.rsplit(".", 1)[0], "")
        if parent and name:
            return f"{parent}: {name}"
    return name
