"""The auditors' HTTP API over real HTTP: roles, search and paging, streamed exports (CSV, JSON
lines, OCSF), chain verification, and the summary and ATLAS Navigator reports."""

from __future__ import annotations

import asyncio
import csv
import io
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from sqlalchemy.orm import Session
from temporalio.client import Client

from bench.audit import copy_rows, synthetic_rows
from soar.audit.chain import row_hash, verify_rows
from soar.audit.query import AuditFilter, encode_cursor
from soar.db import make_sync_engine
from soar.models import Action, Approval, Detection, Incident
from tests.support import Stack, bearer, make_settings, running_stack

pytestmark = pytest.mark.timeout(180)

ROWS = 2500
ENDPOINTS = ("/v1/audit", "/v1/audit/verify", "/v1/reports/summary", "/v1/reports/atlas-layer")


@pytest.fixture
async def stack(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> AsyncIterator[Stack]:
    copy_rows(db_url, synthetic_rows(ROWS, seed=3))
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client, worker=False) as s:
        yield s


def sql_seqs(url: str, where: str, params: dict[str, Any]) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT seq FROM action_log WHERE {where} ORDER BY seq", params)
        return [r[0] for r in rows]


def field_errors(body: dict[str, Any]) -> list[str]:
    return [e["field"] for e in body["errors"]]


async def test_only_auditors_and_admins_may_read(stack: Stack) -> None:
    for path in ENDPOINTS:
        anonymous = await stack.http.get(path)
        assert anonymous.status_code == 401, path
        wrong = await stack.http.get(path, headers={"Authorization": "Bearer nope-nope-nope"})
        assert wrong.status_code == 401, path
        for role in ("analyst", "approver"):
            refused = await stack.http.get(path, headers=bearer(role))
            assert refused.status_code == 403, (path, role)
        for role in ("auditor", "admin"):
            r = await stack.http.get(path, headers=bearer(role))
            assert r.status_code == 200, (path, role, r.text)
    # Refused before the input is even looked at.
    assert (await stack.http.get("/v1/audit", params={"since": "x"})).status_code == 401


async def test_json_pages_follow_the_cursor_through_every_row(stack: Stack) -> None:
    auditor = bearer("auditor")
    first = (await stack.http.get("/v1/audit", headers=auditor)).json()
    assert first["count"] == 100 and first["limit"] == 100
    assert [r["seq"] for r in first["items"]] == list(range(1, 101))
    seqs: list[int] = []
    params: dict[str, Any] = {"limit": 1000}
    while True:
        r = await stack.http.get("/v1/audit", params=params, headers=auditor)
        assert r.status_code == 200, r.text
        page = r.json()
        seqs += [row["seq"] for row in page["items"]]
        if page["next_cursor"] is None:
            break
        params["cursor"] = page["next_cursor"]
    assert seqs == list(range(1, ROWS + 1))


async def test_filters_match_sql(stack: Stack) -> None:
    url = stack.settings.database_url
    assert url
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT at, incident_id, subject FROM action_log WHERE seq = 1200")
        at, incident, subject = row.fetchone() or (None, None, None)
    since, until = at - timedelta(hours=12), at + timedelta(hours=12)
    cases: list[tuple[dict[str, Any], str, dict[str, Any]]] = [
        (
            {"technique": "AML.T0051", "since": since.isoformat(), "until": until.isoformat()},
            "(technique = 'AML.T0051' OR technique LIKE 'AML.T0051.%%') AND at >= %(s)s "
            "AND at < %(u)s",
            {"s": since, "u": until},
        ),
        ({"incident_id": incident}, "incident_id = %(i)s", {"i": incident}),
        (
            {"subject": subject, "event": "action.applied"},
            "subject = %(s)s AND event = 'action.applied'",
            {"s": subject},
        ),
        (
            {"tactic": "AML.TA0010", "outcome": "approved", "action": "revoke_api_key"},
            "tactic = 'AML.TA0010' AND outcome = 'approved' AND action = 'revoke_api_key'",
            {},
        ),
        (
            {"actor": "source:waf", "until": since.isoformat()},
            "actor = 'source:waf' AND at < %(u)s",
            {"u": since},
        ),
    ]
    for params, where, sql_params in cases:
        r = await stack.http.get(
            "/v1/audit", params={**params, "limit": 1000}, headers=bearer("admin")
        )
        assert r.status_code == 200, r.text
        got = [row["seq"] for row in r.json()["items"]]
        assert got == sql_seqs(url, where, sql_params), params
        assert got, params


