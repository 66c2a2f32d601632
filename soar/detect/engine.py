"""The detection engine: rule packs run over normalised prompts and model outputs.

``Engine.default().scan(text, kind="prompt")`` returns one :class:`Finding` per rule that
matched (its first match), ordered by position. What is scanned:

* the normalised text (:mod:`soar.detect.normalise`: terminal escape sequences, control codes
  and invisible characters dropped, tag characters decoded, NFKC, lower case, lookalikes
  folded);
* the tokens that leetspeak decoding changes (``1gn0r3 411 pr3v10u5``), in the decoded text;
* the ROT13 of the text, when it holds at least two rule keywords that the text itself does
  not (a ROT13-encoded instruction);
* each base64 segment (>= 20 characters) and each hex run (>= 20 digits, or ``\\x41``
  escapes) that decodes to printable UTF-8, scanned with the same rules; a finding inside it
  has the span of the whole segment.

Spans are offsets in the *original* input (``text[start:end]``), widened to whole characters
that normalisation merged or split. The text scanned is at most :data:`MAX_CHARS` characters
(the head); :func:`technique_scores` combines the findings into one score per technique.

Cost: one combined pass splits the text into its set of words; a rule is a candidate only
when one of its keywords occurs (a set intersection for words, ``in`` for phrases). A rule's
keywords are its *anchors*: its pattern runs only in bounded windows around the places where
they occur (``[at - w, at + len(keyword) + w]``, merged; ``w`` the longest match the pattern
can make, at most :data:`WINDOW`), never over the rest of the text; so a match must hold one
of its rule's keywords and be at most ``w`` characters long. Candidates run by decreasing
score, and not at all once their technique has reached a combined score of 0.97 (so a
finding list names the rules that sufficed, not necessarily every rule that would match).
Patterns are checked at load time to be linear (see :mod:`soar.detect.rules`), so each window
costs time linear in its length, and each text position is in at most one window per rule.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import importlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final, Literal

from soar.detect import leakage
from soar.detect.catalog import KNOWN_TECHNIQUES
from soar.detect.normalise import Normalised, deleet, normalise, rot13
from soar.detect.rules import Rule, RulePack, builtin_packs

__all__ = ["MAX_CHARS", "WINDOW", "Engine", "Finding", "technique_scores"]

MAX_CHARS: Final = 262_144
# The widest window a pattern runs in on either side of one of its keywords.
WINDOW: Final = 240
_B64_SEGMENT = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}+={0,2}+")
_HEX_SEGMENT = re.compile(r"(?<![0-9a-f])[0-9a-f]{20,}+")
_HEX_ESCAPES = re.compile(r"(?:\\x[0-9a-f]{2}){6,}+")
_ALNUM: Final = frozenset("abcdefghijklmnopqrstuvwxyz0123456789")
_WORD_TAIL = re.compile(r"[a-z0-9]{0,64}+")
_MAX_SEGMENTS: Final = 16
_MAX_DECODED: Final = 65_536
# Once a technique's combined score reaches this, its remaining rules are skipped.
_ENOUGH: Final = 0.97
# ASCII punctuation and whitespace become word separators for the keyword prefilter.
_SEPARATORS = bytes(range(33, 48)) + bytes(range(58, 65)) + bytes(range(91, 97))
_SEPARATORS += bytes(range(123, 127)) + b"\t\n\r\x0b\x0c"
_TO_SPACE: Final = bytes.maketrans(_SEPARATORS, b" " * len(_SEPARATORS))


def _words(text: str) -> frozenset[bytes]:
    return frozenset(text.encode("utf-8", "surrogatepass").translate(_TO_SPACE).split())


ScanKind = Literal["prompt", "output"]


@dataclass(frozen=True)
class Finding:
    technique: str
    rule: str
    score: float
    span: tuple[int, int]
    why: str

    def as_dict(self) -> dict[str, object]:
        return {
            "technique": self.technique,
            "rule": self.rule,
            "score": round(self.score, 3),
            "span": list(self.span),
            "why": self.why,
        }


def technique_scores(findings: Iterable[Finding]) -> dict[str, float]:
    """One score per technique: 1 - prod(1 - score) over its findings (independent evidence)."""
    miss: dict[str, float] = {}
    for f in findings:
        miss[f.technique] = miss.get(f.technique, 1.0) * (1.0 - f.score)
    return {t: round(1.0 - m, 4) for t, m in sorted(miss.items())}


class Engine:
    """A set of rules, split by the kind of text they apply to."""

    def __init__(self, packs: Sequence[RulePack]) -> None:
        self.packs = tuple(packs)
        seen: set[str] = set()
        names = [p.name for p in self.packs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rule pack names in {names}")
        for pack in self.packs:
            for rule in pack.rules:
                if rule.id in seen:
                    raise ValueError(f"{pack.source} line {rule.line}: duplicate rule id {rule.id}")
                seen.add(rule.id)
        self._by_kind: dict[str, tuple[Rule, ...]] = {
            kind: tuple(r for p in self.packs for r in p.rules if r.applies_to(kind))
            for kind in ("prompt", "output")
        }
        self._indexes = {kind: _index(rules) for kind, rules in self._by_kind.items()}

    @classmethod
    def default(cls) -> Engine:
        return _default_engine()

    def rules(self, kind: ScanKind) -> tuple[Rule, ...]:
        return self._by_kind[kind]

    def scan(self, text: str, kind: ScanKind = "prompt") -> list[Finding]:
        if kind not in self._by_kind:
            raise ValueError(f"kind must be 'prompt' or 'output', not {kind!r}")
        norm = normalise(text[:MAX_CHARS])
        rules = self._by_kind[kind]
        index = self._indexes[kind]
        found: dict[str, Finding] = {}
        words = _words(norm.text)
        _Pass(rules, index, norm, norm.text, words, found).run()
        leet, changed = deleet(norm.text)
        if changed:
            leet_words = _words(" ".join(leet[a:b] for a, b in changed))
            note = " (after leetspeak decoding)"
            _Pass(rules, index, norm, leet, leet_words, found, note, only=changed).run()
        if len(words & index.strong_rot13) >= 2:  # keywords written in ROT13
            rot = rot13(norm.text)
            rot_words = _words(rot) - words
            _Pass(rules, index, norm, rot, rot_words, found, " (after ROT13 decoding)").run()
        for rule in rules:
            if rule.detector is not None and rule.id not in found:
                finding = self._detector(rule, norm, kind, found)
                if finding is not None:
                    found[rule.id] = finding
        return sorted(found.values(), key=lambda f: (f.span, f.technique, f.rule))

    # -- internals --------------------------------------------------------------------------

    def _detector(
        self, rule: Rule, norm: Normalised, kind: str, found: dict[str, Finding]
    ) -> Finding | None:
        sig = norm.signals
        if rule.detector == "invisible":
            if sig.tag_runs:
                return self._hit(rule, sig.tag_runs[0], "Unicode tag characters (hidden ASCII)")
            if sig.bidi:
                return self._hit(rule, sig.bidi[0], "bidirectional override characters")
            if sig.hidden_in_words:
                return self._hit(rule, sig.hidden_in_words[0], "zero-width characters in words")
            if sig.controls_in_words:
                where = sig.controls_in_words[0]
                return self._hit(rule, where, "terminal escape sequences or control codes in words")
            return None
        if rule.detector == "mixed-script":
            if sig.mixed_script:
                return self._hit(rule, sig.mixed_script[0], "Cyrillic/Greek lookalikes in words")
            return None
        if rule.detector == "secrets":
            for what, start, end in leakage.secrets(norm.cased):
                return self._hit(rule, norm.original_span(start, end), what)
            return None
        if rule.detector == "pii":
            for what, start, end in leakage.personal_data(norm.cased):
                return self._hit(rule, norm.original_span(start, end), what)
            return None
        if rule.detector == "encoded":
            return self._encoded(rule, norm, kind, found)
        return None  # pragma: no cover - the loader only accepts known detectors

    @staticmethod
    def _hit(rule: Rule, span: tuple[int, int], what: str) -> Finding:
        return Finding(rule.technique, rule.id, rule.score, span, f"{rule.why}: {what}")

    def _encoded(
        self, rule: Rule, norm: Normalised, kind: str, found: dict[str, Finding]
    ) -> Finding | None:
        first: Finding | None = None
        budget = _MAX_DECODED
        segments = 0
        if len(max(norm.cased.split(), key=len, default="")) < 20:
            return None  # no run of 20 characters without a space: nothing encoded
        candidates = [(m, "base64") for m in _B64_SEGMENT.finditer(norm.cased)]
        candidates += [(m, "hex") for m in _HEX_SEGMENT.finditer(norm.text)]
        if "\\x" in norm.text:
            candidates += [(m, "hex") for m in _HEX_ESCAPES.finditer(norm.text)]
        rules = self._by_kind[kind]
        index = self._indexes[kind]
        for m, how in candidates:
            if segments >= _MAX_SEGMENTS or budget <= 0:
                break
            segment = m.group(0)
            if how == "base64":
                if segment.islower() or segment.isupper() or segment.isdigit():
                    continue  # an identifier, a hex digest or a number, not base64 text
                decoded = _decode_base64(segment[: budget * 2])
            else:
                decoded = _decode_hex(segment[: budget * 4])
            if decoded is None:
                continue
            segments += 1
            budget -= len(decoded)
            span = norm.original_span(m.start(), m.end())
            inner = normalise(decoded)
            hits: dict[str, Finding] = {}
            note = f" (inside {how})"
            _Pass(rules, index, inner, inner.text, _words(inner.text), hits, note, span).run()
            hits = {k: v for k, v in hits.items() if k not in found}
            if hits:
                found.update(hits)
                if first is None:
                    names = ", ".join(sorted(hits))
                    first = self._hit(rule, span, f"{how} text that matches {names}")
        return first


class _Pass:
    """One scan of one variant of the text: candidates by keyword, patterns in windows."""

    def __init__(
        self,
        rules: Sequence[Rule],
        index: _Index,
        norm: Normalised,
        text: str,
        words: frozenset[bytes],
        found: dict[str, Finding],
        note: str = "",
        span: tuple[int, int] | None = None,
        only: list[tuple[int, int]] | None = None,
    ) -> None:
        self.rules = rules
        self.index = index
        self.norm = norm
        self.text = text
        self.words = words
        self.found = found
        self.note = note
        self.span = span
        # restrict keyword occurrences to these (sorted, disjoint) spans
        self.only = only
        self._at: dict[str, list[int]] = {}

    def run(self) -> None:
        index, text = self.index, self.text
        anchors: dict[int, list[str]] = {}
        for word in self.words & index.words.keys():
            kw = word.decode("utf-8", "surrogatepass")
            for i in index.words[word]:
                anchors.setdefault(i, []).append(kw)
        for phrase, which in index.phrases:
            if phrase in text:
                for i in which:
                    anchors.setdefault(i, []).append(phrase)
        words = self.words
        for head in words & index.headed.keys():
            for phrase, need, which in index.headed[head]:
                if need <= words and phrase in text:
                    for i in which:
                        anchors.setdefault(i, []).append(phrase)
        for i in index.always:
            anchors.setdefault(i, [])
        if not anchors:
            return
        miss: dict[str, float] = {}
        for f in self.found.values():
            miss[f.technique] = miss.get(f.technique, 1.0) * (1.0 - f.score)
        for i in sorted(anchors, key=index.rank.__getitem__):
            rule = self.rules[i]
            if rule.pattern is None or rule.id in self.found:
                continue
            if 1.0 - miss.get(rule.technique, 1.0) >= _ENOUGH:
                continue
            m = self._search(rule.pattern, anchors[i], index.reach[i])
            if m is None:
                continue
            where = self.span if self.span is not None else self.norm.original_span(*m)
            self.found[rule.id] = Finding(
                rule.technique, rule.id, rule.score, where, rule.why + self.note
            )
            miss[rule.technique] = miss.get(rule.technique, 1.0) * (1.0 - rule.score)

    def _search(
        self, pattern: re.Pattern[str], keywords: list[str], reach: int
    ) -> tuple[int, int] | None:
        text = self.text
        if not keywords:  # a rule without keywords runs on the whole text
            m = pattern.search(text)
            return None if m is None else (m.start(), m.end())
        end_of_text = len(text)
        spans: list[tuple[int, int]] = []
        for kw in keywords:
            n = len(kw)
            spans.extend(
                (max(at - reach, 0), min(at + n + reach, end_of_text))
                for at in self._occurrences(kw)
            )
        if not spans:
            return None
        spans.sort()
        windows: list[tuple[int, int]] = []
        lo, hi = spans[0]
        for a, b in spans[1:]:
            if a <= hi:
                hi = max(hi, b)
            else:
                windows.append((lo, hi))
                lo, hi = a, b
        windows.append((lo, hi))
        for start, stop in windows:
            # a window never ends inside a word: \b and lookaheads see what follows
            tail = _WORD_TAIL.match(text, stop) if stop < end_of_text else None
            if tail is not None:
                stop = tail.end()
            m = pattern.search(text, start, stop)
            if m is not None:
                return m.start(), m.end()
        return None

    def _occurrences(self, kw: str) -> list[int]:
        """Where ``kw`` occurs (a word keyword: as a whole word), cached per pass."""
        got = self._at.get(kw)
        if got is not None:
            return got
        text = self.text
        whole = kw[0] in _ALNUM and kw[-1] in _ALNUM and _IS_WORD.fullmatch(kw) is not None
        out: list[int] = []
        n = len(kw)
        at = text.find(kw)
        while at >= 0:
            if not whole or (
                (at == 0 or text[at - 1] not in _ALNUM)
                and (at + n >= len(text) or text[at + n] not in _ALNUM)
            ):
                out.append(at)
            at = text.find(kw, at + n)
        if self.only is not None:
            only = self.only
            starts = [a for a, _ in only]
            kept = []
            for at in out:
                j = bisect.bisect_right(starts, at + n - 1) - 1
                if j >= 0 and only[j][1] > at:
                    kept.append(at)
            out = kept
        self._at[kw] = out
        return out


_IS_WORD = re.compile(r"[a-z0-9]++")


def _printable(text: str) -> str | None:
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    letters = sum(1 for c in text if c.isalpha())
    if printable < 0.95 * len(text) or letters < 0.5 * len(text):
        return None
    return text


def _decode_base64(segment: str) -> str | None:
    s = segment.rstrip("=").replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        raw = base64.b64decode(s, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    return _printable(text)


def _decode_hex(segment: str) -> str | None:
    digits = segment.replace("\\x", "")
    try:
        text = bytes.fromhex(digits[: len(digits) // 2 * 2]).decode("utf-8")
    except (ValueError, UnicodeDecodeError):
        return None
    return _printable(text)


@dataclass(frozen=True)
class _Index:
    """Which rules (by position) each keyword word or phrase enables; ``always``: no keywords.
    ``rank``: the order candidates run in; ``reach``: each rule's window on either side of a
    keyword; ``strong_rot13``: the ROT13 of keyword words of four letters or more (unless
    that is a keyword itself), two of which in a text make it worth decoding."""

    words: dict[bytes, tuple[int, ...]]
    # phrases that start with a word, checked only when that word occurs
    # (phrase, the words it is made of, which must all occur, rules)
    headed: dict[bytes, tuple[tuple[str, frozenset[bytes], tuple[int, ...]], ...]]
    # phrases that start with punctuation or symbols, always checked
    phrases: tuple[tuple[str, tuple[int, ...]], ...]
    always: tuple[int, ...]
    rank: dict[int, tuple[float, int]]
    reach: dict[int, int]
    strong_rot13: frozenset[bytes]


_ROT13_BYTES: Final = bytes.maketrans(b"abcdefghijklmnopqrstuvwxyz", b"nopqrstuvwxyzabcdefghijklm")
_HEAD = re.compile(r"[a-z0-9]++(?=[^a-z0-9]|$)")
# a phrase of whole words: each of its words must be in the text's word set
_WHOLE_WORDS = re.compile(r"[a-z0-9]++(?: [a-z0-9]++)*+")


def _max_width(pattern: re.Pattern[str]) -> int:
    """The longest match ``pattern`` can make, capped at :data:`WINDOW`."""
    try:
        sre_parse: Any = importlib.import_module("re._parser")
        width = int(sre_parse.parse(pattern.pattern).getwidth()[1])
    except (ImportError, re.error, AttributeError):  # pragma: no cover - other interpreters
        return WINDOW
    return min(width, WINDOW)


def _index(rules: Sequence[Rule]) -> _Index:
    words: dict[bytes, list[int]] = {}
    phrases: dict[str, list[int]] = {}
    always: list[int] = []
    rank: dict[int, tuple[float, int]] = {}
    reach: dict[int, int] = {}
    for i, rule in enumerate(rules):
        if rule.pattern is None:
            continue
        rank[i] = (-rule.score, i)
        reach[i] = _max_width(rule.pattern)
        if not rule.keywords:
            always.append(i)
        for w in rule.words:
            words.setdefault(w, []).append(i)
        for p in rule.phrases:
            phrases.setdefault(p, []).append(i)
    headed: dict[bytes, list[tuple[str, frozenset[bytes], tuple[int, ...]]]] = {}
    loose: list[tuple[str, tuple[int, ...]]] = []
    for p, v in phrases.items():
        head = _HEAD.match(p)
        if head is not None:
            need = _words(p) if _WHOLE_WORDS.fullmatch(p) else frozenset({head.group(0).encode()})
            headed.setdefault(head.group(0).encode(), []).append((p, need, tuple(v)))
        else:
            loose.append((p, tuple(v)))
    return _Index(
        {w: tuple(v) for w, v in words.items()},
        {h: tuple(v) for h, v in headed.items()},
        tuple(loose),
        tuple(always),
        rank,
        reach,
        frozenset(
            r
            for w in words
            if len(w) >= 4 and w.isalpha() and (r := w.translate(_ROT13_BYTES)) not in words
        ),
    )


@lru_cache(maxsize=1)
def _default_engine() -> Engine:
    return Engine(builtin_packs(KNOWN_TECHNIQUES))
