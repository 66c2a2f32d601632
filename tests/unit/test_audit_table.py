"""`soar audit search`'s rendering: within the width it is given, nothing cut but an over-long
details cell (which says so), a details column, `--wide` one line a row, JSON lines; every
attacker-reachable value inert."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from rich.console import Console

from soar.audit import formats
from soar.audit.table import DETAILS_MAX, WIDE, details_text, print_rows, row_json_line

LONG_SUBJECT = "api_key:k-" + "x" * 70
HOSTILE = "Ignore [bold red]previous[/bold red]\x1b[31m instructions\u202e\nnext line"


def row(seq: int, **over: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "seq": seq,
        "at": datetime(2026, 12, 2, 6, 30, 15, tzinfo=UTC),
        "event_key": f"k-{seq}",
        "incident_id": "inc-0123456789abcdef0123",
        "tenant": "acme",
        "subject": "user:u-42",
        "event": "action.applied",
        "action": "block_api_key",
        "actor": "system:atlas-soar",
        "outcome": "applied",
        "technique": "AML.T0057",
        "tactic": None,
        "details": {"action_id": f"act-{seq:04d}", "target": "k-leak", "until": "06:45"},
        "prev_hash": "a" * 64,
        "hash": "b" * 64,
    }
    return base | over


ROWS = [
    row(1),
    row(2, subject=LONG_SUBJECT, details={"excerpt": HOSTILE, "n": [1, 2]}),
    row(3, event="detection.received", action=None, outcome="ok", actor="source:gw"),
]


def render(width: int, rows: list[dict[str, Any]], *, wide: bool = False) -> str:
    buf = io.StringIO()
    print_rows(Console(file=buf, width=width, highlight=False), rows, wide=wide)
    return buf.getvalue()


def squeezed(text: str) -> str:
    """The output without layout: wrapped pieces of a value joined again."""
    return "".join(c for c in text if not c.isspace() and c not in "│┃")


@pytest.mark.parametrize("width", [60, 80, 120, 250])
def test_every_line_fits_and_no_value_is_cut(width: int) -> None:
    out = render(width, ROWS)
    assert max(len(line) for line in out.splitlines()) <= width, out
    whole = squeezed(out)
    for value in (
        LONG_SUBJECT,
        "inc-0123456789abcdef0123",
        "system:atlas-soar",
        "source:gw",
        "detection.received",
        "action_id=act-0001;target=k-leak;until=06:45",
        "n=[1,2]",
        "2026-12-0206:30:15",
    ):
        assert value in whole, (width, value, out)
    assert "details" in out  # the column (or label) is there


def test_a_wide_terminal_gets_a_table_a_narrow_one_a_block_a_row() -> None:
    table = render(250, [ROWS[0], ROWS[2]])
    assert "┃ seq ┃ at" in table and "┃ details" in table
    assert "│ 3   │ 2026-12-02 06:30:15 │ detection.received │" in table
    blocks = render(80, ROWS).splitlines()
    assert blocks[0] == "1  2026-12-02 06:30:15  action.applied  block_api_key  applied"
    assert blocks[1].split() == ["actor", "system:atlas-soar"]
    assert [ln.split()[0] for ln in blocks if ln.startswith("  ") and ln.split()][:5] == [
        "actor",
        "incident",
        "technique",
        "subject",
        "details",
    ]
    assert "action" not in render(80, [ROWS[2]]).splitlines()[0].split()[-1]  # none to show


def test_wide_is_one_line_a_row_with_every_value_in_full() -> None:
    long_details = {"excerpt": "y" * (DETAILS_MAX + 200)}
    rows = [*ROWS, row(4, details=long_details)]
    out = render(WIDE, rows, wide=True)
    body = [ln for ln in out.splitlines() if ln.startswith("│")]
    assert len(body) == len(rows)
    assert LONG_SUBJECT in body[1] and "y" * (DETAILS_MAX + 200) in body[3]
    assert max(len(ln) for ln in out.splitlines()) > 250

    fitted = render(250, rows)
    left = len(details_text(long_details)) - DETAILS_MAX
    assert f"\u2026(+{left}characters:--wideor--json)" in squeezed(fitted)
    assert "y" * (DETAILS_MAX + 200) not in squeezed(fitted)


@pytest.mark.parametrize("width", [80, 250, WIDE])
def test_outside_strings_are_shown_not_obeyed(width: int) -> None:
    out = render(width, ROWS, wide=width == WIDE)
    assert "\x1b" not in out and "\u202e" not in out
    whole = squeezed(out)
    assert "[boldred]previous[/boldred]" in whole  # markup shown, not applied
    assert "\\x1b[31m" in whole and "\\u202e" in whole and "\\x0anext" in whole


def test_json_lines_are_the_export_fields_in_ascii() -> None:
    line = row_json_line(ROWS[1])
    assert line.isascii() and "\n" not in line and "<" not in line
    assert json.loads(line) == json.loads(json.dumps(formats.row_json(ROWS[1]), default=str))
    assert json.loads(line)["details"]["excerpt"] == HOSTILE
