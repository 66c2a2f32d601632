"""A local fake of Jira's REST API v2, for tests that drive the real ``jira`` client library.

Usage::

    with FakeJira() as fake:
        jira = JIRA(server=fake.url, basic_auth=("soar-bot", "api-token"), max_retries=0)
        issue = jira.create_issue(project="SEC", summary="x", issuetype={"name": "Task"})
        assert issue.key == "SEC-1"

Only the standard library is used: a :class:`http.server.ThreadingHTTPServer` bound to
``127.0.0.1`` on a free port, served from a daemon thread. State (projects, issues, comments,
statuses) lives in memory behind one lock.

What the ``jira`` client (3.10) calls
-------------------------------------
* ``JIRA(...)`` -> ``GET /rest/api/2/serverInfo`` (``get_server_info=True`` is the default;
  ``versionNumbers`` and ``deploymentType`` are required - with ``"Cloud"`` the client switches
  ``search_issues`` to ``/search/jql``). ``validate=True`` adds ``GET /rest/auth/1/session``.
  No other request is made on construction (``check_update`` defaults to ``False``).
* ``create_issue(project="SEC", issuetype="Task")`` resolves names first:
  ``GET project/SEC`` and ``GET project/<id>?expand=issueTypes``; then ``POST issue`` and, with
  ``prefetch=True`` (default), ``GET issue/<key>``.
* ``search_issues`` -> ``GET field`` once (field-name cache), then ``GET search`` (or
  ``POST search`` with ``use_post=True``); ``maxResults=False`` pages by ``startAt``.
* ``transition_issue(issue, "Done")`` -> ``GET issue/<key>/transitions`` then
  ``POST issue/<key>/transitions``. ``add_comment`` -> ``POST issue/<key>/comment``;
  ``comments`` -> ``GET issue/<key>/comment``. ``issue.update()`` -> ``PUT issue/<key>`` +
  ``GET issue/<key>``.

Retries of the real client (``jira.resilientsession.ResilientSession``)
-----------------------------------------------------------------------
``JIRA(max_retries=3)`` (the default) allows up to ``max_retries + 1`` attempts per request, but
only these failures are retried:

* **HTTP 429** - always. Delay = ``2 * max(int(Retry-After), 1)`` seconds when the header is
  present (so ``Retry-After: 1`` waits 2 s, not 1 s), else ``10 * 2**attempt`` (20 s, 40 s,
  80 s); capped at ``session.max_retry_delay`` (60 s, not a constructor argument) and then
  multiplied by a random jitter in ``[0.5, 1.0]``. An HTTP-date ``Retry-After`` is not
  supported (``int()`` raises ``ValueError``).
* **HTTP 503** - only when it carries a ``Retry-After`` header (same delay formula). A 503
  without ``Retry-After`` is raised at once.
* ``requests.ConnectionError`` - delay ``10 * 2**attempt`` s (capped, jittered).

Everything else (400, 401, 403, 404, 500, 502, 504, ...) raises ``jira.exceptions.JIRAError``
immediately, with ``status_code`` set and the text built from ``errorMessages``/``errors``.
All of it is blocking ``time.sleep`` inside the calling thread, and a POST is retried as well
(``create_issue`` after a 429 can therefore not double-create, but one after a dropped
connection can). For a connector that runs inside a Temporal activity, which has its own retry
policy, construct the client with ``max_retries=0`` (one attempt, no hidden sleeps of up to a
minute) and map ``JIRAError.status_code`` 429/503 (+``Retry-After``) to a retryable activity
error; use a small ``max_retries`` only where nothing else retries.

Failure injection
-----------------
:meth:`FakeJira.fail_next` answers the next matching request(s) with a status (500, 401, 429,
503, ...) and a Jira-style ``{"errorMessages": [...], "errors": {}}`` body, optionally with a
``Retry-After`` header. Failed requests are recorded in :attr:`FakeJira.calls` with their status.
"""

from __future__ import annotations

import base64
import functools
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from tests.fakes.base import LocalServer

__all__ = ["FakeJira", "JiraCall", "JqlError"]

API_PREFIXES = ("/rest/api/2/", "/rest/api/latest/")

