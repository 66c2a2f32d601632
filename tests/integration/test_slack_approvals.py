"""Approvals in Slack, end to end: real PostgreSQL, real Temporal, the real slack_sdk client
against FakeSlack, and interaction payloads signed exactly as Slack signs them."""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from sqlalchemy import create_engine, text
from temporalio.client import Client
from temporalio.exceptions import ApplicationError

from approvals.slack import SlackChannel
from soar.config import Settings
from soar.connectors import ApprovalBrief, IncidentBrief
from soar.db import sqlalchemy_url
from tests.fakes.slack_api import FakeSlack, SlackCall
from tests.support import Stack, bearer, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(180)

SIGNING_SECRET = "8f742231b10e8888abcd99yyyzzz85a5"
CHANNEL = "C-SEC"
KEY = "k-77"


@pytest.fixture
def slack() -> Iterator[FakeSlack]:
    with FakeSlack(token="xoxb-test") as fake:
        yield fake


def slack_settings(
    db_url: str, temporal_address: str, task_queue: str, fake: FakeSlack, **over: Any
) -> Settings:
    values: dict[str, Any] = {
        "slack_bot_token": "xoxb-test",
        "slack_signing_secret": SIGNING_SECRET,
        "slack_approval_channel": CHANNEL,
        "slack_api_url": fake.api_url,
        "slack_approvers": "U-ALICE",
        "approval_timeout_seconds": 600,
    }
    values.update(over)
    return make_settings(db_url, temporal_address, task_queue, **values)


def critical_leak(**over: Any) -> dict[str, Any]:
    subject = {"tenant": "acme", "user": "u-7", "session": "s-77", "api_key": KEY}
    return detection(technique="AML.T0057", severity="critical", subject=subject, **over)


# --- Slack's side -----------------------------------------------------------------------------


def signed(body: str, *, secret: str = SIGNING_SECRET, at: int | None = None) -> dict[str, str]:
    ts = str(at if at is not None else int(time.time()))
    digest = hmac.new(secret.encode(), f"v0:{ts}:{body}".encode(), hashlib.sha256).hexdigest()
    return {
        "content-type": "application/x-www-form-urlencoded",
        "x-slack-request-timestamp": ts,
        "x-slack-signature": f"v0={digest}",
    }


async def interact(
    stack: Stack, payload: dict[str, Any], *, secret: str = SIGNING_SECRET, at: int | None = None
) -> httpx.Response:
    body = urlencode({"payload": json.dumps(payload)})
    return await stack.http.post(
        "/slack/interactions", content=body, headers=signed(body, secret=secret, at=at)
    )


def click(
    fake: FakeSlack,
    message: SlackCall,
    approval_id: str,
    action_id: str,
    user: str,
    *,
    reply_to: str,
) -> dict[str, Any]:
    """A block_actions payload as Slack sends it when a button of our message is clicked."""
    ts = message.response["ts"]
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "name": user.lower(), "team_id": "T0"},
        "api_app_id": "A0FAKE0001",
        "token": "verification-token-unused",
        "container": {
            "type": "message",
            "message_ts": ts,
            "channel_id": CHANNEL,
            "is_ephemeral": False,
        },
        "trigger_id": f"{uuid.uuid4().int % 10**12}.{uuid.uuid4().hex[:8]}",
        "team": {"id": "T0", "domain": "acme"},
        "channel": {"id": CHANNEL, "name": "sec-approvals"},
        "message": {
            "type": "message",
            "ts": ts,
            "text": message.params.get("text", ""),
            "blocks": message.params.get("blocks", []),
        },
        "state": {"values": {}},
        "response_url": fake.response_url(reply_to),
        "actions": [
            {
                "action_id": action_id,
                "block_id": "soar_approval",
                "type": "button",
                "value": approval_id,
                "text": {"type": "plain_text", "text": "x"},
                "action_ts": f"{time.time():.6f}",
            }
        ],
    }


def approval_messages(fake: FakeSlack) -> dict[str, tuple[str, SlackCall]]:
    """Posted approval messages by action type: (approval id, the chat.postMessage call)."""
    found: dict[str, tuple[str, SlackCall]] = {}
    for call in fake.calls_to("chat.postMessage"):
        if not call.ok or call.params.get("thread_ts"):
            continue
        buttons = [
            e
            for b in call.params.get("blocks", [])
            if b["type"] == "actions"
            for e in b["elements"]
        ]
        if buttons:
            action = "revoke_api_key" if "Revoke API key" in call.params["text"] else "other"
            found[action] = (buttons[0]["value"], call)
    return found


