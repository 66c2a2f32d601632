"""`soar audit verify|export|search` and `soar report`, against SOAR_DATABASE_URL."""

from __future__ import annotations

import asyncio
import json
import shutil
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from soar.audit import formats, query
from soar.escape import terminal_text

audit_app = typer.Typer(
    help="The hash-chained action log: verify it, sign checkpoints of it, export it, search it.",
    no_args_is_help=True,
)

PARALLEL_FROM = 100_000  # rows; below this, starting processes costs more than it saves

Since = Annotated[
    str | None, typer.Option(help="from this time, inclusive (ISO 8601, e.g. 2026-11-01)")
]
Until = Annotated[str | None, typer.Option(help="up to this time, exclusive (ISO 8601)")]
IncidentOpt = Annotated[str | None, typer.Option("--incident", "--incident-id", help="incident")]
TechniqueOpt = Annotated[
    str | None, typer.Option(help="ATLAS technique; also matches its sub-techniques")
]
TacticOpt = Annotated[str | None, typer.Option(help="ATLAS tactic, e.g. AML.TA0005")]
SubjectOpt = Annotated[str | None, typer.Option(help="subject key, e.g. user:u-42")]
ActorOpt = Annotated[str | None, typer.Option(help="who acted, e.g. system:atlas-soar")]
ActionOpt = Annotated[str | None, typer.Option(help="action type, e.g. block_session")]
OutcomeOpt = Annotated[str | None, typer.Option(help="outcome, e.g. applied")]
EventOpt = Annotated[str | None, typer.Option(help="event, e.g. approval.decided")]


# soar.cli imports this module while it is being loaded: take its helpers late.


def _fail(message: str, code: int = 2) -> typer.Exit:
    """soar.cli.fail: `message` is plain text (it escapes it with terminal_text), so a
    checkpoint name or a problem's reason, which an attacker may choose, is never markup."""
    from soar.cli import fail

    return fail(message, code)


def _out() -> Console:
    from soar.cli import out

    return out


def _err() -> Console:
    from soar.cli import console

    return console


def _database_url() -> str:
    from soar.cli import database_url_or_exit, settings_or_exit

    return database_url_or_exit(settings_or_exit())


