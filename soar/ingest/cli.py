"""`soar ingest FILE.jsonl|-`: a file of detections through the webhook intake.

Registered by soar.cli; it imports soar.cli only inside functions (soar.cli imports this
module while it is itself being loaded)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import sys
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text

from soar.ingest.checkpoint import Checkpoint, Result, Tally
from soar.ingest.run import (
    MAX_SKIP_BYTES,
    Aborted,
    EndlessLine,
    Ingest,
    InputChanged,
    Options,
    Poster,
    read_lines,
)
from soar.intake.schema import TECHNIQUE_RE

LISTED = 50  # invalid / unmapped lines shown in the closing table (all are counted)


def _cli() -> Any:
    import soar.cli

    return soar.cli


class RateColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.0f} lines/s" if speed else "- lines/s", style="progress.data.speed")


def _safe(value: str, limit: int = 300) -> str:
    """Attacker-written text for the terminal: no control or escape characters."""
    return "".join(c if c.isprintable() else "\ufffd" for c in value[:limit])


def count_lines(f: IO[bytes]) -> int:
    """The lines of a regular file, read through its own descriptor (then back at 0)."""
    n, last = 0, b"\n"
    fd = f.fileno()
    offset = 0
    while chunk := os.pread(fd, 1 << 20, offset):
        n += chunk.count(b"\n")
        last = chunk[-1:]
        offset += len(chunk)
    return n + (0 if last == b"\n" else 1)


def _secret(settings: Any, source: str | None) -> str:
    """The webhook secret to sign with: the default source's (SOAR_WEBHOOK_SECRET or the one
    `soar up` keeps in SOAR_HOME), or a registered source's, unsealed with the secrets key."""
    cli = _cli()
    if source in (None, "default"):
        if settings.webhook_secret is not None:
            return str(settings.webhook_secret.get_secret_value())
        if settings.webhook_secret_file.exists():
            return str(settings.webhook_secret_file.read_text().strip())
        raise cli.fail("no webhook secret: set SOAR_WEBHOOK_SECRET or run `soar up` first")
    from datetime import UTC, datetime

    from sqlalchemy import select
    from sqlalchemy.orm import Session

    from soar.db import make_sync_engine
    from soar.models import Source, SourceCredential
    from soar.sources import unseal
    from soar.sources_cli import secrets_key

    engine = make_sync_engine(cli.database_url_or_exit(settings))
    try:
        with Session(engine) as s:
            src = s.get(Source, source)
            if src is None or src.revoked_at is not None:
                raise cli.fail(f"no live source named {source!r} (see `soar sources list`)")
            now = datetime.now(UTC)
            creds = s.scalars(
                select(SourceCredential)
                .where(SourceCredential.source == source, SourceCredential.kind == "whsec")
                .where((SourceCredential.not_after.is_(None)) | (SourceCredential.not_after > now))
                .order_by(SourceCredential.id.desc())
            ).all()
    finally:
        engine.dispose()
    key = secrets_key(settings)
    for cred in creds:
        if (secret := unseal(cred.material, key)) is not None:
            return secret
    raise cli.fail(
        f"source {source!r} has no webhook secret readable here (an Ed25519 source signs "
        "with its own private key; or SOAR_SECRETS_KEY differs from the API's)"
    )


def closing_table(tally: Tally, *, resumed: int, dry_run: bool) -> list[Table]:
    c = tally.counts
    summary = Table(title="soar ingest" + (" (dry run: nothing sent)" if dry_run else ""))
    summary.add_column("outcome")
    summary.add_column("lines", justify="right")
    rows = [
        ("would be sent" if dry_run else "accepted", c["accepted"]),
        ("duplicate", c["duplicate"]),
        ("nothing detected", c["clean"]),
        ("unmapped", c["unmapped"]),
        ("invalid", c["invalid"]),
    ]
    if c["resumed"]:
        rows.insert(1, ("accepted or duplicate (resumed)", c["resumed"]))
    for name, n in rows:
        summary.add_row(name, f"{n:,}")
    notes = []
    if resumed:
        notes.append(f"resumed: lines 1-{resumed} were settled by the interrupted run")
    if c["resumed"]:
        notes.append(
            "accepted or duplicate: a duplicate now, and maybe sent by the interrupted run "
            "(its answer lost)"
        )
    if notes:
        summary.caption = "\n".join(notes)
    tables = [summary]
    if tally.invalid:
        t = Table(title="invalid lines")
        t.add_column("line", justify="right")
        t.add_column("reason")
        for n, reason in tally.invalid[:LISTED]:
            t.add_row(str(n), Text(_safe(reason)))
        if c["invalid"] > LISTED:
            t.caption = f"and {c['invalid'] - LISTED:,} more"
        tables.append(t)
    if tally.unmapped:
        t = Table(title="unmapped alerts (no ATLAS technique; not sent)")
        t.add_column("line", justify="right")
        t.add_column("id")
        for n, key, _ in tally.unmapped[:LISTED]:
            t.add_row(str(n), Text(_safe(key)))
        if c["unmapped"] > LISTED:
            t.caption = f"and {c['unmapped'] - LISTED:,} more"
        tables.append(t)
    return tables


