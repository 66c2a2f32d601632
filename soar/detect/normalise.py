"""Input normalisation for the detection engine, keeping a map back to the original text.

:func:`normalise` turns attacker-written text into the form the rules are written for:

1. invisible format characters are dropped (zero-width spaces and joiners, word joiner, BOM,
   soft hyphen, bidi controls, variation selectors: the set :mod:`soar.redact` strips, imported
   from there), except Unicode *tag* characters (U+E0020-U+E007E), which are decoded to the ASCII
   they shadow ("ASCII smuggling") so that a hidden instruction is scanned like a visible one;
2. Unicode NFKC (fullwidth letters become ASCII, ligatures and compatibility forms fold);
3. lower case;
4. common Cyrillic and Greek lookalikes of Latin letters are folded to Latin ("ignore" typed
   with Cyrillic i, o and e becomes plain "ignore").

Every step is linear in the input. ASCII runs are copied as they are (the common case costs one
``str.lower``); a non-ASCII run is normalised as a whole and mapped character by character when
NFKC kept its length, otherwise as a block. :meth:`Normalised.original_span` maps a span of the
normalised text back to the smallest span of the original text that produced it; when NFKC
changed the length of a run, a span inside that run widens to the whole run.

Leetspeak decoding (``1gn0r3`` becomes ``ignore``) is a separate, length-preserving variant,
:func:`deleet`, that the engine scans in addition to the normalised text.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass, field
from typing import Final

from soar.redact import _INVISIBLE

__all__ = ["Normalised", "Signals", "deleet", "normalise"]

_TAG_FIRST: Final = 0xE0000
_TAG_LAST: Final = 0xE007F
# A waving black flag followed by tag characters is a subdivision flag emoji (England,
# Scotland, Wales), not smuggling.
_BLACK_FLAG: Final = "\U0001f3f4"

# Cyrillic and Greek letters that render like Latin ones, after lower-casing.
_HOMOGLYPHS: Final = str.maketrans(
    {
        # Cyrillic
        "\u0430": "a",  # cyrillic small letter a
        "\u0432": "b",  # cyrillic small letter ve
        "\u0441": "c",  # cyrillic small letter es
        "\u0501": "d",  # cyrillic small letter komi de
        "\u0435": "e",  # cyrillic small letter ie
        "\u0451": "e",  # cyrillic small letter io
        "\u04bb": "h",  # cyrillic small letter shha
        "\u0456": "i",  # cyrillic small letter byelorussian-ukrainian i
        "\u0457": "i",  # cyrillic small letter yi
        "\u0458": "j",  # cyrillic small letter je
        "\u043a": "k",  # cyrillic small letter ka
        "\u04cf": "l",  # cyrillic small letter palochka
        "\u043c": "m",  # cyrillic small letter em
        "\u043d": "h",  # cyrillic small letter en
        "\u043e": "o",  # cyrillic small letter o
        "\u0440": "p",  # cyrillic small letter er
        "\u051b": "q",  # cyrillic small letter qa
        "\u0433": "r",  # cyrillic small letter ghe
        "\u0455": "s",  # cyrillic small letter dze
        "\u0442": "t",  # cyrillic small letter te
        "\u0438": "u",  # cyrillic small letter i
        "\u0475": "v",  # cyrillic small letter izhitsa
        "\u051d": "w",  # cyrillic small letter we
        "\u0445": "x",  # cyrillic small letter ha
        "\u0443": "y",  # cyrillic small letter u
        "\u04af": "y",  # cyrillic small letter straight u
        # Greek
        "\u03b1": "a",  # greek small letter alpha
        "\u03b2": "b",  # greek small letter beta
        "\u03b5": "e",  # greek small letter epsilon
        "\u03b7": "n",  # greek small letter eta
        "\u03b9": "i",  # greek small letter iota
        "\u03ba": "k",  # greek small letter kappa
        "\u03bd": "v",  # greek small letter nu
        "\u03bf": "o",  # greek small letter omicron
        "\u03c1": "p",  # greek small letter rho
        "\u03c4": "t",  # greek small letter tau
        "\u03c5": "u",  # greek small letter upsilon
        "\u03c7": "x",  # greek small letter chi
        "\u03c9": "w",  # greek small letter omega
        "\u03f2": "c",  # greek lunate sigma symbol
        # typographic quotes, so that rules need only ' and "
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
    }
)
_LOOKALIKES: Final = frozenset(chr(c) for c in _HOMOGLYPHS if chr(c).isalpha())

_NON_ASCII = re.compile(r"[^\x00-\x7f]++")
# A word mixing Latin letters and Cyrillic/Greek lookalikes (before folding).
_LATIN = re.compile(r"[a-z]")

_LEET: Final = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "@": "a"})
# A token of letters and leet characters holding at least one of each.
_LEET_TOKEN = re.compile(r"[a-z@]++[013457][a-z0-9@]*+|[013457@]++[a-z][a-z0-9@]*+")
_LEET_HINT = re.compile(r"[a-z][013457]|[013457][a-z]")


@dataclass
class Signals:
    """What normalisation saw that is suspicious in itself (evidence of obfuscation)."""

    # (start, end) in the original text of each run of tag characters (decoded, not a flag)
    tag_runs: list[tuple[int, int]] = field(default_factory=list)
    # (start, end) of zero-width / bidi characters inside a word
    hidden_in_words: list[tuple[int, int]] = field(default_factory=list)
    # (start, end) of bidi override / embedding characters anywhere
    bidi: list[tuple[int, int]] = field(default_factory=list)
    # (start, end) of non-ASCII runs with Cyrillic/Greek lookalikes next to Latin letters
    mixed_script: list[tuple[int, int]] = field(default_factory=list)


@dataclass
class Normalised:
    """The normalised text and a piecewise map back to the original.

    Segment ``i`` covers normalised ``[norm[i], norm[i+1])`` and original
    ``[orig[i], orig_end[i])``; when both have the same length the map inside is one to one.
    """

    text: str
    original: str
    # the same text before lower-casing and lookalike folding (same length as ``text``)
    cased: str
    norm: list[int]
    orig: list[int]
    orig_end: list[int]
    signals: Signals

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        """The span of the original text that produced normalised ``[start, end)``."""
        if not self.norm:
            return start, end
        return self._map(start, end=False), self._map(max(start, end - 1), end=True)

    def _map(self, pos: int, *, end: bool) -> int:
        i = max(0, bisect.bisect_right(self.norm, pos) - 1)
        n_start = self.norm[i]
        n_end = self.norm[i + 1] if i + 1 < len(self.norm) else len(self.text)
        o_start, o_end = self.orig[i], self.orig_end[i]
        if n_end - n_start == o_end - o_start:
            return o_start + (pos - n_start) + (1 if end else 0)
        return o_end if end else o_start


def _fold(chunk: str) -> str:
    low = chunk.lower()
    if len(low) != len(chunk):  # e.g. U+0130 lowers to two code points: keep lengths aligned
        low = "".join(c if len(c.lower()) != 1 else c.lower() for c in chunk)
    return low.translate(_HOMOGLYPHS)


def normalise(text: str) -> Normalised:
    """Normalise ``text`` (see the module docstring). Linear in ``len(text)``."""
    signals = Signals()
    if text.isascii():
        return Normalised(text.lower(), text, text, [], [], [], signals)
    parts: list[str] = []
    cased: list[str] = []
    norm: list[int] = []
    orig: list[int] = []
    orig_end: list[int] = []
    produced = 0

    def emit(piece: str, o_start: int, o_end: int) -> None:
        nonlocal produced
        if not piece and o_start == o_end:
            return
        norm.append(produced)
        orig.append(o_start)
        orig_end.append(o_end)
        cased.append(piece)
        parts.append(_fold(piece))
        produced += len(piece)

    def visible(start: int, end: int) -> None:
        """Copy ``text[start:end]`` (no invisible characters), NFKC and folded."""
        pos = start
        for m in _NON_ASCII.finditer(text, start, end):
            if m.start() > pos:
                emit(text[pos : m.start()], pos, m.start())
            run = m.group(0)
            if _LOOKALIKES.intersection(run.lower()) and (
                _LATIN.search(text[max(start, m.start() - 1) : m.start()].lower())
                or _LATIN.search(text[m.end() : min(end, m.end() + 1)].lower())
            ):
                signals.mixed_script.append((m.start(), m.end()))
            nfkc = unicodedata.normalize("NFKC", run)
            if len(nfkc) == len(run):
                emit(nfkc, m.start(), m.end())
            else:
                # Map character by character so that a span stays as narrow as possible.
                for k, ch in enumerate(run):
                    emit(unicodedata.normalize("NFKC", ch), m.start() + k, m.start() + k + 1)
            pos = m.end()
        if pos < end:
            emit(text[pos:end], pos, end)

    pos = 0
    for m in _INVISIBLE.finditer(text):
        visible(pos, m.start())
        run = m.group(0)
        tags = [i for i, ch in enumerate(run) if _TAG_FIRST <= ord(ch) <= _TAG_LAST]
        flag = m.start() > 0 and text[m.start() - 1] == _BLACK_FLAG
        if tags and not flag:
            signals.tag_runs.append((m.start(), m.end()))
            for i in tags:
                ch = chr(ord(run[i]) - _TAG_FIRST)
                if " " <= ch <= "~":
                    emit(ch, m.start() + i, m.start() + i + 1)
        before = text[m.start() - 1] if m.start() > 0 else " "
        after = text[m.end()] if m.end() < len(text) else " "
        if before.isalnum() and after.isalnum() and len(tags) < len(run):
            signals.hidden_in_words.append((m.start(), m.end()))
        if any("\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069" for ch in run):
            signals.bidi.append((m.start(), m.end()))
        pos = m.end()
    visible(pos, len(text))
    return Normalised("".join(parts), text, "".join(cased), norm, orig, orig_end, signals)


def _deleet_token(m: re.Match[str]) -> str:
    token = m.group(0)
    if len(token) >= 4:
        word = token.translate(_LEET)
        # only tokens that become a plain word ("1gn0r3"), not "md5", "ipv6" or "sha256"
        if word.isalpha() and word.isascii():
            return word
    return token


def deleet(text: str) -> str:
    """Decode leetspeak in tokens that mix letters and leet digits. Keeps the length."""
    if _LEET_HINT.search(text) is None:
        return text
    return _LEET_TOKEN.sub(_deleet_token, text)