def updates_of(fake: FakeSlack, ts: str) -> list[SlackCall]:
    return [c for c in fake.calls_to("chat.update") if c.params.get("ts") == ts and c.ok]


def has_buttons(call: SlackCall) -> bool:
    return any(b["type"] == "actions" for b in call.params.get("blocks", []))


# --- our side ---------------------------------------------------------------------------------


def sql(db_url: str, query: str, **params: Any) -> list[Any]:
    engine = create_engine(sqlalchemy_url(db_url))
    try:
        with engine.begin() as c:
            result = c.execute(text(query), params)
            return list(result.all()) if result.returns_rows else []
    finally:
        engine.dispose()


def log_rows(db_url: str, event: str, approval_id: str) -> list[Any]:
    return sql(
        db_url,
        "SELECT actor, outcome, details FROM action_log WHERE event = :e "
        "AND details->>'approval_id' = :a ORDER BY seq",
        e=event,
        a=approval_id,
    )


def approval_row(db_url: str, approval_id: str) -> Any:
    return sql(
        db_url,
        "SELECT status, decided_by, decision_channel, comment, votes, (SELECT m.message_id "
        "FROM approval_messages m WHERE m.approval_id = a.id AND m.channel = 'slack' "
        "AND m.kind = 'announce') AS slack_ts FROM approvals a WHERE id = :a",
        a=approval_id,
    )[0]


def add_principals(db_url: str, *rows: tuple[str, str, str, bool]) -> None:
    """Principals with a Slack address, as `soar users add` and `set-slack` make them."""
    for name, role, slack_id, disabled in rows:
        sql(
            db_url,
            "WITH p AS (INSERT INTO principals (name, role, disabled) VALUES (:n, :r, :d) "
            "RETURNING id) INSERT INTO principal_addresses (principal_id, channel, address) "
            "SELECT id, 'slack', :s FROM p",
            n=name,
            r=role,
            d=disabled,
            s=slack_id,
        )


async def blocked(stack: Stack, kind: str, target: str) -> bool:
    return bool((await stack.enforcement(kind, target))["blocked"])


# --- tests ------------------------------------------------------------------------------------


