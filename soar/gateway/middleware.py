"""EnforcementMiddleware: an ASGI middleware for FastAPI / Starlette LLM apps.

    app.add_middleware(EnforcementMiddleware, client=client, extract=subject_of,
                       reporter=reporter, detector=detector)

For each HTTP request, `extract(request)` (sync or async) returns the Subject (tenant,
session, user, api key) or None (not enforced, e.g. /healthz). A subject the local replica
has blocked gets `403` with a JSON body naming the block and `Retry-After` (seconds until it
ends; none for a permanent block); with `fail_mode="closed"` and a stale feed, `503` with
`Retry-After`. No request leaves the process for this decision. A request that goes on
carries the decision in `request.state.soar_decision`, whose `effects` name any milder
effect in force (e.g. `throttle`: slow the subject down).

`detector(text)` (sync or async, optional) scans the prompt, which `prompt_of(body)`
extracts from the request's JSON body (default: every string of it the model may read,
:func:`default_prompt_of`). Each finding, an object with `technique` and a `score` or
`confidence` (the built-in `soar.detect` Finding, or a dict such as LLM Guard adapters
produce), is reported through the DetectionReporter; the request then goes on: the block
that the playbook decides arrives through the stream. `builtin_detector()` is the local
`soar.detect` engine as such a detector (`detector=builtin_detector()`): no request leaves
the process to scan a prompt.

A prompt over :data:`SCAN_IN_THREAD` characters is scanned in a :class:`ScanPool` (a few
threads of its own, a bounded queue; shared by default, or the middleware's ``scan_pool``,
which a ``builtin_detector()`` without a pool of its own uses too): the built-in detector's
scan, or a synchronous detector's call (which must then be thread-safe); a body over that
size is parsed there too. Its places are shared out by subject (:func:`scan_owner_of`: the
tenant and the API key, else the user, else the session): one subject holds at most
``per_owner`` (2) of them. A scan with no place waits for one up to the pool's ``wait`` (1 s);
then, for a subject over its share, the request is refused with ``429`` and ``Retry-After``
(whatever the fail mode: passing it on would let anyone skip the scan by keeping two costly
scans of their own running), counted in ``over_share``; for a full pool the prompt is not
scanned: counted in ``busy``, logged (never the prompt), and the request is passed on (the
client's ``fail_mode="open"``) or answered ``503`` with ``Retry-After``
(``fail_mode="closed"``), as for a stale feed. What that leaves open: subjects are what
``extract`` says, so enough of them together (five, with the defaults, each keeping two
costly scans running; or one attacker who can make up new sessions when the session is the
only identifier) still fill the pool, and with ``fail_mode="open"`` the long prompts of
everyone else are then passed on unscanned after their wait; ``fail_mode="closed"`` refuses
them instead (503).

A body nested too deep for ``json`` to read (about 1,000 levels; no LLM API nests a request
so deep) is refused with ``400`` (``request body nested too deep to scan``), counted in
``too_deep``, whatever the fail mode. A body over ``max_scan_body`` (default
:data:`MAX_SCAN_BODY`, 1 MiB) is not scanned, counted in ``unscanned``: the middleware stops
reading it at that size (it never holds more of a body than that; the rest goes to the app
as it comes) and then does what ``oversize`` says: ``"refuse"`` answers ``413``, ``"pass"``
passes the request on unscanned, and the default (``None``) is the client's fail mode:
``413`` with ``fail_mode="closed"``, passed on with ``"open"`` (so padding a prompt past the
limit gets it past the scanner there: raise ``max_scan_body`` for APIs with large bodies,
such as images sent inline, and choose ``"refuse"`` where none is that large).
"""

from __future__ import annotations

import array
import asyncio
import bisect
import dataclasses
import inspect
import json
import logging
import math
import re
import threading
import time
import unicodedata
from collections.abc import Awaitable, Callable, Hashable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple, TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soar.gateway.client import Decision, EnforcementClient
from soar.gateway.reporter import DetectionReporter, make_detection

if TYPE_CHECKING:
    from soar.detect.matcher import Regex

log = logging.getLogger("soar.gateway")
MAX_SCAN_BODY = 1024 * 1024
# Characters of the prompt sent as a detection's evidence (12 bytes each at worst, JSON-escaped).
MAX_EVIDENCE = 16 * 1024


@dataclass(frozen=True)
class Subject:
    tenant: str = "default"
    session: str | None = None
    user: str | None = None
    api_key: str | None = None


Extractor = Callable[[Request], "Subject | Awaitable[Subject | None] | None"]
Detector = Callable[[str], "Iterable[Any] | Awaitable[Iterable[Any]]"]


# Prompts longer than this are scanned in the scan pool's threads, not on the event loop.
SCAN_IN_THREAD = 16 * 1024
# Threads of the shared scan pool, and scans that may wait for one of them.
SCAN_WORKERS = 2
SCAN_QUEUE = 8
# Of those places, how many one owner (a subject: scan_owner_of) may hold at once, and how
# long (seconds) a scan waits for a place before it is refused.
SCAN_PER_OWNER = 2
SCAN_WAIT = 1.0

T = TypeVar("T")


class ScanBusy(RuntimeError):
    """A scan not started: its :class:`ScanPool` had no place for it within its wait. ``own``:
    the scan's owner already held as many places as one owner may (its own share is full, not
    the pool); otherwise the pool as a whole was full."""

    def __init__(self, message: str, *, own: bool = False) -> None:
        super().__init__(message)
        self.own = own


class _ScanContext(NamedTuple):
    pool: ScanPool | None
    owner: Hashable | None


# Set by the middleware while its detector runs: the pool it was given and the request's
# owner, for a detector that scans in a ScanPool without being told (builtin_detector()).
_SCAN_CONTEXT: ContextVar[_ScanContext | None] = ContextVar("soar_scan_context", default=None)


def _context_pool() -> ScanPool | None:
    context = _SCAN_CONTEXT.get()
    return context.pool if context else None


def _context_owner() -> Hashable | None:
    context = _SCAN_CONTEXT.get()
    return context.owner if context else None


