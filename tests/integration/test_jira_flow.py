"""Jira tickets following incidents, end to end: signed detection -> API -> Temporal workflow
-> activities -> the real ``jira`` client -> the Jira fake, on real PostgreSQL and Temporal."""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text, update
from temporalio.client import Client
from temporalio.common import RetryPolicy
from temporalio.exceptions import ApplicationError
from temporalio.testing import ActivityEnvironment

from activities.context import incident_brief
from activities.tickets import TicketActivities
from atlas_soar.worker import build_context
from soar.config import Settings
from soar.connectors import NullTicketing
from soar.contracts import TicketNote
from soar.db import sqlalchemy_url, transaction
from soar.models import Incident
from tests.fakes.jira_api import FakeJira
from tests.support import Stack, bearer, detection, eventually, make_settings, running_stack

pytestmark = pytest.mark.timeout(120)

USER, TOKEN = "soar-bot", "jira-api-token-0123"
# A 2-second block, so the incident can go quiet and close within the test.
PLAYBOOK = """\
name: short
rules:
  - name: contain
    when:
      techniques: ['AML.T0051*']
      severity_at_least: medium
    actions:
      - {type: block_session, risk: low, duration: 2s}
      - {type: open_ticket, risk: low}
      - {type: notify, risk: low}
  - name: escalate
    when:
      severity_at_least: critical
    actions:
      - {type: revoke_api_key, risk: high}
      - {type: disable_user, risk: high}
"""


@pytest.fixture
def fake() -> Iterator[FakeJira]:
    with FakeJira(basic_auth=(USER, TOKEN)) as server:
        yield server


def jira_settings(
    db_url: str, temporal_address: str, task_queue: str, fake: FakeJira, tmp: Path, **over: Any
) -> Settings:
    playbook = tmp / "playbook.yaml"
    playbook.write_text(PLAYBOOK)
    values: dict[str, Any] = {
        "jira_url": fake.url,
        "jira_user": USER,
        "jira_token": TOKEN,
        "jira_project": "SEC",
        "correlation_window_seconds": 2,
        "policy_file": playbook,
    }
    values.update(over)
    return make_settings(db_url, temporal_address, task_queue, **values)


async def blocked_within(stack: Stack, session: str, seconds: float) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()

    async def blocked() -> bool:
        return bool((await stack.enforcement("sessions", session))["blocked"])

    await eventually(blocked, timeout=seconds, interval=0.02)
    assert loop.time() - t0 < seconds


def events(incident: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [e for e in incident["timeline"] if e["event"] == name]


def done(fake: FakeJira, key: str = "SEC-1") -> bool:
    return key in fake.issue_keys and fake.status_of(key) == "Done"


def markers(bodies: list[str]) -> list[str]:
    return [m for b in bodies for m in re.findall(r"soar:([^\\\]]+)\\?\]", b)]


async def test_ticket_opened_commented_and_closed(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    fake: FakeJira,
    tmp_path: Path,
) -> None:
    settings = jira_settings(db_url, temporal_address, task_queue, fake, tmp_path)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection())
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]
        await blocked_within(stack, "s-9", 2.0)

        async def ticketed() -> dict[str, Any] | None:
            inc = await stack.incident(iid)
            return inc if inc["ticket"] else None

        inc = await eventually(ticketed, timeout=15)
        assert inc["ticket"] == {"key": "SEC-1", "url": f"{fake.url}/browse/SEC-1"}
        fields = fake.issue("SEC-1")["fields"]
        assert fields["summary"].startswith("AML.T0051 LLM Prompt Injection on user:u-42")
        assert fields["labels"] == ["atlas", "AML.T0051", "AML.TA0005", f"soar-{iid}"]
        assert fields["priority"]["name"] == "High"
        assert fields["issuetype"]["name"] == "Task"
        assert f"{settings.base_url}/ui/incidents/{iid}" in fields["description"]
        assert "Ignore previous instructions" in fields["description"]  # redacted excerpt
        assert "a@b.com" not in fields["description"]  # ... with the e-mail address masked

        await eventually(
            lambda: any(c.startswith("Applied block_session s-9") for c in fake.comments("SEC-1")),
            timeout=15,
        )
        # The block lifts after 2 s, the window is 2 s: then the incident closes.
        await eventually(lambda: done(fake), timeout=30)

        # the log row of the close is written once Jira has answered: wait for it too
        async def closed() -> dict[str, Any] | None:
            inc = await stack.incident(iid)
            return inc if events(inc, "ticket.closed") else None

        inc = await eventually(closed, timeout=15)
        assert inc["status"] == "closed"

        comments = fake.comments("SEC-1")
        firsts = [c.split("\n")[0] for c in comments]
        assert firsts.index(next(f for f in firsts if f.startswith("Applied block_session"))) < (
            firsts.index(next(f for f in firsts if f.startswith("Lifted")))
        )
        assert len(markers(comments)) == len(comments) == len(set(markers(comments)))
        created = events(inc, "ticket.created")
        assert len(created) == 1
        assert created[0]["details"]["ticket_key"] == "SEC-1"
        assert created[0]["details"]["ticket_url"] == f"{fake.url}/browse/SEC-1"
        assert len(events(inc, "ticket.commented")) == len(comments)
        assert len(events(inc, "ticket.closed")) == 1
        assert not events(inc, "ticket.failed")
        assert fake.issue_keys == ["SEC-1"]
        ticket = next(a for a in inc["actions"] if a["type"] == "open_ticket")
        assert ticket["status"] == "applied"


