"""How audit rows leave the system: CSV, JSON lines, OCSF events, the Navigator layer."""

from __future__ import annotations

import csv
import io
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from soar.atlas.builtin import BUILTIN_CATALOG
from soar.audit import formats
from soar.audit.chain import GENESIS, row_hash
from soar.audit.query import COLUMNS, CatalogNames, percentile
from tests.conftest import REFERENCE

_FIELDS = REFERENCE / "ocsf" / "detection_finding_fields.json"
if not _FIELDS.exists():
    pytest.skip(f"OCSF reference {_FIELDS} not present", allow_module_level=True)
OCSF = json.loads(_FIELDS.read_text())

NAMES = CatalogNames(
    version=BUILTIN_CATALOG.version,
    techniques={t.id: (t.name, t.parent_id) for t in BUILTIN_CATALOG.techniques},
    tactics={t.id: t.name for t in BUILTIN_CATALOG.tactics},
    tactics_of={t.id: t.tactic_ids for t in BUILTIN_CATALOG.techniques},
)
AT = datetime(2026, 11, 21, 10, 15, 0, 123456, tzinfo=UTC)


def log_row(**over: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "seq": 7,
        "event_key": "inc-1:det-1:received",
        "at": AT,
        "incident_id": "inc-1",
        "tenant": "acme",
        "subject": "user:u-42",
        "event": "detection.received",
        "action": None,
        "actor": "source:llm-gateway",
        "outcome": "ok",
        "technique": "AML.T0051.000",
        "tactic": "AML.TA0005",
        "details": {"severity": "high", "confidence": 0.92, "excerpt": "Ignore … «x»"},
        "prev_hash": GENESIS,
    }
    row.update(over)
    row["hash"] = row_hash(row)
    return row


def action_row(**over: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "event_key": "act-1:applied",
        "event": "action.applied",
        "action": "block_session",
        "actor": "system:atlas-soar",
        "outcome": "applied",
        "details": {"action_id": "act-1", "target": "s-9", "risk": "low"},
    }
    values.update(over)
    return log_row(**values)


# --- plain formats -----------------------------------------------------------------------------


def test_jsonl_row_keeps_every_column_and_can_be_reverified_offline() -> None:
    row = log_row()
    parsed = json.loads(formats.jsonl_line(row))
    assert list(parsed) == list(COLUMNS)
    assert parsed["at"] == "2026-11-21T10:15:00.123456+00:00"
    assert parsed["details"]["excerpt"] == "Ignore … «x»"
    # An auditor holding only the export can recompute every hash.
    assert row_hash(parsed) == row["hash"]


def test_csv_has_a_header_details_as_json_and_empty_nulls() -> None:
    rows = [log_row(), action_row(seq=8, technique=None, tactic=None)]
    text = "".join(formats.render_lines("csv", rows))
    records = list(csv.reader(io.StringIO(text)))
    assert records[0] == list(COLUMNS)
    assert len(records) == 3
    first = dict(zip(COLUMNS, records[1], strict=True))
    assert json.loads(first["details"]) == rows[0]["details"]
    assert first["action"] == ""
    second = dict(zip(COLUMNS, records[2], strict=True))
    assert second["technique"] == "" and second["action"] == "block_session"
    assert second["hash"] == rows[1]["hash"]


def test_render_lines_chunks_hold_whole_lines() -> None:
    rows = [log_row(seq=i, event_key=f"k{i}") for i in range(1, 12)]
    chunks = list(formats.render_lines("jsonl", rows, chunk_rows=5))
    assert len(chunks) == 3
    assert all(c.endswith("\n") for c in chunks)
    assert [json.loads(line)["seq"] for line in "".join(chunks).splitlines()] == list(range(1, 12))


def test_json_page_shape() -> None:
    page = formats.json_page([log_row()], "abc", 100)
    assert page["next_cursor"] == "abc" and page["count"] == 1 and page["limit"] == 100
    assert page["items"][0]["at"] == "2026-11-21T10:15:00.123456+00:00"
    json.dumps(page)  # serialisable as is


# --- OCSF --------------------------------------------------------------------------------------


def _required(attributes: dict[str, Any], profiles: list[str]) -> list[str]:
    return [
        name
        for name, spec in attributes["required"].items()
        if spec.get("profile") is None or spec["profile"] in profiles
    ]


def _check_enum(event: dict[str, Any], attributes: dict[str, Any]) -> None:
    for group in ("required", "recommended"):
        for name, spec in attributes.get(group, {}).items():
            if name in event and isinstance(spec, dict) and "enum" in spec:
                assert str(event[name]) in spec["enum"], (name, event[name])
                sibling = spec.get("sibling")
                if sibling and sibling in event and event[name] != 99:
                    assert event[sibling] == spec["enum"][str(event[name])], name


