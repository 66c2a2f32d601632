"""Boundary values for input from outside, in one place: the time windows a datetime must fall
in, LIKE patterns built from user text, and the characters refused in identifiers.

Every value checked here is attacker-written. The checks never raise anything but the API's
422 (`check_query_datetime`) and never echo the value back.

LIKE patterns: escape with the one helper and pass the same escape character every time::

    from soar.bounds import LIKE_ESCAPE, like_contains, like_prefix

    q = q.where(Incident.technique.like(like_prefix(technique), escape=LIKE_ESCAPE))
    q = q.where(Incident.subject_key.like(like_contains(subject), escape=LIKE_ESCAPE))

so `%`, `_` and `\\` in the user's text match themselves, never "anything".
"""

from __future__ import annotations

import hashlib
import re
from datetime import UTC, datetime, timedelta

from fastapi.exceptions import RequestValidationError

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)
"""Nothing this system stores happened before this: the lower bound of `observed_at` and of
every query's `since` / `until`."""

OBSERVED_FUTURE = timedelta(days=1)
"""How far in the future an `observed_at` may be (clock skew of a source, time zones)."""

QUERY_LATEST = datetime(9000, 1, 1, tzinfo=UTC)
"""The upper bound of a query's `since` / `until`: far beyond any data, far from the year
9999 where adding an offset or a default period overflows."""

LIKE_ESCAPE = "\\"


def invalid(field: str, message: str, *, location: str = "query") -> RequestValidationError:
    """A 422 in the API's error shape, `{"error", "errors": [{"field", "message"}]}`, with the
    field named `location.field` (e.g. `query.since`, `body.observed_at`)."""
    return RequestValidationError(
        [{"type": "value_error", "loc": (location, field), "msg": message, "input": None}]
    )


def to_utc(value: datetime) -> datetime | None:
    """`value` in UTC (a value without an offset is UTC), or None when the conversion would
    leave the datetime range (year 1 at +14:00, year 9999 at -12:00)."""
    if value.tzinfo is None or value.utcoffset() is None:
        return value.replace(tzinfo=UTC)
    try:
        return value.astimezone(UTC)
    except OverflowError:
        return None


def _day(at: datetime) -> str:
    return at.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_observed_at(value: datetime, *, now: datetime | None = None) -> str | None:
    """Why `value` is not an acceptable `observed_at` (the message for a 422 naming the field),
    or None: not before `EARLIEST`, not more than `OBSERVED_FUTURE` ahead of `now` (default:
    the current time). A value without an offset is UTC."""
    at = to_utc(value)
    window = f"must be between {_day(EARLIEST)} and 1 day from now"
    if at is None:
        return window
    if at < EARLIEST:
        return f"must not be before {_day(EARLIEST)}"
    latest = (now or datetime.now(UTC)) + OBSERVED_FUTURE
    if at > latest:
        return "must not be more than 1 day in the future"
    return None


def query_datetime_error(value: datetime) -> str | None:
    """Why `value` cannot be a query bound (`since`, `until`), or None."""
    at = to_utc(value)
    if at is None or not EARLIEST <= at <= QUERY_LATEST:
        return f"must be between {_day(EARLIEST)} and {_day(QUERY_LATEST)}"
    return None


def check_query_datetime(
    value: datetime | None, field: str, *, location: str = "query"
) -> datetime | None:
    """`value` in UTC (naive means UTC), None for None; a 422 naming `field` when it is out of
    the query window [`EARLIEST`, `QUERY_LATEST`]."""
    if value is None:
        return None
    message = query_datetime_error(value)
    if message is not None:
        raise invalid(field, message, location=location)
    at = to_utc(value)
    assert at is not None  # checked above
    return at


# --- LIKE patterns -------------------------------------------------------------------------


def escape_like(text: str) -> str:
    """`text` with LIKE's wildcards (`%`, `_`) and the escape character itself escaped, for
    `column.like(..., escape=LIKE_ESCAPE)`."""
    return (
        text.replace(LIKE_ESCAPE, LIKE_ESCAPE * 2)
        .replace("%", LIKE_ESCAPE + "%")
        .replace("_", LIKE_ESCAPE + "_")
    )


