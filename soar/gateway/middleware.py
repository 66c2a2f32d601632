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
extracts from the request's JSON body (default: `prompt`, or the `content` of every
`messages[]` item). Each finding, an object with `technique` and a `score` or
`confidence` (the built-in `soar.detect` Finding, or a dict such as LLM Guard adapters
produce), is reported through the DetectionReporter; the request then goes on: the block
that the playbook decides arrives through the stream. `builtin_detector()` is the local
`soar.detect` engine as such a detector (`detector=builtin_detector()`): no request leaves
the process to scan a prompt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
import json
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

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


# Prompts longer than this are scanned in a worker thread, not on the event loop.
SCAN_IN_THREAD = 16 * 1024


def builtin_detector(kind: str = "prompt") -> Detector:
    """The built-in ATLAS engine (:mod:`soar.detect`) as a middleware detector: the findings
    (technique, rule, score, span) of its ``kind`` rule set for each prompt. Offline. A prompt
    longer than the engine reads at once (:data:`soar.detect.engine.MAX_CHARS`) is scanned in
    overlapping windows, all of it: padding must not push an attack out of sight."""
    from soar.detect import Engine

    engine = Engine.default()
    if kind not in ("prompt", "output"):
        raise ValueError(f"kind must be 'prompt' or 'output', not {kind!r}")
    scan_kind: Any = kind

    async def detect(text: str) -> list[Any]:
        if len(text) > SCAN_IN_THREAD:
            return await asyncio.to_thread(scan_all, engine, text, scan_kind)
        return engine.scan(text, scan_kind)

    return detect


# Windows of a long prompt overlap by this many characters (an attack cut by a window's end is
# whole in the next window, unless it is longer than this).
WINDOW_OVERLAP = 4096


def scan_all(engine: Any, text: str, kind: Any = "prompt") -> list[Any]:
    """``engine.scan`` over all of ``text``, in windows of the engine's ``MAX_CHARS`` that
    overlap by :data:`WINDOW_OVERLAP`; each rule's first finding, its span in ``text``."""
    from soar.detect.engine import MAX_CHARS

    if len(text) <= MAX_CHARS:
        return list(engine.scan(text, kind))
    found: dict[str, Any] = {}
    step = MAX_CHARS - WINDOW_OVERLAP
    for start in range(0, len(text) - WINDOW_OVERLAP, step):
        for f in engine.scan(text[start : start + MAX_CHARS], kind):
            if f.rule not in found:
                span = (f.span[0] + start, f.span[1] + start)
                found[f.rule] = dataclasses.replace(f, span=span)
    return sorted(found.values(), key=lambda f: (f.span, f.technique, f.rule))


def _texts_of(content: Any) -> list[str]:
    """The text of a message's content: a string, or a list of parts (OpenAI's and
    Anthropic's ``{"type": "text", "text": ...}``, or strings)."""
    if isinstance(content, str):
        return [content]
    if isinstance(content, list):
        out: list[str] = []
        for part in content:
            if isinstance(part, str):
                out.append(part)
            elif isinstance(part, dict):
                for key in ("text", "input_text", "content"):
                    value = part.get(key)
                    if isinstance(value, str):
                        out.append(value)
                    elif key == "content" and isinstance(value, list):
                        out.extend(_texts_of(value))
        return out
    return []


def default_prompt_of(body: Any) -> str | None:
    """The text a request sends to the model: ``prompt`` (a string or a list of them), or the
    content of every one of ``messages`` (chat completions; content as a string or as a list
    of parts), or ``input`` (a string or a list of messages, OpenAI's Responses API). All of
    it: the body is bounded (:data:`MAX_SCAN_BODY`), and a cut would let padding hide an
    attack behind it."""
    if not isinstance(body, dict):
        return None
    parts: list[str] = []
    prompt = body.get("prompt")
    parts += _texts_of(prompt) if isinstance(prompt, str | list) else []
    for key in ("messages", "input"):
        value = body.get(key)
        if isinstance(value, str):
            parts.append(value)
        elif isinstance(value, list):
            for m in value:
                if isinstance(m, dict):
                    parts += _texts_of(m.get("content"))
                elif isinstance(m, str):
                    parts.append(m)
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
    ) -> None:
        self.app = app
        self.client = client
        self.extract = extract
        self.reporter = reporter
        self.detector = detector
        self.prompt_of = prompt_of
        self.source = source
        self.min_confidence = min_confidence
        self.refused = 0
        # bodies too large to scan (over MAX_SCAN_BODY), passed on unscanned
        self.unscanned = 0

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
            receive = await self._scan(scope, receive, subject)
        await self.app(scope, receive, send)

    async def _scan(self, scope: Scope, receive: Receive, subject: Subject) -> Receive:
        """Reads the body (bounded), scans its prompt, and gives the app a replay of it."""
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
            await self._detect(b"".join(chunks), subject)
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

    async def _detect(self, raw: bytes, subject: Subject) -> None:
        try:
            text = self.prompt_of(json.loads(raw)) if raw else None
        except ValueError:
            return
        if not text or self.detector is None:
            return
        try:
            found = self.detector(text)
            findings = list(await found if inspect.isawaitable(found) else found)
        except Exception as exc:  # a detector's failure must not fail the request
            log.warning("detector failed: %s", type(exc).__name__)
            return
        best = detected(findings, self.min_confidence)
        if self.reporter is None:
            return
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
    "Subject",
    "builtin_detector",
    "default_prompt_of",
]
