"""Action types: one module each (`block_session.py`, ...), each defining `ACTION`, an
`ActionDefinition` (see `base`); `registry` collects them. Import from here:

    from soar import actions
    actions.definition("block_session").label      # "Block session"
"""

from __future__ import annotations

from soar.actions.base import BLOCK, ActionDefinition, Effect, Enforcement, Ocsf, TargetKind
from soar.actions.registry import (
    ACTIONS,
    EFFECTS,
    TARGET_KINDS,
    definition,
    duration_text,
    effects_for,
    enforcement_types,
    find,
    kind_of_path,
    label,
    names,
    undo_note,
)

__all__ = [
    "ACTIONS",
    "BLOCK",
    "EFFECTS",
    "TARGET_KINDS",
    "ActionDefinition",
    "Effect",
    "Enforcement",
    "Ocsf",
    "TargetKind",
    "definition",
    "duration_text",
    "effects_for",
    "enforcement_types",
    "find",
    "kind_of_path",
    "label",
    "names",
    "undo_note",
]