async def test_approval_decided_and_expired_are_commented(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    fake: FakeJira,
    tmp_path: Path,
) -> None:
    settings = jira_settings(
        db_url, temporal_address, task_queue, fake, tmp_path, approval_timeout_seconds=8
    )
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection(severity="critical"))
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]

        async def pending() -> list[dict[str, Any]]:
            resp = await stack.http.get(
                "/v1/approvals", params={"status": "pending"}, headers=bearer("admin")
            )
            found = [a for a in resp.json()["approvals"] if a["incident_id"] == iid]
            return found if len(found) == 2 else []

        approvals = await eventually(pending, timeout=10)
        inc = await stack.incident(iid)
        revoke = next(a for a in inc["actions"] if a["type"] == "revoke_api_key")
        apr = next(a for a in approvals if a["action_id"] == revoke["action_id"])
        ok = await stack.http.post(
            f"/v1/approvals/{apr['approval_id']}/decision",
            json={"decision": "approve", "comment": "confirmed"},
            headers=bearer("approver"),
        )
        # 202: accepted, recorded a moment later (a busy machine); the comment below says so.
        assert ok.status_code in (200, 202), ok.text

        def has(prefix: str) -> bool:
            return any(c.startswith(prefix) for c in fake.comments("SEC-1"))

        await eventually(lambda: has("Approval for revoke_api_key k-1: approved"), timeout=15)
        await eventually(lambda: has("Applied revoke_api_key k-1"), timeout=15)
        # disable_user is left alone: it expires after 8 s, then the incident closes.
        await eventually(lambda: has("Approval for disable_user u-42 expired"), timeout=30)
        await eventually(lambda: done(fake), timeout=30)
        assert fake.issue_keys == ["SEC-1"]
        assert fake.issue("SEC-1")["fields"]["priority"]["name"] == "Highest"
        comments = fake.comments("SEC-1")
        assert len(markers(comments)) == len(comments) == len(set(markers(comments)))


async def test_jira_refusing_credentials_never_delays_containment(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    fake: FakeJira,
    tmp_path: Path,
) -> None:
    settings = jira_settings(
        db_url, temporal_address, task_queue, fake, tmp_path, jira_token="revoked-token-456"
    )
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection())
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]
        await blocked_within(stack, "s-9", 2.0)

        async def ticket_failed() -> dict[str, Any] | None:
            inc = await stack.incident(iid)
            action = next(a for a in inc["actions"] if a["type"] == "open_ticket")
            return action if action["status"] == "failed" else None

        action = await eventually(ticket_failed, timeout=15)
        assert "401" in action["error"]
        assert "revoked-token-456" not in action["error"]
        # 401 is final: one request, no retry storm against a Jira that said no.
        assert [c.status for c in fake.calls] == [401]
        inc = await stack.incident(iid)
        failed = [e for e in events(inc, "action.failed") if e["action"] == "open_ticket"]
        assert len(failed) == 1 and "401" in failed[0]["details"]["reason"]
        assert inc["ticket"] is None
        # The incident goes on without a ticket: the block lifts, the incident closes.
        await eventually(lambda: _closed(stack, iid), timeout=30)
        assert fake.issue_keys == []


async def test_jira_down_then_back_gets_one_ticket(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    fake: FakeJira,
    tmp_path: Path,
) -> None:
    fake.fail_next(500, count=10_000)
    settings = jira_settings(db_url, temporal_address, task_queue, fake, tmp_path)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection())
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]
        await blocked_within(stack, "s-9", 2.0)
        await eventually(lambda: len(fake.calls) >= 2, timeout=10)  # retried by Temporal
        assert {c.status for c in fake.calls} == {500}
        fake.reset()  # Jira is back

        async def ticketed() -> bool:
            ticket: dict[str, str] | None = (await stack.incident(iid))["ticket"]
            return ticket is not None

        await eventually(ticketed, timeout=30)
        await eventually(
            lambda: any(c.startswith("Applied block_session") for c in fake.comments("SEC-1")),
            timeout=15,
        )
        await eventually(lambda: done(fake), timeout=30)
        assert fake.issue_keys == ["SEC-1"]
        inc = await stack.incident(iid)
        assert len(events(inc, "ticket.created")) == 1


async def _closed(stack: Stack, iid: str) -> bool:
    status: str = (await stack.incident(iid))["status"]
    return status == "closed"


