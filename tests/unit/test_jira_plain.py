"""Plain Jira fields are cut as Jira counts characters (UTF-16 units, Java's String.length)."""

from __future__ import annotations

import pytest

from soar.escape import jira_plain


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
