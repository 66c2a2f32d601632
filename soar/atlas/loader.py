"""`soar atlas load FILE|URL` and `soar atlas show ID`."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from rich.console import Console
from sqlalchemy.orm import Session

from soar.atlas.parse import CatalogError, parse_atlas_yaml
from soar.atlas.store import LoadResult, TechniqueInfo, load_catalog, technique_info
from soar.db import make_async_engine, make_sync_engine, session_factory


class LoadFailed(Exception):
    pass


def _read(source: str) -> str:
    if source.startswith(("http://", "https://")):
        try:
            resp = httpx.get(source, timeout=60, follow_redirects=True)
            resp.raise_for_status()
        except httpx.HTTPError as exc:
            raise LoadFailed(f"could not fetch {source}: {exc}") from None
        return resp.text
    try:
        return Path(source).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise LoadFailed(f"could not read {source}: {exc}") from None


def load_from_source(url: str, source: str, *, progress: Console | None = None) -> LoadResult:
    """Parse fully before touching the database, then replace the catalog in one
    transaction: a bad file leaves the previous catalog intact."""
    if progress:
        progress.print(f"reading {source} ...")
    text = _read(source)
    try:
        catalog = parse_atlas_yaml(text)
    except CatalogError as exc:
        raise LoadFailed(f"{source}: {exc}; the previous catalog is unchanged") from None
    if progress:
        progress.print(
            f"parsed ATLAS {catalog.version}: {len(catalog.techniques)} techniques; writing ..."
        )
    engine = make_sync_engine(url)
    try:
        with Session(engine) as session, session.begin():
            return load_catalog(session, catalog, source=source)
    finally:
        engine.dispose()


def show_technique(url: str, technique_id: str) -> TechniqueInfo | None:
    async def run() -> TechniqueInfo | None:
        engine = make_async_engine(url, pool_size=1)
        try:
            async with session_factory(engine)() as s:
                return await technique_info(s, technique_id)
        finally:
            await engine.dispose()

    return asyncio.run(run())
