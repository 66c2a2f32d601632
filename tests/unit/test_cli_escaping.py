"""Text an attacker chose reaches the terminal of `soar policy explain`, `soar audit verify`
and `soar audit search` inert: never parsed as rich markup, never a traceback."""

from __future__ import annotations

import asyncio
import base64
import json
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from soar.audit import query
from soar.cli import app, fail
from tests.support import detection

runner = CliRunner()


@pytest.mark.parametrize(
    "session", ["[/x]", "[link=http://evil.example/]click[/link]", "[bold red]s-9"]
)
def test_policy_explain_prints_an_attacker_target_as_text(tmp_path: Path, session: str) -> None:
    # (intake refuses control and bidi characters in a subject; markup it lets through)
    det = tmp_path / "det.json"
    subject = {"tenant": "acme", "session": session}
    det.write_text(json.dumps(detection(severity="critical", subject=subject)))
    result = runner.invoke(app, ["policy", "explain", "default", str(det)])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    assert result.exit_code == 0, result.output
    assert f"block_session {session} for 900s" in result.output  # as written, not markup


def test_policy_explain_refuses_a_detection_file_that_is_not_utf8_or_too_deep(
    tmp_path: Path,
) -> None:
    for raw in (b'{"id": "\xff"}', b"[" * 100_000):
        det = tmp_path / "det.json"
        det.write_bytes(raw)
        result = runner.invoke(app, ["policy", "explain", "default", str(det)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert "error:" in result.output


def test_fail_prints_its_message_as_text(capsys: pytest.CaptureFixture[str]) -> None:
    exit_ = fail("the first at row 2: checkpoint-[/x] [link=http://e/]here[/link] \x9b2J", 1)
    assert exit_.exit_code == 1
    err = capsys.readouterr().err
    assert "checkpoint-[/x] [link=http://e/]here[/link] \\x9b2J" in err
    assert "\x9b" not in err


class _Conn:
    def __enter__(self) -> _Conn:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _Engine:
    def connect(self) -> _Conn:
        return _Conn()

    def dispose(self) -> None:
        return None


def test_audit_verify_names_an_attacker_checkpoint_without_markup(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import soar.db
    from soar.audit import cli as audit_cli
    from soar.audit import verify as v
    from soar.audit.chain import ChainProblem

    reason = "checkpoint-[/x] (checkpoint-[link=http://e/]y[/link]): row 2 hash differs"
    problem = ChainProblem(2, reason)
    result = v.VerifyResult(
        ok=False,
        rows=1,
        problem=problem,
        head_seq=1,
        head_hash="ab",
        problems=(problem,),
        problem_count=1,
        rows_read=3,
    )
    monkeypatch.setattr(audit_cli, "_database_url", lambda: "postgresql://unused")
    monkeypatch.setattr(soar.db, "make_sync_engine", lambda url: _Engine())
    monkeypatch.setattr(v, "chain_length", lambda conn: 3)
    monkeypatch.setattr(v, "verify_chain", lambda conn, **kw: result)
    out = runner.invoke(app, ["audit", "verify"])
    assert isinstance(out.exception, SystemExit), out.exception
    assert out.exit_code == 1
    assert out.output.count(reason) == 2  # the problem line and the final error line


def _deep_cursor() -> str:
    return base64.urlsafe_b64encode(b"[" * 2000).decode().rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        _deep_cursor(),
        base64.urlsafe_b64encode(b'{"v":1,"after":' + b"9" * 5000 + b',"f":"x"}').decode(),
        "A" * 100_000,
        "\udcff",
    ],
)
def test_decode_cursor_refuses_a_deep_or_huge_cursor(cursor: str) -> None:
    with pytest.raises(query.AuditQueryError) as err:
        query.decode_cursor(cursor, query.AuditFilter())
    assert (err.value.field, err.value.message) == ("cursor", "malformed cursor")


def test_decode_cursor_still_reads_its_own_cursors() -> None:
    f = query.AuditFilter(actor="system:atlas-soar")
    assert query.decode_cursor(query.encode_cursor(41, f), f) == 41


def test_audit_search_with_a_deep_cursor_is_one_clear_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from soar.audit import cli as audit_cli

    def run(fn: Any) -> Any:
        return asyncio.run(fn(None))  # the cursor is refused before the session is used

    monkeypatch.setattr(audit_cli, "_run_async", run)
    out = runner.invoke(app, ["audit", "search", "--cursor", _deep_cursor()])
    assert out.exit_code == 2 and isinstance(out.exception, SystemExit), out.exception
    assert "--cursor: malformed cursor" in out.output
