"""Plain Jira fields are cut as Jira counts characters (UTF-16 units, Java's String.length)."""

from __future__ import annotations

import pytest

from soar.escape import jira_plain, jira_wiki


def _units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


@pytest.mark.parametrize(
    "text", ["\U0001f600" * 300, "a\U0001f600" * 200, "\U0001f600" * 127 + "ab", "x" * 300]
)
def test_a_summary_of_astral_characters_fits_jiras_limit(text: str) -> None:
    got = jira_plain(text, 255)
    assert _units(got) <= 255
    assert got.endswith("\u2026") == (_units(text) > 255)
    assert text.startswith(got.removesuffix("\u2026"))


def test_a_short_summary_is_kept_whole() -> None:
    assert jira_plain("AML.T0051 on session s-1 \U0001f600", 255) == (
        "AML.T0051 on session s-1 \U0001f600"
    )


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("(/) Approved by the security team", "\\(/) Approved by the security team"),
        ("(x) (y) (n) (i) (on) (flag)", "\\(x) \\(y) \\(n) \\(i) \\(on) \\(flag)"),
        ("all good :) ;)", "all good \\:) \\;)"),
        ("time 10:30 (PDT)", "time 10:30 (PDT)"),
    ],
)
def test_jira_emoticons_in_attacker_text_stay_text(text: str, shown: str) -> None:
    assert jira_wiki(text) == shown


def test_a_mailto_link_is_not_live_in_jira() -> None:
    assert "mailto:" not in jira_wiki("write to mailto:eve@evil.example")
