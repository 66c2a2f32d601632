"""Adversarial prompts for the redaction benchmark and tests (stdlib only).

    from bench.corpus import adversarial_corpus, measure
    for name, text in adversarial_corpus(256 * 1024).items():
        print(name, measure(redact, text, repeat=3))

Each entry repeats a short *building block* (see :data:`BLOCKS`) that targets one family of
patterns: runs of ``+`` and digits, digit groups with separators, ``a@a@a@…``, dots, ``eyJ``
prefixes, whitespace, secrets split by zero-width characters, fullwidth forms, key/value
phrasings without an end, and so on. ``mixed`` interleaves all blocks (deterministically).

:data:`SECRET_BLOCKS` are the blocks that hold a real (fake) credential, with the value that
must not survive redaction.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from typing import Any

__all__ = ["BLOCKS", "SECRET_BLOCKS", "adversarial_corpus", "build", "measure"]

_ZW = "\u200b"
_ZWNJ = "\u200c"
_ZWJ = "\u200d"
_WJ = "\u2060"
_BOM = "\ufeff"
_SHY = "\u00ad"


def _fullwidth(s: str) -> str:
    """ASCII -> fullwidth forms (U+FF01..U+FF5E); space -> ideographic space."""
    return "".join(
        "\u3000" if c == " " else chr(ord(c) + 0xFEE0) if "!" <= c <= "~" else c for c in s
    )


def _split(s: str, sep: str) -> str:
    return sep.join(s)


# A fake OpenAI project key (not live) used by the secret blocks.
FAKE_KEY = "sk-proj-Q3vX9kLm2NpR7sTu1WyZ4bCd6EfGh8JkA0"

BLOCKS: dict[str, str] = {
    # runs of "+" and digits: international phone pattern and card candidates
    "plus_digit_runs": "+" * 7 + "1" * 23 + " ",
    "plus_alternating": "+1",
    "plus_spaced": "+1 23 ",
    "plus_paren": "+1 (23) 4",
    # long digit runs with separators: card windows, NANP, trunk, SSN
    "digit_run": "4111111111111111",
    "digits_spaced": "1 ",
    "digits_dashed": "12-",
    "digits_dotted": "1.",
    "digit_groups": "4111 1111 ",
    "ssn_like": "123-45-678",
    "trunk_like": "0 ",
    "nanp_like": "(555) ",
    # e-mail: "a@a@a@…", long labels, dots
    "at_chain": "a@",
    "at_dots": "a@a.",
    "email_labels": "a-",
    "dots": ".",
    "word_dots": "a.",
    # JWT / token prefixes without the rest
    "eyj": "eyJ",
    "eyj_segments": "eyJaaaaaaaaaa.",
    "sk_prefix": "sk-",
    "akia": "AKIA",
    # IPv4 / IPv6 / IBAN shapes
    "ipv4_like": "1.1.1.",
    "colons": ":",
    "hex_colons": "ab:",
    "iban_like": "DE89 3704 ",
    # whitespace runs (ASCII and Unicode)
    "whitespace": " \t\n",
    "unicode_spaces": "\u3000\u00a0\u2003",
    # key/value phrasings whose value never ends
    "key_equals": "password=",
    "key_quote": 'token: "',
    "key_amp": "api_key=a&",
    "password_is": "password is ",
    "bearer": "Bearer ",
    # hex / base64 runs
    "hex_run": "deadbeef",
    "b64_run": "aB3+",
    "pem_begin": "-----BEGIN PRIVATE KEY-----",
    "url_creds": "://a:b",
    # Unicode tricks
    "zero_width": _ZW + _ZWNJ + _ZWJ + _WJ + _BOM + _SHY,
    "zero_width_secret": _split(FAKE_KEY, _ZW) + " ",
    "fullwidth_secret": _fullwidth(FAKE_KEY) + " ",
    "fullwidth_digits": _fullwidth("4111 1111 1111 1111 "),
    "nfkc_expansion": "\ufdfa",  # one code point, 18 characters after NFKC
}

# Blocks holding a credential that must be masked in every repetition.
SECRET_BLOCKS: dict[str, str] = {
    "zero_width_secret": FAKE_KEY,
    "fullwidth_secret": FAKE_KEY,
    "mixed_secret": FAKE_KEY,
}


def build(blocks: list[str] | tuple[str, ...], size_bytes: int) -> str:
    """Repeat the concatenation of ``blocks`` until it is ``size_bytes`` long in UTF-8."""
    unit = "".join(blocks)
    if not unit:
        raise ValueError("blocks must not be empty")
    unit_bytes = len(unit.encode("utf-8"))
    text = unit * (size_bytes // unit_bytes + 1)
    # Trim to the byte budget (characters may be multi-byte).
    encoded = text.encode("utf-8")[:size_bytes]
    return encoded.decode("utf-8", "ignore")


def adversarial_corpus(size_bytes: int, *, seed: int = 0) -> dict[str, str]:
    """One adversarial prompt per building block, each about ``size_bytes`` UTF-8 bytes.

    Extra entries: ``mixed`` (all blocks interleaved in a deterministic random order),
    ``mixed_secret`` (blocks interleaved with the fake key, split by zero-width characters or
    written fullwidth) and ``plus_digits_growing`` (runs of "+" and digits of growing length).
    """
    corpus = {name: build([block], size_bytes) for name, block in BLOCKS.items()}
    rng = random.Random(seed)
    names = list(BLOCKS)
    order = [BLOCKS[rng.choice(names)] * rng.randint(1, 40) for _ in range(400)]
    corpus["mixed"] = build(order, size_bytes)
    secrets = [
        BLOCKS["zero_width_secret"],
        BLOCKS["fullwidth_secret"],
        FAKE_KEY + " ",
    ]
    mixed_secret = [
        rng.choice(secrets) if i % 2 else BLOCKS[rng.choice(names)] * rng.randint(1, 20)
        for i in range(400)
    ]
    # Start with a secret so that even a short excerpt shows one.
    corpus["mixed_secret"] = build([secrets[0], *mixed_secret], size_bytes)
    growing = "".join("+" * k + "1" * (k * 3) + " " for k in range(1, 64))
    corpus["plus_digits_growing"] = build([growing], size_bytes)
    return corpus


def measure(fn: Callable[[str], Any], text: str, repeat: int = 5) -> float:
    """Minimum wall time of ``fn(text)`` over ``repeat`` runs, in milliseconds."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        start = time.perf_counter()
        fn(text)
        best = min(best, time.perf_counter() - start)
    return best * 1000.0
