"""The Slack Web API client, with each call counted, timed and traced (`outbound`)."""

from __future__ import annotations

from typing import Any

from slack_sdk import WebClient
from slack_sdk.web import SlackResponse

from soar.observability.outbound import outbound


class TracedWebClient(WebClient):
    """`slack_sdk.WebClient` whose every method (`chat_postMessage`, `chat_update`, ...)
    goes through `api_call`, wrapped here; its retries count as one call."""

    def api_call(self, api_method: str, *args: Any, **kwargs: Any) -> SlackResponse:
        with outbound("slack", api_method):
            return super().api_call(api_method, *args, **kwargs)
