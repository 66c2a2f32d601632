"""The core package never imports the outer layers back (DESIGN.md, Layout): every module of
`soar` imported in a fresh interpreter leaves `atlas_soar`, `approvals`, `activities` and
`workflows` unloaded. The composition root (`atlas_soar`) wires them, explicitly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from fastapi.testclient import TestClient

ROOT = Path(__file__).resolve().parents[2]
OUTER = ("atlas_soar", "approvals", "activities", "workflows")
_PROBE = """
import importlib, json, pkgutil, sys
import soar
for m in pkgutil.walk_packages(soar.__path__, "soar."):
    importlib.import_module(m.name)
outer = sorted(n for n in sys.modules if n.split(".")[0] in %r)
print(json.dumps(outer))
"""


def test_the_core_package_imports_no_outer_layer() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE % (OUTER,)],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    assert json.loads(done.stdout.splitlines()[-1]) == []


def test_the_served_app_has_the_ui_and_slack_routes_and_the_command_every_group() -> None:
    from atlas_soar.app import create_app
    from atlas_soar.cli import app
    from tests.support import make_settings

    settings = make_settings("postgresql://u@127.0.0.1:1/x", "127.0.0.1:1", "tq")
    served = create_app(
        settings,
        database_url="postgresql://u@127.0.0.1:1/x",
        temporal_address="127.0.0.1:1",
        webhook_secret="",
    )
    http = TestClient(served)  # no lifespan: nothing here needs the database
    assert http.get("/ui/login").status_code == 200
    assert http.post("/slack/interactions").status_code != 404  # unsigned: refused, not absent
    assert http.get("/v1/audit").status_code == 401
    assert http.get("/v1/approvals").status_code == 401
    names = {c.name or getattr(c.callback, "__name__", "") for c in app.registered_commands}
    names |= {g.name or "" for g in app.registered_groups}
    assert {"up", "worker", "api", "migrate", "users", "audit", "sources", "policy"} <= names
