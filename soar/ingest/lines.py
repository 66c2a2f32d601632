"""One line of an ingest file: what it is, and the body the intake gets for it.

Native detections, OCSF Detection Findings and finding envelopes are sent as they are (the
intake validates them, exactly as for the webhook). A plain alert
`{"id", "source", "severity", "message"}` becomes a native detection: its technique is the
detection engine's best finding in `message` (or the one given for the whole file), its
confidence that finding's score, its evidence the message (stored redacted, like any
prompt). An alert the engine maps to no technique is *unmapped*: counted and listed, not sent.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from soar.api.jsonsafe import JSONRefused, parse_json_sync
from soar.bounds import has_unsafe_chars
from soar.detect import Engine, technique_scores
from soar.domain import Severity

MAX_LINE_BYTES = 1024 * 1024  # longer lines are invalid without being parsed
MESSAGE_MAX = 200_000  # the intake's evidence.prompt limit
_ID_MAX = 200
_SOURCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@/-]{0,127}$")
ALERT_CONFIDENCE = 0.7  # when the technique is given for the whole file (no engine score)


@dataclass(frozen=True)
class Line:
    """`body` is what to POST (None when not sent); `key` the detection id the intake will
    deduplicate on (None when it cannot be told before the intake validates it)."""

    number: int
    kind: str  # native | ocsf | finding | alert | invalid | unmapped
    body: dict[str, Any] | None = None
    key: str | None = None
    reason: str | None = None  # invalid / unmapped: why


def is_alert(obj: dict[str, Any]) -> bool:
    return "message" in obj and not any(
        k in obj for k in ("technique", "finding", "class_uid", "finding_info")
    )


def kind_of(obj: dict[str, Any]) -> str:
    if is_alert(obj):
        return "alert"
    if "class_uid" in obj or "finding_info" in obj:
        return "ocsf"
    if "finding" in obj:
        return "finding"
    return "native"


def detection_key(obj: dict[str, Any], kind: str) -> str | None:
    if kind == "ocsf":
        info = obj.get("finding_info")
        raw = info.get("uid") if isinstance(info, dict) else None
    else:
        raw = obj.get("id")
    return raw.strip() if isinstance(raw, str) and raw.strip() else None


def _alert_text(obj: dict[str, Any], name: str, limit: int) -> str:
    v = obj.get(name)
    if not isinstance(v, str) or not v.strip():
        raise ValueError(f"{name}: required, a non-empty string")
    if len(v) > limit:
        raise ValueError(f"{name}: at most {limit} characters")
    return v.strip()


def _subject(obj: dict[str, Any], tenant: str, fallback_session: str) -> dict[str, Any]:
    given = obj.get("subject")
    if isinstance(given, dict):
        return {"tenant": tenant, **given}
    subject: dict[str, Any] = {"tenant": obj.get("tenant") or tenant}
    for k in ("user", "session", "api_key"):
        if obj.get(k) is not None:
            subject[k] = obj[k]
    if len(subject) == 1:
        # Nothing names who did it: the alert is its own subject (its own incident).
        subject["session"] = fallback_session
    return subject


def best_technique(engine: Engine, message: str) -> tuple[str, float] | None:
    """The technique with the highest combined score (ties: the first found)."""
    scores = technique_scores(engine.scan(message))
    if not scores:
        return None
    technique = max(scores, key=lambda t: scores[t])
    return technique, scores[technique]


def alert_to_native(
    obj: dict[str, Any], *, engine: Engine, technique: str | None, tenant: str
) -> tuple[dict[str, Any] | None, str]:
    """The native body of a plain alert, or None (unmapped) with the reason. ValueError
    names the bad field."""
    alert_id = _alert_text(obj, "id", _ID_MAX)
    source = _alert_text(obj, "source", 128)
    if not _SOURCE_RE.match(source):
        raise ValueError("source: letters, digits and . _ : @ / - only")
    if has_unsafe_chars(alert_id):
        raise ValueError("id: must not contain control or bidirectional-override characters")
    severity = obj.get("severity")
    if not isinstance(severity, str) or severity.strip().lower() not in Severity.__members__:
        raise ValueError("severity: one of " + ", ".join(s.value for s in Severity))
    message = obj.get("message")
    if not isinstance(message, str) or not message.strip():
        raise ValueError("message: required, a non-empty string")
    if len(message) > MESSAGE_MAX:
        raise ValueError(f"message: at most {MESSAGE_MAX} characters")
    if technique is not None:
        found: tuple[str, float] | None = (technique, ALERT_CONFIDENCE)
    else:
        found = best_technique(engine, message)
    if found is None:
        return None, "the detection engine maps the message to no ATLAS technique"
    # Ids are unique per alerting tool, not across tools: the tool's name keeps them apart.
    det_id = f"{source}:{alert_id}"
    body: dict[str, Any] = {
        "id": det_id,
        "technique": found[0],
        "severity": severity.strip().lower(),
        "confidence": round(min(1.0, max(0.0, found[1])), 4),
        "source": source,
        "subject": _subject(obj, tenant, f"alert:{det_id}"[:256]),
        "evidence": {"prompt": message},
    }
    for name in ("observed_at", "timestamp"):
        if isinstance(obj.get(name), str):
            body["observed_at"] = obj[name]
            break
    return body, ""


def parse_line(
    number: int,
    raw: bytes,
    *,
    engine: Engine,
    technique: str | None = None,
    tenant: str = "default",
) -> Line | None:
    """The line classified; None for a blank line."""
    if len(raw) > MAX_LINE_BYTES:
        return Line(number, "invalid", reason=f"line over {MAX_LINE_BYTES} bytes")
    if not raw.strip():
        return None
    try:
        obj = parse_json_sync(raw.strip())
    except JSONRefused as exc:
        return Line(number, "invalid", reason=exc.message)
    except UnicodeDecodeError:
        return Line(number, "invalid", reason="not UTF-8")
    if not isinstance(obj, dict):
        return Line(number, "invalid", reason="body: must be a JSON object")
    kind = kind_of(obj)
    if kind != "alert":
        body = dict(obj)
        if technique is not None and kind == "native" and "technique" not in body:
            body["technique"] = technique
        return Line(number, kind, body, detection_key(obj, kind))
    try:
        native, why = alert_to_native(obj, engine=engine, technique=technique, tenant=tenant)
    except ValueError as exc:
        return Line(number, "invalid", reason=str(exc))
    key = f"{obj.get('source', '')}:{obj.get('id', '')}".strip()
    if native is None:
        return Line(number, "unmapped", key=key, reason=why)
    return Line(number, "alert", native, native["id"])
