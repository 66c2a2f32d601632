"""An analyst acts on an incident through the API (real Temporal, real PostgreSQL): lift a
block early, extend it, contain now, close with a disposition, add a note; incident search."""

from __future__ import annotations

import asyncio
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from temporalio.client import Client, WorkflowUpdateFailedError
from typer.testing import CliRunner

from atlas_soar.cli import app
from soar.decisions import sign_decision
from soar.domain import UPDATE_ANALYST, AnalystRequest, AnalystResult
from tests.support import (
    DECISION_KEY,
    TOKENS,
    bearer,
    detection,
    eventually,
    make_settings,
    running_stack,
)

pytestmark = pytest.mark.timeout(120)

PLAYBOOK = """
name: analyst
rules:
  - name: contain
    when: {techniques: ["AML.T0051*"], severity_at_least: medium}
    actions:
      - {type: block_session, risk: low, duration: 4s}
  - name: leak
    when: {techniques: ["AML.T0057*"]}
    actions:
      - {type: block_session, risk: low, duration: 15m}
      - {type: revoke_api_key, risk: high}
  - name: quarantine
    when: {techniques: ["AML.T0054*"]}
    actions:
      - {type: quarantine_model, risk: high}
"""


def _settings(db_url: str, temporal_address: str, task_queue: str) -> Any:
    pb = Path(tempfile.mkdtemp()) / "pb.yaml"
    pb.write_text(PLAYBOOK)
    return make_settings(
        db_url,
        temporal_address,
        task_queue,
        policy_file=pb,
        temporal_ui_url="http://temporal-ui.example:8233/",
    )


