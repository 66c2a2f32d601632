"""`soar users ...`: the people who sign in to the web UI with a password, and their Slack IDs.

Registered by the `soar` command (atlas_soar.cli) as a command group; it takes soar.cli's
helpers inside functions, at call time.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from soar.domain import Role
from soar.models import Principal

users_app = typer.Typer(
    help="Web UI users: add one with a password, list them, disable one, map one to Slack.",
    no_args_is_help=True,
)

MIN_PASSWORD = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")

NameArg = Annotated[str, typer.Argument(help="user name, e.g. alice")]


def _cli() -> Any:
    import soar.cli

    return soar.cli


@contextmanager
def _session() -> Iterator[Session]:
    """A transaction against SOAR_DATABASE_URL; an unreachable database is one clear line."""
    cli = _cli()
    url = cli.database_url_or_exit(cli.settings_or_exit())
    from soar.db import make_sync_engine

    engine = make_sync_engine(url)
    try:
        with Session(engine) as s, s.begin():
            yield s
    except OperationalError as exc:
        msg = str(exc.orig or exc).strip().splitlines()[0]
        raise cli.fail(f"cannot reach the database: {msg}", 1) from None
    finally:
        engine.dispose()


def _find(s: Session, name: str) -> Principal:
    p = s.scalar(select(Principal).where(Principal.name == name))
    if p is None:
        raise _cli().fail(f"no user named {name!r} (see `soar users list`)", 1)
    return p


def _read_password(from_stdin: bool) -> str:
    if from_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    if len(password) < MIN_PASSWORD:
        raise _cli().fail(f"the password must have at least {MIN_PASSWORD} characters")
    return password


PasswordStdin = Annotated[
    bool,
    typer.Option("--password-stdin", help="read the password from the first line of stdin"),
]


@users_app.command("add")
def add(
    name: NameArg,
    role: Annotated[Role, typer.Option(help="what the user may do", case_sensitive=False)],
    password_stdin: PasswordStdin = False,
) -> None:
    """Create a user who signs in to the web UI with a password (asked twice, hidden)."""
    cli = _cli()
    if not _NAME.match(name):
        raise cli.fail("the name may hold letters, digits and . _ @ - (at most 128)")
    from soar.auth import hash_password

    password = _read_password(password_stdin)
    with _session() as s:
        if s.scalar(select(Principal).where(Principal.name == name)) is not None:
            raise cli.fail(
                f"a user named {name!r} exists; change its password with "
                f"`soar users passwd {name}`",
                1,
            )
        s.add(Principal(name=name, role=role.value, password_hash=hash_password(password)))
    cli.out.print(f"user {name} added with role {role.value}", highlight=False)


@users_app.command("passwd")
def passwd(name: NameArg, password_stdin: PasswordStdin = False) -> None:
    """Set a user's password; every open web session of the user ends at once."""
    from soar.auth import hash_password, revoke_sessions

    password = _read_password(password_stdin)
    with _session() as s:
        _find(s, name).password_hash = hash_password(password)
        ended = s.execute(revoke_sessions(name)).rowcount  # type: ignore[attr-defined]
    _cli().out.print(f"password of {name} changed; {ended} open session(s) ended", highlight=False)


@users_app.command("list")
def list_users() -> None:
    """Every user and API-token principal: role, how they sign in, Slack ID, state."""
    with _session() as s:
        rows = s.scalars(select(Principal).order_by(Principal.name)).all()
        table = Table("name", "role", "signs in with", "slack user", "state", "created")
        for p in rows:
            ways = [w for w, h in (("password", p.password_hash), ("token", p.token_hash)) if h]
            table.add_row(
                p.name,
                p.role,
                ", ".join(ways) or "-",
                p.slack_user_id or "-",
                "disabled" if p.disabled else "active",
                p.created_at.strftime("%Y-%m-%d %H:%M"),
            )
    if not rows:
        _cli().out.print("no users yet: `soar users add NAME --role approver`")
        return
    _cli().out.print(table)


@users_app.command("disable")
def disable(name: NameArg) -> None:
    """Disable a user: the password, the API token and every open web session stop working
    at once (enforcement reads by the token: within SOAR_ENFORCEMENT_TOKEN_CACHE_SECONDS)."""
    from soar.auth import revoke_sessions

    with _session() as s:
        _find(s, name).disabled = True
        ended = s.execute(revoke_sessions(name)).rowcount  # type: ignore[attr-defined]
    _cli().out.print(f"user {name} disabled; {ended} open session(s) ended", highlight=False)


@users_app.command("enable")
def enable(name: NameArg) -> None:
    """Enable a disabled user again."""
    with _session() as s:
        _find(s, name).disabled = False
    _cli().out.print(f"user {name} enabled", highlight=False)


@users_app.command("set-slack")
def set_slack(
    name: NameArg,
    slack_user_id: Annotated[str, typer.Argument(help="Slack member ID, e.g. U024BE7LH")],
) -> None:
    """Map a user to a Slack member ID: their Slack clicks then act with this user's role."""
    cli = _cli()
    slack_user_id = slack_user_id.strip().upper()
    if not _SLACK_ID.match(slack_user_id):
        raise cli.fail(
            f"{slack_user_id!r} is not a Slack member ID (like U024BE7LH; in Slack: "
            "profile, More, Copy member ID)"
        )
    with _session() as s:
        other = s.scalar(select(Principal).where(Principal.slack_user_id == slack_user_id))
        if other is not None and other.name != name:
            raise cli.fail(f"{slack_user_id} is already mapped to {other.name!r}", 1)
        _find(s, name).slack_user_id = slack_user_id
    cli.out.print(f"user {name} is Slack user {slack_user_id}", highlight=False)
