"""API documentation that works without internet and says what a caller needs.

Swagger UI and ReDoc are served from the copies of their assets packaged in
`fastapi-offline` (no CDN), under `/docs/assets/`. The OpenAPI document is FastAPI's own,
completed here in one place: the bearer and webhook-signature security schemes, the intake
body schemas (native, OCSF Detection Finding, finding envelope) with examples, every
documented answer of each route, and summaries and parameter descriptions a user can act on.
"""

from __future__ import annotations

import copy
import importlib.resources
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, Response

from soar.intake.schema import NativeDetection

ASSETS = {
    "swagger-ui-bundle.js": "application/javascript",
    "swagger-ui.css": "text/css",
    "redoc.standalone.js": "application/javascript",
}
FINDING_FORMATS = [
    "llm-guard",
    "llamafirewall",
    "lakera-guard",
    "azure-prompt-shields",
    "bedrock-guardrails",
    "nemo-guardrails",
]

_ERROR = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "what went wrong, in one line"},
        "errors": {
            "type": "array",
            "description": "one entry per bad field (422)",
            "items": {
                "type": "object",
                "properties": {"field": {"type": "string"}, "message": {"type": "string"}},
            },
        },
    },
}
_ANSWERS = {
    "200": "OK",
    "202": "Accepted",
    "204": "Nothing to do",
    "401": "No valid credentials: a bearer token (or, for intake, a valid signature) is needed",
    "403": "The credentials are valid but not allowed here (role, or the source's tenants)",
    "404": "No such object",
    "409": "Conflict: already decided, or not pending any more",
    "413": "The body is over 256 KiB",
    "415": "The body is not JSON (Content-Type application/json)",
    "422": "A field is missing or bad: `errors` names each",
    "429": "Over a rate limit: retry after `Retry-After` seconds",
    "503": "PostgreSQL or Temporal is unavailable: retry after `Retry-After` seconds",
}
_SUCCESS = frozenset({"200", "202", "204"})
_RETRY_AFTER = {
    "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}},
}

