"""Principals: bearer API tokens (stored as SHA-256; they are random, long and single-purpose)
and passwords for the web UI (scrypt)."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from soar.config import BootstrapToken
from soar.models import Principal


@dataclass(frozen=True)
class Identity:
    name: str
    role: str


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    dk = hashlib.scrypt(password.encode(), salt=salt, n=2**14, r=8, p=1)
    return f"scrypt$16384$8$1${salt.hex()}${dk.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        _, n, r, p, salt, digest = stored.split("$")
        dk = hashlib.scrypt(
            password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p)
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(dk.hex(), digest)


async def sync_bootstrap_tokens(session: AsyncSession, tokens: tuple[BootstrapToken, ...]) -> None:
    for t in tokens:
        await session.execute(
            pg_insert(Principal)
            .values(name=t.name, role=t.role.value, token_hash=token_hash(t.token))
            .on_conflict_do_update(
                index_elements=["name"],
                set_={"role": t.role.value, "token_hash": token_hash(t.token)},
            )
        )


async def identity_for_token(session: AsyncSession, token: str) -> Identity | None:
    p = await session.scalar(
        select(Principal).where(
            Principal.token_hash == token_hash(token), Principal.disabled.is_(False)
        )
    )
    return Identity(p.name, p.role) if p else None


async def identity_for_password(session: AsyncSession, name: str, password: str) -> Identity | None:
    p = await session.scalar(
        select(Principal).where(Principal.name == name, Principal.disabled.is_(False))
    )
    if p is None or not p.password_hash or not verify_password(password, p.password_hash):
        return None
    return Identity(p.name, p.role)