class _Waiter:
    """A scan waiting for a place: woken in its own event loop when one is given to it."""

    __slots__ = ("future", "granted", "loop", "owner")

    def __init__(self, loop: asyncio.AbstractEventLoop, owner: Hashable | None) -> None:
        self.loop = loop
        self.future: asyncio.Future[None] = loop.create_future()
        self.owner = owner
        self.granted = False


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ScanPool:
    """A bounded executor for the CPU-heavy scans of long prompts (a 1 MiB keyword salad costs
    most of a second of CPU, a 1 MiB text of struck-through letters over a second): ``workers``
    threads of its own, so hostile prompts cannot take the event loop's default thread pool
    from everything else, and at most ``queue`` scans waiting for one of them.

    Places are shared out by owner (:meth:`run`'s ``owner``; the middleware's is the request's
    subject, :func:`scan_owner_of`): one owner holds at most ``per_owner`` places at once, so
    one subject's costly prompts cannot take the pool from the others. A scan that finds no
    place (the pool full, or its owner's share) waits for one up to ``wait`` seconds, in the
    order the scans came, without a thread of its own (its event loop is woken when a place
    is given to it; the pool may be shared by several event loops and threads); then it
    raises :class:`ScanBusy` (counted in ``refused``; ``own`` when its owner's share was
    full). The middleware then answers 429 for a subject over its share, and goes on
    unscanned or refuses the request, as its client's ``fail_mode`` says, for a full pool.
    A scan holds its place until its thread is done with it, even when the request waiting
    for it is gone, so disconnecting clients cannot pile up work. The threads are started on
    first use.

    What stays open: owners are what the caller says they are, so many subjects together (in
    the default configuration five, each holding its two places) still fill the pool; with
    ``fail_mode="open"`` a long prompt of anyone else is then passed on unscanned after its
    wait (with ``"closed"``, refused with 503). And with ``per_owner`` as large as
    ``workers`` (the default: 2 and 2) one owner keeps every thread busy: the others' scans
    then hold places in the queue and run as its scans end (a second or so each, for 1 MiB of
    costly text), delayed but not refused."""

    def __init__(
        self,
        workers: int = SCAN_WORKERS,
        queue: int = SCAN_QUEUE,
        *,
        per_owner: int = SCAN_PER_OWNER,
        wait: float = SCAN_WAIT,
    ) -> None:
        if workers < 1 or queue < 0 or per_owner < 1 or not 0 <= wait < math.inf:
            raise ValueError(
                "workers: at least 1; queue: at least 0; per_owner: at least 1; "
                "wait: seconds, finite, at least 0"
            )
        self.workers = workers
        self.queue = queue
        self.per_owner = per_owner
        self.wait = wait
        self.refused = 0
        self._held = 0
        self._owners: dict[Hashable, int] = {}
        # in the order they came (a dict: removed in O(1) when their wait ends)
        self._waiters: dict[_Waiter, None] = {}
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def held(self) -> int:
        """Scans running or waiting for a thread (each holding its place)."""
        return self._held

    @property
    def waiting(self) -> int:
        """Scans waiting for a place."""
        return len(self._waiters)

    def held_by(self, owner: Hashable) -> int:
        """The places ``owner`` holds."""
        with self._lock:
            return self._owners.get(owner, 0)

    async def run(self, fn: Callable[..., T], *args: Any, owner: Hashable | None = None) -> T:
        """``fn(*args)`` in one of the pool's threads, once a place is free for ``owner``
        (default: the owner of the middleware request being scanned, if any; None: no share
        to keep to); :class:`ScanBusy` when none is within the pool's ``wait``."""
        if owner is None:
            owner = _context_owner()
        await self._acquire(owner)
        try:
            with self._lock:
                if self._executor is None:
                    self._executor = ThreadPoolExecutor(
                        self.workers, thread_name_prefix="soar-scan"
                    )
                executor = self._executor
            future = executor.submit(fn, *args)
        except BaseException:
            self._release(owner)
            raise
        future.add_done_callback(lambda _: self._release(owner))
        return await asyncio.wrap_future(future)

    # -- places (every method below but _acquire and _release runs under self._lock) -------

    def _room(self, owner: Hashable | None) -> bool:
        return self._held < self.workers + self.queue and (
            owner is None or self._owners.get(owner, 0) < self.per_owner
        )

    def _take(self, owner: Hashable | None) -> None:
        self._held += 1
        if owner is not None:
            self._owners[owner] = self._owners.get(owner, 0) + 1

    def _give_back(self, owner: Hashable | None) -> None:
        self._held -= 1
        if owner is not None:
            left = self._owners[owner] - 1
            if left:
                self._owners[owner] = left
            else:
                del self._owners[owner]
        # the places free now go to the waiters that have room, first come first
        capacity = self.workers + self.queue
        for waiter in list(self._waiters):
            if self._held >= capacity:
                break
            if not self._room(waiter.owner):
                continue
            del self._waiters[waiter]
            try:
                waiter.loop.call_soon_threadsafe(_wake, waiter.future)
            except RuntimeError:  # its event loop is closed: nobody waits there any more
                continue
            waiter.granted = True
            self._take(waiter.owner)

    def _refusal(self, owner: Hashable | None) -> ScanBusy:
        self.refused += 1
        if owner is not None and self._owners.get(owner, 0) >= self.per_owner:
            return ScanBusy(f"its owner holds {self.per_owner} scans already", own=True)
        return ScanBusy(f"{self._held} scans running or waiting")

    async def _acquire(self, owner: Hashable | None) -> None:
        with self._lock:
            if self._room(owner):
                self._take(owner)
                return
            if self.wait == 0:
                raise self._refusal(owner)
            waiter = _Waiter(asyncio.get_running_loop(), owner)
            self._waiters[waiter] = None
        try:
            await asyncio.wait((waiter.future,), timeout=self.wait)
        except BaseException:  # cancelled: its place in the line, or the place given it
            with self._lock:
                if waiter.granted:
                    self._give_back(owner)
                else:
                    self._waiters.pop(waiter, None)
            raise
        with self._lock:
            if waiter.granted:  # (perhaps just as its wait ended: the place is its own)
                return
            del self._waiters[waiter]
            raise self._refusal(owner)

    def _release(self, owner: Hashable | None) -> None:
        with self._lock:
            self._give_back(owner)


