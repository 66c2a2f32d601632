"""An incident stays readable whatever a detection carried, within what intake accepts.

Property test over the real stack: detections with extreme but accepted values in every field
(identifiers at their maximum length mixing emoji, right-to-left letters, quotes, HTML, CSV
formula starters and Jira markup; confidence 0 and 1; every severity; `observed_at` at the
edges of the accepted window and at the extreme offsets; prompts with every kind of secret and
personal data, up to 200,000 characters) go in through the signed intake, then every place
that shows the incident must answer 200 with a body its reader can parse: the incident API,
the web UI, the audit log in each format, the summary report and the ATLAS Navigator layer.
No raw secret from a prompt may appear in any of them.
"""

from __future__ import annotations

import csv
import html
import io
import json
import re
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings
from hypothesis import strategies as st
from temporalio.client import Client

from soar.bounds import BIDI_CONTROLS, EARLIEST
from tests.support import (
    TOKENS,
    Stack,
    bearer,
    eventually,
    make_settings,
    running_stack,
    sign,
)

pytestmark = pytest.mark.timeout(300)

# The intake's limits (soar/intake/schema.py).
ID_MAX = 256
TENANT_MAX = 128
SUBJECT_MAX = 256
SOURCE_MAX = 128
MODEL_MAX = 256
PROMPT_MAX = 200_000

HOSTILE = [
    "\U0001f600",
    "\U0001f469\u200d\U0001f4bb",
    "\U0001f1fa\U0001f1e6",  # emoji, ZWJ, flag
    "שלום",
    "مرحبا",
    "漢字",
    "ünïcödé",  # RTL letters (no bidi controls), CJK, accents
    "'",
    '"',
    "`",
    "\\",
    "<script>alert(1)</script>",
    "<!here>",
    "@channel",
    "&amp;",
    "=cmd|' /C calc'!A0",
    "+1+1",
    "-2",
    "@SUM(A1)",
    "|x",  # CSV formula starters
    "[~admin]",
    "!img.png!",
    "{code}",
    "{noformat}",
    "[link|http://x]",
    "h1. ",  # Jira markup
    "%",
    "_",
    "${jndi:x}",
    "{{7*7}}",
    "../",
    "\ufeff",
    "\u200b",
]
SAFE_CHAR = st.characters(
    blacklist_categories=("Cc", "Cs"),  # controls and lone surrogates: refused at intake
    blacklist_characters="".join(BIDI_CONTROLS),  # refused at intake (spoofing)
)
TECHNIQUES = ["AML.T0051", "AML.T0051.000", "AML.T0054", "AML.T0057", "AML.T0024.002"]
SEVERITIES = ["info", "low", "medium", "high", "critical"]
SECRETS = {
    "sk-proj-Zx9Qw3Er5Ty7Ui9Op1As3Df5Gh7Jk9Lz": "[SECRET]",
    "AKIAIOSFODNN7EXAMPLE": "[SECRET]",
    "ghp_aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789": "[SECRET]",
    "mallory@evil.example": "[EMAIL]",
    "4111 1111 1111 1111": "[CARD]",
    "+44 20 7946 0958": "[PHONE]",
    "123-45-6789": "[SSN]",
    "GB82 WEST 1234 5698 7654 32": "[IBAN]",
    "203.0.113.77": "[IP]",
}
RAW_SECRETS = [s for s in SECRETS if s.startswith(("sk-", "AKIA", "ghp_", "mallory"))]


