"""The API's decision body refuses in its comment what every other channel refuses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from soar.api.response import DecisionIn


@pytest.mark.parametrize("bad", ["\ud800", "ok \udfff", "a\x00b", "\x1b[31mred", "\x85", "\x9b2J"])
def test_a_comment_that_cannot_be_stored_or_shown_is_refused(bad: str) -> None:
    with pytest.raises(ValidationError) as caught:
        DecisionIn(decision="approve", comment=bad)
    assert caught.value.errors()[0]["loc"] == ("comment",)


@pytest.mark.parametrize(
    "good", ["ok", "line one\nline two\ttab", "r\u00e9vis\u00e9 \u05e9\u05dc\u05d5\u05dd", None]
)
def test_ordinary_comments_pass(good: str | None) -> None:
    assert DecisionIn(decision="reject", comment=good).comment == good
