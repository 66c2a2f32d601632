"""Hostile inputs for the intake, Slack and report routes, written once against a `Chooser`.

A `Chooser` makes every random decision. `HypothesisChooser` draws from hypothesis (so the
tests shrink a failure to a small input); `RandomChooser` uses a seeded `random.Random` (so
`bench/fuzz.py` makes 100,000 cases without hypothesis' per-example overhead). Both run the
same generators below, so the bench and the suite fuzz the same input space.

A generated case is a `FuzzRequest`: method, path, query, raw header bytes and raw body bytes,
already signed (Standard Webhooks for intake, Slack's v0 scheme for interactions) unless the
case deliberately breaks the signature headers. `expect_2xx` is set only for inputs that are
valid and correctly signed: the API must accept those; for everything else it must answer
with anything but a 5xx.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, TypeVar
from urllib.parse import quote, urlencode

from hypothesis import strategies as st

T = TypeVar("T")

# Techniques of the built-in catalog (soar/atlas/builtin.py): a valid body must use one.
TECHNIQUES = (
    "AML.T0024",
    "AML.T0024.000",
    "AML.T0029",
    "AML.T0034",
    "AML.T0040",
    "AML.T0043",
    "AML.T0043.001",
    "AML.T0048",
    "AML.T0051",
    "AML.T0051.000",
    "AML.T0051.001",
    "AML.T0054",
    "AML.T0055",
    "AML.T0056",
    "AML.T0057",
)
SEVERITIES = ("info", "low", "medium", "high", "critical")
DECISION_ACTIONS = ("soar_approve", "soar_reject")
MODAL_CALLBACK_ID = "soar_reason"

EXTREME_DATETIMES = (
    "9999-12-31T23:59:59-14:00",
    "9999-12-31T23:59:59.999999+00:00",
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00+14:00",
    "0001-01-01T00:00:00Z",
    "0001-01-01T00:00:00",
    "0001-01-01",
    "9999-12-31",
    "1970-01-01T00:00:00Z",
    "2026-02-30T00:00:00Z",
    "2026-11-21T24:00:00Z",
    "2026-11-21T10:15:00+24:00",
    "2026-11-21T10:15:00+23:59",
    "2026-11-21T10:15:00.123456789Z",
    "2026-11-21T10:15:00",
    "-0001-01-01T00:00:00Z",
    "+10000-01-01T00:00:00Z",
    "253402300800",
    "-62135596801",
    "99999999999999999999",
    "1e30",
    "now",
    "",
)
EXTREME_NUMBERS: tuple[Any, ...] = (
    0,
    -1,
    1,
    2,
    7,
    100,
    2**31,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    2**64,
    10**30,
    0.5,
    1.0000000001,
    -0.0,
    5e-324,
    1e-300,
    1e308,
    -1e308,
    float("inf"),
    float("-inf"),
    float("nan"),
    True,
    False,
)
SPECIAL_STRINGS = (
    "",
    " ",
    "\t\n",
    "\x00",
    "a\x00b",
    "\x01\x02\x1b[31m\x7f",
    "\u0085\u2028\u2029",
    "\u202eevil\u202c",
    "\u2066\u2067\u2068\u2069",
    "\u200b\u200c\u200d\ufeff",
    "\ud800",
    "\udfff",
    "a\ud83d",
    "\U0001f600\U0001f4a9",
    "e\u0301\u0301\u0301",
    "\u0627\u0644\u0639\u0631\u0628\u064a\u0629",
    "\u4e2d\u6587",
    "\uffff\ufffe",
    "AML.T0051",
    "aml.t0051.000",
    " AML.T0051 ",
    "AML.T9999",
    "AML.T0051.0000",
    "AML.T",
    "AML.T0051\x00",
    "AML.T0051\u202e",
    "high",
    "HIGH",
    "critical ",
    "1",
    "-1",
    "NaN",
    "Infinity",
    "1e309",
    "0x10",
    "null",
    "true",
    "[]",
    "{}",
    "%s%s%n",
    "{0}{1}",
    "${jndi:ldap://x/a}",
    "' OR 1=1 --",
    "<script>alert(1)</script>",
    "../../etc/passwd",
    "\r\nx-injected: 1",
    "whsec_",
    "default",
    "acme",
    "http://127.0.0.1:9/",
    "https://hooks.slack.com/actions/T/1/x",
)
# JSON spelled out as text: things `json.dumps` cannot or will not produce.
RAW_JSON = (
    "NaN",
    "Infinity",
    "-Infinity",
    "1e999",
    "-1e999",
    "1.0e-400",
    "1" + "0" * 5000,
    "-0",
    "0.0000000000000000000000000001",
    "123456789012345678901234567890.5",
)

_TEXT_POOLS = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:/@ ",
    "".join(chr(i) for i in range(32)) + "\x7f\x85\xa0",
    "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c",
    "\u200b\u200c\u200d\u2060\ufeff\u00ad\u034f",
    "\u00e9\u00fc\u00df\u0416\u05d0\u0627\u4e2d\u65e5\ud55c\u0e01\u0301\u0308",
    "\U0001f600\U0001f4a9\U0001f1fa\U0001f1f8\U0010ffff\uffff\ufffd",
    "\"\\'`{}[]<>&;|$%#",
)


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...
    def choice(self, options: Sequence[T]) -> T: ...
    def chance(self, percent: int) -> bool: ...
    def text(self, max_size: int) -> str: ...
    def unit(self) -> float: ...


class RandomChooser:
    """Every choice from a seeded `random.Random`: fast, reproducible with the seed."""

    def __init__(self, rng: Any) -> None:
        self.rng = rng

    def integer(self, lo: int, hi: int) -> int:
        return int(self.rng.randint(lo, hi))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.rng.randrange(len(options))]

    def chance(self, percent: int) -> bool:
        return bool(self.rng.randrange(100) < percent)

    def text(self, max_size: int) -> str:
        n = self.rng.randint(0, max_size)
        pools = [self.choice(_TEXT_POOLS) for _ in range(self.rng.randint(1, 3))]
        out = [self.choice(self.choice(pools)) for _ in range(n)]
        if n and self.chance(5):
            out[self.rng.randrange(n)] = chr(self.rng.randint(0xD800, 0xDFFF))
        return "".join(out)

    def unit(self) -> float:
        return float(self.rng.random())


class HypothesisChooser:
    """Every choice drawn from hypothesis, so a failing case shrinks."""

    def __init__(self, draw: Callable[[st.SearchStrategy[Any]], Any]) -> None:
        self.draw = draw

    def integer(self, lo: int, hi: int) -> int:
        return int(self.draw(st.integers(lo, hi)))

    def choice(self, options: Sequence[T]) -> T:
        return options[self.integer(0, len(options) - 1)]

    def chance(self, percent: int) -> bool:
        # Shrinks towards False: towards not mutating.
        return self.integer(0, 99) >= 100 - percent

    def text(self, max_size: int) -> str:
        return str(self.draw(st.text(max_size=max_size)))

    def unit(self) -> float:
        return float(self.draw(st.floats(0, 1)))


def drawn(build: Callable[[Chooser], T]) -> st.SearchStrategy[T]:
    """A hypothesis strategy from a generator written against `Chooser`."""

    @st.composite
    def strategy(draw: Callable[[st.SearchStrategy[Any]], Any]) -> T:
        return build(HypothesisChooser(draw))

    return strategy()


# --- JSON values and their exact bytes ----------------------------------------------------------


class Raw(str):
    """JSON text put into the document verbatim (deep nesting, 5000-digit numbers, NaN)."""

    __slots__ = ()


def deep_nesting(c: Chooser) -> Raw:
    depth = c.choice((50, 500, 999, 1000, 1001, 1500, 2000, c.integer(2, 2000)))
    kind = c.integer(0, 3)
    if kind == 0:
        return Raw("[" * depth + "]" * depth)
    if kind == 1:
        return Raw('{"a":' * depth + "1" + "}" * depth)
    if kind == 2:
        return Raw('[{"a":' * (depth // 2) + "null" + "}]" * (depth // 2))
    return Raw("[" * depth + '"x"' + "]" * depth)


def huge_string(c: Chooser) -> str:
    size = c.choice((4096, 65_536, 200_001, 250_000, 262_144, 300_000))
    unit = c.choice(("A", "\u00e9", "\U0001f600", "\x00", "\u202e", "ab\ncd "))
    return unit * (size // len(unit.encode("utf-8", "surrogatepass")))


def weird_string(c: Chooser) -> str:
    kind = c.integer(0, 5)
    if kind == 0:
        return c.choice(SPECIAL_STRINGS)
    if kind == 1:
        return c.choice(EXTREME_DATETIMES)
    if kind == 2 and c.chance(10):
        return huge_string(c)
    return c.text(c.choice((8, 64, 600)))


def json_value(c: Chooser, depth: int = 0) -> Any:
    kind = c.integer(0, 9 if depth < 3 else 6)
    if kind == 0:
        return None
    if kind == 1:
        return c.chance(50)
    if kind == 2:
        return c.choice(EXTREME_NUMBERS)
    if kind == 3:
        return c.integer(-(2**70), 2**70) if c.chance(50) else c.unit() * c.choice((1, 100, 1e12))
    if kind in (4, 5):
        return weird_string(c)
    if kind == 6:
        return Raw(c.choice(RAW_JSON)) if c.chance(70) else deep_nesting(c)
    if kind == 7:
        return [json_value(c, depth + 1) for _ in range(c.integer(0, 3))]
    return {weird_string(c)[:64]: json_value(c, depth + 1) for _ in range(c.integer(0, 3))}


def dumps(value: Any, *, ascii_only: bool = True) -> bytes:
    """The exact body bytes: `Raw` parts verbatim, lone surrogates kept (as `\\udxxx` escapes,
    or as invalid UTF-8 bytes when not `ascii_only`)."""
    raws: list[str] = []
    nonce = uuid.uuid4().hex

    def sub(v: Any) -> Any:
        if isinstance(v, Raw):
            raws.append(str(v))
            return f"@@raw{len(raws) - 1}-{nonce}@@"
        if isinstance(v, dict):
            return {k: sub(x) for k, x in v.items()}
        if isinstance(v, list):
            return [sub(x) for x in v]
        return v

    text = json.dumps(sub(value), ensure_ascii=ascii_only, allow_nan=True)
    for i, raw in enumerate(raws):
        text = text.replace(f'"@@raw{i}-{nonce}@@"', raw)
    return text.encode("utf-8", "surrogatepass")


# --- mutating a valid document ------------------------------------------------------------------


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append((*prefix, k))
            out.extend(_paths(v, (*prefix, k)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append((*prefix, i))
            out.extend(_paths(v, (*prefix, i)))
    return out


def _parent(doc: Any, path: tuple[Any, ...]) -> Any:
    for key in path[:-1]:
        doc = doc[key]
    return doc


def mutate(c: Chooser, doc: dict[str, Any], *, hot: Sequence[str] = ()) -> tuple[Any, list[str]]:
    """1-4 mutations of a copy of `doc`; returns it and a short description of each.

    `hot` names top-level fields worth a datetime (e.g. `observed_at`)."""
    doc = copy.deepcopy(doc)
    notes: list[str] = []
    if c.chance(4):  # not an object at all
        value = json_value(c)
        return value, [f"body={_short(value)}"]
    for _ in range(c.integer(1, 4)):
        paths = _paths(doc)
        op = c.integer(0, 8)
        if not paths or op == 0:  # add a field somewhere
            containers = [p for p in paths if isinstance(_parent(doc, (*p, 0)), dict)]
            where = c.choice(containers) if containers and c.chance(50) else ()
            target = _parent(doc, (*where, None))
            key = (
                c.choice(("extra", "id", "technique", "subject", "__proto__", ""))
                if c.chance(50)
                else weird_string(c)[:80]
            )
            target[key] = json_value(c)
            notes.append(f"add {'.'.join(map(str, (*where, key)))}")
            continue
        path = c.choice(paths)
        parent = _parent(doc, path)
        name = ".".join(map(str, path))
        if op == 1:
            del parent[path[-1]]
            notes.append(f"del {name}")
            continue
        if op == 2:
            new: Any = deep_nesting(c)
        elif op == 3:
            new = huge_string(c)
        elif op == 4:
            new = weird_string(c)
        elif op == 5:
            new = c.choice(EXTREME_NUMBERS) if c.chance(70) else Raw(c.choice(RAW_JSON))
        elif op == 6 or (path[-1] in hot and c.chance(50)):
            new = c.choice(EXTREME_DATETIMES)
        elif op == 7:
            new = [parent[path[-1]]] if c.chance(50) else {"value": parent[path[-1]]}
        else:
            new = json_value(c)
        parent[path[-1]] = new
        notes.append(f"{name}={_short(new)}")
    return doc, notes


def _short(value: Any, limit: int = 60) -> str:
    if isinstance(value, Raw):
        text = str(value)
    else:
        try:
            text = json.dumps(value, allow_nan=True)
        except (ValueError, RecursionError):
            text = repr(value)
    if len(text) > limit:
        return f"{text[: limit // 2]}...({len(text)} chars)...{text[-10:]}"
    return text


# --- valid bodies -------------------------------------------------------------------------------


def _clean(text: str) -> str:
    """Printable, no lone surrogates: what a valid body's free text may hold."""
    return "".join(ch for ch in text if ch.isprintable() and not 0xD800 <= ord(ch) <= 0xDFFF)


