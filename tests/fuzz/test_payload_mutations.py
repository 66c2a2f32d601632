"""Mutated detections, OCSF findings and Slack interactions, properly signed, over real HTTP
(uvicorn serving the real app on the test PostgreSQL): no 5xx for anything, and a 2xx for
every valid, correctly signed input.

The generators live in tests/fuzz/mutations.py (shared with bench/fuzz.py): any field
replaced by any JSON value, fields deleted or added, nesting up to 2000 levels, strings up
to 300 KB, control / bidi / non-ASCII characters and lone surrogates, extreme numbers and
datetimes, odd signature header bytes. The fixed cases at the end pin the inputs that
matter most, so a regression names itself without a hypothesis search.

`SOAR_FUZZ_EXAMPLES` sets the examples per property test (default 100).
"""

from __future__ import annotations

import json
import random
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from soar.config import Settings
from tests.fuzz import mutations as m
from tests.fuzz.conftest import SLACK_SIGNING_SECRET, examples
from tests.support import TOKENS, WEBHOOK_SECRET, ApiServer, detection

pytestmark = pytest.mark.timeout(600)

EXAMPLES = examples(100)
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
    print_blob=True,
)
ADMIN = TOKENS["admin"]


@pytest.fixture(scope="session")
def server(fuzz_settings: Settings) -> Iterator[ApiServer]:
    api = ApiServer(fuzz_settings)
    api.start()
    yield api
    api.stop()


@pytest.fixture(scope="session")
def http(server: ApiServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def send(http: httpx.Client, req: m.FuzzRequest) -> httpx.Response:
    return http.request(req.method, req.target(), content=req.body, headers=req.headers)


def check(r: httpx.Response, req: m.FuzzRequest) -> None:
    assert r.status_code < 500, f"{r.status_code} {r.text[:200]!r} for {req.describe()}"
    if req.expect_2xx:
        limited = r.status_code == 429 and "retry-after" in r.headers  # documented rate limit
        assert 200 <= r.status_code < 300 or limited, (
            f"valid input refused: {r.status_code} {r.text[:300]!r} for {req.describe()}"
        )


# --- property tests -----------------------------------------------------------------------------


@FUZZ
@given(req=m.drawn(lambda c: m.intake_case(c, WEBHOOK_SECRET)))
def test_mutated_detections(http: httpx.Client, req: m.FuzzRequest) -> None:
    check(send(http, req), req)


@FUZZ
@given(req=m.drawn(lambda c: m.slack_case(c, SLACK_SIGNING_SECRET)))
def test_mutated_slack_interactions(http: httpx.Client, req: m.FuzzRequest) -> None:
    check(send(http, req), req)


@FUZZ
@given(req=m.drawn(lambda c: m.datetime_query_case(c, ADMIN)))
def test_report_datetime_queries(http: httpx.Client, req: m.FuzzRequest) -> None:
    check(send(http, req), req)


@FUZZ
@given(req=m.drawn(lambda c: m.lookup_case(c, ADMIN)))
def test_lookup_values(http: httpx.Client, req: m.FuzzRequest) -> None:
    check(send(http, req), req)


# --- fixed cases --------------------------------------------------------------------------------


def signed_intake(body: bytes, **header_over: bytes | None) -> m.FuzzRequest:
    msg_id = "msg_" + uuid.uuid4().hex
    ts = str(int(time.time()))
    headers: dict[bytes, bytes | None] = {
        b"content-type": b"application/json",
        b"webhook-id": msg_id.encode(),
        b"webhook-timestamp": ts.encode(),
        b"webhook-signature": m.webhook_signature(WEBHOOK_SECRET, msg_id, ts, body).encode(),
    }
    headers.update({k.replace("_", "-").encode(): v for k, v in header_over.items()})
    pairs = [(k, v) for k, v in headers.items() if v is not None]
    return m.FuzzRequest("POST /v1/detections", "POST", "/v1/detections", body, pairs)


def signed_slack(
    body: bytes, *, ts: str | None = None, signature: bytes | None = None
) -> m.FuzzRequest:
    ts = str(int(time.time())) if ts is None else ts
    sig = signature or m.slack_signature(SLACK_SIGNING_SECRET, ts, body).encode()
    headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"x-slack-request-timestamp", ts.encode("utf-8")),
        (b"x-slack-signature", sig),
    ]
    return m.FuzzRequest("POST /slack/interactions", "POST", "/slack/interactions", body, headers)


def _nest(depth: int) -> m.Raw:
    return m.Raw('{"a":' * depth + "1" + "}" * depth)


DEEP = [100, 999, 1000, 1500, 2000]


