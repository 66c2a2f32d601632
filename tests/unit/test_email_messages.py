"""The approval mail: plain text, attacker-influenced values defanged, one-line headers, and
the outcome in the same sentence as Slack's."""

from __future__ import annotations

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
    assert "https://evil" not in body and "https[:]//evil.example/login" in body
    assert "www[.]evil.example" in body and "\u202e" not in body
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