# (method, path) -> summary, description, extra answers beyond 200/422.
_OPS: dict[tuple[str, str], tuple[str, str, tuple[str, ...]]] = {
    ("post", "/v1/detections"): (
        "Report a detection",
        "A signed detection (Standard Webhooks: `webhook-id`, `webhook-timestamp`, "
        "`webhook-signature`) in one of three forms: native, an OCSF Detection Finding "
        "(class_uid 2004), or a finding envelope carrying another detector's own result. "
        "202 means it is durable and its incident's workflow is running; a repeated `id` "
        "answers 200 with `duplicate: true`; a finding that detected nothing answers 204.",
        ("202", "204", "401", "403", "413", "415", "429", "503"),
    ),
    ("get", "/v1/enforcement/{kind}/{target}"): (
        "Is this session, API key or user blocked?",
        "The gateway's hot path, answered from memory. `until` is when a temporary block "
        "lifts itself (null: until lifted).",
        ("401", "403", "503"),
    ),
    ("get", "/v1/enforcement/stream"): (
        "Stream blocks and lifts (Server-Sent Events)",
        "First every active block (`event: block`), then each change as it commits. Pass the "
        "last `id:` back as `Last-Event-ID` to resume without a gap.",
        ("401", "403", "503"),
    ),
    ("get", "/v1/incidents/{incident_id}"): (
        "One incident",
        "Status, detections, enrichment, actions and approvals of an incident.",
        ("401", "403", "404", "503"),
    ),
    ("get", "/v1/incidents"): (
        "Search incidents",
        "Newest first; filter by subject, technique, tactic, severity, status, disposition "
        "and when they opened (`since`, `until`); `next` links the next page.",
        ("401", "403", "503"),
    ),
    ("get", "/v1/approvals"): (
        "List approvals",
        "Each item says what it would allow: the action (type, target, risk, rule) and the "
        "incident's technique, severity and subject.",
        ("401", "403", "503"),
    ),
    ("get", "/v1/approvals/{approval_id}"): (
        "One approval",
        "Its state, and the decision once taken.",
        ("401", "403", "404", "503"),
    ),
    ("post", "/v1/approvals/{approval_id}/decision"): (
        "Approve or reject an action",
        "Role approver or admin. First decision wins: a second one is answered 409. 202 "
        "means the decision is recorded and the workflow is applying it: poll the approval.",
        ("202", "401", "403", "404", "409", "503"),
    ),
    # An analyst's actions (soar/api/analyst.py): roles analyst or admin.
    ("post", "/v1/incidents/{incident_id}/actions/{action_id}/lift"): (
        "Lift a block early",
        "Role analyst or admin. The enforcement check says unblocked at once; the block's "
        "timer lifts nothing later. `reason` is logged with who lifted it. 202: accepted, the "
        "workflow is finishing it: poll the incident.",
        ("202", "401", "403", "404", "409", "503"),
    ),
    ("post", "/v1/incidents/{incident_id}/actions/{action_id}/extend"): (
        "Extend a temporary block",
        "Role analyst or admin. Moves the expiry `minutes` later; the block lifts itself then.",
        ("202", "401", "403", "404", "409", "503"),
    ),
    ("post", "/v1/incidents/{incident_id}/actions/{action_id}/contain"): (
        "Contain now: apply a planned action",
        "Role analyst or admin. An action not in force (skipped, expired, lifted, rejected) "
        "applied again: low risk at once; high risk opens an approval that a different person "
        "must decide.",
        ("202", "401", "403", "404", "409", "503"),
    ),
    ("post", "/v1/incidents/{incident_id}/close"): (
        "Close an incident with a disposition",
        "Role analyst or admin. `true_positive` keeps its temporary blocks until their time; "
        "`false_positive` and `benign` lift them now. Refused (409) while an approval is "
        "pending. On a closed incident: sets or changes the disposition.",
        ("202", "401", "403", "404", "409", "503"),
    ),
    ("post", "/v1/incidents/{incident_id}/notes"): (
        "Add a note to an incident",
        "Role analyst or admin. One row in the action log, and a comment on its ticket.",
        ("202", "401", "403", "404", "409", "503"),
    ),
    ("get", "/v1/audit"): (
        "Query the action log",
        "Role auditor or admin. Keyset paging with `cursor`; `format` json, jsonl, csv or "
        "ocsf (streamed).",
        ("401", "403", "503"),
    ),
    ("get", "/v1/audit/verify"): (
        "Verify the action log's hash chain",
        "Recomputes every hash; names every problem found (capped) and how far sealing lags.",
        ("401", "403", "503"),
    ),
    ("get", "/v1/reports/summary"): (
        "Incident and action summary for a period",
        "Role auditor or admin: detections, incidents, blocks applied and approvals per "
        "technique and per tactic, with time to contain and time to decision (p50/p95).",
        ("401", "403", "503"),
    ),
    ("get", "/v1/reports/atlas-layer"): (
        "ATLAS Navigator layer of observed attacks",
        "Role auditor or admin: a layer file (load it in ATLAS Navigator) scoring each "
        "technique by the detections seen.",
        ("401", "403", "503"),
    ),
    ("get", "/healthz"): ("Process is up", "Always 200 while the process serves.", ()),
    ("get", "/readyz"): (
        "Ready: database and Temporal reachable",
        "200 when both answer, else 503 naming what is down.",
        ("503",),
    ),
    ("get", "/metrics"): ("Prometheus metrics", "Text exposition format.", ()),
}

_PARAMS = {
    "tenant": "the tenant the subject belongs to (default `default`)",
    "kind": "what is checked: `sessions`, `api-keys` or `users`",
    "target": "the session id, API key or user id the gateway sees",
    "incident_id": "an incident id, as returned by `POST /v1/detections`",
    "approval_id": "an approval id, from `GET /v1/approvals`",
    "action_id": "an action id, from the incident's `actions`",
    "severity": "only incidents of this severity",
    "disposition": "how an analyst closed it (`none`: not set)",
    "status": "only items in this state",
    "cursor": "the `next_cursor` of the previous page",
    "limit": "at most this many items",
    "since": "from this time on (ISO 8601, inclusive)",
    "until": "before this time (ISO 8601, exclusive)",
    "technique": "an ATLAS technique id; a parent id matches its sub-techniques",
    "tactic": "an ATLAS tactic id such as AML.TA0005",
    "subject": "a subject such as `session:s-9`, `user:u-42` or `api_key:k-1`",
    "actor": "who acted: `system:atlas-soar`, `user:NAME`, `slack:UID`, ...",
    "action": "an action type such as block_session or revoke_api_key",
    "outcome": "ok, applied, failed, refused, ...",
    "event": "an event such as detection.received or approval.decided",
    "format": "json (default), jsonl, csv or ocsf",
    "channel": "only approvals announced on this channel (slack, email)",
    "last_event_id": "resume after this event id (or send the `Last-Event-ID` header)",
}

