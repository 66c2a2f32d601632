"""Query values at and beyond their bounds, over real HTTP against the real stack: datetimes
at the edges of the calendar are a 422 naming the parameter (never an OverflowError 500), and
LIKE wildcards in filters match themselves, on the API and in the web UI."""

from __future__ import annotations

import base64
import html
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from temporalio.client import Client

from tests.support import (
    TOKENS,
    Stack,
    bearer,
    detection,
    eventually,
    make_settings,
    running_stack,
)

pytestmark = pytest.mark.timeout(180)

FORMATS = ("json", "jsonl", "csv", "ocsf")
REPORTS = ("/v1/reports/summary", "/v1/reports/atlas-layer")

# Each of these converts to UTC outside datetime's range, or lies outside the query window.
OUT_OF_RANGE = (
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59-12:00",
    "0001-01-01",
    "0001-01-01T00:00:00Z",
    "9999-12-31",
    "9999-12-31T23:59:59.999999Z",
    "1999-12-31T23:59:59Z",
    "2000-01-01T00:00:00+00:01",
    "9000-01-01T00:00:01Z",
    "0",  # a Unix timestamp: 1970
)
IN_RANGE = (
    "2000-01-01T00:00:00Z",
    "2000-01-01T10:00:00+10:00",
    "2000-01-01",
    "2026-11-21T10:15:00-12:00",
    "9000-01-01T00:00:00Z",
    "8999-12-31T23:59:59+14:00",
    "1700000000",
)


