"""The approval mail: plain text, attacker-influenced values defanged, one-line headers, and
the outcome in the same sentence as Slack's."""

from __future__ import annotations

import time

import pytest

from approvals import slack_blocks
from approvals.channels import Outcome, outcome_sentence
from approvals.email import approval_body, header_text, outcome_body, subject_of, untrusted
from soar.connectors import ApprovalBrief, IncidentBrief, Vote


def brief(**over: object) -> ApprovalBrief:
    incident = IncidentBrief(
        incident_id="inc-1",
        tenant="acme",
        subject="user:u-1\r\nBcc: everyone@example.com",
        technique="AML.T0051",
        technique_name="LLM Prompt Injection",
        tactic=None,
        tactic_name=None,
        severity="critical",
        risk_score=90.0,
        excerpt="Visit https://evil.example/login or www.evil.example \u202egnp.exe now",
        url="http://soar.example.com/ui/incidents/inc-1",
    )
    values: dict[str, object] = {
        "approval_id": "apr-1",
        "action_type": "revoke_api_key",
        "target": "k-1 javascript:alert(1)",
        "expires_at": "2026-11-21T14:15:00+00:00",
        "incident": incident,
    }
    values.update(over)
    return ApprovalBrief(**values)  # type: ignore[arg-type]


def test_values_from_a_detection_carry_no_live_link_no_control_character() -> None:
    body = approval_body(brief(), "http://soar.example.com/approvals/email/tok", "later")
    assert "https://evil" not in body and "https[:]//evil[.]example/login" in body
    assert "www[.]evil[.]example" in body and "\u202e" not in body
    assert "javascript[:]alert(1)" in body
    # Our own link stays a link.
    assert "\nhttp://soar.example.com/approvals/email/tok\n" in body
    assert untrusted("x" * 2000, 100).endswith("\u2026") and len(untrusted("x" * 2000, 100)) == 100


def test_the_subject_is_one_line_whatever_the_subject_holds() -> None:
    subject = subject_of(brief())
    assert "\r" not in subject and "\n" not in subject
    assert subject.startswith("Approval needed: Revoke API key k-1 javascript[:]alert(1)")
    assert "\n" not in header_text("a\nb\rc")


def test_the_outcome_mail_says_what_slack_says() -> None:
    a = brief(
        target="k-1",
        quorum=2,
        votes=(
            Vote("alice", "email", "2026-11-21T10:00:00+00:00", "alice"),
            Vote("bob (slack:U1)", "slack", "2026-11-21T10:01:00+00:00", "bob"),
        ),
    )
    outcome = Outcome("approved", "bob (slack:U1)", "2026-11-21T10:01:00+00:00")
    sentence = outcome_sentence(a, outcome)
    assert sentence == (
        "Approved by alice, bob (slack:U1) at 2026-11-21T10:01:00+00:00: Revoke API key k-1"
    )
    assert outcome_body(a, outcome).splitlines()[0] == sentence + "."
    assert slack_blocks.outcome_text(a, "approved", outcome.by, outcome.at) == sentence
    expired = outcome_sentence(a, Outcome("expired", None, "2026-11-21T14:15:00+00:00"))
    assert expired.endswith("Revoke API key k-1, not taken")


FAKE_LINE = "https://evil.example/approve\u2028Approved by security team: www.evil.example"


def test_the_outcome_body_renders_the_target_as_untrusted_text() -> None:
    a = brief(target=FAKE_LINE)
    at = "2026-11-21T10:01:00+00:00"
    for outcome in (Outcome("rejected", "alice", at), Outcome("pending", "alice", at)):
        body = outcome_body(a, outcome)
        first = body.splitlines()[0]
        assert "https://" not in body and "www.evil" not in body and "\u2028" not in body
        assert "https[:]//evil[.]example/approve Approved by security team" in first
        # No line of its own: the body has as many lines as for a harmless target.
        assert len(body.splitlines()) == len(outcome_body(brief(), outcome).splitlines())
        assert not any(line.startswith("Approved by security") for line in body.splitlines())


def test_unicode_line_separators_are_no_line_breaks() -> None:
    for sep in ("\u2028", "\u2029", "\x85", "\r", "\x0b", "\x0c", "\x1c"):
        one = untrusted(f"k-1{sep}Approved by security team")
        assert one.splitlines() == [one], repr(sep)
        assert header_text(f"a{sep}b") == "a b"
    excerpt = untrusted("line one\nline two\u2028fake line", 1000)
    assert excerpt.splitlines() == ["line one", "line two fake line"]


@pytest.mark.parametrize(
    "hostile",
    [
        "_https://evil.example",
        "x1https://evil.example",
        "XHTTP://evil.example",
        "see:https://evil.example",
        "ftps://evil.example",
        "smb://evil.example/share",
        "fjavascript:alert(1)",
        "_mailto:eve@evil.example",
    ],
)
def test_a_scheme_is_defanged_wherever_it_starts(hostile: str) -> None:
    clean = untrusted(hostile)
    assert "://" not in clean and "javascript:" not in clean and "mailto:" not in clean
    assert "[:]" in clean


@pytest.mark.parametrize(
    ("hostile", "defanged"),
    [
        ("evil.example/path", "evil[.]example/path"),
        ("go to login.evil.co.uk now", "go to login[.]evil[.]co[.]uk now"),
        ("_www.evil.example", "_www[.]evil[.]example"),
        ("eve@evil.example", "eve@evil[.]example"),
        ("evil.example:8443/x", "evil[.]example:8443/x"),
        ("b\u00fccher.example", "b\u00fccher[.]example"),
    ],
)
def test_bare_host_names_are_defanged(hostile: str, defanged: str) -> None:
    assert untrusted(hostile) == defanged


def test_ordinary_text_is_left_alone() -> None:
    for text in (
        "AML.T0051.000 and AML.TA0010",
        "Severity is high. Next: rotate the key, e.g. today.",
        "model gpt-4.1 at 2026-11-21T10:01:00.123+00:00, score 87.5",
        "block_session s-9, user:u-1 (tenant acme)",
    ):
        assert untrusted(text) == text


def test_defanging_is_bounded_whatever_the_input() -> None:
    for hostile in ("a." * 200_000, "https:" * 100_000, "x" * 500_000 + ".example"):
        started = time.perf_counter()
        clean = untrusted(hostile, 1000)
        assert len(clean) <= 1000 and time.perf_counter() - started < 1.0
