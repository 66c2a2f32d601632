"""Incident search cursors (API and web UI): a forged one is a SearchError, never a 500."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

import pytest

from soar.incident_search import SearchError, decode_cursor


def _cursor(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def test_our_cursor_reads_back() -> None:
    at = datetime(2026, 12, 4, 10, 0, tzinfo=UTC)
    assert decode_cursor(_cursor(json.dumps([at.isoformat(), "inc-1"]).encode())) == (at, "inc-1")


@pytest.mark.parametrize(
    "raw",
    [
        json.dumps(["2026-12-04T10:00:00+00:00", "inc\u0000x"]).encode(),  # NUL: PostgreSQL
        b'["2026-12-04T10:00:00+00:00", "inc\\ud800"]',  # a lone surrogate
        b'["2026-12-04T10:00:00+00:00", "inc\\u001b[2J"]',
        b"[" * 300,  # nested: json recursion
    ],
)
def test_a_forged_cursor_is_a_search_error(raw: bytes) -> None:
    with pytest.raises(SearchError):
        decode_cursor(_cursor(raw))


def test_a_huge_cursor_is_a_search_error() -> None:
    with pytest.raises(SearchError):
        decode_cursor(_cursor(b"[" * 100_000))