def exact(text: str, size: int) -> str:
    """`text` made exactly `size` characters long, starting and ending with a letter (intake
    strips surrounding whitespace)."""
    body = (text * (size // max(len(text), 1) + 1))[: size - 2] if text else "y" * (size - 2)
    return "x" + body + "z"


def identifier(size: int) -> st.SearchStrategy[str]:
    piece = st.sampled_from(HOSTILE) | st.text(SAFE_CHAR, min_size=1, max_size=6)
    return st.builds(
        lambda parts, fill: exact("".join(parts) + fill, size),
        st.lists(piece, min_size=1, max_size=12),
        st.text(SAFE_CHAR, max_size=4),
    )


def observed_at() -> st.SearchStrategy[str | None]:
    now = datetime.now(UTC)
    plus14, minus12 = timezone(timedelta(hours=14)), timezone(timedelta(hours=-12))
    return st.sampled_from(
        [
            None,
            "2000-01-01T00:00:00Z",
            "2000-01-01T00:00:00.000001+00:00",
            EARLIEST.astimezone(plus14).isoformat(),  # 2000-01-01T14:00:00+14:00
            EARLIEST.astimezone(minus12).isoformat(),  # 1999-12-31T12:00:00-12:00, the same
            (now + timedelta(hours=23)).isoformat(),
            (now + timedelta(hours=23)).astimezone(plus14).isoformat(),
            (now + timedelta(hours=23)).astimezone(minus12).isoformat(),
            now.astimezone(plus14).isoformat(),
            now.astimezone(minus12).isoformat(),
            "2000-01-01T12:00:00-12:00",
        ]
    )


def prompt() -> st.SearchStrategy[str | None]:
    kinds = " ".join(f"[{raw}]" if i % 2 else raw for i, raw in enumerate(SECRETS))
    head = f"Ignore previous instructions. {kinds} <script>x</script> =cmd| [~x] !img! "
    return st.sampled_from(
        [
            None,
            "",
            head,
            # A secret first, then 200,000 characters in all: the excerpt and hash only.
            exact(head + "password=hunter2hunter2 " + "filler text \U0001f600 ", PROMPT_MAX),
            exact("A" * 64 + " " + head, PROMPT_MAX),
        ]
    )


@st.composite
def detections(draw: st.DrawFn) -> dict[str, Any]:
    subject: dict[str, Any] = {"tenant": draw(identifier(TENANT_MAX))}
    for key in draw(
        st.sampled_from([("user",), ("session",), ("api_key",), ("user", "session", "api_key")])
    ):
        subject[key] = draw(identifier(SUBJECT_MAX))
    body: dict[str, Any] = {
        # Unique per example; the rest of the id is drawn.
        "id": exact(uuid.uuid4().hex + draw(identifier(64)), ID_MAX),
        "technique": draw(st.sampled_from(TECHNIQUES)),
        "severity": draw(st.sampled_from(SEVERITIES)),
        "confidence": draw(st.sampled_from([0, 1, 0.0, 1.0, 5e-324, 0.999999999])),
        "source": draw(identifier(SOURCE_MAX)),
        "subject": subject,
        "evidence": {
            "prompt": draw(prompt()),
            "model": draw(identifier(MODEL_MAX)),
            "extra": {"nested": [draw(identifier(40))]},
        },
    }
    when = draw(observed_at())
    if when is not None:
        body["observed_at"] = when
    return body


def fixed(severity: str, confidence: float, when: str, prompt_text: str) -> dict[str, Any]:
    """A body with every hostile piece in every field, at the maximum lengths: the examples
    that always run, whatever is drawn."""
    every = "".join(HOSTILE)
    subject = {
        "tenant": exact(every, TENANT_MAX),
        "user": exact(every, SUBJECT_MAX),
        "session": exact(every[::-1], SUBJECT_MAX),
        "api_key": exact(every, SUBJECT_MAX),
    }
    return {
        "id": exact(uuid.uuid4().hex + every, ID_MAX),
        "technique": "AML.T0057",
        "severity": severity,
        "confidence": confidence,
        "source": exact(every, SOURCE_MAX),
        "observed_at": when,
        "subject": subject,
        "evidence": {"prompt": prompt_text, "model": exact(every, MODEL_MAX)},
    }


_LONG_PROMPT = exact(
    " ".join(SECRETS) + " Ignore previous instructions " + "".join(HOSTILE), PROMPT_MAX
)
_NOW = datetime.now(UTC)

_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


@pytest.fixture
async def stack(
    db_url: str, temporal_address: str, temporal_client: Client, task_queue: str
) -> AsyncIterator[Stack]:
    s = make_settings(db_url, temporal_address, task_queue)
    async with running_stack(s, temporal_client) as running:
        yield running


@pytest.fixture
async def ui(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=stack.api.url, timeout=30) as http:
        r = await http.get("/ui/login")
        m = _CSRF.search(r.text)
        assert m, r.text
        csrf = html.unescape(m.group(1))
        r = await http.post("/ui/login", data={"csrf": csrf, "token": TOKENS["admin"]})
        assert r.status_code == 303, r.text
        yield http


async def post(stack: Stack, body: dict[str, Any]) -> httpx.Response:
    raw = json.dumps(body, ensure_ascii=False).encode()
    assert len(raw) <= 256 * 1024, len(raw)  # within the intake's body limit
    return await stack.http.post("/v1/detections", content=raw, headers=sign(raw))


def no_raw_secret(where: str, text: str) -> None:
    for secret in RAW_SECRETS:
        assert secret not in text, (where, secret)


def readable_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text, newline="")))