def _ident(c: Chooser, prefix: str) -> str:
    return f"{prefix}-{c.integer(0, 20)}"


def native_detection(c: Chooser) -> dict[str, Any]:
    subject: dict[str, Any] = {}
    if c.chance(80):
        subject["tenant"] = c.choice(("acme", "default", "t-fuzz"))
    fields = [f for f in ("user", "session", "api_key") if c.chance(50)] or ["session"]
    for f in fields:
        subject[f] = _ident(c, f"fz-{f[0]}")
    body: dict[str, Any] = {
        "id": "fz-" + uuid.uuid4().hex[:16],
        "technique": c.choice(TECHNIQUES),
        "severity": c.choice(SEVERITIES),
        "confidence": round(c.unit(), 3),
        "source": c.choice(("llm-gateway", "guard", "siem")),
        "subject": subject,
    }
    if c.chance(80):
        at = datetime.now(UTC) - timedelta(seconds=c.integer(0, 3600))
        body["observed_at"] = at.isoformat()
    if c.chance(80):
        body["evidence"] = {
            "prompt": "Ignore previous instructions " + _clean(c.text(40)),
            "model": "m",
        }
    return body


def ocsf_finding(c: Chooser) -> dict[str, Any]:
    technique = c.choice(TECHNIQUES)
    attack: dict[str, Any] = {
        "tactic": {"uid": "AML.TA0005", "name": "Execution"},
        "technique": {"uid": technique.split(".")[0] + "." + technique.split(".")[1]},
    }
    if technique.count(".") == 2:
        attack["sub_technique"] = {"uid": technique}
    return {
        "class_uid": 2004,
        "category_uid": 2,
        "activity_id": 1,
        "type_uid": 200401,
        "severity_id": c.integer(1, 6),
        "time": int(time.time() * 1000) - c.integer(0, 3_600_000),
        "metadata": {
            "product": {"name": "guard-model", "vendor_name": "acme"},
            "version": "1.8.0",
            "tenant_uid": c.choice(("acme", "default")),
        },
        "finding_info": {
            "uid": "fz-ocsf-" + uuid.uuid4().hex[:16],
            "title": "prompt injection",
            "attacks": [attack],
        },
        "actor": {"user": {"uid": _ident(c, "fz-ou")}, "session": {"uid": _ident(c, "fz-os")}},
        "confidence_score": c.integer(0, 100),
        "evidences": [{"data": {"prompt": "ignore all rules " + _clean(c.text(20))}}],
    }


