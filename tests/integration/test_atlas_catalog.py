"""The ATLAS catalog: built-in after migrate, full official release by `soar atlas load`."""

from __future__ import annotations

import os
from pathlib import Path

import psycopg
import pytest
from typer.testing import CliRunner

from atlas_soar.cli import app
from tests.conftest import REFERENCE

ATLAS_YAML = REFERENCE / "atlas" / "ATLAS.yaml"
runner = CliRunner()


def soar(db_url: str, *args: str) -> tuple[int, str]:
    result = runner.invoke(app, list(args), env={**os.environ, "SOAR_DATABASE_URL": db_url})
    return result.exit_code, result.output


def counts(db_url: str) -> tuple[int, int, int, int]:
    with psycopg.connect(db_url) as c:
        return tuple(  # type: ignore[return-value]
            c.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # type: ignore[index]
            for t in (
                "atlas_tactics",
                "atlas_techniques",
                "atlas_mitigations",
                "atlas_catalog_versions",
            )
        )


def test_builtin_catalog_covers_the_default_playbook(db_url: str) -> None:
    code, out = soar(db_url, "atlas", "show", "AML.T0051.001")
    assert code == 0, out
    assert "Indirect" in out and "AML.T0051" in out and "AML.TA0005" in out
    for tech in ("AML.T0051", "AML.T0054", "AML.T0057", "AML.T0024", "AML.T0056"):
        assert soar(db_url, "atlas", "show", tech)[0] == 0, tech


@pytest.mark.skipif(not ATLAS_YAML.exists(), reason="reference ATLAS.yaml not present")
def test_load_official_release_twice_then_refuse_a_broken_file(db_url: str, tmp_path: Path) -> None:
    code, out = soar(db_url, "atlas", "load", str(ATLAS_YAML))
    assert code == 0, out
    assert "5.6.0" in out
    tactics, techniques, mitigations, versions = counts(db_url)
    assert (tactics, techniques, mitigations) == (16, 170, 35)
    with psycopg.connect(db_url) as c:
        subs = c.execute(
            "SELECT count(*) FROM atlas_techniques WHERE parent_id IS NOT NULL"
        ).fetchone()
        assert subs == (69,)
        parent = c.execute(
            "SELECT parent_id FROM atlas_techniques WHERE id = 'AML.T0051.001'"
        ).fetchone()
        assert parent == ("AML.T0051",)
        tactic = c.execute(
            "SELECT tactic_id FROM atlas_technique_tactics WHERE technique_id = 'AML.T0051.001'"
        ).fetchall()
        assert tactic == [("AML.TA0005",)]

    code, out = soar(db_url, "atlas", "load", str(ATLAS_YAML))
    assert code == 0 and "nothing changed" in out
    assert counts(db_url) == (16, 170, 35, versions)

    truncated = tmp_path / "ATLAS.yaml"
    text = ATLAS_YAML.read_text()
    truncated.write_text(text[: len(text) // 3])
    code, out = soar(db_url, "atlas", "load", str(truncated))
    assert code == 1
    assert "previous catalog is unchanged" in out
    assert counts(db_url) == (16, 170, 35, versions)

    code, out = soar(db_url, "atlas", "show", "AML.T0051.001")
    assert code == 0 and "AML.M" in out  # mitigations from the full release

    code, out = soar(db_url, "atlas", "show", "AML.T9999")
    assert code == 1 and "not in the loaded ATLAS catalog" in out


@pytest.mark.skipif(not ATLAS_YAML.exists(), reason="reference ATLAS.yaml not present")
def test_load_from_a_url(db_url: str) -> None:
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(ATLAS_YAML.parent))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        code, out = soar(db_url, "atlas", "load", f"{base}/ATLAS.yaml")
        assert code == 0, out
        assert counts(db_url)[:3] == (16, 170, 35)
        code, out = soar(db_url, "atlas", "load", f"{base}/missing.yaml")
        assert code == 1 and "could not fetch" in out
        assert counts(db_url)[:3] == (16, 170, 35)
    finally:
        server.shutdown()
