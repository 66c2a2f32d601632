"""MITRE ATLAS catalog: the pure parser and a small built-in catalog (no database here)."""

from __future__ import annotations

from soar.atlas.builtin import BUILTIN_CATALOG
from soar.atlas.parse import (
    Catalog,
    CatalogError,
    Mitigation,
    Tactic,
    Technique,
    parse_atlas_file,
    parse_atlas_yaml,
)

__all__ = [
    "BUILTIN_CATALOG",
    "Catalog",
    "CatalogError",
    "Mitigation",
    "Tactic",
    "Technique",
    "parse_atlas_file",
    "parse_atlas_yaml",
]
