"""Alembic environment: the URL comes from the caller (soar.migrate) or SOAR_DATABASE_URL."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from soar.config import load_settings
from soar.db import make_sync_engine
from soar.models import Base

config = context.config
target_metadata = Base.metadata


def _run(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=target_metadata, compare_type=True)
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    existing = config.attributes.get("connection")
    if existing is not None:
        _run(existing)
        return
    url = config.get_main_option("sqlalchemy.url") or load_settings().database_url
    if not url:
        raise SystemExit("SOAR_DATABASE_URL is not set")
    engine = make_sync_engine(url)
    with engine.connect() as connection:
        _run(connection)
    engine.dispose()


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `soar migrate`")
run_migrations_online()