@pytest.mark.parametrize("depth", DEEP)
@pytest.mark.parametrize("where", ["evidence", "subject.extra", "body"])
def test_deeply_nested_detection(http: httpx.Client, depth: int, where: str) -> None:
    body: Any = detection()
    if where == "evidence":
        body["evidence"] = {"prompt": "x", "extra": _nest(depth)}
    elif where == "subject.extra":
        body["subject"]["extra"] = m.Raw("[" * depth + "]" * depth)
    else:
        body = m.Raw("[" * depth + "]" * depth)
    req = signed_intake(m.dumps(body))
    check(send(http, req), req)


@pytest.mark.parametrize("depth", DEEP)
def test_deeply_nested_ocsf_and_slack(http: httpx.Client, depth: int) -> None:
    finding: dict[str, Any] = {
        "class_uid": 2004,
        "finding_info": _nest(depth),
        "actor": {"user": {"uid": "u"}},
        "severity_id": 3,
    }
    req = signed_intake(m.dumps(finding))
    check(send(http, req), req)
    payload = m.dumps({"type": "block_actions", "user": {"id": "U-ALICE"}, "actions": _nest(depth)})
    req = signed_slack(b"payload=" + quote(payload, safe="").encode())
    check(send(http, req), req)


BIG_INT = m.Raw("1" + "0" * 5000)  # over Python's 4300-digit int parsing limit


@pytest.mark.parametrize("field", ["confidence", "technique", "subject.user", "extra"])
def test_5000_digit_number_in_detection(http: httpx.Client, field: str) -> None:
    body: dict[str, Any] = detection()
    if field == "subject.user":
        body["subject"]["user"] = BIG_INT
    else:
        body[field] = BIG_INT
    req = signed_intake(m.dumps(body))
    check(send(http, req), req)


def test_5000_digit_number_in_slack_payload(http: httpx.Client) -> None:
    payload = m.dumps({**m.block_actions(m.RandomChooser(random.Random(4))), "x": BIG_INT})
    req = signed_slack(b"payload=" + quote(payload, safe="").encode())
    check(send(http, req), req)


@pytest.mark.parametrize("key", ["\ud800", "a\udfffb", "\ud83d"])
def test_lone_surrogate_in_a_named_bad_field(http: httpx.Client, key: str) -> None:
    # The 422 names the field; the name cannot be encoded as UTF-8 as it stands.
    body: dict[str, Any] = {**detection(), key: "nul\x00here"}
    req = signed_intake(m.dumps(body))
    check(send(http, req), req)
    body = detection(subject={"tenant": "acme", "user": {key: 1}})
    req = signed_intake(m.dumps(body))
    check(send(http, req), req)


@pytest.mark.parametrize("at", m.EXTREME_DATETIMES)
def test_extreme_observed_at(http: httpx.Client, at: str) -> None:
    req = signed_intake(m.dumps(detection(observed_at=at)))
    check(send(http, req), req)


@pytest.mark.parametrize("at", [10**20, -(10**20), 253402300800000, -62135596801, 1e308, -1])
def test_extreme_ocsf_time(http: httpx.Client, at: float) -> None:
    finding = {
        "class_uid": 2004,
        "severity_id": 4,
        "time": at,
        "confidence_score": 50,
        "finding_info": {
            "uid": "fz-" + uuid.uuid4().hex,
            "attacks": [{"technique": {"uid": "AML.T0051"}}],
        },
        "actor": {"session": {"uid": "s-fz"}},
    }
    req = signed_intake(m.dumps(finding))
    check(send(http, req), req)


@pytest.mark.parametrize(
    "text",
    ["\ud800", "a\udfffb", "\u202eevil\u202c", "\x01\x1b[2J", "\U0001f600" * 1000, "\u0000"],
)
@pytest.mark.parametrize("field", ["id", "source", "subject.user", "subject.tenant", "prompt"])
def test_odd_characters_in_fields(http: httpx.Client, field: str, text: str) -> None:
    body = detection()
    if field.startswith("subject."):
        body["subject"][field.split(".")[1]] = text
    elif field == "prompt":
        body["evidence"]["prompt"] = text
    else:
        body[field] = text
    for ascii_only in (True, False):
        req = signed_intake(m.dumps(body, ascii_only=ascii_only))
        check(send(http, req), req)