_shared_pool: ScanPool | None = None
_shared_lock = threading.Lock()


def shared_scan_pool() -> ScanPool:
    """The process's scan pool (:data:`SCAN_WORKERS` threads, :data:`SCAN_QUEUE` waiting),
    made on first use: what :func:`builtin_detector` and the middleware use by default."""
    global _shared_pool
    with _shared_lock:
        if _shared_pool is None:
            _shared_pool = ScanPool()
        return _shared_pool


def builtin_detector(kind: str = "prompt", *, pool: ScanPool | None = None) -> Detector:
    """The built-in ATLAS engine (:mod:`soar.detect`) as a middleware detector: the findings
    (technique, rule, score, span) of its ``kind`` rule set for each prompt. Offline. A prompt
    longer than the engine reads at once (:data:`soar.detect.engine.MAX_CHARS`) is scanned in
    overlapping windows, all of it (:func:`scan_all`): padding must not push an attack out of
    sight. A prompt over :data:`SCAN_IN_THREAD` characters is scanned in a :class:`ScanPool`,
    which raises :class:`ScanBusy` when it has no place for it: ``pool`` when given; else,
    called by an :class:`EnforcementMiddleware` given ``scan_pool=``, that pool (so
    ``EnforcementMiddleware(..., detector=builtin_detector(), scan_pool=p)`` parses and scans
    in ``p`` alone); else :func:`shared_scan_pool`. Called by the middleware, its scans count
    against the request's subject's share of the pool (:func:`scan_owner_of`)."""
    from soar.detect import Engine

    engine = Engine.default()
    if kind not in ("prompt", "output"):
        raise ValueError(f"kind must be 'prompt' or 'output', not {kind!r}")
    scan_kind: Any = kind

    async def detect(text: str) -> list[Any]:
        if len(text) > SCAN_IN_THREAD:
            chosen = pool or _context_pool() or shared_scan_pool()
            return await chosen.run(scan_all, engine, text, scan_kind)
        return engine.scan(text, scan_kind)

    return detect


# Windows of a long prompt overlap by this many characters (an attack cut by a window's end is
# whole in the next window, unless it is longer than this).
WINDOW_OVERLAP = 4096

# -- the compressed view of a long prompt ----------------------------------------------------
#
# The rules read the text between two words as RE2's \W (``ignore\W+all``), so a run of spaces
# as long as a window stretches an attack across a window's edge, though the engine finds it in
# one window. scan_all therefore scans, besides the text itself, a view of it in which each
# run of "gap" characters longer than 2 * GAP_KEEP is replaced by what normalisation
# (soar.detect.normalise) makes of it, cut short: its visible characters, the first and last
# GAP_KEEP of them. Gap characters are those that normalisation drops (control codes, the
# invisible characters, terminal escape sequences: its own pattern, a sequence whole), those
# it turns into nothing but gap characters: ASCII whitespace and punctuation but "_", and
# dropped ones (Unicode spaces, fullwidth and small punctuation, the ellipsis "\u2026" ->
# "...", typographic quotes and dashes, spacing accents such as "\u00a8" -> " \u0308"), and
# those whose normal form has no ASCII letter, digit or "_" (what the rules read as \W: box
# drawing, arrows, emoji, CJK, other scripts' letters, combining marks, unassigned code
# points). All derived from normalise() itself over every code point at first use
# (_gap_classes): a character it folds to a Latin letter or digit (fullwidth, accented,
# circled letters, Cyrillic and Greek lookalikes) is no gap. Not gap characters either: bidi
# controls and Unicode tag characters (normalisation reports or decodes them), and lone
# surrogates. A run with nothing visible becomes one dropped character (a control code if it
# held one), so that words it joined stay joined, and its signal (hidden characters inside a
# word) stays. GAP_KEEP exceeds every bounded repetition of the rules over such characters
# (``[^"\n]{1,80}``), so a run cut short is never mistaken for a short one.
#
# Signs of hidden characters inside a word are kept where the run has nothing visible; inside
# a run that is cut short, between two letters of another script (CJK, Hebrew: a word to the
# signs, a gap to the rules), they are left to the windows of the text itself, which see them
# whole. The view never gives a sign the text does not.
#
# Runs are found by sre in an ASCII text, and otherwise by RE2 in the UTF-8 bytes: runs of at
# least _RUN_FLOOR gap characters (the class is some 590 RE2 instructions, so {97,} would be
# far over a pattern's program limit), those longer than 2 * GAP_KEEP kept; sre with the whole
# class took 0.45 s per MiB. Measured, finding the runs of 1 MiB: English text 10 ms (sre),
# French text 3 ms, box-drawing padding 14 ms, emoji padding 29 ms, CJK text 15 ms; the worst
# case, runs of exactly _RUN_FLOOR gap characters between letters, 110 ms. A text that holds
# escape sequences (ESC, CSI: an item RE2 cannot bound as the normaliser does) and non-ASCII
# characters has its runs found by sre with the whole class: 113 ms per MiB (a sequence, three
# box-drawing characters and a letter by turns).
GAP_KEEP: Final = 48
# Runs of gap characters shorter than this are not looked at (see above)
_RUN_FLOOR: Final = 8
# ASCII characters the rules read as gaps (\W): whitespace and punctuation but "_"
_ASCII_GAP: Final = frozenset(
    "\t\n\r" + "".join(chr(c) for c in range(0x20, 0x7F) if not chr(c).isalnum() and c != 0x5F)
)
# What the rules read as a word character (RE2's \w) in a normal form
_WORD_CHAR: Final = re.compile("[0-9A-Za-z_]")
# Chunks (code points) of the gap classes' derivation (see _gap_classes)
_PLANE_CHUNK: Final = 4096
_CHUNK: Final = 64
_ANY_CONTROL: Final = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]")


