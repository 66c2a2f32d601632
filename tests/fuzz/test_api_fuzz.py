"""Schemathesis over every operation of the OpenAPI schema, in-process over ASGI: no input
gets a 5xx.

The app is the real one (`create_app`) on a real PostgreSQL and the session's Temporal
server. Requests carry a bearer token of a drawn role (or none), so routes behind auth are
exercised past 401/403. `POST /v1/detections` reads its body raw, so the schema has no body
for it; the test adds one (native detection or OCSF Detection Finding) and signs each
generated body with the Standard Webhooks scheme, so generated detections reach validation.
`/slack/interactions` is not in the schema: see test_payload_mutations.py.

`SOAR_FUZZ_EXAMPLES` sets the examples per operation (default 40).
"""

from __future__ import annotations

import copy
import json
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error
from schemathesis.python import asgi

from soar.config import Settings
from tests.fuzz.conftest import examples
from tests.fuzz.mutations import SEVERITIES, TECHNIQUES, webhook_signature
from tests.support import TOKENS, WEBHOOK_SECRET, make_settings

pytestmark = pytest.mark.timeout(600)

EXAMPLES = examples(40)

_TEXT = {"type": "string", "minLength": 1, "maxLength": 256}
NATIVE_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["id", "technique", "severity", "confidence", "subject"],
    "properties": {
        "id": _TEXT,
        "technique": {"enum": list(TECHNIQUES)},
        "severity": {"enum": list(SEVERITIES)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        "source": {"type": "string", "minLength": 1, "maxLength": 128},
        "observed_at": {"type": "string", "format": "date-time"},
        "subject": {
            "type": "object",
            "properties": {
                "tenant": {"type": "string", "minLength": 1, "maxLength": 128},
                "user": _TEXT,
                "session": _TEXT,
                "api_key": _TEXT,
            },
            "anyOf": [{"required": ["user"]}, {"required": ["session"]}, {"required": ["api_key"]}],
        },
        "evidence": {
            "type": "object",
            "properties": {"prompt": {"type": "string"}, "model": {"type": "string"}},
        },
    },
}
_UID = {"type": "object", "required": ["uid"], "properties": {"uid": _TEXT}}
OCSF_BODY: dict[str, Any] = {
    "type": "object",
    "required": ["class_uid", "finding_info", "severity_id", "actor"],
    "properties": {
        "class_uid": {"enum": [2004]},
        "severity_id": {"type": "integer", "minimum": 0, "maximum": 99},
        "time": {"type": "integer"},
        "confidence_score": {"type": "number"},
        "metadata": {
            "type": "object",
            "properties": {
                "tenant_uid": {"type": "string"},
                "product": {"type": "object", "properties": {"name": {"type": "string"}}},
            },
        },
        "finding_info": {
            "type": "object",
            "required": ["uid", "attacks"],
            "properties": {
                "uid": _TEXT,
                "attacks": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "technique": {
                                "type": "object",
                                "properties": {"uid": {"enum": list(TECHNIQUES)}},
                            },
                            "sub_technique": _UID,
                        },
                    },
                },
            },
        },
        "actor": {"type": "object", "properties": {"user": _UID, "session": _UID}},
        "evidences": {
            "type": "array",
            "items": {"type": "object", "properties": {"data": {"type": "object"}}},
        },
    },
}

STATUSES: Counter[tuple[str, int]] = Counter()

ROLES = ("admin", "admin", "approver", "analyst", "auditor", None, "bogus")


def with_intake_body(raw: dict[str, Any]) -> dict[str, Any]:
    raw = copy.deepcopy(raw)
    op = raw["paths"]["/v1/detections"]["post"]
    op["requestBody"] = {
        "required": True,
        "content": {"application/json": {"schema": {"oneOf": [NATIVE_BODY, OCSF_BODY]}}},
    }
    op.setdefault("responses", {}).update(
        {
            "200": {"description": "duplicate"},
            "401": {"description": "bad signature"},
            "413": {"description": "too large"},
            "422": {"description": "invalid"},
        }
    )
    return raw


