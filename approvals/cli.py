"""`soar users ...`: the people who sign in to the web UI with a password, where approval
channels reach them (Slack ID, e-mail address), and the approver groups playbook rules name.

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
from soar.models import ApproverGroup, ApproverGroupMember, Principal, PrincipalAddress
from soar.policy.playbook import GROUP_NAME, GROUP_NAME_RULE

users_app = typer.Typer(
    help="Users: add one with a password, list them, disable one, map one to Slack or an "
    "e-mail address, manage approver groups.",
    no_args_is_help=True,
)
group_app = typer.Typer(
    help="Approver groups: the `approvers:` and `escalate_to:` of playbook rules.",
    no_args_is_help=True,
)
users_app.add_typer(group_app, name="group")

MIN_PASSWORD = 10
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")
_SLACK_ID = re.compile(r"^[UW][A-Z0-9]{2,31}$")
# Deliberately plain: one @, no spaces, quotes, angle brackets or control characters.
_EMAIL = re.compile(
    r"^[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]{1,64}@[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,62}[A-Za-z0-9])?)+$"
)

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


def _addresses(s: Session) -> dict[tuple[int, str], str]:
    rows = s.execute(
        select(PrincipalAddress.principal_id, PrincipalAddress.channel, PrincipalAddress.address)
    )
    return {(pid, channel): address for pid, channel, address in rows.all()}


def _set_address(s: Session, name: str, channel: str, address: str) -> None:
    """One address per principal and channel; an address belongs to one principal."""
    principal = _find(s, name)
    other = s.scalar(
        select(Principal)
        .join(PrincipalAddress, PrincipalAddress.principal_id == Principal.id)
        .where(PrincipalAddress.channel == channel, PrincipalAddress.address == address)
    )
    if other is not None and other.name != name:
        raise _cli().fail(f"{address} is already the {channel} address of {other.name!r}", 1)
    row = s.get(PrincipalAddress, (principal.id, channel))
    if row is None:
        s.add(PrincipalAddress(principal_id=principal.id, channel=channel, address=address))
    else:
        row.address = address


@users_app.command("list")
def list_users() -> None:
    """Every user and API-token principal: role, how they sign in, Slack ID, e-mail, state."""
    with _session() as s:
        rows = s.scalars(select(Principal).order_by(Principal.name)).all()
        addresses = _addresses(s)
        table = Table("name", "role", "signs in with", "slack user", "e-mail", "state", "created")
        for p in rows:
            ways = [w for w, h in (("password", p.password_hash), ("token", p.token_hash)) if h]
            table.add_row(
                p.name,
                p.role,
                ", ".join(ways) or "-",
                addresses.get((p.id, "slack"), "-"),
                addresses.get((p.id, "email"), "-"),
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
        _set_address(s, name, "slack", slack_user_id)
    cli.out.print(f"user {name} is Slack user {slack_user_id}", highlight=False)


@users_app.command("set-email")
def set_email(
    name: NameArg,
    address: Annotated[str, typer.Argument(help="e-mail address, e.g. alice@example.com")],
) -> None:
    """Give a user an e-mail address: as an approver they then get a signed, single-use link
    for each approval they may decide (needs SOAR_SMTP_URL on the worker)."""
    cli = _cli()
    address = address.strip()
    local, _, domain = address.rpartition("@")
    if len(address) > 254 or not _EMAIL.match(address):
        raise cli.fail(f"{address[:80]!r} is not an e-mail address like alice@example.com")
    address = f"{local}@{domain.lower()}"
    with _session() as s:
        _set_address(s, name, "email", address)
    cli.out.print(f"user {name} has the e-mail address {address}", highlight=False)


# --- approver groups --------------------------------------------------------------------------

GroupArg = Annotated[str, typer.Argument(help="group name, e.g. secops-leads")]
NamesArg = Annotated[list[str], typer.Argument(help="user names")]


def _group_name(group: str) -> str:
    group = group.strip()
    if not GROUP_NAME.match(group):
        raise _cli().fail(f"{group[:80]!r} is not a group name ({GROUP_NAME_RULE})")
    return group


@group_app.command("add")
def group_add(group: GroupArg, names: NamesArg) -> None:
    """Add users to a group (created on first use)."""
    group = _group_name(group)
    with _session() as s:
        if s.get(ApproverGroup, group) is None:
            s.add(ApproverGroup(name=group))
            s.flush()
        for name in names:
            p = _find(s, name)
            if s.get(ApproverGroupMember, (group, p.id)) is None:
                s.add(ApproverGroupMember(group_name=group, principal_id=p.id))
    _cli().out.print(f"group {group}: added {', '.join(names)}", highlight=False)


@group_app.command("remove")
def group_remove(group: GroupArg, names: NamesArg) -> None:
    """Take users out of a group."""
    group = _group_name(group)
    with _session() as s:
        if s.get(ApproverGroup, group) is None:
            raise _cli().fail(f"no group named {group!r} (see `soar users group list`)", 1)
        for name in names:
            member = s.get(ApproverGroupMember, (group, _find(s, name).id))
            if member is not None:
                s.delete(member)
    _cli().out.print(f"group {group}: removed {', '.join(names)}", highlight=False)


@group_app.command("delete")
def group_delete(group: GroupArg) -> None:
    """Delete a group (a rule that names it then has nobody who may approve)."""
    group = _group_name(group)
    with _session() as s:
        row = s.get(ApproverGroup, group)
        if row is None:
            raise _cli().fail(f"no group named {group!r} (see `soar users group list`)", 1)
        s.delete(row)
    _cli().out.print(f"group {group} deleted", highlight=False)


@group_app.command("list")
def group_list() -> None:
    """Every group and its members."""
    with _session() as s:
        groups = s.scalars(select(ApproverGroup).order_by(ApproverGroup.name)).all()
        members: dict[str, list[str]] = {}
        for group, name in s.execute(
            select(ApproverGroupMember.group_name, Principal.name)
            .join(Principal, Principal.id == ApproverGroupMember.principal_id)
            .order_by(Principal.name)
        ).all():
            members.setdefault(group, []).append(name)
        table = Table("group", "members")
        for g in groups:
            table.add_row(g.name, ", ".join(members.get(g.name, [])) or "-")
    if not groups:
        _cli().out.print("no groups yet: `soar users group add GROUP NAME...`")
        return
    _cli().out.print(table)