def _excluded(cp: int) -> bool:
    """Bidi controls (reported), tag characters (decoded) and surrogates (no character of
    their own): never gap characters."""
    return (
        0x202A <= cp <= 0x202E
        or 0x2066 <= cp <= 0x2069
        or 0xE0000 <= cp <= 0xE007F
        or 0xD800 <= cp <= 0xDFFF
    )


def _code_points(first: int, last: int) -> str:
    return array.array("I", range(first, last)).tobytes().decode("utf-32-le", "surrogatepass")


class _GapClasses(NamedTuple):
    """Code points, sorted: what normalisation drops; what it keeps as ASCII gap characters
    (or dropped ones); what stays without an ASCII letter, digit or "_" (what the rules read
    as RE2's non-word class)."""

    dropped: list[int]
    kept: list[int]
    wide: list[int]


def _gap_classes() -> _GapClasses:
    """The gap characters, derived from :func:`soar.detect.normalise.normalise` over every
    code point. A chunk of code points that is NFKC-normal and that normalise() only
    lower-cases holds no dropped or ASCII gap character, and every character of it stays
    non-ASCII: all of it is wide (but excluded code points); every other chunk is read code
    point by code point. Measured: about 0.2 s of CPU, once, when the first prompt over
    MAX_CHARS is scanned (in a scan pool's thread), and 0.5 s more to compile the patterns."""
    from soar.detect.normalise import _HIDDEN_START, normalise

    def dropped(ch: str) -> bool:
        return _HIDDEN_START.match(ch) is not None and not _excluded(ord(ch))

    def plain(chunk: str) -> bool:
        return unicodedata.is_normalized("NFKC", chunk) and normalise(chunk).text == chunk.lower()

    out = _GapClasses([], [], [])

    def read(chunk: str) -> None:
        for ch in chunk:
            cp = ord(ch)
            if dropped(ch):
                out.dropped.append(cp)
            elif not _excluded(cp):
                text = normalise(ch).text
                if not text:
                    continue
                if all(c in _ASCII_GAP or dropped(c) for c in text):
                    out.kept.append(cp)
                elif cp >= 0x80 and _WORD_CHAR.search(text) is None:
                    out.wide.append(cp)

    def all_wide(first: int, last: int) -> None:
        out.wide.extend(cp for cp in range(first, last) if not _excluded(cp))

    read(_code_points(0, 0x80))
    for first in range(0x80, 0x110000, _PLANE_CHUNK):
        last = min(first + _PLANE_CHUNK, 0x110000)
        chunk = _code_points(first, last)
        if plain(chunk):
            all_wide(first, last)
            continue
        for at in range(0, len(chunk), _CHUNK):
            if plain(part := chunk[at : at + _CHUNK]):
                all_wide(first + at, first + at + len(part))
            else:
                read(part)
    return out


def _ranges(points: list[int]) -> Iterator[tuple[int, int]]:
    """The code points (sorted) as ranges, first and last."""
    i = 0
    while i < len(points):
        j = i
        while j + 1 < len(points) and points[j + 1] == points[j] + 1:
            j += 1
        yield points[i], points[j]
        i = j + 1


def _char_class(points: list[int]) -> str:
    """The inside of a character class (Python's re)."""
    return "".join(f"\\U{a:08x}" + (f"-\\U{b:08x}" if b > a else "") for a, b in _ranges(points))


def _re2_class(points: list[int]) -> str:
    """The inside of a character class (RE2)."""
    return "".join(
        f"\\x{{{a:x}}}" + (f"-\\x{{{b:x}}}" if b > a else "") for a, b in _ranges(points)
    )


class _GapPatterns(NamedTuple):
    # one gap character (a test checks the derivation against normalise())
    gap: re.Pattern[str]
    # a text without escape sequences: runs of at least _RUN_FLOOR gap characters (RE2, on
    # UTF-8), runs too long to keep whole in an ASCII text, and what normalisation drops
    run: Regex
    run_ascii: re.Pattern[str]
    dropped: re.Pattern[str]
    # a text with escape sequences: runs of items (an escape sequence whole, or one gap
    # character, in the normaliser's order: a sequence first), for an ASCII text and for any,
    # and what normalisation drops
    items_ascii: re.Pattern[str]
    items: re.Pattern[str]
    dropped_items: re.Pattern[str]


_gap_cache: list[_GapPatterns] = []
_gap_lock = threading.Lock()


def _gap_patterns() -> _GapPatterns:
    """The gap patterns, made at first use (soar.detect on first use only: soar.gateway alone
    needs only httpx and Starlette; and the derivation's cost only with a long prompt)."""
    if _gap_cache:
        return _gap_cache[0]
    with _gap_lock:  # one derivation, whatever the threads asking at once
        if not _gap_cache:
            from soar.detect.matcher import Regex
            from soar.detect.normalise import _ANSI

            classes = _gap_classes()
            every = sorted(classes.dropped + classes.kept + classes.wide)
            dropped = _char_class(classes.dropped)
            ascii_gap = _char_class([cp for cp in every if cp < 0x80])
            gap = _char_class(every)
            _gap_cache.append(
                _GapPatterns(
                    re.compile(f"[{gap}]"),
                    Regex(f"[{_re2_class(every)}]{{{_RUN_FLOOR},}}"),
                    re.compile(f"[{ascii_gap}]{{{2 * GAP_KEEP + 1},}}+"),
                    re.compile(f"[{dropped}]++"),
                    re.compile(f"(?:{_ANSI}|[{ascii_gap}])++"),
                    re.compile(f"(?:{_ANSI}|[{gap}])++"),
                    re.compile(f"(?:{_ANSI}|[{dropped}])++"),
                )
            )
        return _gap_cache[0]


