"""Redaction of prompts and other untrusted text before it is stored, logged or sent to chat.

Two functions:

* :func:`prompt_digest` -- a stable fingerprint of the *raw* text (hex SHA-256 of its UTF-8
  bytes), so cases can be correlated without keeping the text itself.
* :func:`redact` -- a short, human-readable excerpt in which secrets and personal data are
  replaced by tags:

  ============  ==============================================================================
  ``[SECRET]``  API keys (``sk-…``, ``sk-proj-…``, ``sk-ant-…``, Stripe keys, ``whsec_…``,
                ``AKIA…``/``ASIA…``, ``ghp_…``/``gho_…``/``github_pat_…``, ``xox[abeoprs]-…``,
                ``AIza…``, ``hf_…``, ``npm_…``, ``glpat-…``, Atlassian ``ATATT…``),
                ``Bearer``/``Basic`` credentials, values of ``password=``/``token:``/
                ``"api_key": "…"``-style assignments and of "my password is …", JWTs, PEM
                private keys, Slack webhook URLs, ``user:password@`` in URLs, and long hex runs
                (>= 32 chars) or random-looking base64 runs (>= 32 chars with digits, upper and
                lower case)
  ``[EMAIL]``   e-mail addresses
  ``[CARD]``    Luhn-valid payment card numbers, 13-19 digits, optionally grouped by spaces/dashes
  ``[IBAN]``    IBANs (mod-97 valid), grouped by spaces or not
  ``[SSN]``     US social security numbers written ``123-45-6789``
  ``[IP]``      IPv4 and IPv6 addresses
  ``[PHONE]``   international numbers (``+CC …``, 8-15 digits), North-American
                ``(555) 123-4567`` / ``555-123-4567`` / ``555.123.4567`` and trunk-prefixed
                national numbers such as ``020 7946 0958`` or ``07700 900123``
  ============  ==============================================================================

Before matching, the text is normalised: invisible format characters (zero-width spaces and
joiners, word joiner, BOM, soft hyphen, bidi controls, tag characters, variation selectors) are
removed, then NFKC is applied (``sk-`` written in fullwidth forms U+FF53 U+FF4B U+FF0D becomes
``sk-``), then whitespace runs are collapsed to one space. The excerpt is therefore of the
normalised text.

Cost: every pattern runs in time linear in its input (no ambiguous nested or adjacent
quantifiers: possessive quantifiers, bounded repetitions, boundary look-behinds that stop a
match attempt inside a run in O(1)). Moreover only a bounded head of the text is examined:
``max(8192, 32 * max_len)`` characters after normalisation. When the text is longer, the last
512 characters of the masked head are discarded as well, so a secret cut by the window can never
leak a prefix (the output then ends in ``"…"``). Within the head, masking happens *before*
truncation to ``max_len`` and truncation never cuts a tag in half.

The rules favour over-masking: a version string like ``1.2.3.4`` is a valid IPv4 address and
becomes ``[IP]``; a quoted secret value without its closing quote is masked to the end of the
text; a 16-digit number that fails the Luhn check is left alone (it is not a card).
Not covered: postal addresses, names, bare 10-digit numbers without separators
(indistinguishable from Unix timestamps), SSNs without dashes.
"""

from __future__ import annotations

import bisect
import hashlib
import itertools
import re
import unicodedata
from collections.abc import Callable
from typing import Final

__all__ = ["ELLIPSIS", "TAGS", "prompt_digest", "redact"]

ELLIPSIS: Final = "…"

SECRET: Final = "[SECRET]"  # noqa: S105 - the mask tag, not a password
EMAIL: Final = "[EMAIL]"
CARD: Final = "[CARD]"
PHONE: Final = "[PHONE]"
IP: Final = "[IP]"
IBAN: Final = "[IBAN]"
SSN: Final = "[SSN]"
TAGS: Final = (SECRET, EMAIL, CARD, PHONE, IP, IBAN, SSN)

_TAG_NAMES = r"(?:SECRET|EMAIL|CARD|PHONE|IP|IBAN|SSN)"
_TAG_RE = re.compile(r"\[" + _TAG_NAMES + r"\]")
# A value may not start with one of our own tags (already masked by an earlier rule).
_NOT_A_TAG = r"(?!\[" + _TAG_NAMES + r"\])"

