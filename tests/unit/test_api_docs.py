"""The OpenAPI document says everything a caller needs (soar/api/docs.py)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.support import make_settings


@pytest.fixture(scope="module")
def client() -> TestClient:
    from atlas_soar.app import create_app

    settings = make_settings("postgresql://nobody@127.0.0.1:1/none", "127.0.0.1:1", "q")
    app = create_app(
        settings,
        database_url="postgresql://nobody@127.0.0.1:1/none",
        temporal_address="127.0.0.1:1",
        webhook_secret="whsec_" + "A" * 32,
    )
    return TestClient(app)  # no lifespan: nothing is connected to


@pytest.fixture(scope="module")
def spec(client: TestClient) -> dict[str, Any]:
    r = client.get("/openapi.json")
    assert r.status_code == 200
    return r.json()  # type: ignore[no-any-return]


def _ops(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method, path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
        if isinstance(op, dict)
    ]


def test_bearer_and_signature_schemes_are_declared_and_used(spec: dict[str, Any]) -> None:
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearer"] == {**schemes["bearer"], "type": "http", "scheme": "bearer"}
    assert "webhookSignature" in schemes
    for method, path, op in _ops(spec):
        if path in ("/healthz", "/readyz", "/metrics"):
            assert op["security"] == []
        elif path == "/v1/detections":
            assert op["security"] == [{"webhookSignature": []}]
        else:
            assert op["security"] == [{"bearer": []}], (method, path)


def test_intake_documents_its_three_bodies_headers_and_answers(spec: dict[str, Any]) -> None:
    op = spec["paths"]["/v1/detections"]["post"]
    body = op["requestBody"]["content"]["application/json"]
    refs = {s["$ref"].rsplit("/", 1)[1] for s in body["schema"]["oneOf"]}
    assert refs == {"NativeDetection", "OcsfDetectionFinding", "FindingEnvelope"}
    for name in refs:
        assert name in spec["components"]["schemas"]
    assert set(body["examples"]) == {"native", "ocsf", "finding"}
    headers = {p["name"] for p in op["parameters"] if p["in"] == "header"}
    assert headers == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    assert {"200", "202", "204", "401", "403", "413", "415", "422", "429", "503"} <= set(
        op["responses"]
    )
    assert "Retry-After" in op["responses"]["429"]["headers"]


def test_every_operation_has_a_summary_its_answers_and_described_parameters(
    spec: dict[str, Any],
) -> None:
    seen = set()
    for method, path, op in _ops(spec):
        seen.add(path)
        assert op.get("summary"), (method, path)
        assert "200" in op["responses"] or "202" in op["responses"], (method, path)
        if path.startswith("/v1/"):
            assert {"401", "503"} <= set(op["responses"]), (method, path)
        for p in op.get("parameters", []):
            assert p.get("description"), (method, path, p["name"])
    assert {"/v1/detections", "/v1/approvals", "/v1/audit", "/v1/enforcement/stream"} <= seen
    decision = spec["paths"]["/v1/approvals/{approval_id}/decision"]["post"]
    assert {"202", "403", "404", "409"} <= set(decision["responses"])


def test_the_assets_are_served_from_the_package(client: TestClient) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    assert "/docs/assets/swagger-ui-bundle.js" in page.text
    assert "cdn" not in page.text.lower()
    js = client.get("/docs/assets/swagger-ui-bundle.js")
    assert js.status_code == 200 and len(js.content) > 100_000
    assert client.get("/docs/assets/..%2Fetc%2Fpasswd").status_code == 404
    redoc = client.get("/redoc")
    assert redoc.status_code == 200 and "fonts.googleapis" not in redoc.text
