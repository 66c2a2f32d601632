"""Shared request dependencies: the app's state, database sessions, bearer-token identity."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from temporalio.client import Client

from soar.auth import Identity, identity_for_token
from soar.config import Settings


@dataclass
class AppState:
    settings: Settings
    factory: async_sessionmaker[AsyncSession]
    temporal: Client | None = None
    temporal_error: str | None = None
    extras: dict[str, object] = field(default_factory=dict)


def get_state(request: Request) -> AppState:
    state: AppState = request.app.state.soar
    return state


StateDep = Annotated[AppState, Depends(get_state)]


async def get_session(state: StateDep) -> AsyncIterator[AsyncSession]:
    async with state.factory() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def current_identity(request: Request, session: SessionDep) -> Identity:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401, "a bearer token is required", headers={"WWW-Authenticate": "Bearer"}
        )
    identity = await identity_for_token(session, token.strip())
    if identity is None:
        raise HTTPException(
            401, "unknown or disabled token", headers={"WWW-Authenticate": "Bearer"}
        )
    return identity


IdentityDep = Annotated[Identity, Depends(current_identity)]


def require_roles(*roles: str) -> Any:
    async def check(identity: IdentityDep) -> Identity:
        if identity.role not in roles:
            raise HTTPException(
                403, f"role {identity.role!r} may not do this (needs {' or '.join(roles)})"
            )
        return identity

    return Depends(check)


def temporal_or_503(state: AppState) -> Client:
    if state.temporal is None:
        raise HTTPException(503, f"Temporal is not reachable: {state.temporal_error or 'starting'}")
    return state.temporal