@dataclass(frozen=True)
class _View:
    """A text with long gap runs cut short, and the map back to it. Piece ``i`` of ``text``
    starts at ``at[i]`` and stands for the original ``[orig[i], orig_end[i])``: character for
    character when both have the same length, otherwise as a whole (a span that starts or ends
    inside it widens to all of it)."""

    text: str
    at: list[int]
    orig: list[int]
    orig_end: list[int]

    def _map(self, pos: int, *, end: bool) -> int:
        i = bisect.bisect_right(self.at, pos) - 1
        length = (self.at[i + 1] if i + 1 < len(self.at) else len(self.text)) - self.at[i]
        if length == self.orig_end[i] - self.orig[i]:
            return self.orig[i] + pos - self.at[i] + (1 if end else 0)
        return self.orig_end[i] if end else self.orig[i]

    def original_span(self, start: int, end: int) -> tuple[int, int]:
        return self._map(start, end=False), self._map(max(start, end - 1), end=True)


def _runs(text: str) -> Iterator[tuple[int, int, re.Pattern[str]]]:
    """The gap runs of ``text`` longer than ``2 * GAP_KEEP`` (character offsets), each with
    the pattern of what normalisation drops in it."""
    p = _gap_patterns()
    long = 2 * GAP_KEEP
    if "\x1b" in text or "\x9b" in text:
        items = p.items_ascii if text.isascii() else p.items
        for m in items.finditer(text):
            a, b = m.span()
            if b - a > long:
                escaped = text.find("\x1b", a, b) >= 0 or text.find("\x9b", a, b) >= 0
                yield a, b, p.dropped_items if escaped else p.dropped
        return
    if text.isascii():  # (the common case: sre's search for a small class is faster)
        for m in p.run_ascii.finditer(text):
            yield m.start(), m.end(), p.dropped
        return
    # lone surrogates pass as bytes no class matches (they are no gap characters)
    data = text.encode("utf-8", "surrogatepass")
    at_byte = at_char = pos = 0
    while (found := p.run.next_match(data, pos)) is not None:
        a, b = found
        pos = b  # (never an empty match)
        if b - a <= long:  # bytes: as many as its characters, or more
            continue
        start = at_char + len(data[at_byte:a].decode("utf-8", "surrogatepass"))
        at_char = start + len(data[a:b].decode("utf-8", "surrogatepass"))
        at_byte = b
        if at_char - start > long:
            yield start, at_char, p.dropped


def _compressed(text: str) -> _View | None:
    """The compressed view of ``text`` (see above); None when it has no run to cut. Linear."""
    pieces: list[str] = []
    at: list[int] = []
    orig: list[int] = []
    orig_end: list[int] = []
    produced = pos = 0

    def emit(piece: str, start: int, end: int) -> None:
        nonlocal produced
        pieces.append(piece)
        at.append(produced)
        orig.append(start)
        orig_end.append(end)
        produced += len(piece)

    for a, b, dropped in _runs(text):
        run = text[a:b]
        if a > pos:
            emit(text[pos:a], pos, a)
        visible = dropped.sub("", run)
        if len(visible) == len(run):  # nothing dropped: its own two ends
            emit(run[:GAP_KEEP], a, a + GAP_KEEP)
            emit(run[-GAP_KEEP:], b - GAP_KEEP, b)
        elif not visible:
            emit("\x01" if _ANY_CONTROL.search(run) else run[0], a, b)
        elif len(visible) > 2 * GAP_KEEP:
            emit(visible[:GAP_KEEP] + visible[-GAP_KEEP:], a, b)
        else:
            emit(visible, a, b)
        pos = b
    if not pieces:
        return None
    if pos < len(text):
        emit(text[pos:], pos, len(text))
    return _View("".join(pieces), at, orig, orig_end)


def _scan_windows(
    engine: Any, text: str, kind: Any, found: dict[str, Any], view: _View | None
) -> None:
    from soar.detect.engine import MAX_CHARS

    step = MAX_CHARS - WINDOW_OVERLAP
    starts = range(0, len(text) - WINDOW_OVERLAP, step) if len(text) > MAX_CHARS else (0,)
    for start in starts:
        for f in engine.scan(text[start : start + MAX_CHARS], kind):
            span = (f.span[0] + start, f.span[1] + start)
            if view is not None:
                span = view.original_span(*span)
            if f.rule not in found or span < found[f.rule].span:
                found[f.rule] = dataclasses.replace(f, span=span)


def scan_all(engine: Any, text: str, kind: Any = "prompt") -> list[Any]:
    """``engine.scan`` over all of ``text``: in windows of the engine's ``MAX_CHARS`` that
    overlap by :data:`WINDOW_OVERLAP`, and, when ``text`` has gap runs longer than
    ``2 * GAP_KEEP`` (whitespace, punctuation, invisible characters, escape sequences, and
    what stays without an ASCII letter or digit: box drawing, emoji, CJK), in the windows of
    its compressed view too, which an attack stretched across a window's edge by
    such runs fits in. Each rule's first finding, its span in ``text``. Time and memory
    linear in ``len(text)`` (the compressed view's scan at most doubles it)."""
    from soar.detect.engine import MAX_CHARS

    if len(text) <= MAX_CHARS:
        return list(engine.scan(text, kind))
    found: dict[str, Any] = {}
    _scan_windows(engine, text, kind, found, None)
    view = _compressed(text)
    if view is not None:
        _scan_windows(engine, view.text, kind, found, view)
    return sorted(found.values(), key=lambda f: (f.span, f.technique, f.rule))


# -- the prompt of a request -----------------------------------------------------------------

# String values of these keys are API metadata that the model does not read as text (a model
# name, a role, a part's type, ids), when they have an identifier's shape (_IDENTIFIER); every
# other string of the body is scanned. (A chat template pastes the role into the prompt, and
# servers such as vLLM take any role string: "user<|im_end|>\n<|im_start|>system\n..." is text.)
NOT_TEXT_KEYS: Final = frozenset(
    {"model", "role", "type", "id", "object", "tool_call_id", "call_id", "tool_use_id"}
)
# What a metadata value looks like: ASCII letters, digits and "_.:/@+-", at most 128 of them
# ("gpt-4o-2024-08-06", "meta-llama/Llama-3.1-8B-Instruct", "call_8f3a", "chat.completion").
_IDENTIFIER: Final = re.compile(r"[\w.:/@+-]{1,128}", re.ASCII)
# Keys that are plain identifiers (field names: "content", "max_tokens") are not text; any
# other key (spaces, punctuation, non-ASCII, or longer) is scanned: a JSON schema's property
# names, for one, are read by the model.
_FIELD_NAME: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
# Bounds of the walk over a body: never reached by a JSON body the middleware parses (at most
# max_scan_body bytes, which may be at most MAX_JSON_VALUES, each value at least one byte;
# json's own nesting limit is about 1,000).
MAX_JSON_VALUES: Final = 64 * MAX_SCAN_BODY
MAX_JSON_DEPTH: Final = 10_000


