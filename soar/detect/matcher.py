"""RE2 behind a small typed interface: the regular expressions of the rule packs.

Rule patterns are compiled with RE2 (the ``google-re2`` binding), whose automata match in time
linear in the text, whatever the pattern: no backtracking, so no pattern can be made slow by
its input. All matching is on UTF-8 ``bytes`` (offsets are byte offsets); the engine encodes
each text once. :class:`PatternSet` runs many patterns in one pass over the text (``RE2::Set``)
and says which of them match somewhere; :class:`Regex` then finds where.

RE2 syntax is Perl's without backreferences, lookaround assertions, possessive quantifiers or
atomic groups; ``\\w``, ``\\b``, ``\\s`` and ``\\d`` are ASCII (the engine matches lower-cased,
NFKC-normalised text, where that is what the rules mean).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Final

import re2

__all__ = ["MAX_PROGRAM", "PatternError", "PatternSet", "Regex", "spaces_as_whitespace"]

# The largest compiled program (RE2 instructions) one rule pattern may have: bounded
# repetitions are expanded (``[^)]{0,500}`` is 500 copies), so this bounds the memory and the
# cost per character of a pattern; since RE2 never backtracks, an unbounded ``*`` is the cheap
# way to say "any number".
MAX_PROGRAM: Final = 5_000
# Memory budgets (program and lazily built DFA states) of one pattern and of one set: when its
# DFA cache fills up RE2 empties it and goes on (a single pattern may also fall back to its NFA),
# so the budget is speed, not correctness; a set's budget is larger, since it holds many rules.
_MAX_MEM: Final = 8 << 20
_MAX_MEM_SET: Final = 48 << 20
# Patterns per RE2 set (see PatternSet): measured on the bench corpora, sets of 20 rules keep
# their DFAs within the memory budget over a stream of varied texts, while one set of all rules
# overflowed it and started over again and again (more than ten times slower); sets of 10 were
# built faster on new text but cost more passes per text.
GROUP: Final = 20


class PatternError(ValueError):
    """A pattern RE2 refuses, with the reason in words."""


def _options(max_mem: int) -> Any:
    opts = re2.Options()
    opts.log_errors = False
    opts.max_mem = max_mem
    return opts


_OPTIONS: Final = _options(_MAX_MEM)
_SET_OPTIONS: Final = _options(_MAX_MEM_SET)

_REASONS: Final = (
    ("invalid perl operator: (?<", "lookbehind assertions are not supported (RE2 syntax)"),
    ("invalid perl operator: (?=", "lookahead assertions are not supported (RE2 syntax)"),
    ("invalid perl operator: (?!", "lookahead assertions are not supported (RE2 syntax)"),
    ("invalid perl operator: (?>", "atomic groups are not supported (RE2 syntax)"),
    (
        "bad repetition operator: ++",
        "possessive quantifiers are not supported (RE2 syntax; RE2 never backtracks, so a plain "
        "quantifier is as fast)",
    ),
    ("bad repetition operator: *+", "possessive quantifiers are not supported (RE2 syntax)"),
    ("bad repetition operator: ?+", "possessive quantifiers are not supported (RE2 syntax)"),
    ("bad repetition operator: }+", "possessive quantifiers are not supported (RE2 syntax)"),
    ("invalid escape sequence: \\1", "backreferences are not allowed"),
    (
        "invalid repetition size",
        "repetition bound over 1000, or nested bounds multiplying to more than 1000 (RE2's limit; "
        "RE2 never backtracks, so an unbounded '*' or '+' is as safe)",
    ),
)


def _reason(message: str) -> str:
    for needle, why in _REASONS:
        if message.startswith(needle):
            return why
    if "invalid escape sequence: \\" in message and message[-1:].isdigit():
        return "backreferences are not allowed"
    return f"invalid regular expression: {message}"


def _error_text(exc: BaseException) -> str:
    arg = exc.args[0] if exc.args else exc
    return arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)


# The binding's own compiled object answers ``Match(anchor, bytes, pos, endpos)`` with the
# spans; calling it directly skips the generator and match object its ``finditer`` builds
# around each call (about a tenth of the cost of a scan of an attack text). The binding is
# pinned (requirements.lock); should a version lack it, the public ``finditer`` is used.
_UNANCHORED: Final = getattr(re2, "_Anchor", None) and re2._Anchor.UNANCHORED
_ANCHOR_START: Final = getattr(re2, "_Anchor", None) and re2._Anchor.ANCHOR_START


def _raw_matcher(compiled: Any) -> Any:
    raw = getattr(compiled, "_regexp", None)
    if raw is None or _UNANCHORED is None:
        return None
    try:
        spans = raw.Match(_UNANCHORED, b"", 0, 0)
        if not (isinstance(spans, list) and spans and len(spans[0]) == 2):
            return None
    except (AttributeError, TypeError, re2.error):
        return None
    return raw.Match


class Regex:
    """One compiled pattern, matched on UTF-8 bytes."""

    __slots__ = ("_raw", "_re", "source")

    def __init__(self, source: str) -> None:
        self.source = source
        try:
            self._re = re2.compile(source.encode("utf-8"), _OPTIONS)
        except re2.error as exc:
            raise PatternError(_reason(_error_text(exc))) from exc
        self._raw = _raw_matcher(self._re)
        size = int(self._re.programsize)
        if size > MAX_PROGRAM:
            raise PatternError(
                f"the pattern is too large ({size} RE2 instructions, at most {MAX_PROGRAM}): "
                "use smaller repetition bounds"
            )

    def search(self, data: bytes, pos: int = 0) -> tuple[int, int] | None:
        return next(self.finditer(data, pos), None)

    def next_match(self, data: bytes, pos: int) -> tuple[int, int] | None:
        """The first match at or after ``pos`` (``0 <= pos <= len(data)``), as
        :meth:`finditer` would give it from there: one call, no generator."""
        if self._raw is None:
            return next(self.finditer(data, pos), None)
        start, stop = self._raw(_UNANCHORED, data, pos, len(data))[0]
        return None if start < 0 else (start, stop)

    def match(self, data: bytes, pos: int) -> bool:
        """Whether the pattern matches starting exactly at ``pos``."""
        if self._raw is None or _ANCHOR_START is None:
            return self._re.match(data, pos) is not None
        end = len(data)
        pos = max(0, min(pos, end))
        return bool(self._raw(_ANCHOR_START, data, pos, end)[0][0] >= 0)

    def finditer(self, data: bytes, pos: int = 0) -> Iterator[tuple[int, int]]:
        if self._raw is None:
            for m in self._re.finditer(data, pos):
                yield int(m.start()), int(m.end())
            return
        match, end = self._raw, len(data)
        while pos <= end:
            start, stop = match(_UNANCHORED, data, pos, end)[0]
            if start < 0:
                return
            yield start, stop
            pos = stop if stop > start else stop + 1

    def finditer_text(self, text: str) -> Iterator[tuple[int, int]]:
        """Matches in a ``str``, as character offsets. Lone surrogates (which a JSON string
        may carry) are passed through as bytes no pattern matches, never an error."""
        data = text.encode("utf-8", "surrogatepass")
        if len(data) == len(text):
            yield from self.finditer(data)
            return
        at_byte = at_char = 0
        for start, end in self.finditer(data):
            if start == end and start < len(data) and data[start] & 0xC0 == 0x80:
                continue  # an empty match inside a character (the bytes are stepped one by one)
            at_char += len(data[at_byte:start].decode("utf-8", "surrogatepass"))
            first = at_char
            at_char += len(data[start:end].decode("utf-8", "surrogatepass"))
            at_byte = end
            yield first, at_char


class PatternSet:
    """Several patterns run over the text together; :meth:`match` gives the indexes of those
    that match. The patterns are split into RE2 sets of at most ``group`` patterns, one pass
    each: the DFA of one set tracks all its patterns at once, and its number of states can grow
    with the product of theirs, so smaller sets are built faster on new text."""

    __slots__ = ("_sets", "size", "starts")

    def __init__(
        self, sources: Sequence[str], group: int = 0, starts: Sequence[int] | None = None
    ) -> None:
        """``starts``, if given, are the indexes where the sets begin (the first is 0; each
        set at most ``group`` patterns is not enforced then); else every ``group`` patterns."""
        self.size = len(sources)
        group = group or GROUP
        self._sets: list[tuple[int, Any]] = []
        if starts is None:
            starts = range(0, len(sources), group)
        elif sources and (not starts or starts[0] != 0 or list(starts) != sorted(set(starts))):
            raise ValueError("starts must be increasing indexes from 0")
        self.starts: tuple[int, ...] = tuple(starts) if sources else ()
        ends = [*self.starts[1:], len(sources)] if self.starts else []
        for first, end in zip(self.starts, ends, strict=True):
            one = re2.Set.SearchSet(_SET_OPTIONS)
            for source in sources[first:end]:
                try:
                    one.Add(source.encode("utf-8"))
                except re2.error as exc:
                    raise PatternError(_reason(_error_text(exc))) from exc
            one.Compile()
            self._sets.append((first, _raw_set_matcher(one)))

    def match_one(self, k: int, data: bytes) -> list[int]:
        """The indexes of the patterns of set ``k`` (those from ``starts[k]``) that match."""
        first, match = self._sets[k]
        got: list[int] = match(data)
        return [first + i for i in got] if first and got else got

    def match(self, data: bytes) -> list[int]:
        out: list[int] = []
        for first, match in self._sets:
            got = match(data)
            if got:
                if first:
                    out.extend([first + i for i in got])
                else:
                    out.extend(got)
        out.sort()
        return out


def _raw_set_matcher(one: Any) -> Any:
    """The binding's own ``Set.Match`` (a list of ints), without the wrapper's call around it
    (a tenth of the fixed cost of a set pass); the wrapper's when the binding lacks it."""
    raw = getattr(one, "_set", None)
    match = getattr(raw, "Match", None)
    if match is None:
        return one.Match
    try:
        got = match(b"")
        if not isinstance(got, list):
            return one.Match
    except (AttributeError, TypeError, re2.error):
        return one.Match
    return match


