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
threads of its own, a bounded queue; shared by default): the built-in detector's scan, or a
synchronous detector's call (which must then be thread-safe). When the pool is full the
prompt is not scanned: counted in `busy`, logged (never the prompt), and the request is
passed on (the client's `fail_mode="open"`) or answered `503` with `Retry-After`
(`fail_mode="closed"`), as for a stale feed.
"""

from __future__ import annotations

import asyncio
import bisect
import dataclasses
import functools
import inspect
import json
import logging
import math
import re
import threading
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Final, NamedTuple, TypeVar

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from soar.gateway.client import Decision, EnforcementClient
from soar.gateway.reporter import DetectionReporter, make_detection

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

T = TypeVar("T")


class ScanBusy(RuntimeError):
    """A scan not started: its :class:`ScanPool` already had as many scans as it holds."""


class ScanPool:
    """A bounded executor for the CPU-heavy scans of long prompts (a 1 MiB keyword salad costs
    most of a second of CPU): ``workers`` threads of its own, so hostile prompts cannot take the
    event loop's default thread pool from everything else, and at most ``queue`` scans waiting
    for one of them. A scan asked for beyond that raises :class:`ScanBusy` at once (counted in
    ``refused``); the middleware then goes on unscanned or refuses the request, as its
    client's ``fail_mode`` says. A scan holds its place until its thread is done with it, even
    when the request waiting for it is gone, so disconnecting clients cannot pile up work.
    The threads are started on first use."""

    def __init__(self, workers: int = SCAN_WORKERS, queue: int = SCAN_QUEUE) -> None:
        if workers < 1 or queue < 0:
            raise ValueError("workers: at least 1; queue: at least 0")
        self.workers = workers
        self.queue = queue
        self.refused = 0
        self._held = 0
        self._lock = threading.Lock()
        self._executor: ThreadPoolExecutor | None = None

    @property
    def held(self) -> int:
        """Scans running or waiting."""
        return self._held

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` in one of the pool's threads; :class:`ScanBusy` when the pool is full."""
        with self._lock:
            if self._held >= self.workers + self.queue:
                self.refused += 1
                raise ScanBusy(f"{self._held} scans running or waiting")
            self._held += 1
            if self._executor is None:
                self._executor = ThreadPoolExecutor(self.workers, thread_name_prefix="soar-scan")
            executor = self._executor
        try:
            future = executor.submit(fn, *args)
        except BaseException:
            self._release(None)
            raise
        future.add_done_callback(self._release)
        return await asyncio.wrap_future(future)

    def _release(self, _: object) -> None:
        with self._lock:
            self._held -= 1


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
    sight. A prompt over :data:`SCAN_IN_THREAD` characters is scanned in ``pool`` (default:
    :func:`shared_scan_pool`), which raises :class:`ScanBusy` when it is full."""
    from soar.detect import Engine

    engine = Engine.default()
    if kind not in ("prompt", "output"):
        raise ValueError(f"kind must be 'prompt' or 'output', not {kind!r}")
    scan_kind: Any = kind

    async def detect(text: str) -> list[Any]:
        if len(text) > SCAN_IN_THREAD:
            return await (pool or shared_scan_pool()).run(scan_all, engine, text, scan_kind)
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
# invisible characters, terminal escape sequences: its own pattern, a sequence whole) or keeps
# as characters that are not word characters (ASCII whitespace and punctuation but "_",
# Unicode spaces). Not gap characters: bidi controls and Unicode tag characters (normalisation
# reports or decodes them) and every other non-ASCII character (a letter may fold into a Latin
# one). A run with nothing visible becomes one dropped character (a control code if it held
# one), so that words it joined stay joined, and its signal (hidden characters inside a word)
# stays. GAP_KEEP exceeds every bounded repetition of the rules over such characters
# (``[^"\n]{1,80}``), so a run cut short is never mistaken for a short one.
GAP_KEEP: Final = 48
# (what soar.detect.normalise drops but bidi controls and tags: a test checks that they agree)
_DROPPED_CLASS: Final = (
    "\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f\\xad\\u0300-\\u036f\\u061c\\u115f\\u1160\\u17b4"
    "\\u17b5\\u180b-\\u180f\\u1ab0-\\u1aff\\u1dc0-\\u1dff\\u200b-\\u200f\\u2060-\\u2065\\u206a-\\u206f"
    "\\u20d0-\\u20ff\\u3164\\ufe00-\\ufe0f\\ufe20-\\ufe2f\\ufeff\\uffa0\\ufff0-\\ufffb"
    "\\U0001bca0-\\U0001bca3\\U0001d173-\\U0001d17a\\U000e0080-\\U000e0fff"
)
_VISIBLE_CLASS: Final = (
    "\\t\\n\\r\\x20-\\x2f\\x3a-\\x40\\x5b-\\x5e\\x60\\x7b-\\x7e\\xa0\\u1680\\u2000-\\u200a"
    "\\u2028\\u2029\\u202f\\u205f\\u2800\\u3000"
)
_GAP_CLASS: Final = _DROPPED_CLASS + _VISIBLE_CLASS
_ANY_CONTROL: Final = re.compile("[\\x00-\\x08\\x0b\\x0c\\x0e-\\x1f\\x7f-\\x9f]")


class _GapPatterns(NamedTuple):
    # a text without escape sequences: runs of gap characters too long to keep whole, and what
    # normalisation drops in them
    run: re.Pattern[str]
    dropped: re.Pattern[str]
    # a text with escape sequences: runs of items (an escape sequence whole, or one gap
    # character, in the normaliser's order: a sequence first), and what normalisation drops
    items: re.Pattern[str]
    dropped_items: re.Pattern[str]


@functools.cache
def _gap_patterns() -> _GapPatterns:
    # soar.detect on first use only: soar.gateway alone needs only httpx and Starlette
    from soar.detect.normalise import _ANSI

    return _GapPatterns(
        re.compile(f"[{_GAP_CLASS}]{{{2 * GAP_KEEP + 1},}}+"),
        re.compile(f"[{_DROPPED_CLASS}]++"),
        re.compile(f"(?:{_ANSI}|[{_GAP_CLASS}])++"),
        re.compile(f"(?:{_ANSI}|[{_DROPPED_CLASS}])++"),
    )


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
    """The gap runs of ``text`` longer than ``2 * GAP_KEEP``, each with the pattern of what
    normalisation drops in it."""
    p = _gap_patterns()
    if "\x1b" not in text and "\x9b" not in text:
        for m in p.run.finditer(text):
            yield m.start(), m.end(), p.dropped
        return
    for m in p.items.finditer(text):
        a, b = m.span()
        if b - a > 2 * GAP_KEEP:
            escaped = text.find("\x1b", a, b) >= 0 or text.find("\x9b", a, b) >= 0
            yield a, b, p.dropped_items if escaped else p.dropped


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
    ``2 * GAP_KEEP`` (whitespace, punctuation, invisible characters, escape sequences), in the
    windows of its compressed view too, which an attack stretched across a window's edge by
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
# name, a role, a part's type, ids); every other string of the body is scanned.
NOT_TEXT_KEYS: Final = frozenset(
    {"model", "role", "type", "id", "object", "tool_call_id", "call_id", "tool_use_id"}
)
# Keys that are plain identifiers (field names: "content", "max_tokens") are not text; any
# other key (spaces, punctuation, non-ASCII, or longer) is scanned: a JSON schema's property
# names, for one, are read by the model.
_FIELD_NAME: Final = re.compile(r"[A-Za-z0-9_]{1,64}")
# Bounds of the walk over a body: never reached by a JSON body the middleware parses (at most
# MAX_SCAN_BODY bytes, each value at least one; json's own nesting limit is about 1,000).
MAX_JSON_VALUES: Final = MAX_SCAN_BODY
MAX_JSON_DEPTH: Final = 10_000


def default_prompt_of(body: Any) -> str | None:
    """The text a request sends to the model: every string of the JSON ``body``, in document
    order, joined by newlines; None when there is none. Whatever the API's shape (a prompt,
    chat ``messages`` with content as a string, a part, a list of parts or Assistants-style
    ``{"text": {"value": ...}}``, Anthropic's ``system`` and ``tool_result`` blocks, the
    Responses API's ``input`` and ``instructions``, tool call ``arguments`` and tool outputs,
    tool definitions): a reader of known fields misses the next shape, and missed text is a way
    past the detector. Left out: string values of :data:`NOT_TEXT_KEYS` (metadata), and keys
    that are plain field names; other keys are text. All of it: the body is bounded
    (:data:`MAX_SCAN_BODY`), and there is no depth cut (``json`` nests about 1,000 levels at
    most). The walk is iterative (an explicit stack); an object beyond
    :data:`MAX_JSON_DEPTH` levels or :data:`MAX_JSON_VALUES` values (only a caller's own, a
    cycle for one: never a JSON body within MAX_SCAN_BODY) raises ValueError rather than
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
            if value and key not in NOT_TEXT_KEYS:
                parts.append(value)
        elif isinstance(value, dict | list | tuple):
            if len(stack) >= MAX_JSON_DEPTH:
                raise ValueError(f"body: over {MAX_JSON_DEPTH} levels deep")
            if isinstance(value, dict):
                stack.append(iter(value.items()))
            else:
                stack.append((None, v) for v in value)
    return "\n".join(parts) if parts else None


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


