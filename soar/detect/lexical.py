"""A word model: one more piece of evidence for a technique, learned from labelled prompts.

Rules name the phrases of an attack; many jailbreak prompts have none of them and are still
written in words that benign prompts seldom use together ("unfiltered", "dan", "openai",
"policies", "stay in character" ...). A :class:`WordModel` is a logistic regression over the
*set* of words of the normalised text (lower case, NFKC, lookalikes folded: the text the rules
read), each word weighing ``1 / sqrt(number of distinct words)``, so that a long text is not
flagged for its length. When the probability reaches the model's ``threshold`` the engine adds
one finding of the model's ``score`` (in its own group), whose span is the first occurrence of
the word that weighed most and whose explanation names the words that weighed most.

Texts of fewer than ``min_words`` distinct words get no finding from the model: in a short
text each word weighs so much that two of them ("openai chatgpt") could decide; short texts
are left to the rules.

The model only adds evidence: it never lowers the score of a rule's finding, so text written
to look benign to it (padding) takes the engine back to its rules, no lower.

Models are JSON files (``soar/detect/models/*.json``), made by ``bench/train_lexical.py`` from
the *dev* part of the benchmark corpora only; the file records what it was trained on. A file
is validated on load like a rule pack: a wrong or missing field is a :class:`WordModelError`
that names it.
"""

from __future__ import annotations

import itertools
import json
import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

__all__ = ["WordModel", "WordModelError", "builtin_models", "first_word_at", "words_of"]

# Bytes that separate words: ASCII other than letters and digits (bytes of UTF-8 sequences,
# >= 0x80, are kept, so a word may hold non-ASCII letters).
_SEPARATORS: Final = bytes(b for b in range(128) if not (48 <= b <= 57 or 97 <= b <= 122))
_TO_SPACE: Final = bytes.maketrans(_SEPARATORS, b" " * len(_SEPARATORS))
_SEPARATOR_SET: Final = frozenset(_SEPARATORS)
# A word of non-ASCII text: Unicode letters and digits (\w without "_").
_WORD: Final = re.compile(r"[^\W_]+")
# Words named in a finding's explanation.
_NAMED: Final = 5
_HEAVIEST: Final = 256
_MAX_WORD: Final = 64


def words_of(data: bytes) -> set[bytes]:
    """The distinct words of normalised (lower-case) UTF-8 text: its runs of letters and digits.
    In ASCII text every other byte separates words; in other text, so does every character
    that is not a Unicode letter or digit (a line separator U+2028, an ideographic full stop,
    a curly quote, an emoji), so that no character an attacker may put between words joins
    them into one the model does not know."""
    words = set(data.translate(_TO_SPACE).split())
    if data.isascii():
        return words
    # split again the words that hold non-ASCII characters (ASCII bytes never occur inside a
    # UTF-8 sequence, so each is whole UTF-8)
    for word in [w for w in words if not w.isascii()]:
        words.discard(word)
        words.update(w.encode("utf-8") for w in _WORD.findall(word.decode("utf-8", "replace")))
    return words


def first_word_at(data: bytes, word: bytes) -> int:
    """The byte offset of the first occurrence of ``word`` as a whole word in ``data``
    (as :func:`words_of` splits it; -1 if none): a substring search, then a look at the
    characters on either side (the text is not split again)."""
    if not word:
        return -1
    end = len(word)
    at = data.find(word)
    while at >= 0:
        if _edge(data, at - 1, backwards=True) and _edge(data, at + end, backwards=False):
            return at
        at = data.find(word, at + 1)
    return -1


def _edge(data: bytes, i: int, *, backwards: bool) -> bool:
    """Whether the character that holds byte ``i`` of ``data`` (the one ending there when
    ``backwards``, else the one starting there) separates words; outside ``data``, True."""
    if i < 0 or i >= len(data):
        return True
    b = data[i]
    if b < 0x80:
        return b in _SEPARATOR_SET
    if backwards:  # back to the first byte of the character that ends at i
        start = i
        while start > 0 and i - start < 3 and 0x80 <= data[start] <= 0xBF:
            start -= 1
        piece = data[start : i + 1]
    else:
        piece = data[i : i + 4]
    # "replace", as words_of decodes (bytes that are no UTF-8, such as a lone surrogate's
    # "surrogatepass" bytes, are each a U+FFFD: a separator)
    decoded = piece.decode("utf-8", "replace")
    ch = decoded[-1:] if backwards else decoded[:1]
    return not ch.isalnum()


class WordModelError(ValueError):
    """A model file that is not a valid word model (the message names the field)."""