def default_prompt_of(body: Any) -> str | None:
    """The text a request sends to the model: every string of the JSON ``body``, in document
    order, joined by newlines; None when there is none. Whatever the API's shape (a prompt,
    chat ``messages`` with content as a string, a part, a list of parts or Assistants-style
    ``{"text": {"value": ...}}``, Anthropic's ``system`` and ``tool_result`` blocks, the
    Responses API's ``input`` and ``instructions``, tool call ``arguments`` and tool outputs,
    tool definitions): a reader of known fields misses the next shape, and missed text is a way
    past the detector. Left out: string values of :data:`NOT_TEXT_KEYS` (metadata) that have
    an identifier's shape (ASCII letters, digits and ``_.:/@+-``, 128 at most: any other value
    there is text), and keys that are plain field names; other keys are text. All of it: the
    body is bounded (the middleware's ``max_scan_body``), and there is no depth cut (``json``
    nests about 1,000 levels at most). The walk is iterative (an explicit stack); an object beyond
    :data:`MAX_JSON_DEPTH` levels or :data:`MAX_JSON_VALUES` values (only a caller's own, a
    cycle for one: never a JSON body the middleware reads) raises ValueError rather than
    being read in part."""
    parts: list[str] = []
    values = 0
    stack: list[Iterator[tuple[Any, Any]]] = [iter(((None, body),))]
    while stack:
        item = next(stack[-1], None)
        if item is None:
            stack.pop()
            continue
        key, value = item
        values += 1
        if values > MAX_JSON_VALUES:
            raise ValueError(f"body: over {MAX_JSON_VALUES} values")
        if isinstance(key, str) and key and not _FIELD_NAME.fullmatch(key):
            parts.append(key)
        if isinstance(value, str):
            if value and not (key in NOT_TEXT_KEYS and _IDENTIFIER.fullmatch(value)):
                parts.append(value)
        elif isinstance(value, dict | list | tuple):
            if len(stack) >= MAX_JSON_DEPTH:
                raise ValueError(f"body: over {MAX_JSON_DEPTH} levels deep")
            if isinstance(value, dict):
                stack.append(iter(value.items()))
            else:
                stack.append((None, v) for v in value)
    return "\n".join(parts) if parts else None


