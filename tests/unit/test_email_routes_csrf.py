"""The CSRF check of the e-mailed approval page: any submitted value is a yes or a no."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from pydantic import SecretStr

from approvals import email_routes as routes

TOKEN = "link-token"
CSRF = "c" * 43


def state() -> Any:
    settings = SimpleNamespace(session_secret=SecretStr("s" * 32))
    return SimpleNamespace(settings=settings, extras={"ui_session_key": b"k" * 32}, factory=None)


def request(st: Any, csrf: str = CSRF, token: str = TOKEN) -> Any:
    return SimpleNamespace(cookies={routes.CSRF_COOKIE: routes._csrf_cookie(st, token, csrf)})


def app(st: Any) -> FastAPI:
    app = FastAPI()
    app.include_router(routes.router)
    app.state.soar = st
    return app


@pytest.mark.parametrize("submitted", ["\u00e9t\u00e9", "c" * 42 + "\u00e9", "\U0001f600"])
def test_a_non_ascii_form_token_gets_the_refusal_page_not_a_500(submitted: str) -> None:
    st = state()
    client = TestClient(app(st), base_url="https://soar.example.com")
    client.cookies.set(routes.CSRF_COOKIE, request(st).cookies[routes.CSRF_COOKIE])
    r = client.post(f"/approvals/email/{TOKEN}", data={"csrf": submitted, "decision": "approve"})
    assert r.status_code == 403 and "CSRF" in r.text


def test_the_page_token_passes() -> None:
    st = state()
    assert routes._csrf_ok(st, request(st), TOKEN, CSRF)


@pytest.mark.parametrize(
    "submitted", ["", "c" * 42, "c" * 42 + "\u00e9", "\u00e9" * 43, "\U0001f600", "\ufffd"]
)
def test_a_wrong_token_is_refused_not_an_error(submitted: str) -> None:
    st = state()
    assert routes._csrf_ok(st, request(st), TOKEN, submitted) is False


def test_a_non_ascii_cookie_value_is_compared_too() -> None:
    st = state()
    assert routes._csrf_ok(st, request(st, csrf="\u00e9t\u00e9"), TOKEN, "\u00e9t\u00e9")
    assert not routes._csrf_ok(st, request(st, csrf="\u00e9t\u00e9"), TOKEN, "ete")


def test_the_token_of_another_link_is_refused() -> None:
    st = state()
    assert not routes._csrf_ok(st, request(st, token="other"), TOKEN, CSRF)
    assert not routes._csrf_ok(st, SimpleNamespace(cookies={}), TOKEN, CSRF)


def test_same_compares_text_of_any_kind() -> None:
    assert routes.same_text("abc", "abc") and not routes.same_text("abc", "ab\u00e9")
    assert not routes.same_text("a\ud800", "a")  # a lone surrogate is no error either
