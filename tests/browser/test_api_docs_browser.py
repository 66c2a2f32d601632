"""/docs renders in headless Chromium with every request off this machine refused."""

from __future__ import annotations

from typing import Any

import pytest
from temporalio.client import Client

from tests.browser.test_ui_browser import browser  # noqa: F401  (the fixture)
from tests.support import make_settings, running_stack

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]


async def test_swagger_ui_lists_every_route_with_the_network_off(
    browser: Any,  # noqa: F811
    db_url: str,
    temporal_address: str,
    temporal_client: Client,
    task_queue: str,
) -> None:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client, worker=False) as stack:
        page = await browser.new_page()
        off_machine: list[str] = []

        async def only_local(route: Any) -> None:
            url = route.request.url
            if url.startswith(stack.api.url) or url.startswith("data:"):
                await route.continue_()
            else:
                off_machine.append(url)
                await route.abort()

        await page.route("**/*", only_local)
        await page.goto(f"{stack.api.url}/docs")
        await page.wait_for_selector(".opblock", timeout=30_000)
        listed = await page.locator(".opblock-summary-path").all_inner_texts()
        paths = {p.replace("\u200b", "").strip() for p in listed}
        spec = (await stack.http.get("/openapi.json")).json()
        assert set(spec["paths"]) <= paths
        # One operation opened: its answers are listed, 401 and 503 among them.
        await page.locator("#operations-intake-receive_detection_v1_detections_post").click()
        await page.wait_for_selector(".responses-table", timeout=10_000)
        codes = await page.locator(
            "#operations-intake-receive_detection_v1_detections_post .response-col_status"
        ).all_inner_texts()
        assert {"202", "401", "413", "422", "429", "503"} <= {c.strip() for c in codes}
        assert off_machine == []
        await page.close()