def _raw_text(raw: bytes) -> str | None:
    """A body that is no JSON, as text to scan: valid UTF-8, or bytes that start like JSON
    (invalid UTF-8 replaced); None for anything else (an image, a binary upload)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if raw.lstrip()[:1] in (b"{", b"["):
        return raw.decode("utf-8", "replace")
    return None


def _finding(f: Any) -> tuple[str, float] | None:
    get = f.get if isinstance(f, dict) else (lambda k, d=None: getattr(f, k, d))
    technique = get("technique")
    score = get("confidence", None)
    if score is None:
        score = get("score", 0.9)
    if not isinstance(technique, str):
        return None
    try:
        return technique, min(max(float(score), 0.0), 1.0)
    except (TypeError, ValueError):
        return technique, 0.9


def detected(findings: Iterable[Any], min_confidence: float) -> dict[str, float]:
    """The techniques to report, each with its score: for the built-in engine's findings, the
    engine's own combined score per technique (:func:`soar.detect.technique_scores`: a
    role-play and a "no filters" together are a jailbreak, neither alone); for any other
    detector's findings, the highest score among its findings of a technique. Techniques
    below ``min_confidence`` are left out."""
    from soar.detect import Finding, technique_scores

    findings = list(findings)
    if findings and all(isinstance(f, Finding) for f in findings):
        scores = technique_scores(findings)
        return {t: s for t, s in scores.items() if s >= min_confidence}
    best: dict[str, float] = {}
    for f in findings:
        parsed = _finding(f)
        if parsed and parsed[1] >= min_confidence:
            best[parsed[0]] = max(best.get(parsed[0], 0.0), parsed[1])
    return best


def _severity(score: float) -> str:
    return "critical" if score >= 0.95 else "high" if score >= 0.75 else "medium"


def refusal(decision: Decision) -> tuple[int, dict[str, object], dict[str, str]]:
    """Status, JSON body and headers of the answer to a blocked subject."""
    if decision.reason == "stale":
        body: dict[str, object] = {
            "error": "enforcement_unavailable",
            "message": "the enforcement feed is not current; retry",
        }
        return 503, body, {"Retry-After": "5"}
    headers: dict[str, str] = {}
    if decision.until is not None:
        left = max(1, math.ceil(decision.until.timestamp() - time.time()))
        headers["Retry-After"] = str(left)
    body = {
        "error": "blocked",
        "message": "this subject is blocked by the security response",
        "kind": decision.kind,
        "until": decision.until.isoformat() if decision.until else None,
        "incident_id": decision.incident_id,
        "technique": decision.technique,
    }
    return 403, body, headers


def _is_async(fn: object) -> bool:
    return inspect.iscoroutinefunction(fn) or inspect.iscoroutinefunction(
        getattr(fn, "__call__", None)  # noqa: B004 - an object with an async __call__
    )


def scan_owner_of(subject: Subject) -> tuple[str, ...]:
    """Whose share of the scan pool a request's scans count against: the subject's tenant
    and the first of its API key, user and session that is set (the one an attacker can
    least easily change: session ids are the caller's to make up, an API key is issued), or
    the tenant alone when none is (then all such requests of a tenant share one share)."""
    for kind, value in (
        ("api_key", subject.api_key),
        ("user", subject.user),
        ("session", subject.session),
    ):
        if value:
            return (subject.tenant, kind, value)
    return (subject.tenant,)


# The answer to a request refused before the app sees it: status, JSON body, headers.
_Answer = tuple[int, dict[str, object], dict[str, str]]

_TOO_DEEP_ANSWER: Final[_Answer] = (
    400,
    {"error": "body_too_deep", "message": "request body nested too deep to scan"},
    {},
)
_SCAN_BUSY_ANSWER: Final[_Answer] = (
    503,
    {"error": "scan_unavailable", "message": "the prompt scanner is busy; retry"},
    {"Retry-After": "5"},
)
_TOO_LARGE_ANSWER: Final[_Answer] = (
    413,
    {
        "error": "body_too_large_to_scan",
        "message": "the request body is larger than the prompt scanner reads",
    },
    {},
)
_SCAN_QUOTA_ANSWER: Final[_Answer] = (
    429,
    {
        "error": "scan_quota",
        "message": "too many long prompts of this subject are being scanned; retry",
    },
    {"Retry-After": "2"},
)


class EnforcementMiddleware:
    """The ASGI middleware (see the module's docstring). ``scan_pool``: where the request's
    long work runs: its body parsed and read, a synchronous detector's scan of a long prompt,
    and the scans of a :func:`builtin_detector` made without a ``pool`` of its own (default:
    :func:`shared_scan_pool`). A detector of your own that scans in a :class:`ScanPool` keeps
    to the request's subject's share of it without being told (``ScanPool.run``'s owner
    defaults to it while the middleware's detector runs).

    ``max_scan_body``: the most of a body read and scanned (default :data:`MAX_SCAN_BODY`);
    ``oversize``: what a larger body meets, ``"refuse"`` (413), ``"pass"`` (passed on
    unscanned) or None, the client's fail mode (413 when ``"closed"``); see the module.

    Counters: ``refused`` (blocked subjects answered 403), ``unscanned`` (bodies over
    ``max_scan_body``: refused with 413 or passed on, as ``oversize`` says), ``too_deep``
    (bodies nested too deep to read, answered 400), ``busy`` (scans the full pool had no place
    for: passed on with ``fail_mode="open"``, answered 503 with ``"closed"``), ``over_share``
    (scans of a subject that already held its share of the pool: answered 429, whatever the
    fail mode; passing them on would let anyone skip the scan by keeping two costly ones
    running)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        client: EnforcementClient,
        extract: Extractor,
        reporter: DetectionReporter | None = None,
        detector: Detector | None = None,
        prompt_of: Callable[[Any], str | None] = default_prompt_of,
        source: str = "llm-gateway",
        min_confidence: float = 0.5,
        scan_pool: ScanPool | None = None,
        max_scan_body: int = MAX_SCAN_BODY,
        oversize: Literal["refuse", "pass"] | None = None,
    ) -> None:
        if not 1 <= max_scan_body <= MAX_JSON_VALUES:
            raise ValueError(f"max_scan_body: must be 1 to {MAX_JSON_VALUES} bytes")
        if oversize not in (None, "refuse", "pass"):
            raise ValueError("oversize: must be 'refuse', 'pass' or None (the client's fail mode)")
        self.app = app
        self.client = client
        self.extract = extract
        self.reporter = reporter
        self.detector = detector
        self.prompt_of = prompt_of
        self.source = source
        self.min_confidence = min_confidence
        # where long work runs (default: shared_scan_pool()), a builtin_detector's too
        self.scan_pool = scan_pool
        # the most of a body read and scanned; what a larger body meets (see the module)
        self.max_scan_body = max_scan_body
        self.oversize = oversize
        self.refused = 0
        # bodies not scanned: over max_scan_body (refused with 413 or passed on, see oversize)
        self.unscanned = 0
        # bodies nested too deep to read: refused with 400
        self.too_deep = 0
        # prompts not scanned because the scan pool was full (passed on with fail_mode
        # "open", refused with 503 with "closed")
        self.busy = 0
        # prompts not scanned because their subject held its share of the pool: 429
        self.over_share = 0

    @property
    def pool(self) -> ScanPool:
        return self.scan_pool or shared_scan_pool()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        subject, decision = await self._check(Request(scope, receive))
        if subject is None or decision is None:
            await self.app(scope, receive, send)
            return
        if decision.blocked:
            self.refused += 1
            await _answer(send, *refusal(decision))
            return
        # Milder effects (a throttle, ...) are the app's to apply: `request.state.soar_decision`.
        scope.setdefault("state", {})["soar_decision"] = decision
        if self.detector is not None and scope.get("method") in ("POST", "PUT", "PATCH"):
            scanned = await self._scan(scope, receive, subject)
            if isinstance(scanned, tuple):
                await _answer(send, *scanned)
                return
            receive = scanned
        await self.app(scope, receive, send)

    async def _check(self, request: Request) -> tuple[Subject | None, Decision | None]:
        """The request's subject (the extractor's) and the client's decision on it; (None,
        None) when the extractor names none."""
        got = self.extract(request)
        subject = await got if inspect.isawaitable(got) else got
        if subject is None:
            return None, None
        decision = self.client.check_subject(
            subject.tenant, session=subject.session, user=subject.user, api_key=subject.api_key
        )
        return subject, decision

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A WebSocket's handshake is checked like a request (the extractor gets the
        handshake: a ``Request`` over its scope, headers and query but no body): a blocked
        subject's connection is refused before it is accepted (``websocket.close`` with code
        1008, which the server answers with 403). Its messages are not scanned."""
        _, decision = await self._check(Request({**scope, "type": "http"}))
        if decision is not None:
            if decision.blocked:
                self.refused += 1
                message = await receive()  # websocket.connect
                if message["type"] == "websocket.connect":
                    await send({"type": "websocket.close", "code": 1008, "reason": "blocked"})
                return
            scope.setdefault("state", {})["soar_decision"] = decision
        await self.app(scope, receive, send)

    async def _scan(self, scope: Scope, receive: Receive, subject: Subject) -> Receive | _Answer:
        """Reads the body (bounded), scans its prompt, and gives the app a replay of it; or
        the answer to refuse the request with."""
        chunks: list[bytes] = []
        size, more, limit = 0, True, self.max_scan_body
        messages: list[Message] = []
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            chunks.append(chunk)
            more = bool(message.get("more_body", False))
            if size > limit:
                break  # read no further: the rest goes to the app as it comes, never held here
        if size <= limit:
            refused = await self._detect(b"".join(chunks), subject)
            if refused is not None:
                return refused
        else:
            # not scanned: said, and counted; refused or passed on as oversize says
            self.unscanned += 1
            del chunks
            refuse = self.oversize == "refuse" or (
                self.oversize is None and self.client.fail_mode == "closed"
            )
            log.warning(
                "request body over %d bytes not scanned; request %s",
                limit,
                "refused (413)" if refuse else "passed on",
            )
            if refuse:
                return _TOO_LARGE_ANSWER

        replay = iter(messages)

        async def replayed() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        return replayed

    async def _findings(self, text: str, owner: Hashable) -> list[Any]:
        detector = self.detector
        assert detector is not None
        # a detector scanning in a pool of its own (builtin_detector()) finds this request's
        # pool and owner here
        token = _SCAN_CONTEXT.set(_ScanContext(self.scan_pool, owner))
        try:
            if len(text) > SCAN_IN_THREAD and not _is_async(detector):
                # a long prompt: in the scan pool, off the event loop and off its default pool
                found: Any = await self.pool.run(detector, text, owner=owner)
            else:
                found = detector(text)
            return list(await found if inspect.isawaitable(found) else found)
        finally:
            _SCAN_CONTEXT.reset(token)

    def _prompt_text(self, raw: bytes) -> Any:
        """The prompt of a raw body: text, None (no text in it), or :data:`_TOO_DEEP` (nested
        too deep to read). A body Python's ``json`` refuses is not thereby without a prompt
        (the app, or the model server behind it, may read it more leniently: invalid UTF-8
        replaced, a huge number, trailing data): text (valid UTF-8, or anything that starts
        like JSON) is scanned whole as it is. The values of a key given twice are all read
        (``json`` keeps the last; another parser may keep the first)."""
        if not raw:
            return None
        shadowed: list[Any] = []

        def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key, value in items:
                if key in out:
                    shadowed.append(out[key])
                out[key] = value
            return out

        try:
            body = json.loads(raw, object_pairs_hook=pairs)
        except RecursionError:
            return _TOO_DEEP
        except ValueError:
            return _raw_text(raw)
        try:
            text = self.prompt_of(body)
            if shadowed:
                more = default_prompt_of(shadowed)
                text = "\n".join(t for t in (text, more) if t) or None
            return text
        except (ValueError, RecursionError):
            return _TOO_DEEP

    def _busy(self, what: str, exc: ScanBusy) -> _Answer | None:
        """A scan the pool had no place for: said and counted, never with the prompt. Over its
        subject's share: refused (429). The pool full: the client's fail_mode decides (None:
        pass the request on)."""
        if exc.own:
            self.over_share += 1
            log.warning(
                "%s not scanned: its subject holds its share of the scan pool; request "
                "refused (429)",
                what,
            )
            return _SCAN_QUOTA_ANSWER
        self.busy += 1
        closed = self.client.fail_mode == "closed"
        log.warning(
            "%s not scanned: the scan pool is full; request %s",
            what,
            "refused (fail_mode closed)" if closed else "passed on (fail_mode open)",
        )
        return _SCAN_BUSY_ANSWER if closed else None

    async def _detect(self, raw: bytes, subject: Subject) -> _Answer | None:
        """Scans the body's prompt and reports what is found; the answer to refuse the request
        with, if it is to be refused. A body over :data:`SCAN_IN_THREAD` bytes is also parsed
        and read in the scan pool (a 1 MiB body takes a fifth of a second to parse and walk:
        not on the event loop, which serves every other request meanwhile); ``prompt_of``
        must then be thread-safe."""
        owner = scan_owner_of(subject)
        if len(raw) > SCAN_IN_THREAD:
            try:
                text = await self.pool.run(self._prompt_text, raw, owner=owner)
            except ScanBusy as exc:
                return self._busy(f"request body of {len(raw)} bytes", exc)
        else:
            text = self._prompt_text(raw)
        if text is _TOO_DEEP:
            # no LLM API nests a request this deep: refused, whatever the fail mode (passed on,
            # it would be a way past the scan)
            self.too_deep += 1
            log.warning("request body of %d bytes refused (nested too deep to scan)", len(raw))
            return _TOO_DEEP_ANSWER
        if not text or self.detector is None:
            return None
        try:
            findings = await self._findings(text, owner)
        except ScanBusy as exc:
            return self._busy(f"prompt of {len(text)} characters", exc)
        except Exception as exc:  # a detector's failure must not fail the request
            log.warning("detector failed: %s", type(exc).__name__)
            return None
        best = detected(findings, self.min_confidence)
        if self.reporter is None:
            return None
        for technique, score in best.items():
            try:
                await self.reporter.report(
                    make_detection(
                        technique,
                        tenant=subject.tenant,
                        session=subject.session,
                        user=subject.user,
                        api_key=subject.api_key,
                        severity=_severity(score),
                        confidence=score,
                        source=self.source,
                        # the evidence is the prompt's head, bounded: the whole prompt is
                        # scanned, but a detection's body is limited (256 KiB encoded)
                        prompt=text[:MAX_EVIDENCE],
                    )
                )
            except ValueError as exc:  # a report refused must not fail the request
                log.warning("detection not reported: %s", type(exc).__name__)
        return None


_TOO_DEEP: Final = object()


async def _answer(
    send: Send, status: int, body: dict[str, object], headers: dict[str, str]
) -> None:
    raw = json.dumps(body).encode()
    head = [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
    head += [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": raw})


__all__ = [
    "Detector",
    "EnforcementMiddleware",
    "Extractor",
    "ScanBusy",
    "ScanPool",
    "Subject",
    "builtin_detector",
    "default_prompt_of",
    "scan_all",
    "scan_owner_of",
    "shared_scan_pool",
]
