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
import itertools
import operator
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final

from soar.detect.matcher import PatternSet, Regex
from soar.redact import _INVISIBLE

__all__ = ["Normalised", "Signals", "deleet", "normalise", "rot13"]

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
        # Latin small capitals and other letters NFKC keeps ("ɪɢɴᴏʀᴇ")
        "\u1d00": "a",
        "\u0299": "b",
        "\u1d04": "c",
        "\u1d05": "d",
        "\u1d07": "e",
        "\ua730": "f",
        "\u0262": "g",
        "\u029c": "h",
        "\u026a": "i",
        "\u1d0a": "j",
        "\u1d0b": "k",
        "\u029f": "l",
        "\u1d0d": "m",
        "\u0274": "n",
        "\u1d0f": "o",
        "\u1d18": "p",
        "\u0280": "r",
        "\ua731": "s",
        "\u1d1b": "t",
        "\u1d1c": "u",
        "\u1d20": "v",
        "\u1d21": "w",
        "\u028f": "y",
        "\u1d22": "z",
        "\u0131": "i",  # dotless i
        "\u0237": "j",  # dotless j
        # Armenian
        "\u0585": "o",  # armenian small letter oh
        "\u057d": "u",  # armenian small letter seh
        "\u0570": "h",  # armenian small letter ho
        "\u0578": "n",  # armenian small letter vo
        # typographic quotes and dashes, so that rules need only ' " and -
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
    }
)
# Letter-like symbols NFKC keeps: regional indicators (🇭🇴🇼), negative circled and negative
# squared letters (🅗🅞🅦, 🅷🅾🆆), one code point each, so the length is kept.
_HOMOGLYPHS.update(
    {base + i: chr(ord("a") + i) for base in (0x1F1E6, 0x1F150, 0x1F170) for i in range(26)}
)
# The letters that make a word "mixed-script". The dotless i is folded for matching like the
# others, but it is an ordinary letter of Turkish and Azerbaijani words ("s\u0131cak"), not a
# sign of disguise.
_LOOKALIKES: Final = frozenset(
    chr(c) for c in _HOMOGLYPHS if chr(c).isalpha() and ord(chr(c)) < 0x1F000
) - {"\u0131"}
# (non-ASCII only: the upper case of a dotless i is "I")
_LOOKALIKE_CLASS: Final = "".join(
    sorted(
        c
        for c in _LOOKALIKES | {c.upper() for c in _LOOKALIKES if len(c.upper()) == 1}
        if not c.isascii()
    )
)
_ANY_LOOKALIKE = re.compile(f"[{_LOOKALIKE_CLASS}]")
# The lookalikes themselves, to search lower-cased text (``_LOOKALIKES & set(s)`` is slower).
_LOWER_LOOKALIKE = re.compile("[" + "".join(sorted(_LOOKALIKES)) + "]")
# The one character outside _LOOKALIKE_CLASS whose lower case holds a lookalike.
_OHM: Final = "\u2126"

# Folded too, but no lookalikes (no sign of disguise by themselves):
#
# Blank characters that are not white space to NFKC or to the rules (each its own ASCII
# separator, so that words joined by them stay words): line and paragraph separators, Ogham
# space mark, Braille blank.
_HOMOGLYPHS.update({0x2028: "\n", 0x2029: "\n", 0x1680: " ", 0x2800: " "})


# Latin letters "X WITH" diacritics, after lower-casing, read as their base letter, by their
# Unicode names: "\u00edgn\u00f6re" reads "ignore" (for matching only; spans still index the
# original), and so do the letters with a hook, bar or stroke that Unicode does not decompose
# ("\u0268", "\u00f8"); capitals too, for those whose lower case is not one character
# ("\u0130", capital I with dot above).
_LATIN_WITH = re.compile(r"LATIN (?:SMALL|CAPITAL) LETTER ([A-Z]) WITH .+")
_HOMOGLYPHS.update(
    {
        c: m[1].lower()
        for start, end in ((0xC0, 0x2B0), (0x1D00, 0x1DC0), (0x1E00, 0x1F00), (0x2C60, 0x2C80))
        for c in range(start, end)
        if c not in _HOMOGLYPHS
        and (m := _LATIN_WITH.fullmatch(unicodedata.name(chr(c), ""))) is not None
        and (chr(c).islower() or len(chr(c).lower()) != 1)
    }
)


