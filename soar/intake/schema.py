"""Detection bodies: the native JSON form and an OCSF Detection Finding (class_uid 2004).

Both become one `NativeDetection`; validation errors name every bad field.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from soar.bounds import (
    IDENTIFIER_MAX,
    TENANT_MAX,
    check_observed_at,
    unsafe_identifier,
)
from soar.domain import Severity

TECHNIQUE_RE = re.compile(r"^AML\.T\d{4}(\.\d{3})?$")
_OCSF_SEVERITY = {1: "info", 2: "low", 3: "medium", 4: "high", 5: "critical", 6: "critical"}
# OCSF confidence_id (1 Low, 2 Medium, 3 High) when the finding has no confidence_score.
_OCSF_CONFIDENCE = {1: 0.3, 2: 0.6, 3: 0.9}
UNKNOWN_CONFIDENCE = 0.5  # neither a score nor a known confidence_id
UNKNOWN_SEVERITY = "medium"  # severity_id 0 (Unknown) or 99 (Other) without a known label
# Required by the OCSF 1.8 Detection Finding class (base event + finding + class).
OCSF_REQUIRED = (
    "activity_id",
    "category_uid",
    "class_uid",
    "finding_info",
    "metadata",
    "severity_id",
    "time",
    "type_uid",
)
# Required only when the finding says it applies the profile (metadata.profiles[]).
OCSF_PROFILE_REQUIRED = {"cloud": "cloud", "osint": "osint"}


class SubjectIn(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)
    # (soar.bounds.canonical_id is what a gateway makes of any value to fit these)
    tenant: str = Field(default="default", min_length=1, max_length=TENANT_MAX)
    user: str | None = Field(default=None, min_length=1, max_length=IDENTIFIER_MAX)
    session: str | None = Field(default=None, min_length=1, max_length=IDENTIFIER_MAX)
    api_key: str | None = Field(default=None, min_length=1, max_length=IDENTIFIER_MAX)

    @field_validator("tenant", "user", "session", "api_key")
    @classmethod
    def _safe(cls, v: str | None) -> str | None:
        return _identifier(v)

    @model_validator(mode="after")
    def _one_identity(self) -> SubjectIn:
        if not (self.user or self.session or self.api_key):
            raise ValueError("at least one of session, user, api_key is required")
        return self


class EvidenceIn(BaseModel):
    model_config = ConfigDict(extra="allow")
    prompt: str | None = Field(default=None, max_length=200_000)
    model: str | None = Field(default=None, max_length=256)

    @field_validator("model")
    @classmethod
    def _safe(cls, v: str | None) -> str | None:
        return _identifier(v)


class NativeDetection(BaseModel):
    model_config = ConfigDict(extra="allow", str_strip_whitespace=True)
    id: str = Field(min_length=1, max_length=256)
    technique: str
    severity: Severity
    confidence: float = Field(ge=0.0, le=1.0)
    source: str = Field(default="unknown", min_length=1, max_length=128)
    observed_at: datetime | None = None
    subject: SubjectIn
    evidence: EvidenceIn | None = None

    @field_validator("technique")
    @classmethod
    def _technique_form(cls, v: str) -> str:
        v = v.strip().upper()
        if not TECHNIQUE_RE.match(v):
            raise ValueError("must be an ATLAS technique ID such as AML.T0051 or AML.T0051.000")
        return v

    @field_validator("id", "source")
    @classmethod
    def _safe(cls, v: str) -> str:
        return _identifier(v) or v

    @field_validator("observed_at")
    @classmethod
    def _aware(cls, v: datetime | None) -> datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            v = v.replace(tzinfo=UTC)
        if problem := check_observed_at(v):
            raise ValueError(problem)
        return v.astimezone(UTC)


def _identifier(v: str | None) -> str | None:
    # U+2028 / U+2029 break a line in mail clients, editors and JavaScript, like a line feed.
    if v is not None and unsafe_identifier(v):
        raise ValueError(
            "must not contain control, line-separator or bidirectional-override characters"
        )
    return v


def _obj(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _ocsf_to_native(body: dict[str, Any]) -> dict[str, Any]:
    """Map an OCSF Detection Finding onto the native fields; missing parts are left out so
    that validation names them."""
    info = _obj(body.get("finding_info"))
    technique = None
    for attack in info.get("attacks") or []:
        if not isinstance(attack, dict):
            continue
        for key in ("sub_technique", "technique"):
            uid = (attack.get(key) or {}).get("uid") if isinstance(attack.get(key), dict) else None
            if isinstance(uid, str) and uid.upper().startswith("AML."):
                technique = uid
                break
        if technique:
            break
    out: dict[str, Any] = {"id": info.get("uid"), "technique": technique}
    out["severity"] = _ocsf_severity(body)
    out["confidence"] = _ocsf_confidence(body)
    metadata = _obj(body.get("metadata"))
    product = _obj(metadata.get("product"))
    out["source"] = product.get("name") or "ocsf"
    t = body.get("time")  # timestamp_t: milliseconds since the epoch
    if isinstance(t, int | float) and not isinstance(t, bool):
        out["observed_at"] = datetime.fromtimestamp(t / 1000, UTC)
    elif t is not None:
        out["observed_at"] = t  # validation names `time` unless it is an RFC 3339 string
    actor = _obj(body.get("actor"))
    user = _obj(actor.get("user"))
    session = _obj(actor.get("session"))
    subject: dict[str, Any] = {
        "tenant": (metadata.get("tenant_uid") or body.get("tenant") or "default"),
        "user": user.get("uid") or user.get("name"),
        "session": session.get("uid"),
        "api_key": _obj(body.get("unmapped")).get("api_key"),
    }
    out["subject"] = {k: v for k, v in subject.items() if v is not None}
    evidence: dict[str, Any] = {}
    for ev in body.get("evidences") or []:
        if isinstance(ev, dict) and isinstance(ev.get("data"), dict):
            evidence.update({k: v for k, v in ev["data"].items() if k in ("prompt", "model")})
    if evidence:
        out["evidence"] = evidence
    return {k: v for k, v in out.items() if v is not None}


def _ocsf_severity(body: dict[str, Any]) -> Any:
    sid = body.get("severity_id")
    if isinstance(sid, int) and not isinstance(sid, bool) and sid in _OCSF_SEVERITY:
        return _OCSF_SEVERITY[sid]
    label = body.get("severity")
    if isinstance(label, str) and label.strip().lower() in Severity.__members__:
        return label.strip().lower()
    if sid in (0, 99):  # Unknown / Other with no label we know
        return UNKNOWN_SEVERITY
    return sid  # a wrong type or value: validation names severity_id


def _ocsf_confidence(body: dict[str, Any]) -> Any:
    """`confidence_score` is 0-100 (OCSF); else `confidence_id`; else unknown (0.5)."""
    score = body.get("confidence_score")
    if score is not None:
        if isinstance(score, int | float) and not isinstance(score, bool):
            return score / 100
        return score  # validation names confidence_score
    cid = body.get("confidence_id")
    if isinstance(cid, int) and not isinstance(cid, bool) and cid in _OCSF_CONFIDENCE:
        return _OCSF_CONFIDENCE[cid]
    return UNKNOWN_CONFIDENCE


def ocsf_missing(body: dict[str, Any]) -> list[dict[str, str]]:
    """Every field the OCSF 1.8 Detection Finding requires that this finding lacks."""
    missing = [f for f in OCSF_REQUIRED if body.get(f) is None]
    metadata = _obj(body.get("metadata"))
    if "metadata" not in missing:
        missing += [f"metadata.{f}" for f in ("product", "version") if metadata.get(f) is None]
    if "finding_info" not in missing and _obj(body.get("finding_info")).get("uid") is None:
        missing.append("finding_info.uid")
    profiles = metadata.get("profiles")
    if isinstance(profiles, list):
        for profile, attr in OCSF_PROFILE_REQUIRED.items():
            if profile in profiles and body.get(attr) is None:
                missing.append(attr)
    return [
        {"field": f, "message": "required by the OCSF Detection Finding (2004) schema"}
        for f in missing
    ]


def _nul_path(value: Any, path: str) -> str | None:
    """The path of the first string holding NUL (PostgreSQL text cannot store it)."""
    if isinstance(value, str):
        return (path or "body") if "\x00" in value else None
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if "\x00" in str(k) or (found := _nul_path(v, sub)):
                return sub if "\x00" in str(k) else found
    if isinstance(value, list):
        for i, v in enumerate(value):
            if found := _nul_path(v, f"{path}[{i}]"):
                return found
    return None


# Detection.format holds at most 16 characters.
_FINDING_FORMAT = {"azure-prompt-shields": "azure-shields", "bedrock-guardrails": "bedrock"}


class NothingDetected(Exception):
    """A detector's finding that reports nothing: answered 204, recorded nowhere."""