# Characters examined after normalisation, at least; see redact().
_MIN_WINDOW: Final = 8_192
_WINDOW_PER_CHAR: Final = 32
# When the window cut the text, this many masked characters at its end are dropped.
_MARGIN: Final = 512
# Non-ASCII text is normalised in chunks of this many characters so that NFKC expansion
# (up to 18 characters for one code point) is bounded by the window, not by the input.
_CHUNK: Final = 1024

# Format characters used to split secrets invisibly: Unicode's default-ignorable code points
# (they render as nothing): soft hyphen, combining grapheme joiner, Arabic letter mark, Hangul
# fillers (letters, for Unicode, but blank), Khmer inherent vowels, Mongolian free variation
# selectors and vowel separator, zero-width space/non-joiner/joiner, LRM/RLM, bidi embeddings
# and isolates, word joiner and invisible operators, BOM, interlinear annotation, variation
# selectors, shorthand and musical format controls, and the Unicode "tag" block (ASCII
# smuggling).
_INVISIBLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e"
    "\u2060-\u206f\u3164\ufeff\uffa0\ufff0-\ufffb\ufe00-\ufe0f"
    "\U0001bca0-\U0001bca3\U0001d173-\U0001d17a\U000e0000-\U000e0fff]+"
)


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
    r"-----BEGIN[A-Z0-9 ]{0,64}PRIVATE KEY-----"
    r"(?s:.*?)(?:-----END[A-Z0-9 ]{0,64}PRIVATE KEY-----|\Z)"
)
_SLACK_WEBHOOK = re.compile(
    r"https?://hooks\.slack(?:-gov)?\.com/(?:services|workflows|triggers)/[A-Za-z0-9/_-]++"
)
_URL_CREDENTIALS = re.compile(r"://[^\s/:@]++:[^\s/@]++@")
_AUTH_SCHEME = re.compile(
    r"(?i)(?<![A-Za-z0-9])(bearer|basic)(\s++)" + _NOT_A_TAG + r"([A-Za-z0-9._~+/=-]{6,}+)"
)

_SENSITIVE_KEY_NAMES = (
    r"pass(?:word|wd|phrase)|pwd|secret(?:[_ -]?key)?|client[_ -]?secret|"
    r"api[_ -]?key|api[_ -]?token|access[_ -]?key(?:[_-]?id)?|access[_ -]?token|auth[_ -]?token|"
    r"refresh[_ -]?token|id[_-]?token|session[_ -]?token|private[_ -]?key|token"
)
# Every key name contains one of these (lower case); the key rules only run when one occurs.
_KEY_WORDS: Final = ("pass", "pwd", "secret", "key", "token")
# A quoted value runs to its closing quote or, if there is none, to the end of the text.
_QUOTED_VALUE = r"\"[^\"]*+(?:\"|\Z)|'[^']*+(?:'|\Z)"
# An unquoted value runs to whitespace, a quote or a closing bracket; "&", "," and ";" end it
# only when the next "name=" follows (query strings, connection strings), since they are
# legitimate password characters.
_UNQUOTED_VALUE = r"(?:[^\s\"'<>}\]&,;]++|[&,;](?![A-Za-z0-9_.-]++=))++"
# password=hunter2 · "api_key": "abc" · token: xyz · PASSWORD='a b c'
_KEY_VALUE = re.compile(
    r"(?i)(?<![A-Za-z0-9])(" + _SENSITIVE_KEY_NAMES + r")(?![A-Za-z0-9])"
    r"([\"']?\s*+[:=]\s*+)" + _NOT_A_TAG + "(" + _QUOTED_VALUE + "|" + _UNQUOTED_VALUE + ")"
)
# "my password is hunter2", "the passphrase is: correct horse"
_PASSWORD_IS = re.compile(
    r"(?i)(?<![A-Za-z0-9])(pass(?:word|wd|phrase)|pwd)(\s++is\s*+:?\s*+)"
    + _NOT_A_TAG
    + "("
    + _QUOTED_VALUE
    + r"|[^\s,;\"']++)"
)


