"""Every hostile string, placed in a prompt (its redacted excerpt), a subject and a tenant,
comes out inert in Jira (the fake's stored comments and fields), CSV, the terminal and the
web UI."""

from __future__ import annotations

import asyncio
import csv
import io
import re
from pathlib import Path

import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from soar.escape import csv_cell, jira_wiki, json_text, terminal_text
from tests.fakes.jira_api import FakeJira
from tests.hostile_strings import CONTROL, HOSTILE
from tests.integration.test_jira_flow import fake, jira_settings  # noqa: F401  (fixture)
from tests.support import bearer, detection, eventually, running_stack

pytestmark = pytest.mark.timeout(240)

_ESCAPED = re.compile(r"\\.")
_MARKER = re.compile(r"\{color:#97a0af\}\\\[soar:[^\]\\]+\\\]\{color\}$")


def wiki_inert(body: str) -> None:
    """What Jira's renderer would act on, once escaped characters are set aside."""
    lines = body.splitlines()
    if lines and _MARKER.search(lines[-1]):
        lines = lines[:-1]  # our own marker
    text = _ESCAPED.sub("\u00a7", "\n".join(lines))  # an escaped character: inert
    for bad in ("[", "]", "{", "}", "!", "|", "://", "www."):
        assert bad not in text, (bad, body)
    assert not re.search(r"(?m)^\s*(h[1-6]|bq)\.", text), body
    assert not re.search(r"(?<![A-Za-z0-9])[*_+^~-]|[*_+^~-](?![A-Za-z0-9])", text), body
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", body), body


def test_helpers_make_every_hostile_string_inert() -> None:
    for s in HOSTILE + CONTROL:
        wiki_inert(jira_wiki(s))
        cell = csv_cell(s)
        assert not str(cell).startswith(("=", "+", "-", "@", "\t", "\r"))
        shown = terminal_text(s)
        assert "\x1b" not in shown and "\x07" not in shown and "\u202e" not in shown
        from rich.console import Console

        console = Console(file=io.StringIO(), force_terminal=True, width=400)
        console.print(shown, highlight=False)
        rendered = console.file.getvalue()  # type: ignore[attr-defined]
        assert "\x1b]8;" not in rendered  # no hyperlink was made
        assert all(c not in json_text({"v": s}) for c in "<>&")


async def test_hostile_text_inert_in_jira_csv_terminal_and_ui(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    fake: FakeJira,  # noqa: F811
    tmp_path: Path,
) -> None:
    settings = jira_settings(db_url, temporal_address, task_queue, fake, tmp_path)
    async with running_stack(settings, temporal_client) as stack:
        incidents: list[str] = []
        for i, s in enumerate(HOSTILE):
            body = detection(
                subject={"tenant": s[:128], "user": f"{s} u{i}"[:256], "session": f"{s} s{i}"},
                evidence={"prompt": f"{s} {CONTROL[i % len(CONTROL)]}", "model": "m"},
            )
            r = await stack.post_detection(body)
            assert r.status_code == 202, (s, r.text)
            incidents.append(r.json()["incident_id"])

        async def all_ticketed() -> bool:
            return len(fake.issue_keys) >= len(HOSTILE) and all(
                fake.comments(k) for k in fake.issue_keys
            )

        await eventually(all_ticketed, timeout=90, interval=0.3)
        for key in fake.issue_keys:
            for comment in fake.comments(key):
                wiki_inert(comment)
            fields = fake.issue(key)["fields"]
            assert not re.search(r"[\x00-\x1f\x7f]", fields["summary"])
            # Attacker text in the description only inside {noformat} blocks, never closing one.
            desc = fields["description"]
            outside = re.sub(r"(?s)\{noformat\}.*?\{noformat\}", "", desc)
            assert "evil" not in outside and "<script" not in outside, desc
            assert desc.count("{noformat}") % 2 == 0

        # CSV: no cell a spreadsheet would evaluate.
        r = await stack.http.get("/v1/audit", params={"format": "csv"}, headers=bearer("auditor"))
        assert r.status_code == 200
        rows = list(csv.reader(io.StringIO(r.text)))
        assert len(rows) > len(HOSTILE)
        for row in rows:
            for cell in row:
                assert not cell.startswith(("=", "+", "-", "@", "\t", "\r")), cell
        assert any("'=HYPERLINK" in c for row in rows for c in row)
        for fmt in ("jsonl", "ocsf"):
            r = await stack.http.get("/v1/audit", params={"format": fmt}, headers=bearer("auditor"))
            assert r.status_code == 200 and "<script" not in r.text and "\\u003cscript" in r.text

        # Terminal: `soar audit search` prints no escape code and applies no markup.
        from atlas_soar.cli import app

        out = await asyncio.to_thread(
            CliRunner().invoke,
            app,
            ["audit", "search", "--limit", "500"],
            env={"SOAR_DATABASE_URL": db_url, "COLUMNS": "400", "TERM": "xterm-256color"},
        )
        assert out.exit_code == 0, out.output
        assert "\x1b" not in out.output and "\u202e" not in out.output
        assert "[bold red]" in out.output.replace("\\[", "[")  # shown, not applied

        # Web UI: every page escapes it.
        http = stack.http
        login = await http.get("/ui/login")
        csrf = re.search(r'name="csrf" value="([^"]+)"', login.text)
        assert csrf
        await http.post("/ui/login", data={"csrf": csrf.group(1), "token": _admin()})
        for iid in incidents:
            page = await http.get(f"/ui/incidents/{iid}")
            assert page.status_code == 200
            _ui_inert(page.text)
        _ui_inert((await http.get("/ui/incidents")).text)
        _ui_inert((await http.get("/ui/approvals")).text)


def _admin() -> str:
    from tests.support import TOKENS

    return TOKENS["admin"]


def _ui_inert(page: str) -> None:
    assert "<script>alert" not in page and "<img src=x" not in page
    assert 'href="https://evil' not in page and "javascript:" not in page