def _from_finding(body: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """A finding envelope (`"finding": {"format", "result"}`) as native fields."""
    from soar.detect.adapters import FindingInvalid, map_finding

    finding = body.get("finding")
    if not isinstance(finding, dict):
        raise DetectionInvalid([{"field": "finding", "message": "must be an object"}])
    fmt = finding.get("format")
    if "result" not in finding:
        raise DetectionInvalid([{"field": "finding.result", "message": "is required"}])
    try:
        mapped = map_finding(fmt, finding["result"])  # type: ignore[arg-type]
    except FindingInvalid as exc:
        raise DetectionInvalid([{"field": exc.field, "message": exc.message}]) from None
    if mapped is None:
        raise NothingDetected()
    native = {k: v for k, v in body.items() if k != "finding"}
    native.update(
        technique=mapped.technique, severity=str(mapped.severity), confidence=mapped.confidence
    )
    return native, _FINDING_FORMAT.get(str(fmt), str(fmt))


def is_ocsf(body: dict[str, Any]) -> bool:
    """An OCSF finding names its class; one that forgot it still looks like one."""
    return "class_uid" in body or ("finding_info" in body and "technique" not in body)


def parse_detection(body: Any) -> tuple[NativeDetection, str]:
    """Returns the detection and its format ("native" or "ocsf"); raises DetectionInvalid."""
    if not isinstance(body, dict):
        raise DetectionInvalid([{"field": "body", "message": "must be a JSON object"}])
    if bad := _nul_path(body, ""):
        raise DetectionInvalid([{"field": bad, "message": "must not contain NUL characters"}])
    fmt = "native"
    if "finding" in body and not is_ocsf(body):
        for conflicting in ("technique", "severity", "confidence"):
            if conflicting in body:
                raise DetectionInvalid(
                    [
                        {
                            "field": conflicting,
                            "message": "give either a finding or technique/severity/confidence",
                        }
                    ]
                )
        body, fmt = _from_finding(body)
    elif is_ocsf(body):
        if body.get("class_uid", 2004) != 2004:
            only = "only OCSF Detection Finding (2004) is accepted"
            raise DetectionInvalid([{"field": "class_uid", "message": only}])
        if missing := ocsf_missing(body):
            raise DetectionInvalid(missing)
        fmt = "ocsf"
        try:
            body = _ocsf_to_native(body)
        except (TypeError, ValueError, OverflowError, AttributeError, OSError):
            raise DetectionInvalid(
                [
                    {
                        "field": "body",
                        "message": "malformed OCSF Detection Finding (a field has the wrong type)",
                    }
                ]
            ) from None
    try:
        return NativeDetection.model_validate(body), fmt
    except ValidationError as exc:
        raise DetectionInvalid(_errors(exc, ocsf=fmt == "ocsf")) from None


_OCSF_FIELD = {
    "id": "finding_info.uid",
    "technique": "finding_info.attacks[].technique.uid",
    "severity": "severity_id",
    "confidence": "confidence_score",
    "observed_at": "time",
    "subject": "actor",
}


def _errors(exc: ValidationError, *, ocsf: bool) -> list[dict[str, str]]:
    out = []
    for e in exc.errors(include_url=False, include_input=False):
        loc = ".".join(str(p) for p in e["loc"]) or "body"
        if ocsf:
            head = loc.split(".")[0]
            loc = _OCSF_FIELD.get(head, loc) if head == loc else loc
        msg = str(e["msg"]).removeprefix("Value error, ")
        out.append({"field": loc, "message": msg})
    return out


class DetectionInvalid(Exception):
    def __init__(self, errors: list[dict[str, str]]) -> None:
        super().__init__("; ".join(f"{e['field']}: {e['message']}" for e in errors))
        self.errors = errors