def _open(file: str) -> tuple[IO[bytes], bool, int | None, str]:
    """The input, whether it is a regular file, its number of lines (a regular file's only:
    a pipe or a device is read once, as it streams) and its name for the checkpoint."""
    if file == "-":
        mode = os.fstat(sys.stdin.fileno()).st_mode
        return sys.stdin.buffer, stat.S_ISREG(mode), None, "-"
    path = Path(file)
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by the caller
        regular = stat.S_ISREG(os.fstat(f.fileno()).st_mode)
        if not regular:  # <(cmd), a named pipe, /dev/stdin, a device: like stdin
            return f, False, None, str(path.absolute())
        return f, True, count_lines(f), str(path.resolve())
    except OSError as exc:
        raise _cli().fail(f"{file}: {exc.strerror or exc}", 2) from None


def ingest(
    file: Annotated[str, typer.Argument(help='JSONL file of detections, or "-" for stdin')],
    dry_run: Annotated[
        bool,
        typer.Option(
            "--dry-run",
            help="print each enriched alert as JSON (technique, tactic, mitigations, summary, "
            "next steps); send and record nothing",
        ),
    ] = False,
    technique: Annotated[
        str | None,
        typer.Option(help="ATLAS technique for every plain alert (instead of the engine's)"),
    ] = None,
    source: Annotated[
        str | None,
        typer.Option(help="sign as this registered source (default: the default source)"),
    ] = None,
    tenant: Annotated[str, typer.Option(help="tenant of plain alerts without one")] = "default",
    rate: Annotated[
        float | None, typer.Option(min=0.01, help="at most this many lines per second")
    ] = None,
    concurrency: Annotated[int, typer.Option(min=1, max=64, help="requests in flight")] = 8,
    restart: Annotated[
        bool, typer.Option("--restart", help="ignore the checkpoint of an interrupted run")
    ] = False,
    url: Annotated[
        str | None, typer.Option(help="API base URL (default SOAR_PUBLIC_URL or host:port)")
    ] = None,
) -> None:
    """Send a file of detections, one JSON object a line (native, OCSF, a finding envelope
    or a plain alert {"id", "source", "severity", "message"}), through the webhook intake's
    rules. Resumable: after Ctrl-C or a crash, run the same command again."""
    cli = _cli()
    if technique is not None:
        technique = technique.strip().upper()
        if not TECHNIQUE_RE.match(technique):
            raise cli.fail("--technique must be an ATLAS technique ID such as AML.T0051")
    settings = cli.settings_or_exit()
    f, regular, total, name = _open(file)
    try:
        if dry_run:
            code = _dry_run(f, settings, regular=regular, technique=technique, tenant=tenant)
        else:
            code = _send(
                f,
                settings,
                regular=regular,
                total=total,
                name=name,
                source=source,
                options=Options(technique, tenant, rate, concurrency),
                restart=restart,
                url=(url or settings.base_url),
            )
    finally:
        if f is not sys.stdin.buffer:
            f.close()
    raise typer.Exit(code)