def _token(prefix: str, body: str, boundary: str = "A-Za-z0-9_-") -> re.Pattern[str]:
    """``prefix`` then ``body``, not glued to a longer word on either side.

    The start boundary is a look-behind placed *after* the literal prefix, so the regex
    engine can search for the literal quickly instead of trying every position.
    """
    return re.compile(f"(?:{prefix})(?<![{boundary}](?:{prefix})){body}(?![{boundary}])")


# (literals one of which must occur in the text, pattern)
_TOKENS: Final[tuple[tuple[tuple[str, ...], re.Pattern[str]], ...]] = (
    # OpenAI (sk-, sk-proj-, sk-svcacct-), Anthropic (sk-ant-...), DeepSeek etc.
    (("sk-",), _token("sk-", r"[A-Za-z0-9_-]{16,}+")),
    # Stripe / similar, webhook signing secrets
    (("_live_", "_test_"), _token("[srp]k_(?:live|test)_", r"[A-Za-z0-9]{16,}+")),
    (("whsec_",), _token("whsec_", r"[A-Za-z0-9+/=]{16,}+")),
    # AWS access key ids
    (
        ("AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ABIA", "ACCA"),
        _token("A(?:KIA|SIA|GPA|IDA|ROA|IPA|NPA|NVA|BIA|CCA)", r"[A-Z0-9]{16}", "A-Z0-9"),
    ),
    # GitHub
    (("gh",), _token("gh[pousr]_", r"[A-Za-z0-9]{20,}+")),
    (("github_pat_",), _token("github_pat_", r"[A-Za-z0-9_]{20,}+")),
    # GitLab, Slack, Google, Hugging Face, npm, Atlassian
    (("glpat-",), _token("glpat-", r"[A-Za-z0-9_-]{20,}+")),
    (("xox",), _token("xox[abeoprs]-", r"[A-Za-z0-9-]{10,}+")),
    (("xapp-",), _token("xapp-", r"[A-Za-z0-9-]{10,}+")),
    (("AIza",), _token("AIza", r"[A-Za-z0-9_-]{30,}+")),
    (("hf_",), _token("hf_", r"[A-Za-z0-9]{30,}+")),
    (("npm_",), _token("npm_", r"[A-Za-z0-9]{30,}+")),
    (("ATATT",), _token("ATATT", r"[A-Za-z0-9_=-]{20,}+")),
    # JWT (header.payload[.signature])
    (("eyJ",), _token("eyJ", r"[A-Za-z0-9_-]{8,}+\.eyJ[A-Za-z0-9_-]{8,}+\.[A-Za-z0-9_-]*+")),
)

# Long opaque runs: hex (>= 32) or base64/base64url (>= 32, mixed case + digits).
_HEX_RUN = re.compile(r"(?<![A-Za-z0-9])(?:0x)?[0-9a-fA-F]{32,}+(?![A-Za-z0-9])")
_B64_RUN = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{32,}+={0,2}+(?![A-Za-z0-9+/=_-])")


def _b64_secret(m: re.Match[str]) -> str:
    s = m.group(0)
    if any(c.isdigit() for c in s) and any(c.isupper() for c in s) and any(c.islower() for c in s):
        return SECRET
    return s


# --------------------------------------------------------------------------------------------
# Personal data
# --------------------------------------------------------------------------------------------

# Letters and digits of any script (internationalised addresses: "jörg.müller@firma.de",
# "info@müller.de"), "_" with them in the local part.
_LOCAL = r"[\w.%+-]"
# A label: alphanumeric runs joined by hyphens, so it can neither start nor end with "-".
# Each piece is possessive and the pieces are delimited by different characters, so there is
# exactly one way to match a label.
_LABEL = r"[^\W_]++(?:-++[^\W_]++)*+"
_EMAIL_RE = re.compile(
    _LOCAL + r"(?<!" + _LOCAL + _LOCAL + r")" + _LOCAL + r"*+@"
    r"(?:" + _LABEL + r"\.(?=[^\W_]))++"
    # The last label is the TLD; the loop above gave back nothing, so check it here.
    r"(?<=\.)[^\W\d_]{2,}+(?![^\W_]|-)"
)

