"""`POST /slack/interactions` under hostile input: correctly signed payloads of any shape, and
signature headers of any bytes, are answered 4xx (or an empty 200 for interactions that are
not ours), never 5xx. Real HTTP against the real app; payloads signed as Slack signs them."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from temporalio.client import Client

from tests.support import Stack, make_settings, running_stack

pytestmark = pytest.mark.timeout(180)

SECRET = "8f742231b10e8888abcd99yyyzzz85a5"


@pytest.fixture
async def stack(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> AsyncIterator[Stack]:
    # No bot token: nothing is posted anywhere, whatever a payload asks for.
    s = make_settings(db_url, temporal_address, task_queue, slack_signing_secret=SECRET)
    async with running_stack(s, temporal_client, worker=False) as running:
        yield running


def signature(body: bytes, ts: str, secret: str = SECRET) -> str:
    digest = hmac.new(secret.encode(), f"v0:{ts}:".encode() + body, hashlib.sha256).hexdigest()
    return f"v0={digest}"


async def post_raw(stack: Stack, body: bytes, headers: Any = None) -> httpx.Response:
    if headers is None:
        ts = str(int(time.time()))
        headers = {
            "content-type": "application/x-www-form-urlencoded",
            "x-slack-request-timestamp": ts,
            "x-slack-signature": signature(body, ts),
        }
    return await stack.http.post("/slack/interactions", content=body, headers=headers)


async def post_payload(stack: Stack, payload: Any) -> httpx.Response:
    text = payload if isinstance(payload, str) else json.dumps(payload)
    return await post_raw(stack, urlencode({"payload": text}).encode())


def block_actions() -> dict[str, Any]:
    """A click as Slack sends it, on an approval that does not exist, by a user who may not
    decide: a well-formed one is acknowledged and refused in the background."""
    return {
        "type": "block_actions",
        "user": {"id": "U-NOBODY", "username": "nobody", "team_id": "T0"},
        "container": {"type": "message", "message_ts": "1.2", "channel_id": "C-SEC"},
        "trigger_id": "1.trigger",
        "channel": {"id": "C-SEC"},
        "message": {"ts": "1.2", "text": "x"},
        "actions": [
            {
                "action_id": "soar_approve",
                "block_id": "soar_approval",
                "type": "button",
                "value": "apr-missing",
                "action_ts": "1.3",
            }
        ],
    }


def view_submission() -> dict[str, Any]:
    meta = {
        "approval_id": "apr-missing",
        "decision": "reject",
        "channel": None,
        "ts": None,
        "response_url": None,
        "action_ts": "1.3",
    }
    return {
        "type": "view_submission",
        "user": {"id": "U-NOBODY"},
        "view": {
            "callback_id": "soar_decision",
            "private_metadata": json.dumps(meta),
            "state": {"values": {"soar_reason": {"comment": {"value": "why"}}}},
        },
    }


def _with(base: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    out = copy.deepcopy(base)
    at: Any = out
    for key in path[:-1]:
        at = at[key]
    at[path[-1]] = value
    return out


def deep(n: int) -> str:
    return '{"a":' * n + "1" + "}" * n


MALFORMED: list[tuple[str, Any]] = [
    ("user is a string", {"type": "block_actions", "user": "x"}),
    ("user missing", {"type": "block_actions", "actions": []}),
    ("user id a number", _with(block_actions(), ("user", "id"), 5)),
    ("actions a number", _with(block_actions(), ("actions",), 5)),
    ("actions of numbers", _with(block_actions(), ("actions",), [1])),
    ("action_id a list", _with(block_actions(), ("actions", 0, "action_id"), [])),
    ("value a dict", _with(block_actions(), ("actions", 0, "value"), {"a": 1})),
    ("container a string", _with(block_actions(), ("container",), "x")),
    ("channel a list", _with(block_actions(), ("channel",), ["C"])),
    ("message a number", _with(block_actions(), ("message",), 7)),
    ("response_url a dict", _with(block_actions(), ("response_url",), {})),
    ("trigger_id a bool", _with(block_actions(), ("trigger_id",), True)),
    ("view a string", _with(view_submission(), ("view",), "x")),
    ("view.state a string", _with(view_submission(), ("view", "state"), "x")),
    ("view.state.values a list", _with(view_submission(), ("view", "state", "values"), [])),
    (
        "input value a number",
        _with(view_submission(), ("view", "state", "values", "soar_reason", "comment", "value"), 3),
    ),
    ("private_metadata an object", _with(view_submission(), ("view", "private_metadata"), {})),
    ("callback_id a number", _with(view_submission(), ("view", "callback_id"), 1)),
    ("type missing", {"user": {"id": "U"}}),
    ("type a list", {"type": ["block_actions"], "user": {"id": "U"}}),
    ("payload a list", [block_actions()]),
    ("payload a string", "just text"),
    ("payload null", None),
    ("payload not JSON", "{not json"),
    ("payload NaN", '{"type": NaN}'),
    ("nested 1,000 deep", deep(1000)),
    ("nested 100,000 deep", "[" * 100_000 + "]" * 100_000),
    ("user nested deep", '{"type":"block_actions","user":' + deep(200) + "}"),
]


@pytest.mark.parametrize("payload", [p for _, p in MALFORMED], ids=[n for n, _ in MALFORMED])
async def test_signed_payload_not_shaped_like_slacks_is_a_400(stack: Stack, payload: Any) -> None:
    r = await post_payload(stack, payload)
    assert r.status_code == 400, r.text
    assert r.json()["error"]
    assert len(r.text) < 400  # a short message; the payload is not echoed


async def test_well_formed_and_foreign_interactions_are_acknowledged(stack: Stack) -> None:
    for payload in (
        block_actions(),
        view_submission(),
        # Interactions that are not ours: acknowledged, nothing happens.
        {"type": "shortcut", "user": {"id": "U-X"}, "callback_id": "x"},
        {"type": "view_closed", "user": {"id": "U-X"}, "view": {"id": "V1"}},
        _with(block_actions(), ("actions",), []),
        _with(block_actions(), ("actions", 0, "action_id"), "someone_elses_button"),
        _with(block_actions(), ("actions", 0, "value"), "a" * 81),  # longer than any id
        _with(view_submission(), ("view", "callback_id"), "someone_elses_modal"),
        # private_metadata comes back through Slack: anything but ours is ignored.
        _with(view_submission(), ("view", "private_metadata"), "[" * 3000),
        _with(view_submission(), ("view", "private_metadata"), "not json"),
        _with(view_submission(), ("view", "private_metadata"), '{"approval_id": 5}'),
        _with(
            view_submission(),
            ("view", "private_metadata"),
            '{"approval_id": "a", "decision": "reject", "channel": {"x": 1}}',
        ),
        _with(view_submission(), ("view", "state"), None),
    ):
        r = await post_payload(stack, payload)
        assert r.status_code == 200 and r.content == b"", (payload, r.text)


async def test_form_bodies_that_carry_no_payload(stack: Stack) -> None:
    for body in (
        b"",
        b"payload=",
        b"nothing=here",
        b"payload=%7B%7D&payload=%7B%7D",  # two payloads
        b"\xff\xfe not utf-8",
        b"&" * 5000,
        b"a=1&" * 100 + b"payload=%7B%7D",
    ):
        r = await post_raw(stack, body)
        assert 400 <= r.status_code < 500, (body[:40], r.status_code, r.text)


SIG_HEADERS: list[tuple[str, list[tuple[bytes, bytes]]]] = [
    ("non-ASCII signature", [(b"x-slack-signature", "v0=é".encode())]),
    ("latin-1 bytes in signature", [(b"x-slack-signature", b"v0=\xe9\xff\x80")]),
    ("non-ASCII timestamp", [(b"x-slack-request-timestamp", ("\u0661" + "\u0660" * 9).encode())]),
    ("latin-1 timestamp", [(b"x-slack-request-timestamp", b"\xb9\xb2\xb3")]),
    ("timestamp not a number", [(b"x-slack-request-timestamp", b"soon")]),
    ("timestamp huge", [(b"x-slack-request-timestamp", b"9" * 5000)]),
    ("timestamp negative", [(b"x-slack-request-timestamp", b"-1")]),
    ("timestamp with a space", [(b"x-slack-request-timestamp", b"17 00")]),
    ("timestamp 1e9", [(b"x-slack-request-timestamp", b"1e9")]),
    ("empty signature", [(b"x-slack-signature", b"")]),
    ("long signature", [(b"x-slack-signature", b"v0=" + b"a" * 8000)]),
]


@pytest.mark.parametrize("override", [h for _, h in SIG_HEADERS], ids=[n for n, _ in SIG_HEADERS])
async def test_signature_headers_of_any_bytes_are_a_401(
    stack: Stack, override: list[tuple[bytes, bytes]]
) -> None:
    body = urlencode({"payload": json.dumps(block_actions())}).encode()
    ts = str(int(time.time()))
    headers = {
        b"content-type": b"application/x-www-form-urlencoded",
        b"x-slack-request-timestamp": ts.encode(),
        b"x-slack-signature": signature(body, ts).encode(),
    }
    headers.update(dict(override))
    r = await post_raw(stack, body, list(headers.items()))
    assert r.status_code == 401, r.text


async def test_missing_headers_and_unsigned_bodies_are_a_401(stack: Stack) -> None:
    body = urlencode({"payload": json.dumps(block_actions())}).encode()
    ts = str(int(time.time()))
    good = {"x-slack-request-timestamp": ts, "x-slack-signature": signature(body, ts)}
    for drop in good:
        r = await post_raw(stack, body, {k: v for k, v in good.items() if k != drop})
        assert r.status_code == 401
    r = await post_raw(stack, body, {})
    assert r.status_code == 401
    # Signed over bytes that are not UTF-8: the verifier cannot even decode them.
    odd = b"payload=\xff\xfe"
    r = await post_raw(
        stack, odd, {"x-slack-request-timestamp": ts, "x-slack-signature": signature(odd, ts)}
    )
    assert r.status_code in (400, 401)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
PATHS: list[tuple[Any, ...]] = [
    ("type",),
    ("user",),
    ("user", "id"),
    ("actions",),
    ("actions", 0),
    ("actions", 0, "value"),
    ("actions", 0, "action_id"),
    ("actions", 0, "action_ts"),
    ("container",),
    ("container", "channel_id"),
    ("channel",),
    ("message",),
    ("trigger_id",),
]
VIEW_PATHS: list[tuple[Any, ...]] = [
    ("view",),
    ("view", "state"),
    ("view", "state", "values"),
    ("view", "private_metadata"),
    ("view", "callback_id"),
    ("view", "state", "values", "soar_reason"),
    ("view", "state", "values", "soar_reason", "comment"),
]


@settings(
    max_examples=40,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    which=st.sampled_from([("b", p) for p in PATHS] + [("v", p) for p in VIEW_PATHS]),
    value=json_values,
)
async def test_any_value_anywhere_is_never_a_5xx(
    stack: Stack, which: tuple[str, tuple[Any, ...]], value: Any
) -> None:
    kind, path = which
    base = block_actions() if kind == "b" else view_submission()
    r = await post_payload(stack, _with(base, path, value))
    assert r.status_code in (200, 400), (path, value, r.status_code, r.text)