def _check_attack(attack: dict[str, Any]) -> None:
    assert {"tactic", "technique", "sub_technique"} & attack.keys()  # at_least_one
    for key, kind in (
        ("tactic", "tactics"),
        ("technique", "techniques"),
        ("sub_technique", "techniques"),
    ):
        if key in attack:
            obj = attack[key]
            assert obj["uid"].startswith("AML.")
            assert obj["src_url"] == f"https://atlas.mitre.org/{kind}/{obj['uid']}"
    assert attack["version"] == BUILTIN_CATALOG.version


@pytest.mark.parametrize(
    "row",
    [
        log_row(),
        log_row(event="incident.enriched", actor="system:atlas-soar", details={}),
        log_row(event="approval.decided", actor="slack:U123", outcome="approved", details={}),
        log_row(
            event="incident.closed", actor="system:atlas-soar", details={"severity": "critical"}
        ),
        log_row(
            event="approval.refused",
            incident_id=None,
            technique=None,
            tactic=None,
            actor="slack:U999",
            outcome="refused",
            details={},
        ),
    ],
    ids=["received", "enriched", "decided", "closed", "no-incident"],
)
def test_finding_rows_are_detection_findings_with_every_required_field(
    row: dict[str, Any],
) -> None:
    spec = OCSF["detection_finding"]
    event = formats.ocsf_event(row, NAMES)
    profiles = event["metadata"]["profiles"]
    for name in _required(spec["attributes"], profiles):
        assert name in event, f"required OCSF field {name} missing"
    assert event["class_uid"] == spec["class_uid"] == 2004
    assert event["category_uid"] == spec["category_uid"]
    assert str(event["type_uid"]) in spec["type_uid_values"]
    assert event["type_uid"] == event["class_uid"] * 100 + event["activity_id"]
    assert event["type_name"] == spec["type_uid_values"][str(event["type_uid"])]
    _check_enum(event, spec["attributes"])
    for name in _required(OCSF["objects"]["metadata"]["attributes"], profiles):
        assert name in event["metadata"]
    assert event["metadata"]["version"] == OCSF["_source"]["ocsf_version"]
    assert event["metadata"]["product"]["name"] == "atlas-soar"
    for name in OCSF["objects"]["finding_info"]["attributes"]["required"]:
        assert name in event["finding_info"]
    assert isinstance(event["time"], int)
    assert event["time"] == int(AT.timestamp() * 1000)
    for attack in event["finding_info"]["attacks"]:
        _check_attack(attack)
    assert event["activity_name"] == ("Close" if row["event"] == "incident.closed" else "Update")


def test_detection_finding_carries_atlas_sub_technique_parent_and_tactic() -> None:
    event = formats.ocsf_event(log_row(), NAMES)
    (attack,) = event["finding_info"]["attacks"]
    assert attack["tactic"] == {
        "uid": "AML.TA0005",
        "name": "Execution",
        "src_url": "https://atlas.mitre.org/tactics/AML.TA0005",
    }
    assert attack["technique"]["uid"] == "AML.T0051"
    assert attack["technique"]["name"] == "LLM Prompt Injection"
    assert attack["sub_technique"] == {
        "uid": "AML.T0051.000",
        "name": "Direct",
        "src_url": "https://atlas.mitre.org/techniques/AML.T0051.000",
    }
    assert event["finding_info"]["uid"] == "inc-1"
    assert event["severity_id"] == 4 and event["severity"] == "High"
    assert event["confidence_score"] == 92 and event["confidence_id"] == 3
    assert event["metadata"]["uid"] == "inc-1:det-1:received"
    assert event["metadata"]["sequence"] == 7
    assert event["unmapped"]["atlas_soar"]["hash"] == log_row()["hash"]


def test_a_technique_in_two_tactics_gives_one_attack_per_tactic_row_tactic_first() -> None:
    row = log_row(technique="AML.T0054", tactic="AML.TA0007")
    attacks = formats.ocsf_event(row, NAMES)["finding_info"]["attacks"]
    assert [a["tactic"]["uid"] for a in attacks] == ["AML.TA0007", "AML.TA0012"]
    assert {a["technique"]["name"] for a in attacks} == {"LLM Jailbreak"}
    assert all("sub_technique" not in a for a in attacks)


def test_unknown_techniques_still_give_uids_and_links() -> None:
    attacks = formats.atlas_attacks("AML.T0999.004", None, NAMES)
    assert attacks == [
        {
            "version": NAMES.version,
            "technique": {
                "uid": "AML.T0999",
                "src_url": "https://atlas.mitre.org/techniques/AML.T0999",
            },
            "sub_technique": {
                "uid": "AML.T0999.004",
                "src_url": "https://atlas.mitre.org/techniques/AML.T0999.004",
            },
        }
    ]
    assert formats.atlas_attacks(None, None, NAMES) == []