async def test_exports_stream_every_row_and_can_be_verified_offline(stack: Stack) -> None:
    auditor = bearer("auditor")
    r = await stack.http.get("/v1/audit", params={"format": "jsonl"}, headers=auditor)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    assert "content-length" not in r.headers  # streamed
    rows = [json.loads(line) for line in r.text.splitlines()]
    assert [x["seq"] for x in rows] == list(range(1, ROWS + 1))
    # The export alone is enough to re-check the chain.
    verifier = verify_rows(rows)
    assert verifier.problem is None and verifier.checked == ROWS
    assert all(row_hash(x) == x["hash"] for x in rows[:50])

    r = await stack.http.get("/v1/audit", params={"format": "csv"}, headers=auditor)
    assert r.headers["content-type"].startswith("text/csv")
    assert "attachment" in r.headers["content-disposition"]
    records = list(csv.DictReader(io.StringIO(r.text)))
    assert len(records) == ROWS
    assert json.loads(records[0]["details"]) == rows[0]["details"]
    assert [int(x["seq"]) for x in records] == list(range(1, ROWS + 1))

    page = await stack.http.get("/v1/audit", params={"format": "csv", "limit": 10}, headers=auditor)
    assert len(page.text.splitlines()) == 11
    nxt = await stack.http.get(
        "/v1/audit",
        params={"format": "csv", "limit": 10, "cursor": page.headers["x-next-cursor"]},
        headers=auditor,
    )
    assert next(csv.DictReader(io.StringIO(nxt.text)))["seq"] == "11"


async def test_ocsf_export(stack: Stack) -> None:
    r = await stack.http.get(
        "/v1/audit", params={"format": "ocsf", "technique": "AML.T0051"}, headers=bearer("auditor")
    )
    assert r.status_code == 200
    events = [json.loads(line) for line in r.text.splitlines()]
    assert events
    classes = {e["class_uid"] for e in events}
    assert classes == {2004, 7001}
    for e in events:
        for name in (
            "activity_id",
            "category_uid",
            "class_uid",
            "metadata",
            "severity_id",
            "time",
            "type_uid",
        ):
            assert name in e, name
        assert e["type_uid"] == e["class_uid"] * 100 + e["activity_id"]
        assert e["metadata"]["version"] == "1.8.0"
        raw = e["unmapped"]["atlas_soar"]
        attacks = e["finding_info"]["attacks"] if e["class_uid"] == 2004 else e["attacks"]
        assert raw["event"].startswith("action.") == (e["class_uid"] == 7001)
        technique = attacks[0].get("sub_technique") or attacks[0]["technique"]
        assert technique["uid"] == raw["technique"]
        assert technique["src_url"] == f"https://atlas.mitre.org/techniques/{raw['technique']}"
        assert attacks[0]["technique"]["name"] == "LLM Prompt Injection"
        assert attacks[0]["tactic"] == {
            "uid": "AML.TA0005",
            "name": "Execution",
            "src_url": "https://atlas.mitre.org/tactics/AML.TA0005",
        }
        assert attacks[0]["version"]  # the catalog version
    assert any(e.get("finding_info", {}).get("uid") for e in events)


