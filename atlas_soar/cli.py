"""The `soar` command: the core commands of `soar.cli`, and those that start the outer
layers (the worker, the API with the UI and Slack, the whole stack) or manage who may
approve (`users`)."""

from __future__ import annotations

import asyncio
import sys
from typing import Annotated

import typer

from approvals.cli import users_app
from soar.cli import (
    app,
    console,
    database_url_or_exit,
    fail,
    out,
    preflight,
    production_or_exit,
    settings_or_exit,
    setup_cli_logging,
    tracing_or_exit,
)
from soar.cli import main as _main
from soar.config import SettingsError
from soar.db import safe_url

__all__ = ["app", "main"]

# How `soar up` starts its worker and API processes: this command, in this interpreter.
SOAR_COMMAND = (sys.executable, "-m", "atlas_soar")

app.add_typer(users_app, name="users")


@app.command()
def up() -> None:
    """Run everything on this machine: embedded PostgreSQL and Temporal (unless
    SOAR_DATABASE_URL / SOAR_TEMPORAL_ADDRESS point elsewhere), migrations, the worker and
    the HTTP API. Ctrl-C stops all of it."""
    from soar.stack.up import run_stack

    settings = settings_or_exit(find_stack=False)
    tracing_or_exit(None)
    raise typer.Exit(run_stack(settings, command=SOAR_COMMAND, console=out, err=console))


@app.command()
def worker(
    queues: Annotated[
        str,
        typer.Option(
            help="which bulkheads to run: core (containment, decisions, block lifts, the "
            "log, the workflow), external (Slack, Jira, hooks, notices), or both"
        ),
    ] = "core,external",
) -> None:
    """Run a Temporal worker (the incident workflow and its activities)."""
    settings = settings_or_exit()
    production_or_exit(settings, "worker")
    url = database_url_or_exit(settings)
    if not settings.temporal_address:
        raise fail("SOAR_TEMPORAL_ADDRESS is not set")
    setup_cli_logging(settings)
    tracing_or_exit("atlas-soar-worker")
    from atlas_soar.worker import parse_queues, run_worker
    from soar.stack.lifecycle import exit_now, run_until_signalled
    from soar.temporal_client import connect

    try:
        kinds = parse_queues(queues)
    except ValueError as exc:
        raise fail(str(exc)) from None
    playbook = preflight(settings, url)
    try:  # Temporal answers, or one line (checked before the long run and its handlers)
        asyncio.run(
            connect(settings.temporal_address, settings.temporal_namespace, settings=settings)
        )
    except ConnectionError as exc:
        raise fail(f"{exc}: start it, or check SOAR_TEMPORAL_ADDRESS", 1) from None
    except SettingsError as exc:
        raise fail(str(exc), 1) from None

    async def run(stop: asyncio.Event) -> None:
        assert settings.temporal_address
        client = await connect(
            settings.temporal_address, settings.temporal_namespace, settings=settings
        )
        console.print(
            f"worker ({', '.join(sorted(kinds))}): database {safe_url(url)}, Temporal "
            f"{settings.temporal_address} namespace {settings.temporal_namespace}, task queue "
            f"{settings.temporal_task_queue}, playbook {playbook}",
            highlight=False,
            markup=False,
        )
        await run_worker(settings, url, client, queues=kinds, stop=stop)

    # SIGINT / SIGTERM: a graceful stop, exit 0 (soar/stack/lifecycle.py).
    try:
        code = run_until_signalled(run)
    except ConnectionError as exc:
        console.print(
            f"[red]error:[/red] {exc}: start it, or check SOAR_TEMPORAL_ADDRESS",
            highlight=False,
            markup=True,
        )
        code = 1
    except SettingsError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        code = 1
    except Exception as exc:
        console.print(f"[red]error:[/red] worker stopped: {type(exc).__name__}: {exc}"[:500])
        code = 1
    exit_now(code)


@app.command()
def api() -> None:
    """Run the HTTP API (intake, enforcement checks, incidents, approvals, audit, web UI)."""
    settings = settings_or_exit()
    production_or_exit(settings, "api")
    url = database_url_or_exit(settings)
    if not settings.temporal_address:
        raise fail("SOAR_TEMPORAL_ADDRESS is not set")
    if settings.webhook_secret is None:
        raise fail("SOAR_WEBHOOK_SECRET is not set (whsec_...)")
    setup_cli_logging(settings)
    tracing_or_exit("atlas-soar-api")
    import uvicorn

    from atlas_soar.app import create_app
    from soar.stack.proc import port_in_use

    if port_in_use(settings.api_host, settings.api_port):
        raise fail(f"port {settings.api_port} on {settings.api_host} is in use", 1)
    playbook = preflight(settings, url)
    from soar.temporal_client import connect

    try:
        asyncio.run(
            connect(
                settings.temporal_address,
                settings.temporal_namespace,
                attempts=8,
                settings=settings,
            )
        )
    except ConnectionError as exc:
        raise fail(f"{exc}: start it, or check SOAR_TEMPORAL_ADDRESS", 1) from None
    except SettingsError as exc:
        raise fail(str(exc), 1) from None
    console.print(
        f"API on http://{settings.api_host}:{settings.api_port}: database {safe_url(url)}, "
        f"Temporal {settings.temporal_address} namespace {settings.temporal_namespace}, "
        f"playbook {playbook}",
        highlight=False,
        markup=False,
    )
    application = create_app(
        settings,
        database_url=url,
        temporal_address=settings.temporal_address,
        webhook_secret=settings.webhook_secret.get_secret_value(),
    )
    from soar.stack.lifecycle import exit_now, signals_noted

    # uvicorn stops gracefully on SIGINT / SIGTERM, then re-raises the signal: only noted
    # here, and the process leaves with 0 (soar/stack/lifecycle.py).
    with signals_noted():
        uvicorn.run(
            application,
            host=settings.api_host,
            port=settings.api_port,
            log_level="warning",
            access_log=False,
            # Open enforcement streams must not hold a Ctrl-C / SIGTERM for long.
            timeout_graceful_shutdown=2,
        )
    exit_now(0)


def main() -> None:
    _main()


if __name__ == "__main__":
    main()
