"""Signed, single-use, expiring decision links for e-mail approvals.

A token is `<payload>.<mac>`: the payload (approval id, principal id, expiry, a random
nonce) HMAC-SHA256-signed with a key derived from SOAR_SESSION_SECRET, which the worker
(that mails links) and the API (that opens them) share. Only the token's SHA-256 is stored
(`approval_links`), with its expiry and the moment it was used: a forged token fails the MAC
before the database is asked, a stolen database holds no usable link, and the row, not the
payload, says whether the link still works.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from soar.config import Settings
from soar.models import Approval, ApprovalLink, Principal

_PURPOSE = b"atlas-soar e-mail approval link v1"
MAX_TOKEN = 512


def link_key(settings: Settings) -> bytes:
    secret = settings.session_secret.get_secret_value() if settings.session_secret else ""
    if not secret:
        raise ValueError("SOAR_SESSION_SECRET is required to sign e-mail approval links")
    return hmac.new(secret.encode(), _PURPOSE, hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def make_token(key: bytes, approval_id: str, principal_id: int, expires: datetime) -> str:
    payload = {
        "a": approval_id,
        "p": principal_id,
        "e": int(expires.timestamp()),
        "n": secrets.token_urlsafe(18),
    }
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, body.encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def well_signed(key: bytes, token: str) -> bool:
    """The MAC holds (whatever the payload says about expiry: the stored row decides)."""
    if not token or len(token) > MAX_TOKEN or token.count(".") != 1 or not token.isascii():
        return False
    body, mac = token.split(".")
    expected = hmac.new(key, body.encode(), hashlib.sha256).digest()
    try:
        return hmac.compare_digest(_unb64(mac), expected) and isinstance(
            json.loads(_unb64(body)), dict
        )
    except (ValueError, binascii.Error):
        return False


async def issue_link(
    session: AsyncSession, key: bytes, *, approval_id: str, principal_id: int, expires: datetime
) -> str:
    token = make_token(key, approval_id, principal_id, expires)
    session.add(
        ApprovalLink(
            token_hash=token_hash(token),
            approval_id=approval_id,
            principal_id=principal_id,
            expires_at=expires,
        )
    )
    await session.flush()
    return token


@dataclass(frozen=True)
class OpenedLink:
    """What a link leads to. `problem` is None for a link that may decide now; otherwise
    one of invalid | used | expired | disabled."""

    problem: str | None
    link: ApprovalLink | None = None
    approval: Approval | None = None
    principal: Principal | None = None


async def open_link(
    session: AsyncSession, key: bytes, token: str, *, now: datetime, lock: bool = False
) -> OpenedLink:
    """Reads the link (locking its row with `lock`, so two uses of one link are decided one
    after the other and the second finds it used)."""
    if not well_signed(key, token):
        return OpenedLink("invalid")
    link = await session.get(ApprovalLink, token_hash(token), with_for_update=lock)
    if link is None:
        return OpenedLink("invalid")
    approval = await session.get(Approval, link.approval_id)
    principal = await session.get(Principal, link.principal_id)
    if approval is None or principal is None:
        return OpenedLink("invalid")
    if link.used_at is not None:
        return OpenedLink("used", link, approval, principal)
    if link.expires_at <= now:
        return OpenedLink("expired", link, approval, principal)
    if principal.disabled:
        return OpenedLink("disabled", link, approval, principal)
    return OpenedLink(None, link, approval, principal)
