"""What `soar worker` and `soar api` check before they start, each failure one line.

The playbook loads (SOAR_POLICY_FILE, file, line, reason), the database answers and is at
the migrations' head ("run `soar migrate`"), and Temporal answers. On success the caller
prints what it connected to.
"""

from __future__ import annotations

from sqlalchemy import text

from soar.config import Settings
from soar.db import make_sync_engine
from soar.policy.playbook import KnownIds


class NotReady(Exception):
    """A check before start failed; the message is the one line to print."""


def head_revision() -> str:
    import logging

    logging.getLogger("alembic").setLevel(logging.WARNING)  # its plugin set-up chatter
    from alembic.script import ScriptDirectory

    from soar.migrate import alembic_config

    head = ScriptDirectory.from_config(
        alembic_config("postgresql://localhost/x")
    ).get_current_head()
    return head or ""


def check_policy(settings: Settings, known: KnownIds | None = None) -> str:
    """The playbook's name; a bad one raises PlaybookError (soar.errors names the variable).
    `known`: also check its technique and tactic patterns against these IDs (those of the
    loaded catalog, `catalog_known_ids`)."""
    from soar.policy import default_playbook, load_playbook

    if settings.policy_file:
        return load_playbook(settings.policy_file, known=known).name
    return default_playbook().name


def catalog_known_ids(url: str) -> KnownIds:
    """The IDs of the catalog loaded in the database, else (none loaded yet: `soar migrate`
    loads it) of the built-in catalog."""
    from sqlalchemy.orm import Session

    from soar.atlas.builtin import BUILTIN_CATALOG
    from soar.atlas.store import catalog_ids

    engine = make_sync_engine(url)
    try:
        with Session(engine) as session:
            found = catalog_ids(session)
    finally:
        engine.dispose()
    if found is None or not found.techniques:
        return KnownIds.of(BUILTIN_CATALOG, f"the built-in ATLAS catalog {BUILTIN_CATALOG.version}")
    return KnownIds(
        techniques=frozenset(i.upper() for i in found.techniques),
        tactics=frozenset(i.upper() for i in found.tactics),
        source=f"the loaded ATLAS catalog {found.version} ({found.source})",
    )


def check_database(url: str) -> None:
    """Reachable and migrated to head (unreachable: the driver's error, explained by
    soar.errors)."""
    engine = make_sync_engine(url)
    try:
        with engine.connect() as conn:
            exists = conn.execute(
                text("SELECT to_regclass('alembic_version') IS NOT NULL")
            ).scalar()
            at = (
                conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
                if exists
                else None
            )
    finally:
        engine.dispose()
    head = head_revision()
    if at is None:
        raise NotReady("the database is not migrated: run `soar migrate`")
    if at != head:
        raise NotReady(
            f"the database is at migration {at}, this version needs {head}: run `soar migrate`"
        )