# A run of digit groups separated by single spaces or dashes (not preceded by '+', which
# makes it a phone number, nor by '.', which makes it the fraction of a decimal number).
_CARD_CANDIDATE = re.compile(r"(?<![\d+.])\d++(?:[ -]\d++)*+")
_GROUP_SPLIT = re.compile(r"[ -]")
_PHONE_PREFIX = re.compile(r"\+\d{1,3}[ .-]?(?:\(\d{1,4}\)[ .-]?)?$")
_DECIMAL_POINT = re.compile(r"\.\d")

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(r"(?<![\d.])" + _OCTET + r"(?:\." + _OCTET + r"){3}(?!\d)(?!\.\d)")
_H16 = r"[0-9A-Fa-f]{1,4}+"
_IPV6 = re.compile(
    r"(?<![0-9A-Za-z:.])(?:"
    # full form, eight groups
    + _H16
    + r"(?::"
    + _H16
    + r"){7}"
    # compressed form, "::" somewhere
    + r"|(?:"
    + _H16
    + r"(?::"
    + _H16
    + r"){0,6}+)?::(?:"
    + _H16
    + r"(?::"
    + _H16
    + r"){0,6}+)?"
    + r")(?![0-9A-Za-z:])"
)

_SSN_RE = re.compile(r"(?<![\d-])(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}(?![\d-])")
_IBAN_RE = re.compile(
    r"[A-Z](?<![A-Za-z0-9][A-Z])[A-Z]\d\d(?: ?[A-Z0-9]{4}){2,7}+(?: ?[A-Z0-9]{1,3}+)?+"
    r"(?![A-Za-z0-9])"
)

_PHONE_INTL = re.compile(r"\+(?<![\w+]\+)\d++(?:[ .-]?\(\d{1,4}\))?+(?:[ .-]?\d++){0,6}+")
_PHONE_GROUP = re.compile(r"\(\d+\)|\d+")
_PHONE_NANP = re.compile(
    r"(?<![\w+])(?:1[ .-]?)?(?:\(\d{3}\)[ .-]?|\d{3}[ .-])\d{3}[ .-]\d{4}(?!\d)"
)
_PHONE_TRUNK = re.compile(r"0(?<![\w+.]0)\d{1,4}[ -]?\d{3,4}[ -]?\d{3,4}(?!\d)(?!\.\d)")
# A national number written in pairs, as in France and Belgium: "06 12 34 56 78",
# "06.12.34.56.78", "06-12-34-56-78" (one separator throughout).
_PHONE_PAIRS = re.compile(r"0(?<![\w+.]0)[1-9]([ .-])\d{2}(?:\1\d{2}){3}(?![\d.-]\d|\d)")

_LUHN_DOUBLE: Final = str.maketrans("0123456789", "0246813579")


# A decimal digit of another script (Unicode category Nd, which \d matches: Arabic-Indic,
# Devanagari, fullwidth ...).
_OTHER_DIGIT: Final = re.compile(r"(?![0-9])\d")


def _ascii_digits(text: str) -> str:
    """``text`` with every decimal digit of another script as its ASCII digit (a table of the
    digits it holds, built for it: nothing is kept between calls)."""
    found = set(_OTHER_DIGIT.findall(text))
    if not found:
        return text
    return text.translate({ord(c): 0x30 + unicodedata.decimal(c) for c in found})