@pytest.fixture(scope="session")
def fuzz_app(fuzz_settings: Settings) -> Iterator[FastAPI]:
    from atlas_soar.app import create_app

    assert fuzz_settings.database_url and fuzz_settings.temporal_address
    app = create_app(
        fuzz_settings,
        database_url=fuzz_settings.database_url,
        temporal_address=fuzz_settings.temporal_address,
        webhook_secret=WEBHOOK_SECRET,
    )
    yield app
    if STATUSES:  # shown with `pytest -s`: which answers the generated cases got
        for (label, status), n in sorted(STATUSES.items()):
            print(f"fuzz {label}: {status} x{n}")
    # The lifespan schemathesis started (engine, Temporal connection) ends before the
    # database is dropped.
    asgi.shutdown_lifespans()


def _schema() -> schemathesis.BaseSchema:
    """Built at collection, from an app that never connects (only its OpenAPI document is
    read); each call goes to the session's real app (`fuzz_app`)."""
    from atlas_soar.app import create_app

    dummy = make_settings("postgresql://fuzz@127.0.0.1:1/none", "127.0.0.1:1", "tq-none")
    app = create_app(
        dummy,
        database_url="postgresql://fuzz@127.0.0.1:1/none",
        temporal_address="127.0.0.1:1",
        webhook_secret=WEBHOOK_SECRET,
    )
    config = schemathesis.Config.from_dict(
        {
            "generation": {"mode": "all", "max-examples": EXAMPLES},
            "phases": {"stateful": {"enabled": False}},
            "warnings": False,
        }
    )
    document = with_intake_body(app.openapi())
    # The block stream never ends by design (Server-Sent Events): its own tests cover it.
    document["paths"].pop("/v1/enforcement/stream", None)
    return schemathesis.openapi.from_dict(document, config=config)


schema = _schema()


def signed_body(body: Any) -> tuple[bytes, dict[str, str]]:
    """The exact bytes of a generated body and Standard Webhooks headers for them (also for
    bytes that are not UTF-8, which `tests.support.sign` cannot sign)."""
    if isinstance(body, bytes):
        raw = body
    else:
        try:
            raw = json.dumps(body, allow_nan=True).encode()
        except (TypeError, ValueError):  # e.g. a generated value JSON cannot spell
            raw = repr(body).encode()
    msg_id = "msg_" + uuid.uuid4().hex
    ts = str(int(time.time()))
    return raw, {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": webhook_signature(WEBHOOK_SECRET, msg_id, ts, raw),
    }


@schema.parametrize()
@schema.given(role=st.sampled_from(ROLES))
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    print_blob=True,
)
def test_no_server_error(fuzz_app: FastAPI, case: schemathesis.Case, role: str | None) -> None:
    headers: dict[str, str] = {}
    if role == "bogus":
        headers["Authorization"] = "Bearer not-a-token-of-anyone"
    elif role is not None:
        headers["Authorization"] = f"Bearer {TOKENS[role]}"
    kwargs: dict[str, Any] = {"timeout": 30, "app": fuzz_app}
    if case.operation.method.upper() == "POST" and case.operation.path == "/v1/detections":
        raw, signature = signed_body(case.body if not _unset(case.body) else b"")
        # Generated headers (negative mode may spoil content-type) stay; signature added.
        headers = {**signature, **{k: str(v) for k, v in (case.headers or {}).items()}, **headers}
        kwargs["data"] = raw
    response = case.call(headers=headers, **kwargs)
    STATUSES[(case.operation.label, response.status_code)] += 1
    case.validate_response(response, checks=[not_a_server_error], headers=headers)


def _unset(value: Any) -> bool:
    return type(value).__name__ == "NotSet"
