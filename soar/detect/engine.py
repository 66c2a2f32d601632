"""The detection engine: rule packs run over normalised prompts and model outputs.

``Engine.default().scan(text, kind="prompt")`` returns one :class:`Finding` per rule that
matched (its first match), ordered by position. What is scanned:

* the normalised text (:mod:`soar.detect.normalise`: terminal escape sequences, control codes
  and invisible characters dropped, tag characters decoded, NFKC, lower case, lookalikes
  folded);
* the tokens that leetspeak decoding changes (``1gn0r3 411 pr3v10u5``), in the decoded text,
  when one of them decodes to a rule keyword;
* the ROT13 of the text, when it holds at least two rule keywords that the text itself does
  not (a ROT13-encoded instruction);
* a view with HTML tags dropped and entities, ``\\uXXXX`` and ``%XX`` escapes decoded, when
  the text has three or more of one kind (a finding there has the whole text's span);
* each base64 segment (>= 20 characters, or wrapped in lines) and each hex run (>= 20 digits,
  or ``\\x41`` escapes) that decodes to printable UTF-8, all scanned together with the same
  rules; a finding inside has the span of its whole segment.

Spans are offsets in the *original* input (``text[start:end]``), widened to whole characters
that normalisation merged or split. The text scanned is at most :data:`MAX_CHARS` characters
(the head); :func:`technique_scores` combines the findings into one score per technique.

Matching (:mod:`soar.detect.matcher`): the patterns of the rules of a kind form RE2 sets (of
about :data:`soar.detect.matcher.GROUP` patterns, built by technique: :func:`_set_order`), each
of which reads the text once and says which of its patterns match somewhere; a byte check says
whether the text holds a long base64/hex-looking run, and one small set whether it holds a
leetspeak form of a keyword or ROT13 forms of keywords, so that ordinary text skips those
decodings. Only the rules the sets name run on their own (RE2 again) to find where: the first
match that holds one of the rule's keywords (and that its ``unless`` pattern does not match) is
the finding. Candidates run by decreasing score, and not at all once their technique has
reached a combined score of 0.97 (so a finding list names the rules that sufficed, not
necessarily every rule that would match); a set whose techniques have all reached it is not
run. RE2 never backtracks: every pass is linear in the length of the text, whatever the rules.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import html
import re
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal, NamedTuple

from soar.detect import leakage
from soar.detect.catalog import KNOWN_TECHNIQUES
from soar.detect.lexical import WordModel, builtin_models, first_word_at, words_of
from soar.detect.matcher import GROUP, PatternSet, Regex
from soar.detect.normalise import Normalised, deleet, normalise, rot13
from soar.detect.rules import Rule, RulePack, builtin_packs

__all__ = ["MAX_CHARS", "Engine", "Finding", "technique_scores"]

MAX_CHARS: Final = 262_144
# Whole runs (RE2: the leftmost match starts where a run starts and takes all of it).
_B64_SEGMENT = Regex(r"[A-Za-z0-9+/_-]{20,}={0,2}")
_HEX_SEGMENT = Regex(r"[0-9a-f]{20,}")
_HEX_ESCAPES = Regex(r"(?:\\x[0-9a-f]{2}){6,}")
# Base64 wrapped in lines (76 columns for base64(1) and MIME): two lines or more.
_B64_BLOCK = Regex(r"(?:[A-Za-z0-9+/]{16,}[ \t]*\r?\n)+[A-Za-z0-9+/]{2,}={0,2}")
# In the set: the text may hold an encoded segment (on the lower-cased text, so a superset of
# the base64 runs of the cased one).
_ENCODED_HINT: Final = r"[a-z0-9+/_-]{20}|(?:\\x[0-9a-f]{2}){6}"
# Its first half without RE2: the bytes of that class become "e", every other byte a space, and
# the text holds such a run when the result holds 20 "e" in a row (bytes.translate and a
# substring search are a fraction of the fixed cost of a set pass); the set runs only when the
# text holds "\\x" (its second half).
_ENCODED_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789+/_-")
_ENCODED_MASK: Final = bytes(0x65 if b in _ENCODED_BYTES else 0x20 for b in range(256))
_ENCODED_RUN: Final = b"e" * 20
# Bounds never reached by a text of MAX_CHARS (decoding shrinks it), kept as bounds.
_MAX_SEGMENTS: Final = 16_384
_MAX_DECODED: Final = MAX_CHARS
# Once a technique's combined score reaches this, its remaining rules are skipped.
_ENOUGH: Final = 0.97
# A word model is asked while its technique's combined score is below this, like a rule. (Asking
# it only below 0.5 took the p99 down by a fifth, but a caller whose threshold is higher, or who
# reads the score as a severity, would then miss its evidence.)
_MODEL_UNTIL: Final = _ENOUGH
# Matches of one rule tried in one pass before it is given up (each must hold a keyword).
_MAX_TRIES: Final = 32
# Matches of one rule excused by its unless / unless_before in one pass; past this many the
# rule's match is a finding all the same (decoys must not exhaust the search).
_MAX_EXCUSED: Final = 64
# How far back unless_before looks (bytes).
_BEFORE: Final = 48
# ASCII punctuation and whitespace become word separators for the keyword check.
_SEPARATORS = bytes(range(33, 48)) + bytes(range(58, 65)) + bytes(range(91, 97))
_SEPARATORS += bytes(range(123, 127)) + b"\t\n\r\x0b\x0c"
_TO_SPACE: Final = bytes.maketrans(_SEPARATORS, b" " * len(_SEPARATORS))
_ALNUM_BYTES: Final = frozenset(b"abcdefghijklmnopqrstuvwxyz0123456789")
# Every byte but the UTF-8 continuation bytes (0x80-0xBF).
_NOT_CONTINUATION: Final = bytes(b for b in range(256) if not 0x80 <= b <= 0xBF)
# Whitespace other than the space (bytes.split() splits at these too).
_OTHER_WHITESPACE: Final = (b"\t", b"\n", b"\r", b"\x0b", b"\x0c")
# How far the keyword check looks for the rest of a word a match cuts.
_WORD_REACH: Final = 64
# Leetspeak: the characters that decode to each letter (normalise._LEET, inverted), and those
# a leet token may be made of.
_LEET_FOR: Final = {
    "o": "0",
    "i": "1!",
    "e": "3",
    "a": "4@",
    "s": "5$",
    "t": "7",
    "b": "8",
    "g": "9",
    "l": "|",
}
_LEET_CLASS: Final = r"a-z0-9@$!|"


def _utf8(text: str) -> bytes:
    # a lone surrogate becomes "?": one byte for one character, so offsets stay mappable
    return text.encode("utf-8", "replace")


ScanKind = Literal["prompt", "output"]


@dataclass(frozen=True)
class Finding:
    technique: str
    rule: str
    score: float
    span: tuple[int, int]
    why: str
    # the rule's group: findings of one group (and technique) are one piece of evidence
    group: str = ""

    def as_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "technique": self.technique,
            "rule": self.rule,
            "score": round(self.score, 3),
            "span": list(self.span),
            "why": self.why,
        }
        if self.group:
            out["group"] = self.group
        return out


def technique_scores(findings: Iterable[Finding]) -> dict[str, float]:
    """One score per technique: ``1 - prod(1 - score)`` over its pieces of evidence, taken as
    independent. A finding is one piece of evidence, except that the findings of one group
    (rules that look at the same thing, such as the many ways of setting up a role-play) are
    one together, with the highest score among them."""
    return {t: round(s, 4) for t, s in sorted(_combined(findings).items())}


def _combined(findings: Iterable[Finding]) -> dict[str, float]:
    best: dict[tuple[str, str, str], float] = {}
    for f in findings:
        key = (f.technique, f.group, "" if f.group else f.rule)
        if f.score > best.get(key, 0.0):
            best[key] = f.score
    miss: dict[str, float] = {}
    for (technique, _, _), score in best.items():
        miss[technique] = miss.get(technique, 1.0) * (1.0 - score)
    return {t: 1.0 - m for t, m in miss.items()}


def _combined_one(findings: Iterable[Finding], technique: str) -> float:
    """``_combined(findings).get(technique, 0.0)``: the same function on that technique's
    findings (in the same order, so the same arithmetic)."""
    return _combined([f for f in findings if f.technique == technique]).get(technique, 0.0)


class Engine:
    """A set of rules, split by the kind of text they apply to."""

    def __init__(self, packs: Sequence[RulePack], models: Sequence[WordModel] = ()) -> None:
        self.packs = tuple(packs)
        # word models (soar.detect.lexical) read prompts: they were trained on prompts
        self.models = tuple(models)
        seen: set[str] = set()
        names = [p.name for p in self.packs]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate rule pack names in {names}")
        for pack in self.packs:
            for rule in pack.rules:
                if rule.id in seen:
                    raise ValueError(f"{pack.source} line {rule.line}: duplicate rule id {rule.id}")
                seen.add(rule.id)
        for model in self.models:
            if model.rule in seen:
                raise ValueError(f"word model {model.name}: duplicate rule id {model.rule}")
            seen.add(model.rule)
        self._by_kind: dict[str, tuple[Rule, ...]] = {
            kind: tuple(r for p in self.packs for r in p.rules if r.applies_to(kind))
            for kind in ("prompt", "output")
        }
        self._compiled = {kind: _Compiled(rules) for kind, rules in self._by_kind.items()}

    @classmethod
    def default(cls) -> Engine:
        return _default_engine()

    def rules(self, kind: ScanKind) -> tuple[Rule, ...]:
        return self._by_kind[kind]

    def scan(self, text: str, kind: ScanKind = "prompt") -> list[Finding]:
        if kind not in self._by_kind:
            raise ValueError(f"kind must be 'prompt' or 'output', not {kind!r}")
        norm = normalise(text[:MAX_CHARS])
        c = self._compiled[kind]
        found: dict[str, Finding] = {}
        data = _utf8(norm.text)
        flags = c.flags(data)
        _Pass(c, norm, data, found).run()
        if flags.leet:
            leet, changed = deleet(norm.text)
            if changed:
                leet_data = _utf8(leet)
                only = _byte_spans(norm.text, data, changed)
                note = " (after leetspeak decoding)"
                _Pass(c, norm, leet_data, found, note, only=only).run()
        if flags.rot13 >= 2:  # keywords written in ROT13
            rot_data = _utf8(rot13(norm.text))
            _Pass(c, norm, rot_data, found, " (after ROT13 decoding)").run()
        decoded = _markup_decoded(text[:MAX_CHARS]) if flags.markup else None
        if decoded is not None:  # HTML entities and tags, %XX, \\uXXXX: what a model reads
            whole = (0, min(len(text), MAX_CHARS))
            note = " (after HTML/URL/escape decoding)"
            view = normalise(decoded)
            _Pass(c, view, _utf8(view.text), found, where=lambda s, e: (whole, note)).run()
        for rule in c.detector_rules:
            if rule.id not in found:
                if rule.detector == "encoded" and not flags.encoded:
                    continue  # no run of 20 base64/hex characters: nothing encoded
                finding = self._detector(rule, norm, c, found)
                if finding is not None:
                    found[rule.id] = finding
        if kind == "prompt" and self.models:
            self._models(norm, data, found)
        return sorted(found.values(), key=lambda f: (f.span, f.technique, f.rule))

    # -- internals --------------------------------------------------------------------------

    def _models(self, norm: Normalised, data: bytes, found: dict[str, Finding]) -> None:
        # n distinct words take at least 2n - 1 bytes: a shorter text is below every minimum
        models = [m for m in self.models if len(data) >= 2 * m.min_words - 1]
        if not models:
            return
        reached = _combined(found.values())
        # the rules have said enough
        models = [m for m in models if reached.get(m.technique, 0.0) < _MODEL_UNTIL]
        if not models:
            return
        words = words_of(data)
        for model in models:
            p, top = model.probability(words)
            if not top:
                continue
            at = first_word_at(data, top[0])
            if at < 0:  # pragma: no cover - every word named is a word of data
                continue
            start = len(data[:at].decode("utf-8", "replace")) if len(data) != len(norm.text) else at
            end = start + len(top[0].decode("utf-8", "replace"))
            named = ", ".join(w.decode("utf-8", "replace") for w in top)
            why = f"{model.why}: p={p:.2f}; words that weighed most: {named}"
            found[model.rule] = Finding(
                model.technique,
                model.rule,
                model.score,
                norm.original_span(start, end),
                why,
                f"model:{model.name}",
            )

    def _detector(
        self, rule: Rule, norm: Normalised, c: _Compiled, found: dict[str, Finding]
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
            return self._encoded(rule, norm, c, found)
        return None  # pragma: no cover - the loader only accepts known detectors

    @staticmethod
    def _hit(rule: Rule, span: tuple[int, int], what: str) -> Finding:
        return Finding(rule.technique, rule.id, rule.score, span, f"{rule.why}: {what}", rule.group)

    def _encoded(
        self, rule: Rule, norm: Normalised, c: _Compiled, found: dict[str, Finding]
    ) -> Finding | None:
        """Every encoded segment that decodes to text, scanned together in one pass (joined
        by line breaks): linear in the text, and no number or size of decoys before the attack
        exhausts it (the first 16 segments, 64 KiB, used to be all that was read). A finding
        inside has the span of its segment."""
        parts: list[str] = []
        starts: list[int] = []  # where each part starts in the joined text
        segments: list[tuple[tuple[int, int], str]] = []  # (span in the input, how)
        at = 0
        blocks: list[tuple[int, int]] = []  # wrapped base64 decoded whole: not line by line
        for (start, end), how in _encoded_candidates(norm):
            if len(segments) >= _MAX_SEGMENTS or at >= _MAX_DECODED:
                break
            if how == "hex":
                decoded = _decode_hex(norm.text[start:end])
            else:
                if how == "base64" and any(a <= start and end <= b for a, b in blocks):
                    continue
                segment = "".join(norm.cased[start:end].split())  # the lines of a block
                if segment.islower() or segment.isupper() or segment.isdigit():
                    continue  # an identifier, a hex digest or a number, not base64 text
                decoded = _decode_base64(segment)
                if decoded is not None and how != "base64":
                    blocks.append((start, end))
                    how = "base64"
            if decoded is None:
                continue
            parts.append(decoded)
            starts.append(at)
            segments.append((norm.original_span(start, end), how))
            at += len(decoded) + 1
        if not parts:
            return None
        inner = normalise("\n".join(parts))
        inner_data = _utf8(inner.text)

        def where(s: int, e: int) -> tuple[tuple[int, int], str]:
            o_start, _ = inner.original_span(s, e)
            k = max(0, bisect.bisect_right(starts, o_start) - 1)
            span, how = segments[k]
            return span, f" (inside {how})"

        hits: dict[str, Finding] = {}
        _Pass(c, inner, inner_data, hits, where=where).run()
        hits = {k: v for k, v in hits.items() if k not in found}
        if not hits:
            return None
        found.update(hits)
        earliest = min(hits.values(), key=lambda f: f.span)
        how = next(h for sp, h in segments if sp == earliest.span)
        names = ", ".join(sorted(hits))
        return self._hit(rule, earliest.span, f"{how} text that matches {names}")


# Markup a model reads through (an indirect injection in a web page, a URL, a JSON string):
# three or more of a kind before a decoded view is made.
_PERCENT = re.compile(r"%[0-9A-Fa-f]{2}")
# numeric entities (what hides letters: &#105;); named ones (&gt; &amp;) are decoded with
# them but make no view of their own (text copied from HTML is full of them)
_ENTITY = re.compile(r"&#(?:[0-9]{1,7}|[xX][0-9A-Fa-f]{1,6});")
_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]{0,15}(?:\s[^<>]{0,200})?/?>")
_U_ESCAPE = re.compile(r"\\u([0-9A-Fa-f]{4})")
# (not "_": snake_case is everywhere in code)
_EMPHASIS = re.compile(r"(?<=[A-Za-z])(?:\*{1,3}|~~)(?=[A-Za-z])")
_MARKUP_MIN = 3
# The same markers on the normalised (lower-case) text, for the hint set: a superset.
_MARKUP_HINTS: Final = [
    r"%[0-9a-f]{2}",
    r"&#[0-9x]",
    r"</?[a-z][a-z0-9]{0,15}(?:\s|/|>)",
    r"\\u[0-9a-f]{4}",
    r"[a-z](?:\*|~~)",
]


def _markup_decoded(text: str) -> str | None:
    """``text`` with HTML tags dropped (and emphasis inside words: ``Ig**nore**``), then HTML
    entities, ``\\uXXXX`` escapes and percent-encoding decoded, when it has at least three of
    one of them and the result differs; else None. Linear (C-level regexes, one pass each)."""
    out = text
    changed = False
    if "<" in out and len(_TAG.findall(out)) >= _MARKUP_MIN:
        out, changed = _TAG.sub("", out), True
    if ("*" in out or "~" in out) and len(_EMPHASIS.findall(out)) >= 2:
        out, changed = _EMPHASIS.sub("", out), True
    if "&" in out and len(_ENTITY.findall(out)) >= _MARKUP_MIN:
        out, changed = html.unescape(out), True
    if "\\u" in out and len(_U_ESCAPE.findall(out)) >= _MARKUP_MIN:
        out, changed = _U_ESCAPE.sub(_u_escape, out), True
    if "%" in out and len(_PERCENT.findall(out)) >= _MARKUP_MIN:
        out, changed = urllib.parse.unquote(out, errors="replace"), True
    return out if changed and out != text else None


def _u_escape(m: re.Match[str]) -> str:
    code = int(m.group(1), 16)
    return m.group(0) if 0xD800 <= code <= 0xDFFF else chr(code)


def _encoded_candidates(norm: Normalised) -> list[tuple[tuple[int, int], str]]:
    """The runs that may be encoded text, by their character spans in the normalised text:
    base64 wrapped in lines (as ``base64`` and MIME write it: each line decodes to a fragment
    on its own), then single base64 runs outside those blocks, hex runs and ``\\x`` escapes."""
    out: list[tuple[tuple[int, int], str]] = []
    if "\n" in norm.cased:
        out += [(m, "base64 lines") for m in _B64_BLOCK.finditer_text(norm.cased)]
    out += [(m, "base64") for m in _B64_SEGMENT.finditer_text(norm.cased)]
    out += [(m, "hex") for m in _HEX_SEGMENT.finditer_text(norm.text)]
    if "\\x" in norm.text:
        out += [(m, "hex") for m in _HEX_ESCAPES.finditer_text(norm.text)]
    return out


class _Flags(NamedTuple):
    encoded: bool
    leet: bool
    rot13: int
    markup: bool = False


class _Compiled:
    """The rules of one kind as RE2 sets: the pattern rules' patterns (in sets of
    :data:`soar.detect.matcher.GROUP`), and the hints: an encoded-looking run; a leetspeak form
    of a keyword word; the ROT13 of each keyword word of four letters or more, unless that is
    a keyword itself."""

    def __init__(self, rules: Sequence[Rule]) -> None:
        self.rules = tuple(rules)
        patterned = [r for r in self.rules if r.pattern is not None]
        order, starts = _set_order(patterned, GROUP)
        # the pattern rules in the order of the sets
        self.pattern_rules = tuple(patterned[j] for j in order)
        self.detector_rules = tuple(r for r in self.rules if r.detector is not None)
        # rank of each pattern rule (by entry index): higher scores first, then the rules'
        # order in their packs
        self.rank = {i: (-patterned[j].score, j) for i, j in enumerate(order)}
        self.keywords = tuple(_Keywords.of(r) for r in self.pattern_rules)
        sources = [r.pattern.source for r in self.pattern_rules if r.pattern is not None]
        self.n_rules = len(sources)
        self.set = PatternSet(sources, starts=starts)
        # the techniques of the rules of each set: a set all of whose techniques have reached
        # _ENOUGH in a pass is not run
        ends = [*starts[1:], len(sources)] if starts else []
        self.set_techniques = tuple(
            tuple(sorted({r.technique for r in self.pattern_rules[a:b]}))
            for a, b in zip(starts, ends, strict=True)
        )
        words = {w.decode() for r in self.pattern_rules for w in r.words}
        phrase_words = {w for r in self.pattern_rules for p in r.phrases for w in p.split()}
        # the encoded hint in its own set (run only on text with "\\x", see flags); the leet
        # hint and the ROT13 words together: one pass, measured faster than a set each
        self.encoded = PatternSet([_ENCODED_HINT])
        leet = _leet_hint(w for w in words | phrase_words if len(w) >= 4 and w.isalpha())
        rot13_words = [
            rf"\b{r}\b"
            for w in sorted(words)
            if len(w) >= 4 and w.isascii() and w.isalpha() and (r := rot13(w)) not in words
        ]
        # one set for the leet hint (entry 0, if any) and the ROT13 words (literal words make a
        # small automaton), one entry each, to count them: one pass for both
        self.has_leet = bool(leet)
        hints = [leet, *rot13_words] if leet else rot13_words
        # and, last, the markers of markup a model reads through (_markup_decoded): one hit of
        # any lets the Python-level count run
        self.markup_from = len(hints)
        hints += _MARKUP_HINTS
        self.hints = PatternSet(hints, group=max(len(hints), 1))

    def flags(self, data: bytes) -> _Flags:
        encoded = _ENCODED_RUN in data.translate(_ENCODED_MASK)
        if not encoded and b"\\x" in data:
            encoded = bool(self.encoded.match(data))
        hits = self.hints.match(data)
        markup = bool(hits) and hits[-1] >= self.markup_from
        if markup:
            hits = [h for h in hits if h < self.markup_from]
        if self.has_leet and hits and hits[0] == 0:
            return _Flags(encoded, True, len(hits) - 1, markup)
        return _Flags(encoded, False, len(hits), markup)


@dataclass(frozen=True)
class _Keywords:
    """A rule's keywords as bytes: whole words and substrings; none: any match counts."""

    words: frozenset[bytes]
    phrases: tuple[bytes, ...]

    @classmethod
    def of(cls, rule: Rule) -> _Keywords:
        return cls(rule.words, tuple(_utf8(p) for p in rule.phrases))

    def held_by(self, data: bytes, start: int, end: int) -> bool:
        if self.phrases:
            piece = data[start:end]
            for p in self.phrases:
                if p in piece:
                    return True
            if b"  " in piece or any(w in piece for w in _OTHER_WHITESPACE):
                # the pattern's spaces match any whitespace run: so do the phrases' spaces
                flat = b" ".join(piece.split())
                for p in self.phrases:
                    if p in flat:
                        return True
            if not self.words:
                return False
        elif not self.words:
            return True
        # the words the match touches, whole (a match may start or end inside a word)
        lo, hi, n = start, end, len(data)
        while lo > 0 and start - lo < _WORD_REACH and data[lo - 1] in _ALNUM_BYTES:
            lo -= 1
        while hi < n and hi - end < _WORD_REACH and data[hi] in _ALNUM_BYTES:
            hi += 1
        return not self.words.isdisjoint(data[lo:hi].translate(_TO_SPACE).split())