@pytest.fixture
async def stack(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> AsyncIterator[Stack]:
    settings = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(settings, temporal_client) as s:
        for user in ("u-50%off", "u_under", "u-back\\slash", "u-plain"):
            body = detection(subject={"tenant": "acme", "user": user})
            r = await s.post_detection(body)
            assert r.status_code == 202, r.text

        async def logged() -> bool:
            r = await s.http.get(
                "/v1/audit", params={"event": "detection.received"}, headers=bearer("auditor")
            )
            return len(r.json()["items"]) == 4

        await eventually(logged, timeout=30)
        yield s


def fields(r: httpx.Response) -> list[str]:
    return [e["field"] for e in r.json()["errors"]]


async def test_datetimes_out_of_range_are_a_422_naming_the_field(stack: Stack) -> None:
    auditor = bearer("auditor")
    for value in OUT_OF_RANGE:
        for field in ("since", "until"):
            for fmt in FORMATS:
                for extra in ({}, {"limit": 10}):
                    params = {field: value, "format": fmt, **extra}
                    r = await stack.http.get("/v1/audit", params=params, headers=auditor)
                    assert r.status_code == 422, (params, r.status_code, r.text)
                    assert f"query.{field}" in fields(r), (params, r.json())
                    assert "2000-01-01" in r.text  # says what is accepted
            for path in REPORTS:
                r = await stack.http.get(path, params={field: value}, headers=auditor)
                assert r.status_code == 422, (path, field, value, r.status_code, r.text)
                assert f"query.{field}" in fields(r), (path, r.json())


async def test_datetimes_at_the_edges_of_the_window_are_answered(stack: Stack) -> None:
    auditor = bearer("auditor")
    for value in IN_RANGE:
        for field in ("since", "until"):
            for fmt in FORMATS:
                params = {field: value, "format": fmt}
                r = await stack.http.get("/v1/audit", params=params, headers=auditor)
                assert r.status_code == 200, (params, r.text)
    # The whole window at once finds every row; the report over it counts every detection.
    unfiltered = await stack.http.get("/v1/audit", headers=auditor)
    r = await stack.http.get(
        "/v1/audit",
        params={"since": "2000-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"},
        headers=auditor,
    )
    assert r.status_code == 200 and r.json()["items"] == unfiltered.json()["items"], r.text
    assert len(r.json()["items"]) >= 4
    for path in REPORTS:
        for params in (
            {"since": "2000-01-01T00:00:00Z"},
            {"until": "9000-01-01T00:00:00Z"},
            {"since": "2000-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"},
            {"until": "2000-02-01"},  # the default 30 days before it: still in the window
            {"since": "8999-12-31T23:59:59+14:00"},  # until defaults to now: earlier
        ):
            r = await stack.http.get(path, params=params, headers=auditor)
            expected = (
                422
                if "since" in params
                and "until" not in params
                and params["since"].startswith("8999")
                else 200
            )
            assert r.status_code == expected, (path, params, r.text)
            if expected == 422:
                assert fields(r) == ["query.until"]
    summary = await stack.http.get(
        "/v1/reports/summary",
        params={"since": "2000-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"},
        headers=auditor,
    )
    assert summary.json()["totals"]["detections"] == 4
    layer = await stack.http.get(
        "/v1/reports/atlas-layer",
        params={"since": "2000-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"},
        headers=auditor,
    )
    assert layer.status_code == 200 and layer.json()["techniques"]


def _subjects(items: list[dict[str, Any]], key: str = "subject") -> set[str]:
    return {i[key] for i in items}


async def test_like_wildcards_match_themselves_in_the_api(stack: Stack) -> None:
    admin = bearer("admin")

    async def incidents(**params: str) -> set[str]:
        r = await stack.http.get("/v1/incidents", params=params, headers=admin)
        assert r.status_code == 200, r.text
        return _subjects(r.json()["incidents"])

    everything = await incidents()
    assert len(everything) == 4
    assert await incidents(subject="%") == {"user:u-50%off"}
    assert await incidents(subject="_") == {"user:u_under"}
    assert await incidents(subject="\\") == {"user:u-back\\slash"}
    assert await incidents(subject="u-%") == set()
    assert await incidents(subject="0%o") == {"user:u-50%off"}
    assert await incidents(subject="plain") == {"user:u-plain"}
    assert await incidents(technique="%") == set()
    assert await incidents(technique="_") == set()
    assert await incidents(technique="AML.T0051") == everything

    async def audit(**params: str) -> list[dict[str, Any]]:
        r = await stack.http.get("/v1/audit", params=params, headers=bearer("auditor"))
        assert r.status_code == 200, r.text
        items: list[dict[str, Any]] = r.json()["items"]
        return items

    assert await audit(technique="%") == []
    assert await audit(technique="_") == []
    assert await audit(technique="AML.T005_") == []
    assert await audit(technique="AML.T0051")
    assert await audit(subject="%") == []  # the audit's subject filter is exact


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


async def test_like_wildcards_match_themselves_in_the_ui(stack: Stack) -> None:
    async with httpx.AsyncClient(base_url=stack.api.url) as http:
        r = await http.get("/ui/login")
        m = _CSRF.search(r.text)
        assert m
        r = await http.post(
            "/ui/login", data={"csrf": html.unescape(m.group(1)), "token": TOKENS["auditor"]}
        )
        assert r.status_code == 303

        async def shown(**params: str) -> set[str]:
            r = await http.get("/ui/incidents", params=params)
            assert r.status_code == 200, (params, r.text)
            page = html.unescape(r.text)
            return {u for u in ("u-50%off", "u_under", "u-back\\slash", "u-plain") if u in page}

        assert len(await shown()) == 4
        assert await shown(subject="%") == {"u-50%off"}
        assert await shown(subject="_") == {"u_under"}
        assert await shown(subject="\\") == {"u-back\\slash"}
        assert await shown(subject="u-%") == set()
        for technique in ("%", "_", "AML.T005%"):
            r = await http.get("/ui/incidents", params={"technique": technique})
            assert r.status_code == 400 and "Technique must" in r.text


async def test_incident_search_dates_and_cursors_at_the_ends_of_time_are_a_400_or_422(
    stack: Stack,
) -> None:
    # The year 9999 (one day added overflows), year 1 at +23:59 in a forged cursor.
    forged = base64.urlsafe_b64encode(
        json.dumps(["0001-01-01T00:00:00+23:59", "x"]).encode()
    ).decode()
    for params in ({"cursor": forged}, {"cursor": "!!"}):
        r = await stack.http.get("/v1/incidents", params=params, headers=bearer("auditor"))
        assert r.status_code == 422, (params, r.status_code, r.text)
    async with httpx.AsyncClient(base_url=stack.api.url) as http:
        r = await http.get("/ui/login")
        m = _CSRF.search(r.text)
        assert m
        r = await http.post(
            "/ui/login", data={"csrf": html.unescape(m.group(1)), "token": TOKENS["analyst"]}
        )
        assert r.status_code == 303
        for params in ({"until": "9999-12-31"}, {"since": "0001-01-01"}, {"cursor": forged}):
            r = await http.get("/ui/incidents", params=params)
            assert r.status_code == 400, (params, r.status_code, r.text)
        page = await http.get("/ui/incidents")
        iid = re.search(r"/ui/incidents/(inc-[0-9a-f]+)", page.text)
        assert iid
        csrf = _CSRF.search((await http.get(f"/ui/incidents/{iid.group(1)}")).text)
        assert csrf
        for minutes in ("\u00b2", "9" * 5000, "-5", "0"):
            r = await http.post(
                f"/ui/incidents/{iid.group(1)}/actions/act-x/extend",
                data={"csrf": html.unescape(csrf.group(1)), "minutes": minutes, "reason": "r"},
            )
            assert r.status_code == 400, (minutes[:10], r.status_code, r.text[:200])
