"""`soar audit search` as a reader sees it: a table that fits the terminal (long cells wrap,
nothing is cut but an over-long details cell, which says how much is left), or `--wide`
(one line a row, every value in full, for `less -S` or a wide screen).

Every value is attacker-reachable (actor, subject, details, ...): `terminal_text` shows
markup, escape sequences, control and bidi characters as text, and one row never spans
lines by a newline of its own."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from rich.console import Console, Group
from rich.padding import Padding
from rich.table import Table
from rich.text import Text

from soar.audit import formats
from soar.audit.query import LogRow
from soar.escape import json_text, terminal_text

HEADERS = (
    "seq",
    "at",
    "event",
    "action",
    "outcome",
    "actor",
    "incident",
    "technique",
    "subject",
    "details",
)
# A details cell past this many characters is shortened in the fitted table (and says by how
# much); --wide and --json show it whole.
DETAILS_MAX = 600
DETAILS_MIN = 40  # the narrowest details column of a fitted table
# --wide: wide enough for any row (rich caps a table at the console's width).
WIDE = 1_000_000


def details_text(details: Any, limit: int | None = None) -> str:
    """`key=value; ...` in the row's order; non-string values as compact JSON."""
    if not isinstance(details, dict):
        text = "" if details is None else json.dumps(details, default=str)
    else:
        parts = []
        for key, value in details.items():
            shown = (
                value
                if isinstance(value, str)
                else json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
            )
            parts.append(f"{key}={shown}")
        text = "; ".join(parts)
    if limit is not None and len(text) > limit:
        text = f"{text[:limit]}\u2026 (+{len(text) - limit} characters: --wide or --json)"
    return text


def row_cells(row: LogRow, *, wide: bool) -> list[str]:
    at = formats.iso(row["at"])[:19].replace("T", " ")
    values = (
        str(row["seq"]),
        at,
        row["event"],
        row["action"] or "",
        row["outcome"],
        row["actor"],
        row["incident_id"] or "",
        row["technique"] or "",
        row["subject"] or "",
        details_text(row.get("details"), None if wide else DETAILS_MAX),
    )
    return [terminal_text(v) for v in values]


def search_table(rows: Iterable[LogRow], *, wide: bool = False) -> Table:
    """The rows as a table: every column on one line, but for the details, which wrap
    (`wide`: they do not either)."""
    table = Table(expand=False)
    for name in HEADERS:
        if name == "details" and not wide:
            table.add_column(name, overflow="fold", min_width=DETAILS_MIN)
        else:
            table.add_column(name, no_wrap=True, overflow="ignore")
    for row in rows:
        table.add_row(*row_cells(row, wide=wide))
    return table


def _record(row: LogRow) -> Group:
    """Narrow terminals: one block a row, its first line the seq, time, event, action and
    outcome, then one labelled line each for the rest; long values wrap under themselves."""
    c = dict(zip(HEADERS, row_cells(row, wide=False), strict=True))
    first = "  ".join(v for v in (c["at"], c["event"], c["action"], c["outcome"]) if v)
    grid = Table.grid(padding=(0, 1, 0, 0))
    grid.add_column(no_wrap=True, style="dim", min_width=9)
    grid.add_column(overflow="fold")
    for name in ("actor", "incident", "technique", "subject", "details"):
        if c[name]:
            grid.add_row(name, c[name])
    return Group(f"[bold]{c['seq']}[/bold]  {first}", Padding(grid, (0, 0, 1, 2)))


def _fits(rows: list[LogRow], width: int) -> bool:
    """Whether the table fits: its one-line columns at their widest, the details column at
    DETAILS_MIN, and the borders and padding (3 a column, and 1)."""
    widths = [Text.from_markup(h).cell_len for h in HEADERS[:-1]]
    for row in rows:
        for i, cell in enumerate(row_cells(row, wide=False)[:-1]):
            widths[i] = max(widths[i], Text.from_markup(cell).cell_len)
    return sum(widths) + DETAILS_MIN + 3 * len(HEADERS) + 1 <= width


def row_json_line(row: LogRow) -> str:
    """One row as one line of JSON (the fields of `soar audit export --format jsonl`), ASCII
    only: no control or bidi character reaches the terminal, each is a \\u escape."""
    return json_text(formats.row_json(row), ensure_ascii=True, separators=(",", ":"), default=str)


def print_rows(console: Console, rows: list[LogRow], *, wide: bool = False) -> None:
    """`wide`: the table with every value on one line, however long. Else within the
    console's width: the table if it fits, one block a row if not."""
    if wide:
        console.print(search_table(rows, wide=True), crop=False, soft_wrap=False)
    elif _fits(rows, console.width):
        console.print(search_table(rows), soft_wrap=False)
    else:
        for row in rows:
            console.print(_record(row), soft_wrap=False)
