"""E-mail approvals and approval rules, end to end: real PostgreSQL, real Temporal, a real
SMTP server (aiosmtpd, with AUTH), the real slack_sdk against FakeSlack, the API over HTTP.

A two-person rule (`quorum: 2`, `approvers: [secops]`) for a critical leak: every approver
with an address gets a link of their own; opening it decides nothing; the first approval
leaves the approval pending (and Slack says "1 of 2 approvals"), the same approver again is
refused whatever the channel, someone outside the group is refused, a second approver
applies it, a reject ends it; a used or expired link is refused with a page saying so; the
outcome mail says what Slack says."""

from __future__ import annotations

import html
import re
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from temporalio.client import Client
from typer.testing import CliRunner

from soar.config import Settings
from tests.fakes.slack_api import FakeSlack
from tests.fakes.smtp_server import SmtpSink
from tests.support import Stack, api_tokens, detection, eventually, make_settings, running_stack

pytestmark = [
    pytest.mark.timeout(180),
    # AUTH without TLS: the test server listens on the loopback only.
    pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS"),
]

SMTP_USER, SMTP_PASSWORD = "soar", "p@ss:w/rd"
PEOPLE = {name: f"{name}-token-0123456789" for name in ("alice", "bob", "carol")}
KEY, USER = "k-77", "u-7"

PLAYBOOK = """
name: two-person
rules:
  - name: contain
    when: {severity_at_least: high}
    actions:
      - {type: block_session, risk: low, duration: 15m}
  - name: revoke-on-leak
    when: {techniques: ["AML.T0057*"], severity_at_least: critical}
    actions:
      - {type: revoke_api_key, risk: high}
      - {type: disable_user, risk: high}
    approvers: [secops]
    quorum: QUORUM
    escalate_to: oncall
"""
_CSRF = re.compile(r'name="csrf" value="([^"]+)"')
_LINK = re.compile(r"(http://127\.0\.0\.1:\d+/approvals/email/\S+)")


def settings_for(
    db_url: str,
    temporal_address: str,
    task_queue: str,
    tmp_path: Path,
    smtp: SmtpSink,
    slack: FakeSlack,
    *,
    quorum: int,
    **over: Any,
) -> Settings:
    playbook = tmp_path / "playbook.yaml"
    playbook.write_text(PLAYBOOK.replace("QUORUM", str(quorum)))
    people = ",".join(f"{name}:approver:{token}" for name, token in PEOPLE.items())
    values: dict[str, Any] = {
        "policy_file": playbook,
        "api_tokens": f"{api_tokens()},{people}",
        "smtp_url": f"smtp://{SMTP_USER}:{quote(SMTP_PASSWORD, safe='')}@127.0.0.1:{smtp.port}",
        "smtp_from": "atlas-soar <soar@soc.example.com>",
        "session_secret": "e-mail-link-test-secret-0123456789",
        "slack_bot_token": "xoxb-test",
        "slack_signing_secret": "8f742231b10e8888abcd99yyyzzz85a5",
        "slack_approval_channel": "C-SEC",
        "slack_api_url": slack.api_url,
        "approval_timeout_seconds": 600,
    }
    values.update(over)
    return make_settings(db_url, temporal_address, task_queue, **values)


def soar(db_url: str, *args: str) -> Any:
    from atlas_soar.cli import app

    return CliRunner().invoke(app, list(args), env={"SOAR_DATABASE_URL": db_url})


def set_up_people(db_url: str) -> None:
    """alice and bob in secops, carol on call; everyone with an address."""
    for name in PEOPLE:
        done = soar(db_url, "users", "set-email", name, f"{name}@SOC.example.com")
        assert done.exit_code == 0, done.output
    assert soar(db_url, "users", "group", "add", "secops", "alice", "bob").exit_code == 0
    assert soar(db_url, "users", "group", "add", "oncall", "carol").exit_code == 0
    # Mistakes are refused with one clear line.
    bad = soar(db_url, "users", "set-email", "alice", "alice at example")
    assert bad.exit_code == 2 and "not an e-mail address" in bad.output
    taken = soar(db_url, "users", "set-email", "bob", "alice@soc.example.com")
    assert taken.exit_code == 1 and "already the email address of 'alice'" in taken.output
    assert "not a group name" in soar(db_url, "users", "group", "add", "Sec Ops", "bob").output
    assert "no user named 'zed'" in soar(db_url, "users", "group", "add", "secops", "zed").output
    listed = soar(db_url, "users", "group", "list")
    assert "secops" in listed.output and "alice, bob" in listed.output


