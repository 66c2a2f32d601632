"""The Slack fake, driven by the real ``slack_sdk`` clients."""

from __future__ import annotations

import json
import threading
import time
import urllib.error
from collections.abc import Iterator
from http.client import HTTPConnection
from typing import Any
from urllib.parse import quote, urlsplit

import pytest
from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.webhook import WebhookClient

from tests.fakes.slack_api import FakeSlack, SlackCall

TOKEN = "xoxb-test-0000-fake"

BLOCKS = [
    {"type": "header", "text": {"type": "plain_text", "text": "ATLAS case CASE-42"}},
    {
        "type": "section",
        "text": {"type": "mrkdwn", "text": "*Prompt injection* detected on `chatbot-prod`"},
    },
    {
        "type": "actions",
        "elements": [
            {
                "type": "button",
                "action_id": "approve",
                "text": {"type": "plain_text", "text": "Approve"},
                "value": "CASE-42",
                "style": "primary",
            }
        ],
    },
]


def _post_form(url: str, body: str) -> tuple[int, Any]:
    parts = urlsplit(url)
    conn = HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=5)
    try:
        conn.request(
            "POST",
            parts.path,
            body=body.encode(),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack() as fake:
        yield fake


@pytest.fixture
def client(slack: FakeSlack) -> WebClient:
    return WebClient(token=TOKEN, base_url=f"{slack.url}/api/", timeout=5)


# -------------------------------------------------------------------------------- basics


def test_url_and_lifecycle() -> None:
    fake = FakeSlack()
    with pytest.raises(RuntimeError):
        _ = fake.url
    fake.start()
    try:
        assert fake.url.startswith("http://127.0.0.1:")
        assert fake.api_url == f"{fake.url}/api/"
        assert fake.response_url("abc") == f"{fake.url}/response/abc"
    finally:
        fake.stop()
    fake.stop()  # idempotent


def test_stopped_server_refuses_connections() -> None:
    with FakeSlack() as fake:
        url = fake.api_url
    client = WebClient(token=TOKEN, base_url=url, timeout=2, retry_handlers=[])
    with pytest.raises(urllib.error.URLError):
        client.auth_test()


def test_auth_test_records_authorization_header(slack: FakeSlack, client: WebClient) -> None:
    resp = client.auth_test()
    assert resp["ok"] is True
    assert resp["user_id"] == slack.bot_user_id
    assert resp["team_id"] == slack.team_id
    call = slack.calls[-1]
    assert isinstance(call, SlackCall)
    assert call.method == "auth.test"
    assert call.authorization == f"Bearer {TOKEN}"
    assert call.token == TOKEN
    assert call.status == 200
    assert call.ok


def test_post_message_json_body_and_increasing_ts(slack: FakeSlack, client: WebClient) -> None:
    first = client.chat_postMessage(channel="C0SEC", text="fallback", blocks=BLOCKS)
    second = client.chat_postMessage(channel="C0SEC", text="again")
    assert first["ok"] and second["ok"]
    assert first["channel"] == "C0SEC"
    assert first["ts"] == "1700000000.000100"
    assert second["ts"] == "1700000000.000200"
    assert float(second["ts"]) > float(first["ts"])
    assert first["message"]["blocks"] == BLOCKS
    assert first["message"]["text"] == "fallback"

    call = slack.calls_to("chat.postMessage")[0]
    assert call.content_type.startswith("application/json")
    assert call.params["channel"] == "C0SEC"
    assert call.params["blocks"] == BLOCKS
    assert [m["ts"] for m in slack.messages("C0SEC")] == [first["ts"], second["ts"]]


def test_post_message_validation_errors(client: WebClient) -> None:
    with pytest.raises(SlackApiError) as excinfo, pytest.warns(UserWarning):
        client.chat_postMessage(channel="C0SEC")
    assert excinfo.value.response["error"] == "no_text"


def test_threads_and_conversations_replies(slack: FakeSlack, client: WebClient) -> None:
    parent = client.chat_postMessage(channel="C0SEC", text="case opened")
    reply = client.chat_postMessage(channel="C0SEC", text="approved", thread_ts=parent["ts"])
    assert reply["message"]["thread_ts"] == parent["ts"]
    replies = client.conversations_replies(channel="C0SEC", ts=parent["ts"])
    assert [m["text"] for m in replies["messages"]] == ["case opened", "approved"]
    # users.info / conversations.replies are GET in the SDK but sent form-encoded
    call = slack.calls_to("conversations.replies")[0]
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.params == {"channel": "C0SEC", "ts": parent["ts"]}


def test_chat_update(slack: FakeSlack, client: WebClient) -> None:
    posted = client.chat_postMessage(channel="C0SEC", text="pending", blocks=BLOCKS)
    updated = client.chat_update(
        channel="C0SEC", ts=posted["ts"], text="approved by <@U1>", blocks=BLOCKS[:2]
    )
    assert updated["ok"] and updated["ts"] == posted["ts"]
    assert updated["text"] == "approved by <@U1>"
    [message] = slack.messages("C0SEC")
    assert message["text"] == "approved by <@U1>"
    assert message["blocks"] == BLOCKS[:2]

    with pytest.raises(SlackApiError) as excinfo:
        client.chat_update(channel="C0SEC", ts="1.000000", text="nope")
    assert excinfo.value.response["error"] == "message_not_found"


def test_post_ephemeral(slack: FakeSlack, client: WebClient) -> None:
    resp = client.chat_postEphemeral(channel="C0SEC", user="U0ANALYST", text="only you")
    assert resp["ok"] and resp["message_ts"]
    assert slack.calls[-1].params["user"] == "U0ANALYST"


def test_views_open(slack: FakeSlack, client: WebClient) -> None:
    view = {
        "type": "modal",
        "callback_id": "reject_reason",
        "private_metadata": "CASE-42",
        "title": {"type": "plain_text", "text": "Reject"},
        "submit": {"type": "plain_text", "text": "Send"},
        "blocks": [
            {
                "type": "input",
                "block_id": "reason",
                "label": {"type": "plain_text", "text": "Reason"},
                "element": {"type": "plain_text_input", "action_id": "value"},
            }
        ],
    }
    resp = client.views_open(trigger_id="123.456.abc", view=view)
    assert resp["ok"]
    assert resp["view"]["id"].startswith("V")
    assert resp["view"]["callback_id"] == "reject_reason"
    assert resp["view"]["private_metadata"] == "CASE-42"
    assert slack.calls[-1].params["view"] == view

    with pytest.raises(SlackApiError) as excinfo:
        client.views_open(trigger_id="", view=view)
    assert excinfo.value.response["error"] == "invalid_arguments"


def test_users_info(slack: FakeSlack, client: WebClient) -> None:
    slack.add_user("U0ANALYST", "ana.lyst", email="ana@example.org", is_admin=True)
    resp = client.users_info(user="U0ANALYST")
    assert resp["user"]["id"] == "U0ANALYST"
    assert resp["user"]["name"] == "ana.lyst"
    assert resp["user"]["is_admin"] is True
    assert resp["user"]["profile"]["email"] == "ana@example.org"
    # unknown users get a synthesised profile
    other = client.users_info(user="U0OTHER")
    assert other["user"]["id"] == "U0OTHER"
    assert other["user"]["name"]


def test_catch_all_method(slack: FakeSlack, client: WebClient) -> None:
    resp = client.reactions_add(channel="C0SEC", timestamp="1700000000.000100", name="eyes")
    assert resp["ok"] is True
    assert slack.calls[-1].method == "reactions.add"
    assert slack.calls[-1].params["name"] == "eyes"


# -------------------------------------------------------------------------------- encodings


def test_form_encoded_blocks_are_decoded(slack: FakeSlack, client: WebClient) -> None:
    resp = client.api_call(
        "chat.postMessage",
        params={"channel": "C0SEC", "text": "form", "blocks": json.dumps(BLOCKS)},
    )
    assert resp["ok"]
    call = slack.calls[-1]
    assert call.content_type == "application/x-www-form-urlencoded"
    assert call.params["blocks"] == BLOCKS
    assert slack.messages("C0SEC")[0]["blocks"] == BLOCKS


def test_multipart_form_data(slack: FakeSlack, client: WebClient) -> None:
    resp = client.api_call(
        "files.upload",
        data={"channels": "C0SEC", "title": "evidence"},
        files={"file": b"prompt log\n"},
    )
    assert resp["ok"]
    call = slack.calls[-1]
    assert call.content_type.startswith("multipart/form-data")
    assert call.params["title"] == "evidence"
    assert call.params["file"] == b"prompt log\n"


def test_token_in_form_params_and_enforced_token() -> None:
    with FakeSlack(token=TOKEN) as fake:
        good = WebClient(token=TOKEN, base_url=fake.api_url)
        assert good.auth_test()["ok"]
        bad = WebClient(token="xoxb-wrong", base_url=fake.api_url)
        with pytest.raises(SlackApiError) as excinfo:
            bad.auth_test()
        assert excinfo.value.response["error"] == "invalid_auth"
        # The SDK turns a token param into the Authorization header ...
        anonymous = WebClient(base_url=fake.api_url)
        assert anonymous.api_call("auth.test", params={"token": TOKEN})["ok"]
        assert fake.calls[-1].authorization == f"Bearer {TOKEN}"
        # ... but Slack (and the fake) also accept a token form field.
        status, body = _post_form(f"{fake.api_url}auth.test", f"token={TOKEN}")
        assert status == 200 and body["ok"] is True
        assert fake.calls[-1].authorization is None
        assert fake.calls[-1].token == TOKEN
        with pytest.raises(SlackApiError) as excinfo:
            WebClient(base_url=fake.api_url).auth_test()
        assert excinfo.value.response["error"] == "not_authed"


# -------------------------------------------------------------------------------- failures


def test_rate_limited_without_retry_handler(slack: FakeSlack) -> None:
    client = WebClient(token=TOKEN, base_url=slack.api_url, retry_handlers=[])
    slack.fail_next("chat.postMessage", status=429, retry_after=7)
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C0SEC", text="hi")
    response = excinfo.value.response
    assert response.status_code == 429
    assert response["error"] == "ratelimited"
    assert response.headers["Retry-After"] == "7"
    # only the next call was affected
    assert client.chat_postMessage(channel="C0SEC", text="hi")["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]


def test_rate_limit_retry_handler_retries_successfully(slack: FakeSlack) -> None:
    client = WebClient(
        token=TOKEN,
        base_url=slack.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=2)],
    )
    slack.fail_next("chat.postMessage", status=429, retry_after=1, count=2)
    started = time.monotonic()
    resp = client.chat_postMessage(channel="C0SEC", text="eventually")
    elapsed = time.monotonic() - started
    assert resp["ok"]
    # the SDK sleeps Retry-After + random() seconds before each retry
    assert elapsed >= 2.0
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 429, 200]
    assert len(slack.messages("C0SEC")) == 1