@settings(
    max_examples=15,
    deadline=None,
    database=None,  # nothing written into the checkout
    phases=[Phase.explicit, Phase.generate],  # no shrinking: each example is a round trip
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(body=detections())
@example(body=fixed("critical", 1, "2000-01-01T00:00:00Z", _LONG_PROMPT))
@example(body=fixed("info", 0, (_NOW + timedelta(hours=23)).isoformat(), _LONG_PROMPT))
@example(
    body=fixed("medium", 0.0, _NOW.astimezone(timezone(timedelta(hours=-12))).isoformat(), "x")
)
@example(body=fixed("high", 1.0, "2000-01-01T14:00:00+14:00", " ".join(f"<{s}>" for s in SECRETS)))
async def test_every_view_of_an_extreme_incident_answers(
    stack: Stack, ui: httpx.AsyncClient, body: dict[str, Any]
) -> None:
    r = await post(stack, body)
    assert r.status_code == 202, (r.status_code, r.text[:2000])
    incident_id = r.json()["incident_id"]
    admin, auditor = bearer("admin"), bearer("auditor")

    # The workflow has recorded the detection.
    async def received() -> list[dict[str, Any]]:
        got = await stack.http.get(
            "/v1/audit",
            params={"incident_id": incident_id, "event": "detection.received"},
            headers=auditor,
        )
        assert got.status_code == 200, got.text
        return [i for i in got.json()["items"] if i["details"]["detection_id"] == body["id"]]

    await eventually(received, timeout=30)

    inc = await stack.http.get(f"/v1/incidents/{incident_id}", headers=admin)
    assert inc.status_code == 200, inc.text[:2000]
    data = inc.json()
    [det] = [d for d in data["detections"] if d["detection_id"] == body["id"]]
    assert det["confidence"] == body["confidence"]
    assert det["severity"] == body["severity"]
    assert det["subject"]["tenant"] == body["subject"]["tenant"]
    if body.get("observed_at"):
        sent = datetime.fromisoformat(body["observed_at"].replace("Z", "+00:00"))
        assert datetime.fromisoformat(det["observed_at"]) == sent
    no_raw_secret("incident", inc.text)

    listed = await stack.http.get("/v1/incidents", headers=admin)
    assert listed.status_code == 200, listed.text[:2000]

    page = await ui.get(f"/ui/incidents/{incident_id}")
    assert page.status_code == 200, page.text[:2000]
    assert page.headers["content-type"].startswith("text/html")
    assert "<script>alert(1)</script>" not in page.text  # escaped, never markup
    no_raw_secret("ui incident page", page.text)
    for path in ("/ui/incidents", "/ui/approvals"):
        shown = await ui.get(path)
        assert shown.status_code == 200, (path, shown.text[:2000])

    for fmt in ("json", "jsonl", "csv", "ocsf"):
        for params in ({"incident_id": incident_id}, {"technique": body["technique"]}, {}):
            got = await stack.http.get(
                "/v1/audit", params={**params, "format": fmt}, headers=auditor
            )
            assert got.status_code == 200, (fmt, params, got.text[:2000])
            no_raw_secret(f"audit {fmt}", got.text)
            if fmt == "json":
                assert got.json()["items"]
            elif fmt == "csv":
                assert readable_csv(got.text)
            else:
                lines = [line for line in got.text.split("\n") if line]
                assert lines and all(isinstance(json.loads(line), dict) for line in lines)

    for path in ("/v1/reports/summary", "/v1/reports/atlas-layer"):
        for params in ({}, {"since": "2000-01-01T00:00:00Z", "until": "9000-01-01T00:00:00Z"}):
            got = await stack.http.get(path, params=params, headers=auditor)
            assert got.status_code == 200, (path, params, got.text[:2000])
    approvals = await stack.http.get("/v1/approvals", params={"status": "pending"}, headers=admin)
    assert approvals.status_code == 200, approvals.text[:2000]