@dataclass(frozen=True)
class WordModel:
    name: str
    technique: str
    rule: str
    score: float
    threshold: float
    # texts of fewer distinct words get no finding: a few words say too little (rules read
    # short texts)
    min_words: int
    why: str
    bias: float
    weights: Mapping[bytes, float]
    trained_on: Mapping[str, Any]
    # derived: the words of positive weight, each with its rank (heaviest first, ties in byte
    # order), for naming the heaviest words of a text with C-level calls
    _rank: Mapping[bytes, int] = field(init=False, repr=False, compare=False)
    _positive: frozenset[bytes] = field(init=False, repr=False, compare=False)
    # the heaviest positive words: the words to name are looked for among these first (a
    # text's words hold a hundred positive ones or more; sorting them all cost more than the
    # sum of the weights)
    _heaviest: frozenset[bytes] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        positive = sorted((-v, w) for w, v in self.weights.items() if v > 0.0)
        object.__setattr__(self, "_rank", {w: k for k, (_, w) in enumerate(positive)})
        object.__setattr__(self, "_positive", frozenset(self._rank))
        object.__setattr__(self, "_heaviest", frozenset(w for _, w in positive[:_HEAVIEST]))

    def probability(self, words: set[bytes]) -> tuple[float, list[bytes]]:
        """The model's probability for a text of these words, and the words that weighed
        most for it (positive weights, highest first)."""
        if len(words) < max(self.min_words, 1):
            return 0.0, []
        get = self.weights.get
        # one C-level pass: the weight of each word, 0 for a word the model does not know
        # (fsum: exact, so the sum does not depend on the set's order)
        z = self.bias + math.fsum(map(get, words, itertools.repeat(0.0))) / math.sqrt(len(words))
        p = 1.0 / (1.0 + math.exp(-max(-60.0, min(60.0, z))))
        if p < self.threshold:
            return p, []
        # the heaviest positive words (ties in byte order; set order is not stable): the first
        # _NAMED of them are among the _HEAVIEST when that many of those are in the text
        named = words & self._heaviest
        if len(named) < _NAMED:
            named = words & self._positive
        return p, sorted(named, key=self._rank.__getitem__)[:_NAMED]

    @classmethod
    def from_json(
        cls, text: str, source: str, known_techniques: Iterable[str] | None = None
    ) -> WordModel:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise WordModelError(f"{source} line {exc.lineno}: not JSON: {exc.msg}") from None
        if not isinstance(doc, dict):
            raise WordModelError(f"{source}: the model must be a JSON object")

        def need(key: str, kind: type | tuple[type, ...]) -> Any:
            if key not in doc:
                raise WordModelError(f"{source}: {key}: required")
            value = doc[key]
            if not isinstance(value, kind) or isinstance(value, bool):
                raise WordModelError(f"{source}: {key}: wrong type ({type(value).__name__})")
            return value

        name = need("model", str)
        technique = need("technique", str)
        if known_techniques is not None and technique not in set(known_techniques):
            raise WordModelError(f"{source}: technique: {technique!r} is not in the ATLAS catalog")
        rule = need("rule", str)
        score = float(need("score", (int, float)))
        threshold = float(need("threshold", (int, float)))
        for key, value in (("score", score), ("threshold", threshold)):
            if not 0.0 < value <= 1.0:
                raise WordModelError(f"{source}: {key}: must be in (0, 1], not {value}")
        min_words = need("min_words", int)
        if min_words < 0:
            raise WordModelError(f"{source}: min_words: must be >= 0, not {min_words}")
        why = need("why", str)
        bias = float(need("bias", (int, float)))
        raw = need("weights", dict)
        weights: dict[bytes, float] = {}
        for word, weight in raw.items():
            # a word of the normalised text: of ASCII, only lower-case letters and digits
            if not (0 < len(word) <= _MAX_WORD) or not _is_word(word):
                raise WordModelError(f"{source}: weights[{word[:_MAX_WORD]!r}]: not a word")
            if not isinstance(weight, int | float) or isinstance(weight, bool):
                raise WordModelError(f"{source}: weights[{word!r}]: not a number")
            if not math.isfinite(weight):
                raise WordModelError(f"{source}: weights[{word!r}]: not finite")
            weights[word.encode("utf-8")] = float(weight)
        if not math.isfinite(bias):
            raise WordModelError(f"{source}: bias: not finite")
        trained_on = doc.get("trained_on", {})
        if not isinstance(trained_on, dict):
            raise WordModelError(f"{source}: trained_on: must be an object")
        return cls(
            name, technique, rule, score, threshold, min_words, why, bias, weights, trained_on
        )


def _is_word(word: str) -> bool:
    """Whether :func:`words_of` can give ``word`` (a word of a model file)."""
    data = word.encode("utf-8", "replace")
    return words_of(data) == {data}


def builtin_models(known_techniques: Iterable[str] | None = None) -> tuple[WordModel, ...]:
    """The models shipped in ``soar/detect/models/*.json``, in file name order."""
    from soar.detect.rules import package_files

    known = tuple(known_techniques) if known_techniques is not None else None
    return tuple(
        WordModel.from_json(text, name, known)
        for name, text in package_files("soar.detect.models", ".json")
    )