def test_rate_limit_retry_handler_gives_up(slack: FakeSlack) -> None:
    client = WebClient(
        token=TOKEN,
        base_url=slack.api_url,
        retry_handlers=[RateLimitErrorRetryHandler(max_retry_count=1)],
    )
    slack.fail_next("chat.update", status=429, retry_after=0, count=5)
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_update(channel="C0SEC", ts="1.0", text="x")
    assert excinfo.value.response.status_code == 429
    assert len(slack.calls_to("chat.update")) == 2


def test_server_error_and_server_error_retry_handler(slack: FakeSlack) -> None:
    plain = WebClient(token=TOKEN, base_url=slack.api_url, retry_handlers=[])
    slack.fail_next("chat.postMessage", status=500)
    with pytest.raises(SlackApiError) as excinfo:
        plain.chat_postMessage(channel="C0SEC", text="x")
    assert excinfo.value.response.status_code == 500
    assert excinfo.value.response["error"] == "internal_error"

    retrying = WebClient(
        token=TOKEN,
        base_url=slack.api_url,
        retry_handlers=[ServerErrorRetryHandler(max_retry_count=1)],
    )
    slack.fail_next("chat.postMessage", status=503, retry_after=None)
    assert retrying.chat_postMessage(channel="C0SEC", text="x")["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [500, 503, 200]


def test_ok_false_error_with_http_200(slack: FakeSlack, client: WebClient) -> None:
    slack.fail_next("chat.postMessage", status=200, error="channel_not_found")
    with pytest.raises(SlackApiError) as excinfo:
        client.chat_postMessage(channel="C0GONE", text="x")
    assert excinfo.value.response.status_code == 200
    assert excinfo.value.response["error"] == "channel_not_found"
    assert slack.calls[-1].status == 200 and not slack.calls[-1].ok


def test_fail_next_wildcard(slack: FakeSlack, client: WebClient) -> None:
    slack.fail_next("*", status=200, error="account_inactive", count=2)
    for _ in range(2):
        with pytest.raises(SlackApiError):
            client.auth_test()
    assert client.auth_test()["ok"]


# -------------------------------------------------------------------------------- response_url


def test_response_url_with_webhook_client(slack: FakeSlack) -> None:
    url = slack.response_url("interaction-1")
    webhook = WebhookClient(url)
    resp = webhook.send(text="Approved by <@U0ANALYST>", replace_original=True, blocks=BLOCKS)
    assert resp.status_code == 200
    assert json.loads(resp.body) == {"ok": True}
    [body] = slack.responses["interaction-1"]
    assert body["replace_original"] is True
    assert body["text"] == "Approved by <@U0ANALYST>"
    assert body["blocks"] == BLOCKS
    assert slack.calls[-1].method == "response_url"


def test_response_url_failure_injection(slack: FakeSlack) -> None:
    slack.fail_next("response_url", status=500)
    webhook = WebhookClient(slack.response_url("r"))
    assert webhook.send(text="x").status_code == 500
    assert webhook.send(text="y").status_code == 200
    assert [b["text"] for b in slack.responses["r"]] == ["y"]


def test_response_url_form_payload(slack: FakeSlack) -> None:
    status, body = _post_form(
        slack.response_url("form"), "payload=" + quote(json.dumps({"text": "hi"}))
    )
    assert (status, body) == (200, {"ok": True})
    assert slack.responses["form"] == [{"text": "hi"}]


# -------------------------------------------------------------------------------- waiting, threads


def test_wait_for_calls_from_another_thread(slack: FakeSlack, client: WebClient) -> None:
    def later() -> None:
        time.sleep(0.2)
        client.chat_postMessage(channel="C0SEC", text="from a worker")

    threading.Thread(target=later, daemon=True).start()
    calls = slack.wait_for(lambda cs: any(c.method == "chat.postMessage" for c in cs))
    assert calls[-1].params["text"] == "from a worker"
    assert slack.wait_for_call("chat.postMessage").params["channel"] == "C0SEC"

    threading.Thread(
        target=lambda: WebhookClient(slack.response_url("late")).send(text="done"),
        daemon=True,
    ).start()
    assert slack.wait_for_response("late")[0]["text"] == "done"


def test_wait_for_times_out(slack: FakeSlack) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        slack.wait_for(lambda cs: len(cs) > 0, timeout=0.2)
    assert time.monotonic() - started < 2


def test_concurrent_posts_get_unique_ts(slack: FakeSlack) -> None:
    client = WebClient(token=TOKEN, base_url=slack.api_url)
    results: list[str] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        for i in range(5):
            ts = client.chat_postMessage(channel="C0SEC", text=f"{n}-{i}")["ts"]
            with lock:
                results.append(ts)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 40
    assert len(set(results)) == 40
    assert len(slack.calls_to("chat.postMessage")) == 40
    stored = [m["ts"] for m in slack.messages("C0SEC")]
    assert stored == sorted(stored, key=float)


def test_reset(slack: FakeSlack, client: WebClient) -> None:
    client.chat_postMessage(channel="C0SEC", text="x")
    slack.fail_next("auth.test")
    slack.reset()
    assert slack.calls == [] and slack.messages("C0SEC") == []
    assert client.auth_test()["ok"]


# -------------------------------------------------------------------------------- async client


async def test_async_web_client(slack: FakeSlack) -> None:
    pytest.importorskip("aiohttp", reason="AsyncWebClient needs aiohttp")
    from slack_sdk.http_retry.builtin_async_handlers import AsyncRateLimitErrorRetryHandler
    from slack_sdk.web.async_client import AsyncWebClient

    client = AsyncWebClient(
        token=TOKEN,
        base_url=slack.api_url,
        retry_handlers=[AsyncRateLimitErrorRetryHandler(max_retry_count=1)],
    )
    assert (await client.auth_test())["user_id"] == slack.bot_user_id
    slack.fail_next("chat.postMessage", status=429, retry_after=0)
    posted = await client.chat_postMessage(channel="C0SEC", text="async", blocks=BLOCKS)
    assert posted["ok"]
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]
    assert slack.calls_to("chat.postMessage")[-1].params["blocks"] == BLOCKS
    user = await client.users_info(user="U0ANALYST")
    assert user["user"]["id"] == "U0ANALYST"
    assert slack.calls[-1].authorization == f"Bearer {TOKEN}"