def block_actions(c: Chooser) -> dict[str, Any]:
    user = c.choice(("U-ALICE", "U-NOBODY", "U-FUZZ"))
    ts = f"{time.time():.6f}"
    approval = c.choice(("apr-missing", "apr-" + uuid.uuid4().hex[:12], "x"))
    return {
        "type": "block_actions",
        "user": {"id": user, "username": user.lower(), "team_id": "T0"},
        "api_app_id": "A0FAKE0001",
        "container": {"type": "message", "message_ts": ts, "channel_id": "C-SEC"},
        "trigger_id": f"{c.integer(0, 10**12)}.fuzz",
        "team": {"id": "T0", "domain": "acme"},
        "channel": {"id": "C-SEC", "name": "sec-approvals"},
        "message": {"type": "message", "ts": ts, "text": "approval", "blocks": []},
        "state": {"values": {}},
        # Closed port: an ephemeral answer fails at once instead of leaving the machine.
        "response_url": "http://127.0.0.1:9/slack-response",
        "actions": [
            {
                "action_id": c.choice(DECISION_ACTIONS),
                "block_id": "soar_approval",
                "type": "button",
                "value": approval,
                "action_ts": ts,
            }
        ],
    }


def view_submission(c: Chooser) -> dict[str, Any]:
    meta = {
        "approval_id": c.choice(("apr-missing", "apr-" + uuid.uuid4().hex[:12])),
        "decision": c.choice(("reject", "approve")),
        "channel": "C-SEC",
        "ts": f"{time.time():.6f}",
        "response_url": "http://127.0.0.1:9/slack-response",
        "action_ts": f"{time.time():.6f}",
    }
    return {
        "type": "view_submission",
        "user": {"id": c.choice(("U-ALICE", "U-NOBODY")), "username": "alice", "team_id": "T0"},
        "team": {"id": "T0"},
        "trigger_id": "2.submit",
        "view": {
            "type": "modal",
            "callback_id": MODAL_CALLBACK_ID,
            "private_metadata": json.dumps(meta, separators=(",", ":")),
            "state": {
                "values": {
                    "soar_reason": {
                        "comment": {
                            "type": "plain_text_input",
                            "value": "fuzz " + _clean(c.text(30)),
                        }
                    }
                }
            },
        },
        "response_urls": [],
    }


