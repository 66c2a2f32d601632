"""Principals: bearer API tokens (stored as SHA-256; they are random, long and single-purpose)
and passwords for the web UI (scrypt)."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy import Update, func, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from soar.config import BootstrapToken
from soar.models import Principal, UiSessionRow

log = logging.getLogger("soar.auth")
_T = TypeVar("_T")


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


# scrypt at OWASP's guidance (Password Storage Cheat Sheet): N=2^14, r=8, p=5 is one of its
# equivalents of N=2^17, r=8, p=1 for the same CPU work, with 16 MiB of memory per hash
# instead of 128 MiB, so several sign-ins at once stay cheap in memory.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 5
_MAXMEM = 64 * 1024 * 1024
MAX_PASSWORD = 1024  # longer: refused after the same work as a wrong one


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(
        password.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P, maxmem=_MAXMEM
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${salt.hex()}${dk.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        if int(n) > 2**20 or int(r) > 16 or int(p) > 16:
            return False  # not a hash we made: never let a stored value cost unbounded work
        dk = hashlib.scrypt(
            password.encode(),
            salt=bytes.fromhex(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=_MAXMEM,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk.hex(), digest)


def needs_rehash(stored: str) -> bool:
    return not stored.startswith(f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}$")


class HasherBusy(Exception):
    """More sign-ins are waiting for a hash than the API will queue."""


class PasswordHasher:
    """Password work off the event loop, in threads (hashlib's scrypt releases the GIL), at
    most `concurrency` at a time and at most `queue` waiting: a burst of sign-ins never
    stalls the API's other requests, and a flood is refused instead of queued without end.

    An unknown user name, a disabled principal or one without a password is checked against
    a dummy hash with the current parameters: the same work, so the answer's timing does not
    tell which names exist."""

    def __init__(self, *, concurrency: int = 1, queue: int = 8) -> None:
        self._slots = asyncio.Semaphore(concurrency)
        self._queue = queue
        self._waiting = 0
        self._dummy: str | None = None

    def check_capacity(self) -> None:
        if self._waiting >= self._queue:
            raise HasherBusy

    async def _run(self, fn: Callable[[], _T]) -> _T:
        self.check_capacity()
        self._waiting += 1
        try:
            async with self._slots:
                return await asyncio.to_thread(fn)
        finally:
            self._waiting -= 1

    async def verify(self, password: str, stored: str | None) -> bool:
        if self._dummy is None:
            self._dummy = await self._run(lambda: hash_password(secrets.token_urlsafe(16)))
        usable = stored if stored and stored.startswith("scrypt$") else None
        target = usable or self._dummy
        candidate = password if len(password) <= MAX_PASSWORD else ""
        ok = await self._run(lambda: verify_password(candidate, target))
        return ok and usable is not None and len(password) <= MAX_PASSWORD

    async def hash(self, password: str) -> str:
        return await self._run(lambda: hash_password(password))


async def sync_bootstrap_tokens(session: AsyncSession, tokens: tuple[BootstrapToken, ...]) -> None:
    """The tokens of SOAR_API_TOKENS, as principals; a token that was set from the setting
    and is no longer in it stops working (its hash is cleared, the principal is kept for the
    record), and its web sessions end."""
    for t in tokens:
        await session.execute(
            pg_insert(Principal)
            .values(name=t.name, role=t.role.value, token_hash=token_hash(t.token), env_token=True)
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"role": t.role.value, "token_hash": token_hash(t.token), "env_token": True},
            )
        )
    names = [t.name for t in tokens]
    gone = list(
        await session.scalars(
            update(Principal)
            .where(Principal.env_token.is_(True), Principal.name.not_in(names))
            .values(token_hash=None, env_token=False)
            .returning(Principal.name)
        )
    )
    for name in gone:
        await session.execute(revoke_sessions(name, method="token"))
    if gone:
        log.warning(
            "auth.token_removed: API tokens no longer in SOAR_API_TOKENS disabled: %s",
            ", ".join(sorted(gone))[:1000],
        )


def revoke_sessions(name: str, *, method: str | None = None) -> Update:
    """Ends every open web UI session of `name` (of one sign-in method, or all)."""
    stmt = update(UiSessionRow).where(
        UiSessionRow.principal == name, UiSessionRow.revoked_at.is_(None)
    )
    if method is not None:
        stmt = stmt.where(UiSessionRow.method == method)
    return stmt.values(revoked_at=func.now())


async def identity_for_token(session: AsyncSession, token: str) -> Identity | None:
    p = await session.scalar(
        select(Principal).where(
            Principal.token_hash == token_hash(token), Principal.disabled.is_(False)
        )
    )
    return Identity(p.name, p.role) if p else None


async def identity_for_password(
    session: AsyncSession, name: str, password: str, hasher: PasswordHasher
) -> Identity | None:
    """The identity for a name and password; the same hashing work whether or not the name
    exists, is disabled or has a password. Upgrades an older hash on success."""
    hasher.check_capacity()  # refused before any work when the hash queue is full
    p = await session.scalar(select(Principal).where(Principal.name == name))
    stored = p.password_hash if p is not None else None
    # No database connection is held while hashing (a queue of sign-ins would empty the pool).
    await session.commit()
    ok = await hasher.verify(password, stored)
    if p is None or p.disabled or not ok or not p.password_hash:
        return None
    if needs_rehash(p.password_hash):
        # Same password, current parameters. The session bound to the old hash's tag is
        # not open yet (this is the sign-in), so nothing is cut short.
        p.password_hash = await hasher.hash(password)
        await session.commit()
    return Identity(p.name, p.role)