async def test_approve_in_slack_applies_once_and_refuses_everything_after(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    slack: FakeSlack,
) -> None:
    settings = slack_settings(
        db_url, temporal_address, task_queue, slack, slack_approvers="U-ALICE,U-EVE"
    )
    # Carol is granted in the database; Dave has a row but only as an analyst; Eve is in
    # the environment list but her principal has been disabled since.
    add_principals(
        db_url, ("carol", "approver", "U-CAROL", False), ("dave", "analyst", "U-DAVE", False)
    )
    add_principals(db_url, ("eve", "approver", "U-EVE", True))
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(critical_leak())
        assert r.status_code == 202, r.text
        incident_id = r.json()["incident_id"]
        msgs = await eventually(
            lambda: len(approval_messages(slack)) == 2 and approval_messages(slack), timeout=15
        )
        approval_id, message = msgs["revoke_api_key"]
        other_id, other = msgs["other"]
        assert message.params["channel"] == CHANNEL and message.token == "xoxb-test"
        assert "AML.T0057" in json.dumps(message.params["blocks"])
        await eventually(lambda: approval_row(db_url, approval_id).slack_ts, timeout=10)
        assert await blocked(stack, "sessions", "s-77")  # contained without waiting
        assert not await stack.revoked(KEY)

        # A forged or replayed click is refused before anything is read.
        payload = click(slack, message, approval_id, "soar_approve", "U-ALICE", reply_to="x")
        r = await interact(stack, payload, secret="not-the-signing-secret")
        assert r.status_code == 401
        r = await interact(stack, payload, at=int(time.time()) - 6 * 60)
        assert r.status_code == 401
        body = urlencode({"payload": json.dumps(payload)})
        headers = signed(body)
        r = await stack.http.post("/slack/interactions", content=body + "&x=1", headers=headers)
        assert r.status_code == 401
        for bad in (
            {**headers, "x-slack-request-timestamp": "soon"},
            {k: v for k, v in headers.items() if k != "x-slack-signature"},
        ):
            r = await stack.http.post("/slack/interactions", content=body, headers=bad)
            assert r.status_code == 401

        # An unauthorized user: refused, nothing changes, the attempt is logged.
        payload = click(
            slack, message, approval_id, "soar_approve", "U-MALLORY", reply_to="mallory"
        )
        r = await interact(stack, payload)
        assert r.status_code == 200 and r.content == b""
        [refusal] = slack.wait_for_response("mallory")
        assert refusal["response_type"] == "ephemeral" and refusal["replace_original"] is False
        assert "not allowed" in refusal["text"]
        for user in ("U-DAVE", "U-EVE"):
            payload = click(slack, other, other_id, "soar_approve", user, reply_to=user)
            assert (await interact(stack, payload)).status_code == 200
            assert "not allowed" in slack.wait_for_response(user)[0]["text"]
        refused = await eventually(lambda: log_rows(db_url, "approval.refused", approval_id))
        assert refused[0].actor == "slack:U-MALLORY"
        assert refused[0].outcome == "refused"
        assert refused[0].details["slack_user_id"] == "U-MALLORY"
        assert approval_row(db_url, approval_id).status == "pending"
        assert not await stack.revoked(KEY)
        # The 401s above left no trace.
        assert all(r.actor != "slack:U-ALICE" for r in refused)
        assert "x" not in slack.responses

        # Alice approves: acknowledged at once, the key is revoked, the message says so.
        payload = click(slack, message, approval_id, "soar_approve", "U-ALICE", reply_to="alice")
        t0 = time.monotonic()
        r = await interact(stack, payload)
        assert r.status_code == 200 and r.content == b""
        assert time.monotonic() - t0 < 3.0
        await eventually(lambda: stack.revoked(KEY), timeout=15)
        updated = await eventually(lambda: updates_of(slack, message.response["ts"]), timeout=10)
        assert not any(has_buttons(u) for u in updated)
        assert "Approved by slack:U-ALICE at " in updated[-1].params["text"]
        shown = slack.messages(CHANNEL)
        final = next(m for m in shown if m["ts"] == message.response["ts"])
        assert not any(b["type"] == "actions" for b in final["blocks"])
        assert "slack:U-ALICE" in json.dumps(final["blocks"])
        row = approval_row(db_url, approval_id)
        assert (row.status, row.decided_by, row.decision_channel) == (
            "approved",
            "slack:U-ALICE",
            "slack",
        )

        # Second clicks, either button, any user: refused, logged, nothing changes.
        for user, action, name in (
            ("U-ALICE", "soar_reject", "again"),
            ("U-CAROL", "soar_approve", "carol-late"),
        ):
            payload = click(slack, message, approval_id, action, user, reply_to=name)
            assert (await interact(stack, payload)).status_code == 200
            [late] = slack.wait_for_response(name)
            assert late["response_type"] == "ephemeral"
            assert "already approved by slack:U-ALICE" in late["text"]
        assert not slack.calls_to("views.open")  # no reason form for a decided approval
        refused = await eventually(
            lambda: (
                len(log_rows(db_url, "approval.refused", approval_id)) == 3
                and log_rows(db_url, "approval.refused", approval_id)
            )
        )
        assert {r.actor for r in refused} == {"slack:U-MALLORY", "slack:U-ALICE", "slack:U-CAROL"}
        assert approval_row(db_url, approval_id).status == "approved"
        applied = sql(
            db_url,
            "SELECT count(*) FROM action_log WHERE incident_id = :i AND "
            "event = 'action.applied' AND action = 'revoke_api_key'",
            i=incident_id,
        )
        assert applied[0][0] == 1
        decided = log_rows(db_url, "approval.decided", approval_id)
        assert len(decided) == 1 and decided[0].details["channel"] == "slack"

        # Carol is an approver through the database: her name and Slack ID are logged.
        payload = click(slack, other, other_id, "soar_approve", "U-CAROL", reply_to="carol")
        assert (await interact(stack, payload)).status_code == 200
        await eventually(lambda: approval_row(db_url, other_id).status == "approved", timeout=15)
        assert approval_row(db_url, other_id).decided_by == "carol (slack:U-CAROL)"
        await eventually(lambda: blocked(stack, "users", "u-7"), timeout=15)