class EnforcementMiddleware:
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
    ) -> None:
        self.app = app
        self.client = client
        self.extract = extract
        self.reporter = reporter
        self.detector = detector
        self.prompt_of = prompt_of
        self.source = source
        self.min_confidence = min_confidence
        # where a synchronous detector scans a long prompt (default: shared_scan_pool())
        self.scan_pool = scan_pool
        self.refused = 0
        # bodies not scanned, passed on: over MAX_SCAN_BODY, or nested too deep to read
        self.unscanned = 0
        # prompts not scanned because the scan pool was full (passed on with fail_mode
        # "open", refused with 503 with "closed")
        self.busy = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request = Request(scope, receive)
        got = self.extract(request)
        subject = await got if inspect.isawaitable(got) else got
        if subject is None:
            await self.app(scope, receive, send)
            return
        decision = self.client.check_subject(
            subject.tenant, session=subject.session, user=subject.user, api_key=subject.api_key
        )
        if decision.blocked:
            self.refused += 1
            await _answer(send, *refusal(decision))
            return
        # Milder effects (a throttle, ...) are the app's to apply: `request.state.soar_decision`.
        scope.setdefault("state", {})["soar_decision"] = decision
        if self.detector is not None and scope.get("method") in ("POST", "PUT", "PATCH"):
            replay = await self._scan(scope, receive, subject)
            if replay is None:
                body: dict[str, object] = {
                    "error": "scan_unavailable",
                    "message": "the prompt scanner is busy; retry",
                }
                await _answer(send, 503, body, {"Retry-After": "5"})
                return
            receive = replay
        await self.app(scope, receive, send)

    async def _scan(self, scope: Scope, receive: Receive, subject: Subject) -> Receive | None:
        """Reads the body (bounded), scans its prompt, and gives the app a replay of it; None
        when the request is to be refused (the scan could not run and fail_mode is closed)."""
        chunks: list[bytes] = []
        size, more = 0, True
        messages: list[Message] = []
        while more:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size <= MAX_SCAN_BODY:
                chunks.append(chunk)
            more = bool(message.get("more_body", False))
        if size <= MAX_SCAN_BODY:
            if not await self._detect(b"".join(chunks), subject):
                return None
        else:
            # not scanned: said, and counted (the app's own body limit should be lower)
            self.unscanned += 1
            log.warning("request body of %d bytes not scanned (over %d)", size, MAX_SCAN_BODY)

        replay = iter(messages)

        async def replayed() -> Message:
            try:
                return next(replay)
            except StopIteration:
                return await receive()

        return replayed

    async def _findings(self, text: str) -> list[Any]:
        detector = self.detector
        assert detector is not None
        if len(text) > SCAN_IN_THREAD and not _is_async(detector):
            # a long prompt: in the scan pool, off the event loop and off its default pool
            found: Any = await (self.scan_pool or shared_scan_pool()).run(detector, text)
        else:
            found = detector(text)
        return list(await found if inspect.isawaitable(found) else found)

    def _prompt_text(self, raw: bytes) -> Any:
        """The prompt of a raw body: text, None (no prompt: not JSON, or no text in it), or
        :data:`_TOO_DEEP` (nested too deep to read)."""
        try:
            body = json.loads(raw) if raw else None
        except RecursionError:
            return _TOO_DEEP
        except ValueError:
            return None  # not JSON: no prompt to read
        try:
            return self.prompt_of(body)
        except (ValueError, RecursionError):
            return _TOO_DEEP

    def _busy(self, what: str) -> bool:
        """A scan the pool had no room for: said and counted, never with the prompt; the
        client's fail_mode decides (False: refuse the request)."""
        self.busy += 1
        closed = self.client.fail_mode == "closed"
        log.warning(
            "%s not scanned: the scan pool is full; request %s",
            what,
            "refused (fail_mode closed)" if closed else "passed on (fail_mode open)",
        )
        return not closed

    async def _detect(self, raw: bytes, subject: Subject) -> bool:
        """Scans the body's prompt and reports what is found; False when the request is to be
        refused. A body over :data:`SCAN_IN_THREAD` bytes is also parsed and read in the scan
        pool (a 1 MiB body takes a fifth of a second to parse and walk: not on the event loop,
        which serves every other request meanwhile); ``prompt_of`` must then be thread-safe."""
        if len(raw) > SCAN_IN_THREAD:
            try:
                text = await (self.scan_pool or shared_scan_pool()).run(self._prompt_text, raw)
            except ScanBusy:
                return self._busy(f"request body of {len(raw)} bytes")
        else:
            text = self._prompt_text(raw)
        if text is _TOO_DEEP:
            self.unscanned += 1
            log.warning("request body of %d bytes not scanned (nested too deep)", len(raw))
            return True
        if not text or self.detector is None:
            return True
        try:
            findings = await self._findings(text)
        except ScanBusy:
            return self._busy(f"prompt of {len(text)} characters")
        except Exception as exc:  # a detector's failure must not fail the request
            log.warning("detector failed: %s", type(exc).__name__)
            return True
        best = detected(findings, self.min_confidence)
        if self.reporter is None:
            return True
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
        return True


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
    "shared_scan_pool",
]