# --- signing ------------------------------------------------------------------------------------


def webhook_signature(secret: str, msg_id: str, ts: str, body: bytes) -> str:
    """Standard Webhooks v1 over the raw bytes (also bytes that are not UTF-8)."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def slack_signature(secret: str, ts: str, body: bytes) -> str:
    mac = hmac.new(secret.encode(), b"v0:" + ts.encode() + b":" + body, hashlib.sha256)
    return "v0=" + mac.hexdigest()


Headers = list[tuple[bytes, bytes]]

_ODD_HEADER_VALUES = (
    b"",
    b"a b",
    b"\xc3\xa9\xc3\xa9",
    b"\xff\xfe",
    b"\xe2\x80\xae",
    b"v1,\xc3\xa9" * 8,
    b"v1," + b"A" * 8000,
    b"v1,",
    b",",
    b"v1 v1 v1",
    b"v0=\xc3\xa9",
    b"v0=" + b"0" * 64,
    b"null",
    b"-1",
    b"0",
    b"99999999999999999999999",
    b"1e10",
    b"1.5",
    b"\xef\xbc\x91\xef\xbc\x92\xef\xbc\x93",  # full-width digits
)


def _set(headers: Headers, name: bytes, value: bytes | None) -> Headers:
    out = [(k, v) for k, v in headers if k != name]
    return out if value is None else [*out, (name, value)]


@dataclass
class FuzzRequest:
    route: str
    method: str
    path: str
    body: bytes = b""
    headers: Headers = field(default_factory=list)
    query: list[tuple[str, str]] = field(default_factory=list)
    expect_2xx: bool = False
    notes: list[str] = field(default_factory=list)

    def target(self) -> str:
        """Path and query string, percent-encoded (lone surrogates as their UTF-8-ish bytes)."""
        if not self.query:
            return self.path
        pairs = [f"{quote(k)}={quote(v, safe='', errors='surrogatepass')}" for k, v in self.query]
        return self.path + "?" + "&".join(pairs)

    def describe(self, limit: int = 300) -> str:
        body = self.body[:120].decode("utf-8", "replace")
        more = f"...(+{len(self.body) - 120} bytes)" if len(self.body) > 120 else ""
        text = (
            f"{self.method} {self.path} q={self.query!r:.80} notes={self.notes!r:.160} "
            f"body={body!r}{more}"
        )
        return text if len(text) <= limit else text[:limit] + "..."


def intake_case(c: Chooser, secret: str) -> FuzzRequest:
    ocsf = c.chance(35)
    doc = ocsf_finding(c) if ocsf else native_detection(c)
    notes = ["ocsf" if ocsf else "native"]
    valid = not c.chance(75)
    body_value: Any = doc
    if not valid:
        body_value, more = mutate(c, doc, hot=("observed_at", "time"))
        notes += more
    ascii_only = c.chance(80)
    body = dumps(body_value, ascii_only=ascii_only)
    if not valid and c.chance(5):  # bytes that are no JSON text at all
        body = c.choice((b"", b"{", b"\xff\xfe{}", body[: len(body) // 2], b"\x00" * 64))
        notes.append("broken bytes")
    msg_id = "msg_" + uuid.uuid4().hex
    now = int(time.time())
    ts = str(now)
    headers: Headers = [
        (b"content-type", b"application/json"),
        (b"webhook-id", msg_id.encode()),
        (b"webhook-timestamp", ts.encode()),
        (b"webhook-signature", webhook_signature(secret, msg_id, ts, body).encode()),
    ]
    header_ok = True
    if c.chance(20):
        header_ok = False
        name = c.choice(
            (b"webhook-id", b"webhook-timestamp", b"webhook-signature", b"content-type")
        )
        kind = c.integer(0, 3)
        if kind == 0:
            value: bytes | None = None
        elif kind == 1 and name == b"webhook-timestamp":
            # Properly signed, but stale or from the future.
            ts = str(now + c.choice((-600, -301, 301, 10**9, -(10**9))))
            headers = _set(headers, b"webhook-timestamp", ts.encode())
            value = webhook_signature(secret, msg_id, ts, body).encode()
            name = b"webhook-signature"
        elif kind == 1 and name == b"content-type":
            value = c.choice(
                (
                    b"application/json; charset=latin-1",
                    b"application/x+json",
                    b"text/plain",
                    b"APPLICATION/JSON",
                    b"application/json\xc3\xa9",
                )
            )
        else:
            value = c.choice(_ODD_HEADER_VALUES)
        headers = _set(headers, name, value)
        notes.append(f"header {name.decode()}={value!r:.40}")
    return FuzzRequest(
        "POST /v1/detections",
        "POST",
        "/v1/detections",
        body,
        headers,
        expect_2xx=valid and header_ok and ascii_only,
        notes=notes,
    )


def slack_case(c: Chooser, signing_secret: str) -> FuzzRequest:
    modal = c.chance(40)
    doc = view_submission(c) if modal else block_actions(c)
    notes = ["view_submission" if modal else "block_actions"]
    valid = not c.chance(75)
    value: Any = doc
    if not valid:
        value, more = mutate(c, doc)
        notes += more
        if (
            modal
            and isinstance(value, dict)
            and isinstance(value.get("view"), dict)
            and c.chance(30)
        ):
            meta, more = mutate(c, json.loads(doc["view"]["private_metadata"]))
            value["view"]["private_metadata"] = dumps(meta).decode("utf-8", "surrogatepass")
            notes += [f"meta {m}" for m in more]
    payload = dumps(value, ascii_only=c.chance(80))
    body = b"payload=" + quote(payload, safe="").encode()
    if not valid and c.chance(10):
        body = c.choice(
            (
                b"",
                b"payload=",
                b"payload=%7B",
                b"payload=%FF%FE",
                b"\xff\xfe=1",
                payload,
                b"payload=1&payload=2",
                b"a=1&b=2",
                b"payload=" + payload,
                b"%%%",
                urlencode({"payload": "[1,2]"}).encode(),
            )
        )
        notes.append("form bytes")
    ts = str(int(time.time()))
    headers: Headers = [
        (b"content-type", b"application/x-www-form-urlencoded"),
        (b"x-slack-request-timestamp", ts.encode()),
        (b"x-slack-signature", slack_signature(signing_secret, ts, body).encode()),
    ]
    header_ok = True
    if c.chance(20):
        header_ok = False
        name = c.choice((b"x-slack-request-timestamp", b"x-slack-signature", b"content-type"))
        if c.chance(25):
            odd: bytes | None = None
        elif name == b"x-slack-request-timestamp" and c.chance(40):
            ts = c.choice(("0" + ts, ts + "0", "+" + ts, "\uff11" * 10, ts + "\u0660", "0x1"))
            odd = ts.encode()
            headers = _set(
                headers, b"x-slack-signature", slack_signature(signing_secret, ts, body).encode()
            )
        else:
            odd = c.choice(_ODD_HEADER_VALUES)
        headers = _set(headers, name, odd)
        notes.append(f"header {name.decode()}={odd!r:.40}")
    return FuzzRequest(
        "POST /slack/interactions",
        "POST",
        "/slack/interactions",
        body,
        headers,
        expect_2xx=valid and header_ok,
        notes=notes,
    )


REPORT_ROUTES = ("/v1/audit", "/v1/reports/summary", "/v1/reports/atlas-layer")


def datetime_query_case(c: Chooser, token: str) -> FuzzRequest:
    path = c.choice(REPORT_ROUTES)
    query: list[tuple[str, str]] = []
    for name in ("since", "until"):
        if c.chance(70):
            query.append((name, c.choice(EXTREME_DATETIMES) if c.chance(70) else weird_string(c)))
    if path == "/v1/audit" and c.chance(40):
        name = c.choice(("format", "limit", "cursor", "technique", "subject", "incident_id"))
        query.append((name, weird_string(c)[:400]))
    headers: Headers = [(b"authorization", f"Bearer {token}".encode())]
    return FuzzRequest(
        f"GET {path}",
        "GET",
        path,
        headers=headers,
        query=query,
        notes=[f"{k}={v[:40]!r}" for k, v in query],
    )


def lookup_case(c: Chooser, token: str) -> FuzzRequest:
    """Path and query values on the read and decision routes."""
    segment = quote(weird_string(c)[:300] or "x", safe="", errors="surrogatepass")
    kind = c.integer(0, 3)
    headers: Headers = [(b"authorization", f"Bearer {token}".encode())]
    if kind == 0:
        which = c.choice(("sessions", "api-keys", "users"))
        return FuzzRequest(
            "GET /v1/enforcement/{kind}/{target}",
            "GET",
            f"/v1/enforcement/{which}/{segment}",
            headers=headers,
            query=[("tenant", weird_string(c)[:300])] if c.chance(50) else [],
        )
    if kind == 1:
        return FuzzRequest(
            "GET /v1/incidents/{incident_id}", "GET", f"/v1/incidents/{segment}", headers=headers
        )
    if kind == 2:
        query = [
            (n, weird_string(c)[:300])
            for n in ("status", "technique", "subject", "limit")
            if c.chance(40)
        ]
        return FuzzRequest(
            "GET /v1/incidents", "GET", "/v1/incidents", headers=headers, query=query
        )
    value, notes = mutate(c, {"decision": c.choice(("approve", "reject")), "comment": "ok"})
    return FuzzRequest(
        "POST /v1/approvals/{approval_id}/decision",
        "POST",
        f"/v1/approvals/{segment}/decision",
        dumps(value),
        [*headers, (b"content-type", b"application/json")],
        notes=notes,
    )


@dataclass
class Secrets:
    webhook: str
    slack: str | None
    token: str | None


def any_case(c: Chooser, secrets: Secrets) -> FuzzRequest:
    """The bench's mix: mostly intake, then Slack, reports and lookups."""
    roll = c.integer(0, 99)
    if roll < 55 or (roll < 75 and secrets.slack is None):
        return intake_case(c, secrets.webhook)
    if roll < 75 and secrets.slack is not None:
        return slack_case(c, secrets.slack)
    token = secrets.token or ""
    if roll < 88:
        return datetime_query_case(c, token)
    return lookup_case(c, token)
