"""OCSF Detection Finding conformance, built from the OCSF 1.8 schema in shared/reference:
every required field missing is a 422 naming it; every optional or recommended field may be
absent; confidence_score is 0-100 and confidence_id maps when there is no score."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest

from soar.intake.schema import UNKNOWN_CONFIDENCE, DetectionInvalid, parse_detection
from tests.conftest import REFERENCE

_FIELDS = REFERENCE / "ocsf" / "detection_finding_fields.json"
if not _FIELDS.exists():
    pytest.skip(f"OCSF reference {_FIELDS} not present", allow_module_level=True)
SCHEMA = json.loads(_FIELDS.read_text())
ATTRS = SCHEMA["detection_finding"]["attributes"]
# What atlas-soar needs beyond the schema: the ATLAS technique and who the subject is.
NEEDED_BY_SOAR = {"attacks", "actor"}


def _full() -> dict[str, Any]:
    """A finding with every required field and the optional ones atlas-soar reads."""
    return {
        "class_uid": 2004,
        "category_uid": 2,
        "activity_id": 1,
        "type_uid": 200401,
        "severity_id": 4,
        "time": int(datetime.now(UTC).timestamp() * 1000),
        "cloud": {"provider": "AWS"},
        "osint": [],
        "metadata": {"product": {"name": "guard"}, "version": "1.8.0", "tenant_uid": "acme"},
        "finding_info": {
            "uid": "f-1",
            "title": "injection",
            "attacks": [{"technique": {"uid": "AML.T0051"}}],
        },
        "actor": {"user": {"uid": "u-1"}, "session": {"uid": "s-1"}},
        "confidence_score": 80,
        "confidence_id": 3,
        "severity": "High",
        "evidences": [{"data": {"prompt": "ignore previous instructions"}}],
        "message": "m",
        "status_id": 1,
    }


def _errors(body: dict[str, Any]) -> list[str]:
    with pytest.raises(DetectionInvalid) as exc:
        parse_detection(body)
    return [e["field"] for e in exc.value.errors]


@pytest.mark.parametrize("field", sorted(ATTRS["required"]))
def test_each_required_field_missing_is_named(field: str) -> None:
    body = _full()
    if field in ("cloud", "osint"):
        # Profile attributes: required only when the finding applies the profile.
        body.pop(field)
        parse_detection(body)
        body["metadata"]["profiles"] = [field]
        assert field in _errors(body)
        return
    body.pop(field)
    assert field in _errors(body)


@pytest.mark.parametrize(
    "obj,field", [("metadata", "product"), ("metadata", "version"), ("finding_info", "uid")]
)
def test_required_fields_of_objects_missing_are_named(obj: str, field: str) -> None:
    body = _full()
    body[obj].pop(field)
    assert f"{obj}.{field}" in _errors(body)


def test_every_optional_and_recommended_field_may_be_absent() -> None:
    absent = (set(ATTRS["optional"]) | set(ATTRS["recommended"])) - NEEDED_BY_SOAR
    body = _full()
    for field in absent:
        body.pop(field, None)
    body.pop("cloud")
    body.pop("osint")
    det, fmt = parse_detection(body)
    assert fmt == "ocsf" and det.technique == "AML.T0051" and det.severity == "high"
    assert det.confidence == UNKNOWN_CONFIDENCE
    for field in sorted(absent):
        one = _full()
        one.pop(field, None)
        parse_detection(one)  # accepted


def test_confidence_score_is_0_to_100_and_confidence_id_maps_without_it() -> None:
    body = _full()
    body["confidence_score"] = 1
    assert parse_detection(body)[0].confidence == pytest.approx(0.01)
    body["confidence_score"] = 100
    assert parse_detection(body)[0].confidence == pytest.approx(1.0)
    body["confidence_score"] = 101
    assert "confidence_score" in _errors(body)
    for cid, low, high in ((1, 0.0, 0.45), (2, 0.45, 0.75), (3, 0.75, 1.0)):
        b = copy.deepcopy(body)
        b.pop("confidence_score")
        b["confidence_id"] = cid
        assert low <= parse_detection(b)[0].confidence <= high


def test_unknown_severity_uses_the_label_or_a_default() -> None:
    body = _full()
    body["severity_id"] = 99
    body["severity"] = "Critical"
    assert parse_detection(body)[0].severity == "critical"
    body["severity"] = "Catastrophic"
    assert parse_detection(body)[0].severity == "medium"
    body["severity_id"] = "4"
    assert "severity_id" in _errors(body)


def test_time_outside_the_window_names_time() -> None:
    body = _full()
    body["time"] = 0  # 1970
    assert "time" in _errors(body)