async def test_comments_refused_are_logged_and_the_ticket_still_closes(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    fake: FakeJira,
    tmp_path: Path,
) -> None:
    fake.fail_next(403, count=10_000, path_contains="/comment")
    settings = jira_settings(db_url, temporal_address, task_queue, fake, tmp_path)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection())
        assert r.status_code == 202, r.text
        iid = r.json()["incident_id"]
        await blocked_within(stack, "s-9", 2.0)
        await eventually(lambda: done(fake), timeout=30)
        inc = await stack.incident(iid)
        failed = events(inc, "ticket.failed")
        assert failed and all("HTTP 403" in e["details"]["reason"] for e in failed)
        assert all(e["outcome"] == "failed" for e in failed)
        assert not events(inc, "ticket.commented")
        assert len(events(inc, "ticket.closed")) == 1
        assert inc["status"] == "closed"


# ------------------------------------------------------------------------- the activities alone


def _incident(db_url: str, iid: str, ticket_key: str | None = None) -> str:
    engine = create_engine(sqlalchemy_url(db_url))
    now = datetime.now(UTC)
    with engine.begin() as c:
        c.execute(
            text(
                "INSERT INTO incidents (id, tenant, subject_key, status, workflow_id, technique,"
                " severity, detection_count, opened_at, last_detection_at, ticket_key)"
                " VALUES (:id, 'acme', :subject, 'open', :wf, 'AML.T0051', 'high', 1,"
                " :now, :now, :key)"
            ),
            {
                "id": iid,
                "subject": f"user:{iid}",
                "wf": f"incident-{iid}",
                "now": now,
                "key": ticket_key,
            },
        )
    engine.dispose()
    return iid


def _log(db_url: str, iid: str) -> list[tuple[str, str, dict[str, Any]]]:
    engine = create_engine(sqlalchemy_url(db_url))
    with engine.connect() as c:
        rows = c.execute(
            text(
                "SELECT event, outcome, details FROM action_log WHERE incident_id = :i ORDER BY seq"
            ),
            {"i": iid},
        ).all()
    engine.dispose()
    return [(r[0], r[1], r[2]) for r in rows]


def _attempt(env: ActivityEnvironment, n: int) -> None:
    env.info = dataclasses.replace(
        env.info, attempt=n, retry_policy=RetryPolicy(maximum_attempts=8)
    )


async def test_note_activity_logs_once_and_only_final_failures(
    db_url: str, temporal_address: str, task_queue: str, fake: FakeJira, tmp_path: Path
) -> None:
    settings = jira_settings(db_url, temporal_address, task_queue, fake, tmp_path)
    ctx = build_context(settings, db_url)
    acts = TicketActivities(ctx)
    env = ActivityEnvironment()
    iid = _incident(db_url, "inc-activity-test")
    async with ctx.factory() as s:
        brief = await incident_brief(s, iid, ctx.settings)
    key, _ = await asyncio.to_thread(ctx.ticketing.ensure_ticket, brief, "")
    async with transaction(ctx.factory) as s:
        await s.execute(update(Incident).where(Incident.id == iid).values(ticket_key=key))
    note = TicketNote(iid, "act-1:applied", "Applied block_session s-9")

    fake.fail_next(500, count=2, path_contains="/comment")
    _attempt(env, 3)
    with pytest.raises(ApplicationError):
        await env.run(acts.note_ticket, note)
    assert _log(db_url, iid) == []  # attempt 3 of 8: retried, not logged
    _attempt(env, 8)
    with pytest.raises(ApplicationError):
        await env.run(acts.note_ticket, note)
    [(event, outcome, details)] = _log(db_url, iid)
    assert (event, outcome) == ("ticket.failed", "failed")
    assert "HTTP 500" in details["reason"] and details["attempts"] == 8

    other = TicketNote(iid, "act-2:applied", "Applied block_api_key k-1")
    _attempt(env, 1)
    await env.run(acts.note_ticket, other)
    calls = len(fake.calls)
    await env.run(acts.note_ticket, other)  # logged as done: Jira is not asked again
    assert len(fake.calls) == calls
    assert [e for e, _, _ in _log(db_url, iid)] == ["ticket.failed", "ticket.commented"]
    assert len(fake.comments(key)) == 1

    fake.fail_next(401)
    with pytest.raises(ApplicationError) as excinfo:
        await env.run(acts.close_ticket, iid)
    assert excinfo.value.non_retryable
    assert _log(db_url, iid)[-1][0:2] == ("ticket.failed", "failed")  # final at attempt 1
    await env.run(acts.close_ticket, iid)
    await env.run(acts.close_ticket, iid)
    assert fake.status_of(key) == "Done"
    assert [e for e, _, _ in _log(db_url, iid)].count("ticket.closed") == 1

    # No ticket, or Jira not configured: nothing to do, nothing logged.
    bare = _incident(db_url, "inc-without-ticket")
    await env.run(acts.note_ticket, TicketNote(bare, "x:applied", "text"))
    await env.run(acts.close_ticket, bare)
    assert _log(db_url, bare) == []
    off = TicketActivities(dataclasses.replace(ctx, ticketing=NullTicketing()))
    calls, rows = len(fake.calls), len(_log(db_url, iid))
    await env.run(off.note_ticket, TicketNote(iid, "act-3:applied", "text"))
    await env.run(off.close_ticket, iid)
    assert (len(fake.calls), len(_log(db_url, iid))) == (calls, rows)
    await ctx.factory.kw["bind"].dispose()
