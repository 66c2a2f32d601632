"""`soar up`: the whole product on one machine, in the foreground, until Ctrl-C."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import httpx
from rich.console import Console

from soar.config import Settings
from soar.db import safe_url
from soar.escape import terminal_text
from soar.sources import new_secret
from soar.stack.postgres import EmbeddedPostgres, EmbeddedPostgresError
from soar.stack.proc import free_port, port_in_use
from soar.stack.temporal import EmbeddedTemporal, EmbeddedTemporalError

if TYPE_CHECKING:
    from soar.stack.console import ConsoleFeed


def ensure_webhook_secret(settings: Settings) -> tuple[str, str]:
    """(secret, where it comes from). Generated once into SOAR_HOME when not configured."""
    if settings.webhook_secret is not None:
        return settings.webhook_secret.get_secret_value(), "SOAR_WEBHOOK_SECRET"
    path = settings.webhook_secret_file
    return _home_secret(path, new_secret), str(path)


def ensure_session_secret(settings: Settings) -> str:
    """The web UI cookie key, generated once into SOAR_HOME when not configured."""
    if settings.session_secret is not None and settings.session_secret.get_secret_value():
        return settings.session_secret.get_secret_value()
    return _home_secret(settings.home / "session-secret", lambda: secrets.token_urlsafe(48))


def ensure_decision_key(settings: Settings) -> str:
    """The key that signs approval decisions (API) and verifies them (worker), generated
    once into SOAR_HOME when not configured."""
    if settings.decision_key is not None and settings.decision_key.get_secret_value():
        return settings.decision_key.get_secret_value()
    return _home_secret(settings.home / "decision-key", lambda: secrets.token_urlsafe(48))


def _home_secret(path: Path, make: Callable[[], str]) -> str:
    """A secret kept in SOAR_HOME (mode 0600), generated on first use."""
    if path.exists():
        return path.read_text().strip()
    value = make()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(value + "\n")
    return value


def ensure_secrets_key(settings: Settings) -> str:
    """The key that encrypts source secrets at rest (SOAR_SECRETS_KEY, else SOAR_HOME)."""
    if settings.secrets_key is not None and settings.secrets_key.get_secret_value():
        return settings.secrets_key.get_secret_value()
    return _home_secret(settings.home / "secrets-key", lambda: secrets.token_urlsafe(32))


GATEWAY_PRINCIPAL = "local-gateway"


def ensure_gateway_token(settings: Settings) -> str:
    """A bearer token of role gateway for trying the enforcement checks, in SOAR_HOME."""
    return _home_secret(settings.home / "gateway-token", lambda: secrets.token_urlsafe(32))


def running_stack(home: Path) -> dict[str, str] | None:
    """What a running `soar up` under `home` recorded (database_url, temporal_address,
    api_url), or None when none is running."""
    path = home / "stack.json"
    try:
        found = json.loads(path.read_text())
        os.kill(int(found["pid"]), 0)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {k: str(v) for k, v in found.items() if k != "pid"}


def _ports(home: Path) -> dict[str, int]:
    """Reuse the embedded servers' ports of the last run so printed URLs stay stable."""
    path = home / "ports.json"
    try:
        saved: dict[str, int] = json.loads(path.read_text())
    except (OSError, ValueError):
        saved = {}
    ports = {}
    for name in ("postgres", "temporal", "temporal_ui"):
        p = saved.get(name)
        ports[name] = p if isinstance(p, int) and not port_in_use("127.0.0.1", p) else free_port()
    path.write_text(json.dumps(ports))
    return ports


ADMIN_PRINCIPAL = "local-admin"


def ensure_admin_token(settings: Settings) -> str:
    """A development bearer token of role admin, made once, in SOAR_HOME (mode 0600): the
    README's API examples use it. Not for production: there, tokens come from
    SOAR_API_TOKENS or `soar users token`."""
    return _home_secret(settings.home / "admin-token", lambda: secrets.token_urlsafe(32))


def _soar_command() -> str:
    """How to run `soar` from another terminal: plain `soar` when it is on PATH, else the
    venv's own script."""
    import shutil

    found = shutil.which("soar")
    mine = Path(sys.executable).with_name("soar")
    if found and Path(found).resolve() == mine.resolve():
        return "soar"
    return str(mine) if mine.exists() else f"{sys.executable} -m atlas_soar"