def _progress(console: Console) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def _send(
    f: IO[bytes],
    settings: Any,
    *,
    regular: bool,
    total: int | None,
    name: str,
    source: str | None,
    options: Options,
    restart: bool,
    url: str,
) -> int:
    import httpx

    cli = _cli()
    secret = _secret(settings, source)
    identity = {
        "input": name,
        "source": source or "default",
        "url": url.rstrip("/"),
        "technique": options.technique,
        "tenant": options.tenant,
    }
    ckpt = Checkpoint.open(settings.home, identity)
    if restart:
        ckpt = Checkpoint(ckpt.path, identity)
    console = cli.console
    if ckpt.done or ckpt.sent_upto:
        console.print(f"resuming after line {ckpt.done} (checkpoint {ckpt.path})", highlight=False)

    async def main(run: Ingest) -> Tally:
        limits = httpx.Limits(max_connections=options.concurrency)
        async with httpx.AsyncClient(timeout=30, limits=limits) as client:
            run.poster.client = client
            with _progress(console) as progress:
                task = progress.add_task("ingest", total=total, completed=run.resumed)
                run.on_result = lambda r: progress.advance(task)
                return await run.run(f, regular=regular)

    def make(c: Checkpoint) -> Ingest:
        poster = Poster(None, base_url=url, secret=secret)
        return Ingest(poster=poster, checkpoint=c, options=options)

    run = make(ckpt)
    try:
        try:
            tally = asyncio.run(main(run))
        except InputChanged as exc:
            if name == "-" or not regular:
                raise cli.fail(f"{exc}; pass --restart to start over", 1) from None
            console.print(f"{exc}: starting over from line 1", highlight=False)
            f.seek(0)
            run = make(Checkpoint(ckpt.path, identity))
            tally = asyncio.run(main(run))
    except KeyboardInterrupt:
        for t in closing_table(run.tally(), resumed=run.resumed, dry_run=False):
            console.print(t)
        console.print(
            f"interrupted after line {run.ckpt.done}: run the same command to resume",
            highlight=False,
        )
        return 130
    except Aborted as exc:
        for t in closing_table(run.tally(), resumed=run.resumed, dry_run=False):
            console.print(t)
        console.print(f"[red]error:[/red] {_safe(str(exc), 500)}", highlight=False)
        console.print("what was done is kept: run the same command to resume", highlight=False)
        return 1
    for t in closing_table(tally, resumed=run.resumed, dry_run=False):
        cli.out.print(t)
    return 1 if tally.counts["invalid"] else 0


def _dry_run(
    f: IO[bytes], settings: Any, *, regular: bool, technique: str | None, tenant: str
) -> int:
    from soar.detect import Engine
    from soar.ingest.dryrun import InfoLookup, builtin_info, enrich_line

    cli = _cli()

    tally = Tally()

    async def main() -> None:
        engine = Engine.default()
        info: InfoLookup = builtin_info
        db = None
        if settings.database_url:
            from soar.atlas.store import TechniqueInfo, technique_info
            from soar.db import make_async_engine, session_factory

            db = make_async_engine(settings.database_url, pool_size=1)
            factory = session_factory(db)

            async def from_db(t: str) -> TechniqueInfo | None:
                async with factory() as s:
                    return await technique_info(s, t)

            try:
                await from_db("AML.T0051")
                info = from_db
            except Exception:  # no database here: the built-in catalog will do
                cli.console.print("database unreachable: using the built-in ATLAS catalog")
        seen: set[str] = set()
        lines = read_lines(f, skip_max=None if regular else MAX_SKIP_BYTES)
        try:
            for number, (raw, _) in enumerate(lines, start=1):
                result, shown = await enrich_line(
                    number, raw, engine=engine, info=info, technique=technique, tenant=tenant
                )
                key = result.key
                if result.outcome == "accepted" and key is not None:
                    if key in seen:  # a repeat within the file: the intake's 200
                        result = Result(result.line, "duplicate", key)
                        if shown is not None:
                            shown["status"] = "duplicate"
                    seen.add(key)
                tally.add(result)
                if shown is not None:
                    cli.out.print(json.dumps(shown), markup=False, highlight=False, soft_wrap=True)
        finally:
            if db is not None:
                await db.dispose()

    try:
        asyncio.run(main())
    except EndlessLine as exc:
        for t in closing_table(tally, resumed=0, dry_run=True):
            cli.console.print(t)
        cli.console.print(f"[red]error:[/red] {_safe(str(exc), 500)}", highlight=False)
        return 1
    for t in closing_table(tally, resumed=0, dry_run=True):
        cli.console.print(t)
    return 1 if tally.counts["invalid"] else 0


__all__ = ["Result", "ingest"]
