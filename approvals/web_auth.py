"""Web UI sessions: a signed cookie (HMAC-SHA256) holding who signed in, until when, the
session's CSRF token and the id of its server-side row (`ui_sessions`); a short-lived signed
flash cookie for Post/Redirect/Get messages.

The row is what makes a session revocable: logout, a password change and `soar users disable`
revoke it, and every API replica refuses the cookie from the next request on (they share the
database and SOAR_SESSION_SECRET). Sign-in is throttled per user name and per client address
(:class:`SignInThrottle`) and hashes passwords off the event loop (soar.auth.PasswordHasher).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import parse_qsl, urlsplit

from fastapi import Depends, Request, Response
from sqlalchemy import delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from soar.api.body import BodyTooLarge, read_capped
from soar.api.deps import AppState, SessionDep, StateDep
from soar.api.response import READERS
from soar.auth import PasswordHasher
from soar.config import Settings
from soar.domain import ANALYST_ROLES, DECIDER_ROLES
from soar.models import Principal, UiSessionRow
from soar.ratelimit import TokenBuckets, retry_after

log = logging.getLogger("soar.ui")

SESSION_COOKIE = "soar_ui"
FLASH_COOKIE = "soar_ui_flash"
COOKIE_PATH = "/ui"
SESSION_SECONDS = 8 * 3600
FLASH_SECONDS = 120
_process_key: bytes | None = None


def session_key(settings: Settings) -> bytes:
    """The signing key: SOAR_SESSION_SECRET (every replica must share it; `soar up`
    generates one into SOAR_HOME), otherwise a per-process key, so sessions do not outlive a
    restart. Never derived from the webhook secret: every detection source holds that."""
    if settings.session_secret is not None and settings.session_secret.get_secret_value():
        return settings.session_secret.get_secret_value().encode()
    global _process_key
    if _process_key is None:
        log.warning(
            "SOAR_SESSION_SECRET is not set: web UI sessions end when this process "
            "stops and are not shared between API replicas"
        )
        _process_key = secrets.token_bytes(32)
    return _process_key


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(key: bytes, purpose: str, payload: dict[str, Any]) -> str:
    # The purpose is part of the MAC so a flash cookie can never be replayed as a session.
    body = _b64(json.dumps(payload, separators=(",", ":"), sort_keys=True).encode())
    mac = hmac.new(key, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    return f"{body}.{_b64(mac)}"


def unsign(key: bytes, purpose: str, value: str | None) -> dict[str, Any] | None:
    """The payload of a well-signed, unexpired value; None for anything else."""
    if not value or value.count(".") != 1:
        return None
    body, mac = value.split(".")
    expected = hmac.new(key, f"{purpose}.{body}".encode(), hashlib.sha256).digest()
    try:
        if not hmac.compare_digest(_unb64(mac), expected):
            return None
        payload = json.loads(_unb64(body))
    except (ValueError, binascii.Error):
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("e"), int):
        return None
    if payload["e"] < int(time.time()):
        return None
    return payload


def credential_tag(p: Principal, method: str) -> str:
    """Binds a session to the credential used to sign in: rotating a token or a password
    ends the sessions opened with the old one."""
    secret = p.token_hash if method == "token" else p.password_hash
    return hashlib.sha256(f"{method}:{secret or ''}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class UiSession:
    csrf: str
    expires: int
    name: str | None = None  # None: not signed in yet (the sign-in form's own CSRF token)
    method: str = ""  # token | password
    tag: str = ""
    sid: str = ""  # names its ui_sessions row (by SHA-256); empty before sign-in

    @classmethod
    def anonymous(cls) -> UiSession:
        return cls(csrf=secrets.token_urlsafe(32), expires=int(time.time()) + SESSION_SECONDS)

    @classmethod
    def signed_in(cls, p: Principal, method: str) -> UiSession:
        # A fresh CSRF token at sign-in: a token planted before sign-in is worthless after it.
        return cls(
            csrf=secrets.token_urlsafe(32),
            expires=int(time.time()) + SESSION_SECONDS,
            name=p.name,
            method=method,
            tag=credential_tag(p, method),
            sid=secrets.token_urlsafe(32),
        )

    def payload(self) -> dict[str, Any]:
        return {
            "c": self.csrf,
            "e": self.expires,
            "n": self.name,
            "m": self.method,
            "t": self.tag,
            "s": self.sid,
        }


def read_session(request: Request, key: bytes) -> UiSession | None:
    p = unsign(key, "session", request.cookies.get(SESSION_COOKIE))
    if p is None or not isinstance(p.get("c"), str):
        return None
    name = p.get("n")
    return UiSession(
        csrf=p["c"],
        expires=p["e"],
        name=name if isinstance(name, str) else None,
        method=str(p.get("m") or ""),
        tag=str(p.get("t") or ""),
        sid=str(p.get("s") or ""),
    )


def sid_hash(sid: str) -> str:
    return hashlib.sha256(sid.encode()).hexdigest()


async def open_session(session: AsyncSession, ui: UiSession) -> None:
    """The server-side row of a session just signed in (and old rows cleared out)."""
    assert ui.name is not None and ui.sid
    now = datetime.now(UTC)
    await session.execute(
        delete(UiSessionRow).where(UiSessionRow.expires_at < now - timedelta(days=1))
    )
    session.add(
        UiSessionRow(
            id_hash=sid_hash(ui.sid),
            principal=ui.name,
            method=ui.method,
            expires_at=datetime.fromtimestamp(ui.expires, UTC),
        )
    )
    await session.commit()


async def end_session(session: AsyncSession, ui: UiSession | None) -> None:
    if ui is None or not ui.sid:
        return
    await session.execute(
        update(UiSessionRow)
        .where(UiSessionRow.id_hash == sid_hash(ui.sid), UiSessionRow.revoked_at.is_(None))
        .values(revoked_at=func.now())
    )
    await session.commit()


def secure_cookies(settings: Settings) -> bool:
    return settings.base_url.startswith("https://")


def write_session(response: Response, key: bytes, ui: UiSession, settings: Settings) -> None:
    response.set_cookie(
        SESSION_COOKIE,
        sign(key, "session", ui.payload()),
        max_age=max(0, ui.expires - int(time.time())),
        path=COOKIE_PATH,
        secure=secure_cookies(settings),
        httponly=True,
        samesite="lax",
    )


def clear_session(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        SESSION_COOKIE,
        path=COOKIE_PATH,
        secure=secure_cookies(settings),
        httponly=True,
        samesite="lax",
    )


def csrf_ok(ui: UiSession | None, submitted: str) -> bool:
    if ui is None or not submitted:
        return False
    return hmac.compare_digest(ui.csrf.encode(), submitted.encode())


@dataclass(frozen=True)
class Flash:
    kind: str  # ok | error
    message: str


def write_flash(response: Response, key: bytes, flash: Flash, settings: Settings) -> None:
    payload = {"k": flash.kind, "m": flash.message[:500], "e": int(time.time()) + FLASH_SECONDS}
    response.set_cookie(
        FLASH_COOKIE,
        sign(key, "flash", payload),
        max_age=FLASH_SECONDS,
        path=COOKIE_PATH,
        secure=secure_cookies(settings),
        httponly=True,
        samesite="lax",
    )


def read_flash(request: Request, key: bytes) -> Flash | None:
    p = unsign(key, "flash", request.cookies.get(FLASH_COOKIE))
    if p is None or p.get("k") not in ("ok", "error") or not isinstance(p.get("m"), str):
        return None
    return Flash(kind=p["k"], message=p["m"])


def clear_flash(response: Response, settings: Settings) -> None:
    response.delete_cookie(
        FLASH_COOKIE,
        path=COOKIE_PATH,
        secure=secure_cookies(settings),
        httponly=True,
        samesite="lax",
    )


def local_target(value: str | None, default: str = "/ui/approvals") -> str:
    """Where to go after a form: only a path inside the UI, never another site (open redirect)."""
    if not value or not value.startswith("/ui") or value.startswith("//") or "\\" in value:
        return default
    parts = urlsplit(value)
    if parts.scheme or parts.netloc or any(ord(c) < 32 for c in value):
        return default
    return value


def security_headers(response: Response, nonce: str) -> None:
    # Approve / Reject buttons must never be framed by another site (clickjacking), and the
    # only script allowed is our own inline one carrying this response's nonce.
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; script-src 'nonce-" + nonce + "'; style-src 'self'; "
        "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    )
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["Cache-Control"] = "no-store"


# --- who is signed in, as FastAPI dependencies ----------------------------------------------


class UiError(Exception):
    """A refusal shown as a page of its own: 4xx, a title and one clear sentence."""

    def __init__(self, status: int, title: str, message: str) -> None:
        super().__init__(message)
        self.status, self.title, self.message = status, title, message


class SignInRequired(Exception):
    def __init__(self, target: str) -> None:
        super().__init__(target)
        self.target = target


def ui_key(state: AppState) -> bytes:
    key = state.extras.get("ui_session_key")
    if not isinstance(key, bytes):
        key = session_key(state.settings)
        state.extras["ui_session_key"] = key
    return key


@dataclass(frozen=True)
class Viewer:
    name: str
    role: str
    session: UiSession

    @property
    def can_decide(self) -> bool:
        return self.role in DECIDER_ROLES

    @property
    def can_act(self) -> bool:
        """Lift, extend, contain now, close, add a note."""
        return self.role in ANALYST_ROLES


async def _principal(session: SessionDep, ui: UiSession | None) -> Principal | None:
    """The signed-in principal, re-read on every request: disabling a user, changing a role
    or rotating the credential used to sign in takes effect at once."""
    if ui is None or ui.name is None:
        return None
    if not ui.sid:
        return None  # a cookie from before sessions were kept on the server
    row = await session.get(UiSessionRow, sid_hash(ui.sid))
    if (
        row is None
        or row.revoked_at is not None
        or row.principal != ui.name
        or row.expires_at <= datetime.now(UTC)
    ):
        return None
    p = await session.scalar(select(Principal).where(Principal.name == ui.name))
    if p is None or p.disabled or p.role not in READERS:
        return None
    # A session is only as good as a credential the principal really has.
    credential = {"token": p.token_hash, "password": p.password_hash}.get(ui.method)
    if not credential:
        return None
    return p if secrets.compare_digest(credential_tag(p, ui.method), ui.tag) else None


async def optional_viewer(request: Request, state: StateDep, session: SessionDep) -> Viewer | None:
    ui = read_session(request, ui_key(state))
    p = await _principal(session, ui)
    return Viewer(p.name, p.role, ui) if p is not None and ui is not None else None


OptionalViewerDep = Annotated[Viewer | None, Depends(optional_viewer)]


async def current_viewer(request: Request, viewer: OptionalViewerDep) -> Viewer:
    if viewer is None:
        query = f"?{request.url.query}" if request.url.query else ""
        raise SignInRequired(local_target(request.url.path + query))
    return viewer


ViewerDep = Annotated[Viewer, Depends(current_viewer)]


FORM_LIMIT = 64 * 1024


async def read_form(request: Request) -> dict[str, str]:
    """Our forms are small and URL-encoded: read at most FORM_LIMIT, then parse."""
    try:
        raw = await read_capped(request, FORM_LIMIT)
        text = raw.decode("utf-8")
    except BodyTooLarge:
        raise UiError(413, "Form too large", "The form is larger than this site accepts.") from None
    except UnicodeDecodeError:
        raise UiError(400, "Bad request", "The form could not be read.") from None
    return dict(parse_qsl(text, keep_blank_values=True))


def check_csrf(ui: UiSession | None, form: dict[str, str]) -> None:
    if not csrf_ok(ui, form.get("csrf", "")):
        raise UiError(
            403,
            "Form refused",
            "This form has expired or did not come from this site (missing or wrong "
            "CSRF token). Reload the page and try again.",
        )


# --- sign-in throttling -----------------------------------------------------------------------


class SignInThrottle:
    """Failed sign-ins per user name and per client address, as token buckets (a burst, then
    one more per refill interval). Checked before any password work: over either limit the
    answer is 429, even for the right password (no oracle), and nothing is hashed."""

    def __init__(self, settings: Settings) -> None:
        s = settings
        self.users = TokenBuckets(1 / s.signin_user_refill_seconds, s.signin_user_burst)
        self.addresses = TokenBuckets(1 / s.signin_address_refill_seconds, s.signin_address_burst)

    def wait(self, user: str, address: str) -> tuple[float, str]:
        """(seconds to wait, which limit) or (0, "") when an attempt may go ahead."""
        by_user = self.users.wait(_user_key(user)) if user else 0.0
        by_address = self.addresses.wait(address)
        if by_user >= by_address:
            return by_user, "user" if by_user > 0 else ""
        return by_address, "address"

    def failed(self, user: str, address: str) -> None:
        if user:
            self.users.take(_user_key(user))
        self.addresses.take(address)

    def succeeded(self, user: str) -> None:
        if user:
            self.users.forget(_user_key(user))


def _user_key(user: str) -> str:
    return user.strip().casefold()[:200]


def throttle_of(state: AppState) -> SignInThrottle:
    t = state.extras.get("signin_throttle")
    if not isinstance(t, SignInThrottle):
        t = SignInThrottle(state.settings)
        state.extras["signin_throttle"] = t
    return t


def hasher_of(state: AppState) -> PasswordHasher:
    h = state.extras.get("password_hasher")
    if not isinstance(h, PasswordHasher):
        s = state.settings
        h = PasswordHasher(concurrency=s.signin_hash_concurrency, queue=s.signin_hash_queue)
        state.extras["password_hasher"] = h
    return h


class Throttled(Exception):
    def __init__(self, wait: float, limit: str) -> None:
        super().__init__(limit)
        self.retry_after = retry_after(wait)
        self.limit = limit