def critical_leak() -> dict[str, Any]:
    subject = {"tenant": "acme", "user": USER, "session": "s-77", "api_key": KEY}
    return detection(technique="AML.T0057", severity="critical", subject=subject)


def to(address: str, subject: str) -> Any:
    def match(m: EmailMessage) -> bool:
        return str(m["To"]) == address and subject in str(m["Subject"])

    return match


def body(m: EmailMessage) -> str:
    part = m.get_body(("plain",))
    assert part is not None
    return str(part.get_content())  # type: ignore[attr-defined]


def link_in(m: EmailMessage) -> str:
    found = _LINK.search(body(m))
    assert found, body(m)
    return found.group(1)


async def open_page(http: httpx.AsyncClient, link: str) -> tuple[httpx.Response, str]:
    page = await http.get(link)
    found = _CSRF.search(page.text)
    return page, html.unescape(found.group(1)) if found else ""


async def decide_by_link(
    http: httpx.AsyncClient, link: str, decision: str, comment: str = ""
) -> httpx.Response:
    page, csrf = await open_page(http, link)
    assert page.status_code == 200, page.text
    return await http.post(link, data={"csrf": csrf, "decision": decision, "comment": comment})


async def approval_of(stack: Stack, incident_id: str, action_type: str) -> dict[str, Any]:
    async def find() -> dict[str, Any] | None:
        inc = await stack.incident(incident_id)
        action = next((a for a in inc["actions"] if a["type"] == action_type), None)
        found = [x for x in inc["approvals"] if action and x["action_id"] == action["action_id"]]
        return found[0] if found else None

    result: dict[str, Any] = await eventually(find, timeout=20)
    return result


async def api_decide(stack: Stack, who: str, approval_id: str, decision: str) -> httpx.Response:
    return await stack.http.post(
        f"/v1/approvals/{approval_id}/decision",
        json={"decision": decision},
        headers={"Authorization": f"Bearer {PEOPLE[who]}"},
    )


async def blocked(stack: Stack, kind: str, target: str) -> bool:
    return bool((await stack.enforcement(kind, target))["blocked"])


def slack_updates(slack: FakeSlack, needle: str) -> list[Any]:
    return [c for c in slack.calls_to("chat.update") if c.ok and needle in c.params["text"]]


