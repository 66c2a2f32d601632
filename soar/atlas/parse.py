"""Parse a MITRE ATLAS distribution (``dist/ATLAS.yaml``, legacy format 5.x) into a Catalog.

Pure: no database, no network. The parser is strict about what the rest of the SOAR relies on
(well-formed IDs, references that resolve) and lenient about known quirks of the published
data, so that a damaged or truncated file fails loudly with a message naming the bad item
instead of silently producing a partial catalog.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, TypeVar

import yaml

TACTIC_ID_RE = re.compile(r"AML\.TA\d{4}")
TECHNIQUE_ID_RE = re.compile(r"AML\.T\d{4}(?:\.\d{3})?")
MITIGATION_ID_RE = re.compile(r"AML\.M\d{4}")

# Truncation check (see _check_not_cut_off): with fewer siblings than this, keys they happen
# to share say more about a small hand-written file than about the format.
_MIN_SIBLINGS = 3
# Keys whose absence is legitimate for an entry even when all its siblings have them
# (a sub-technique after top-level techniques has no 'tactics').
_MAY_BE_ABSENT = frozenset({"tactics", "subtechnique-of", "description"})


_Item = TypeVar("_Item", "Tactic", "Technique", "Mitigation")


class CatalogError(ValueError):
    """The input is not a usable ATLAS catalog; the message names the item and field."""


@dataclass(frozen=True)
class Tactic:
    id: str
    name: str
    description: str = ""


@dataclass(frozen=True)
class Technique:
    id: str
    name: str
    parent_id: str | None
    # For sub-techniques this is the effective list (inherited from the parent when the
    # data gives none), so callers never have to walk up to the parent themselves.
    tactic_ids: tuple[str, ...]
    description: str = ""

    @property
    def is_subtechnique(self) -> bool:
        return self.parent_id is not None


@dataclass(frozen=True)
class Mitigation:
    id: str
    name: str
    technique_ids: tuple[str, ...]
    description: str = ""


@dataclass(frozen=True)
class Catalog:
    version: str
    tactics: tuple[Tactic, ...]
    techniques: tuple[Technique, ...]
    mitigations: tuple[Mitigation, ...]

    # Lookup indexes are cached_property rather than dataclass fields so that they stay out
    # of equality, repr and dataclasses.asdict() (e.g. when a Catalog is serialised).
    @cached_property
    def _tactics_by_id(self) -> dict[str, Tactic]:
        return {t.id: t for t in self.tactics}

    @cached_property
    def _techniques_by_id(self) -> dict[str, Technique]:
        return {t.id: t for t in self.techniques}

    @cached_property
    def _mitigations_by_id(self) -> dict[str, Mitigation]:
        return {m.id: m for m in self.mitigations}

    @cached_property
    def _mitigations_by_technique(self) -> dict[str, tuple[Mitigation, ...]]:
        index: dict[str, list[Mitigation]] = {}
        for mitigation in self.mitigations:
            for technique_id in mitigation.technique_ids:
                index.setdefault(technique_id, []).append(mitigation)
        return {k: tuple(v) for k, v in index.items()}

    def tactic(self, tactic_id: str) -> Tactic | None:
        return self._tactics_by_id.get(tactic_id)

    def technique(self, technique_id: str) -> Technique | None:
        return self._techniques_by_id.get(technique_id)

    def mitigation(self, mitigation_id: str) -> Mitigation | None:
        return self._mitigations_by_id.get(mitigation_id)

    def subtechniques(self, technique_id: str) -> tuple[Technique, ...]:
        return tuple(t for t in self.techniques if t.parent_id == technique_id)

    def techniques_for_tactic(self, tactic_id: str) -> tuple[Technique, ...]:
        return tuple(t for t in self.techniques if tactic_id in t.tactic_ids)

    def mitigations_for(self, technique_id: str) -> tuple[Mitigation, ...]:
        """Mitigations that list this technique itself (not its parent or children)."""
        return self._mitigations_by_technique.get(technique_id, ())


def parse_atlas_file(path: str | Path) -> Catalog:
    """Read and parse an ATLAS.yaml file. OSError (e.g. missing file) propagates unchanged."""
    raw = Path(path).read_bytes()
    try:
        # utf-8-sig: tolerate a BOM added by an editor or a download tool.
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text: {exc}") from exc
    return parse_atlas_yaml(text)


def parse_atlas_yaml(text: str) -> Catalog:
    """Parse the text of an ATLAS distribution; raise CatalogError on any problem.

    Several matrices are merged (first occurrence of an id wins). Sub-techniques without
    'tactics' get their parent's. Duplicate technique links in a mitigation are dropped.
    """
    doc = _load_yaml(text)
    if doc is None:
        raise CatalogError("not an ATLAS distribution: the document is empty")
    if not isinstance(doc, dict):
        raise CatalogError(
            f"not an ATLAS distribution: top level is a {_kind(doc)}, expected a mapping"
        )
    if "matrices" not in doc:
        raise CatalogError("not an ATLAS distribution: no 'matrices' key")
    # First, so that a cut-off file is reported as such rather than as whichever field the
    # cut happened to remove from its last entry.
    _check_not_cut_off(doc)
    version = _version(doc)
    matrices = doc["matrices"]
    if not isinstance(matrices, list) or not matrices:
        raise CatalogError("'matrices' must be a non-empty list")
    for mi, matrix in enumerate(matrices):
        if not isinstance(matrix, dict):
            raise CatalogError(f"matrices[{mi}]: expected a mapping, got {_kind(matrix)}")

    tactics = _merge((_parse_tactic(item, loc), loc) for item, loc in _entries(matrices, "tactics"))
    raw_techniques = _merge(
        (_parse_technique(item, loc), loc) for item, loc in _entries(matrices, "techniques")
    )
    mitigations = _merge(
        (_parse_mitigation(item, loc), loc) for item, loc in _mitigation_entries(doc, matrices)
    )
    techniques = _resolve_techniques(raw_techniques, {t.id for t, _ in tactics})
    known_techniques = {t.id for t in techniques}
    for mitigation, loc in mitigations:
        for ref in mitigation.technique_ids:
            if ref not in known_techniques:
                raise CatalogError(
                    f"{loc} ({mitigation.id}): 'techniques' refers to unknown technique {ref!r}"
                )
    return Catalog(
        version=version,
        tactics=tuple(t for t, _ in tactics),
        techniques=techniques,
        mitigations=tuple(m for m, _ in mitigations),
    )


def _load_yaml(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = f"line {mark.line + 1}: " if mark is not None else ""
        problem = exc.problem or exc.context or "parse error"
        raise CatalogError(f"file is truncated or not valid YAML: {line}{problem}") from exc
    except (yaml.YAMLError, ValueError, TypeError, RecursionError) as exc:
        # ValueError/TypeError come from scalar constructors (e.g. an impossible date such as
        # 2024-13-40); RecursionError from pathologically nested input.
        raise CatalogError(f"file is truncated or not valid YAML: {exc}") from exc


def _version(doc: Mapping[str, Any]) -> str:
    if "version" not in doc:
        raise CatalogError("not an ATLAS distribution: missing 'version'")
    version = doc["version"]
    # YAML may read an unquoted "5" or "5.6" as a number; the text form is what we want.
    if isinstance(version, bool) or not isinstance(version, str | int | float):
        raise CatalogError(f"'version' must be a string, got {_kind(version)}")
    text = str(version).strip()
    if not text:
        raise CatalogError("'version' is empty")
    return text


def _section(container: Mapping[str, Any], key: str, owner: str) -> list[Any]:
    """The list under `key`, or [] when absent; `owner` locates the container in messages."""
    value = container.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        where = f"{owner}: " if owner else ""
        raise CatalogError(f"{where}{key!r} must be a list, got {_kind(value)}")
    return value


def _entries(
    matrices: list[dict[str, Any]], key: str, *, required: bool = True
) -> Iterator[tuple[Any, str]]:
    """(raw item, location) for one section of every matrix."""
    for mi, matrix in enumerate(matrices):
        owner = f"matrices[{mi}]"
        if key not in matrix and required:
            raise CatalogError(f"{owner}: missing {key!r} (is the file truncated?)")
        # With the usual single matrix the short form ("techniques[12]") is what a reader
        # looks for in the file; the matrix index only helps when there are several.
        prefix = f"{owner}.{key}" if len(matrices) > 1 else key
        for i, item in enumerate(_section(matrix, key, owner)):
            yield item, f"{prefix}[{i}]"


def _mitigation_entries(
    doc: Mapping[str, Any], matrices: list[dict[str, Any]]
) -> list[tuple[Any, str]]:
    # 5.x keeps mitigations inside the matrix; older or hand-made files may have them at the
    # top level. Accept either, but require them somewhere: every real distribution has
    # them, and their absence is the usual symptom of a file cut off in the techniques.
    if "mitigations" not in doc and not any("mitigations" in m for m in matrices):
        raise CatalogError(
            "no 'mitigations' in any matrix or at the top level (is the file truncated?)"
        )
    found = list(_entries(matrices, "mitigations", required=False))
    found += [
        (item, f"mitigations[{i}]") for i, item in enumerate(_section(doc, "mitigations", ""))
    ]
    return found


def _merge(items: Iterable[tuple[_Item, str]]) -> list[tuple[_Item, str]]:
    """Dedupe by id across matrices: the first occurrence wins, file order is kept."""
    seen: set[str] = set()
    out: list[tuple[_Item, str]] = []
    for item, loc in items:
        if item.id not in seen:
            seen.add(item.id)
            out.append((item, loc))
    return out


def _mapping(item: Any, loc: str) -> Mapping[str, Any]:
    if not isinstance(item, dict):
        raise CatalogError(f"{loc}: expected a mapping, got {_kind(item)}")
    return item


def _id(item: Mapping[str, Any], loc: str, pattern: re.Pattern[str], shape: str) -> str:
    if "id" not in item or item["id"] is None:
        raise CatalogError(f"{loc}: missing 'id'")
    value = item["id"]
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise CatalogError(f"{loc}: malformed id {value!r}, expected {shape}")
    return value


def _text(item: Mapping[str, Any], key: str, loc: str, *, required: bool) -> str:
    value = item.get(key)
    if value is None:
        if required:
            raise CatalogError(f"{loc}: missing {key!r}")
        return ""
    if not isinstance(value, str):
        raise CatalogError(f"{loc}: {key!r} must be a string, got {_kind(value)}")
    if required and not value.strip():
        raise CatalogError(f"{loc}: {key!r} is empty")
    return value.strip()


def _parse_tactic(raw: Any, loc: str) -> Tactic:
    item = _mapping(raw, loc)
    tactic_id = _id(item, loc, TACTIC_ID_RE, "AML.TA####")
    loc = f"{loc} ({tactic_id})"
    return Tactic(
        id=tactic_id,
        name=_text(item, "name", loc, required=True),
        description=_text(item, "description", loc, required=False),
    )


def _parse_technique(raw: Any, loc: str) -> Technique:
    """Parse one technique; tactic inheritance and reference checks happen later."""
    item = _mapping(raw, loc)
    technique_id = _id(item, loc, TECHNIQUE_ID_RE, "AML.T#### or AML.T####.###")
    loc = f"{loc} ({technique_id})"
    parent = item.get("subtechnique-of")
    if parent is not None and (
        not isinstance(parent, str)
        or "." in parent[len("AML.T") :]
        or not TECHNIQUE_ID_RE.fullmatch(parent)
    ):
        raise CatalogError(f"{loc}: malformed 'subtechnique-of' {parent!r}, expected AML.T####")
    # The ID shape and the parent link must agree: AML.T0051.001 belongs under AML.T0051.
    is_sub_id = "." in technique_id[len("AML.T") :]
    if parent is None and is_sub_id:
        raise CatalogError(f"{loc}: sub-technique id but missing 'subtechnique-of'")
    if parent is not None and not technique_id.startswith(f"{parent}."):
        raise CatalogError(f"{loc}: 'subtechnique-of' is {parent!r}, which does not match the id")
    tactic_ids: tuple[str, ...] = ()
    if item.get("tactics") is not None:
        tactic_ids = _id_list(item["tactics"], f"{loc}: 'tactics'", TACTIC_ID_RE, "AML.TA####")
    if parent is None and not tactic_ids:
        raise CatalogError(f"{loc}: missing 'tactics'")
    return Technique(
        id=technique_id,
        name=_text(item, "name", loc, required=True),
        parent_id=parent,
        tactic_ids=tactic_ids,
        description=_text(item, "description", loc, required=False),
    )


def _parse_mitigation(raw: Any, loc: str) -> Mitigation:
    item = _mapping(raw, loc)
    mitigation_id = _id(item, loc, MITIGATION_ID_RE, "AML.M####")
    loc = f"{loc} ({mitigation_id})"
    refs = list(_section(item, "techniques", loc))
    # ATLAS 5.6.0 misplaces two mappings ({id: AML.T0052.001, use: ...} in AML.M0018 and
    # AML.M0034) under 'ml-lifecycle', whose other entries are stage names. They are real
    # technique links (the generated atlas_index.json counts them too), so recover them.
    lifecycle = item.get("ml-lifecycle")
    if isinstance(lifecycle, list):
        refs += [e for e in lifecycle if isinstance(e, dict) and "id" in e]
    return Mitigation(
        id=mitigation_id,
        name=_text(item, "name", loc, required=True),
        technique_ids=_id_list(
            refs, f"{loc}: 'techniques'", TECHNIQUE_ID_RE, "AML.T#### or AML.T####.###"
        ),
        description=_text(item, "description", loc, required=False),
    )


def _id_list(value: Any, loc: str, pattern: re.Pattern[str], shape: str) -> tuple[str, ...]:
    """IDs from a list of strings or {id: ...} mappings; duplicates dropped, order kept."""
    if not isinstance(value, list):
        raise CatalogError(f"{loc}: expected a list, got {_kind(value)}")
    out: dict[str, None] = {}  # an ordered set
    for i, entry in enumerate(value):
        ref = entry.get("id") if isinstance(entry, dict) else entry
        if not isinstance(ref, str) or not pattern.fullmatch(ref):
            raise CatalogError(f"{loc}[{i}]: malformed id {ref!r}, expected {shape}")
        out[ref] = None
    return tuple(out)


def _resolve_techniques(
    parsed: list[tuple[Technique, str]], tactic_ids: set[str]
) -> tuple[Technique, ...]:
    by_id = {t.id: t for t, _ in parsed}
    resolved: list[Technique] = []
    for technique, loc in parsed:
        loc = f"{loc} ({technique.id})"
        if technique.parent_id is not None:
            parent = by_id.get(technique.parent_id)
            if parent is None:
                raise CatalogError(
                    f"{loc}: 'subtechnique-of' refers to unknown technique {technique.parent_id!r}"
                )
            if not technique.tactic_ids:
                # Sub-techniques in 5.x carry no 'tactics'; they belong to the parent's.
                technique = Technique(
                    id=technique.id,
                    name=technique.name,
                    parent_id=technique.parent_id,
                    tactic_ids=parent.tactic_ids,
                    description=technique.description,
                )
        for tactic_id in technique.tactic_ids:
            if tactic_id not in tactic_ids:
                raise CatalogError(f"{loc}: 'tactics' refers to unknown tactic {tactic_id!r}")
        resolved.append(technique)
    return tuple(resolved)


def _check_not_cut_off(doc: Mapping[str, Any]) -> None:
    """Detect a file cut off at a point where the remaining text is still valid YAML.

    A cut leaves the last entry of the list it falls in (and of every enclosing list) without
    its trailing keys. So walk the document's "last" path (dicts keep YAML key order) and
    compare each list's final mapping with its siblings: a key that all the others have but
    the final one lacks means the text stops early. This also covers the case-studies
    section, which the Catalog does not use: a file cut there is still a damaged file.
    """
    node: Any = doc
    path = ""
    while isinstance(node, dict) and node:
        key = next(reversed(node))
        path = f"{path}.{key}" if path else str(key)
        node = node[key]
        if not isinstance(node, list) or not node or not isinstance(node[-1], dict):
            return
        last, others = node[-1], node[:-1]
        if len(others) >= _MIN_SIBLINGS and all(isinstance(o, dict) for o in others):
            common = set.intersection(*(set(o) for o in others))
            missing = sorted(str(k) for k in common - set(last) - _MAY_BE_ABSENT)
            if missing:
                label = f" ({last['id']})" if isinstance(last.get("id"), str) else ""
                raise CatalogError(
                    f"{path}[{len(node) - 1}]{label}: missing {', '.join(map(repr, missing))}"
                    f" that every other entry has; the file looks truncated"
                )
        path = f"{path}[{len(node) - 1}]"
        node = last


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