async def test_bad_input_is_a_422_naming_the_field(stack: Stack) -> None:
    auditor = bearer("auditor")
    first = (
        await stack.http.get(
            "/v1/audit", params={"technique": "AML.T0051", "limit": 5}, headers=auditor
        )
    ).json()
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("/v1/audit", {"since": "last tuesday"}, "query.since"),
        ("/v1/audit", {"until": "2026-13-45"}, "query.until"),
        ("/v1/audit", {"limit": 5000}, "query.limit"),
        ("/v1/audit", {"limit": 0}, "query.limit"),
        ("/v1/audit", {"limit": "ten"}, "query.limit"),
        ("/v1/audit", {"format": "xml"}, "query.format"),
        ("/v1/audit", {"cursor": "!!!"}, "query.cursor"),
        ("/v1/audit", {"cursor": first["next_cursor"], "technique": "AML.T0057"}, "query.cursor"),
        ("/v1/audit", {"cursor": first["next_cursor"]}, "query.cursor"),
        (
            "/v1/audit",
            {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01T00:00:00Z"},
            "query.until",
        ),
        ("/v1/reports/summary", {"since": "soon"}, "query.since"),
        (
            "/v1/reports/summary",
            {"since": "2026-11-02T00:00:00Z", "until": "2026-11-01"},
            "query.until",
        ),
        ("/v1/reports/atlas-layer", {"until": "never"}, "query.until"),
    ]
    cases += [
        ("/v1/audit", {"actor": "a\x00b"}, "query.actor"),
        ("/v1/audit", {"subject": "s" * 301}, "query.subject"),
        ("/v1/audit", {"cursor": encode_cursor(2**70, AuditFilter())}, "query.cursor"),
        # Outside the query window (see soar.bounds): refused, not silently empty.
        ("/v1/audit", {"since": "9999-12-31T23:59:59Z"}, "query.since"),
        ("/v1/audit", {"until": "0001-01-01T00:00:00Z"}, "query.until"),
    ]
    for path, params, field in cases:
        r = await stack.http.get(path, params=params, headers=auditor)
        assert r.status_code == 422, (path, params, r.text)
        assert field in field_errors(r.json()), (params, r.json())
    odd_inputs: list[dict[str, Any]] = [
        {"technique": "%"},
        {"technique": "_"},
        {"tactic": "' OR 1=1 --"},
        {"incident_id": "ünïcödé 漢字"},
        {"since": "2000-01-01T00:00:00Z"},
        {"until": "9000-01-01T00:00:00Z"},
        {"since": "1700000000"},
        {"event": "a" * 300},
        {"technique": "AML.T0051", "format": "ocsf", "limit": 1000},
    ]
    for params in odd_inputs:
        r = await stack.http.get("/v1/audit", params=params, headers=auditor)
        assert r.status_code == 200, (params, r.text)
    ok = await stack.http.get(
        "/v1/audit",
        params={"technique": "AML.T0051", "limit": 5, "cursor": first["next_cursor"]},
        headers=auditor,
    )
    assert ok.status_code == 200
    assert ok.json()["items"][0]["seq"] > first["items"][-1]["seq"]


async def test_verify_endpoint_names_the_first_bad_row(stack: Stack) -> None:
    r = await stack.http.get("/v1/audit/verify", headers=bearer("auditor"))
    assert r.status_code == 200
    body = r.json()
    assert body["ok"] is True and body["rows"] == ROWS and body["head_seq"] == ROWS
    assert stack.settings.database_url
    with psycopg.connect(stack.settings.database_url) as conn:
        conn.execute("SET session_replication_role = replica")
        conn.execute("UPDATE action_log SET actor = 'mallory' WHERE seq = 1717")
        conn.commit()
    r = await stack.http.get("/v1/audit/verify", headers=bearer("admin"))
    assert r.status_code == 409
    body = r.json()
    assert body["ok"] is False
    assert body["first_bad_seq"] == 1717 and body["rows_checked"] == 1716
    assert "1717" in body["reason"] and "changed" in body["reason"]


# --- reports -----------------------------------------------------------------------------------

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)


