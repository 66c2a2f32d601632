"""Migrate to head and make sure an ATLAS catalog is present."""

from __future__ import annotations

from sqlalchemy.orm import Session

from soar import migrate
from soar.atlas.store import current_version, load_catalog
from soar.db import make_sync_engine


def migrate_and_seed(url: str) -> str:
    migrate.upgrade(url)
    from soar.atlas.builtin import BUILTIN_CATALOG

    engine = make_sync_engine(url)
    try:
        with Session(engine) as session, session.begin():
            current = current_version(session)
            # A loaded official release stays; an older built-in catalog is brought up to
            # date (load_catalog does nothing when the content is the same).
            if current is not None and current.source != "built-in":
                return current.version
            load_catalog(session, BUILTIN_CATALOG, source="built-in")
            return BUILTIN_CATALOG.version
    finally:
        engine.dispose()
