"""The ATLAS catalog in PostgreSQL: load a parsed catalog atomically, read it back."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass

from sqlalchemy import delete, func, insert, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session

from soar.atlas.parse import Catalog
from soar.models import (
    AtlasMitigation,
    AtlasTactic,
    AtlasTechnique,
    AtlasTechniqueMitigation,
    AtlasTechniqueTactic,
    CatalogVersion,
)


def catalog_digest(catalog: Catalog) -> str:
    """A digest of the facts (not the file bytes) so that re-loading the same release from a
    re-serialised file is recognised as no change."""
    h = hashlib.sha256()
    h.update(catalog.version.encode())
    for t in sorted(catalog.tactics, key=lambda t: t.id):
        h.update(f"T|{t.id}|{t.name}\n".encode())
    for q in sorted(catalog.techniques, key=lambda t: t.id):
        h.update(f"Q|{q.id}|{q.name}|{q.parent_id}|{','.join(q.tactic_ids)}\n".encode())
    for m in sorted(catalog.mitigations, key=lambda m: m.id):
        h.update(f"M|{m.id}|{m.name}|{','.join(sorted(m.technique_ids))}\n".encode())
    return h.hexdigest()


@dataclass(frozen=True)
class LoadResult:
    version: str
    changed: bool
    tactics: int
    techniques: int
    mitigations: int


def current_version(session: Session) -> CatalogVersion | None:
    return session.scalars(
        select(CatalogVersion).order_by(CatalogVersion.id.desc()).limit(1)
    ).first()


def load_catalog(session: Session, catalog: Catalog, *, source: str) -> LoadResult:
    """Replace the catalog in one transaction (the caller commits). If it fails half-way the
    transaction rolls back and the previous catalog stays as it was."""
    digest = catalog_digest(catalog)
    counts = (len(catalog.tactics), len(catalog.techniques), len(catalog.mitigations))
    current = current_version(session)
    if current is not None and current.sha256 == digest:
        return LoadResult(catalog.version, False, *counts)

    for model in (AtlasTechniqueMitigation, AtlasTechniqueTactic, AtlasMitigation):
        session.execute(delete(model))
    # Sub-techniques reference their parents: remove children first.
    session.execute(delete(AtlasTechnique).where(AtlasTechnique.parent_id.is_not(None)))
    session.execute(delete(AtlasTechnique))
    session.execute(delete(AtlasTactic))

    if catalog.tactics:
        session.execute(
            insert(AtlasTactic),
            [{"id": t.id, "name": t.name, "description": t.description} for t in catalog.tactics],
        )
    parents = [t for t in catalog.techniques if t.parent_id is None]
    children = [t for t in catalog.techniques if t.parent_id is not None]
    for group in (parents, children):
        if group:
            session.execute(
                insert(AtlasTechnique),
                [
                    {
                        "id": t.id,
                        "name": t.name,
                        "parent_id": t.parent_id,
                        "description": t.description,
                    }
                    for t in group
                ],
            )
    links = [
        {"technique_id": t.id, "tactic_id": tac} for t in catalog.techniques for tac in t.tactic_ids
    ]
    if links:
        session.execute(insert(AtlasTechniqueTactic), links)
    if catalog.mitigations:
        session.execute(
            insert(AtlasMitigation),
            [
                {"id": m.id, "name": m.name, "description": m.description}
                for m in catalog.mitigations
            ],
        )
        mlinks = {(q, m.id) for m in catalog.mitigations for q in m.technique_ids}
        if mlinks:
            session.execute(
                insert(AtlasTechniqueMitigation),
                [{"technique_id": q, "mitigation_id": m} for q, m in sorted(mlinks)],
            )
    session.add(
        CatalogVersion(
            version=catalog.version,
            source=source,
            sha256=digest,
            tactic_count=counts[0],
            technique_count=counts[1],
            mitigation_count=counts[2],
        )
    )
    session.flush()
    _VERSIONS.clear()  # technique_info asks again
    return LoadResult(catalog.version, True, *counts)


@dataclass(frozen=True)
class CatalogIds:
    """The IDs of the loaded catalog (what playbook patterns are checked against)."""

    version: str
    source: str
    techniques: frozenset[str]
    tactics: frozenset[str]


def catalog_ids(session: Session) -> CatalogIds | None:
    """The technique and tactic IDs in the database; None when no catalog is loaded."""
    current = current_version(session)
    if current is None:
        return None
    return CatalogIds(
        version=current.version,
        source=current.source,
        techniques=frozenset(session.scalars(select(AtlasTechnique.id))),
        tactics=frozenset(session.scalars(select(AtlasTactic.id))),
    )


@dataclass(frozen=True)
class TechniqueInfo:
    id: str
    name: str
    parent_id: str | None
    parent_name: str | None
    tactics: tuple[tuple[str, str], ...]  # (id, name)
    mitigations: tuple[tuple[str, str], ...]


TM_JOIN = AtlasTechniqueMitigation.mitigation_id == AtlasMitigation.id


async def technique_exists(session: AsyncSession, technique_id: str) -> bool:
    found = await session.scalar(select(AtlasTechnique.id).where(AtlasTechnique.id == technique_id))
    return found is not None


async def catalog_version(session: AsyncSession) -> str:
    v = await session.scalar(
        select(CatalogVersion.version).order_by(CatalogVersion.id.desc()).limit(1)
    )
    return v or "unknown"


# The catalog changes only by a load, which adds a catalog version row in the same
# transaction: a technique's facts are kept per (database, newest version), so the worker's
# hot path asks one indexed question instead of four.
# The newest version itself is asked at most every VERSION_TTL seconds per database: a
# catalog loaded by another process is seen within that time (a load in this process is seen
# at once, load_catalog forgets the version).
_INFO_CACHE: dict[tuple[str, int, str], TechniqueInfo] = {}
_INFO_CACHE_MAX = 4096
VERSION_TTL = 5.0
_VERSIONS: dict[str, tuple[int | None, float]] = {}


async def _newest_version(session: AsyncSession, db: str) -> int | None:
    known = _VERSIONS.get(db)
    if known is not None and time.monotonic() - known[1] < VERSION_TTL:
        return known[0]
    version = await session.scalar(select(func.max(CatalogVersion.id)))
    _VERSIONS[db] = (None if version is None else int(version), time.monotonic())
    return version


async def technique_info(session: AsyncSession, technique_id: str) -> TechniqueInfo | None:
    db = str(session.sync_session.get_bind().engine.url)
    version = await _newest_version(session, db)
    key = (db, int(version or 0), technique_id)
    found = _INFO_CACHE.get(key)
    if found is not None:
        return found
    info = await _technique_info(session, technique_id)
    if info is not None and version is not None:
        if len(_INFO_CACHE) >= _INFO_CACHE_MAX:
            _INFO_CACHE.clear()
        _INFO_CACHE[key] = info
    return info


async def _technique_info(session: AsyncSession, technique_id: str) -> TechniqueInfo | None:
    tech = await session.get(AtlasTechnique, technique_id)
    if tech is None:
        return None
    parent = await session.get(AtlasTechnique, tech.parent_id) if tech.parent_id else None
    tactics = (
        await session.execute(
            select(AtlasTactic.id, AtlasTactic.name)
            .join(AtlasTechniqueTactic, AtlasTechniqueTactic.tactic_id == AtlasTactic.id)
            .where(AtlasTechniqueTactic.technique_id == technique_id)
            .order_by(AtlasTactic.id)
        )
    ).all()
    # A sub-technique is also covered by its parent's mitigations.
    ids = [technique_id] + ([tech.parent_id] if tech.parent_id else [])
    mitigations = (
        await session.execute(
            select(AtlasMitigation.id, AtlasMitigation.name)
            .join(AtlasTechniqueMitigation, TM_JOIN)
            .where(AtlasTechniqueMitigation.technique_id.in_(ids))
            .distinct()
            .order_by(AtlasMitigation.id)
        )
    ).all()
    return TechniqueInfo(
        id=tech.id,
        name=tech.name,
        parent_id=tech.parent_id,
        parent_name=parent.name if parent else None,
        tactics=tuple((r[0], r[1]) for r in tactics),
        mitigations=tuple((r[0], r[1]) for r in mitigations),
    )
