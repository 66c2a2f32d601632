"""Detection sources with their own credentials, against the real stack: attribution from the
credential that verified the signature, tenant allow-lists, revocation, rotation, Ed25519;
and who may read enforcement."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import psycopg
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from sqlalchemy.orm import Session
from temporalio.client import Client

from soar.db import make_sync_engine
from soar.sources import revoke_source, rotate_source, seal, unseal
from tests.support import (
    WEBHOOK_SECRET,
    add_source,
    bearer,
    detection,
    make_settings,
    running_stack,
    sign,
)

pytestmark = pytest.mark.timeout(120)


def _rows(db_url: str, sql: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as c:
        return c.execute(sql).fetchall()


def _sync(db_url: str) -> Session:
    return Session(make_sync_engine(db_url))


async def test_detections_carry_the_verified_source_and_tenant_limits_hold(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    secret = add_source(db_url, "acme-guard", tenants=("acme",))
    async with running_stack(settings, temporal_client, worker=False) as stack:
        # The body claims another source: the detection is the verifying source's.
        ok = await stack.post_detection(
            detection(id="d-1", source="siem", subject={"tenant": "acme", "session": "s-1"}),
            secret=secret,
        )
        assert ok.status_code == 202, ok.text
        beta = await stack.post_detection(
            detection(id="d-2", subject={"tenant": "beta", "session": "s-2"}), secret=secret
        )
        assert beta.status_code == 403, beta.text
        assert "beta" in beta.json()["error"]
        # The default source (SOAR_WEBHOOK_SECRET) is "default", whatever the body says.
        dflt = await stack.post_detection(
            detection(id="d-3", source="acme-guard", subject={"tenant": "beta", "session": "s-3"})
        )
        assert dflt.status_code == 202, dflt.text
    assert sorted(_rows(db_url, "SELECT source, external_id FROM detections")) == [
        ("acme-guard", "d-1"),
        ("default", "d-3"),
    ]
    refused = _rows(
        db_url, "SELECT actor, outcome, details FROM action_log WHERE event = 'intake.refused'"
    )
    assert len(refused) == 1
    actor, outcome, details = refused[0]
    assert (actor, outcome, details["source"]) == ("source:acme-guard", "refused", "acme-guard")
    assert "beta" in details["reason"]


async def test_revoked_source_is_refused_and_rotation_keeps_both_secrets(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    old = add_source(db_url, "gw")
    gone = add_source(db_url, "old-siem")
    with _sync(db_url) as s, s.begin():
        from datetime import timedelta

        new, _ = rotate_source(s, "gw", grace=timedelta(hours=1), public_key=None, key=None)
        revoke_source(s, "old-siem")
    assert new != old
    async with running_stack(settings, temporal_client, worker=False) as stack:
        for i, secret in enumerate((old, new)):
            r = await stack.post_detection(
                detection(id=f"r-{i}", subject={"tenant": "acme", "session": f"s-{i}"}),
                secret=secret,
            )
            assert r.status_code == 202, (i, r.text)
        r = await stack.post_detection(detection(id="x"), secret=gone)
        assert r.status_code == 401, r.text
    with _sync(db_url) as s, s.begin():
        # Grace over: only the new secret verifies.
        rotate_source(s, "gw", grace=timedelta(0), public_key=None, key=None)
    # A rotation with no grace ends both earlier secrets.
    again = make_settings(db_url, temporal_address, task_queue + "-2")
    async with running_stack(again, temporal_client, worker=False) as stack:
        for secret in (old, new):
            r = await stack.post_detection(detection(id="late"), secret=secret)
            assert r.status_code == 401, r.text


def _sign_v1a(key: Ed25519PrivateKey, body: bytes) -> dict[str, str]:
    msg_id, ts = "msg_" + uuid.uuid4().hex, str(int(time.time()))
    sig = key.sign(f"{msg_id}.{ts}.".encode() + body)
    return {
        "content-type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": ts,
        "webhook-signature": "v1a," + base64.b64encode(sig).decode(),
    }


async def test_an_ed25519_source_signs_with_v1a_and_the_server_keeps_no_secret(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    key = Ed25519PrivateKey.generate()
    pub = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    assert add_source(db_url, "asym", public_key="whpk_" + base64.b64encode(pub).decode()) == ""
    other = Ed25519PrivateKey.generate()
    async with running_stack(settings, temporal_client, worker=False) as stack:
        raw = json.dumps(detection(id="e-1", subject={"tenant": "acme", "session": "e"})).encode()
        r = await stack.http.post("/v1/detections", content=raw, headers=_sign_v1a(key, raw))
        assert r.status_code == 202, r.text
        raw2 = json.dumps(detection(id="e-2")).encode()
        r = await stack.http.post("/v1/detections", content=raw2, headers=_sign_v1a(other, raw2))
        assert r.status_code == 401, r.text
    assert _rows(db_url, "SELECT source FROM detections") == [("asym",)]
    assert _rows(db_url, "SELECT kind FROM source_credentials") == [("ed25519",)]


async def test_secrets_are_encrypted_at_rest_when_a_key_is_set(db_url: str) -> None:
    secret = add_source(db_url, "sealed", secrets_key="k" * 32)
    (material,) = _rows(db_url, "SELECT material FROM source_credentials")[0]
    assert secret not in material and material.startswith("aesgcm:")
    assert unseal(material, "k" * 32) == secret
    assert unseal(material, "wrong-key") is None
    assert unseal(seal(secret, None), None) == secret


async def test_enforcement_needs_a_reader_token_and_a_gateway_token_reads_only_that(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client, worker=False) as stack:
        http = stack.http
        for path in ("sessions/s-1", "api-keys/k-1", "users/u-1"):
            r = await http.get(f"/v1/enforcement/{path}")
            assert r.status_code == 401, (path, r.text)
            for role in ("gateway", "analyst", "approver", "admin"):
                r = await http.get(f"/v1/enforcement/{path}", headers=bearer(role))
                assert r.status_code == 200, (path, role, r.text)
                assert r.json()["blocked"] is False
            r = await http.get(f"/v1/enforcement/{path}", headers=bearer("auditor"))
            assert r.status_code == 403
        for method, path in (
            ("GET", "/v1/incidents"),
            ("GET", "/v1/incidents/inc-x"),
            ("GET", "/v1/approvals"),
            ("GET", "/v1/approvals/apr-x"),
            ("POST", "/v1/approvals/apr-x/decision"),
            ("GET", "/v1/audit"),
            ("GET", "/v1/audit/verify"),
            ("GET", "/v1/reports/summary"),
        ):
            r = await http.request(
                method, path, headers=bearer("gateway"), json={"decision": "approve"}
            )
            assert r.status_code == 403, (method, path, r.status_code, r.text)


async def test_default_secret_still_verifies_with_the_standardwebhooks_package(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    """`sign` uses the standardwebhooks package: our verifier agrees with it, including a
    header holding several signatures (as during a rotation)."""
    settings = make_settings(db_url, temporal_address, task_queue)
    other = add_source(db_url, "two")
    async with running_stack(settings, temporal_client, worker=False) as stack:
        raw = json.dumps(detection(id="m-1")).encode()
        a, b = sign(raw, secret=other), sign(raw, secret=WEBHOOK_SECRET)
        b["webhook-signature"] = (
            sign(raw, secret=other, msg_id=b["webhook-id"])["webhook-signature"]
            + " "
            + b["webhook-signature"]
        )
        r = await stack.http.post("/v1/detections", content=raw, headers=b)
        assert r.status_code == 202, r.text
        r = await stack.http.post("/v1/detections", content=raw, headers=b)
        assert r.status_code == 200 and r.json()["duplicate"] is True, r.text
        # The same id from the other source is that source's own detection.
        r = await stack.http.post("/v1/detections", content=raw, headers=a)
        assert r.status_code == 202, r.text
