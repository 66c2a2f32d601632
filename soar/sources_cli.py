"""`soar sources ...`: detection sources, each with a credential of its own.

Registered by soar.cli as a command group; it imports soar.cli only inside functions because
soar.cli imports this module while it is itself being loaded.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table
from sqlalchemy.exc import OperationalError, ProgrammingError
from sqlalchemy.orm import Session

from soar import sources

sources_app = typer.Typer(
    help="Detection sources: each gets its own webhook secret (or Ed25519 public key), "
    "optionally limited to tenants. SOAR_WEBHOOK_SECRET stays the source named 'default'.",
    no_args_is_help=True,
)

NameArg = Annotated[str, typer.Argument(help="source name, e.g. llm-gateway")]
PublicKey = Annotated[
    str | None,
    typer.Option(
        "--public-key",
        help="register this Ed25519 public key (whpk_<base64>) instead of creating a secret: "
        "the source signs with Standard Webhooks v1a and the server keeps no secret",
    ),
]


def _cli() -> Any:
    import soar.cli

    return soar.cli


def secrets_key(settings: Any) -> str | None:
    """SOAR_SECRETS_KEY, or the key `soar up` generated into SOAR_HOME."""
    if settings.secrets_key is not None and settings.secrets_key.get_secret_value():
        return str(settings.secrets_key.get_secret_value())
    path = settings.home / "secrets-key"
    return path.read_text().strip() if path.exists() else None


@contextmanager
def _session() -> Iterator[tuple[Session, str | None, Any]]:
    cli = _cli()
    settings = cli.settings_or_exit()
    url = cli.database_url_or_exit(settings)
    from soar.db import make_sync_engine

    engine = make_sync_engine(url)
    try:
        with Session(engine) as s, s.begin():
            yield s, secrets_key(settings), settings
    except sources.SourceError as exc:
        raise cli.fail(str(exc), 1) from None
    except OperationalError as exc:
        msg = str(exc.orig or exc).strip().splitlines()[0]
        raise cli.fail(f"cannot reach the database: {msg}", 1) from None
    except ProgrammingError:
        raise cli.fail("the database has no sources table: run `soar migrate`", 1) from None
    finally:
        engine.dispose()


def _print_secret(name: str, secret: str) -> None:
    out = _cli().out
    if secret:
        out.print(f"secret of {name} (shown once; give it to the source):", highlight=False)
        out.print(secret, highlight=False, markup=False)


@sources_app.command("add")
def add(
    name: NameArg,
    tenant: Annotated[
        list[str] | None,
        typer.Option(
            "--tenant", help="a tenant this source may report for (repeatable); none: any tenant"
        ),
    ] = None,
    public_key: PublicKey = None,
) -> None:
    """Create a source and print its new whsec_ secret once."""
    with _session() as (s, key, _):
        secret = sources.add_source(
            s, name, tenants=tuple(tenant or ()), public_key=public_key, key=key
        )
    limited = f" for tenants {', '.join(tenant)}" if tenant else " for any tenant"
    _cli().out.print(f"source {name} added{limited}", highlight=False, markup=False)
    if not key and secret:
        _cli().console.print("note: SOAR_SECRETS_KEY is not set; the secret is stored unencrypted")
    _print_secret(name, secret)


@sources_app.command("list")
def list_sources() -> None:
    """Every source: tenants, credentials in force, state. Never prints a secret."""
    with _session() as (s, _, _settings):
        rows = sources.list_sources(s)
    table = Table("name", "tenants", "credentials", "state", "created")
    for r in rows:
        creds = ", ".join(
            kind + (f" (until {until:%Y-%m-%d %H:%M})" if until else "")
            for kind, _, until in r.credentials
        )
        table.add_row(
            escape(r.name),
            escape(", ".join(r.tenants)) if r.tenants else "any",
            creds or "-",
            "revoked" if r.revoked_at else "active",
            f"{r.created_at:%Y-%m-%d %H:%M}",
        )
    if not rows:
        _cli().out.print(
            "no sources yet (SOAR_WEBHOOK_SECRET is the source 'default'): `soar sources add NAME`"
        )
        return
    _cli().out.print(table)


@sources_app.command("rotate")
def rotate(
    name: NameArg,
    grace: Annotated[
        int | None,
        typer.Option(
            help="seconds the old credential stays valid "
            "(default SOAR_SOURCE_ROTATION_GRACE_SECONDS, 86400)"
        ),
    ] = None,
    public_key: PublicKey = None,
) -> None:
    """Give a source a new secret; the old one keeps verifying for the grace period."""
    with _session() as (s, key, settings):
        seconds = settings.source_rotation_grace_seconds if grace is None else grace
        secret, until = sources.rotate_source(
            s, name, grace=timedelta(seconds=max(0, seconds)), public_key=public_key, key=key
        )
    _cli().out.print(
        f"source {name} rotated; the old credential verifies until {until:%Y-%m-%d %H:%M:%S} UTC",
        highlight=False,
        markup=False,
    )
    _print_secret(name, secret)


@sources_app.command("revoke")
def revoke(name: NameArg) -> None:
    """Revoke a source: none of its credentials verifies any more (401)."""
    with _session() as (s, _, _settings):
        sources.revoke_source(s, name)
    _cli().out.print(f"source {name} revoked", highlight=False, markup=False)
