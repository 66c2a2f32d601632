"""Slack: the approval channel (messages, reminders, outcomes) and the incident notices,
through one shared `slack_sdk.WebClient` per process.

Slack calls are synchronous (run in a thread by the channel's async methods). Rate limits (429 with
Retry-After), Slack 500/503 and dropped connections are retried by the SDK's own retry
handlers; whatever still fails raises `SlackApiError`, and the calling activity decides:
Temporal retries the announcement in the background, the reminder and the outcome are
logged and given up. Nothing here ever blocks containment or a decision.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from datetime import timedelta
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError
from slack_sdk.http_retry.builtin_handlers import (
    ConnectionErrorRetryHandler,
    RateLimitErrorRetryHandler,
    ServerErrorRetryHandler,
)
from slack_sdk.http_retry.handler import RetryHandler
from slack_sdk.http_retry.request import HttpRequest
from slack_sdk.http_retry.response import HttpResponse
from slack_sdk.http_retry.state import RetryState
from slack_sdk.webhook import WebhookClient
from temporalio.exceptions import ApplicationError

from approvals import slack_blocks as blocks
from approvals.channels import Outcome, Record
from soar.config import Settings
from soar.connectors import ApprovalBrief, ChannelMessage, IncidentBrief, PostedMessage
from soar.observability.slack import TracedWebClient

# Each Web API call, retries included, must finish well inside the activities' 30 s
# start-to-close timeout: 3 attempts x 5 s plus backoff, and at most _MAX_RATE_LIMIT_WAIT
# asleep on a 429.
_HTTP_TIMEOUT_SECONDS = 5
_MAX_RATE_LIMIT_WAIT = 10


def retry_after(headers: Mapping[str, Any] | None) -> int | None:
    """Seconds from a Retry-After header (values may be lists, names any case)."""
    for key, value in (headers or {}).items():
        if key.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) and value else value
            with contextlib.suppress(TypeError, ValueError):
                return max(0, int(raw))
    return None


class BoundedRateLimitRetryHandler(RateLimitErrorRetryHandler):
    """Sleeps out a short Retry-After in the calling thread, as the SDK's handler does; a
    long one fails the call instead, so that a Temporal retry waits (without holding a
    thread past the activity's timeout, which could post the same message twice)."""

    def __init__(self, *, max_retry_count: int = 2, max_wait: int = _MAX_RATE_LIMIT_WAIT):
        super().__init__(max_retry_count=max_retry_count)
        self.max_wait = max_wait

    def _can_retry(
        self,
        *,
        state: RetryState,
        request: HttpRequest,
        response: HttpResponse | None = None,
        error: Exception | None = None,
    ) -> bool:
        if not super()._can_retry(state=state, request=request, response=response, error=error):
            return False
        wait = retry_after(response.headers if response else None)
        return wait is None or wait <= self.max_wait


def retry_handlers() -> list[RetryHandler]:
    """429 (sleeping Retry-After), 500/503 (backoff) and dropped connections."""
    return [
        BoundedRateLimitRetryHandler(max_retry_count=2),
        ServerErrorRetryHandler(max_retry_count=2),
        ConnectionErrorRetryHandler(max_retry_count=2),
    ]


def make_web_client(settings: Settings) -> WebClient:
    token = settings.slack_bot_token.get_secret_value() if settings.slack_bot_token else None
    base_url = (
        settings.slack_api_url
        if settings.slack_api_url.endswith("/")
        else (settings.slack_api_url + "/")
    )
    return TracedWebClient(
        token=token,
        base_url=base_url,
        timeout=_HTTP_TIMEOUT_SECONDS,
        retry_handlers=retry_handlers(),
    )


class SlackChannel:
    """Slack as an approval channel (`approvals.channels.ApprovalChannel`): the interactive
    message in SOAR_SLACK_APPROVAL_CHANNEL, a threaded reminder, the message rewritten with
    the outcome. Also the `soar.connectors.Notifier` for incident notices."""

    name = "slack"
    enabled = True

    def __init__(self, settings: Settings, client: WebClient | None = None) -> None:
        if not settings.slack_approval_channel:
            raise ValueError("SOAR_SLACK_APPROVAL_CHANNEL is required for Slack")
        self.channel = settings.slack_approval_channel
        self.client = client or make_web_client(settings)

    def notice(self, incident: IncidentBrief, text: str) -> None:
        self.client.chat_postMessage(
            channel=self.channel,
            text=blocks.escape(text),
            blocks=blocks.notice_blocks(incident, text),
            unfurl_links=False,
        )

    # --- the approval channel ---------------------------------------------------------------

    async def announce(self, approval: ApprovalBrief, record: Record) -> None:
        if approval.sent(self.name):
            return  # already posted by an earlier attempt
        posted = await asyncio.to_thread(self.post_approval, approval)
        await record(ChannelMessage(self.name, "announce", posted.channel, posted.ts))

    async def remind(self, approval: ApprovalBrief, record: Record) -> None:
        posted = approval.sent(self.name)
        if not posted or approval.sent(self.name, "remind"):
            return  # never announced (nothing to reply to), or reminded already
        first = posted[0]
        resp = await asyncio.to_thread(
            self.client.chat_postMessage,
            channel=first.conversation,
            thread_ts=first.message_id,
            text=blocks.reminder_text(approval),
            unfurl_links=False,
        )
        await record(
            ChannelMessage(self.name, "remind", first.conversation, str(resp.get("ts", "")))
        )

    async def show_outcome(self, approval: ApprovalBrief, outcome: Outcome, record: Record) -> None:
        for m in approval.sent(self.name):
            await asyncio.to_thread(
                self.update_message,
                approval,
                m.conversation,
                m.message_id,
                outcome.status,
                outcome.by,
                outcome.at,
            )

    async def expire(self, approval: ApprovalBrief, outcome: Outcome, record: Record) -> None:
        await self.show_outcome(approval, outcome, record)

    # --- Slack calls ------------------------------------------------------------------------

    def post_approval(self, approval: ApprovalBrief) -> PostedMessage:
        try:
            resp = self.client.chat_postMessage(
                channel=self.channel,
                text=blocks.approval_text(approval),
                blocks=blocks.approval_blocks(approval),
                unfurl_links=False,
                unfurl_media=False,
            )
        except SlackApiError as exc:
            wait = retry_after(exc.response.headers) if exc.response.status_code == 429 else None
            if wait is None:
                raise
            # Still rate limited: the activity's next attempt waits as long as Slack asks.
            raise ApplicationError(
                f"Slack rate limit on chat.postMessage; retry after {wait} s",
                type="SlackRateLimited",
                next_retry_delay=timedelta(seconds=wait),
            ) from None
        # Slack answers with the channel ID even when we posted to a channel name.
        return PostedMessage(channel=str(resp["channel"]), ts=str(resp["ts"]))

    def update_message(
        self,
        approval: ApprovalBrief,
        channel: str | None,
        ts: str | None,
        status: str,
        by: str | None,
        at: str,
    ) -> None:
        """Rewrite the approval message: without its buttons once decided or expired, with
        the count of approvals while a quorum is still short (buttons kept). Idempotent: the
        worker (after recording the decision) and the interactivity route may both call it."""
        if not channel or not ts:
            return
        if status == "pending":
            self.client.chat_update(
                channel=channel,
                ts=ts,
                text=blocks.outcome_text(approval, status, by, at),
                blocks=blocks.approval_blocks(approval),
            )
            return
        self.client.chat_update(
            channel=channel,
            ts=ts,
            text=blocks.outcome_text(approval, status, by, at),
            blocks=blocks.outcome_blocks(approval, status, by, at),
        )


def post_to_response_url(url: str, body: dict[str, object]) -> int:
    """Answer an interaction through its response_url (valid 30 minutes, 5 posts). Returns
    the HTTP status; the URL itself is a credential for that message, so it is never logged."""
    hook = WebhookClient(
        url,
        timeout=_HTTP_TIMEOUT_SECONDS,
        retry_handlers=retry_handlers(),
    )
    return hook.send_dict(dict(body)).status_code
