"""A decision no worker validated in time is sent again under the same update ID until a
worker accepts or refuses it (soar/api/response.py `_resend_decision`)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from temporalio.client import WorkflowUpdateFailedError, WorkflowUpdateRPCTimeoutOrCancelledError

from soar.api import response
from soar.domain import DecisionRequest

REQ = DecisionRequest(
    approval_id="ap-1", decision="approve", actor="bob", role="approver", channel="api"
)


class Handle:
    """Stands in for a Temporal workflow handle: times out `timeouts` times, then answers."""

    def __init__(self, timeouts: int, then: BaseException | None = None) -> None:
        self.timeouts = timeouts
        self.then = then
        self.calls: list[dict[str, Any]] = []

    async def start_update(self, name: str, arg: object, **kw: Any) -> object:
        self.calls.append({"name": name, "arg": arg, **kw})
        if len(self.calls) <= self.timeouts:
            raise WorkflowUpdateRPCTimeoutOrCancelledError()
        if self.then is not None:
            raise self.then
        return object()


@pytest.fixture(autouse=True)
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "RESEND_EVERY_SECONDS", 0.01)


async def test_resends_under_the_same_id_until_accepted() -> None:
    handle = Handle(timeouts=3)
    await asyncio.wait_for(response._resend_decision(handle, REQ, "decide-x"), timeout=5)
    assert len(handle.calls) == 4
    assert {c["id"] for c in handle.calls} == {"decide-x"}
    assert all(c["arg"] is REQ for c in handle.calls)


async def test_stops_when_refused() -> None:
    handle = Handle(timeouts=1, then=WorkflowUpdateFailedError(RuntimeError("already decided")))
    await asyncio.wait_for(response._resend_decision(handle, REQ, "decide-y"), timeout=5)
    assert len(handle.calls) == 2


async def test_gives_up_after_the_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(response, "RESEND_FOR_SECONDS", 0.1)
    handle = Handle(timeouts=10**6)
    await asyncio.wait_for(response._resend_decision(handle, REQ, "decide-z"), timeout=5)
    assert 1 <= len(handle.calls) < 50
