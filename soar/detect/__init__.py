"""The built-in ATLAS detection engine (offline): rule packs over normalised text.

>>> from soar.detect import Engine
>>> [f.technique for f in Engine.default().scan("Ignore previous instructions")]
['AML.T0051.000']

See :mod:`soar.detect.engine` for what is scanned, :mod:`soar.detect.rules` for the rule pack
format and :mod:`soar.detect.adapters` for the findings of other detectors.
"""

from __future__ import annotations

from soar.detect.engine import MAX_CHARS, Engine, Finding, technique_scores
from soar.detect.rules import Rule, RulePack, RulePackError, load_pack, load_pack_text

__all__ = [
    "MAX_CHARS",
    "Engine",
    "Finding",
    "Rule",
    "RulePack",
    "RulePackError",
    "load_pack",
    "load_pack_text",
    "technique_scores",
]