_NATIVE_EXAMPLE = {
    "id": "det-7f3a",
    "technique": "AML.T0051",
    "severity": "high",
    "confidence": 0.92,
    "source": "llm-gateway",
    "observed_at": "2026-11-21T10:15:00Z",
    "subject": {"tenant": "acme", "user": "u-42", "session": "s-9", "api_key": "k-1"},
    "evidence": {"prompt": "Ignore previous instructions and ...", "model": "gpt-x"},
}
_OCSF_EXAMPLE = {
    "class_uid": 2004,
    "category_uid": 2,
    "activity_id": 1,
    "type_uid": 200401,
    "severity_id": 4,
    "time": 1764000000000,
    "metadata": {"version": "1.8.0", "product": {"name": "siem"}, "uid": "f-91"},
    "finding_info": {
        "uid": "f-91",
        "title": "Prompt injection",
        "attacks": [{"technique": {"uid": "AML.T0051", "name": "LLM Prompt Injection"}}],
    },
    "confidence_id": 3,
    "resources": [{"type": "session", "uid": "s-9"}],
}
_ENVELOPE_EXAMPLE = {
    "id": "lg-1",
    "source": "llm-guard",
    "subject": {"tenant": "acme", "session": "s-9"},
    "finding": {
        "format": "llm-guard",
        "result": {"is_valid": False, "risk_score": 0.97, "scanner": "PromptInjection"},
    },
}


def _intake_body(components: dict[str, Any]) -> dict[str, Any]:
    native = NativeDetection.model_json_schema(ref_template="#/components/schemas/{model}")
    for name, schema in native.pop("$defs", {}).items():
        components.setdefault(name, schema)
    components["NativeDetection"] = native
    components["OcsfDetectionFinding"] = {
        "type": "object",
        "description": "An OCSF 1.8 Detection Finding; `finding_info.attacks[].technique.uid` "
        "holds the ATLAS technique. Every optional field may be absent; `confidence_score` "
        "is read as 0-100, `confidence_id` when there is no score.",
        "required": ["class_uid", "finding_info", "metadata", "severity_id", "time"],
        "properties": {
            "class_uid": {"type": "integer", "enum": [2004]},
            "finding_info": {"type": "object"},
            "metadata": {"type": "object"},
            "severity_id": {"type": "integer"},
            "time": {"type": "integer", "description": "epoch milliseconds"},
            "confidence_score": {"type": "integer", "minimum": 0, "maximum": 100},
            "confidence_id": {"type": "integer"},
        },
        "additionalProperties": True,
    }
    components["FindingEnvelope"] = {
        "type": "object",
        "description": "Another detector's own result, unchanged; technique, severity and "
        "confidence are derived from it (docs/detectors.md).",
        "required": ["id", "subject", "finding"],
        "properties": {
            "id": {"type": "string", "maxLength": 256},
            "source": {"type": "string", "maxLength": 128},
            "subject": {"$ref": "#/components/schemas/SubjectIn"},
            "finding": {
                "type": "object",
                "required": ["format", "result"],
                "properties": {
                    "format": {"type": "string", "enum": FINDING_FORMATS},
                    "result": {"type": "object", "description": "the tool's output"},
                },
            },
        },
    }
    return {
        "required": True,
        "content": {
            "application/json": {
                "schema": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/NativeDetection"},
                        {"$ref": "#/components/schemas/OcsfDetectionFinding"},
                        {"$ref": "#/components/schemas/FindingEnvelope"},
                    ]
                },
                "examples": {
                    "native": {"summary": "Native detection", "value": _NATIVE_EXAMPLE},
                    "ocsf": {"summary": "OCSF Detection Finding", "value": _OCSF_EXAMPLE},
                    "finding": {"summary": "Finding envelope", "value": _ENVELOPE_EXAMPLE},
                },
            }
        },
    }


