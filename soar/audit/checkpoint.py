"""Signed checkpoints of the action log: (seq, head hash, time), Ed25519, kept outside it.

A checkpoint is a small JSON document `{"payload": {...}, "signature": "<base64>"}`; the
signature is over the payload as canonical JSON (sorted keys, no spaces). The payload names
the key (`kid`, the first 16 hex digits of SHA-256 over the raw public key), so keys can be
rotated: generate a new pair, sign with it from then on, and give `verify` every public key.

Sinks: a directory, or an S3-compatible bucket (or any HTTP store) by URL: `http(s)://...`
(objects written with PUT to `URL/NAME`, listed with S3's `?list-type=2&prefix=`), and
`s3://bucket/prefix`, which means `https://bucket.s3.amazonaws.com/prefix`. With credentials
(in the URL as `https://KEY_ID:SECRET@host/bucket/prefix`, or the standard
`AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` / `AWS_SESSION_TOKEN`, region from
`AWS_REGION` / `AWS_DEFAULT_REGION`, default `us-east-1`) every request is signed with AWS
Signature Version 4, as S3, MinIO, Ceph and R2 expect; without them requests go unsigned
(a bucket policy that lets the signer's network write, or a pre-authorising proxy).

The private key belongs to whoever runs `soar audit checkpoint` (a cron job, an operator),
never to the API or the workers: whoever can write the database cannot sign. Before signing,
the command checks the rows since the newest checkpoint of the same key still link to it,
so a checkpoint never blesses a rewritten history.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import os
import re
import urllib.parse
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Connection, select, text

from soar.audit.chain import GENESIS, ChainProblem
from soar.audit.verify import Checkpoint, check_range

LOG_NAME = "atlas-soar/action_log"
PREFIX = "checkpoint-"
MAX_DOC = 16 * 1024  # bytes in one checkpoint document
MAX_LIST = 8 * 1024 * 1024  # bytes in one listing page
MAX_CHECKPOINTS = 100_000
_KEY = re.compile(rb"<Key>([^<]{1,1024})</Key>")
_TOKEN = re.compile(rb"<NextContinuationToken>([^<]{1,4096})</NextContinuationToken>")
_NAME = re.compile(r"^checkpoint-[0-9]{20}-[0-9]{8}T[0-9]{12}Z(-[0-9a-f]{16})?\.json$")


class CheckpointError(Exception):
    """A sink that cannot be read or written, a key that cannot be loaded."""


# --- keys ----------------------------------------------------------------------------------


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def keygen(out_dir: Path) -> tuple[Path, Path]:
    """A new key pair in `out_dir`: `soar-audit-KID.key.pem` (0600) and `...pub.pem`."""
    out_dir.mkdir(parents=True, exist_ok=True)
    private = Ed25519PrivateKey.generate()
    kid = key_id(private.public_key())
    key_path = out_dir / f"soar-audit-{kid}.key.pem"
    pub_path = out_dir / f"soar-audit-{kid}.pub.pem"
    pem = private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    pub_path.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    return key_path, pub_path


def load_private(path: Path) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()[:MAX_DOC]
        key = serialization.load_pem_private_key(data, password=None)
    except (OSError, ValueError, TypeError) as exc:
        raise CheckpointError(f"--key: cannot load an Ed25519 private key from {path}") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise CheckpointError(f"--key: {path} is not an Ed25519 private key")
    return key


def load_public(paths: Iterable[Path]) -> dict[str, Ed25519PublicKey]:
    keys: dict[str, Ed25519PublicKey] = {}
    for path in paths:
        try:
            key = serialization.load_pem_public_key(path.read_bytes()[:MAX_DOC])
        except (OSError, ValueError, TypeError) as exc:
            raise CheckpointError(f"--public-key: cannot load a public key from {path}") from exc
        if not isinstance(key, Ed25519PublicKey):
            raise CheckpointError(f"--public-key: {path} is not an Ed25519 public key")
        keys[key_id(key)] = key
    return keys


# --- documents -----------------------------------------------------------------------------


def _canonical(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()


def sign(key: Ed25519PrivateKey, seq: int, head_hash: str, at: datetime) -> tuple[str, bytes]:
    """(name, document) of a checkpoint of row `seq` with hash `head_hash`."""
    kid = key_id(key.public_key())
    payload = {
        "v": 1,
        "log": LOG_NAME,
        "seq": seq,
        "hash": head_hash,
        "at": at.astimezone(UTC).isoformat(timespec="microseconds"),
        "kid": kid,
    }
    signature = base64.b64encode(key.sign(_canonical(payload))).decode()
    stamp = at.astimezone(UTC).strftime("%Y%m%dT%H%M%S%f") + "Z"
    name = f"{PREFIX}{seq:020d}-{stamp}-{kid}.json"
    doc = json.dumps({"payload": payload, "signature": signature}, indent=1).encode()
    return name, doc


def parse(
    name: str, doc: bytes, keys: dict[str, Ed25519PublicKey]
) -> tuple[Checkpoint | None, str | None]:
    """The checkpoint in `doc`, or None and why not (bad signature, unknown key...)."""
    try:
        data = json.loads(doc[:MAX_DOC])
        payload, signature = data["payload"], base64.b64decode(data["signature"], validate=True)
        seq, head_hash, kid = payload["seq"], payload["hash"], payload["kid"]
        if not (isinstance(seq, int) and isinstance(head_hash, str) and isinstance(kid, str)):
            raise TypeError
        if payload.get("log") != LOG_NAME or payload.get("v") != 1:
            return None, f"checkpoint {name}: not an atlas-soar action log checkpoint"
    except (ValueError, KeyError, TypeError, AttributeError):
        return None, f"checkpoint {name}: malformed"
    key = keys.get(kid)
    if key is None:
        return None, f"checkpoint {name}: signed by an unknown key {kid[:16]!r}"
    try:
        key.verify(signature, _canonical(payload))
    except InvalidSignature:
        return None, f"checkpoint {name}: signature invalid (the document was changed)"
    return Checkpoint(seq=seq, hash=head_hash, name=name, at=str(payload.get("at", ""))), None


# --- sinks ---------------------------------------------------------------------------------


class Sink(Protocol):
    def names(self) -> list[str]: ...
    def get(self, name: str) -> bytes: ...
    def put(self, name: str, doc: bytes) -> None: ...


class DirSink:
    def __init__(self, path: Path) -> None:
        self.path = path

    def names(self) -> list[str]:
        if not self.path.exists():
            return []
        if not self.path.is_dir():
            raise CheckpointError(f"{self.path} is not a directory")
        out = sorted(p.name for p in self.path.iterdir() if p.name.startswith(PREFIX))
        return out[:MAX_CHECKPOINTS]

    def get(self, name: str) -> bytes:
        with (self.path / name).open("rb") as f:
            return f.read(MAX_DOC + 1)

    def put(self, name: str, doc: bytes) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        tmp = self.path / f".{name}.tmp"
        tmp.write_bytes(doc)
        os.replace(tmp, self.path / name)


class HttpSink:
    """An S3-compatible bucket (or prefix in it), or any store that takes PUT and GET."""

    def __init__(self, url: str, *, timeout: float = 10.0) -> None:
        u = urllib.parse.urlsplit(url.rstrip("/"))
        netloc = u.hostname or ""
        if ":" in netloc:
            netloc = f"[{netloc}]"
        if u.port is not None:
            netloc += f":{u.port}"
        # The URL without the credentials it may carry: requests and messages use this one.
        self.url = urllib.parse.urlunsplit((u.scheme, netloc, u.path, "", ""))
        self.timeout = timeout
        self.shown = self.url
        self.credentials = SigV4Credentials.find(
            urllib.parse.unquote(u.username) if u.username else None,
            urllib.parse.unquote(u.password) if u.password else None,
        )

    def _client(self) -> httpx.Client:
        return httpx.Client(
            timeout=self.timeout,
            follow_redirects=False,
            auth=self.credentials,
        )

    def _split(self) -> tuple[str, str]:
        """(bucket URL, key prefix) for an S3 listing: path-style `host/bucket/prefix`."""
        u = urllib.parse.urlsplit(self.url)
        parts = u.path.strip("/").split("/", 1)
        base = urllib.parse.urlunsplit((u.scheme, u.netloc, "/" + parts[0], "", ""))
        prefix = parts[1] + "/" if len(parts) > 1 and parts[1] else ""
        if not parts[0]:
            base = urllib.parse.urlunsplit((u.scheme, u.netloc, "/", "", ""))
        return base.rstrip("/"), prefix

    def names(self) -> list[str]:
        base, prefix = self._split()
        names: list[str] = []
        token: str | None = None
        with self._client() as client:
            while len(names) < MAX_CHECKPOINTS:
                params = {"list-type": "2", "prefix": prefix + PREFIX}
                if token:
                    params["continuation-token"] = token
                try:
                    r = client.get(base + "/", params=params)
                except httpx.HTTPError as exc:
                    raise CheckpointError(f"listing {self.shown}: {type(exc).__name__}") from exc
                if r.status_code != 200 or len(r.content) > MAX_LIST:
                    raise CheckpointError(f"listing {self.shown}: HTTP {r.status_code}")
                # An S3 ListObjectsV2 answer; read with patterns, not an XML parser (no
                # entity tricks from a hostile server): keys are our own plain names.
                body = r.content
                names += [html.unescape(k.decode()) for k in _KEY.findall(body)]
                names = [n[len(prefix) :] if n.startswith(prefix) else n for n in names]
                truncated = b"<IsTruncated>true</IsTruncated>" in body
                found = _TOKEN.search(body)
                token = html.unescape(found.group(1).decode()) if found else None
                if not truncated or not token:
                    break
        return sorted(n for n in names if n.startswith(PREFIX))

    def get(self, name: str) -> bytes:
        with self._client() as client:
            try:
                r = client.get(f"{self.url}/{urllib.parse.quote(name)}")
            except httpx.HTTPError as exc:
                raise CheckpointError(f"reading {name}: {type(exc).__name__}") from exc
        if r.status_code != 200:
            raise CheckpointError(f"reading {name}: HTTP {r.status_code}")
        return r.content[: MAX_DOC + 1]

    def put(self, name: str, doc: bytes) -> None:
        with self._client() as client:
            try:
                r = client.put(
                    f"{self.url}/{urllib.parse.quote(name)}",
                    content=doc,
                    headers={"Content-Type": "application/json"},
                )
            except httpx.HTTPError as exc:
                raise CheckpointError(f"writing {name}: {type(exc).__name__}") from exc
        if r.status_code not in (200, 201, 204):
            raise CheckpointError(f"writing {name}: HTTP {r.status_code}")


def _uri_encode(text: str, *, slash: bool) -> str:
    return urllib.parse.quote(text, safe="-_.~" + ("/" if not slash else ""))


@dataclass(frozen=True)
class SigV4Credentials(httpx.Auth):
    """AWS Signature Version 4 for S3 (the `UNSIGNED-PAYLOAD`-free form: the body's SHA-256
    is signed, so a checkpoint cannot be swapped in flight even over plain HTTP)."""

    key_id: str
    secret: str = field(repr=False)
    region: str = "us-east-1"
    session_token: str | None = field(default=None, repr=False)
    service: str = "s3"

    @classmethod
    def find(cls, key_id: str | None, secret: str | None) -> SigV4Credentials | None:
        env = os.environ
        key_id = key_id or env.get("AWS_ACCESS_KEY_ID")
        secret = secret or env.get("AWS_SECRET_ACCESS_KEY")
        if not key_id or not secret:
            return None
        region = env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1"
        return cls(key_id, secret, region, env.get("AWS_SESSION_TOKEN") or None)

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        self.sign(request, datetime.now(UTC))
        yield request

    def sign(self, request: httpx.Request, now: datetime) -> None:
        stamp = now.strftime("%Y%m%dT%H%M%SZ")
        day = stamp[:8]
        payload = hashlib.sha256(request.content).hexdigest()
        request.headers["x-amz-date"] = stamp
        request.headers["x-amz-content-sha256"] = payload
        if self.session_token:
            request.headers["x-amz-security-token"] = self.session_token
        signed = {"host": request.url.netloc.decode("ascii")}
        for name, value in request.headers.items():
            if name.lower().startswith("x-amz-") or name.lower() == "content-type":
                signed[name.lower()] = " ".join(value.split())
        names = sorted(signed)
        query = urllib.parse.parse_qsl(request.url.query.decode("ascii"), keep_blank_values=True)
        canonical_query = "&".join(
            f"{_uri_encode(k, slash=True)}={_uri_encode(v, slash=True)}" for k, v in sorted(query)
        )
        canonical = "\n".join(
            [
                request.method,
                _uri_encode(urllib.parse.unquote(request.url.path), slash=False) or "/",
                canonical_query,
                "".join(f"{n}:{signed[n]}\n" for n in names),
                ";".join(names),
                payload,
            ]
        )
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = "\n".join(
            ["AWS4-HMAC-SHA256", stamp, scope, hashlib.sha256(canonical.encode()).hexdigest()]
        )
        k = f"AWS4{self.secret}".encode()
        for part in (day, self.region, self.service, "aws4_request"):
            k = hmac.new(k, part.encode(), hashlib.sha256).digest()
        signature = hmac.new(k, to_sign.encode(), hashlib.sha256).hexdigest()
        request.headers["Authorization"] = (
            f"AWS4-HMAC-SHA256 Credential={self.key_id}/{scope}, "
            f"SignedHeaders={';'.join(names)}, Signature={signature}"
        )


def sink(target: str) -> Sink:
    if len(target) > 2000:
        raise CheckpointError("the checkpoint location is too long")
    if target.startswith("s3://"):
        bucket, _, prefix = target[5:].partition("/")
        if not bucket:
            raise CheckpointError(f"{target!r}: no bucket")
        return HttpSink(f"https://{bucket}.s3.amazonaws.com/{prefix}".rstrip("/"))
    if target.startswith(("http://", "https://")):
        return HttpSink(target)
    return DirSink(Path(target))


def load_all(
    source: Sink, keys: dict[str, Ed25519PublicKey]
) -> tuple[list[Checkpoint], list[ChainProblem]]:
    """Every checkpoint in `source` with a good signature, and a problem for each other."""
    good: list[Checkpoint] = []
    bad: list[ChainProblem] = []
    for name in source.names():
        if not _NAME.match(name):
            bad.append(ChainProblem(0, f"checkpoint {name[:120]!r}: unexpected name"))
            continue
        try:
            doc = source.get(name)
        except (OSError, CheckpointError) as exc:
            bad.append(ChainProblem(0, f"checkpoint {name}: unreadable ({exc})"))
            continue
        cp, why = parse(name, doc, keys)
        if cp is None:
            bad.append(ChainProblem(int(name[len(PREFIX) : len(PREFIX) + 20]), str(why)))
        elif int(name[len(PREFIX) : len(PREFIX) + 20]) != cp.seq:
            bad.append(ChainProblem(cp.seq, f"checkpoint {name}: name and content disagree"))
        else:
            good.append(cp)
    return good, bad


# --- making one ----------------------------------------------------------------------------

_HEAD = text(
    "SELECT seq, hash, clock_timestamp() FROM action_log WHERE seq IS NOT NULL "
    "ORDER BY seq DESC LIMIT 1"
)


@dataclass(frozen=True)
class Made:
    name: str
    seq: int
    hash: str
    checked_from: int  # rows checked before signing: seq > checked_from
    written: bool = True


def make(
    conn: Connection, key: Ed25519PrivateKey, out: Sink, *, skip_unchanged: bool = False
) -> Made:
    """Check the rows since the newest checkpoint of this key (all rows if none), then sign
    the head and write it to `out`. Raises CheckpointError instead of signing a log that does
    not link to what was signed before."""
    from soar.audit.verify import _MARKER_ROW, ALL_LEGACY, _range_stmt

    kid = key_id(key.public_key())
    previous, _ = load_all(out, {kid: key.public_key()})
    head = conn.execute(_HEAD).first()
    if head is None:
        seq, head_hash = 0, GENESIS
        at = conn.execute(select(text("clock_timestamp()"))).scalar_one()
    else:
        seq, head_hash, at = int(head[0]), str(head[1]), head[2]
    last = max(previous, key=lambda c: c.seq, default=None)
    since, prev = (0, GENESIS) if last is None else (last.seq, last.hash)
    if since > seq:
        raise CheckpointError(
            f"the log ends at row {seq} but checkpoint {last.name if last else ''} signed row "
            f"{since}: rows were removed; not signing"
        )
    if since:
        stored = conn.execute(text("SELECT hash FROM action_log WHERE seq = :s"), {"s": since})
        if stored.scalar() != prev:
            raise CheckpointError(
                f"row {since} no longer has the hash signed in {last.name if last else ''}: "
                "history was rewritten; not signing"
            )
    if skip_unchanged and last is not None and (last.seq, last.hash) == (seq, head_hash):
        return Made(last.name, seq, head_hash, since, written=False)
    marker = conn.execute(_MARKER_ROW).first()
    legacy_until = ALL_LEGACY if marker is None else int(marker[0]) - 1
    lo = since + 1
    while lo <= seq:
        hi = min(lo + 49_999, seq)
        rows = conn.execute(_range_stmt(lo, hi)).all()
        r = check_range(rows, expected=lo, prev=prev, legacy_until=legacy_until)
        if r.problems:
            raise CheckpointError(f"not signing: {r.problems[0].reason}")
        if r.last is None or r.last[0] != hi:
            raise CheckpointError(f"not signing: rows up to {hi} missing")
        prev = str(r.last[1])
        lo = hi + 1
    name, doc = sign(key, seq, head_hash, at)
    out.put(name, doc)
    return Made(name, seq, head_hash, since)
