"""Every action type, collected from the modules of `soar.actions` (one `ACTION` each), so
that adding an action type is adding one module. Checked once, at import: two modules with
one name, or an enforcement kind the store cannot hold, stop the process with the reason."""

from __future__ import annotations

import importlib
import pkgutil
from types import MappingProxyType

from soar.actions.base import BLOCK, TARGET_KIND, ActionDefinition, Effect, TargetKind

_NOT_ACTIONS = frozenset({"base", "registry"})
_STORED_KIND_MAX = 16  # enforcement_blocks.kind / enforcement_changes.kind


def _collect() -> dict[str, ActionDefinition]:
    found: dict[str, ActionDefinition] = {}
    package = importlib.import_module("soar.actions")
    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        if info.name in _NOT_ACTIONS or info.name.startswith("_"):
            continue
        module = importlib.import_module(f"soar.actions.{info.name}")
        action = getattr(module, "ACTION", None)
        if not isinstance(action, ActionDefinition):
            raise TypeError(f"soar.actions.{info.name}: defines no ACTION (an ActionDefinition)")
        if action.name != info.name:
            raise ValueError(f"soar.actions.{info.name}: ACTION.name is {action.name!r}")
        found[action.name] = action
    return found


def _check(actions: dict[str, ActionDefinition]) -> None:
    kinds: dict[str, TargetKind] = {}
    effects: dict[str, Effect] = {}
    for a in actions.values():
        if a.enforcement is None:
            continue
        e = a.enforcement.effect
        if effects.setdefault(e.name, e) != e:
            raise ValueError(f"{a.name}: effect {e.name!r} is defined twice, differently")
        for k in a.enforcement.targets:
            if kinds.setdefault(k.name, k).path != k.path:
                raise ValueError(f"{a.name}: target kind {k.name!r} has two paths")
            stored = a.enforcement.stored_kind({TARGET_KIND: k.name})
            if len(stored) > _STORED_KIND_MAX or ":" in k.name:
                raise ValueError(f"{a.name}: enforcement kind {stored!r} does not fit the store")


ACTIONS: MappingProxyType[str, ActionDefinition] = MappingProxyType(_collect())
_check(dict(ACTIONS))


def _effects() -> tuple[Effect, ...]:
    seen: dict[str, Effect] = {BLOCK.name: BLOCK}
    for a in ACTIONS.values():
        if a.enforcement is not None:
            seen.setdefault(a.enforcement.effect.name, a.enforcement.effect)
    return tuple(seen.values())


def _target_kinds() -> dict[str, TargetKind]:
    out: dict[str, TargetKind] = {}
    for a in ACTIONS.values():
        for k in a.enforcement.targets if a.enforcement else ():
            out.setdefault(k.name, k)
    return out


EFFECTS = _effects()  # block first: the strongest, then in the order the modules sort
TARGET_KINDS = MappingProxyType(_target_kinds())


def names() -> list[str]:
    return sorted(ACTIONS)


def find(name: str) -> ActionDefinition | None:
    return ACTIONS.get(name)


def definition(name: str) -> ActionDefinition:
    """The definition of an action type; KeyError naming it if there is none."""
    try:
        return ACTIONS[name]
    except KeyError:
        raise KeyError(f"unknown action type {name!r}") from None


def enforcement_types() -> frozenset[str]:
    return frozenset(a.name for a in ACTIONS.values() if a.enforces)


def effects_for(kind: str) -> tuple[Effect, ...]:
    """The effects some action may put on a target of this kind, block first."""
    present = {
        a.enforcement.effect.name
        for a in ACTIONS.values()
        if a.enforcement is not None and any(k.name == kind for k in a.enforcement.targets)
    }
    return tuple(e for e in EFFECTS if e.name in present or e is BLOCK)


def label(name: str) -> str:
    """The human label of an action type; an unknown one (an old row) reads as itself."""
    found = ACTIONS.get(name)
    return found.label if found else name.replace("_", " ").capitalize()


def duration_text(seconds: int) -> str:
    if seconds % 86400 == 0:
        return f"{seconds // 86400} d"
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def undo_note(name: str, duration_seconds: int | None) -> tuple[bool, str]:
    """Whether approving an action of this type can be undone, and how, in the words an
    approver reads (the web UI's confirmation page, Slack's confirmation dialog)."""
    found = ACTIONS.get(name)
    if found is not None and found.irreversible:
        return False, f"This cannot be undone: {found.label} is irreversible."
    if duration_seconds:
        return True, (
            f"This can be undone: it lifts itself after {duration_text(duration_seconds)}, "
            "and an analyst can lift it earlier."
        )
    return True, "This can be undone: it stays in force until it is lifted."


def kind_of_path(path: str) -> TargetKind | None:
    return next((k for k in TARGET_KINDS.values() if k.path == path), None)