_STATUS_MESSAGES = {
    400: "Bad Request",
    401: "You are not authenticated. Authentication required to perform this operation.",
    403: "You do not have the permission to see the specified issue.",
    404: "Not Found",
    429: "Rate limit exceeded.",
    500: "Internal server error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}

_CATEGORY = {
    "new": {"id": 2, "key": "new", "colorName": "blue-gray", "name": "To Do"},
    "indeterminate": {
        "id": 4,
        "key": "indeterminate",
        "colorName": "yellow",
        "name": "In Progress",
    },
    "done": {"id": 3, "key": "done", "colorName": "green", "name": "Done"},
}
# id, name, category
_STATUSES = (
    ("10000", "To Do", "new"),
    ("3", "In Progress", "indeterminate"),
    ("10001", "Done", "done"),
)
# transition id, name, target status id
_TRANSITIONS = (("11", "To Do", "10000"), ("21", "In Progress", "3"), ("31", "Done", "10001"))
_PRIORITIES = (
    ("1", "Highest", "#d04437"),
    ("2", "High", "#f15C75"),
    ("3", "Medium", "#f79232"),
    ("4", "Low", "#707070"),
    ("5", "Lowest", "#999999"),
)
_ISSUE_TYPES = (
    ("10001", "Task", False, "A task that needs to be done."),
    ("10002", "Bug", False, "A problem which impairs or prevents the functions of the product."),
    ("10003", "Incident", False, "A security incident."),
    ("10004", "Sub-task", True, "The sub-task of the issue."),
)
_RESOLUTION_DONE = {"id": "10000", "name": "Done", "description": "Work has been completed."}

# (id, name, custom, schema, clauseNames)
_FIELDS: tuple[tuple[str, str, bool, dict[str, Any], list[str]], ...] = (
    ("summary", "Summary", False, {"type": "string", "system": "summary"}, ["summary"]),
    (
        "description",
        "Description",
        False,
        {"type": "string", "system": "description"},
        ["description"],
    ),
    (
        "labels",
        "Labels",
        False,
        {"type": "array", "items": "string", "system": "labels"},
        ["labels"],
    ),
    ("priority", "Priority", False, {"type": "priority", "system": "priority"}, ["priority"]),
    ("status", "Status", False, {"type": "status", "system": "status"}, ["status"]),
    (
        "issuetype",
        "Issue Type",
        False,
        {"type": "issuetype", "system": "issuetype"},
        ["issuetype", "type"],
    ),
    ("project", "Project", False, {"type": "project", "system": "project"}, ["project"]),
    ("issuekey", "Key", False, {}, ["id", "issue", "issuekey", "key"]),
    ("created", "Created", False, {"type": "datetime", "system": "created"}, ["created"]),
    ("updated", "Updated", False, {"type": "datetime", "system": "updated"}, ["updated"]),
    (
        "resolution",
        "Resolution",
        False,
        {"type": "resolution", "system": "resolution"},
        ["resolution"],
    ),
    (
        "resolutiondate",
        "Resolved",
        False,
        {"type": "datetime", "system": "resolutiondate"},
        ["resolutiondate", "resolved"],
    ),
    ("assignee", "Assignee", False, {"type": "user", "system": "assignee"}, ["assignee"]),
    ("reporter", "Reporter", False, {"type": "user", "system": "reporter"}, ["reporter"]),
    (
        "comment",
        "Comment",
        False,
        {"type": "comments-page", "system": "comment"},
        ["comment"],
    ),
    (
        "customfield_10100",
        "Severity",
        True,
        {
            "type": "option",
            "custom": "com.atlassian.jira.plugin.system.customfieldtypes:select",
            "customId": 10100,
        },
        ["cf[10100]", "Severity"],
    ),
    (
        "customfield_10101",
        "ATLAS Technique",
        True,
        {
            "type": "string",
            "custom": "com.atlassian.jira.plugin.system.customfieldtypes:textfield",
            "customId": 10101,
        },
        ["ATLAS Technique", "cf[10101]"],
    ),
    (
        "customfield_10102",
        "SOAR Case ID",
        True,
        {
            "type": "string",
            "custom": "com.atlassian.jira.plugin.system.customfieldtypes:textfield",
            "customId": 10102,
        },
        ["SOAR Case ID", "cf[10102]"],
    ),
)
_SETTABLE = {
    "summary",
    "description",
    "labels",
    "priority",
    "issuetype",
    "project",
    "assignee",
    "reporter",
} | {f[0] for f in _FIELDS if f[2]}


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000"


class JqlError(ValueError):
    """The fake's JQL parser rejected a query (answered as HTTP 400, like Jira)."""


class _HttpError(Exception):
    def __init__(
        self, status: int, messages: Iterable[str] = (), errors: dict[str, str] | None = None
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body: dict[str, Any] = {"errorMessages": list(messages), "errors": errors or {}}


@dataclass(frozen=True)
class JiraCall:
    """One request the fake received (also failed ones)."""

    method: str
    """HTTP method: GET, POST, PUT, DELETE."""
    path: str
    """URL path without the query string, e.g. ``/rest/api/2/issue/SEC-1/comment``."""
    query: dict[str, list[str]]
    json: Any
    """The decoded JSON body, ``None`` without one."""
    headers: dict[str, str] = field(repr=False)
    status: int = 0
    """The HTTP status the fake answered with."""
    response: Any = field(default=None, repr=False)

    @property
    def authorization(self) -> str | None:
        return next((v for k, v in self.headers.items() if k.lower() == "authorization"), None)

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        auth = self.authorization
        if not auth or not auth.lower().startswith("basic "):
            return None
        user, _, password = base64.b64decode(auth[6:].strip()).decode("utf-8").partition(":")
        return user, password

    @property
    def bearer_token(self) -> str | None:
        auth = self.authorization
        if auth and auth.lower().startswith("bearer "):
            return auth[7:].strip()
        return None

    @property
    def api_path(self) -> str:
        """The path below ``/rest/api/2/``, e.g. ``issue/SEC-1/comment``."""
        for prefix in API_PREFIXES:
            if self.path.startswith(prefix):
                return self.path[len(prefix) :]
        return self.path


@dataclass
class _Failure:
    status: int
    remaining: int
    retry_after: int | None
    path_contains: str | None
    method: str | None
    message: str | None


@dataclass
class _Comment:
    id: str
    body: str
    author: str
    created: str
    updated: str
    visibility: dict[str, Any] | None = None


@dataclass
class _Issue:
    id: str
    key: str
    project: str  # project key
    fields: dict[str, Any]
    comments: list[_Comment] = field(default_factory=list)


class FakeJira(LocalServer):
    """In-memory Jira Server/Data Center REST API v2. Thread-safe; use ``with`` or start/stop.

    Args:
        projects: ``(key, name)`` pairs created up front (default ``SEC`` "Security").
        basic_auth: if set (or ``token``), requests must authenticate with these credentials
            (or the bearer token), else HTTP 401. With neither, any or no credentials pass.
        token: a personal access token accepted as ``Authorization: Bearer <token>``.
        username: the user reported by ``myself`` for token auth (basic auth reports its user).
        version: reported in ``serverInfo.versionNumbers``.
        deployment_type: ``"Server"`` (default) or ``"Cloud"`` (the client then searches with
            ``/search/jql``, which the fake implements too).

    Endpoints (under ``/rest/api/2/`` or ``/rest/api/latest/``): ``serverInfo``, ``myself``,
    ``field``, ``priority[/id]``, ``issuetype[/id]``, ``status``, ``resolution``,
    ``project[/key]``, ``issue`` (POST), ``issue/<key>`` (GET, PUT, DELETE),
    ``issue/<key>/comment[/id]`` (GET, POST), ``issue/<key>/transitions`` (GET, POST),
    ``search`` and ``search/jql`` (GET, POST); plus ``GET /rest/auth/1/session``. Anything
    else is a Jira-style 404.

    Workflow: To Do (10000) / In Progress (3) / Done (10001) with global transitions
    "To Do" (11), "In Progress" (21), "Done" (31); the transition to the current status is
    not offered (so transitioning a Done issue to "Done" fails, as in most real workflows).
    "Done" sets ``resolution``; leaving it clears it.

    JQL subset: ``AND``/``OR``/``NOT``, parentheses, ``=``, ``!=``, ``~``, ``!~``, ``IN``,
    ``NOT IN``, ``IS [NOT] EMPTY``, ``ORDER BY f [ASC|DESC]`` over project, labels, status,
    priority, issuetype/type, key/issue/id, resolution, assignee, reporter, summary,
    description, comment, text and the custom fields (by name or ``cf[id]``). Values compare
    case-insensitively, except labels. As in Jira, ``!=``/``NOT IN`` never match an issue with
    no value for the field, an unknown ``project`` value is a 400, and without ``ORDER BY`` the
    result is ``key DESC``.
    """

    thread_name = "fake-jira"
    content_type = "application/json;charset=UTF-8"

    def __init__(
        self,
        *,
        projects: Iterable[tuple[str, str]] = (("SEC", "Security"),),
        basic_auth: tuple[str, str] | None = None,
        token: str | None = None,
        username: str = "soar-bot",
        version: tuple[int, int, int] = (9, 12, 0),
        deployment_type: str = "Server",
    ) -> None:
        super().__init__()
        self.basic_auth = basic_auth
        self.token = token
        self.username = username
        self.version = version
        self.deployment_type = deployment_type
        self._lock = threading.Condition(threading.RLock())
        self._calls: list[JiraCall] = []
        self._failures: list[_Failure] = []
        self._projects: dict[str, dict[str, Any]] = {}
        self._issues: dict[str, _Issue] = {}  # by key
        self._project_ids = itertools.count(10000)
        self._issue_ids = itertools.count(10000)
        self._comment_ids = itertools.count(10000)
        self._issue_numbers: dict[str, itertools.count[int]] = {}
        for key, name in projects:
            self.add_project(key, name)

    # ---------------------------------------------------------------------------- lifecycle

    @property
    def _base(self) -> str:
        return f"{self.url}/rest/api/2"

    # ---------------------------------------------------------------------------- setup

    def add_project(self, key: str, name: str) -> dict[str, Any]:
        with self._lock:
            project = {"id": str(next(self._project_ids)), "key": key, "name": name}
            self._projects[key] = project
            self._issue_numbers[key] = itertools.count(1)
            return dict(project)

    def fail_next(
        self,
        status: int,
        count: int = 1,
        retry_after: int | None = None,
        path_contains: str | None = None,
        method: str | None = None,
        message: str | None = None,
    ) -> None:
        """Answer the next ``count`` matching requests with HTTP ``status``.

        ``path_contains`` restricts the match to paths containing that substring (e.g.
        ``"/transitions"`` or ``"rest/api/2/issue"``) and ``method`` to one HTTP method; with
        neither, the very next request of any kind fails. ``retry_after`` adds a
        ``Retry-After`` header (seconds). The body is ``{"errorMessages": [message], "errors":
        {}}``; 401 also sets ``X-Seraph-LoginReason: AUTHENTICATED_FAILED`` like Jira.
        """
        if count < 1:
            raise ValueError("count must be >= 1")
        with self._lock:
            self._failures.append(
                _Failure(
                    status=status,
                    remaining=count,
                    retry_after=retry_after,
                    path_contains=path_contains,
                    method=method.upper() if method else None,
                    message=message,
                )
            )

    def reset(self) -> None:
        """Forget calls and pending failures (issues are kept; use a new fake for a blank one)."""
        with self._lock:
            self._calls.clear()
            self._failures.clear()

    # ---------------------------------------------------------------------------- inspection

    @property
    def calls(self) -> list[JiraCall]:
        """A snapshot of every request received so far, in arrival order."""
        with self._lock:
            return list(self._calls)

    def calls_to(
        self, method: str | None = None, path_contains: str | None = None
    ) -> list[JiraCall]:
        with self._lock:
            return [
                c
                for c in self._calls
                if (method is None or c.method == method.upper())
                and (path_contains is None or path_contains in c.path)
            ]

    def issue(self, key: str) -> dict[str, Any]:
        """The issue as ``GET /rest/api/2/issue/<key>`` would return it (KeyError if missing)."""
        with self._lock:
            return self._render_issue(self._issues[key], None)

    @property
    def issue_keys(self) -> list[str]:
        with self._lock:
            return list(self._issues)

    def comments(self, key: str) -> list[str]:
        """Comment bodies of an issue, oldest first."""
        with self._lock:
            return [c.body for c in self._issues[key].comments]

    def status_of(self, key: str) -> str:
        with self._lock:
            return self._status_name(self._issues[key].fields["status"])

    def wait_for(
        self, predicate: Callable[[list[JiraCall]], bool], timeout: float = 5.0
    ) -> list[JiraCall]:
        """Block until ``predicate(calls)`` holds; return that snapshot (TimeoutError if not)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                snapshot = list(self._calls)
                if predicate(snapshot):
                    return snapshot
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [f"{c.method} {c.api_path}->{c.status}" for c in snapshot]
                    raise TimeoutError(f"condition not met within {timeout}s; calls: {seen}")
                self._lock.wait(min(remaining, 0.05))

    # ---------------------------------------------------------------------------- dispatch

    def _dispatch(
        self, http_method: str, raw_path: str, headers: dict[str, str], body: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(raw_path)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        payload_in: Any = None
        extra: dict[str, str] = {}
        status: int
        payload: Any
        try:
            if body:
                try:
                    payload_in = json.loads(body.decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as exc:
                    payload_in = body.decode("utf-8", "replace")
                    raise _HttpError(400, [f"Unexpected character in request body: {exc}"]) from exc
            with self._lock:
                failure = self._take_failure(http_method, path)
                if failure is not None:
                    status = failure.status
                    message = failure.message or _STATUS_MESSAGES.get(status, "Error")
                    payload = {"errorMessages": [message], "errors": {}}
                    if failure.retry_after is not None:
                        extra["Retry-After"] = str(failure.retry_after)
                    if status == 401:
                        extra["X-Seraph-LoginReason"] = "AUTHENTICATED_FAILED"
                else:
                    user = self._authenticate(headers)
                    status, payload = self._route(http_method, path, query, payload_in, user)
        except _HttpError as err:
            status, payload = err.status, err.body
            if status == 401:
                extra["X-Seraph-LoginReason"] = "AUTHENTICATED_FAILED"
        except JqlError as err:
            status, payload = 400, {"errorMessages": [str(err)], "errors": {}}
        call = JiraCall(
            method=http_method,
            path=path,
            query=query,
            json=payload_in,
            headers=headers,
            status=status,
            response=payload,
        )
        with self._lock:
            self._calls.append(call)
            self._lock.notify_all()
        return status, payload, extra

    def _take_failure(self, http_method: str, path: str) -> _Failure | None:
        for failure in self._failures:
            if failure.method is not None and failure.method != http_method:
                continue
            if failure.path_contains is not None and failure.path_contains not in path:
                continue
            failure.remaining -= 1
            if failure.remaining <= 0:
                self._failures.remove(failure)
            return failure
        return None

    def _authenticate(self, headers: dict[str, str]) -> str:
        auth = next((v for k, v in headers.items() if k.lower() == "authorization"), "")
        basic_user: str | None = None
        if auth.lower().startswith("basic "):
            try:
                decoded = base64.b64decode(auth[6:].strip()).decode("utf-8")
            except (ValueError, UnicodeDecodeError) as exc:
                raise _HttpError(401, [_STATUS_MESSAGES[401]]) from exc
            user, _, password = decoded.partition(":")
            basic_user = user
            if self.basic_auth is not None and (user, password) == self.basic_auth:
                return user
        elif auth.lower().startswith("bearer ") and auth[7:].strip() == self.token:
            return self.username
        if self.basic_auth is None and self.token is None:
            return basic_user or self.username
        raise _HttpError(401, [_STATUS_MESSAGES[401]])

    def _route(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, user: str
    ) -> tuple[int, Any]:
        if path.rstrip("/") == "/rest/auth/1/session" and method == "GET":
            return 200, {
                "self": f"{self._base}/user?username={user}",
                "name": user,
                "loginInfo": {"loginCount": 1, "previousLoginTime": _now()},
            }
        api = next((path[len(p) :] for p in API_PREFIXES if path.startswith(p)), None)
        if api is None:
            raise _HttpError(404, [f"null for uri: {self.url}{path}"])
        segments = [unquote(s) for s in api.strip("/").split("/")]
        route = (method, *segments)

        match route:
            case ("GET", "serverInfo"):
                return 200, self._server_info()
            case ("GET", "myself"):
                return 200, self._user_json(user)
            case ("GET", "field"):
                return 200, [self._field_json(f) for f in _FIELDS]
            case ("GET", "priority"):
                return 200, [self._priority_json(p[0]) for p in _PRIORITIES]
            case ("GET", "priority", pid):
                return 200, self._priority_json(self._priority_id({"id": pid}))
            case ("GET", "issuetype"):
                return 200, [self._issuetype_json(t[0]) for t in _ISSUE_TYPES]
            case ("GET", "issuetype", tid):
                return 200, self._issuetype_json(self._issuetype_id({"id": tid}))
            case ("GET", "status"):
                return 200, [self._status_json(s[0]) for s in _STATUSES]
            case ("GET", "resolution"):
                return 200, [dict(_RESOLUTION_DONE, self=f"{self._base}/resolution/10000")]
            case ("GET", "project"):
                return 200, [self._project_json(p, query) for p in self._projects.values()]
            case ("GET", "project", pkey):
                return 200, self._project_json(self._find_project(pkey), query)
            case ("POST", "issue"):
                return 201, self._create_issue(body, user)
            case ("GET", "issue", key):
                fields = _fields_param(query.get("fields"))
                return 200, self._render_issue(self._find_issue(key), fields)
            case ("PUT", "issue", key):
                self._edit_issue(self._find_issue(key), body, user)
                return 204, None
            case ("DELETE", "issue", key):
                issue = self._find_issue(key)
                del self._issues[issue.key]
                return 204, None
            case ("GET", "issue", key, "comment"):
                comments = self._find_issue(key).comments
                return 200, self._comments_page(self._find_issue(key), comments)
            case ("POST", "issue", key, "comment"):
                issue = self._find_issue(key)
                if not isinstance(body, dict) or not str(body.get("body") or "").strip():
                    raise _HttpError(400, [], {"comment": "Comment body can not be empty!"})
                comment = self._add_comment(issue, str(body["body"]), user, body.get("visibility"))
                return 201, self._comment_json(issue, comment)
            case ("GET", "issue", key, "comment", cid):
                issue = self._find_issue(key)
                found = next((c for c in issue.comments if c.id == cid), None)
                if found is None:
                    raise _HttpError(404, [f"Can not find a comment for the id: {cid}."])
                return 200, self._comment_json(issue, found)
            case ("GET", "issue", key, "transitions"):
                issue = self._find_issue(key)
                return 200, {"expand": "transitions", "transitions": self._transitions(issue)}
            case ("POST", "issue", key, "transitions"):
                self._do_transition(self._find_issue(key), body, user)
                return 204, None
            case ("GET", "search") | ("POST", "search"):
                params = _search_params(query, body if method == "POST" else None)
                return 200, self._search(params)
            case ("GET", "search", "jql") | ("POST", "search", "jql"):
                params = _search_params(query, body if method == "POST" else None)
                return 200, self._search_jql(params)
            case _:
                raise _HttpError(404, [f"null for uri: {self.url}{path}"])

    # ---------------------------------------------------------------------------- JSON shapes

    def _server_info(self) -> dict[str, Any]:
        major, minor, patch = self.version
        return {
            "baseUrl": self.url,
            "version": f"{major}.{minor}.{patch}",
            "versionNumbers": [major, minor, patch],
            "deploymentType": self.deployment_type,
            "buildNumber": major * 100000 + minor * 1000 + patch,
            "buildDate": "2024-01-01T00:00:00.000+0000",
            "serverTime": _now(),
            "scmInfo": "fake",
            "serverTitle": "Fake Jira (atlas-soar tests)",
        }

    def _user_json(self, name: str) -> dict[str, Any]:
        return {
            "self": f"{self._base}/user?username={name}",
            "key": name,
            "name": name,
            "emailAddress": f"{name}@example.com",
            "displayName": name.replace("-", " ").replace(".", " ").title(),
            "active": True,
            "timeZone": "UTC",
            "locale": "en_US",
        }

    def _field_json(self, f: tuple[str, str, bool, dict[str, Any], list[str]]) -> dict[str, Any]:
        fid, name, custom, schema, clause_names = f
        out: dict[str, Any] = {
            "id": fid,
            "name": name,
            "custom": custom,
            "orderable": fid not in {"status", "created", "updated", "issuekey"},
            "navigable": True,
            "searchable": True,
            "clauseNames": list(clause_names),
        }
        if schema:
            out["schema"] = dict(schema)
        return out

    def _priority_json(self, pid: str) -> dict[str, Any]:
        _, name, color = next(p for p in _PRIORITIES if p[0] == pid)
        return {
            "self": f"{self._base}/priority/{pid}",
            "iconUrl": f"{self.url}/images/icons/priorities/{name.lower()}.svg",
            "name": name,
            "id": pid,
            "statusColor": color,
            "description": f"{name} priority",
        }

    def _issuetype_json(self, tid: str) -> dict[str, Any]:
        _, name, subtask, description = next(t for t in _ISSUE_TYPES if t[0] == tid)
        return {
            "self": f"{self._base}/issuetype/{tid}",
            "id": tid,
            "description": description,
            "iconUrl": f"{self.url}/images/icons/issuetypes/{name.lower()}.svg",
            "name": name,
            "subtask": subtask,
        }

    def _status_json(self, sid: str) -> dict[str, Any]:
        _, name, category = next(s for s in _STATUSES if s[0] == sid)
        return {
            "self": f"{self._base}/status/{sid}",
            "description": "",
            "iconUrl": f"{self.url}/images/icons/statuses/generic.png",
            "name": name,
            "id": sid,
            "statusCategory": dict(
                _CATEGORY[category], self=f"{self._base}/statuscategory/{_CATEGORY[category]['id']}"
            ),
        }

    def _status_name(self, sid: str) -> str:
        return next(s[1] for s in _STATUSES if s[0] == sid)

    def _project_json(self, project: dict[str, Any], query: dict[str, list[str]]) -> dict[str, Any]:
        out: dict[str, Any] = {
            "expand": "description,lead,issueTypes,url,projectKeys,permissions,insight",
            "self": f"{self._base}/project/{project['id']}",
            "id": project["id"],
            "key": project["key"],
            "name": project["name"],
            "projectTypeKey": "software",
            "archived": False,
            "description": "",
            "lead": self._user_json(self.username),
            "issueTypes": [self._issuetype_json(t[0]) for t in _ISSUE_TYPES],
            "projectKeys": [project["key"]],
        }
        return out

    def _comment_json(self, issue: _Issue, c: _Comment) -> dict[str, Any]:
        out: dict[str, Any] = {
            "self": f"{self._base}/issue/{issue.id}/comment/{c.id}",
            "id": c.id,
            "author": self._user_json(c.author),
            "body": c.body,
            "updateAuthor": self._user_json(c.author),
            "created": c.created,
            "updated": c.updated,
        }
        if c.visibility:
            out["visibility"] = c.visibility
        return out

    def _comments_page(self, issue: _Issue, comments: list[_Comment]) -> dict[str, Any]:
        return {
            "startAt": 0,
            "maxResults": len(comments),
            "total": len(comments),
            "comments": [self._comment_json(issue, c) for c in comments],
        }

    def _render_issue(self, issue: _Issue, fields: set[str] | None) -> dict[str, Any]:
        f = issue.fields
        rendered: dict[str, Any] = {
            "summary": f["summary"],
            "description": f.get("description"),
            "labels": list(f.get("labels", [])),
            "priority": self._priority_json(f["priority"]),
            "status": self._status_json(f["status"]),
            "issuetype": self._issuetype_json(f["issuetype"]),
            "project": {
                k: v
                for k, v in self._project_json(self._projects[issue.project], {}).items()
                if k in {"self", "id", "key", "name", "projectTypeKey"}
            },
            "created": f["created"],
            "updated": f["updated"],
            "resolution": dict(f["resolution"]) if f.get("resolution") else None,
            "resolutiondate": f.get("resolutiondate"),
            "assignee": self._user_json(f["assignee"]) if f.get("assignee") else None,
            "reporter": self._user_json(f["reporter"]),
            "comment": self._comments_page(issue, issue.comments),
        }
        for fid, *_ in _FIELDS:
            if fid.startswith("customfield_"):
                rendered[fid] = f.get(fid)
        if fields is not None:
            wanted = {_field_id(name) for name in fields}
            rendered = {k: v for k, v in rendered.items() if k in wanted}
        return {
            "expand": _ISSUE_EXPAND,
            "id": issue.id,
            "self": f"{self._base}/issue/{issue.id}",
            "key": issue.key,
            "fields": rendered,
        }

    # ---------------------------------------------------------------------------- lookups

    def _find_project(self, ref: str | int) -> dict[str, Any]:
        ref = str(ref)
        for project in self._projects.values():
            if ref.upper() == project["key"].upper() or ref == project["id"]:
                return project
        raise _HttpError(404, [f"No project could be found with key '{ref}'."])

    def _find_issue(self, ref: str) -> _Issue:
        issue = self._issues.get(ref.upper())
        if issue is None:
            issue = next((i for i in self._issues.values() if i.id == ref), None)
        if issue is None:
            raise _HttpError(404, ["Issue Does Not Exist"])
        return issue

    def _priority_id(self, ref: Any) -> str:
        if isinstance(ref, dict):
            for p in _PRIORITIES:
                if (
                    str(ref.get("id", "")) == p[0]
                    or str(ref.get("name", "")).lower() == p[1].lower()
                ):
                    return p[0]
        raise _HttpError(400, [], {"priority": f"Priority name '{_ref_text(ref)}' is not valid"})

    def _issuetype_id(self, ref: Any) -> str:
        if isinstance(ref, dict):
            for t in _ISSUE_TYPES:
                if (
                    str(ref.get("id", "")) == t[0]
                    or str(ref.get("name", "")).lower() == t[1].lower()
                ):
                    return t[0]
        raise _HttpError(400, [], {"issuetype": "valid issue type is required"})

    # ---------------------------------------------------------------------------- mutations

    def _validate_fields(self, fields: dict[str, Any], creating: bool) -> dict[str, str]:
        errors: dict[str, str] = {}
        for name in fields:
            if name not in _SETTABLE:
                errors[name] = (
                    f"Field '{name}' cannot be set. "
                    "It is not on the appropriate screen, or unknown."
                )
        if creating or "summary" in fields:
            summary = fields.get("summary")
            if not isinstance(summary, str) or not summary.strip():
                errors["summary"] = "You must specify a summary of the issue."
            elif "\n" in summary or len(summary) > 255:
                errors["summary"] = "Summary must be less than 255 characters and one line."
        if "labels" in fields:
            labels = fields["labels"]
            if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
                errors["labels"] = "data was not an array"
            else:
                bad = next((x for x in labels if not x or " " in x), None)
                if bad is not None:
                    errors["labels"] = _label_error(bad)
        return errors

    def _create_issue(self, body: Any, user: str) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("fields"), dict):
            raise _HttpError(400, ["Can not deserialize instance of fields out of request body"])
        fields: dict[str, Any] = body["fields"]
        errors = self._validate_fields(fields, creating=True)
        project: dict[str, Any] | None = None
        ref = fields.get("project")
        if not isinstance(ref, dict) or not (ref.get("id") or ref.get("key")):
            errors["project"] = "project is required"
        else:
            try:
                project = self._find_project(str(ref.get("id") or ref.get("key")))
            except _HttpError:
                errors["project"] = "valid project is required"
        try:
            issuetype = self._issuetype_id(fields.get("issuetype"))
        except _HttpError as err:
            errors.update(err.body["errors"])
        priority = "3"
        if "priority" in fields:
            try:
                priority = self._priority_id(fields["priority"])
            except _HttpError as err:
                errors.update(err.body["errors"])
        if errors or project is None:
            raise _HttpError(400, [], errors)
        now = _now()
        number = next(self._issue_numbers[project["key"]])
        issue = _Issue(
            id=str(next(self._issue_ids)),
            key=f"{project['key']}-{number}",
            project=project["key"],
            fields={
                "summary": fields["summary"],
                "description": fields.get("description"),
                "labels": list(fields.get("labels") or []),
                "priority": priority,
                "issuetype": issuetype,
                "status": _STATUSES[0][0],
                "created": now,
                "updated": now,
                "resolution": None,
                "resolutiondate": None,
                "reporter": user,
                "assignee": _user_ref(fields.get("assignee")),
            },
        )
        for name, value in fields.items():
            if name.startswith("customfield_"):
                issue.fields[name] = value
        self._issues[issue.key] = issue
        return {"id": issue.id, "key": issue.key, "self": f"{self._base}/issue/{issue.id}"}

    def _apply_fields(self, issue: _Issue, fields: dict[str, Any]) -> None:
        for name, value in fields.items():
            if name == "priority":
                issue.fields["priority"] = self._priority_id(value)
            elif name == "issuetype":
                issue.fields["issuetype"] = self._issuetype_id(value)
            elif name in {"assignee", "reporter"}:
                issue.fields[name] = _user_ref(value)
            elif name == "labels":
                issue.fields["labels"] = list(value)
            elif name != "project":
                issue.fields[name] = value

    def _apply_update(self, issue: _Issue, update: dict[str, Any], user: str) -> None:
        for name, ops in update.items():
            if not isinstance(ops, list) or not all(isinstance(op, dict) for op in ops):
                raise _HttpError(400, [], {name: "Operation value must be a list of operations"})
            for op in ops:
                for verb, value in op.items():
                    if name == "comment" and verb == "add":
                        self._add_comment(issue, str(value.get("body", "")), user, None)
                    elif name == "labels" and verb == "add":
                        if " " in str(value):
                            raise _HttpError(400, [], {"labels": _label_error(str(value))})
                        if value not in issue.fields["labels"]:
                            issue.fields["labels"].append(value)
                    elif name == "labels" and verb == "remove":
                        if value in issue.fields["labels"]:
                            issue.fields["labels"].remove(value)
                    elif verb == "set":
                        self._apply_fields(issue, {name: value})
                    else:
                        raise _HttpError(
                            400, [], {name: f"Field '{name}' does not support operation '{verb}'"}
                        )

    def _edit_issue(self, issue: _Issue, body: Any, user: str) -> None:
        if not isinstance(body, dict):
            raise _HttpError(400, ["No content to map to Object due to end of input"])
        fields = body.get("fields") or {}
        update = body.get("update") or {}
        errors = self._validate_fields(fields, creating=False)
        if errors:
            raise _HttpError(400, [], errors)
        self._apply_fields(issue, fields)
        self._apply_update(issue, update, user)
        issue.fields["updated"] = _now()

    def _add_comment(
        self, issue: _Issue, body: str, user: str, visibility: dict[str, Any] | None
    ) -> _Comment:
        now = _now()
        comment = _Comment(
            id=str(next(self._comment_ids)),
            body=body,
            author=user,
            created=now,
            updated=now,
            visibility=visibility,
        )
        issue.comments.append(comment)
        issue.fields["updated"] = now
        return comment

    def _transitions(self, issue: _Issue) -> list[dict[str, Any]]:
        # Like a simple Jira workflow with global transitions: every status is reachable,
        # except the one the issue is already in.
        return [
            {
                "id": tid,
                "name": name,
                "to": self._status_json(target),
                "hasScreen": False,
                "isGlobal": True,
                "isInitial": False,
                "isAvailable": True,
                "isConditional": False,
            }
            for tid, name, target in _TRANSITIONS
            if target != issue.fields["status"]
        ]

    def _do_transition(self, issue: _Issue, body: Any, user: str) -> None:
        transition = body.get("transition") if isinstance(body, dict) else None
        tid = str(transition.get("id", "")) if isinstance(transition, dict) else ""
        name = str(transition.get("name", "")) if isinstance(transition, dict) else ""
        available = self._transitions(issue)
        chosen = next(
            (
                t
                for t in available
                if t["id"] == tid or (name and t["name"].lower() == name.lower())
            ),
            None,
        )
        if chosen is None:
            raise _HttpError(400, [f"Transition id '{tid or name}' is not valid for this issue."])
        assert isinstance(body, dict)
        fields = body.get("fields") or {}
        errors = self._validate_fields(fields, creating=False)
        if errors:
            raise _HttpError(400, [], errors)
        target = chosen["to"]["id"]
        issue.fields["status"] = target
        if target == _STATUSES[-1][0]:
            issue.fields["resolution"] = dict(
                _RESOLUTION_DONE, self=f"{self._base}/resolution/10000"
            )
            issue.fields["resolutiondate"] = _now()
        else:
            issue.fields["resolution"] = None
            issue.fields["resolutiondate"] = None
        self._apply_fields(issue, fields)
        self._apply_update(issue, body.get("update") or {}, user)
        issue.fields["updated"] = _now()

    # ---------------------------------------------------------------------------- search

    def _select(self, jql: str) -> list[_Issue]:
        query = _parse_jql(jql)
        for key in query.project_refs:
            self._find_project_for_jql(key)
        matches = [i for i in self._issues.values() if query.where is None or query.where(self, i)]
        for field_name, descending in reversed(query.order_by or [("key", True)]):
            matches.sort(key=functools.partial(self._sort_key, name=field_name), reverse=descending)
        return matches

    def _find_project_for_jql(self, ref: str) -> None:
        try:
            self._find_project(ref)
        except _HttpError:
            if not any(ref.lower() == p["name"].lower() for p in self._projects.values()):
                raise JqlError(
                    f"The value '{ref}' does not exist for the field 'project'."
                ) from None

    def _sort_key(self, issue: _Issue, name: str) -> Any:
        if name in {"key", "issuekey", "id", "issue"}:
            return (issue.project, int(issue.key.rsplit("-", 1)[1]))
        if name == "priority":
            return -int(issue.fields["priority"])
        if name == "status":
            return self._status_name(issue.fields["status"])
        if name in {"created", "updated", "summary"}:
            return issue.fields[name], int(issue.id)
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")

    def _search(self, params: dict[str, Any]) -> dict[str, Any]:
        matches = self._select(params["jql"])
        start, limit = params["startAt"], params["maxResults"]
        page = matches[start : start + limit]
        return {
            "expand": "names,schema",
            "startAt": start,
            "maxResults": limit,
            "total": len(matches),
            "issues": [self._render_issue(i, params["fields"]) for i in page],
        }

    def _search_jql(self, params: dict[str, Any]) -> dict[str, Any]:
        matches = self._select(params["jql"])
        token = params.get("nextPageToken")
        start = int(token) if token and str(token).isdigit() else 0
        limit = params["maxResults"]
        page = matches[start : start + limit]
        out: dict[str, Any] = {
            "issues": [self._render_issue(i, params["fields"]) for i in page],
            "isLast": start + limit >= len(matches),
        }
        if not out["isLast"]:
            out["nextPageToken"] = str(start + limit)
        return out

    # JQL field accessors used by the parser's predicates.
    def _values(self, issue: _Issue, name: str) -> list[str]:
        """All comparable string values of a field (empty list = EMPTY)."""
        f = issue.fields
        match name:
            case "project":
                p = self._projects[issue.project]
                return [p["key"], p["name"], p["id"]]
            case "labels":
                return list(f.get("labels", []))
            case "status":
                return [f["status"], self._status_name(f["status"])]
            case "priority":
                return [f["priority"], next(p[1] for p in _PRIORITIES if p[0] == f["priority"])]
            case "issuetype" | "type":
                return [f["issuetype"], next(t[1] for t in _ISSUE_TYPES if t[0] == f["issuetype"])]
            case "key" | "issue" | "issuekey" | "id":
                return [issue.key, issue.id]
            case "resolution":
                return [f["resolution"]["name"]] if f.get("resolution") else []
            case "assignee" | "reporter":
                return [f[name]] if f.get(name) else []
            case "summary" | "description":
                return [f[name]] if f.get(name) else []
            case "comment":
                return [c.body for c in issue.comments]
            case "text":
                texts = [f.get("summary") or "", f.get("description") or ""]
                return [t for t in texts if t] + [c.body for c in issue.comments]
        custom = _custom_field_for_clause(name)
        if custom is not None:
            value = f.get(custom)
            if value is None:
                return []
            if isinstance(value, dict):
                return [str(value.get("value") or value.get("name") or value.get("id"))]
            if isinstance(value, list):
                return [str(v.get("value") if isinstance(v, dict) else v) for v in value]
            return [str(value)]
        raise JqlError(f"Field '{name}' does not exist or you do not have permission to view it.")


# ------------------------------------------------------------------------------------ helpers


_ISSUE_EXPAND = "renderedFields,names,schema,operations,editmeta,changelog,versionedRepresentations"


def _label_error(label: str) -> str:
    return f"The label '{label}' contains spaces which is invalid."


def _ref_text(ref: Any) -> str:
    if isinstance(ref, dict):
        return str(ref.get("name") or ref.get("id") or "")
    return str(ref)


def _user_ref(ref: Any) -> str | None:
    if isinstance(ref, dict):
        value = ref.get("name") or ref.get("accountId") or ref.get("key")
        return str(value) if value else None
    return str(ref) if ref else None


def _field_id(name: str) -> str:
    lowered = name.lower()
    for fid, fname, _custom, _schema, clause_names in _FIELDS:
        if lowered in {fid.lower(), fname.lower()} | {c.lower() for c in clause_names}:
            return fid
    return name


def _custom_field_for_clause(name: str) -> str | None:
    fid = _field_id(name)
    return fid if fid.startswith("customfield_") else None


def _fields_param(raw: Any) -> set[str] | None:
    """``fields`` from a query (list of comma-joined strings) or a JSON body (list/str)."""
    if raw is None:
        return None
    items: list[str] = []
    for chunk in [raw] if isinstance(raw, str) else raw:
        items.extend(x.strip() for x in str(chunk).split(",") if x.strip())
    if not items or any(x in {"*all", "*navigable"} for x in items):
        return None
    return {x for x in items if not x.startswith("-")}


def _search_params(query: dict[str, list[str]], body: Any) -> dict[str, Any]:
    source: dict[str, Any]
    if isinstance(body, dict):
        source = dict(body)
    else:
        source = {k: (v[0] if len(v) == 1 and k != "fields" else v) for k, v in query.items()}
    jql = source.get("jql") or ""
    try:
        start = int(source.get("startAt") or 0)
        raw_limit = source.get("maxResults")
        limit = 50 if raw_limit is None else int(raw_limit)
    except (TypeError, ValueError) as exc:
        raise _HttpError(400, ["startAt and maxResults must be integers"]) from exc
    return {
        "jql": str(jql),
        "startAt": max(start, 0),
        "maxResults": max(0, min(limit, 1000)),
        "fields": _fields_param(source.get("fields")),
        "nextPageToken": source.get("nextPageToken"),
    }


# ------------------------------------------------------------------------------------ JQL

_TOKEN_RE = re.compile(
    r"""\s*(?:
        (?P<string>"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*')
      | (?P<op>!=|!~|>=|<=|=|~|>|<)
      | (?P<punct>[(),])
      | (?P<word>[^\s"'(),=!~<>]+)
    )""",
    re.VERBOSE,
)

_Predicate = Callable[[FakeJira, _Issue], bool]


@dataclass
class _Query:
    where: _Predicate | None
    order_by: list[tuple[str, bool]]
    project_refs: list[str]


@dataclass
class _Tok:
    kind: str
    text: str


def _tokenize(jql: str) -> list[_Tok]:
    tokens: list[_Tok] = []
    pos = 0
    jql = jql.strip()
    while pos < len(jql):
        m = _TOKEN_RE.match(jql, pos)
        if m is None or m.end() == pos:
            raise JqlError(f"Error in the JQL Query: unexpected character at position {pos}.")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        text = m.group(kind)
        if kind == "string":
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        tokens.append(_Tok(kind, text))
    return tokens


class _Parser:
    """Recursive-descent JQL subset: AND/OR/NOT, parentheses, =, !=, ~, !~, IN, NOT IN,
    IS [NOT] EMPTY|NULL, ORDER BY. Comparisons are case-insensitive except for labels."""

    def __init__(self, jql: str) -> None:
        self.jql = jql
        self.tokens = _tokenize(jql)
        self.pos = 0
        self.project_refs: list[str] = []

    def peek(self, offset: int = 0) -> _Tok | None:
        i = self.pos + offset
        return self.tokens[i] if i < len(self.tokens) else None

    def peek_word(self, *words: str, offset: int = 0) -> bool:
        tok = self.peek(offset)
        return tok is not None and tok.kind == "word" and tok.text.upper() in words

    def peek_punct(self, text: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.kind == "punct" and tok.text == text

    def take(self) -> _Tok:
        tok = self.peek()
        if tok is None:
            raise JqlError(f"Error in the JQL Query: Expecting more input in '{self.jql}'.")
        self.pos += 1
        return tok

    def expect(self, kind: str, text: str | None = None) -> _Tok:
        tok = self.take()
        if tok.kind != kind or (text is not None and tok.text.upper() != text):
            raise JqlError(
                f"Error in the JQL Query: Expecting '{text or kind}' but got '{tok.text}'."
            )
        return tok

    def parse(self) -> _Query:
        where: _Predicate | None = None
        if self.peek() is not None and not self.peek_word("ORDER"):
            where = self.or_expr()
        order: list[tuple[str, bool]] = []
        if self.peek_word("ORDER"):
            self.take()
            self.expect("word", "BY")
            while True:
                name = self.take()
                if name.kind not in {"word", "string"}:
                    raise JqlError(f"Error in the JQL Query: bad ORDER BY field '{name.text}'.")
                descending = False
                if self.peek_word("ASC", "DESC"):
                    descending = self.take().text.upper() == "DESC"
                order.append((_field_id(name.text).lower(), descending))
                if self.peek_punct(","):
                    self.take()
                    continue
                break
        leftover = self.peek()
        if leftover is not None:
            raise JqlError(f"Error in the JQL Query: unexpected '{leftover.text}'.")
        return _Query(where=where, order_by=order, project_refs=self.project_refs)

    def or_expr(self) -> _Predicate:
        parts = [self.and_expr()]
        while self.peek_word("OR"):
            self.take()
            parts.append(self.and_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda fake, issue: any(p(fake, issue) for p in parts)

    def and_expr(self) -> _Predicate:
        parts = [self.not_expr()]
        while self.peek_word("AND"):
            self.take()
            parts.append(self.not_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda fake, issue: all(p(fake, issue) for p in parts)

    def not_expr(self) -> _Predicate:
        if self.peek_word("NOT") and not self.peek_word("IN", offset=1):
            self.take()
            inner = self.not_expr()
            return lambda fake, issue: not inner(fake, issue)
        if self.peek_punct("("):
            self.take()
            inner = self.or_expr()
            self.expect("punct", ")")
            return inner
        return self.clause()

    def value(self) -> str:
        tok = self.take()
        if tok.kind not in {"word", "string"}:
            raise JqlError(f"Error in the JQL Query: Expecting a value but got '{tok.text}'.")
        return tok.text

    def value_list(self) -> list[str]:
        self.expect("punct", "(")
        values = [self.value()]
        while True:
            tok = self.take()
            if tok.kind == "punct" and tok.text == ")":
                return values
            if tok.kind != "punct" or tok.text != ",":
                raise JqlError(
                    f"Error in the JQL Query: Expecting ',' or ')' but got '{tok.text}'."
                )
            values.append(self.value())

    def clause(self) -> _Predicate:
        name_tok = self.take()
        if name_tok.kind not in {"word", "string"}:
            raise JqlError(
                f"Error in the JQL Query: Expecting a field name but got '{name_tok.text}'."
            )
        name = name_tok.text.lower()
        if name not in _SEARCHABLE and _custom_field_for_clause(name_tok.text) is None:
            raise JqlError(
                f"Field '{name_tok.text}' does not exist or you do not have permission to view it."
            )
        field_name = name if name in _SEARCHABLE else name_tok.text
        case_sensitive = name == "labels"

        def norm(s: str) -> str:
            return s if case_sensitive else s.lower()

        op_tok = self.take()
        op = op_tok.text.upper()
        if op_tok.kind == "word" and op == "NOT" and self.peek_word("IN"):
            self.take()
            op = "NOT IN"
        elif op_tok.kind == "word" and op == "IS" and self.peek_word("NOT"):
            self.take()
            op = "IS NOT"
        elif op_tok.kind == "word" and op not in {"IN", "IS"}:
            raise JqlError(f"Error in the JQL Query: unknown operator '{op_tok.text}'.")

        if op in {"IS", "IS NOT"}:
            if not self.peek_word("EMPTY", "NULL"):
                raise JqlError("Error in the JQL Query: IS must be followed by EMPTY or NULL.")
            self.take()
            want_empty = op == "IS"
            return lambda fake, issue: (not fake._values(issue, field_name)) == want_empty

        values = self.value_list() if op in {"IN", "NOT IN"} else [self.value()]
        if name == "project":
            self.project_refs.extend(values)
        wanted = {norm(v) for v in values}

        if op in {"=", "IN"}:
            return lambda fake, issue: any(
                norm(v) in wanted for v in fake._values(issue, field_name)
            )
        if op in {"!=", "NOT IN"}:
            # Like Jira: an issue with no value for the field never matches != / NOT IN.
            def not_equal(fake: FakeJira, issue: _Issue) -> bool:
                have = fake._values(issue, field_name)
                return bool(have) and not any(norm(v) in wanted for v in have)

            return not_equal
        if op in {"~", "!~"}:
            terms = [t for t in re.split(r"\W+", values[0].lower()) if t]
            negate = op == "!~"

            def contains(fake: FakeJira, issue: _Issue) -> bool:
                haystack = " ".join(fake._values(issue, field_name)).lower()
                hit = bool(terms) and all(t in haystack for t in terms)
                return hit != negate

            return contains
        raise JqlError(f"Error in the JQL Query: operator '{op}' is not supported by the fake.")


_SEARCHABLE = {
    "project",
    "labels",
    "status",
    "priority",
    "issuetype",
    "type",
    "key",
    "issue",
    "issuekey",
    "id",
    "resolution",
    "assignee",
    "reporter",
    "summary",
    "description",
    "comment",
    "text",
}


def _parse_jql(jql: str) -> _Query:
    return _Parser(jql).parse()
