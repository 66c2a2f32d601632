"""Secrets and personal data in text, as spans: the detectors of :mod:`soar.redact`, reused.

:func:`soar.redact.redact` masks; the engine needs *where* and *what*. This module runs the same
compiled patterns and the same validity checks (Luhn for cards, mod-97 for IBANs, digit counts
for phones, "looks like a credential" for Bearer values) with ``finditer`` and reports the first
span of each kind. Every pattern is linear (see :mod:`soar.redact`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator

from soar.redact import (
    _AUTH_SCHEME,
    _CARD_CANDIDATE,
    _EMAIL_RE,
    _IBAN_RE,
    _KEY_VALUE,
    _PEM,
    _PHONE_INTL,
    _SLACK_WEBHOOK,
    _SSN_RE,
    _TOKENS,
    _URL_CREDENTIALS,
    _mask_auth_scheme,
    _mask_cards,
    _mask_iban,
    _mask_intl_phone,
)

__all__ = ["personal_data", "secrets"]

# (what, literals one of which must occur or () for always, pattern, masker or None)
_Check = tuple[str, tuple[str, ...], re.Pattern[str], Callable[[re.Match[str]], str] | None]

_SECRET_CHECKS: tuple[_Check, ...] = (
    ("private key", ("-----BEGIN",), _PEM, None),
    ("Slack webhook URL", ("hooks.slack",), _SLACK_WEBHOOK, None),
    ("credentials in a URL", ("://",), _URL_CREDENTIALS, None),
    ("bearer/basic credential", (), _AUTH_SCHEME, _mask_auth_scheme),
    ("secret assignment", (), _KEY_VALUE, None),
    *(("API key or token", lits, pat, None) for lits, pat in _TOKENS),
)

_PII_CHECKS: tuple[_Check, ...] = (
    ("payment card number", (), _CARD_CANDIDATE, _mask_cards),
    ("IBAN", (), _IBAN_RE, _mask_iban),
    ("US social security number", ("-",), _SSN_RE, None),
    ("e-mail address", ("@",), _EMAIL_RE, None),
    ("phone number", ("+",), _PHONE_INTL, _mask_intl_phone),
)

_MAX_CANDIDATES = 64


def _run(checks: tuple[_Check, ...], text: str) -> Iterator[tuple[str, int, int]]:
    lower = text.lower()
    for what, literals, pattern, masker in checks:
        if literals and not any(lit in text or lit in lower for lit in literals):
            continue
        for n, m in enumerate(pattern.finditer(text)):
            if n >= _MAX_CANDIDATES:
                break
            if masker is not None and masker(m) == m.group(0):
                continue  # the redactor would keep it: not a secret / not valid
            yield what, m.start(), m.end()
            break


def secrets(text: str) -> Iterator[tuple[str, int, int]]:
    """(kind, start, end) of the first match of each kind of secret in ``text``."""
    yield from _run(_SECRET_CHECKS, text)


def personal_data(text: str) -> Iterator[tuple[str, int, int]]:
    """(kind, start, end) of the first match of each kind of personal data in ``text``."""
    yield from _run(_PII_CHECKS, text)
