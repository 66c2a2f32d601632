"""A local fake of the OpenAI chat-completions API, for tests that drive the real `openai`
client (``AsyncOpenAI(base_url=fake.url + "/v1")``).

``POST /v1/chat/completions`` records each request (headers and JSON body) in
:attr:`FakeOpenAI.requests` and answers like the API: ``{"id", "object": "chat.completion",
"created", "model", "choices": [{"index", "message": {"role", "content"}, "finish_reason"}],
"usage"}``. The content is :attr:`FakeOpenAI.reply` (a string, or a function of the request
body). Failure injection: :meth:`fail_next` (an HTTP status with the API's error body),
:attr:`delay` (seconds before answering: a slow provider), :meth:`malform_next` (a raw body
that is not what the API sends).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tests.fakes.base import Answer, LocalServer

__all__ = ["FakeOpenAI", "ModelCall", "summary_answer"]


def summary_answer(
    summary: str = "Prompt injection against the assistant, contained by a session block.",
    intent: str = "Make the assistant ignore its instructions.",
    steps: tuple[tuple[str, str | None], ...] = (("Tighten the guardrails.", "AML.M0020"),),
) -> str:
    return json.dumps(
        {
            "summary": summary,
            "likely_intent": intent,
            "next_steps": [{"step": s, "mitigation": m} for s, m in steps],
        }
    )


@dataclass
class ModelCall:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    raw: bytes


class FakeOpenAI(LocalServer):
    thread_name = "fake-openai"

    def __init__(self) -> None:
        super().__init__()
        self.requests: list[ModelCall] = []
        self.reply: str | Callable[[dict[str, Any]], str] = summary_answer()
        self.delay = 0.0
        self.usage = (120, 40)
        self._lock = threading.Lock()
        self._failures: list[tuple[int, str]] = []
        self._malformed: list[bytes] = []

    def fail_next(self, status: int = 500, count: int = 1, message: str = "boom") -> None:
        with self._lock:
            self._failures += [(status, message)] * count

    def malform_next(self, raw: bytes, count: int = 1) -> None:
        with self._lock:
            self._malformed += [raw] * count

    def _dispatch(self, method: str, path: str, headers: dict[str, str], body: bytes) -> Answer:
        if method != "POST" or not path.rstrip("/").endswith("/chat/completions"):
            return 404, {"error": {"message": "not found", "type": "invalid_request_error"}}, {}
        try:
            data = json.loads(body)
        except ValueError:
            return 400, {"error": {"message": "body is not JSON", "type": "invalid_request"}}, {}
        with self._lock:
            self.requests.append(ModelCall(path, headers, data, body))
            failure = self._failures.pop(0) if self._failures else None
            malformed = self._malformed.pop(0) if self._malformed else None
        if self.delay:
            time.sleep(self.delay)
        if failure is not None:
            status, message = failure
            return status, {"error": {"message": message, "type": "server_error"}}, {}
        if malformed is not None:
            return 200, malformed, {}
        content = self.reply(data) if callable(self.reply) else self.reply
        prompt, completion = self.usage
        return (
            200,
            {
                "id": f"chatcmpl-{len(self.requests)}",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": data.get("model", "fake"),
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": {
                    "prompt_tokens": prompt,
                    "completion_tokens": completion,
                    "total_tokens": prompt + completion,
                },
            },
            {},
        )
