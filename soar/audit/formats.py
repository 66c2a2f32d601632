"""How log rows leave the system: JSON, JSON lines, CSV, OCSF events, and an ATLAS Navigator
layer. Pure functions over row dicts (see `soar.audit.query.COLUMNS`); no database here.

JSON and CSV keep every column, including `prev_hash` and `hash`, with `at` in the same
ISO 8601 form the chain hashes, so an exported row can be re-verified offline with
`soar.audit.chain.row_hash`.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import AsyncIterable, AsyncIterator, Iterable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from functools import cache
from typing import Any

from soar import actions
from soar.actions import Ocsf
from soar.audit.query import COLUMNS, CatalogNames, LogRow
from soar.escape import csv_cell, json_text

OCSF_VERSION = "1.8.0"
PRODUCT_NAME = "atlas-soar"
ATLAS_TECHNIQUE_URL = "https://atlas.mitre.org/techniques/"
ATLAS_TACTIC_URL = "https://atlas.mitre.org/tactics/"
_SUB_RE = re.compile(r"^(AML\.T\d{4})\.\d{3}$")


@cache
def product_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("atlas-soar")
    except PackageNotFoundError:
        return "0+unknown"


def iso(at: datetime | str) -> str:
    """The timestamp as the chain hashes it: UTC, microseconds, +00:00."""
    if isinstance(at, str):
        return at
    return at.astimezone(UTC).isoformat(timespec="microseconds")


def _json(value: Any) -> str:
    # <, >, & and U+2028/9 as \u escapes: the same values when parsed (soar/escape.py).
    return json_text(value, ensure_ascii=False, separators=(",", ":"), default=str)


# --- plain row formats -------------------------------------------------------------------------


def row_json(row: LogRow) -> dict[str, Any]:
    out = {name: row[name] for name in COLUMNS}
    out["at"] = iso(row["at"])
    return out


_AT, _DETAILS = COLUMNS.index("at"), COLUMNS.index("details")


def json_page(items: Iterable[LogRow], next_cursor: str | None, limit: int) -> dict[str, Any]:
    rows = [row_json(r) for r in items]
    return {"items": rows, "count": len(rows), "limit": limit, "next_cursor": next_cursor}


def jsonl_line(row: LogRow) -> str:
    return _json(row_json(row)) + "\n"


def csv_header() -> str:
    return _csv_line(COLUMNS)


def csv_values(row: LogRow) -> list[Any]:
    """One CSV record: `details` as JSON text, NULL as an empty field, and no cell a
    spreadsheet would evaluate (a leading = + - @ tab CR LF gets an apostrophe)."""
    values = [row[n] for n in COLUMNS]
    values[_AT], values[_DETAILS] = iso(row["at"]), _json(row["details"])
    return [csv_cell(v) for v in values]


def csv_line(row: LogRow) -> str:
    return _csv_line(csv_values(row))


def csv_lines(rows: Iterable[LogRow]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerows(csv_values(r) for r in rows)
    return buf.getvalue()


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\r\n").writerow(values)
    return buf.getvalue()


# --- OCSF --------------------------------------------------------------------------------------

_SEVERITY = {"info": 1, "low": 2, "medium": 3, "high": 4, "critical": 5}
_SEVERITY_NAME = {0: "Unknown", 1: "Informational", 2: "Low", 3: "Medium", 4: "High", 5: "Critical"}

_NOT_MAPPED = Ocsf()  # an action type no longer defined (an old row)


def is_remediation(row: Mapping[str, Any]) -> bool:
    return str(row["event"]).startswith("action.")


def atlas_attacks(
    technique: str | None, tactic: str | None, names: CatalogNames
) -> list[dict[str, Any]]:
    """OCSF `attack` objects for a row: one per tactic of the technique (the row's own tactic
    first), each with the technique, or the parent technique and the sub-technique."""
    tech_obj: dict[str, Any] | None = None
    sub_obj: dict[str, Any] | None = None
    if technique:
        name, parent = names.techniques.get(technique, (None, None))
        if parent is None and (m := _SUB_RE.match(technique)):
            parent = m.group(1)  # a sub-technique the loaded catalog does not know
        this = _entity(technique, name, ATLAS_TECHNIQUE_URL)
        if parent:
            sub_obj = this
            tech_obj = _entity(
                parent, names.techniques.get(parent, (None, None))[0], ATLAS_TECHNIQUE_URL
            )
        else:
            tech_obj = this
    tactic_ids: list[str | None] = list(names.tactics_of.get(technique or "", ()))
    if tactic:
        tactic_ids = [tactic, *(t for t in tactic_ids if t != tactic)]
    attacks: list[dict[str, Any]] = []
    for tac in tactic_ids or [None]:
        attack: dict[str, Any] = {"version": names.version}
        if tac:
            attack["tactic"] = _entity(tac, names.tactics.get(tac), ATLAS_TACTIC_URL)
        if tech_obj:
            attack["technique"] = tech_obj
        if sub_obj:
            attack["sub_technique"] = sub_obj
        if len(attack) > 1:
            attacks.append(attack)
    return attacks


def _entity(uid: str, name: str | None, base_url: str) -> dict[str, Any]:
    out: dict[str, Any] = {"uid": uid, "src_url": base_url + uid}
    if name:
        out["name"] = name
    return out


def _actor(actor: str) -> dict[str, Any]:
    kind, _, ident = actor.partition(":")
    if kind in ("system", "source") and ident:
        return {"app_name": ident, "app_uid": actor}
    if kind == "slack" and ident:
        return {"user": {"uid": ident, "name": actor}}
    return {"user": {"name": actor}}


def _severity(details: Mapping[str, Any]) -> tuple[int, str]:
    sid = _SEVERITY.get(str(details.get("severity", "")).lower(), 0)
    return sid, _SEVERITY_NAME[sid]


def _common(row: LogRow, profiles: list[str]) -> dict[str, Any]:
    at = row["at"]
    details = row.get("details") or {}
    sid, sname = _severity(details)
    metadata: dict[str, Any] = {
        "version": OCSF_VERSION,
        "product": {
            "name": PRODUCT_NAME,
            "vendor_name": PRODUCT_NAME,
            "version": product_version(),
        },
        "uid": row["event_key"],
        "sequence": row["seq"],
        "log_name": "action_log",
        "original_time": iso(at),
        "profiles": profiles,
    }
    if row.get("incident_id"):
        metadata["correlation_uid"] = row["incident_id"]
    if row.get("tenant"):
        metadata["tenant_uid"] = row["tenant"]
    when = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    return {
        "time": int(when.timestamp() * 1000),
        "severity_id": sid,
        "severity": sname,
        "metadata": metadata,
        "message": _message(row),
        # The log row itself, lossless, so nothing an auditor needs is lost in the mapping.
        "unmapped": {
            "atlas_soar": {k: v for k, v in row_json(row).items() if k not in ("at", "event_key")}
        },
    }


def _message(row: LogRow) -> str:
    parts = [str(row["event"])]
    if row.get("action"):
        parts.append(str(row["action"]))
    parts.append(f"outcome {row['outcome']}")
    if row.get("technique"):
        parts.append(f"technique {row['technique']}")
    if row.get("subject"):
        parts.append(f"subject {row['subject']}")
    parts.append(f"by {row['actor']}")
    return ", ".join(parts)


def ocsf_finding(row: LogRow, names: CatalogNames) -> dict[str, Any]:
    """A Detection Finding (2004): the incident is the finding, each row an update to it."""
    closed = row["event"] == "incident.closed"
    activity_id, activity = (3, "Close") if closed else (2, "Update")
    status_id, status = (
        (4, "Resolved")
        if closed
        else (1, "New")
        if row["event"] == "detection.received"
        else (2, "In Progress")
    )
    details = row.get("details") or {}
    info: dict[str, Any] = {
        "uid": row.get("incident_id") or row["event_key"],
        "title": _title(row, names),
        "types": [row["event"]],
        "attacks": atlas_attacks(row.get("technique"), row.get("tactic"), names),
        "product": {"name": PRODUCT_NAME, "vendor_name": PRODUCT_NAME},
    }
    event: dict[str, Any] = {
        "class_uid": 2004,
        "class_name": "Detection Finding",
        "category_uid": 2,
        "category_name": "Findings",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 2004 * 100 + activity_id,
        "type_name": f"Detection Finding: {activity}",
        "status_id": status_id,
        "status": status,
        "finding_info": info,
        **_common(row, []),
    }
    if row["event"] == "detection.received":
        event["is_alert"] = True
    conf = details.get("confidence")
    if isinstance(conf, int | float) and 0 <= conf <= 1:
        event["confidence_score"] = round(conf * 100)
        cid = 1 if conf < 0.34 else 2 if conf < 0.67 else 3
        event["confidence_id"], event["confidence"] = cid, ("Low", "Medium", "High")[cid - 1]
    return event


def ocsf_remediation(row: LogRow, names: CatalogNames) -> dict[str, Any]:
    """A Remediation Activity (7001) for action.* rows."""
    action = row.get("action") or ""
    details = row.get("details") or {}
    found = actions.find(action)
    # Remediation Activity's activity follows the D3FEND tactic of the action.
    mapping = found.ocsf if found else _NOT_MAPPED
    if row["event"] == "action.rolled_back":
        activity_id, activity = 3, "Restore"
    else:
        activity_id, activity = mapping.activity or (99, action or "Other")
    outcome = row["outcome"]
    if row["event"] == "action.failed":
        status_id, status = 2, "Failure"
        disposition = (27, "Error")
    elif row["event"] == "action.skipped":
        status_id, status = 99, "Skipped"
        disposition = (16, "No Action")
    else:
        status_id, status = 1, "Success"
        disposition = (9, "Restored") if activity_id == 3 else mapping.disposition
    # What the control now does to the subject: denies it (a block), allows it again (the
    # block lifted), or neither (a notice, a failure).
    control = (
        (1, "Allowed")
        if activity_id == 3 and status_id == 1
        else mapping.control
        if status_id == 1
        else (99, "Other")
    )
    event: dict[str, Any] = {
        "class_uid": 7001,
        "class_name": "Remediation Activity",
        "category_uid": 7,
        "category_name": "Remediation",
        "activity_id": activity_id,
        "activity_name": activity,
        "type_uid": 7001 * 100 + activity_id,
        "type_name": "Remediation Activity: " + ("Other" if activity_id == 99 else activity),
        "command_uid": str(details.get("action_id") or row["event_key"]),
        "status_id": status_id,
        "status": status,
        "status_detail": str(details.get("error") or details.get("reason") or outcome),
        "actor": _actor(str(row["actor"])),
        "action_id": control[0],
        "action": control[1],
        "disposition_id": disposition[0],
        "disposition": disposition[1],
        # Attacks sit at the top level here: the class has no finding_info.
        "attacks": atlas_attacks(row.get("technique"), row.get("tactic"), names),
        **_common(row, ["security_control"]),
    }
    return event


def _title(row: LogRow, names: CatalogNames) -> str:
    technique = row.get("technique")
    if not technique:
        return str(row["event"])
    name = names.techniques.get(technique, (None, None))[0]
    return f"{row['event']}: {technique} {name}" if name else f"{row['event']}: {technique}"


def ocsf_event(row: LogRow, names: CatalogNames) -> dict[str, Any]:
    return ocsf_remediation(row, names) if is_remediation(row) else ocsf_finding(row, names)


def ocsf_line(row: LogRow, names: CatalogNames) -> str:
    return _json(ocsf_event(row, names)) + "\n"


# --- streaming ---------------------------------------------------------------------------------

MEDIA_TYPES = {
    "jsonl": "application/x-ndjson",
    "ocsf": "application/x-ndjson",
    "csv": "text/csv; charset=utf-8",
    "json": "application/json",
}


def render(fmt: str, rows: Sequence[LogRow], names: CatalogNames | None = None) -> str:
    """Rows of a jsonl, csv or ocsf export as one string (no CSV header)."""
    if fmt == "csv":
        return csv_lines(rows)
    if fmt == "jsonl":
        return "".join(jsonl_line(r) for r in rows)
    if fmt == "ocsf":
        assert names is not None, "OCSF needs the catalog names"
        return "".join(ocsf_line(r, names) for r in rows)
    raise ValueError(f"unknown format {fmt!r}")


def render_lines(
    fmt: str,
    rows: Iterable[LogRow],
    names: CatalogNames | None = None,
    *,
    header: bool = True,
    chunk_rows: int = 500,
) -> Iterator[str]:
    """A jsonl, csv or ocsf export in chunks of whole lines."""
    if fmt == "csv" and header:
        yield csv_header()
    buf: list[LogRow] = []
    for row in rows:
        buf.append(row)
        if len(buf) >= chunk_rows:
            yield render(fmt, buf, names)
            buf.clear()
    if buf:
        yield render(fmt, buf, names)


async def arender_chunks(
    fmt: str,
    rows: AsyncIterable[LogRow],
    names: CatalogNames | None = None,
    *,
    header: bool = True,
    chunk_rows: int = 500,
) -> AsyncIterator[str]:
    """The same from an async row stream."""
    if fmt == "csv" and header:
        yield csv_header()
    buf: list[LogRow] = []
    async for row in rows:
        buf.append(row)
        if len(buf) >= chunk_rows:
            yield render(fmt, buf, names)
            buf.clear()
    if buf:
        yield render(fmt, buf, names)


# --- ATLAS Navigator layer ---------------------------------------------------------------------

# Layer format 4.5 as read by the ATLAS Navigator (a fork of the ATT&CK Navigator 4.9.x);
# "atlas-atlas" is the domain identifier of the ATLAS matrix in its configuration.
LAYER_VERSIONS = {"layer": "4.5", "navigator": "4.9.1"}
LAYER_DOMAIN = "atlas-atlas"
_LOW, _HIGH = "#fff3b0", "#e4572e"


def navigator_layer(
    counts: Mapping[str, Mapping[str, int]],
    names: CatalogNames,
    *,
    since: datetime,
    until: datetime,
) -> dict[str, Any]:
    """A layer scoring each technique by its detections. `counts` maps a technique ID to
    {"detections", "incidents", "blocks_applied"}; sub-techniques are scored on their own and
    their parent is shown expanded."""
    expanded = {p for t in counts if (p := names.techniques.get(t, (None, None))[1])}
    for t in counts:
        if (m := _SUB_RE.match(t)) and t not in names.techniques:
            expanded.add(m.group(1))
    techniques: list[dict[str, Any]] = []
    for tid in sorted(counts, key=lambda t: (-counts[t].get("detections", 0), t)):
        c = counts[tid]
        name = names.techniques.get(tid, (None, None))[0]
        comment = (
            f"{c.get('detections', 0)} detection(s), {c.get('incidents', 0)} incident(s), "
            f"{c.get('blocks_applied', 0)} block(s) applied"
        )
        entry: dict[str, Any] = {
            "techniqueID": tid,
            "score": c.get("detections", 0),
            "comment": f"{name}: {comment}" if name else comment,
            "enabled": True,
            "showSubtechniques": tid in expanded,
            "metadata": [{"name": k, "value": str(v)} for k, v in sorted(c.items())],
        }
        techniques.append(entry)
    for parent in sorted(expanded - set(counts)):
        # Navigator hides sub-techniques of a collapsed parent: expand it, unscored.
        techniques.append({"techniqueID": parent, "enabled": True, "showSubtechniques": True})
    top = max((c.get("detections", 0) for c in counts.values()), default=0)
    period = f"{iso(since)[:10]} to {iso(until)[:10]}"
    return {
        "name": f"atlas-soar detections {period}",
        "versions": dict(LAYER_VERSIONS),
        "domain": LAYER_DOMAIN,
        "description": (
            f"Detections received by atlas-soar from {iso(since)} until {iso(until)}, "
            f"scored by count; ATLAS catalog {names.version}."
        ),
        "sorting": 3,
        "layout": {
            "layout": "side",
            "showID": True,
            "showName": True,
            "aggregateFunction": "sum",
            "showAggregateScores": True,
        },
        "hideDisabled": False,
        "techniques": techniques,
        "gradient": {"colors": [_LOW, _HIGH], "minValue": 0, "maxValue": max(top, 1)},
        "legendItems": [
            {"label": "few detections", "color": _LOW},
            {"label": f"most detections ({top})", "color": _HIGH},
        ],
        "metadata": [
            {"name": "generated_by", "value": PRODUCT_NAME},
            {"name": "atlas_version", "value": names.version},
            {"name": "since", "value": iso(since)},
            {"name": "until", "value": iso(until)},
        ],
        "showTacticRowBackground": False,
        "selectTechniquesAcrossTactics": True,
        "selectSubtechniquesWithParent": False,
    }