def _at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def seed_incidents(url: str) -> None:
    """Five incidents in the last 30 days with known timings, and one older one."""
    engine = make_sync_engine(url)

    def incident(iid: str, technique: str, opened: datetime) -> Incident:
        return Incident(
            id=iid,
            tenant="acme",
            subject_key=f"user:{iid}",
            status="closed",
            workflow_id=f"incident-{iid}",
            technique=technique,
            severity="high",
            detection_count=1,
            opened_at=opened,
            last_detection_at=opened,
        )

    def det(iid: str, technique: str, received: datetime, n: int = 1) -> Detection:
        return Detection(
            source="llm-gateway",
            external_id=f"{iid}-{n}",
            incident_id=iid,
            tenant="acme",
            technique=technique,
            severity="high",
            confidence=0.9,
            observed_at=received,
            received_at=received,
        )

    def act(iid: str, kind: str, applied: datetime | None, status: str = "applied") -> Action:
        return Action(
            id=f"{iid}-{kind}",
            incident_id=iid,
            action_key=f"{kind}:x",
            action_type=kind,
            risk="low",
            tenant="acme",
            target="x",
            status=status,
            applied_at=applied,
        )

    def appr(
        iid: str, kind: str, status: str, decided: datetime | None, requested: datetime
    ) -> Approval:
        return Approval(
            id=f"{iid}-appr",
            incident_id=iid,
            action_id=f"{iid}-{kind}",
            workflow_id=f"incident-{iid}",
            status=status,
            requested_at=requested,
            expires_at=requested + timedelta(hours=4),
            decided_at=decided,
        )

    old = T0 - timedelta(days=60)
    with Session(engine) as s, s.begin():
        s.add_all(
            [
                incident("inc-a", "AML.T0051.000", _at(0)),
                incident("inc-b", "AML.T0051", _at(100)),
                incident("inc-c", "AML.T0057", _at(200)),
                incident("inc-d", "AML.T0057", _at(300)),
                incident("inc-e", "AML.T0024", _at(400)),
                incident("inc-f", "AML.T0051", old),
            ]
        )
        s.flush()
        s.add_all(
            [
                det("inc-a", "AML.T0051.000", _at(0)),
                det("inc-b", "AML.T0051", _at(100)),
                det("inc-b", "AML.T0051", _at(150), 2),
                det("inc-c", "AML.T0057", _at(200)),
                det("inc-d", "AML.T0057", _at(300)),
                det("inc-e", "AML.T0024", _at(400)),
                det("inc-f", "AML.T0051", old),
                act("inc-a", "block_session", _at(2)),
                act("inc-a", "notify", _at(3)),
                act("inc-b", "block_session", _at(104)),
                act("inc-c", "revoke_api_key", _at(262)),
                act("inc-d", "revoke_api_key", None, "rejected"),
                act("inc-e", "disable_user", None, "expired"),
                act("inc-f", "block_session", old + timedelta(seconds=1)),
            ]
        )
        s.flush()
        s.add_all(
            [
                appr("inc-c", "revoke_api_key", "approved", _at(261), _at(201)),
                appr("inc-d", "revoke_api_key", "rejected", _at(421), _at(301)),
                appr("inc-e", "disable_user", "expired", None, _at(401)),
            ]
        )
    engine.dispose()