_SIGNATURE_HEADERS = [
    {
        "name": "webhook-id",
        "in": "header",
        "required": True,
        "description": "a unique id of this delivery (Standard Webhooks)",
        "schema": {"type": "string"},
    },
    {
        "name": "webhook-timestamp",
        "in": "header",
        "required": True,
        "description": "seconds since the epoch; more than 5 minutes off is refused",
        "schema": {"type": "integer"},
    },
    {
        "name": "webhook-signature",
        "in": "header",
        "required": True,
        "description": "`v1,<base64 HMAC-SHA256>` with the source's whsec_ secret, or "
        "`v1a,<base64 Ed25519>` for a source registered with a public key",
        "schema": {"type": "string"},
    },
]


def complete(schema: dict[str, Any]) -> dict[str, Any]:
    """FastAPI's OpenAPI document, completed (a copy; the input is not changed)."""
    doc = copy.deepcopy(schema)
    components = doc.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas["Error"] = _ERROR
    components["securitySchemes"] = {
        "bearer": {
            "type": "http",
            "scheme": "bearer",
            "description": "an API token (`soar users token`, or `SOAR_API_TOKENS`); the "
            "role decides what it may do",
        },
        "webhookSignature": {
            "type": "apiKey",
            "in": "header",
            "name": "webhook-signature",
            "description": "Standard Webhooks signature over `id.timestamp.body`",
        },
    }
    for path, item in doc.get("paths", {}).items():
        for method, op in item.items():
            if not isinstance(op, dict):
                continue
            default = ("401", "403", "503") if path.startswith("/v1/") else ()
            summary, description, extra = _OPS.get(
                (method, path), (op.get("summary", ""), op.get("description", ""), default)
            )
            if summary:
                op["summary"] = summary
            if description:
                op["description"] = description
            if path == "/v1/detections" and method == "post":
                op["requestBody"] = _intake_body(schemas)
                op["security"] = [{"webhookSignature": []}]
                op["parameters"] = [*op.get("parameters", []), *_SIGNATURE_HEADERS]
            elif path in ("/healthz", "/readyz", "/metrics"):
                op["security"] = []
            else:
                op["security"] = [{"bearer": []}]
            for p in op.get("parameters", []):
                if "description" not in p and p.get("name") in _PARAMS:
                    p["description"] = _PARAMS[p["name"]]
            answers = op.setdefault("responses", {})
            codes = {"200", *extra}  # 200 also for intake: a repeated id
            if op.get("parameters") or "requestBody" in op:
                codes.add("422")
            for code in sorted(codes):
                entry = answers.setdefault(code, {"description": _ANSWERS[code]})
                if code in _SUCCESS:
                    continue
                entry["description"] = _ANSWERS[code]
                entry["content"] = {
                    "application/json": {"schema": {"$ref": "#/components/schemas/Error"}}
                }
                if code in ("429", "503"):
                    entry["headers"] = _RETRY_AFTER
    return doc


def _asset_path(name: str) -> Any:
    return importlib.resources.files("fastapi_offline").joinpath("static", name)


def install(app: FastAPI) -> None:
    """Serve /docs (Swagger UI), /redoc and the completed /openapi.json, offline."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = complete(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    summary=app.summary,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.get("/docs", include_in_schema=False)
    async def swagger() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            swagger_js_url="/docs/assets/swagger-ui-bundle.js",
            swagger_css_url="/docs/assets/swagger-ui.css",
            swagger_favicon_url="data:,",
        )

    @app.get("/redoc", include_in_schema=False)
    async def redoc() -> HTMLResponse:
        return get_redoc_html(
            openapi_url="/openapi.json",
            title=f"{app.title} API",
            redoc_js_url="/docs/assets/redoc.standalone.js",
            redoc_favicon_url="data:,",
            with_google_fonts=False,
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    async def asset(name: str) -> Response:
        if name not in ASSETS:
            raise HTTPException(404, "no such asset")
        return Response(
            _asset_path(name).read_bytes(),
            media_type=ASSETS[name],
            headers={"Cache-Control": "max-age=86400"},
        )