def _card_spans(digits: str, bounds: list[int]) -> dict[int, int]:
    """Non-overlapping Luhn-valid windows of whole groups holding 13-19 digits.

    ``bounds[i]`` is the offset in ``digits`` where group ``i`` starts (``bounds[-1]`` is the
    length). Scanning left to right, the longest valid window starting at each group wins.
    Luhn sums of windows come from prefix sums, so the cost is linear in the number of groups.
    """
    # A digit is doubled when its distance to the window's last digit is odd, i.e. when its
    # offset has the parity of the window's end offset. Two prefix sums cover both parities.
    # They are sums of ASCII codes: each digit adds 48 too, which the check takes off again.
    plain = digits.encode("ascii")
    doubled = digits.translate(_LUHN_DOUBLE).encode("ascii")
    even_doubled = bytearray(plain)
    even_doubled[0::2] = doubled[0::2]
    odd_doubled = bytearray(doubled)
    odd_doubled[0::2] = plain[0::2]
    sums = (
        list(itertools.accumulate(even_doubled, initial=0)),
        list(itertools.accumulate(odd_doubled, initial=0)),
    )
    spans: dict[int, int] = {}
    n = len(bounds) - 1
    i = 0
    while i < n:
        start = bounds[i]
        # Groups j (exclusive end) with 13 <= bounds[j] - start <= 19, longest first.
        top = min(n, i + 19) + 1
        hi = bisect.bisect_right(bounds, start + 19, i + 1, top) - 1
        lo = bisect.bisect_left(bounds, start + 13, i + 1, hi + 1)
        found = 0
        for j in range(hi, lo - 1, -1):
            end = bounds[j]
            prefix = sums[end % 2]
            if (prefix[end] - prefix[start] - 48 * (end - start)) % 10 == 0:
                found = j
                break
        if found:
            spans[i] = found
            i = found
        else:
            i += 1
    return spans


def _mask_cards(m: re.Match[str]) -> str:
    """Mask every Luhn-valid window of whole digit groups holding 13-19 digits.

    A run such as ``4111 1111 1111 1111 2025`` (card followed by a year) is 20 digits and
    fails as a whole, so windows of consecutive groups are tried, longest first.
    """
    run = m.group(0)
    if len(run) < 13:
        return run
    prefix_match = _PHONE_PREFIX.search(m.string, max(0, m.start() - 12), m.start())
    if prefix_match and _digit_count(prefix_match.group(0) + run) <= 15:
        return run  # "+1 4111…": a valid international number, the phone rule owns it
    groups = _GROUP_SPLIT.split(run)
    seps = _GROUP_SPLIT.findall(run)
    usable = len(groups)
    if _DECIMAL_POINT.match(m.string, m.end()):
        usable -= 1  # "… 2.5": the last group is the integer part of a decimal number
    bounds = [0, *itertools.accumulate(len(g) for g in groups[:usable])]
    # \d matches any decimal digit (text the engine scans keeps Arabic-Indic ones): ASCII here
    digits = "".join(groups[:usable])
    if not digits.isascii():
        digits = _ascii_digits(digits)
    spans = _card_spans(digits, bounds)
    if not spans:
        return run
    out: list[str] = []
    i = 0
    n = len(groups)
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
    total = 0
    keep_end = 0
    for g in _PHONE_GROUP.finditer(whole):  # at most 8 groups
        digits = len(g.group(0)) - (2 if g.group(0)[0] == "(" else 0)
        if total + digits > 15:
            break
        total += digits
        keep_end = g.end()
    if 8 <= total <= 15:
        return PHONE + whole[keep_end:]
    return whole


def _mask_iban(m: re.Match[str]) -> str:
    compact = m.group(0).replace(" ", "")
    if not 15 <= len(compact) <= 34:
        return m.group(0)
    rearranged = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in rearranged)
    return IBAN if int(number) % 97 == 1 else m.group(0)


def _mask_ipv6(m: re.Match[str]) -> str:
    s = m.group(0)
    groups = sum(1 for part in s.split(":") if part)
    # "::", "::1" and "a[::2]" are too often code; a real address has two groups or more.
    return IP if groups >= 2 else s


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


_Repl = str | Callable[[re.Match[str]], str]


def _has_digit(text: str) -> bool:
    return any(d in text for d in "0123456789")