class _Pass:
    """One scan of one variant of the text (UTF-8 ``data``, the set's hits given)."""

    def __init__(
        self,
        compiled: _Compiled,
        norm: Normalised,
        data: bytes,
        found: dict[str, Finding],
        note: str = "",
        only: list[tuple[int, int]] | None = None,
        where: Callable[[int, int], tuple[tuple[int, int], str]] | None = None,
    ) -> None:
        self.c = compiled
        # the span (and note) of a match, from its character span (for joined segments)
        self.where = where
        self.norm = norm
        self.data = data
        self.found = found
        self.note = note
        # a match counts only when it overlaps one of these (sorted, disjoint) byte spans
        self.only = only

    def run(self) -> None:
        """Run the sets one by one, each followed by its candidates (see :func:`_set_order`):
        a set all of whose techniques have reached :data:`_ENOUGH` is not run, since each of
        its candidates would be skipped."""
        c, found, data = self.c, self.found, self.data
        # the combined score of each technique looked at, computed when first needed and again
        # after a finding of it (only that technique's score changes)
        reached: dict[str, float] = {}
        for k, techniques in enumerate(c.set_techniques):
            if found and all(_reached(reached, found, t) >= _ENOUGH for t in techniques):
                continue
            hits = c.set.match_one(k, data)
            if hits:
                self._candidates(hits, reached)

    def _candidates(self, hits: list[int], reached: dict[str, float]) -> None:
        c, found = self.c, self.found
        for i in sorted(hits, key=c.rank.__getitem__):
            rule = c.pattern_rules[i]
            if rule.id in found:
                continue
            technique = rule.technique
            if _reached(reached, found, technique) >= _ENOUGH:
                continue
            m = self._first(rule, c.keywords[i])
            if m is None:
                continue
            note = self.note
            if self.where is not None:
                where, note = self.where(self._char(m[0]), self._char(m[1]))
            else:
                where = self.norm.original_span(self._char(m[0]), self._char(m[1]))
            found[rule.id] = Finding(
                technique, rule.id, rule.score, where, rule.why + note, rule.group
            )
            del reached[technique]

    def _first(self, rule: Rule, keywords: _Keywords) -> tuple[int, int] | None:
        """The first match of ``rule`` that counts, in byte offsets."""
        assert rule.pattern is not None
        data, only, unless, before = self.data, self.only, rule.unless, rule.unless_before
        after, size, next_match = 0, len(data), rule.pattern.next_match
        tries = excused = 0
        while tries < _MAX_TRIES:  # Regex.finditer, one call per match
            if after > size:
                break
            m = next_match(data, after)
            if m is None:
                break
            start, end = m
            after = end if end > start else end + 1
            if only is not None and not _overlaps(only, start, end):
                tries += 1
                continue
            if (unless is not None and unless.match(data, start)) or (
                before is not None and before.search(data[max(0, start - _BEFORE) : start])
            ):
                # an exception: search on from the next byte, so that the exception's match
                # hides nothing inside it ("trying to ignore, ignore all previous ...")
                excused += 1
                if excused >= _MAX_EXCUSED:
                    return m  # a flood of exceptions is no exception: fail closed
                after = start + 1
                continue
            tries += 1
            if keywords.held_by(data, start, end):
                return m
        return None

    def _char(self, offset: int) -> int:
        """A byte offset of ``data`` as a character offset of the normalised text."""
        if len(self.data) == len(self.norm.text):
            return offset
        # the characters of the (valid UTF-8) prefix are its bytes that do not continue one
        # (as many as it decodes to, a character cut at the end counting as one)
        return offset - len(self.data[:offset].translate(None, _NOT_CONTINUATION))