async def test_summary_report(stack: Stack) -> None:
    assert stack.settings.database_url
    seed_incidents(stack.settings.database_url)
    r = await stack.http.get("/v1/reports/summary", headers=bearer("auditor"))
    assert r.status_code == 200, r.text
    rep = r.json()
    t = rep["totals"]
    assert (t["detections"], t["incidents"], t["blocks_applied"]) == (6, 5, 3)
    assert t["blocks_by_action"] == {"block_session": 2, "revoke_api_key": 1}
    assert t["approvals"] == {"approved": 1, "rejected": 1, "expired": 1, "pending": 0}
    assert t["time_to_contain_seconds"] == {"count": 3, "p50": 4.0, "p95": pytest.approx(56.2)}
    assert t["time_to_decision_seconds"] == {"count": 2, "p50": 90.0, "p95": pytest.approx(117.0)}
    by_tech = {x["technique"]: x for x in rep["by_technique"]}
    assert by_tech["AML.T0051.000"]["name"] == "Direct"
    assert by_tech["AML.T0051"]["detections"] == 2
    assert by_tech["AML.T0051"]["time_to_contain_seconds"]["p50"] == 4.0
    assert by_tech["AML.T0057"]["approvals"]["approved"] == 1
    assert by_tech["AML.T0057"]["time_to_decision_seconds"]["count"] == 2
    assert by_tech["AML.T0024"]["approvals"]["expired"] == 1
    by_tactic = {x["tactic"]: x for x in rep["by_tactic"]}
    assert by_tactic["AML.TA0005"]["name"] == "Execution"
    assert (by_tactic["AML.TA0005"]["detections"], by_tactic["AML.TA0005"]["blocks_applied"]) == (
        3,
        2,
    )
    assert by_tactic["AML.TA0010"]["incidents"] == 3
    assert by_tactic["AML.TA0010"]["time_to_contain_seconds"]["p50"] == 62.0

    narrow = await stack.http.get(
        "/v1/reports/summary",
        params={"since": _at(150).isoformat(), "until": _at(1000).isoformat()},
        headers=bearer("admin"),
    )
    n = narrow.json()["totals"]
    assert (n["detections"], n["incidents"], n["blocks_applied"]) == (4, 3, 1)


async def test_atlas_navigator_layer(stack: Stack) -> None:
    assert stack.settings.database_url
    seed_incidents(stack.settings.database_url)
    r = await stack.http.get("/v1/reports/atlas-layer", headers=bearer("auditor"))
    assert r.status_code == 200
    layer = r.json()
    assert layer["domain"] == "atlas-atlas"
    assert layer["versions"]["layer"] == "4.5"
    scores = {t["techniqueID"]: t.get("score") for t in layer["techniques"]}
    assert scores == {"AML.T0051": 2, "AML.T0057": 2, "AML.T0051.000": 1, "AML.T0024": 1}
    parent = next(t for t in layer["techniques"] if t["techniqueID"] == "AML.T0051")
    assert parent["showSubtechniques"] is True
    assert "LLM Data Leakage" in next(
        t["comment"] for t in layer["techniques"] if t["techniqueID"] == "AML.T0057"
    )
    assert layer["gradient"]["maxValue"] == 2
    assert layer["legendItems"]


async def test_report_command_prints_the_same_summary(stack: Stack) -> None:
    from typer.testing import CliRunner

    from atlas_soar.cli import app

    assert stack.settings.database_url
    seed_incidents(stack.settings.database_url)
    runner = CliRunner()  # in a thread: the command runs its own event loop
    env = {"SOAR_DATABASE_URL": stack.settings.database_url}
    as_json = await asyncio.to_thread(runner.invoke, app, ["report", "--json"], env=env)
    assert as_json.exit_code == 0, as_json.output
    totals = json.loads(as_json.output)["totals"]
    api = (await stack.http.get("/v1/reports/summary", headers=bearer("auditor"))).json()
    assert totals["detections"] == api["totals"]["detections"] == 6
    assert totals["time_to_contain_seconds"] == api["totals"]["time_to_contain_seconds"]
    text = await asyncio.to_thread(runner.invoke, app, ["report"], env={**env, "COLUMNS": "200"})
    assert text.exit_code == 0, text.output
    assert "detections 6, incidents 5, blocks applied 3" in text.output
    assert "time to contain p50/p95: 4.0s / 56.2s (n=3)" in text.output
    assert "LLM Data Leakage" in text.output
    bad = await asyncio.to_thread(runner.invoke, app, ["report", "--since", "yesterday"], env=env)
    assert bad.exit_code == 2 and "--since" in bad.output
