"""The detection engine: rule packs run over normalised prompts and model outputs.

``Engine.default().scan(text, kind="prompt")`` returns one :class:`Finding` per rule that
matched (its first match), ordered by position. What is scanned:

* the normalised text (:mod:`soar.detect.normalise`: invisible characters dropped, tag
  characters decoded, NFKC, lower case, lookalikes folded);
* its leetspeak-decoded variant, when that differs (``1gn0r3 411 pr3v10u5``);
* each base64 segment (>= 20 characters) that decodes to printable UTF-8, scanned with the same
  rules; a finding inside it has the span of the whole segment.

Spans are offsets in the *original* input (``text[start:end]``), widened to whole characters
that normalisation merged or split. The text scanned is at most :data:`MAX_CHARS` characters
(the head); :func:`technique_scores` combines the findings into one score per technique.

Cost: the text is split into a set of words once; a rule's pattern runs only when one of its
keywords occurs (a set lookup, or ``in`` for phrases), and not at all once the rule's technique
has reached a combined score of 0.97 (so a finding list names the rules that sufficed, not
necessarily every rule that would match). Patterns are checked at load time to be linear (see
:mod:`soar.detect.rules`).
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final, Literal

from soar.detect import leakage
from soar.detect.catalog import KNOWN_TECHNIQUES
from soar.detect.normalise import Normalised, deleet, normalise
from soar.detect.rules import Rule, RulePack, builtin_packs

__all__ = ["MAX_CHARS", "Engine", "Finding", "technique_scores"]

MAX_CHARS: Final = 262_144
_B64_SEGMENT = re.compile(r"(?<![A-Za-z0-9+/_-])[A-Za-z0-9+/_-]{20,}+={0,2}+")
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
        head = text[:MAX_CHARS]
        norm = normalise(head)
        rules = self._by_kind[kind]
        found: dict[str, Finding] = {}
        index = self._indexes[kind]
        self._patterns(rules, norm, norm.text, found, "", None, index)
        leet = deleet(norm.text)
        if leet != norm.text:
            self._patterns(rules, norm, leet, found, " (after leetspeak decoding)", None, index)
        for rule in rules:
            if rule.detector is not None and rule.id not in found:
                finding = self._detector(rule, norm, rules, found)
                if finding is not None:
                    found[rule.id] = finding
        return sorted(found.values(), key=lambda f: (f.span, f.technique, f.rule))

    # -- internals --------------------------------------------------------------------------

    @staticmethod
    def _patterns(
        rules: Sequence[Rule],
        norm: Normalised,
        text: str,
        found: dict[str, Finding],
        note: str,
        span: tuple[int, int] | None = None,
        index: _Index | None = None,
    ) -> None:
        words = _words(text)
        miss: dict[str, float] = {}
        for f in found.values():
            miss[f.technique] = miss.get(f.technique, 1.0) * (1.0 - f.score)
        index = _index(rules) if index is None else index
        wanted = set(index.always)
        for word in words & index.words.keys():
            wanted.update(index.words[word])
        for phrase, which in index.phrases:
            if phrase in text:
                wanted.update(which)
        for head in words & index.headed.keys():
            for phrase, which in index.headed[head]:
                if phrase in text:
                    wanted.update(which)
        for i in sorted(wanted):
            rule = rules[i]
            if rule.pattern is None or rule.id in found:
                continue
            if 1.0 - miss.get(rule.technique, 1.0) >= _ENOUGH:
                continue
            m = rule.pattern.search(text)
            if m is None:
                continue
            where = span if span is not None else norm.original_span(m.start(), m.end())
            found[rule.id] = Finding(rule.technique, rule.id, rule.score, where, rule.why + note)
            miss[rule.technique] = miss.get(rule.technique, 1.0) * (1.0 - rule.score)

    def _detector(
        self, rule: Rule, norm: Normalised, rules: Sequence[Rule], found: dict[str, Finding]
    ) -> Finding | None:
        sig = norm.signals
        if rule.detector == "invisible":
            if sig.tag_runs:
                return self._hit(rule, sig.tag_runs[0], "Unicode tag characters (hidden ASCII)")
            if sig.bidi:
                return self._hit(rule, sig.bidi[0], "bidirectional override characters")
            if sig.hidden_in_words:
                return self._hit(rule, sig.hidden_in_words[0], "zero-width characters in words")
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
            return self._encoded(rule, norm, rules, found)
        return None  # pragma: no cover - the loader only accepts known detectors

    @staticmethod
    def _hit(rule: Rule, span: tuple[int, int], what: str) -> Finding:
        return Finding(rule.technique, rule.id, rule.score, span, f"{rule.why}: {what}")

    def _encoded(
        self, rule: Rule, norm: Normalised, rules: Sequence[Rule], found: dict[str, Finding]
    ) -> Finding | None:
        first: Finding | None = None
        budget = _MAX_DECODED
        for n, m in enumerate(_B64_SEGMENT.finditer(norm.cased)):
            if n >= _MAX_SEGMENTS or budget <= 0:
                break
            segment = m.group(0)
            if segment.islower() or segment.isupper() or segment.isdigit():
                continue  # an identifier, a hex digest or a number, not base64 text
            decoded = _decode_base64(segment[: budget * 2])
            if decoded is None:
                continue
            budget -= len(decoded)
            span = norm.original_span(m.start(), m.end())
            inner = normalise(decoded)
            hits: dict[str, Finding] = {}
            plain = [r for r in rules if r.pattern is not None and r.id not in found]
            self._patterns(plain, inner, inner.text, hits, " (inside base64)", span)
            if hits:
                found.update(hits)
                if first is None:
                    names = ", ".join(sorted(hits))
                    first = self._hit(rule, span, f"base64 text that matches {names}")
        return first


def _decode_base64(segment: str) -> str | None:
    s = segment.rstrip("=").replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        raw = base64.b64decode(s, validate=True)
        text = raw.decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None
    if not text:
        return None
    printable = sum(1 for c in text if c.isprintable() or c in "\n\r\t")
    letters = sum(1 for c in text if c.isalpha())
    if printable < 0.95 * len(text) or letters < 0.5 * len(text):
        return None
    return text


@dataclass(frozen=True)
class _Index:
    """Which rules (by position) each keyword word or phrase enables; ``always``: no keywords."""

    words: dict[bytes, tuple[int, ...]]
    # phrases that start with a word, checked only when that word occurs
    headed: dict[bytes, tuple[tuple[str, tuple[int, ...]], ...]]
    # phrases that start with punctuation or symbols, always checked
    phrases: tuple[tuple[str, tuple[int, ...]], ...]
    always: tuple[int, ...]


_HEAD = re.compile(r"[a-z0-9]++(?=[^a-z0-9]|$)")


def _index(rules: Sequence[Rule]) -> _Index:
    words: dict[bytes, list[int]] = {}
    phrases: dict[str, list[int]] = {}
    always: list[int] = []
    for i, rule in enumerate(rules):
        if rule.pattern is None:
            continue
        if not rule.keywords:
            always.append(i)
        for w in rule.words:
            words.setdefault(w, []).append(i)
        for p in rule.phrases:
            phrases.setdefault(p, []).append(i)
    headed: dict[bytes, list[tuple[str, tuple[int, ...]]]] = {}
    loose: list[tuple[str, tuple[int, ...]]] = []
    for p, v in phrases.items():
        head = _HEAD.match(p)
        if head is not None:
            headed.setdefault(head.group(0).encode(), []).append((p, tuple(v)))
        else:
            loose.append((p, tuple(v)))
    return _Index(
        {w: tuple(v) for w, v in words.items()},
        {h: tuple(v) for h, v in headed.items()},
        tuple(loose),
        tuple(always),
    )


@lru_cache(maxsize=1)
def _default_engine() -> Engine:
    return Engine(builtin_packs(KNOWN_TECHNIQUES))
