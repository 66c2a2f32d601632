"""``soar detect``: run the built-in ATLAS detection engine on a text or a JSONL file.

Register with ``app.command()(detect)`` (``from soar.detect.cli import detect``).
"""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from soar.detect.engine import Engine, Finding
from soar.escape import json_text, plain_terminal_text
from soar.redact import redact

__all__ = ["MAX_LINE_CHARS", "detect"]

MAX_LINE_CHARS = 1_048_576


def _finding_json(f: Finding) -> dict[str, Any]:
    return {
        "technique": f.technique,
        "rule": f.rule,
        "score": round(f.score, 3),
        "span": [f.span[0], f.span[1]],
    }


def _lines(handle: TextIO) -> Iterator[tuple[int, str]]:
    """(line number, line) for each line, read with a bounded buffer: a line longer than
    MAX_LINE_CHARS is returned cut (and refused by _parse), the rest of it skipped."""
    n = 0
    while True:
        raw = handle.readline(MAX_LINE_CHARS + 1)
        if not raw:
            return
        n += 1
        if len(raw) > MAX_LINE_CHARS and not raw.endswith("\n"):
            while True:  # skip to the end of this over-long line
                rest = handle.readline(MAX_LINE_CHARS)
                if not rest or rest.endswith("\n"):
                    break
        yield n, raw


def _parse(raw: str) -> tuple[str | None, str]:
    """(id, text) of one input line; ValueError with the reason otherwise."""
    if len(raw) > MAX_LINE_CHARS:
        raise ValueError(f"longer than {MAX_LINE_CHARS} characters")
    try:
        value = json.loads(raw)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"not JSON ({exc.msg if hasattr(exc, 'msg') else 'too deep'})") from None
    if isinstance(value, str):
        return None, value
    if not isinstance(value, dict):
        raise ValueError('expected {"id"?, "text"} or a JSON string')
    text = value.get("text")
    if not isinstance(text, str):
        raise ValueError('"text": expected a string')
    ident = value.get("id")
    if ident is not None and (isinstance(ident, bool) or not isinstance(ident, str | int)):
        raise ValueError('"id": expected a string or a number')
    if isinstance(ident, str) and len(ident) > 256:
        raise ValueError('"id": longer than 256 characters')
    return (str(ident) if ident is not None else None), text


def _json_line(row: dict[str, Any]) -> str:
    """One JSON line, ASCII only: U+2028, U+0085 and the like, which some readers take for
    line breaks, are \\u escapes, so an attacker's id cannot split a record."""
    return json_text(row, ensure_ascii=True)


def _human(text: str, findings: list[Finding], prefix: str = "") -> list[str]:
    """Lines for a terminal. The excerpt (and the id in `prefix`) is the attacker's text: no
    escape sequence, control, bidi or line-separator character reaches the terminal."""
    if not findings:
        return [f"{prefix}no findings"]
    out = []
    for f in findings:
        excerpt = redact(text[f.span[0] : f.span[1]], max_len=60)
        shown = plain_terminal_text(json.dumps(excerpt, ensure_ascii=False))
        out.append(
            f"{prefix}{f.technique:<14} {f.rule:<28} {f.score:.2f}  "
            f"[{f.span[0]}, {f.span[1]}]  {shown}  ({plain_terminal_text(f.why)})"
        )
    return out


def detect(
    text: Annotated[str | None, typer.Argument(help="the text to scan")] = None,
    file: Annotated[
        str | None,
        typer.Option(
            "--file",
            help='JSONL file ("-" for stdin): {"id"?, "text"} objects or JSON strings',
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="one JSON object a line")] = False,
    kind: Annotated[
        str, typer.Option(help="prompt (input to a model) or output (a model's answer)")
    ] = "prompt",
) -> None:
    """Scan text with the built-in ATLAS detection engine: technique, rule, score, span."""
    if kind not in ("prompt", "output"):
        typer.echo("--kind: expected prompt or output", err=True)
        raise typer.Exit(2)
    if (text is None) == (file is None):
        typer.echo("give either TEXT or --file FILE.jsonl", err=True)
        raise typer.Exit(2)
    engine = Engine.default()
    scan_kind: Any = kind
    if text is not None:
        findings = engine.scan(text, scan_kind)
        if json_out:
            row = {"line": 1, "id": None, "findings": [_finding_json(f) for f in findings]}
            typer.echo(_json_line(row))
        else:
            for line in _human(text, findings):
                typer.echo(line)
        return
    assert file is not None
    if file == "-":
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is None:  # a text-only stdin (already decoded): read it as it is
            bad = _scan_file(engine, sys.stdin, scan_kind, json_out)
        else:  # bytes that are not UTF-8 become U+FFFD, as with --file PATH
            stdin = io.TextIOWrapper(buffer, encoding="utf-8", errors="replace")
            try:
                bad = _scan_file(engine, stdin, scan_kind, json_out)
            finally:
                stdin.detach()  # leave sys.stdin's buffer open
    else:
        try:
            with Path(file).open(encoding="utf-8", errors="replace") as handle:
                bad = _scan_file(engine, handle, scan_kind, json_out)
        except OSError as exc:
            typer.echo(f"--file: cannot read {file}: {exc.strerror or exc}", err=True)
            raise typer.Exit(2) from None
    if bad:
        typer.echo(f"{bad} bad line(s)", err=True)
        raise typer.Exit(1)


def _scan_file(engine: Engine, handle: TextIO, kind: Any, json_out: bool) -> int:
    """Scan every line; print results in input order, bad lines on stderr. Returns bad lines."""
    bad = 0
    for n, raw in _lines(handle):
        if not raw.strip():
            continue
        try:
            ident, body = _parse(raw)
        except ValueError as exc:
            bad += 1
            typer.echo(f"line {n}: {exc}", err=True)
            continue
        findings = engine.scan(body, kind)
        if json_out:
            row: dict[str, Any] = {
                "line": n,
                "id": ident,
                "findings": [_finding_json(f) for f in findings],
            }
            typer.echo(_json_line(row))
        else:
            label = f"line {n}" + (f" ({plain_terminal_text(ident)})" if ident is not None else "")
            for line in _human(body, findings, f"{label}: "):
                typer.echo(line)
    return bad
