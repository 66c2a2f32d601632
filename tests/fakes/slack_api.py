"""A local fake of Slack's Web API, for tests that drive the real ``slack_sdk`` clients.

Usage::

    with FakeSlack() as slack:
        client = WebClient(token="xoxb-test", base_url=f"{slack.url}/api/")
        client.chat_postMessage(channel="C123", text="hi")
        assert slack.calls[-1].method == "chat.postMessage"

Only the standard library is used: a :class:`http.server.ThreadingHTTPServer` bound to
``127.0.0.1`` on a free port, served from a daemon thread.

Routes
------
``POST|GET /api/<method>``
    Slack Web API methods. Requests are parsed whatever the encoding ``slack_sdk`` picked:
    JSON bodies (``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``, ``views.open``),
    ``application/x-www-form-urlencoded`` bodies (``auth.test``, ``users.info``, anything sent
    with ``params=``/``data=``), ``multipart/form-data`` and query strings. Form values that
    hold JSON (``blocks``, ``attachments``, ``view``, ``metadata`` …) are decoded.

    Implemented: ``auth.test``, ``chat.postMessage``, ``chat.update``, ``chat.postEphemeral``,
    ``chat.delete``, ``views.open``/``views.push``/``views.update``, ``users.info``,
    ``conversations.replies``. Every other method answers ``{"ok": true}``.

``POST /response/<name>``
    A Slack ``response_url`` (see :meth:`FakeSlack.response_url`). JSON bodies (or a form
    ``payload=``) are recorded in :attr:`FakeSlack.responses` and answered ``{"ok": true}``.

Failure injection
-----------------
:meth:`FakeSlack.fail_next` makes the next *count* calls of a method fail: HTTP 429 with a
``Retry-After`` header and ``{"ok": false, "error": "ratelimited"}`` (Slack's rate-limit
answer), HTTP 500/503 with ``{"ok": false, "error": "internal_error"|"service_unavailable"}``,
or HTTP 200 with ``{"ok": false, "error": <error>}`` (an ordinary API error such as
``channel_not_found``). Failed calls are recorded in :attr:`FakeSlack.calls` too, with their
:attr:`SlackCall.status`, so retries can be counted.
"""

from __future__ import annotations

import contextlib
import email.parser
import email.policy
import itertools
import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.base import LocalServer

__all__ = ["FakeSlack", "SlackCall"]

# Form fields that Slack accepts as JSON-encoded strings.
_JSON_FIELDS = frozenset(
    {
        "attachments",
        "blocks",
        "metadata",
        "user_auth_blocks",
        "view",
        "unfurls",
        "payload",
        "channels",
    }
)

_DEFAULT_ERRORS = {
    200: "fatal_error",
    400: "invalid_request",
    401: "not_authed",
    403: "access_denied",
    404: "unknown_method",
    429: "ratelimited",
    500: "internal_error",
    502: "bad_gateway",
    503: "service_unavailable",
    504: "gateway_timeout",
}

RESPONSE_URL_METHOD = "response_url"
"""Pseudo method name that :meth:`FakeSlack.fail_next` accepts for ``response_url`` posts."""


@dataclass(frozen=True)
class SlackCall:
    """One request the fake received (also for failed and ``response_url`` requests)."""

    method: str
    """The Web API method, e.g. ``"chat.postMessage"`` (``"response_url"`` for response URLs)."""
    params: dict[str, Any]
    """Query string + body, merged; JSON-in-form values are decoded."""
    headers: dict[str, str]
    http_method: str
    content_type: str
    status: int
    """The HTTP status the fake answered with."""
    response: dict[str, Any] = field(repr=False)
    """The JSON body the fake answered with."""

    @property
    def authorization(self) -> str | None:
        for key, value in self.headers.items():
            if key.lower() == "authorization":
                return value
        return None

    @property
    def token(self) -> str | None:
        """The token, from ``Authorization: Bearer …`` or a ``token`` parameter."""
        auth = self.authorization
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip()
        token = self.params.get("token")
        return token if isinstance(token, str) else None

    @property
    def ok(self) -> bool:
        return bool(self.response.get("ok"))


@dataclass
class _Failure:
    method: str
    status: int
    retry_after: int | None
    error: str
    remaining: int