def spaces_as_whitespace(source: str) -> str:
    """``source`` with each literal space (outside a character class, or escaped) made to
    match any run of whitespace: ``system prompt`` matches ``system  prompt`` and
    ``system\\nprompt`` as well, since doubled spaces and line breaks read the same to a
    model (a way past every rule written with spaces). A space followed by ``*`` or ``+``
    becomes ``\\s*`` / ``\\s+``, one followed by ``?`` ``\\s*``, one followed by a ``{m,n}``
    bound ``\\s`` (the bound applies to it); a space in a class is ``\\s`` (not at a
    range's end). A pattern with ``\\Q...\\E`` quoting is left as it is."""
    if "\\Q" in source:
        return source
    out: list[str] = []
    i, n = 0, len(source)
    in_class, first = False, 0  # first: index of a class's first member (a "]" there is one)
    while i < n:
        c = source[i]
        if c == "\\" and i + 1 < n and not (source[i + 1] == " " and not in_class):
            out.append(source[i : i + 2])
            i += 2
            continue
        if in_class:
            if source.startswith("[:", i) and (end := source.find(":]", i + 2)) >= 0:
                out.append(source[i : end + 2])
                i = end + 2
                continue
            if c == "]" and i > first:
                in_class = False
                out.append(c)
            elif c == " ":
                after_dash = i - 1 > first and source[i - 1] == "-"
                before_dash = source.startswith("-", i + 1) and not source.startswith("-]", i + 1)
                out.append(" " if after_dash or before_dash else "\\s")
            else:
                out.append(c)
            i += 1
            continue
        if c == "[":
            in_class = True
            j = i + 2 if source.startswith("[^", i) else i + 1
            first = j
            out.append(source[i:j])
            i = j
            continue
        if c == "\\":  # an escaped space
            i += 2
        elif c == " ":
            i += 1
        else:
            out.append(c)
            i += 1
            continue
        q = source[i : i + 1]
        if q in ("*", "+"):
            out.append("\\s" + q)
            i += 1
        elif q == "?":
            out.append("\\s*")
            i += 1
        elif q == "{":
            out.append("\\s")
        else:
            out.append("\\s+")
    return "".join(out)