# A run of non-ASCII characters holding a lookalike next to a Latin letter (the letter is
# part of the match and dropped from the span). RE2: linear, however long the runs.
_NON_LATIN_RUN = "[^\\x00-\\x7f]"
_LOOKALIKE_RE2 = "[" + "".join(f"\\x{{{ord(c):x}}}" for c in _LOOKALIKE_CLASS) + "]"
_MIXED_RUN = Regex(
    f"[A-Za-z]{_NON_LATIN_RUN}*{_LOOKALIKE_RE2}{_NON_LATIN_RUN}*"
    f"|{_NON_LATIN_RUN}*{_LOOKALIKE_RE2}{_NON_LATIN_RUN}*[A-Za-z]"
)
_MAX_MIXED: Final = 16


def _mixed_script(text: str, data: bytes | None = None) -> list[tuple[int, int]]:
    """Runs of non-ASCII characters that hold a Cyrillic/Greek lookalike and touch a Latin
    letter ("ign\\u043ere", with a Cyrillic o); the first :data:`_MAX_MIXED` of them.
    ``data``: the text's UTF-8, when the caller knows that it holds a lookalike."""
    if data is None:
        if _ANY_LOOKALIKE.search(text) is None:
            return []
        data = text.encode("utf-8", "surrogatepass")
    out: list[tuple[int, int]] = []
    pos = 0
    while len(out) < _MAX_MIXED:
        m = _MIXED_RUN.search(data, pos)
        if m is None:
            break
        start, end = m
        # the Latin letter a match ends with may start the next run's match: search on from it
        pos = end - 1 if data[end - 1 : end].isalpha() else end
        if data[start : start + 1].isalpha():
            start += 1
        if data[end - 1 : end].isalpha():
            end -= 1
        out.append(
            (
                len(data[:start].decode("utf-8", "surrogatepass")),
                len(data[:end].decode("utf-8", "surrogatepass")),
            )
        )
    return out


def _fold_lookalikes(low: str) -> str:
    """``low.translate(_HOMOGLYPHS)``, faster: the table maps only non-ASCII characters, and
    CPython translates a non-ASCII string with one dictionary look-up per character, so a text
    with a few non-ASCII characters has only its non-ASCII runs translated."""
    if low.isascii():
        return low
    for typographic, plain in _PUNCTUATION:  # the common case: str.replace is a fast scan
        if typographic in low:
            low = low.replace(typographic, plain)
    if low.isascii():
        return low
    data = low.encode("utf-8", "surrogatepass")
    if _FOLDED_RE2.search(data) is None:
        return low
    if 8 * (len(low) - len(low.encode("ascii", "ignore"))) > len(low):
        return low.translate(_HOMOGLYPHS)
    parts = []
    pos = 0
    for start, end in _NON_ASCII_RE2.finditer(data):
        parts.append(data[pos:start])
        run = data[start:end].decode("utf-8", "surrogatepass").translate(_HOMOGLYPHS)
        parts.append(run.encode("utf-8", "surrogatepass"))
        pos = end
    parts.append(data[pos:])
    return b"".join(parts).decode("utf-8", "surrogatepass")


# A run of non-ASCII characters, found by RE2 in the UTF-8 bytes (much faster than sre).
_NON_ASCII_RE2 = Regex(r"[^\x00-\x7f]+")
# The typographic quotes and dashes of the table, replaced first; then any other character the
# table maps.
_PUNCTUATION: Final = tuple(
    (chr(c), v)
    for c, v in sorted(_HOMOGLYPHS.items())
    if 0x2010 <= c <= 0x201D and isinstance(v, str)
)
_FOLDED_RE2 = Regex("[" + "".join(f"\\x{{{c:x}}}" for c in sorted(_HOMOGLYPHS)) + "]")