def _decode_json_fields(params: dict[str, Any]) -> dict[str, Any]:
    for key in _JSON_FIELDS & params.keys():
        value = params[key]
        if isinstance(value, str) and value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                params[key] = json.loads(value)
    return params


def _flatten(multi: dict[str, list[str]]) -> dict[str, Any]:
    return {k: v[0] if len(v) == 1 else v for k, v in multi.items()}


def _parse_params(query: str, headers: dict[str, str], body: bytes) -> tuple[dict[str, Any], str]:
    content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")
    params: dict[str, Any] = _flatten(parse_qs(query, keep_blank_values=True))
    mime = content_type.split(";", 1)[0].strip().lower()
    if body:
        if mime == "application/json" or (not mime and body[:1] in (b"{", b"[")):
            decoded = json.loads(body.decode("utf-8"))
            if isinstance(decoded, dict):
                params.update(decoded)
            else:
                params["_json"] = decoded
        elif mime == "multipart/form-data":
            raw = f"Content-Type: {content_type}\r\n\r\n".encode() + body
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(raw)
            for part in message.iter_parts():
                name = part.get_param("name", header="content-disposition")
                if not isinstance(name, str):
                    continue
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    payload = b""
                if part.get_filename():
                    params[name] = payload
                else:
                    params[name] = payload.decode("utf-8")
        else:
            params.update(_flatten(parse_qs(body.decode("utf-8"), keep_blank_values=True)))
    return _decode_json_fields(params), content_type