def _reached(reached: dict[str, float], found: dict[str, Finding], technique: str) -> float:
    """The combined score of ``technique`` over ``found``, cached in ``reached`` (an entry is
    deleted when a finding of its technique is added)."""
    score = reached.get(technique)
    if score is None:
        score = reached[technique] = _combined_one(found.values(), technique)
    return score


def _set_order(rules: Sequence[Rule], group: int) -> tuple[list[int], list[int]]:
    """The order of the pattern rules in the RE2 sets (indexes into ``rules``) and the index
    where each set starts.

    The rules of a technique run by decreasing score (ties in pack order), and a pass skips
    the rules of a technique once it has reached :data:`_ENOUGH`. So the sets are built by
    technique, each technique's rules by decreasing score: a set all of whose techniques have
    reached it can be left out of the pass, and the candidates of each technique still come in
    the same order (candidates of different techniques never decide for one another). A
    technique with at least ``group`` rules has sets of its own (balanced) when that costs no
    extra set; the other techniques share sets. As many sets as ``group`` rules a set would
    give."""

    def n_sets(n: int) -> int:
        return -(-n // group)

    by_technique: dict[str, list[int]] = {}
    for j, rule in enumerate(rules):
        by_technique.setdefault(rule.technique, []).append(j)
    for members in by_technique.values():
        members.sort(key=lambda j: (-rules[j].score, j))
    techniques = sorted(by_technique, key=lambda t: (-len(by_technique[t]), t))
    order: list[int] = []
    starts: list[int] = []

    def balanced(members: list[int]) -> None:
        k = n_sets(len(members))
        at = 0
        for part in range(k):
            starts.append(len(order))
            size = len(members) // k + (1 if part < len(members) % k else 0)
            order.extend(members[at : at + size])
            at += size

    left = len(rules)
    while techniques:
        n = len(by_technique[techniques[0]])
        if n < group or n_sets(n) + n_sets(left - n) != n_sets(left):
            break
        balanced(by_technique[techniques.pop(0)])
        left -= n
    shared = [j for t in techniques for j in by_technique[t]]
    if shared:
        balanced(shared)
    return order, starts


def _overlaps(spans: list[tuple[int, int]], start: int, end: int) -> bool:
    j = bisect.bisect_right(spans, (end, end)) - 1
    while j >= 0 and spans[j][1] > start:
        if spans[j][0] < end:
            return True
        j -= 1
    return False


def _byte_spans(text: str, data: bytes, spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Character spans of ``text`` (sorted, disjoint) as byte spans of ``data`` (its UTF-8)."""
    if len(data) == len(text):
        return spans
    out: list[tuple[int, int]] = []
    at = off = 0
    for a, b in spans:
        off += len(_utf8(text[at:a]))
        start = off
        off += len(_utf8(text[a:b]))
        out.append((start, off))
        at = b
    return out


def _leet_hint(words: Iterable[str]) -> str:
    """A pattern for a token that spells one of ``words`` with at least one leet character
    (a token of letters, digits and leet symbols, as :func:`soar.detect.normalise.deleet`
    decodes)."""
    alternatives = []
    for w in sorted(set(words)):
        for k, ch in enumerate(w):
            if ch not in _LEET_FOR:
                continue
            head = re.escape(w[:k])
            tail = "".join(
                f"[{re.escape(x + _LEET_FOR[x])}]" if x in _LEET_FOR else re.escape(x)
                for x in w[k + 1 :]
            )
            alternatives.append(f"{head}[{re.escape(_LEET_FOR[ch])}]{tail}")
    if not alternatives:
        return ""
    edge = f"[^{_LEET_CLASS}]"
    return f"(?:^|{edge})(?:{'|'.join(alternatives)})(?:{edge}|$)"


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


@lru_cache(maxsize=1)
def _default_engine() -> Engine:
    return Engine(builtin_packs(KNOWN_TECHNIQUES), builtin_models(KNOWN_TECHNIQUES))