async def test_reject_with_a_reason_from_the_modal(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    slack: FakeSlack,
) -> None:
    settings = slack_settings(db_url, temporal_address, task_queue, slack)
    async with running_stack(settings, temporal_client) as stack:
        assert (await stack.post_detection(critical_leak())).status_code == 202
        msgs = await eventually(
            lambda: len(approval_messages(slack)) == 2 and approval_messages(slack), timeout=15
        )
        approval_id, message = msgs["revoke_api_key"]
        await eventually(lambda: approval_row(db_url, approval_id).slack_ts, timeout=10)

        payload = click(slack, message, approval_id, "soar_reject", "U-ALICE", reply_to="alice")
        r = await interact(stack, payload)
        assert r.status_code == 200 and r.content == b""
        opened = slack.wait_for_call("views.open", timeout=5)
        assert opened.params["trigger_id"] == payload["trigger_id"]
        view = opened.params["view"]
        assert approval_row(db_url, approval_id).status == "pending"  # nothing yet

        reason = "Red-team exercise, ticket SEC-9: <not> an attack"
        submission: dict[str, Any] = {
            "type": "view_submission",
            "user": {"id": "U-ALICE", "username": "alice", "team_id": "T0"},
            "team": {"id": "T0"},
            "trigger_id": "2.submit",
            "view": {
                **opened.response["view"],
                "state": {
                    "values": {
                        "soar_reason": {"comment": {"type": "plain_text_input", "value": reason}}
                    }
                },
            },
            "response_urls": [],
        }
        assert submission["view"]["private_metadata"] == view["private_metadata"]
        r = await interact(stack, submission)
        assert r.status_code == 200 and r.content == b""  # closes the modal

        await eventually(lambda: approval_row(db_url, approval_id).status == "rejected", timeout=15)
        decided = log_rows(db_url, "approval.decided", approval_id)
        assert decided[0].actor == "slack:U-ALICE" and decided[0].outcome == "rejected"
        assert decided[0].details["comment"] == reason
        assert approval_row(db_url, approval_id).comment == reason
        # Both the worker (after recording) and the route (after the update returned) say so.
        updated = await eventually(
            lambda: (
                len(updates_of(slack, message.response["ts"])) == 2
                and updates_of(slack, message.response["ts"])
            ),
            timeout=10,
        )
        assert "Rejected by slack:U-ALICE" in updated[-1].params["text"]
        assert not has_buttons(updated[-1])
        assert not await stack.revoked(KEY)


async def test_rate_limited_post_is_retried_by_the_sdk(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    slack: FakeSlack,
) -> None:
    settings = slack_settings(db_url, temporal_address, task_queue, slack)
    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    async with running_stack(settings, temporal_client) as stack:
        assert (await stack.post_detection(critical_leak())).status_code == 202
        msgs = await eventually(
            lambda: len(approval_messages(slack)) == 2 and approval_messages(slack), timeout=20
        )
        # Two approval messages and the notice, each posted once.
        posts = await eventually(
            lambda: (
                len([c for c in slack.calls_to("chat.postMessage") if c.ok]) == 3
                and slack.calls_to("chat.postMessage")
            ),
            timeout=20,
        )
        assert [c.status for c in posts].count(429) == 1
        assert posts[0].status == 429 and posts[0].response["error"] == "ratelimited"
        for approval_id, _ in msgs.values():
            await eventually(lambda a=approval_id: approval_row(db_url, a).slack_ts)  # type: ignore[misc]