async def test_two_person_rule_by_email_slack_and_api(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    tmp_path: Path,
) -> None:
    with (
        SmtpSink(user=SMTP_USER, password=SMTP_PASSWORD) as smtp,
        FakeSlack(token="xoxb-test") as slack,
    ):
        settings = settings_for(
            db_url, temporal_address, task_queue, tmp_path, smtp, slack, quorum=2
        )
        async with running_stack(settings, temporal_client) as stack:
            set_up_people(db_url)
            r = await stack.post_detection(critical_leak())
            assert r.status_code == 202, r.text
            incident_id = r.json()["incident_id"]

            # One mail per approver of the group and approval; carol (on call) gets none.
            revoke_mails = {
                str(m["To"]): m
                for m in await smtp.wait_for(
                    lambda m: "Revoke API key k-77" in str(m["Subject"]), count=2
                )
            }
            await smtp.wait_for(lambda m: "Disable user u-7" in str(m["Subject"]), count=2)
            assert set(revoke_mails) == {"alice@soc.example.com", "bob@soc.example.com"}
            assert smtp.logins and set(smtp.logins) == {SMTP_USER}  # the URL's credentials
            mail = revoke_mails["alice@soc.example.com"]
            assert str(mail["From"]) == "atlas-soar <soar@soc.example.com>"
            text = body(mail)
            assert "AML.T0057" in text and "2 distinct approvals needed" in text
            # The redacted excerpt only, never the raw prompt.
            assert "a@b.com" not in text and "mail me at [EMAIL]" in text
            alice_link = link_in(mail)
            bob_link = link_in(revoke_mails["bob@soc.example.com"])
            assert alice_link != bob_link

            revoke = await approval_of(stack, incident_id, "revoke_api_key")
            apr = revoke["approval_id"]
            assert (revoke["quorum"], revoke["approvers"]) == (2, ["secops"])
            assert set(revoke["channels"]) == {"email", "slack"}

            # Opening the link (as a mail scanner would, twice) decides nothing.
            for _ in range(2):
                page, csrf = await open_page(stack.http, alice_link)
                assert page.status_code == 200 and "Approve" in page.text and csrf
                assert page.headers["referrer-policy"] == "no-referrer"
            assert (await approval_of(stack, incident_id, "revoke_api_key"))["status"] == "pending"
            # A POST without the page's CSRF token is refused.
            forged = await httpx.AsyncClient(base_url=stack.api.url).post(
                alice_link, data={"csrf": csrf, "decision": "approve"}
            )
            assert forged.status_code == 403 and "Form refused" in forged.text

            # alice approves by e-mail: counted, still pending, Slack shows the count.
            done = await decide_by_link(stack.http, alice_link, "approve", "checked the logs")
            assert done.status_code == 200, done.text
            # The page gives the count when the workflow answered within the decision
            # deadline; on a busy machine it says "submitted" and the vote lands moments later.
            if "Decision submitted" not in done.text:
                assert "1 of 2 approvals" in done.text

            async def counted() -> bool:
                a = await approval_of(stack, incident_id, "revoke_api_key")
                return len(a["approvals"]) == 1

            await eventually(counted, timeout=15)
            assert (await approval_of(stack, incident_id, "revoke_api_key"))["status"] == "pending"
            assert not await blocked(stack, "api-keys", KEY)
            await eventually(lambda: slack_updates(slack, "1 of 2 approvals"), timeout=15)

            # The link is used up: a second use is refused with a page saying so.
            again = await stack.http.get(alice_link)
            assert again.status_code == 410 and "Link already used" in again.text
            replay = await stack.http.post(alice_link, data={"csrf": csrf, "decision": "approve"})
            assert replay.status_code == 403  # its CSRF cookie was for that page view
            page, csrf2 = await open_page(stack.http, alice_link)
            assert page.status_code == 410 and not csrf2
            # A forged link, or one with its signature changed, leads nowhere.
            for bad in (alice_link[:-3] + "xyz", alice_link.rsplit("/", 1)[0] + "/garbage"):
                r = await stack.http.get(bad)
                assert r.status_code == 404 and "Link not valid" in r.text

            # The same approver through another channel: refused. Outside the group: refused.
            twice = await api_decide(stack, "alice", apr, "approve")
            assert twice.status_code == 409 and "already approved" in twice.json()["detail"]
            outsider = await api_decide(stack, "carol", apr, "approve")
            assert outsider.status_code == 403
            assert "not in the approver groups" in outsider.json()["detail"]

            # The list filters by channel.
            listed = await stack.http.get(
                "/v1/approvals",
                params={"channel": "email", "status": "pending"},
                headers={"Authorization": f"Bearer {PEOPLE['bob']}"},
            )
            assert listed.status_code == 200
            item = next(a for a in listed.json()["approvals"] if a["approval_id"] == apr)
            assert [v["by"] for v in item["approvals"]] == ["alice"]
            assert item["approvals"][0]["channel"] == "email"
            none = await stack.http.get(
                "/v1/approvals",
                params={"channel": "ui"},
                headers={"Authorization": f"Bearer {PEOPLE['bob']}"},
            )
            assert none.json()["approvals"] == []
            bad = await stack.http.get(
                "/v1/approvals",
                params={"channel": "<script>"},
                headers={"Authorization": f"Bearer {PEOPLE['bob']}"},
            )
            assert bad.status_code == 422 and bad.json()["errors"][0]["field"] == "query.channel"

            # bob approves by e-mail: the quorum is met, the key is revoked.
            done = await decide_by_link(stack.http, bob_link, "approve")
            assert done.status_code == 200 and "Approved" in done.text, done.text
            await eventually(lambda: blocked(stack, "api-keys", KEY), timeout=15)
            decided = await approval_of(stack, incident_id, "revoke_api_key")
            assert decided["status"] == "approved" and decided["channel"] == "email"
            assert [v["by"] for v in decided["approvals"]] == ["alice", "bob"]

            # Slack and e-mail show the same outcome.
            [final] = await eventually(
                lambda: slack_updates(slack, "Approved by alice, bob"), timeout=15
            )
            follow_ups = await smtp.wait_for(
                lambda m: str(m["Subject"]).startswith("Re: Approved by alice, bob"), count=2
            )
            assert {str(m["To"]) for m in follow_ups} == set(revoke_mails)
            sentence = html.unescape(final.params["text"])
            for m in follow_ups:
                assert body(m).splitlines()[0] == sentence + "."
                assert str(m["In-Reply-To"]) == str(revoke_mails[str(m["To"])]["Message-ID"])

            # The other approval: bob approves in the web UI, which shows the rule and the
            # count; then alice rejects by e-mail: it ends there.
            disable = await approval_of(stack, incident_id, "disable_user")
            async with httpx.AsyncClient(base_url=stack.api.url) as ui:
                login = await ui.get("/ui/login")
                found = _CSRF.search(login.text)
                assert found
                signed_in = await ui.post(
                    "/ui/login",
                    data={"csrf": html.unescape(found.group(1)), "token": PEOPLE["bob"]},
                )
                assert signed_in.status_code == 303
                page = await ui.get("/ui/approvals")
                assert "0 of 2 approvals" in page.text and "<code>secops</code>" in page.text
                assert "escalates to <code>oncall</code>" in page.text
                found = _CSRF.search(page.text)
                assert found
                voted = await ui.post(
                    f"/ui/approvals/{disable['approval_id']}/decision",
                    data={"csrf": html.unescape(found.group(1)), "decision": "approve"},
                    follow_redirects=True,
                )
                assert "your approval is recorded (1 of 2); another approver is needed" in (
                    html.unescape(voted.text)
                )
                assert "1 of 2 approvals</strong> (bob)" in voted.text
            counted = await approval_of(stack, incident_id, "disable_user")
            assert counted["status"] == "pending" and counted["approvals"][0]["channel"] == "ui"
            alice_disable = next(
                m
                for m in smtp.received()
                if str(m["To"]) == "alice@soc.example.com" and "Disable user" in str(m["Subject"])
            )
            done = await decide_by_link(stack.http, link_in(alice_disable), "reject", "not yet")
            assert done.status_code == 200 and "Rejected" in done.text
            rejected = await approval_of(stack, incident_id, "disable_user")
            assert rejected["status"] == "rejected" and rejected["decided_by"] == "alice"
            await smtp.wait_for(
                lambda m: str(m["Subject"]).startswith("Re: Rejected by alice"), count=2
            )
            assert not await blocked(stack, "users", USER)

            # Every approval is in the action log.
            audit = await stack.http.get(
                "/v1/audit",
                params={"incident_id": incident_id, "limit": 500},
                headers={"Authorization": "Bearer admin-token-0123456789"},
            )
            rows = audit.json()["items"]
            votes = [
                (e["actor"], e["details"]["channel"])
                for e in rows
                if e["event"] == "approval.vote" and e["details"]["approval_id"] == apr
            ]
            assert votes == [("alice", "email"), ("bob", "email")]
            decided_rows = [e for e in rows if e["event"] == "approval.decided"]
            assert {e["outcome"] for e in decided_rows} == {"approved", "rejected"}


