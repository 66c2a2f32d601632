"""Redaction of prompts and other untrusted text before it is stored, logged or sent to chat.

Two functions:

* :func:`prompt_digest` -- a stable fingerprint of the *raw* text (hex SHA-256 of its UTF-8
  bytes), so cases can be correlated without keeping the text itself.
* :func:`redact` -- a short, human-readable excerpt in which secrets and personal data are
  replaced by tags:

  ============  ==============================================================================
  ``[SECRET]``  API keys (``sk-…``, ``sk-proj-…``, ``sk-ant-…``, Stripe keys, ``AKIA…``/``ASIA…``,
                ``ghp_…``/``github_pat_…``, ``xox[abeoprs]-…``, ``AIza…``, ``hf_…``, ``npm_…``,
                ``glpat-…``, Atlassian ``ATATT…``), ``Bearer``/``Basic`` credentials, values of
                ``password=``/``token:``/``"api_key": "…"``-style assignments, JWTs, PEM private
                keys, Slack webhook URLs, ``user:password@`` in URLs, and long hex runs (>= 32
                chars) or random-looking base64 runs (>= 32 chars with digits, upper and lower case)
  ``[EMAIL]``   e-mail addresses
  ``[CARD]``    Luhn-valid payment card numbers, 13-19 digits, optionally grouped by spaces/dashes
  ``[IP]``      IPv4 addresses
  ``[PHONE]``   international numbers (``+CC …``, 8-15 digits), North-American
                ``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567`` and trunk-prefixed
                national numbers such as ``020 7946 0958`` or ``07700 900123``
  ============  ==============================================================================

Masking happens on the whole text *before* truncation, so a secret that straddles the cut can
never leak a prefix. Truncation never cuts a tag in half either.

The rules favour over-masking: a version string like ``1.2.3.4`` is a valid IPv4 address and
becomes ``[IP]``; a 16-digit number that fails the Luhn check is left alone (it is not a card).
Not covered: IPv6 addresses, postal addresses, names, bare 10-digit numbers without separators
(indistinguishable from Unix timestamps).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from typing import Final

__all__ = ["ELLIPSIS", "TAGS", "prompt_digest", "redact"]

ELLIPSIS: Final = "…"

SECRET: Final = "[SECRET]"  # noqa: S105 - the mask tag, not a password
EMAIL: Final = "[EMAIL]"
CARD: Final = "[CARD]"
PHONE: Final = "[PHONE]"
IP: Final = "[IP]"
TAGS: Final = (SECRET, EMAIL, CARD, PHONE, IP)

_WS = re.compile(r"\s+")
_TAG_RE = re.compile(r"\[(?:SECRET|EMAIL|CARD|PHONE|IP)\]")
# A value may not start with one of our own tags (already masked by an earlier rule).
_NOT_A_TAG = r"(?!\[(?:SECRET|EMAIL|CARD|PHONE|IP)\])"


def prompt_digest(text: str) -> str:
    """Hex SHA-256 of ``text`` encoded as UTF-8.

    Lone surrogates (which cannot be encoded strictly) are passed through with
    ``surrogatepass`` instead of raising; for every valid string the result is the plain
    ``sha256(text.encode("utf-8"))``.
    """
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


# --------------------------------------------------------------------------------------------
# Secrets
# --------------------------------------------------------------------------------------------

_PEM = re.compile(
    r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY-----|\Z)",
    re.DOTALL,
)
_SLACK_WEBHOOK = re.compile(
    r"https?://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)"
    r"/[A-Za-z0-9/_-]+"
)
_URL_CREDENTIALS = re.compile(r"(?<=://)[^\s/:@]+:[^\s/@]+@")
_AUTH_SCHEME = re.compile(
    r"(?i)(?<![A-Za-z0-9])(bearer|basic)(\s+)" + _NOT_A_TAG + r"([A-Za-z0-9._~+/=-]{6,})"
)

_SENSITIVE_KEY_NAMES = (
    r"pass(?:word|wd|phrase)|pwd|secret(?:[_-]?key)?|client[_-]?secret|"
    r"api[_-]?key|api[_-]?token|access[_-]?key(?:[_-]?id)?|access[_-]?token|auth[_-]?token|"
    r"refresh[_-]?token|id[_-]?token|session[_-]?token|private[_-]?key|token"
)
# An unquoted value runs to whitespace, a quote or a closing bracket; "&", "," and ";" end it
# only when the next "name=" follows (query strings, connection strings), since they are
# legitimate password characters.
_UNQUOTED_VALUE = r"(?:[^\s\"'<>}\]&,;]|[&,;](?![A-Za-z0-9_.-]+=))+"
# password=hunter2 · "api_key": "abc" · token: xyz · PASSWORD='a b c'
_KEY_VALUE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(" + _SENSITIVE_KEY_NAMES + r")(?![A-Za-z0-9])"
    r"([\"']?\s*[:=]\s*)" + _NOT_A_TAG + r"(\"[^\"]*\"|'[^']*'|" + _UNQUOTED_VALUE + ")"
)
# "my password is hunter2", "the passphrase is: correct horse"
_PASSWORD_IS = re.compile(
    r"(?i)(?<![A-Za-z0-9])(pass(?:word|wd|phrase)|pwd)(\s+is\s*:?\s*)"
    + _NOT_A_TAG
    + r"(\"[^\"]*\"|'[^']*'|[^\s,;\"']+)"
)

_B = r"(?<![A-Za-z0-9_-])"  # token start boundary
_E = r"(?![A-Za-z0-9_-])"  # token end boundary
_TOKENS = re.compile(
    "|".join(
        [
            # OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic (sk-ant-...), DeepSeek etc.
            _B + r"sk-[A-Za-z0-9_-]{16,}" + _E,
            # Stripe / similar
            _B + r"(?:sk|rk|pk)_(?:live|test)_[A-Za-z0-9]{16,}" + _E,
            _B + r"whsec_[A-Za-z0-9+/=]{16,}" + _E,
            # AWS access key ids
            r"(?<![A-Z0-9])(?:AKIA|ASIA|AGPA|AIDA|AROA|AIPA|ANPA|ANVA|ABIA|ACCA)[A-Z0-9]{16}(?![A-Z0-9])",
            # GitHub
            _B + r"gh[pousr]_[A-Za-z0-9]{20,}" + _E,
            _B + r"github_pat_[A-Za-z0-9_]{20,}" + _E,
            # GitLab, Slack, Google, Hugging Face, npm, Atlassian
            _B + r"glpat-[A-Za-z0-9_-]{20,}" + _E,
            _B + r"xox[abeoprs]-[A-Za-z0-9-]{10,}" + _E,
            _B + r"xapp-[A-Za-z0-9-]{10,}" + _E,
            _B + r"AIza[A-Za-z0-9_-]{30,}" + _E,
            _B + r"hf_[A-Za-z0-9]{30,}" + _E,
            _B + r"npm_[A-Za-z0-9]{30,}" + _E,
            _B + r"ATATT[A-Za-z0-9_=-]{20,}" + _E,
            # JWT (header.payload[.signature])
            _B + r"eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*" + _E,
        ]
    )
)

# Long opaque runs: hex (>= 32) or base64/base64url (>= 32, mixed case + digits).
_HEX_RUN = re.compile(r"(?<![A-Za-z0-9])(?:0x)?[0-9a-fA-F]{32,}(?![A-Za-z0-9])")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}={0,2}(?![A-Za-z0-9+/=_-])")


def _b64_secret(m: re.Match[str]) -> str:
    s = m.group(0)
    if any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s):
        return SECRET
    return s


# --------------------------------------------------------------------------------------------
# Personal data
# --------------------------------------------------------------------------------------------

_EMAIL_RE = re.compile(
    r"(?<![A-Za-z0-9._%+-])[A-Za-z0-9._%+-]+@[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*\.[A-Za-z]{2,}(?![A-Za-z0-9-])"
)

# A run of digit groups separated by single spaces or dashes (not preceded by '+', which
# makes it a phone number).
_CARD_CANDIDATE = re.compile(r"(?<![\d+.])\d+(?:[ -]\d+)*(?![\d.]?\d)")
_GROUP_SPLIT = re.compile(r"[ -]")
_PHONE_PREFIX = re.compile(r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?$")
_LAST_PHONE_GROUP = re.compile(r"[ .-]?\(?\d+\)?$")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(r"(?<![\d.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?!\d)(?!\.\d)")

_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(\d{1,4}\))?(?:[ .-]?\d{1,5}){1,6}(?!\d)")
_PHONE_NANP = re.compile(
    r"(?<![\w+])(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"
)
_PHONE_TRUNK = re.compile(r"(?<![\w+.])0\d{1,4}[ -]?\d{3,4}[ -]?\d{3,4}(?!\d)(?!\.\d)")


def _luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def _mask_cards(m: re.Match[str]) -> str:
    """Mask every Luhn-valid window of whole digit groups holding 13-19 digits.

    A run such as ``4111 1111 1111 1111 2025`` (card followed by a year) is 20 digits and
    fails as a whole, so windows of consecutive groups are tried, longest first.
    """
    run = m.group(0)
    prefix_match = _PHONE_PREFIX.search(m.string, max(0, m.start() - 12), m.start())
    if prefix_match and _digit_count(prefix_match.group(0) + run) <= 15:
        return run  # "+1 4111…": a valid international number, the phone rule owns it
    groups = _GROUP_SPLIT.split(run)
    seps = _GROUP_SPLIT.findall(run)
    n = len(groups)
    prefix = [0]
    for g in groups:
        prefix.append(prefix[-1] + len(g))
    masked = [False] * n
    spans: dict[int, int] = {}
    # Every group holds at least one digit, so no window is longer than 19 groups.
    for length in range(min(n, 19), 0, -1):
        for start in range(0, n - length + 1):
            end = start + length
            if not 13 <= prefix[end] - prefix[start] <= 19 or any(masked[start:end]):
                continue
            if _luhn_ok("".join(groups[start:end])):
                spans[start] = end
                masked[start:end] = [True] * length
    if not spans:
        return run
    out: list[str] = []
    i = 0
    while i < n:
        if i in spans:
            out.append(CARD)
            i = spans[i]
        else:
            out.append(groups[i])
            i += 1
        if i < n:
            out.append(seps[i - 1])
    return "".join(out)


def _digit_count(s: str) -> int:
    return sum(c.isdigit() for c in s)


def _mask_intl_phone(m: re.Match[str]) -> str:
    """``+CC …`` with 8-15 digits; trailing groups beyond 15 digits are left as they are."""
    whole = m.group(0)
    s = whole
    while _digit_count(s) > 15:
        shorter = _LAST_PHONE_GROUP.sub("", s)
        if shorter == s:
            break
        s = shorter
    if 8 <= _digit_count(s) <= 15:
        return PHONE + whole[len(s) :]
    return whole


def _phone_if_digits(lo: int, hi: int) -> Callable[[re.Match[str]], str]:
    def repl(m: re.Match[str]) -> str:
        count = sum(c.isdigit() for c in m.group(0))
        return PHONE if lo <= count <= hi else m.group(0)

    return repl


def _keep_key(m: re.Match[str]) -> str:
    return f"{m.group(1)}{m.group(2)}{SECRET}"


def _credential_like(value: str) -> bool:
    """Tell ``Bearer abc.123`` / ``Basic dXNlcjpwYXNz`` apart from prose ("basic example")."""
    return any(c.isdigit() or c in "._~+/=-" for c in value) or any(c.isupper() for c in value[1:])


def _mask_auth_scheme(m: re.Match[str]) -> str:
    if _credential_like(m.group(3)):
        return f"{m.group(1)}{m.group(2)}{SECRET}"
    return m.group(0)


_RULES: Final[tuple[tuple[re.Pattern[str], str | Callable[[re.Match[str]], str]], ...]] = (
    (_PEM, SECRET),
    (_SLACK_WEBHOOK, SECRET),
    (_URL_CREDENTIALS, SECRET + "@"),
    (_AUTH_SCHEME, _mask_auth_scheme),
    (_KEY_VALUE, _keep_key),
    (_PASSWORD_IS, _keep_key),
    (_TOKENS, SECRET),
    (_EMAIL_RE, EMAIL),
    (_CARD_CANDIDATE, _mask_cards),
    (_IPV4, IP),
    (_PHONE_INTL, _mask_intl_phone),
    (_PHONE_NANP, PHONE),
    (_PHONE_TRUNK, _phone_if_digits(9, 12)),
    (_HEX_RUN, SECRET),
    (_B64_RUN, _b64_secret),
)


def _mask(text: str) -> str:
    for pattern, repl in _RULES:
        text = pattern.sub(repl, text)
    return text


def _truncate(text: str, max_len: int) -> str:
    if len(text) <= max_len:
        return text
    cut = max_len - len(ELLIPSIS)
    # Never cut a tag in half: if the cut falls inside one, cut before it.
    for tag in _TAG_RE.finditer(text, 0, cut + 16):
        if tag.start() < cut < tag.end():
            cut = tag.start()
            break
    return text[:cut].rstrip() + ELLIPSIS


def redact(text: str, *, max_len: int = 160) -> str:
    """Mask secrets and personal data, collapse whitespace, then truncate to ``max_len``.

    The result is at most ``max_len`` characters long, ending in ``"…"`` when it was cut.
    Masking is applied to the complete text before truncation.
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    # Normalise whitespace first so that rules see "Bearer <tab><newline> xyz" as one unit,
    # then again in case a replacement left doubled spaces behind.
    text = _WS.sub(" ", text).strip()
    text = _mask(text)
    text = _WS.sub(" ", text).strip()
    return _truncate(text, max_len)
