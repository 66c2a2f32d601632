"""Identifiers of a detection (subject, id, source, model) are one line of printable text."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from soar.intake.schema import NativeDetection, SubjectIn


@pytest.mark.parametrize("sep", ["\u2028", "\u2029", "\x85"])
def test_intake_refuses_a_line_separator_in_an_identifier(sep: str) -> None:
    with pytest.raises(ValidationError, match="line-separator"):
        SubjectIn(session=f"s-9{sep}Approved by security team")
    with pytest.raises(ValidationError, match="line-separator"):
        NativeDetection(
            id=f"det{sep}1",
            technique="AML.T0051",
            severity="high",
            confidence=0.9,
            subject={"user": "u-1"},
        )


def test_intake_keeps_other_unicode_in_an_identifier() -> None:
    assert SubjectIn(session="s-9\u00e9\u6f22").session == "s-9\u00e9\u6f22"