async def test_expired_link_then_escalation_to_the_on_call_group(
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
    tmp_path: Path,
) -> None:
    with SmtpSink() as smtp, FakeSlack(token="xoxb-test") as slack:
        settings = settings_for(
            db_url,
            temporal_address,
            task_queue,
            tmp_path,
            smtp,
            slack,
            quorum=1,
            smtp_url=smtp.url,
            email_link_ttl_seconds=1,
            approval_timeout_seconds=6,
        )
        async with running_stack(settings, temporal_client) as stack:
            set_up_people(db_url)
            r = await stack.post_detection(critical_leak())
            incident_id = r.json()["incident_id"]
            [mail] = await smtp.wait_for(to("alice@soc.example.com", "Revoke API key"))
            link = link_in(mail)
            page, csrf = await open_page(stack.http, link)
            assert page.status_code == 200

            # alice waits too long: the link has expired, and says so; nothing is decided.
            async def expired() -> bool:
                # Another client: the page alice holds keeps its own CSRF cookie.
                async with httpx.AsyncClient() as other:
                    return (await other.get(link)).status_code == 410

            await eventually(expired, timeout=10)
            async with httpx.AsyncClient() as other:
                late = await other.get(link)
            assert "Link expired" in late.text
            posted = await stack.http.post(link, data={"csrf": csrf, "decision": "approve"})
            assert posted.status_code == 410 and "Link expired" in posted.text
            revoke = await approval_of(stack, incident_id, "revoke_api_key")
            assert revoke["status"] == "pending"
            before = await api_decide(stack, "carol", revoke["approval_id"], "approve")
            assert before.status_code == 403  # not yet: carol's group is the escalation

            # At half the timeout the on-call group is told (a link of its own) and may decide;
            # the group's approvers get a reminder.
            [escalated] = await smtp.wait_for(
                to("carol@soc.example.com", "Revoke API key"), timeout=20
            )
            await smtp.wait_for(to("bob@soc.example.com", "Reminder: "), timeout=10)
            done = await decide_by_link(stack.http, link_in(escalated), "approve")
            assert done.status_code == 200 and "Approved" in done.text, done.text
            await eventually(lambda: blocked(stack, "api-keys", KEY), timeout=15)
            decided = await approval_of(stack, incident_id, "revoke_api_key")
            assert decided["decided_by"] == "carol" and decided["escalated_at"]