def _mask(text: str) -> str:
    """Apply every rule, in order, to the whole (normalised) text. Linear in ``len(text)``."""

    def sub(pattern: re.Pattern[str], repl: _Repl) -> None:
        nonlocal text
        text = pattern.sub(repl, text)

    if "-----BEGIN" in text:
        sub(_PEM, SECRET)
    if "hooks.slack" in text:
        sub(_SLACK_WEBHOOK, SECRET)
    if "://" in text:
        sub(_URL_CREDENTIALS, "://" + SECRET + "@")
    lower = text.lower()
    if "bearer" in lower or "basic" in lower:
        sub(_AUTH_SCHEME, _mask_auth_scheme)
    if any(word in lower for word in _KEY_WORDS):
        sub(_KEY_VALUE, _keep_key)
        if " is" in lower:
            sub(_PASSWORD_IS, _keep_key)
    for literals, pattern in _TOKENS:
        if any(literal in text for literal in literals):
            sub(pattern, SECRET)
    if "@" in text:
        sub(_EMAIL_RE, EMAIL)
    if _has_digit(text):
        sub(_IBAN_RE, _mask_iban)
        sub(_CARD_CANDIDATE, _mask_cards)
        if "." in text:
            sub(_IPV4, IP)
    if ":" in text:
        sub(_IPV6, _mask_ipv6)
    if _has_digit(text):
        sub(_SSN_RE, SSN)
        if "+" in text:
            sub(_PHONE_INTL, _mask_intl_phone)
        sub(_PHONE_NANP, PHONE)
        if "0" in text:
            sub(_PHONE_TRUNK, _phone_if_digits(9, 12))
            sub(_PHONE_PAIRS, PHONE)
    sub(_HEX_RUN, SECRET)
    sub(_B64_RUN, _b64_secret)
    return text


def _normalise(text: str, limit: int | None = None) -> tuple[str, bool]:
    """Strip invisible characters, apply NFKC and collapse whitespace.

    With a ``limit``, at most about that many characters are produced and normalised (the
    input is consumed in chunks); the flag tells whether anything was cut off.
    """
    cut = False
    if limit is not None and len(text) > limit and text[:limit].isascii():
        text, cut = text[:limit], True
    elif not text.isascii():
        parts: list[str] = []
        produced = 0
        pos = 0
        while pos < len(text) and (limit is None or produced < limit):
            chunk = text[pos : pos + _CHUNK] if limit is not None else text
            pos += len(chunk)
            if not chunk.isascii():
                chunk = _INVISIBLE.sub("", chunk)
                chunk = unicodedata.normalize("NFKC", chunk)
                chunk = _INVISIBLE.sub("", chunk)
                # decimal digits of other scripts as ASCII ones, so that every rule reads them
                # (a card number in Arabic-Indic digits is masked like one in ASCII digits)
                chunk = _ascii_digits(chunk)
            parts.append(chunk)
            produced += len(chunk)
        cut = pos < len(text)
        text = "".join(parts)
        if limit is not None and len(text) > limit:
            text, cut = text[:limit], True
    # str.split() splits on exactly the characters re's \s matches in str patterns.
    return " ".join(text.split()), cut


def _truncate(text: str, max_len: int, *, force: bool = False) -> str:
    """Cut to ``max_len`` characters ending in an ellipsis (always when ``force``)."""
    if len(text) <= max_len and not force:
        return text
    cut = min(len(text), max_len - len(ELLIPSIS))
    # Never cut a tag in half: if the cut falls inside one, cut before it.
    for tag in _TAG_RE.finditer(text, max(0, cut - 16), cut + 16):
        if tag.start() < cut < tag.end():
            cut = tag.start()
            break
    return text[:cut].rstrip() + ELLIPSIS


def redact(text: str, *, max_len: int = 160) -> str:
    """Normalise, mask secrets and personal data, then truncate to ``max_len``.

    The result is at most ``max_len`` characters long, ending in ``"…"`` when it was cut.
    Masking is applied before truncation, to a window of at least
    ``max(8192, 32 * max_len)`` normalised characters (see the module docstring).
    """
    if max_len < 1:
        raise ValueError(f"max_len must be >= 1, got {max_len}")
    window = max(_MIN_WINDOW, _WINDOW_PER_CHAR * max_len) + _MARGIN
    text, cut = _normalise(text, window)
    text = _mask(text)
    if cut:
        # Whatever straddled the window's end may be only partly masked: drop the tail.
        drop_at = max(0, len(text) - _MARGIN)
        for tag in _TAG_RE.finditer(text, max(0, drop_at - 16), drop_at + 16):
            if tag.start() < drop_at < tag.end():
                drop_at = tag.start()
                break
        text = text[:drop_at]
    text = " ".join(text.split())
    return _truncate(text, max_len, force=cut)
