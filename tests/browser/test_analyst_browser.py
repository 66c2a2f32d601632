"""An analyst in a real headless Chromium: finds the incident, lifts its block early (the
enforcement check says unblocked at once, the timer does nothing later, the log says who and
why), then closes it as a false positive, which the search and the report show."""

from __future__ import annotations

import asyncio
import tempfile
from pathlib import Path
from typing import Any

import psycopg
import pytest
from temporalio.client import Client

from tests.browser.test_ui_browser import _new_page, browser  # noqa: F401 (a fixture)
from tests.support import TOKENS, bearer, detection, eventually, make_settings, running_stack

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

PLAYBOOK = """
name: short
rules:
  - name: contain
    when: {techniques: ["AML.T0051*"], severity_at_least: medium}
    actions:
      - {type: block_session, risk: low, duration: 5s}
"""


async def test_analyst_lifts_a_block_early_then_closes_as_false_positive(
    browser: Any,  # noqa: F811
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
) -> None:
    from playwright.async_api import expect

    pb = Path(tempfile.mkdtemp()) / "pb.yaml"
    pb.write_text(PLAYBOOK)
    settings = make_settings(db_url, temporal_address, task_queue, policy_file=pb)
    async with running_stack(settings, temporal_client) as stack:
        r = await stack.post_detection(
            detection(subject={"tenant": "acme", "user": "u-77", "session": "s-77"})
        )
        incident_id = r.json()["incident_id"]

        async def blocked() -> bool:
            return bool((await stack.enforcement("sessions", "s-77"))["blocked"])

        await eventually(blocked, timeout=5)

        page = await _new_page(browser)
        await page.goto(f"{stack.api.url}/ui/login")
        await page.get_by_label("API token", exact=True).fill(TOKENS["analyst"])
        await page.get_by_role("button", name="Sign in with token").click()
        await page.goto(f"{stack.api.url}/ui/incidents")
        await page.get_by_label("Subject").fill("u-77")
        await page.get_by_label("Severity").select_option("high")
        await page.get_by_role("button", name="Search").click()
        await page.get_by_role("link", name=incident_id).click()
        await expect(page.get_by_role("heading", level=1)).to_contain_text(incident_id)
        await expect(page.get_by_role("link", name="open in Temporal UI")).to_have_attribute(
            "href", f"http://localhost:8233/namespaces/default/workflows/incident-{incident_id}"
        )

        row = page.get_by_role("region", name="Actions", exact=True).get_by_role("row")
        block = row.filter(has_text="s-77")
        await block.get_by_label("Why lift it").fill("their own red team, confirmed by phone")
        await block.get_by_role("button", name="Lift now").click()
        await expect(page.get_by_role("status")).to_contain_text("Lift: lifted by analyst-user")
        assert not await blocked()  # at once: no waiting for the timer
        lifted = page.locator("ol.timeline li.ev-action-rolled_back")
        await expect(lifted).to_contain_text("by analyst-user")
        await expect(lifted).to_contain_text("their own red team, confirmed by phone")

        # The 5-second timer does nothing later: still one lift, still unblocked.
        await asyncio.sleep(5.5)
        with psycopg.connect(db_url) as c:
            lifts = c.execute(
                "SELECT actor FROM action_log WHERE event = 'action.rolled_back' "
                "AND incident_id = %s",
                (incident_id,),
            ).fetchall()
        assert lifts == [("analyst-user",)]
        assert not await blocked()

        # Contain now puts the block back at once; a note lands in the log.
        await block.get_by_role("button", name="Contain now").click()
        await expect(page.get_by_role("status")).to_contain_text("Contain now: applied by")
        assert await blocked()
        await page.locator("#note-text").fill("called the customer <back soon>")
        await page.get_by_role("button", name="Add note").click()
        await expect(page.locator("ol.timeline li.ev-incident-note")).to_contain_text(
            "called the customer <back soon>"
        )

        await page.get_by_label("Disposition", exact=True).select_option("false_positive")
        await page.get_by_label("Reason").fill("authorised test")
        await page.get_by_role("button", name="Close incident").click()
        await expect(page.get_by_role("status")).to_contain_text("Close: closed by analyst-user")
        await expect(page.locator("#disposition")).to_contain_text("False positive")
        assert not await blocked()  # a false positive's blocks are lifted

        await page.goto(f"{stack.api.url}/ui/incidents?disposition=false_positive")
        await expect(page.get_by_role("link", name=incident_id)).to_be_visible()
        report = await stack.http.get("/v1/reports/summary", headers=bearer("auditor"))
        assert report.json()["totals"]["dispositions"]["false_positive"] == 1
