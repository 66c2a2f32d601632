"""Detection sources and their credentials.

Each source has its own credential: a Standard Webhooks `whsec_` secret (HMAC-SHA256,
signature version `v1`) or an Ed25519 public key (`whpk_`, signature version `v1a`, the
server keeps only the public key). A detection is attributed to the source whose credential
verified its signature; the body's `source` field is never trusted. `SOAR_WEBHOOK_SECRET`
is the built-in source named `default`.

Symmetric secrets must be readable by the API to check an HMAC, so they cannot be hashed;
they are encrypted at rest (AES-256-GCM, key derived from `SOAR_SECRETS_KEY`) when a key is
configured, so a copy of the database alone does not hand them out.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session

from soar.models import Source, SourceCredential

DEFAULT_SOURCE = "default"
TOLERANCE = timedelta(minutes=5)  # Standard Webhooks' replay window
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_MAX_SIGNATURES = 8  # header entries looked at; more is an attack, not a rotation


class SourceError(ValueError):
    """A refused source operation, said in one line."""


# --- secrets at rest --------------------------------------------------------------------------


def _aead(key: str) -> AESGCM:
    return AESGCM(hashlib.sha256(b"atlas-soar source secrets\x00" + key.encode()).digest())


def seal(secret: str, key: str | None) -> str:
    if not key:
        return "plain:" + secret
    nonce = secrets.token_bytes(12)
    ct = _aead(key).encrypt(nonce, secret.encode(), b"whsec")
    return "aesgcm:" + base64.b64encode(nonce + ct).decode()


def unseal(material: str, key: str | None) -> str | None:
    """The secret, or None when it cannot be read with this key."""
    kind, _, rest = material.partition(":")
    if kind == "plain":
        return rest
    if kind != "aesgcm" or not key:
        return None
    try:
        raw = base64.b64decode(rest)
        return _aead(key).decrypt(raw[:12], raw[12:], b"whsec").decode()
    except Exception:  # wrong key or damaged value: this credential cannot verify anything
        return None


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix("whsec_"))


def parse_public_key(value: str) -> bytes:
    """A `whpk_<base64>` (or bare base64) raw 32-byte Ed25519 public key."""
    try:
        raw = base64.b64decode(value.strip().removeprefix("whpk_"), validate=True)
        Ed25519PublicKey.from_public_bytes(raw)
    except Exception:
        raise SourceError("the public key must be whpk_<base64 of 32 raw Ed25519 bytes>") from None
    return raw


# --- verification ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    source: str
    kind: str  # whsec | ed25519
    key: bytes  # HMAC key or raw public key
    tenants: tuple[str, ...] | None


class Unverified(Exception):
    """Why a request's signature was refused (said to the caller; no secret in it)."""


def _signatures(header: str) -> list[tuple[str, bytes]]:
    out: list[tuple[str, bytes]] = []
    for item in header.split(" ")[:_MAX_SIGNATURES]:
        version, sep, sig = item.partition(",")
        if not sep or version not in ("v1", "v1a"):
            continue
        try:
            out.append((version, base64.b64decode(sig, validate=True)))
        except ValueError:
            continue
    return out


def verify(
    credentials: tuple[Credential, ...], body: bytes, headers: Mapping[str, str]
) -> Credential:
    """The credential that signed this request (Standard Webhooks `v1` HMAC or `v1a`
    Ed25519), or Unverified. Header values may hold any characters."""
    msg_id = headers.get("webhook-id", "")
    stamp = headers.get("webhook-timestamp", "")
    header = headers.get("webhook-signature", "")
    if not msg_id or not stamp or not header:
        raise Unverified("missing webhook-id, webhook-timestamp or webhook-signature header")
    if len(msg_id) > 256 or not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise Unverified("malformed webhook headers")
    now = time.time()
    if abs(now - int(stamp)) > TOLERANCE.total_seconds():
        raise Unverified("message timestamp too old or too new")
    sigs = _signatures(header)
    if not sigs:
        raise Unverified("no v1 or v1a signature in webhook-signature")
    signed = msg_id.encode("utf-8", "surrogateescape") + b"." + stamp.encode() + b"." + body
    for cred in credentials:
        if cred.kind == "whsec":
            expected = hmac.new(cred.key, signed, hashlib.sha256).digest()
            if any(v == "v1" and hmac.compare_digest(expected, s) for v, s in sigs):
                return cred
        else:
            pub = Ed25519PublicKey.from_public_bytes(cred.key)
            for v, s in sigs:
                if v != "v1a":
                    continue
                try:
                    pub.verify(s, signed)
                except InvalidSignature:
                    continue
                return cred
    raise Unverified("no matching signature")


