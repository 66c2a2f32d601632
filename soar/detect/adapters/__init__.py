"""Adapters: the findings of detectors people already run, mapped to ATLAS.

``map_finding(fmt, result)`` takes the ``finding`` of a detection envelope (CONTRACT.md):
``fmt`` its ``format``, ``result`` the tool's own output, unchanged. It returns a
:class:`MappedFinding` (technique, severity, confidence, and what the tool reported as
``rule`` / ``category``), or None when the tool reported nothing (the intake answers 204).
A result of the wrong shape raises :class:`FindingInvalid` naming the field, a dotted path
inside ``finding.result``; an unknown format raises it for ``finding.format``. Each module
holds its mapping table; docs/detectors.md lists them all with where each shape comes from.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from soar.detect.adapters import (
    azure_prompt_shields,
    bedrock_guardrails,
    lakera_guard,
    llamafirewall,
    llm_guard,
    nemo_guardrails,
)
from soar.detect.adapters._base import FindingInvalid, MappedFinding

__all__ = ["FORMATS", "FindingInvalid", "MappedFinding", "map_finding"]

_MAPPERS: Final[dict[str, Callable[[Any], MappedFinding | None]]] = {
    llm_guard.FORMAT: llm_guard.map_result,
    llamafirewall.FORMAT: llamafirewall.map_result,
    lakera_guard.FORMAT: lakera_guard.map_result,
    azure_prompt_shields.FORMAT: azure_prompt_shields.map_result,
    bedrock_guardrails.FORMAT: bedrock_guardrails.map_result,
    nemo_guardrails.FORMAT: nemo_guardrails.map_result,
}
FORMATS: Final = tuple(_MAPPERS)


def map_finding(fmt: str, result: Any) -> MappedFinding | None:
    mapper = _MAPPERS.get(fmt) if isinstance(fmt, str) else None
    if mapper is None:
        raise FindingInvalid("finding.format", f"expected one of {', '.join(FORMATS)}")
    return mapper(result)