def _non_ascii_runs(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """The runs of non-ASCII characters of ``text[start:end]`` (character offsets)."""
    segment = text[start:end]
    data = segment.encode("utf-8", "surrogatepass")
    out = []
    at_byte, at_char = 0, start
    for a, b in _NON_ASCII_RE2.finditer(data):
        at_char += a - at_byte  # only ASCII before a run: one byte per character
        first = at_char
        at_char += len(data[a:b].decode("utf-8", "surrogatepass"))
        at_byte = b
        out.append((first, at_char))
    return out


# Terminal escape sequences (CSI, OSC, two-character ESC sequences, C1 CSI) and control codes
# other than tab, newline and carriage return: dropped like invisible characters, so that
# "ig\x1b[0mnore" reads "ignore". Every repetition is bounded or possessive (linear).
_ANSI: Final = (
    r"\x1b\[[0-?]{0,64}+[ -/]{0,16}+[@-~]?+"
    r"|\x1b\][^\x07\x1b\n]{0,1024}+(?:\x07|\x1b\\)?+"
    r"|\x1b[P^_][^\x1b\n]{0,1024}+(?:\x1b\\)?+"
    r"|\x1b[ -/]{0,4}+[0-~]?+"
    r"|\x9b[0-?]{0,64}+[ -/]{0,16}+[@-~]?+"
)
_CONTROL_CHARS: Final = "\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
# The ASCII bytes that are not control codes: an ASCII text holds a control code when its
# bytes with these deleted are not empty (faster than _CONTROL.search).
_NOT_CONTROL_ASCII: Final = bytes(range(0x20, 0x7F)) + b"\t\n\r"
# Combining marks of the blocks that decorate Latin letters and symbols (accents, strokes
# through letters, enclosing circles, "Zalgo" stacks): dropped like invisible characters, so
# that "i\u0336g\u0336n\u0336o\u0336r\u0336e\u0336" reads "ignore", but no sign of hiding
# by themselves (text in decomposed form, NFD, has them); and the Cyrillic combining marks
# U+0483-U+0489 (the titlo of Church Slavonic, and the enclosing thousands signs that "glitch
# text" hangs on every letter: "s\u0489y\u0489s\u0489t\u0489e\u0489m\u0489"). The marks of
# other scripts (Indic vowel signs, Hebrew points) are parts of their words and stay.
_MARKS: Final = "\u0300-\u036f\u1ab0-\u1aff\u1dc0-\u1dff\u20d0-\u20ff\ufe20-\ufe2f\u0483-\u0489"
# Hangul fillers: default-ignorable letters that render as a blank (a run holding one reads
# as a space)
_FILLERS = re.compile("[\u115f\u1160\u3164\uffa0]")
# (the combining grapheme joiner, U+034F, among them, is invisible: a sign)
_ONLY_MARKS = re.compile("[\u0300-\u034e\u0350-\u036f" + _MARKS.split("\u036f", 1)[1] + "]+")
_INVISIBLE_CLASS: Final = _INVISIBLE.pattern.removeprefix("[").removesuffix("]+") + _MARKS
_HIDDEN = re.compile(f"(?:{_ANSI}|[{_CONTROL_CHARS}{_INVISIBLE_CLASS}])++")
# Every character a hidden run can start with, as one class: searching for it is a tight loop,
# while searching for _HIDDEN itself tries its alternatives at every position.
_HIDDEN_START = re.compile(f"[{_CONTROL_CHARS}{_INVISIBLE_CLASS}]")
# The same class for RE2, to test a whole non-ASCII text at once (sre tests a class with astral
# ranges, such as the tag characters, slowly).
_HIDDEN_START_RE2 = Regex(
    "".join(
        c if c.isascii() and c.isprintable() else f"\\x{{{ord(c):x}}}"
        for c in _HIDDEN_START.pattern
    )
)
_HIDDEN_STARTS_RE2 = Regex(_HIDDEN_START_RE2.source + "+")
# Both questions about a non-ASCII text in one pass: a hidden character? a lookalike?
_TEXT_CHECKS = PatternSet([_HIDDEN_START_RE2.source, _LOOKALIKE_RE2], group=2)
# A word mixing Latin letters and Cyrillic/Greek lookalikes (before folding).
_LATIN = re.compile(r"[a-z]")

_LEET: Final = str.maketrans(
    {
        "0": "o",
        "1": "i",
        "3": "e",
        "4": "a",
        "5": "s",
        "7": "t",
        "8": "b",
        "9": "g",
        "@": "a",
        "$": "s",
        "!": "i",
        "|": "l",
    }
)
# A token of letters, digits and leet symbols ("!" and "|" only between others).
_LEET_TOKEN = re.compile(r"[!|]?+[a-z0-9@$]++(?:[!|]++[a-z0-9@$]++)*+")
_LEET_HINT = re.compile(r"[a-z][013457-9@$!|]|[013457-9@$!|][a-z]")
_LEET_CHARS: Final = frozenset("01345789@$!|")
_TOKEN_CHARS: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789@$!|")


@dataclass
class Signals:
    """What normalisation saw that is suspicious in itself (evidence of obfuscation)."""

    # (start, end) in the original text of each run of tag characters (decoded, not a flag)
    tag_runs: list[tuple[int, int]] = field(default_factory=list)
    # (start, end) of zero-width / bidi characters inside a word
    hidden_in_words: list[tuple[int, int]] = field(default_factory=list)
    # (start, end) of terminal escape sequences / control codes inside a word
    controls_in_words: list[tuple[int, int]] = field(default_factory=list)
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
    return _fold_lookalikes(low)


def _hidden_runs(text: str, data: bytes | None = None) -> Iterator[re.Match[str]]:
    """``_HIDDEN.finditer(text)``, faster: find where a run can start with the one-class
    search, and match the run there (every character of that class starts a run). The
    search is RE2's on ``data`` (the text's UTF-8, surrogates passed) when given: sre tests
    a class with astral ranges slowly on a text with astral characters (emoji)."""
    if data is None:
        pos = 0
        while True:
            start = _HIDDEN_START.search(text, pos)
            if start is None:
                return
            m = _HIDDEN.match(text, start.start())
            if m is None:  # pragma: no cover - every start character is a run by itself
                pos = start.start() + 1
                continue
            yield m
            pos = m.end()
    # Each match is a whole run of start characters: a hidden run that starts in it takes it
    # all (every start character continues a run), so no other run can start inside it.
    pos = at_byte = at_char = 0
    for first, _ in _HIDDEN_STARTS_RE2.finditer(data):
        at_char += len(data[at_byte:first].decode("utf-8", "surrogatepass"))
        at_byte = first
        if at_char < pos:
            continue  # inside the run just matched (an escape sequence's payload)
        m = _HIDDEN.match(text, at_char)
        if m is None:  # pragma: no cover - every start character is a run by itself
            continue
        yield m
        pos = m.end()


def normalise(text: str) -> Normalised:
    """Normalise ``text`` (see the module docstring). Linear in ``len(text)``."""
    signals = Signals()
    # whether a character of the text may lower-case to a lookalike: one of the class, or
    # the only other one, the ohm sign (which lower-cases to an omega)
    maybe_lookalike = False
    data: bytes | None = None  # the UTF-8 of a non-ASCII text
    if text.isascii():
        if not text.encode("ascii").translate(None, _NOT_CONTROL_ASCII):
            return Normalised(text.lower(), text, text, [], [], [], signals)
    else:
        data = text.encode("utf-8", "surrogatepass")
        checks = _TEXT_CHECKS.match(data)
        maybe_lookalike = 1 in checks or _OHM in text
        if 0 not in checks:  # nothing hidden
            nfkc = unicodedata.normalize("NFKC", text)
            if len(nfkc) == len(text) and len(low := nfkc.lower()) == len(text):
                # one to one: no map needed (the common case of typographic quotes and emoji)
                if 1 in checks:
                    signals.mixed_script.extend(_mixed_script(text, data))
                return Normalised(_fold_lookalikes(low), text, nfkc, [], [], [], signals)
    if not maybe_lookalike and _dense_hidden(data if data is not None else text.encode()):
        dropped = _hidden_dropped(text, signals)
        if dropped is not None:
            return dropped
    return _general(text, signals, maybe_lookalike, data)


# Bytes of text per hidden run below which dropping them in bulk pays off (sre's split reads
# every position; the piece-by-piece path finds the runs with RE2 and costs a Python step per
# run): measured, a few runs per KiB cost the bulk path twice as much, hundreds a tenth.
_DENSE_EVERY: Final = 128


def _dense_hidden(data: bytes) -> bool:
    """Whether the text (UTF-8) holds a hidden run per :data:`_DENSE_EVERY` bytes or more
    (and at least 64 runs)."""
    need = max(64, len(data) // _DENSE_EVERY)
    runs = _HIDDEN_STARTS_RE2.finditer(data)
    return sum(1 for _ in itertools.islice(runs, need)) >= need


# Hidden characters that normalisation does more with than drop them: tag characters (decoded)
# and bidi controls (reported wherever they are). (Hangul fillers, read as spaces, the bulk
# path does itself.)
_SPECIAL_HIDDEN = re.compile("[\U000e0000-\U000e007f\u202a-\u202e\u2066-\u2069]")
_HIDDEN_SPLIT = re.compile(f"({_HIDDEN.pattern})")


# Hidden runs inside words recorded per kind (the engine reports the first; a text of
# hundreds of thousands of them must not keep a list as long).
_MAX_SIGNS: Final = 16


def _sign(signals: Signals, run: str, start: int, end: int) -> None:
    """Record a run of hidden characters inside a word (up to :data:`_MAX_SIGNS` per kind)."""
    signs = signals.controls_in_words if _CONTROL.search(run) else signals.hidden_in_words
    if len(signs) < _MAX_SIGNS:
        signs.append((start, end))


def _hidden_dropped(text: str, signals: Signals) -> Normalised | None:
    """What :func:`_general` makes of ``text`` when its hidden runs are only to be dropped or
    read as a space (no tag character or bidi control) and the rest is NFKC already and keeps
    its length in lower case, no lookalike in it; None otherwise. Built with C-level splits,
    joins and sums instead of a Python step per hidden run: a text of a letter and a hidden
    character by turns (hostile) cost 2 µs per character that way."""
    if _SPECIAL_HIDDEN.search(text):
        return None
    parts = _HIDDEN_SPLIT.split(text)  # visible, hidden, visible, ..., visible
    if len(parts) == 1:
        return None
    joined = "".join(parts[0::2])
    if not unicodedata.is_normalized("NFKC", joined) or len(joined.lower()) != len(joined):
        return None
    bounds = list(itertools.accumulate(map(len, parts), initial=0))
    if _FILLERS.search(text) is None:
        starts, ends = bounds[0:-1:2], bounds[1::2]  # of each visible part
        lengths = list(map(operator.sub, ends, starts))
        orig = list(itertools.compress(starts, lengths))  # the visible parts that are not empty
        orig_end = list(itertools.compress(ends, lengths))
        norm = list(itertools.accumulate(itertools.compress(lengths, lengths), initial=0))[:-1]
    else:  # a run with a Hangul filler is a space: a piece of its own
        pieces: list[str] = []
        orig, orig_end, norm = [], [], []
        produced = 0
        for k, part in enumerate(parts):
            if k % 2 == 1:
                if _FILLERS.search(part) is None:
                    continue
                part = " "
            elif not part:
                continue
            pieces.append(part)
            norm.append(produced)
            orig.append(bounds[k])
            orig_end.append(bounds[k + 1])
            produced += len(part)
        joined = "".join(pieces)
    size = len(text)
    # the signs there may be (a run with a control code is one of those, any other with an
    # invisible character one of these; runs of combining marks alone are none)
    controls = _MAX_SIGNS if _CONTROL.search(text) else 0
    hidden = _MAX_SIGNS if _INVISIBLE.search(text) else 0
    for k in range(1, len(parts), 2):
        if len(signals.controls_in_words) >= controls and len(signals.hidden_in_words) >= hidden:
            break  # no more to record
        start, end = bounds[k], bounds[k + 1]
        if not (start > 0 and end < size and text[start - 1].isalnum() and text[end].isalnum()):
            continue
        run = parts[k]
        if _ONLY_MARKS.fullmatch(run):
            continue
        _sign(signals, run, start, end)
    return Normalised(_fold(joined), text, joined, norm, orig, orig_end, signals)


def _general(text: str, signals: Signals, maybe_lookalike: bool, data: bytes | None) -> Normalised:
    """:func:`normalise`, piece by piece (any text)."""
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
        produced += len(piece)

    def visible(start: int, end: int) -> None:
        """Copy ``text[start:end]`` (no invisible characters), NFKC (folded at the end)."""
        segment = text[start:end]
        if segment.isascii():
            emit(segment, start, end)
            return
        # The common case: NFKC keeps the segment as it is (then it keeps each non-ASCII run
        # alone as it is: a run is bounded by ASCII characters, which compose with nothing
        # after them) and no lookalike is there to report: one piece, mapped one to one.
        lookalikes = maybe_lookalike and _LOWER_LOOKALIKE.search(segment.lower()) is not None
        if not lookalikes and unicodedata.is_normalized("NFKC", segment):
            emit(segment, start, end)
            return
        # Otherwise run by run. Pieces that keep their length are mapped one to one: they are
        # emitted together, as one piece (the same map as one piece each).
        pieces: list[str] = []
        same_from = pos = start
        for run_start, run_end in _non_ascii_runs(text, start, end):
            pieces.append(text[pos:run_start])
            run = text[run_start:run_end]
            if (
                lookalikes
                and _LOWER_LOOKALIKE.search(run.lower())
                and (
                    _LATIN.search(text[max(start, run_start - 1) : run_start].lower())
                    or _LATIN.search(text[run_end : min(end, run_end + 1)].lower())
                )
            ):
                signals.mixed_script.append((run_start, run_end))
            nfkc = unicodedata.normalize("NFKC", run)
            if len(nfkc) == len(run):
                pieces.append(nfkc)
            else:
                emit("".join(pieces), same_from, run_start)
                pieces = []
                # Map character by character so that a span stays as narrow as possible.
                for k, ch in enumerate(run):
                    emit(unicodedata.normalize("NFKC", ch), run_start + k, run_start + k + 1)
                same_from = run_end
            pos = run_end
        pieces.append(text[pos:end])
        emit("".join(pieces), same_from, end)

    pos = 0
    for m in _hidden_runs(text, data):
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
        if _FILLERS.search(run):
            # a Hangul filler renders as a blank as wide as a letter: read as a space (and,
            # inside a word, still a sign of hiding)
            emit(" ", m.start(), m.end())
        before = text[m.start() - 1] if m.start() > 0 else " "
        after = text[m.end()] if m.end() < len(text) else " "
        if (
            before.isalnum()
            and after.isalnum()
            and len(tags) < len(run)
            and not _ONLY_MARKS.fullmatch(run)
        ):
            _sign(signals, run, m.start(), m.end())
        if any("\u202a" <= ch <= "\u202e" or "\u2066" <= ch <= "\u2069" for ch in run):
            signals.bidi.append((m.start(), m.end()))
        pos = m.end()
    visible(pos, len(text))
    joined = "".join(cased)
    return Normalised(_fold(joined), text, joined, norm, orig, orig_end, signals)


def deleet(text: str) -> tuple[str, list[tuple[int, int]]]:
    """Decode leetspeak in tokens that mix letters and leet characters and become a plain
    word ("1gn0r3" -> "ignore", "pr0mp7" -> "prompt"; not "md5", "ipv6" or "sha256").

    Returns the decoded text (same length) and the spans of the tokens that changed."""
    out: list[str] = []
    changed: list[tuple[int, int]] = []
    pos = 0
    for hint in _LEET_HINT.finditer(text):
        if hint.start() < pos:
            continue  # inside the token just decoded
        start = hint.start()
        while start > pos and start > hint.start() - 64 and text[start - 1] in _TOKEN_CHARS:
            start -= 1
        m = _LEET_TOKEN.match(text, start)
        if m is None or m.end() <= hint.start():
            continue
        token = m.group(0)
        if len(token) < 4 or token.isalpha() or not _LEET_CHARS.intersection(token):
            continue
        word = token.translate(_LEET)
        if not (word.isalpha() and word.isascii()):
            continue
        out.append(text[pos : m.start()])
        out.append(word)
        changed.append((m.start(), m.end()))
        pos = m.end()
    if not changed:
        return text, []
    out.append(text[pos:])
    return "".join(out), changed


_ROT13: Final = str.maketrans("abcdefghijklmnopqrstuvwxyz", "nopqrstuvwxyzabcdefghijklm")


def rot13(text: str) -> str:
    """ROT13 of the (lower-case) letters a-z; everything else kept. Same length."""
    return text.translate(_ROT13)