async def test_slack_down_never_blocks_containment_or_the_decision(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    slack: FakeSlack,
) -> None:
    settings = slack_settings(db_url, temporal_address, task_queue, slack)
    slack.fail_next("*", status=500, count=100_000)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(critical_leak())
        assert r.status_code == 202
        incident_id = r.json()["incident_id"]
        await eventually(lambda: blocked(stack, "sessions", "s-77"), timeout=5)
        await eventually(lambda: slack.calls_to("chat.postMessage"), timeout=10)

        async def pending() -> list[dict[str, Any]]:
            r = await stack.http.get(
                "/v1/approvals", params={"status": "pending"}, headers=bearer("approver")
            )
            return [a for a in r.json()["approvals"] if a["incident_id"] == incident_id]

        async def both() -> list[dict[str, Any]] | None:
            found = await pending()
            return found if len(found) == 2 else None

        approvals = await eventually(both, timeout=10)
        inc = await stack.incident(incident_id)
        revoke = next(a["action_id"] for a in inc["actions"] if a["type"] == "revoke_api_key")
        approval_id = next(a["approval_id"] for a in approvals if a["action_id"] == revoke)
        # The row is committed a moment before the workflow has taken the approval in (a
        # decision in that moment is refused as unknown); a person is never that fast.
        handle = temporal_client.get_workflow_handle(inc["workflow_id"])
        await eventually(lambda: _knows(handle.query("pending_approvals"), approval_id), timeout=10)
        r = await stack.http.post(
            f"/v1/approvals/{approval_id}/decision",
            json={"decision": "approve"},
            headers=bearer("approver"),
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "approved"
        await eventually(lambda: stack.revoked(KEY), timeout=15)
        assert not any(c.ok for c in slack.calls)  # Slack never answered


async def _knows(pending: Any, approval_id: str) -> bool:
    return approval_id in await pending


async def test_reminder_at_half_time_then_expired(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    slack: FakeSlack,
) -> None:
    settings = slack_settings(
        db_url,
        temporal_address,
        task_queue,
        slack,
        slack_approvers="U-ALICE,U-BOB",
        approval_timeout_seconds=4,
    )
    async with running_stack(settings, temporal_client) as stack:
        assert (await stack.post_detection(critical_leak())).status_code == 202
        msgs = await eventually(
            lambda: len(approval_messages(slack)) == 2 and approval_messages(slack), timeout=10
        )
        approval_id, message = msgs["revoke_api_key"]
        ts = message.response["ts"]

        def reminders() -> list[SlackCall]:
            return [
                c
                for c in slack.calls_to("chat.postMessage")
                if c.ok and c.params.get("thread_ts") == ts
            ]

        [reminder] = await eventually(reminders, timeout=10)
        assert reminder.params["channel"] == CHANNEL
        assert "<@U-ALICE>" in reminder.params["text"] and "<@U-BOB>" in reminder.params["text"]
        assert approval_row(db_url, approval_id).status == "pending"

        def expired() -> list[SlackCall]:
            return [u for u in updates_of(slack, ts) if "Expired" in u.params["text"]]

        [update] = await eventually(expired, timeout=15)
        assert not has_buttons(update)
        assert "not taken" in json.dumps(update.params["blocks"])
        assert approval_row(db_url, approval_id).status == "expired"
        assert not await stack.revoked(KEY)

        # A click on the expired message: refused, with a reason the user understands.
        payload = click(slack, message, approval_id, "soar_approve", "U-ALICE", reply_to="late")
        assert (await interact(stack, payload)).status_code == 200
        assert "already expired" in slack.wait_for_response("late")[0]["text"]
        assert not await stack.revoked(KEY)


def test_a_long_rate_limit_is_left_to_the_activity_retry(slack: FakeSlack) -> None:
    """A short Retry-After is slept out by the SDK; a long one must not hold a worker thread
    past the activity timeout: it fails at once, asking Temporal to wait that long."""
    settings = Settings(
        _env_file=None,
        slack_bot_token="xoxb-test",
        slack_approval_channel=CHANNEL,
        slack_api_url=slack.api_url,
    )
    notifier = SlackChannel(settings)
    brief = ApprovalBrief(
        approval_id="apr-1",
        action_type="revoke_api_key",
        target=KEY,
        expires_at="2026-11-21T14:15:00+00:00",
        incident=IncidentBrief(
            incident_id="inc-1",
            tenant="acme",
            subject=f"api_key:{KEY}",
            technique="AML.T0057",
            technique_name="LLM Data Leakage",
            tactic=None,
            tactic_name=None,
            severity="critical",
            risk_score=None,
            excerpt=None,
        ),
    )

    slack.fail_next("chat.postMessage", status=429, retry_after=1)
    posted = notifier.post_approval(brief)
    assert posted.channel == CHANNEL
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200]

    slack.fail_next("chat.postMessage", status=429, retry_after=120)
    t0 = time.monotonic()
    with pytest.raises(ApplicationError) as err:
        notifier.post_approval(brief)
    assert time.monotonic() - t0 < 2
    assert err.value.next_retry_delay is not None
    assert err.value.next_retry_delay.total_seconds() == 120
    assert [c.status for c in slack.calls_to("chat.postMessage")] == [429, 200, 429]
