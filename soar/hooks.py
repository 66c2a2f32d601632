"""Outbound action hooks: one HTTP endpoint per action type (e.g. an LLM gateway's admin
API), signed with Standard Webhooks. The `webhook-id` is the action's idempotency key, the
same on every retry, so the receiver can drop a repeat."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
from standardwebhooks.webhooks import Webhook

from soar.contracts import ActionRef
from soar.observability import outbound


class HookError(RuntimeError):
    pass


class HookClient:
    def __init__(self, urls: dict[str, str], secret: str | None, *, timeout: float = 10.0) -> None:
        self.urls = urls
        self._signer = Webhook(secret) if secret else None
        self._client = httpx.Client(timeout=timeout)

    def configured(self, action_type: str) -> bool:
        return action_type in self.urls

    def deliver(self, action: ActionRef, event: str) -> int | None:
        url = self.urls.get(action.action_type)
        if url is None:
            return None
        msg_id = f"{action.action_id}:{event}"
        body = json.dumps(
            {
                "type": f"action.{event}",
                "action_id": action.action_id,
                "idempotency_key": msg_id,
                "action_type": action.action_type,
                "tenant": action.tenant,
                "target": action.target,
                "incident_id": action.incident_id,
                "technique": action.technique,
                "expires_at": action.expires_at,
            },
            sort_keys=True,
        )
        now = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "idempotency-key": msg_id,
        }
        if self._signer is not None:
            headers["webhook-signature"] = self._signer.sign(msg_id, now, body)
        # Counted, timed and traced; the receiver gets the trace's `traceparent`.
        with outbound("hook", action.action_type, headers):
            try:
                resp = self._client.post(url, content=body, headers=headers)
            except httpx.HTTPError as exc:
                raise HookError(f"{action.action_type} hook unreachable: {exc}") from exc
            if resp.status_code >= 300:
                raise HookError(f"{action.action_type} hook answered {resp.status_code}")
        return resp.status_code