@pytest.mark.parametrize(
    ("row", "activity", "status", "disposition"),
    [
        (action_row(), (2, "Evict"), 1, "Blocked"),
        (action_row(action="revoke_api_key", actor="alice"), (2, "Evict"), 1, "Access Revoked"),
        (action_row(action="block_api_key"), (1, "Isolate"), 1, "Blocked"),
        (action_row(event="action.rolled_back", outcome="expired"), (3, "Restore"), 1, "Restored"),
        (
            action_row(
                event="action.failed",
                action="notify",
                outcome="failed",
                details={"error": "Slack down"},
            ),
            (99, "notify"),
            2,
            "Error",
        ),
        (
            action_row(
                event="action.skipped",
                action="notify",
                outcome="skipped",
                details={"reason": "Slack is not configured"},
            ),
            (99, "notify"),
            99,
            "No Action",
        ),
    ],
    ids=["block", "revoke", "block-key", "rolled-back", "failed", "skipped"],
)
def test_action_rows_are_remediation_activities_with_every_required_field(
    row: dict[str, Any], activity: tuple[int, str], status: int, disposition: str
) -> None:
    spec = OCSF["related_classes"]["remediation_activity"]
    event = formats.ocsf_event(row, NAMES)
    for name in _required(spec["attributes"], event["metadata"]["profiles"]):
        assert name in event, f"required OCSF field {name} missing"
    assert event["class_uid"] == spec["class_uid"] == 7001
    assert event["category_uid"] == spec["category_uid"] == 7
    assert (event["activity_id"], event["activity_name"]) == activity
    assert str(event["type_uid"]) in spec["type_uid_values"]
    _check_enum(event, spec["attributes"])
    assert event["status_id"] == status
    assert event["disposition"] == disposition
    expected_action = (
        "Allowed"
        if activity[0] == 3
        else "Denied"
        if status == 1 and activity[0] != 99
        else "Other"
    )
    assert event["action"] == expected_action
    assert event["command_uid"] == row["details"].get("action_id", row["event_key"])
    assert "finding_info" not in event  # not an attribute of this class
    assert "security_control" in event["metadata"]["profiles"]
    for attack in event["attacks"]:
        _check_attack(attack)
    if row["actor"] == "alice":
        assert event["actor"] == {"user": {"name": "alice"}}
    else:
        assert event["actor"]["app_uid"] == "system:atlas-soar"


def test_ticket_and_approval_rows_are_findings_not_remediations() -> None:
    for event in ("ticket.created", "approval.requested", "response.planned"):
        assert formats.ocsf_event(log_row(event=event), NAMES)["class_uid"] == 2004


# --- Navigator layer ---------------------------------------------------------------------------


def test_navigator_layer_scores_techniques_by_detections() -> None:
    since = AT - timedelta(days=30)
    counts = {
        "AML.T0051.000": {"detections": 7, "incidents": 3, "blocks_applied": 3},
        "AML.T0057": {"detections": 2, "incidents": 2, "blocks_applied": 0},
    }
    layer = formats.navigator_layer(counts, NAMES, since=since, until=AT)
    assert layer["versions"] == {"layer": "4.5", "navigator": "4.9.1"}
    assert layer["domain"] == "atlas-atlas"
    by_id = {t["techniqueID"]: t for t in layer["techniques"]}
    assert by_id["AML.T0051.000"]["score"] == 7
    comment = by_id["AML.T0051.000"]["comment"]
    assert comment == "Direct: 7 detection(s), 3 incident(s), 3 block(s) applied"
    assert by_id["AML.T0057"]["score"] == 2
    # The parent of a scored sub-technique is expanded so the sub-technique shows.
    assert by_id["AML.T0051"]["showSubtechniques"] is True and "score" not in by_id["AML.T0051"]
    assert layer["gradient"]["maxValue"] == 7 and len(layer["gradient"]["colors"]) >= 2
    assert [i["color"] for i in layer["legendItems"]] == layer["gradient"]["colors"]
    assert {"name": "atlas_version", "value": NAMES.version} in layer["metadata"]
    json.dumps(layer)


def test_percentile_interpolates_like_postgres_percentile_cont() -> None:
    assert percentile([], 0.5) is None
    assert percentile([5.0], 0.95) == 5.0
    assert percentile([2.0, 4.0, 62.0], 0.5) == 4.0
    assert percentile([2.0, 4.0, 62.0], 0.95) == pytest.approx(56.2)
    assert percentile([60.0, 120.0], 0.95) == pytest.approx(117.0)
