"""One clear line for the mistakes users make, instead of a traceback.

`explain(exc)` names what is wrong and what to do: a database that is unreachable or not
migrated, a Temporal server that is unreachable, a playbook that does not load (with the
variable, file, line and reason), an API that does not answer. The `soar` command runs every
subcommand through it (soar/cli.py); anything it does not recognise is a bug and keeps its
traceback.
"""

from __future__ import annotations

import os

# SQLSTATEs of a schema that is missing or older than the code (undefined table, column,
# function, object; invalid schema name).
_NOT_MIGRATED = {"42P01", "42703", "42883", "42704", "3F000"}
# SQLSTATEs of a database that cannot be used as configured (no such database, bad password).
_CANNOT_CONNECT = {"3D000", "28P01", "28000"}


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen and len(seen) < 10:
        seen.append(cur)
        cur = getattr(cur, "orig", None) or cur.__cause__ or cur.__context__
    return seen


def _where_db() -> str:
    if os.environ.get("SOAR_DATABASE_URL"):
        return "check SOAR_DATABASE_URL"
    return "start the stack with `make run` (or set SOAR_DATABASE_URL)"


def explain(exc: BaseException) -> str | None:
    """One line for a known mistake (a playbook with several: one line each), or None."""
    import httpx
    import psycopg
    import sqlalchemy.exc

    from soar.policy.playbook import PlaybookError

    for e in _chain(exc):
        if isinstance(e, PlaybookError):  # every problem, one line each
            return "\n".join(f"SOAR_POLICY_FILE: {p.message}" for p in e.problems)
        if isinstance(e, psycopg.Error):
            state = getattr(e, "sqlstate", None)
            if state in _NOT_MIGRATED:
                return (
                    "the database is not migrated (or is older than this version of "
                    "atlas-soar): run `soar migrate`"
                )
            if state in _CANNOT_CONNECT or isinstance(e, psycopg.OperationalError):
                return f"the database is unreachable ({_first_line(e)}): {_where_db()}"
        if isinstance(e, sqlalchemy.exc.DBAPIError) and e.connection_invalidated:
            return f"the database is unreachable ({_first_line(e)}): {_where_db()}"
        if isinstance(e, httpx.ConnectError | httpx.ConnectTimeout):
            return (
                f"the API is unreachable ({_first_line(e)}): is `make run` (or `soar api`) "
                "running? SOAR_API_HOST / SOAR_API_PORT say where"
            )
        if isinstance(e, ConnectionError) and "Temporal" in str(e):
            return (
                f"{_first_line(e)}: start the stack with `make run` or check SOAR_TEMPORAL_ADDRESS"
            )
    return None