def _when(option: str, value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        at = datetime.fromisoformat(value.strip())
    except ValueError:
        raise _fail(f"{option}: {value!r} is not an ISO 8601 date or time") from None
    return at if at.tzinfo else at.replace(tzinfo=UTC)


def _filters(**values: Any) -> query.AuditFilter:
    values["since"] = _when("--since", values.get("since"))
    values["until"] = _when("--until", values.get("until"))
    try:
        return query.AuditFilter(**values)
    except query.AuditQueryError as exc:
        raise _fail(f"--{exc.field}: {exc.message}") from None


def _run_async(fn: Callable[[Any], Any]) -> Any:
    """Run `fn(session)` in a session of a short-lived async engine."""
    from soar.db import make_async_engine, session_factory

    async def main() -> Any:
        engine = make_async_engine(_database_url(), pool_size=1)
        try:
            async with session_factory(engine)() as session:
                return await fn(session)
        finally:
            await engine.dispose()

    return asyncio.run(main())


MAX_PRINTED = 20  # problems printed by `soar audit verify`; the count covers all


@audit_app.command("verify")
def verify(
    workers: Annotated[
        int | None, typer.Option(min=1, max=64, help="processes to hash in; default: CPUs, up to 4")
    ] = None,
    checkpoints: Annotated[
        str | None,
        typer.Option(help="directory or bucket URL of signed checkpoints to prove the log against"),
    ] = None,
    public_key: Annotated[
        list[Path] | None,
        typer.Option(help="public key (PEM) the checkpoints are signed with; repeat for rotation"),
    ] = None,
    max_problems: Annotated[
        int, typer.Option(min=1, max=100_000, help="problems to print (all are counted)")
    ] = MAX_PRINTED,
) -> None:
    """Check the whole log; exit 0 when intact, 1 naming every problem found (and, with
    --checkpoints, truncation and rewritten history)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    from soar.audit import checkpoint as cp
    from soar.audit.verify import chain_length, default_workers, verify_chain
    from soar.db import make_sync_engine

    signed: list[Any] = []
    bad: list[Any] = []
    if checkpoints is not None:
        if not public_key:
            raise _fail("--public-key: needed with --checkpoints")
        try:
            keys = cp.load_public(public_key)
            signed, bad = cp.load_all(cp.sink(checkpoints), keys)
        except cp.CheckpointError as exc:
            raise _fail(f"--checkpoints: {exc}") from None
        if not signed and not bad:
            raise _fail(f"--checkpoints: no checkpoint found in {checkpoints}")
    elif public_key:
        raise _fail("--checkpoints: needed with --public-key")
    engine = make_sync_engine(_database_url())
    try:
        with engine.connect() as conn:
            total = chain_length(conn)
            with Progress(
                "[progress.description]{task.description}",
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=_err(),
                transient=True,
                # Redrawn from the callback, not by a thread: worker processes are forked.
                auto_refresh=False,
            ) as bar:
                task = bar.add_task("verifying the action log", total=total or None)
                if workers is None:
                    workers = default_workers() if total >= PARALLEL_FROM else 1
                result = verify_chain(
                    conn,
                    workers=workers,
                    checkpoints=signed,
                    progress=lambda n: bar.update(task, completed=n, refresh=True),
                )
    finally:
        engine.dispose()
    out = _out()
    problems = sorted([*result.problems, *bad], key=lambda p: p.seq)
    count = result.problem_count + len(bad)
    backlog = (
        f"; {result.unsealed} rows not sealed yet, the oldest {result.oldest_unsealed:.1f}s old"
        if result.unsealed and result.oldest_unsealed is not None
        else "; every row sealed"
    )
    against = f", {result.checkpoints} checkpoints" if checkpoints is not None else ""
    if problems:
        for p in problems[:max_problems]:
            out.print(f"problem: {terminal_text(p.reason)}", highlight=False, soft_wrap=True)
        if count > max_problems:
            out.print(f"... and {count - max_problems} more problems", highlight=False)
        first = problems[0]
        raise _fail(
            f"action log verification failed: {count} problem(s), the first at row {first.seq}: "
            f"{first.reason} ({result.rows} rows intact before it, {result.rows_read} read"
            f"{against}{backlog})",
            1,
        )
    out.print(
        f"action log intact: {result.rows} rows, head {result.head_seq} "
        f"{terminal_text(result.head_hash)}"
        f"{against}{backlog}",
        highlight=False,
    )


@audit_app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="directory to write the key pair to")],
) -> None:
    """Make an Ed25519 key pair for checkpoints: KID.key.pem (keep it away from the API and
    workers) and KID.pub.pem (give it to auditors). Rotate by making a new pair."""
    from soar.audit import checkpoint as cp

    try:
        key, pub = cp.keygen(out)
    except OSError as exc:
        raise _fail(f"--out: cannot write there ({type(exc).__name__})") from None
    _out().print(
        f"private key {terminal_text(key)}\npublic key  {terminal_text(pub)}", highlight=False
    )


@audit_app.command("checkpoint")
def checkpoint(
    key: Annotated[Path, typer.Option("--key", help="Ed25519 private key (PEM)")],
    out: Annotated[str, typer.Option("--out", help="directory, or bucket URL (s3://, https://)")],
    every: Annotated[
        float | None,
        typer.Option(min=1.0, help="keep running: a checkpoint at least every this many seconds"),
    ] = None,
    rows: Annotated[
        int | None,
        typer.Option(
            min=1, help="keep running: a checkpoint as soon as this many more rows are sealed"
        ),
    ] = None,
) -> None:
    """Sign the log's head (seq, hash, database time) and write it to --out, after checking
    the rows since the newest checkpoint still link to it. With --every and/or --rows it keeps
    running (every N rows or T seconds, whichever comes first), as a cron-less signer."""
    import time

    from sqlalchemy import text as sql

    from soar.audit import checkpoint as cp
    from soar.db import make_sync_engine

    try:
        private = cp.load_private(key)
        target = cp.sink(out)
    except cp.CheckpointError as exc:
        raise _fail(str(exc)) from None
    keep_running = every is not None or rows is not None
    poll = 1.0 if rows is not None else float(every or 0)
    engine = make_sync_engine(_database_url())
    last_seq: int | None = None
    last_at = 0.0
    try:
        while True:
            due = last_seq is None or (every is not None and time.monotonic() - last_at >= every)
            if not due and rows is not None:
                with engine.connect() as conn:
                    head = conn.execute(sql("SELECT max(seq) FROM action_log")).scalar()
                due = head is not None and int(head) - (last_seq or 0) >= rows
            if due:
                try:
                    with engine.connect() as conn:
                        made = cp.make(conn, private, target, skip_unchanged=keep_running)
                except cp.CheckpointError as exc:
                    raise _fail(str(exc), 1) from None
                last_seq, last_at = made.seq, time.monotonic()
                if made.written:
                    _out().print(
                        f"checkpoint {terminal_text(made.name)}: row {made.seq} "
                        f"{terminal_text(made.hash)}",
                        highlight=False,
                    )
            if not keep_running:
                return
            time.sleep(poll)
    finally:
        engine.dispose()


def _json_array(chunks: Iterator[str]) -> Iterator[str]:
    """JSON lines (in chunks of whole lines) as one JSON array, still streamed."""
    sep = "[\n"
    for chunk in chunks:
        # A JSON line holds no raw newline: json.dumps escapes them.
        yield sep + chunk.rstrip("\n").replace("\n", ",\n")
        sep = ",\n"
    yield "[]\n" if sep == "[\n" else "\n]\n"


@audit_app.command("export")
def export(
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="csv, jsonl, json or ocsf (JSON lines)")
    ] = "jsonl",
    since: Since = None,
    until: Until = None,
    incident_id: IncidentOpt = None,
    technique: TechniqueOpt = None,
    tactic: TacticOpt = None,
    subject: SubjectOpt = None,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    outcome: OutcomeOpt = None,
    event: EventOpt = None,
) -> None:
    """Write every matching row to stdout, streamed (constant memory), in seq order."""
    if fmt not in ("csv", "jsonl", "json", "ocsf"):
        raise _fail(f"--format: {fmt!r} is not one of csv, jsonl, json, ocsf")
    f = _filters(
        incident_id=incident_id,
        technique=technique,
        tactic=tactic,
        subject=subject,
        actor=actor,
        action=action,
        outcome=outcome,
        event=event,
        since=since,
        until=until,
    )
    names = _run_async(query.catalog_names) if fmt == "ocsf" else None
    from soar.db import make_sync_engine

    engine = make_sync_engine(_database_url())
    write = sys.stdout.write
    try:
        with engine.connect() as conn:
            rows = query.stream_sync(conn, filters=f)
            lines = formats.render_lines("jsonl" if fmt == "json" else fmt, rows, names)
            for chunk in _json_array(lines) if fmt == "json" else lines:
                write(chunk)
        sys.stdout.flush()
    except BrokenPipeError:  # `soar audit export | head`
        sys.stderr.close()
    finally:
        engine.dispose()


@audit_app.command("search")
def search(
    since: Since = None,
    until: Until = None,
    incident_id: IncidentOpt = None,
    technique: TechniqueOpt = None,
    tactic: TacticOpt = None,
    subject: SubjectOpt = None,
    actor: ActorOpt = None,
    action: ActionOpt = None,
    outcome: OutcomeOpt = None,
    event: EventOpt = None,
    limit: Annotated[int, typer.Option(min=1, max=query.MAX_LIMIT)] = 50,
    cursor: Annotated[str | None, typer.Option(help="continue after a previous page")] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="one line a row, every value in full (for less -S)")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json",
            help="one JSON object a line (the fields of `export --format jsonl`); the next "
            "page's cursor goes to stderr",
        ),
    ] = False,
) -> None:
    """Show matching rows, oldest first, within the terminal's width (COLUMNS): a table when
    it fits, else one block a row; long values wrap. Prints the cursor of the next page."""
    from soar.audit.table import WIDE, print_rows, row_json_line

    if wide and as_json:
        raise _fail("--wide and --json: choose one")
    f = _filters(
        incident_id=incident_id,
        technique=technique,
        tactic=tactic,
        subject=subject,
        actor=actor,
        action=action,
        outcome=outcome,
        event=event,
        since=since,
        until=until,
    )

    async def page(session: Any) -> query.AuditPage:
        return await query.search(session, filters=f, cursor=cursor, limit=limit)

    try:
        result: query.AuditPage = _run_async(page)
    except query.AuditQueryError as exc:
        raise _fail(f"--{exc.field}: {exc.message}") from None
    more = f"more: --cursor {result.next_cursor}" if result.next_cursor else None
    if as_json:
        for r in result.items:
            sys.stdout.write(row_json_line(r) + "\n")
        sys.stdout.flush()
        if more:
            _err().print(more, highlight=False, markup=False)
        return
    width = WIDE if wide else shutil.get_terminal_size((120, 24)).columns
    console = Console(width=width, highlight=False, soft_wrap=False)
    if result.items:
        print_rows(console, result.items, wide=wide)
    if more:
        console.print(more, markup=False)
    elif not result.items:
        console.print("no matching rows")


def report(
    since: Annotated[str | None, typer.Option(help="from (ISO 8601); default 30 days ago")] = None,
    until: Annotated[str | None, typer.Option(help="until (ISO 8601); default now")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
) -> None:
    """Summary for auditors: detections, incidents, blocks, approvals, time to contain and to
    decision (p50/p95), per ATLAS technique and tactic."""
    end = _when("--until", until) or datetime.now(UTC)
    start = _when("--since", since) or end - timedelta(days=30)
    if start >= end:
        raise _fail("--until: must be later than --since")

    async def build(session: Any) -> dict[str, Any]:
        names = await query.catalog_names(session)
        return await query.summary(session, since=start, until=end, names=names)

    data: dict[str, Any] = _run_async(build)
    if as_json:
        _out().print_json(json.dumps(data))
        return
    _print_report(_out(), data)


def _secs(d: dict[str, Any]) -> str:
    if not d["count"]:
        return "-"
    return f"{_dur(d['p50'])} / {_dur(d['p95'])} (n={d['count']})"


def _dur(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.1f}s"
    if seconds < 7200:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _print_report(out: Console, data: dict[str, Any]) -> None:
    from rich.table import Table

    t = data["totals"]
    a = t["approvals"]
    out.print(
        f"[bold]atlas-soar report[/bold] {terminal_text(data['since'])} to "
        f"{terminal_text(data['until'])} (ATLAS {terminal_text(data['catalog_version'])})",
        highlight=False,
    )
    out.print(
        f"detections {t['detections']}, incidents {t['incidents']}, "
        f"blocks applied {t['blocks_applied']}, approvals approved {a.get('approved', 0)} / "
        f"rejected {a.get('rejected', 0)} / expired {a.get('expired', 0)} / "
        f"pending {a.get('pending', 0)}",
        highlight=False,
    )
    if dispositions := t.get("dispositions"):
        out.print(
            "closed as: "
            + ", ".join(f"{terminal_text(k)} {terminal_text(v)}" for k, v in dispositions.items()),
            highlight=False,
        )
    out.print(f"time to contain p50/p95: {_secs(t['time_to_contain_seconds'])}", highlight=False)
    out.print(f"time to decision p50/p95: {_secs(t['time_to_decision_seconds'])}", highlight=False)
    for key, title in (("by_technique", "technique"), ("by_tactic", "tactic")):
        table = Table(
            title,
            "name",
            "detections",
            "incidents",
            "blocks",
            "appr/rej/exp",
            "contain p50/p95",
            "decision p50/p95",
            title=f"per {title}",
        )
        for row in data[key]:
            ap = row["approvals"]
            table.add_row(
                terminal_text(row[title]),
                terminal_text(row["name"] or ""),
                str(row["detections"]),
                str(row["incidents"]),
                str(row["blocks_applied"]),
                f"{ap.get('approved', 0)}/{ap.get('rejected', 0)}/{ap.get('expired', 0)}",
                _secs(row["time_to_contain_seconds"]),
                _secs(row["time_to_decision_seconds"]),
            )
        out.print(table)