def run_stack(settings: Settings, *, command: Sequence[str], console: Console, err: Console) -> int:
    """Start everything, wait for Ctrl-C / SIGTERM, stop everything. 0 only when every
    child also stopped cleanly. `command`: how to run `soar` (the worker and the API are
    started as `command worker` and `command api`)."""
    unclean: list[str] = []
    code = _run_stack(settings, command=command, console=console, err=err, unclean=unclean)
    return 1 if unclean and code == 0 else code


def _run_stack(
    settings: Settings,
    *,
    command: Sequence[str],
    console: Console,
    err: Console,
    unclean: list[str],
) -> int:
    home = settings.home
    from soar.errors import explain
    from soar.stack.preflight import check_policy

    try:
        check_policy(settings)
    except Exception as exc:
        line = explain(exc)
        if line is None:
            raise
        for part in line.splitlines():
            err.print(f"[red]error:[/red] {terminal_text(part)}", highlight=False)
        return 1
    if port_in_use(settings.api_host, settings.api_port):
        err.print(
            f"[red]error:[/red] port {settings.api_port} on {settings.api_host} is in use "
            "(set SOAR_API_PORT)"
        )
        return 1
    home.mkdir(parents=True, exist_ok=True)
    secret, secret_source = ensure_webhook_secret(settings)
    ports = _ports(home)
    pg: EmbeddedPostgres | None = None
    tp: EmbeddedTemporal | None = None
    children: list[subprocess.Popen[bytes]] = []
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    started = time.monotonic()
    try:
        with console.status("starting atlas-soar ...") as status:
            db_url = settings.database_url
            if db_url is None:
                status.update("starting embedded PostgreSQL ...")
                pg = EmbeddedPostgres(home / "pgdata", port=ports["postgres"])
                pg.start()
                db_url = pg.url
            address = settings.temporal_address
            if address is None:
                status.update("starting the Temporal dev server ...")
                tp = EmbeddedTemporal(
                    home / "temporal.db",
                    port=ports["temporal"],
                    ui_port=ports["temporal_ui"],
                    namespace=settings.temporal_namespace,
                )
                tp.start()
                address = tp.address
            status.update("applying migrations ...")
            from soar.stack.bootstrap import migrate_and_seed

            catalog = migrate_and_seed(db_url)
            from soar.stack.preflight import catalog_known_ids

            try:  # its patterns against the catalog now loaded, before anything starts
                check_policy(settings, catalog_known_ids(db_url))
            except Exception as exc:
                line = explain(exc)
                if line is None:
                    raise
                for part in line.splitlines():
                    err.print(f"[red]error:[/red] {terminal_text(part)}", highlight=False)
                return 1
            gateway = f"{GATEWAY_PRINCIPAL}:gateway:{ensure_gateway_token(settings)}"
            admin = f"{ADMIN_PRINCIPAL}:admin:{ensure_admin_token(settings)}"
            tokens = settings.api_tokens.get_secret_value() if settings.api_tokens else ""
            env = dict(
                os.environ,
                SOAR_DATABASE_URL=db_url,
                SOAR_TEMPORAL_ADDRESS=address,
                SOAR_WEBHOOK_SECRET=secret,
                SOAR_SESSION_SECRET=ensure_session_secret(settings),
                SOAR_SECRETS_KEY=ensure_secrets_key(settings),
                SOAR_DECISION_KEY=ensure_decision_key(settings),
                SOAR_API_TOKENS=",".join(t for t in (tokens, gateway, admin) if t),
            )
            env |= temporal_ui_env(tp, os.environ)
            status.update("starting the worker and the API ...")
            for cmd in ("worker", "api"):
                children.append(
                    subprocess.Popen(
                        [*command, cmd],
                        env=env,
                        stdin=subprocess.DEVNULL,
                        # Not in the terminal's process group: a Ctrl-C reaches this process
                        # only, which stops them in order (below).
                        start_new_session=True,
                    )
                )
            base = f"http://{settings.api_host}:{settings.api_port}"
            while not stopping:
                if any(c.poll() is not None for c in children):
                    err.print("[red]error:[/red] the worker or the API exited; stopping")
                    return 1
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                time.sleep(0.2)
        if stopping:
            return 130
        stack_file = home / "stack.json"
        fd = os.open(stack_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            record = {"pid": os.getpid(), "database_url": db_url, "api_url": base}
            json.dump({**record, "temporal_address": address}, fh)
        console.print(
            f"[bold green]atlas-soar is ready[/bold green] in {time.monotonic() - started:.1f}s"
        )
        console.print(f"  API            {base}  (docs {base}/docs)")
        console.print(f"  web UI         {base}/ui")
        console.print(f"  database       {safe_url(db_url)}" + ("  (embedded)" if pg else ""))
        console.print(f"  Temporal       {address}" + ("  (embedded)" if tp else ""))
        if tp:
            console.print(f"  Temporal UI    {tp.ui_url}")
        console.print(f"  data folder    {home}")
        console.print(f"  webhook secret {secret_source}")
        console.print(
            f"  gateway token  {home / 'gateway-token'}  (enforcement checks: "
            "Authorization: Bearer <its content>)"
        )
        console.print(
            f"  admin token    {home / 'admin-token'}  (development only: every API route)"
        )
        console.print(f"  ATLAS catalog  {catalog}")
        soar_cmd = _soar_command()
        tok = f"$(cat {home / 'admin-token'})"
        console.print("[bold]Next[/bold], in another terminal:", highlight=False)
        console.print(
            f"  {soar_cmd} send --technique AML.T0051 --session s-9 --tenant acme\n"
            f'  curl -H "Authorization: Bearer $(cat {home / "gateway-token"})" '
            f"'{base}/v1/enforcement/sessions/s-9?tenant=acme'\n"
            f"  {soar_cmd} send --technique AML.T0057 --severity critical --api-key k-1 "
            "--tenant acme\n"
            f"  curl -H \"Authorization: Bearer {tok}\" '{base}/v1/approvals?status=pending'\n"
            f"  curl -H \"Authorization: Bearer {tok}\" '{base}/v1/audit?format=jsonl'\n"
            f"  {soar_cmd} audit verify",
            highlight=False,
            markup=False,
        )
        console.print("Press Ctrl-C to stop. Detections, blocks and decisions show below.")
        from soar.stack.console import ConsoleFeed

        feed = ConsoleFeed(db_url)
        try:
            while not stopping:
                if any(c.poll() is not None for c in children):
                    err.print("[red]error:[/red] the worker or the API exited; stopping")
                    return 1
                _show_feed(feed, console, err)
                time.sleep(0.3)
        finally:
            feed.close()
        return 0
    except (EmbeddedPostgresError, EmbeddedTemporalError) as exc:
        err.print(f"[red]error:[/red] {exc}")
        return 1
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        err.print(f"[red]error:[/red] {type(exc).__name__}: {first}")
        return 1
    finally:
        (home / "stack.json").unlink(missing_ok=True)
        console.print("stopping ...")
        if not stop_children(children, grace=settings.worker_shutdown_grace_seconds + 5, err=err):
            unclean.append("child")
        if tp:
            tp.stop()
        if pg:
            pg.stop()
        console.print("stopped.")


def _show_feed(feed: ConsoleFeed, console: Console, err: Console) -> None:
    """The console's lines since the last call; a database hiccup only skips a beat."""
    try:
        lines = feed.poll()
    except Exception as exc:
        if not feed.failing:  # once, not every beat
            err.print(f"[yellow]note:[/yellow] console feed: {terminal_text(type(exc).__name__)}")
        feed.failing = True
        return
    feed.failing = False
    for line in lines:
        console.print(line, highlight=False, soft_wrap=True)


def stop_children(children: list[subprocess.Popen[bytes]], *, grace: float, err: Console) -> bool:
    """SIGTERM the API first (no new work), then the worker (finishes or hands back what it
    runs); a process still running after `grace` seconds is killed. False when one did not
    stop cleanly (killed, or a non-zero exit), each named in one line."""
    clean = True
    for c in reversed(children):  # started worker, api
        if c.poll() is None:
            c.send_signal(signal.SIGTERM)
            try:
                c.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                c.kill()
                c.wait()
                err.print(f"[red]error:[/red] {_name(c)} did not stop within {grace:g}s; killed")
                clean = False
                continue
        if c.returncode != 0:
            err.print(f"[red]error:[/red] {_name(c)} exited with code {c.returncode}")
            clean = False
    return clean


def _name(c: subprocess.Popen[bytes]) -> str:
    args = c.args if isinstance(c.args, list) else [str(c.args)]
    return f"the {args[-1]}" if args else "a child"


def temporal_ui_env(tp: EmbeddedTemporal | None, environ: Mapping[str, str]) -> dict[str, str]:
    """The embedded Temporal's UI for the incident pages' links, unless one is configured."""
    if tp is None or "SOAR_TEMPORAL_UI_URL" in environ:
        return {}
    return {"SOAR_TEMPORAL_UI_URL": tp.ui_url}