@pytest.mark.parametrize(
    "name,value",
    [
        ("webhook_signature", b"v1,\xc3\xa9\xc3\xa9"),
        ("webhook_signature", b"\xff\xfe"),
        ("webhook_signature", b"v1," + b"A" * 8000),
        ("webhook_id", b"\xc3\xa9"),
        ("webhook_id", b"x" * 8000),
        ("webhook_timestamp", b"\xef\xbc\x91\xef\xbc\x92"),
        ("webhook_timestamp", b"99999999999999999999999"),
        ("webhook_timestamp", b"1e10"),
        ("webhook_timestamp", None),
        ("content_type", b"application/json\xc3\xa9"),
    ],
)
def test_odd_webhook_headers(http: httpx.Client, name: str, value: bytes | None) -> None:
    req = signed_intake(json.dumps(detection()).encode(), **{name: value})
    r = send(http, req)
    check(r, req)
    assert r.status_code in (401, 415), r.text


def _click_body() -> bytes:
    payload = m.block_actions(m.RandomChooser(random.Random(1)))
    return b"payload=" + quote(json.dumps(payload), safe="").encode()


@pytest.mark.parametrize(
    "signature", [b"v0=\xc3\xa9\xc3\xa9", b"\xff" * 67, b"v0=" + "\u00e9".encode("latin-1") * 64]
)
def test_non_ascii_slack_signature(http: httpx.Client, signature: bytes) -> None:
    req = signed_slack(_click_body(), signature=signature)
    r = send(http, req)
    check(r, req)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("ts", ["abc", "", "1e9", "\uff11\uff12\uff13", "99999999999999999999"])
def test_odd_slack_timestamp(http: httpx.Client, ts: str) -> None:
    req = signed_slack(_click_body(), ts=ts)
    r = send(http, req)
    check(r, req)
    assert r.status_code == 401, r.text


@pytest.mark.parametrize("body", [b"payload=%FF%FE", b"\xff\xfe=1", b"payload=" + b"\xc3" * 5])
def test_slack_body_not_utf8(http: httpx.Client, body: bytes) -> None:
    req = signed_slack(body)
    check(send(http, req), req)


@pytest.mark.parametrize(
    "mutation",
    [
        {"user": "U-ALICE"},
        {"user": ["U-ALICE"]},
        {"actions": ["soar_approve"]},
        {"actions": {"action_id": "soar_approve"}},
        {"actions": [{"action_id": ["soar_approve"], "value": "x"}]},
        {"actions": [{"action_id": "soar_approve", "value": {"a": 1}}]},
        {"container": "C-SEC"},
        {"channel": "C-SEC", "container": None},
        {"response_url": 7},
        {"view": "x", "type": "view_submission"},
    ],
)
def test_wrong_types_in_block_actions(http: httpx.Client, mutation: dict[str, Any]) -> None:
    payload = {**m.block_actions(m.RandomChooser(random.Random(2))), **mutation}
    req = signed_slack(b"payload=" + quote(json.dumps(payload), safe="").encode())
    check(send(http, req), req)


@pytest.mark.parametrize(
    "meta",
    [
        '{"approval_id": "a", "decision": "reject", "action_ts": "1"}',
        "[]",
        "1",
        '"x"',
        "",
        '{"approval_id": ["a"], "decision": "reject"}',
        '{"approval_id": "a", "decision": 1}',
        '{"approval_id": "a", "decision": "reject", "channel": {"x": 1}, "ts": [1]}',
    ],
)
def test_odd_modal_metadata(http: httpx.Client, meta: str) -> None:
    payload = m.view_submission(m.RandomChooser(random.Random(3)))
    payload["view"]["private_metadata"] = meta
    payload["view"]["state"] = {"values": {"soar_reason": {"comment": {"value": ["x"]}}}}
    req = signed_slack(b"payload=" + quote(json.dumps(payload), safe="").encode())
    check(send(http, req), req)


@pytest.mark.parametrize("route", m.REPORT_ROUTES)
@pytest.mark.parametrize("param", ["since", "until"])
@pytest.mark.parametrize("at", m.EXTREME_DATETIMES)
def test_extreme_report_datetimes(http: httpx.Client, route: str, param: str, at: str) -> None:
    req = m.FuzzRequest(
        f"GET {route}",
        "GET",
        route,
        query=[(param, at)],
        headers=[(b"authorization", f"Bearer {ADMIN}".encode())],
    )
    check(send(http, req), req)


@pytest.mark.parametrize("route", m.REPORT_ROUTES)
@pytest.mark.parametrize(
    "since,until",
    [
        ("0001-01-01T00:00:00+14:00", "9999-12-31T23:59:59-14:00"),
        ("9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:01Z"),
        ("9999-12-31T23:59:58Z", "9999-12-31T23:59:59Z"),
    ],
)
def test_extreme_report_periods(http: httpx.Client, route: str, since: str, until: str) -> None:
    req = m.FuzzRequest(
        f"GET {route}",
        "GET",
        route,
        query=[("since", since), ("until", until)],
        headers=[(b"authorization", f"Bearer {ADMIN}".encode())],
    )
    check(send(http, req), req)
