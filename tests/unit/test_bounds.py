"""soar.bounds: time windows, LIKE escaping, unsafe characters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from fastapi.exceptions import RequestValidationError
from sqlalchemy import column, select
from sqlalchemy.dialects import postgresql

from soar import bounds
from soar.bounds import (
    EARLIEST,
    LIKE_ESCAPE,
    QUERY_LATEST,
    check_observed_at,
    check_query_datetime,
    escape_like,
    has_unsafe_chars,
    like_contains,
    like_prefix,
    to_utc,
)

PLUS14 = timezone(timedelta(hours=14))
MINUS12 = timezone(timedelta(hours=-12))
NOW = datetime(2026, 11, 21, 10, 0, tzinfo=UTC)


def test_observed_at_window() -> None:
    assert check_observed_at(EARLIEST, now=NOW) is None
    assert check_observed_at(datetime(2000, 1, 1), now=NOW) is None  # naive is UTC
    assert check_observed_at(NOW + timedelta(hours=23), now=NOW) is None
    assert check_observed_at(NOW + timedelta(days=1), now=NOW) is None
    assert check_observed_at(datetime(2000, 1, 1, 14, tzinfo=PLUS14), now=NOW) is None
    assert check_observed_at(NOW.astimezone(MINUS12), now=NOW) is None
    too_early = check_observed_at(EARLIEST - timedelta(microseconds=1), now=NOW)
    assert too_early == "must not be before 2000-01-01T00:00:00Z"
    # 2000-01-01 00:00 at +14:00 is still 1999 in UTC
    assert check_observed_at(datetime(2000, 1, 1, tzinfo=PLUS14), now=NOW) is not None
    late = check_observed_at(NOW + timedelta(days=1, seconds=1), now=NOW)
    assert late == "must not be more than 1 day in the future"
    # The edges of the calendar, where converting to UTC overflows: a message, no exception.
    assert check_observed_at(datetime(1, 1, 1, tzinfo=PLUS14), now=NOW) is not None
    assert check_observed_at(datetime(9999, 12, 31, 23, 59, tzinfo=MINUS12), now=NOW)
    assert check_observed_at(datetime.min, now=NOW) is not None
    assert check_observed_at(datetime.max.replace(tzinfo=UTC), now=NOW) is not None
    # Default `now` is the current time.
    assert check_observed_at(datetime.now(UTC)) is None


def test_to_utc_never_overflows() -> None:
    assert to_utc(datetime(1, 1, 1, tzinfo=PLUS14)) is None
    assert to_utc(datetime(9999, 12, 31, 23, 59, 59, tzinfo=MINUS12)) is None
    assert to_utc(datetime(2026, 1, 1)) == datetime(2026, 1, 1, tzinfo=UTC)
    assert to_utc(datetime(2026, 1, 1, 14, tzinfo=PLUS14)) == datetime(2026, 1, 1, tzinfo=UTC)


def _errors(exc: pytest.ExceptionInfo[RequestValidationError]) -> list[tuple[object, str]]:
    return [(e["loc"], e["msg"]) for e in exc.value.errors()]


@pytest.mark.parametrize(
    "value",
    [
        datetime(1, 1, 1, tzinfo=PLUS14),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=MINUS12),
        datetime(1, 1, 1),
        datetime(9999, 12, 31, 23, 59, 59, tzinfo=UTC),
        EARLIEST - timedelta(seconds=1),
        QUERY_LATEST + timedelta(seconds=1),
        datetime(1970, 1, 1, tzinfo=UTC),
    ],
)
def test_query_datetime_out_of_the_window_is_a_422_naming_the_field(value: datetime) -> None:
    with pytest.raises(RequestValidationError) as exc:
        check_query_datetime(value, "since")
    [(loc, msg)] = _errors(exc)
    assert loc == ("query", "since")
    assert msg == "must be between 2000-01-01T00:00:00Z and 9000-01-01T00:00:00Z"
    with pytest.raises(RequestValidationError) as exc:
        check_query_datetime(value, "observed_at", location="body")
    assert _errors(exc)[0][0] == ("body", "observed_at")


def test_query_datetime_in_the_window_comes_back_in_utc() -> None:
    assert check_query_datetime(None, "since") is None
    assert check_query_datetime(EARLIEST, "since") == EARLIEST
    assert check_query_datetime(QUERY_LATEST, "until") == QUERY_LATEST
    naive = check_query_datetime(datetime(2026, 11, 21, 10), "until")
    assert naive == NOW and naive is not None and naive.tzinfo is UTC
    east = check_query_datetime(datetime(2026, 11, 22, tzinfo=PLUS14), "until")
    assert east == NOW and east is not None and east.utcoffset() == timedelta(0)


def test_invalid_has_the_api_shape() -> None:
    exc = bounds.invalid("until", "must be later than since")
    assert exc.errors() == [
        {
            "type": "value_error",
            "loc": ("query", "until"),
            "msg": "must be later than since",
            "input": None,
        }
    ]


def test_like_helpers_escape_every_wildcard() -> None:
    assert escape_like("a%b_c\\d") == "a\\%b\\_c\\\\d"
    assert like_prefix("%") == "\\%%"
    assert like_contains("_") == "%\\_%"
    assert like_prefix("AML.T0051.") == "AML.T0051.%"
    assert like_contains("") == "%%"


def _matches(pattern: str, value: str) -> bool:
    """LIKE semantics with escape '\\', for checking the helpers without a database."""
    import re

    out, i = "", 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == LIKE_ESCAPE:
            i += 1
            out += re.escape(pattern[i])
        elif ch == "%":
            out += ".*"
        elif ch == "_":
            out += "."
        else:
            out += re.escape(ch)
        i += 1
    return re.fullmatch(out, value, re.DOTALL) is not None


@pytest.mark.parametrize("needle", ["%", "_", "\\", "a%", "\\%", "50%_off", "x\\_y"])
def test_like_patterns_match_only_literally(needle: str) -> None:
    assert _matches(like_contains(needle), f"pre{needle}post")
    assert _matches(like_prefix(needle), f"{needle}tail")
    assert not _matches(like_contains(needle), "something else entirely")
    assert not _matches(like_prefix(needle), "zz" + needle)


def test_like_pattern_compiles_with_the_escape() -> None:
    q = select(column("subject")).where(
        column("subject").like(like_contains("a%"), escape=LIKE_ESCAPE)
    )
    sql = str(q.compile(dialect=postgresql.dialect()))
    assert "ESCAPE '\\'" in sql or "ESCAPE '\\\\'" in sql


@pytest.mark.parametrize(
    "value",
    [
        "a\x00b",
        "\x1b[31m",
        "tab\there",
        "new\nline",
        "cr\r",
        "del\x7f",
        "c1\x85",
        "\x9f",
        "evil\u202egnp.exe",
        "\u202a",
        "\u202b",
        "\u202c",
        "\u202d",
        "\u2066",
        "\u2067",
        "\u2068",
        "\u2069",
        "\u200e",
        "\u200f",
        "\u061c",
    ],
)
def test_unsafe_in_identifiers(value: str) -> None:
    assert has_unsafe_chars(value)


@pytest.mark.parametrize(
    "value",
    [
        "u-42",
        "ünïcödé 漢字",
        "\U0001f600 emoji",
        "שלום",
        "مرحبا",
        "<script>",
        "=cmd|' /C calc'!A0",
        "[~admin]",
        "!img.png!",
        "a'b\"c",
        "",
    ],
)
def test_safe_values(value: str) -> None:
    assert not has_unsafe_chars(value)
    assert not has_unsafe_chars(value, text=True)


def test_text_allows_tab_and_newlines_only() -> None:
    assert not has_unsafe_chars("line one\r\nline two\tend", text=True)
    assert has_unsafe_chars("line one\r\nline two", text=False)
    for bad in ("\x00", "\x0b", "\x0c", "\x1b", "\x7f", "\x80", "\u202e", "\u2066"):
        assert has_unsafe_chars(f"text {bad} text", text=True), repr(bad)
