"""A real SMTP server for tests: aiosmtpd on 127.0.0.1, on a free port, in its own thread,
keeping every message it accepts. It asks for AUTH (PLAIN / LOGIN, allowed without TLS on
the loopback) when given credentials, so a client that does not log in is refused.

Usage::

    with SmtpSink(user="soar", password="p@ss") as smtp:
        ...  # point SOAR_SMTP_URL at smtp.url
        [mail] = await smtp.wait_for(lambda m: m["To"] == "alice@example.com")
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import threading
import time
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, Envelope, LoginPassword, Session

from soar.stack.proc import free_port

__all__ = ["SmtpSink"]


class SmtpSink:
    def __init__(self, *, user: str | None = None, password: str | None = None) -> None:
        self.messages: list[EmailMessage] = []
        self.envelopes: list[tuple[str, list[str]]] = []
        self.logins: list[str] = []
        self._lock = threading.Lock()
        self.port = free_port()
        sink = self

        class Handler:
            async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
                raw = envelope.original_content or envelope.content or b""
                assert isinstance(raw, bytes)
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                assert isinstance(msg, EmailMessage)
                with sink._lock:
                    sink.messages.append(msg)
                    sink.envelopes.append((envelope.mail_from or "", list(envelope.rcpt_tos)))
                return "250 OK"

        def authenticate(
            server: Any, session: Session, envelope: Envelope, mechanism: str, data: Any
        ) -> AuthResult:
            ok = (
                isinstance(data, LoginPassword)
                and data.login.decode() == user
                and data.password.decode() == password
            )
            if ok:
                sink.logins.append(user or "")
            return AuthResult(success=ok)

        extra: dict[str, Any] = {}
        if user is not None:
            extra = {
                "authenticator": authenticate,
                "auth_required": True,
                "auth_require_tls": False,
            }
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, **extra)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def __enter__(self) -> SmtpSink:
        self.controller.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.controller.stop()

    def received(self) -> list[EmailMessage]:
        with self._lock:
            return list(self.messages)

    async def wait_for(
        self, match: Callable[[EmailMessage], bool], *, count: int = 1, timeout: float = 15.0
    ) -> list[EmailMessage]:
        """Polls without blocking the event loop (the worker under test may run in it)."""
        deadline = time.monotonic() + timeout
        while True:
            found = [m for m in self.received() if match(m)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                subjects = [str(m["Subject"]) for m in self.received()]
                raise AssertionError(f"{count} matching mails not within {timeout}s: {subjects}")
            await asyncio.sleep(0.05)