def rows(db_url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    with psycopg.connect(db_url) as c:
        return c.execute(sql, args).fetchall()


async def blocked(stack: Any, kind: str, target: str) -> bool:
    return bool((await stack.enforcement(kind, target))["blocked"])


async def action_of(stack: Any, iid: str, type_: str, status: str) -> dict[str, Any] | None:
    inc = await stack.incident(iid)
    found = [a for a in inc["actions"] if a["type"] == type_ and a["status"] == status]
    return found[-1] if found else None


async def act(http: httpx.AsyncClient, path: str, role: str, **body: Any) -> httpx.Response:
    r = await http.post(path, json=body, headers=bearer(role))
    if r.status_code == 202:  # accepted, still finishing: wait for the answer's effect
        await asyncio.sleep(1)
    return r


async def test_lift_early_contain_again_close_as_false_positive(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = _settings(db_url, temporal_address, task_queue)
    subject = {"tenant": "acme", "user": "u-a1", "session": "s-a1"}
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(detection(subject=subject))
        iid = r.json()["incident_id"]
        await eventually(lambda: blocked(stack, "sessions", "s-a1"), timeout=5)
        block = await eventually(lambda: action_of(stack, iid, "block_session", "applied"))
        assert block["analyst_actions"] == ["lift", "extend"]
        lift = f"/v1/incidents/{iid}/actions/{block['action_id']}/lift"

        # Role checks; the reason is bounded and printable.
        for role in ("approver", "auditor", "gateway"):
            assert (await act(stack.http, lift, role, reason="x")).status_code == 403, role
        assert (await act(stack.http, lift, "analyst", reason="a\x00b")).status_code == 422
        assert (await act(stack.http, lift, "analyst", reason="x" * 1001)).status_code == 422
        assert await blocked(stack, "sessions", "s-a1")

        # Lifted early: unblocked at once; the actor is the principal, not the body.
        why = "customer confirmed it was their red team"
        r = await act(stack.http, lift, "analyst", reason=why, actor="mallory")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "lifted" and r.json()["by"] == "analyst-user"
        await eventually(lambda: not_blocked(stack, "s-a1"), timeout=1)
        again = await act(stack.http, lift, "analyst", reason="again")
        assert again.status_code == 409, again.text

        # The timer (4 s) does nothing later: one lift row, by the analyst, with the reason.
        await asyncio.sleep(4.5)
        lifted = rows(
            db_url,
            "SELECT actor, outcome, details->>'reason' FROM action_log "
            "WHERE event = 'action.rolled_back' AND details->>'action_id' = %s",
            block["action_id"],
        )
        assert lifted == [("analyst-user", "lifted", why)]
        assert not await blocked(stack, "sessions", "s-a1")
        assert (await action_of(stack, iid, "block_session", "lifted")) is not None

        # Contain now: the lifted block applied again at once (a new action).
        contain = f"/v1/incidents/{iid}/actions/{block['action_id']}/contain"
        r = await act(stack.http, contain, "analyst", reason="they did it again")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "applied" and r.json()["action_id"] != block["action_id"]
        await eventually(lambda: blocked(stack, "sessions", "s-a1"), timeout=1)

        note = await act(stack.http, f"/v1/incidents/{iid}/notes", "analyst", text="<b>hi</b>")
        assert note.status_code == 200, note.text

        # Closed as a false positive: its blocks lifted, the disposition stored and reported.
        close = f"/v1/incidents/{iid}/close"
        bad = await act(stack.http, close, "analyst", disposition="maybe")
        assert bad.status_code == 422
        r = await act(stack.http, close, "analyst", disposition="false_positive", reason="test")
        assert r.status_code == 200, r.text
        await eventually(lambda: not_blocked(stack, "s-a1"), timeout=1)
        inc = await stack.incident(iid)
        assert inc["status"] == "closed" and inc["disposition"] == "false_positive"
        assert inc["closed_by"] == "analyst-user"
        events = [(e["event"], e["actor"]) for e in inc["timeline"]]
        assert ("incident.note", "analyst-user") in events
        assert ("incident.closed", "analyst-user") in events
        assert events.count(("action.rolled_back", "analyst-user")) == 2
        late = await act(stack.http, contain, "analyst")
        assert late.status_code == 409

        found = await stack.http.get(
            "/v1/incidents", params={"disposition": "false_positive"}, headers=bearer("auditor")
        )
        assert [i["incident_id"] for i in found.json()["incidents"]] == [iid]
        summary = await stack.http.get("/v1/reports/summary", headers=bearer("auditor"))
        assert summary.json()["totals"]["dispositions"]["false_positive"] == 1
        report = await asyncio.to_thread(
            CliRunner().invoke, app, ["report"], env={"SOAR_DATABASE_URL": db_url}
        )
        assert report.exit_code == 0, report.output
        assert "false_positive 1" in report.stdout.split("closed as:", 1)[1].splitlines()[0]

        # A closed incident's workflow has ended: a note and a new disposition still land.
        await eventually(lambda: _ended(temporal_client, inc["workflow_id"]), timeout=10)
        r = await act(stack.http, f"/v1/incidents/{iid}/notes", "admin", text="reviewed")
        assert r.status_code == 200, r.text
        r = await act(stack.http, close, "admin", disposition="benign", reason="reclassified")
        assert r.status_code == 200, r.text
        assert (await stack.incident(iid))["disposition"] == "benign"

    env = {"SOAR_DATABASE_URL": db_url}
    out = await asyncio.to_thread(CliRunner().invoke, app, ["report", "--json"], env=env)
    assert out.exit_code == 0, out.output
    assert '"benign": 1' in out.output


async def not_blocked(stack: Any, session: str) -> bool:
    return not await blocked(stack, "sessions", session)


async def _ended(client: Client, workflow_id: str) -> bool:
    desc = await client.get_workflow_handle(workflow_id).describe()
    return desc.status is not None and desc.status.name == "COMPLETED"


def signed(req: AnalystRequest) -> AnalystRequest:
    return sign_decision(req, DECISION_KEY.encode(), now=datetime.now(UTC))


async def test_extend_moves_the_expiry_and_a_high_risk_contain_needs_a_second_person(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = _settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as stack:
        short = await stack.post_detection(
            detection(subject={"tenant": "acme", "user": "u-c1", "session": "s-c1"})
        )
        leak = await stack.post_detection(
            detection(
                technique="AML.T0057",
                subject={"tenant": "acme", "user": "u-b1", "session": "s-b1", "api_key": "k-b1"},
            )
        )
        short_id, leak_id = short.json()["incident_id"], leak.json()["incident_id"]
        block = await eventually(lambda: action_of(stack, short_id, "block_session", "applied"))

        # Extend (3 s more, sent as the API would): still blocked after the old expiry, and the
        # timer lifts it at the new time; the feed carries the new expiry to the replica.
        handle = temporal_client.get_workflow_handle(short.json()["workflow_id"])
        unsigned = AnalystRequest("extend", "analyst-user", "analyst", action_id=block["action_id"])
        with pytest.raises(WorkflowUpdateFailedError):
            await handle.execute_update(UPDATE_ANALYST, unsigned, result_type=AnalystResult)
        done = await handle.execute_update(
            UPDATE_ANALYST,
            signed(
                AnalystRequest(
                    "extend", "analyst-user", "analyst", action_id=block["action_id"], seconds=3
                )
            ),
            result_type=AnalystResult,
        )
        old = datetime.fromisoformat(block["expires_at"])
        lifted_key = f"{block['action_id']}:lifted"
        assert datetime.fromisoformat(done.expires_at) == old + timedelta(seconds=3)
        status = await eventually(lambda: _until(stack, "s-c1", done.expires_at), timeout=2)
        assert status["blocked"]

        # High risk: still pending; closing is refused meanwhile; rejected, then contained
        # again by the admin, whose own approval is refused; a second person approves it.
        pending = await eventually(
            lambda: action_of(stack, leak_id, "revoke_api_key", "pending_approval")
        )
        refused = await act(
            stack.http, f"/v1/incidents/{leak_id}/close", "analyst", disposition="benign"
        )
        assert refused.status_code == 409 and "pending" in refused.json()["detail"]
        approval = (await stack.incident(leak_id))["approvals"][0]["approval_id"]
        await _ui_refuses_and_confirms(stack, leak_id, approval)
        no = await stack.http.post(
            f"/v1/approvals/{approval}/decision",
            json={"decision": "reject"},
            headers=bearer("approver"),
        )
        assert no.status_code in (200, 202), no.text
        await eventually(lambda: action_of(stack, leak_id, "revoke_api_key", "rejected"), timeout=5)
        path = f"/v1/incidents/{leak_id}/actions/{pending['action_id']}/contain"
        r = await act(stack.http, path, "admin", reason="the key leaked customer data")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "pending_approval"
        second = r.json()["approval_id"]
        assert not await blocked(stack, "api-keys", "k-b1")
        await eventually(lambda: _exists(stack, f"/v1/approvals/{second}"), timeout=5)
        mine = await stack.http.post(
            f"/v1/approvals/{second}/decision",
            json={"decision": "approve"},
            headers=bearer("admin"),
        )
        assert mine.status_code == 403 and "second person" in mine.json()["detail"]
        ok = await stack.http.post(
            f"/v1/approvals/{second}/decision",
            json={"decision": "approve"},
            headers=bearer("approver"),
        )
        assert ok.status_code in (200, 202), ok.text
        await eventually(lambda: blocked(stack, "api-keys", "k-b1"), timeout=5)
        requested = rows(db_url, "SELECT requested_by FROM approvals WHERE id = %s", second)
        assert requested == [("admin-user",)]

        # The extended block: still in force after its old expiry, lifted by its timer at the
        # new time, once.
        await asyncio.sleep(max(0.0, (old - datetime.now(UTC)).total_seconds()) + 0.3)
        assert await blocked(stack, "sessions", "s-c1")
        assert not rows(db_url, "SELECT 1 FROM action_log WHERE event_key = %s", lifted_key)
        await eventually(lambda: not_blocked(stack, "s-c1"), timeout=8)
        lifts = await eventually(
            lambda: rows(
                db_url,
                "SELECT actor, outcome FROM action_log WHERE event = 'action.rolled_back' "
                "AND details->>'action_id' = %s",
                block["action_id"],
            ),
            timeout=5,
        )
        assert lifts == [("system:atlas-soar", "expired")]
        extended = rows(
            db_url,
            "SELECT actor FROM action_log WHERE event = 'action.extended' AND incident_id = %s",
            short_id,
        )
        assert extended == [("analyst-user",)]


async def _ui_refuses_and_confirms(stack: Any, incident_id: str, approval_id: str) -> None:
    """In the web UI: an approver may not act on an incident, a form without its CSRF token
    is refused, and approving first shows whether the action can be undone."""
    from tests.integration.test_web_ui import sign_in

    async with httpx.AsyncClient(base_url=stack.api.url, timeout=30) as ui:
        csrf = await sign_in(ui, token=TOKENS["approver"])
        close = f"/ui/incidents/{incident_id}/close"
        r = await ui.post(close, data={"csrf": csrf, "disposition": "benign"})
        assert r.status_code == 403 and "only analysts and admins" in r.text
        r = await ui.post(f"/ui/approvals/{approval_id}/confirm", data={"next": "/ui/approvals"})
        assert r.status_code == 403
        r = await ui.post(
            f"/ui/approvals/{approval_id}/confirm", data={"csrf": csrf, "comment": "<i>x</i>"}
        )
        assert r.status_code == 200 and "Cannot be undone." in r.text
        assert "Revoke API key is irreversible" in r.text and "&lt;i&gt;x&lt;/i&gt;" in r.text
        assert (await stack.incident(incident_id))["approvals"][0]["status"] == "pending"


def _approval(action: dict[str, Any]) -> str:
    from soar.contracts import approval_id_for

    return approval_id_for(action["action_id"])


async def _exists(stack: Any, path: str) -> bool:
    return (await stack.http.get(path, headers=bearer("admin"))).status_code == 200


async def _until(stack: Any, session: str, until: str) -> dict[str, Any] | None:
    status = await stack.enforcement("sessions", session)
    got = status["until"]
    return status if got and datetime.fromisoformat(got) == datetime.fromisoformat(until) else None


async def test_incidents_are_searchable_with_paging_and_link_to_temporal(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> None:
    settings = _settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as stack:
        made = {}
        for n, (technique, severity) in enumerate(
            [("AML.T0051", "medium"), ("AML.T0051.000", "high"), ("AML.T0057", "critical")]
        ):
            r = await stack.post_detection(
                detection(
                    technique=technique,
                    severity=severity,
                    subject={"tenant": "acme", "user": f"u-s{n}", "session": f"s-s{n}"},
                )
            )
            made[technique] = r.json()["incident_id"]
            await asyncio.sleep(0.01)

        async def search(**params: Any) -> dict[str, Any]:
            r = await stack.http.get("/v1/incidents", params=params, headers=bearer("analyst"))
            assert r.status_code == 200, r.text
            return dict(r.json())

        def ids(page: dict[str, Any]) -> list[str]:
            return [i["incident_id"] for i in page["incidents"]]

        assert ids(await search(severity="critical")) == [made["AML.T0057"]]
        assert set(ids(await search(technique="aml.t0051"))) == {
            made["AML.T0051"],
            made["AML.T0051.000"],
        }
        # A sub-technique is under its parent's tactic (AML.TA0005, Execution).
        assert set(ids(await search(tactic="AML.TA0005"))) == {
            made["AML.T0051"],
            made["AML.T0051.000"],
        }
        assert ids(await search(subject="u-s2")) == [made["AML.T0057"]]
        assert len(ids(await search(status="open", disposition="none"))) == 3
        future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
        assert ids(await search(since=future)) == []

        # Pages of one, newest first, each once; `next` carries the filters.
        seen: list[str] = []
        page = await search(limit=1, status="open")
        while True:
            seen += ids(page)
            if page["next"] is None:
                break
            assert "status=open" in page["next"]
            r = await stack.http.get(page["next"], headers=bearer("analyst"))
            page = r.json()
        assert seen == list(reversed(list(made.values())))
        bad = await stack.http.get("/v1/incidents?cursor=nope", headers=bearer("analyst"))
        assert bad.status_code == 422
        # An analyst who is the incident's subject may not act on it.
        own = await stack.post_detection(
            detection(subject={"tenant": "acme", "user": "analyst-user", "session": "s-own"})
        )
        own_id = own.json()["incident_id"]
        mine = await eventually(lambda: action_of(stack, own_id, "block_session", "applied"))
        r = await act(
            stack.http, f"/v1/incidents/{own_id}/actions/{mine['action_id']}/lift", "analyst"
        )
        assert r.status_code == 403 and "their account" in r.json()["detail"]
        # A block without an expiry (an approved quarantine) is lifted early too.
        q = await stack.post_detection(
            detection(
                technique="AML.T0054",
                subject={"tenant": "acme", "user": "u-q", "session": "s-q"},
                evidence={"prompt": "x", "model": "m-q"},
            )
        )
        q_id = q.json()["incident_id"]
        quarantine = await eventually(
            lambda: action_of(stack, q_id, "quarantine_model", "pending_approval")
        )
        await eventually(lambda: _exists(stack, f"/v1/approvals/{_approval(quarantine)}"))
        ok = await stack.http.post(
            f"/v1/approvals/{_approval(quarantine)}/decision",
            json={"decision": "approve"},
            headers=bearer("approver"),
        )
        assert ok.status_code in (200, 202), ok.text
        await eventually(lambda: blocked(stack, "models", "m-q"), timeout=5)
        applied = await eventually(lambda: action_of(stack, q_id, "quarantine_model", "applied"))
        assert applied["expires_at"] is None and applied["analyst_actions"] == ["lift"]
        release = f"/v1/incidents/{q_id}/actions/{applied['action_id']}/lift"
        r = await act(stack.http, release, "analyst", reason="weights verified clean")
        assert r.status_code == 200, r.text
        assert not await blocked(stack, "models", "m-q")
        assert (await act(stack.http, release, "analyst")).status_code == 409
        one = (await search(severity="high", subject="u-s1"))["incidents"][0]
        assert one["temporal_url"] == (
            "http://temporal-ui.example:8233/namespaces/default/workflows/incident-"
            + made["AML.T0051.000"]
        )