def like_prefix(text: str) -> str:
    """A pattern matching values that start with `text`, literally. Use with
    `escape=LIKE_ESCAPE`."""
    return escape_like(text) + "%"


def like_contains(text: str) -> str:
    """A pattern matching values that contain `text`, literally. Use with
    `escape=LIKE_ESCAPE`."""
    return "%" + escape_like(text) + "%"


# --- characters ------------------------------------------------------------------------------

BIDI_CONTROLS = frozenset(
    "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
)
"""Bidirectional marks, embeddings, overrides and isolates: they make a value display as
something else than it is (`session-evil` shown as `session-live`)."""

_BIDI = "".join(sorted(BIDI_CONTROLS))
# C0 and C1 controls, and lone surrogates (text that cannot be stored or sent as UTF-8).
_C0_C1 = "\x00-\x1f\x7f-\x9f\ud800-\udfff"
_C0_C1_BUT_WHITESPACE = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff"  # keeps \t \n \r
_PATTERNS = {
    (False, True): re.compile(f"[{_C0_C1}{_BIDI}]"),
    (True, True): re.compile(f"[{_C0_C1_BUT_WHITESPACE}{_BIDI}]"),
    (False, False): re.compile(f"[{_C0_C1}]"),
    (True, False): re.compile(f"[{_C0_C1_BUT_WHITESPACE}]"),
}


def has_unsafe_chars(value: str, *, text: bool = False, bidi: bool = True) -> bool:
    """True when `value` holds a C0 or C1 control character (NUL, ESC, DEL, ...), a lone
    surrogate, or, unless
    `bidi=False`, a bidirectional control (`BIDI_CONTROLS`).

    `text=True` is for free text (comments): tab, line feed and carriage return are allowed
    there; identifiers allow none of them. `bidi=False` is for prose people type, where a
    right-to-left keyboard may insert marks; identifiers never need them."""
    return _PATTERNS[(text, bidi)].search(value) is not None


def unsafe_identifier(value: str) -> bool:
    """What the intake refuses in an identifier (a subject's tenant, user, session, API key):
    controls, lone surrogates, bidi controls, and the line separators U+2028 / U+2029 (a line
    break in mail clients, editors and JavaScript)."""
    return has_unsafe_chars(value) or "\u2028" in value or "\u2029" in value


IDENTIFIER_MAX = 256  # a subject's user, session or API key, as the intake takes it
TENANT_MAX = 128
_HASHED = "h:"


def canonical_id(value: str | None, limit: int = IDENTIFIER_MAX) -> str | None:
    """The identifier as the intake stores it, for a value a gateway read from a request
    (an attacker's header): stripped of surrounding whitespace (as the intake strips it), and,
    when the intake would refuse it (a control, bidi or line-separator character, or longer
    than ``limit``), ``"h:"`` and the SHA-256 of its UTF-8 instead, which it accepts. The
    gateway reports and checks blocks by this same form, so no spelling of an id gets a
    detection refused (and no block) or a block on another string than the one checked.
    None for None or an empty value. Linear in the value; a plain ASCII id costs a few
    C-level checks."""
    if value is None:
        return None
    if (
        value.isascii()
        and value.isprintable()
        and len(value) <= limit
        and value[:1] != " "
        and value[-1:] != " "
    ):
        return value or None
    stripped = value.strip()
    if not stripped:
        return None
    if len(stripped) <= limit and not unsafe_identifier(stripped):
        return stripped
    return _HASHED + hashlib.sha256(stripped.encode("utf-8", "surrogatepass")).hexdigest()


def canonical_subject(target: str | None, tenant: str | None) -> tuple[str, str]:
    """A subject id and its tenant as read from a request, in the form the intake stores them
    (:func:`canonical_id`; no id is "", an empty tenant is "default", as for a detection):
    what block lookups, on a gateway and in the API, compare."""
    return canonical_id(target) or "", canonical_id(tenant, TENANT_MAX) or "default"