class SourceRegistry:
    """The credentials in force, read from PostgreSQL at most once per `ttl` seconds, plus
    the default source of SOAR_WEBHOOK_SECRET."""

    def __init__(
        self,
        factory: async_sessionmaker[AsyncSession],
        *,
        default_secret: str | None,
        secrets_key: str | None,
        ttl: float = 1.0,
    ) -> None:
        self._factory = factory
        self._key = secrets_key
        self._ttl = ttl
        self._default = (
            (Credential(DEFAULT_SOURCE, "whsec", secret_bytes(default_secret), None),)
            if default_secret
            else ()
        )
        self._loaded: tuple[Credential, ...] = ()
        self._at = -1e9

    async def credentials(self) -> tuple[Credential, ...]:
        if time.monotonic() - self._at > self._ttl:
            async with self._factory() as session:
                self._loaded = await load_credentials(session, self._key)
            self._at = time.monotonic()
        return self._default + self._loaded

    def invalidate(self) -> None:
        self._at = -1e9


async def load_credentials(session: AsyncSession, key: str | None) -> tuple[Credential, ...]:
    now = datetime.now(UTC)
    rows = (
        await session.execute(
            select(SourceCredential, Source.tenants)
            .join(Source, Source.name == SourceCredential.source)
            .where(Source.revoked_at.is_(None))
            .where((SourceCredential.not_after.is_(None)) | (SourceCredential.not_after > now))
            .order_by(SourceCredential.id.desc())
        )
    ).all()
    out: list[Credential] = []
    for cred, tenants in rows:
        allowed = tuple(tenants) if tenants is not None else None
        if cred.kind == "ed25519":
            out.append(Credential(cred.source, "ed25519", base64.b64decode(cred.material), allowed))
            continue
        secret = unseal(cred.material, key)
        if secret is not None:
            out.append(Credential(cred.source, "whsec", secret_bytes(secret), allowed))
    return tuple(out)


# --- management (the CLI) --------------------------------------------------------------------


@dataclass(frozen=True)
class SourceInfo:
    name: str
    tenants: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None
    credentials: tuple[tuple[str, datetime, datetime | None], ...]  # kind, created, not_after


def check_name(name: str) -> str:
    if name == DEFAULT_SOURCE:
        raise SourceError(f"{DEFAULT_SOURCE!r} is the source of SOAR_WEBHOOK_SECRET")
    if not NAME_RE.match(name):
        raise SourceError(
            "a source name is 1-64 characters: lowercase letters, digits, '.', '_', '-'"
        )
    return name


def _credential(name: str, public_key: str | None, key: str | None) -> tuple[SourceCredential, str]:
    if public_key is not None:
        raw = parse_public_key(public_key)
        cred = SourceCredential(
            source=name, kind="ed25519", material=base64.b64encode(raw).decode()
        )
        return cred, ""
    secret = new_secret()
    return SourceCredential(source=name, kind="whsec", material=seal(secret, key)), secret


def add_source(
    s: Session, name: str, *, tenants: tuple[str, ...], public_key: str | None, key: str | None
) -> str:
    """Creates the source; returns its new secret ("" for a public key)."""
    check_name(name)
    existing = s.get(Source, name)
    if existing is not None:
        state = "revoked" if existing.revoked_at else "exists"
        raise SourceError(f"source {name!r} {state}; choose another name")
    s.add(Source(name=name, tenants=list(tenants) or None))
    s.flush()
    cred, secret = _credential(name, public_key, key)
    s.add(cred)
    return secret


def _live(s: Session, name: str) -> Source:
    src = s.get(Source, name)
    if src is None:
        raise SourceError(f"no source named {name!r} (see `soar sources list`)")
    if src.revoked_at is not None:
        raise SourceError(f"source {name!r} is revoked")
    return src


def rotate_source(
    s: Session, name: str, *, grace: timedelta, public_key: str | None, key: str | None
) -> tuple[str, datetime]:
    """A new credential; the ones in force stay valid until now + grace. Returns the new
    secret ("" for a public key) and when the old credentials stop verifying."""
    _live(s, name)
    until = datetime.now(UTC) + grace
    s.execute(
        update(SourceCredential)
        .where(SourceCredential.source == name)
        .where((SourceCredential.not_after.is_(None)) | (SourceCredential.not_after > until))
        .values(not_after=until)
    )
    cred, secret = _credential(name, public_key, key)
    s.add(cred)
    return secret, until


def revoke_source(s: Session, name: str) -> None:
    src = _live(s, name)
    src.revoked_at = datetime.now(UTC)


def list_sources(s: Session) -> list[SourceInfo]:
    out = []
    for src in s.scalars(select(Source).order_by(Source.name)):
        creds = s.scalars(
            select(SourceCredential)
            .where(SourceCredential.source == src.name)
            .order_by(SourceCredential.id)
        ).all()
        out.append(
            SourceInfo(
                src.name,
                tuple(src.tenants) if src.tenants is not None else None,
                src.created_at,
                src.revoked_at,
                tuple((c.kind, c.created_at, c.not_after) for c in creds),
            )
        )
    return out