class FakeSlack(LocalServer):
    """In-memory Slack Web API. Thread-safe; start with :meth:`start` or ``with``.

    Args:
        token: if set, every Web API call must carry this token (``Authorization: Bearer`` or
            a ``token`` parameter); otherwise it gets ``{"ok": false, "error": "invalid_auth"}``
            (``"not_authed"`` when there is no token at all). ``None`` accepts any token.
        team_id, bot_user_id, bot_id: identities reported by ``auth.test`` and in messages.
    """

    thread_name = "fake-slack"

    def __init__(
        self,
        *,
        token: str | None = None,
        team_id: str = "T0FAKE0001",
        team: str = "Atlas SOAR Test",
        bot_user_id: str = "U0BOT00001",
        bot_id: str = "B0BOT00001",
        bot_name: str = "atlas-soar",
    ) -> None:
        super().__init__()
        self.token = token
        self.team_id = team_id
        self.team = team
        self.bot_user_id = bot_user_id
        self.bot_id = bot_id
        self.bot_name = bot_name
        self._cond = threading.Condition(threading.RLock())
        self._calls: list[SlackCall] = []
        self._responses: dict[str, list[dict[str, Any]]] = {}
        self._failures: list[_Failure] = []
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._users: dict[str, dict[str, Any]] = {}
        self._views: dict[str, dict[str, Any]] = {}
        self._ts_counter = itertools.count(1)
        self._view_counter = itertools.count(1)

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def api_url(self) -> str:
        """The ``base_url`` for ``WebClient``: ``f"{url}/api/"``."""
        return f"{self.url}/api/"

    # ---------------------------------------------------------------------------- inspection

    @property
    def calls(self) -> list[SlackCall]:
        """A snapshot of every request received so far, in arrival order."""
        with self._cond:
            return list(self._calls)

    def calls_to(self, method: str) -> list[SlackCall]:
        with self._cond:
            return [c for c in self._calls if c.method == method]

    @property
    def responses(self) -> dict[str, list[dict[str, Any]]]:
        """JSON bodies posted to each ``response_url(name)``, keyed by name."""
        with self._cond:
            return {k: list(v) for k, v in self._responses.items()}

    def messages(self, channel: str) -> list[dict[str, Any]]:
        """Messages currently in a channel (after updates/deletes), oldest first."""
        with self._cond:
            return [dict(m) for m in self._messages.get(channel, [])]

    def reset(self) -> None:
        """Forget calls, responses, pending failures and messages (users are kept)."""
        with self._cond:
            self._calls.clear()
            self._responses.clear()
            self._failures.clear()
            self._messages.clear()
            self._views.clear()

    def wait_for(
        self,
        predicate: Callable[[list[SlackCall]], bool],
        timeout: float = 5.0,
    ) -> list[SlackCall]:
        """Block until ``predicate(calls)`` is true; return that snapshot of the calls.

        Raises :class:`TimeoutError` (listing the calls seen) after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                snapshot = list(self._calls)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{c.method}->{c.status}" for c in snapshot]
                    raise TimeoutError(f"condition not met within {timeout}s; calls: {seen}")
                self._cond.wait(min(remaining, 0.05))

    def wait_for_call(self, method: str, count: int = 1, timeout: float = 5.0) -> SlackCall:
        """Wait until ``method`` was called at least ``count`` times; return the latest call."""
        calls = self.wait_for(
            lambda cs: sum(c.method == method for c in cs) >= count, timeout=timeout
        )
        return [c for c in calls if c.method == method][-1]

    def wait_for_response(
        self, name: str, count: int = 1, timeout: float = 5.0
    ) -> list[dict[str, Any]]:
        """Wait until ``response_url(name)`` received ``count`` posts; return their bodies."""
        self.wait_for(lambda _: len(self._responses.get(name, [])) >= count, timeout=timeout)
        return self.responses[name]

    # ---------------------------------------------------------------------------- setup

    def response_url(self, name: str) -> str:
        return f"{self.url}/response/{name}"

    def add_user(self, user_id: str, name: str, **extra: Any) -> dict[str, Any]:
        """Register a user for ``users.info``; ``extra`` is merged into the user object."""
        user = self._make_user(user_id, name)
        profile_extra = extra.pop("profile", {})
        if "email" in extra:
            profile_extra.setdefault("email", extra.pop("email"))
        user.update(extra)
        user["profile"].update(profile_extra)
        with self._cond:
            self._users[user_id] = user
        return user

    def fail_next(
        self,
        method: str,
        status: int = 429,
        retry_after: int | None = 1,
        count: int = 1,
        error: str | None = None,
    ) -> None:
        """Make the next ``count`` calls of ``method`` fail.

        ``method`` is a Web API method name, ``"*"`` for any method, or ``"response_url"``.
        ``status`` 429 answers ``{"ok": false, "error": "ratelimited"}`` with a ``Retry-After``
        header (``retry_after`` seconds, also sent for 503; ``None`` omits it). 5xx answers
        ``internal_error``/``service_unavailable``; 200 answers ``{"ok": false, "error":
        error or "fatal_error"}``. ``error`` overrides the error string in every case.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._cond:
            self._failures.append(
                _Failure(
                    method=method,
                    status=status,
                    retry_after=retry_after,
                    error=error or _DEFAULT_ERRORS.get(status, "request_failed"),
                    remaining=count,
                )
            )

    # ---------------------------------------------------------------------------- dispatch

    def _dispatch(
        self, http_method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        parts = urlsplit(raw_path)
        path = unquote(parts.path)
        try:
            params, content_type = _parse_params(parts.query, headers, body)
        except (ValueError, UnicodeDecodeError):
            params = {"_raw": body.decode("utf-8", "replace")}
            content_type = next((v for k, v in headers.items() if k.lower() == "content-type"), "")

        if path.startswith("/api/") and len(path) > len("/api/"):
            method = path[len("/api/") :].strip("/")
        elif path.startswith("/response/") and len(path) > len("/response/"):
            method = RESPONSE_URL_METHOD
        else:
            return self._record(
                http_method,
                path,
                params,
                headers,
                content_type,
                404,
                {"ok": False, "error": "unknown_method"},
            )

        with self._cond:
            failure = self._take_failure(method)
            if failure is not None:
                extra: dict[str, str] = {}
                if failure.retry_after is not None and failure.status in (429, 503):
                    extra["Retry-After"] = str(failure.retry_after)
                payload: dict[str, Any] = {"ok": False, "error": failure.error}
                if failure.status == 429:
                    payload["warning"] = "rate_limited"
                return self._record(
                    http_method,
                    method,
                    params,
                    headers,
                    content_type,
                    failure.status,
                    payload,
                    extra,
                )

            if method == RESPONSE_URL_METHOD:
                name = path[len("/response/") :].strip("/")
                posted = params.get("payload") if isinstance(params.get("payload"), dict) else None
                self._responses.setdefault(name, []).append(posted or dict(params))
                return self._record(
                    http_method, method, params, headers, content_type, 200, {"ok": True}
                )

            auth_error = self._check_auth(headers, params)
            if auth_error is not None:
                payload = {"ok": False, "error": auth_error}
            else:
                handler = _HANDLERS.get(method)
                payload = handler(self, params) if handler else {"ok": True}
            return self._record(http_method, method, params, headers, content_type, 200, payload)

    def _record(
        self,
        http_method: str,
        method: str,
        params: dict[str, Any],
        headers: dict[str, str],
        content_type: str,
        status: int,
        payload: dict[str, Any],
        extra_headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any], dict[str, str]]:
        call = SlackCall(
            method=method,
            params=params,
            headers=headers,
            http_method=http_method,
            content_type=content_type,
            status=status,
            response=payload,
        )
        with self._cond:
            self._calls.append(call)
            self._cond.notify_all()
        return status, payload, extra_headers or {}

    def _take_failure(self, method: str) -> _Failure | None:
        for failure in self._failures:
            wildcard = failure.method == "*" and method != RESPONSE_URL_METHOD
            if failure.method == method or wildcard:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    self._failures.remove(failure)
                return failure
        return None

    def _check_auth(self, headers: dict[str, str], params: dict[str, Any]) -> str | None:
        if self.token is None:
            return None
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        token = auth[7:].strip() if auth.lower().startswith("bearer ") else params.get("token")
        if not token:
            return "not_authed"
        return None if token == self.token else "invalid_auth"

    # ---------------------------------------------------------------------------- helpers

    def _next_ts(self) -> str:
        micros = next(self._ts_counter) * 100
        return f"{1_700_000_000 + micros // 1_000_000}.{micros % 1_000_000:06d}"

    def _make_user(self, user_id: str, name: str) -> dict[str, Any]:
        real_name = name.replace(".", " ").replace("_", " ").title()
        return {
            "id": user_id,
            "team_id": self.team_id,
            "name": name,
            "real_name": real_name,
            "deleted": False,
            "is_bot": False,
            "is_admin": False,
            "tz": "Europe/London",
            "tz_offset": 0,
            "profile": {
                "real_name": real_name,
                "display_name": name,
                "email": f"{name}@example.com",
                "team": self.team_id,
            },
        }

    def _find_message(self, channel: str, ts: str) -> dict[str, Any] | None:
        return next((m for m in self._messages.get(channel, []) if m["ts"] == ts), None)

    # ---------------------------------------------------------------------------- methods

    def _auth_test(self, params: dict[str, Any]) -> dict[str, Any]:
        return {
            "ok": True,
            "url": "https://atlas-soar-test.slack.com/",
            "team": self.team,
            "user": self.bot_name,
            "team_id": self.team_id,
            "user_id": self.bot_user_id,
            "bot_id": self.bot_id,
            "is_enterprise_install": False,
        }

    def _chat_post_message(self, params: dict[str, Any]) -> dict[str, Any]:
        channel = params.get("channel")
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            return {"ok": False, "error": "no_text"}
        ts = self._next_ts()
        message: dict[str, Any] = {
            "type": "message",
            "user": self.bot_user_id,
            "bot_id": self.bot_id,
            "text": params.get("text", ""),
            "ts": ts,
            "team": self.team_id,
        }
        for key in ("blocks", "attachments", "metadata"):
            if key in params:
                message[key] = params[key]
        thread_ts = params.get("thread_ts")
        if thread_ts:
            parent = self._find_message(str(channel), str(thread_ts))
            if parent is None:
                return {"ok": False, "error": "thread_not_found"}
            message["thread_ts"] = thread_ts
            parent.setdefault("thread_ts", thread_ts)
            parent["reply_count"] = int(parent.get("reply_count", 0)) + 1
        self._messages.setdefault(str(channel), []).append(message)
        return {"ok": True, "channel": channel, "ts": ts, "message": dict(message)}

    def _chat_update(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        if not channel:
            return {"ok": False, "error": "channel_not_found"}
        message = self._find_message(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        for key in ("text", "blocks", "attachments", "metadata"):
            if key in params:
                message[key] = params[key]
        message["edited"] = {"user": self.bot_user_id, "ts": self._next_ts()}
        return {
            "ok": True,
            "channel": channel,
            "ts": ts,
            "text": message.get("text", ""),
            "message": dict(message),
        }

    def _chat_delete(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        message = self._find_message(channel, ts)
        if message is None:
            return {"ok": False, "error": "message_not_found"}
        self._messages[channel].remove(message)
        return {"ok": True, "channel": channel, "ts": ts}

    def _chat_post_ephemeral(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("channel"):
            return {"ok": False, "error": "channel_not_found"}
        if not params.get("user"):
            return {"ok": False, "error": "user_not_in_channel"}
        if not (params.get("text") or params.get("blocks") or params.get("attachments")):
            return {"ok": False, "error": "no_text"}
        return {"ok": True, "message_ts": self._next_ts()}

    def _views_open(self, params: dict[str, Any]) -> dict[str, Any]:
        if not params.get("trigger_id"):
            return {"ok": False, "error": "invalid_arguments"}
        return self._store_view(params, view_id=None)

    def _views_update(self, params: dict[str, Any]) -> dict[str, Any]:
        view_id = params.get("view_id")
        if not view_id and params.get("external_id"):
            external_id = params["external_id"]
            view_id = next(
                (k for k, v in self._views.items() if v.get("external_id") == external_id), None
            )
        if not view_id or view_id not in self._views:
            return {"ok": False, "error": "not_found"}
        return self._store_view(params, view_id=str(view_id))

    def _store_view(self, params: dict[str, Any], view_id: str | None) -> dict[str, Any]:
        view = params.get("view")
        if not isinstance(view, dict) or "type" not in view:
            return {"ok": False, "error": "invalid_arguments"}
        view_id = view_id or f"V{next(self._view_counter):09d}"
        stored = {
            "id": view_id,
            "team_id": self.team_id,
            "type": view["type"],
            "title": view.get("title"),
            "submit": view.get("submit"),
            "close": view.get("close"),
            "blocks": view.get("blocks", []),
            "private_metadata": view.get("private_metadata", ""),
            "callback_id": view.get("callback_id", ""),
            "external_id": view.get("external_id", ""),
            "state": {"values": {}},
            "hash": f"{int(time.time())}.{view_id}",
            "clear_on_close": bool(view.get("clear_on_close", False)),
            "notify_on_close": bool(view.get("notify_on_close", False)),
            "root_view_id": view_id,
            "previous_view_id": None,
            "app_id": "A0FAKE0001",
            "bot_id": self.bot_id,
        }
        self._views[view_id] = stored
        return {"ok": True, "view": dict(stored)}

    def _users_info(self, params: dict[str, Any]) -> dict[str, Any]:
        user_id = params.get("user")
        if not user_id:
            return {"ok": False, "error": "user_not_found"}
        user = self._users.get(str(user_id)) or self._make_user(
            str(user_id), f"user.{str(user_id).lower()}"
        )
        return {"ok": True, "user": json.loads(json.dumps(user))}

    def _conversations_replies(self, params: dict[str, Any]) -> dict[str, Any]:
        channel, ts = str(params.get("channel", "")), str(params.get("ts", ""))
        if channel not in self._messages:
            return {"ok": False, "error": "channel_not_found"}
        if self._find_message(channel, ts) is None:
            return {"ok": False, "error": "thread_not_found"}
        thread = [
            dict(m) for m in self._messages[channel] if m["ts"] == ts or m.get("thread_ts") == ts
        ]
        return {"ok": True, "messages": thread, "has_more": False}


_HANDLERS: dict[str, Callable[[FakeSlack, dict[str, Any]], dict[str, Any]]] = {
    "auth.test": FakeSlack._auth_test,
    "chat.postMessage": FakeSlack._chat_post_message,
    "chat.update": FakeSlack._chat_update,
    "chat.delete": FakeSlack._chat_delete,
    "chat.postEphemeral": FakeSlack._chat_post_ephemeral,
    "views.open": FakeSlack._views_open,
    "views.push": FakeSlack._views_open,
    "views.update": FakeSlack._views_update,
    "users.info": FakeSlack._users_info,
    "conversations.replies": FakeSlack._conversations_replies,
}
