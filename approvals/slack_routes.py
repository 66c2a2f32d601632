"""`POST /slack/interactions`: Approve / Reject clicks and the reason modal.

The raw body is verified with Slack's v0 signature (5-minute replay window) before anything
is parsed. Slack wants an answer within 3 seconds, so the route only acknowledges; the
decision runs as a background task and reports back through Slack (message update, or an
ephemeral refusal). Every decision goes through the same gate as the API
(`soar.api.response.send_decision`), so first-decision-wins holds across channels.

Approve is one click (behind a confirmation dialog): when an identity is being abused,
minutes matter. Reject opens a modal asking for an optional reason, which lands in the
audit log with the decision.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Annotated, Any, Literal
from urllib.parse import parse_qs

from fastapi import APIRouter, BackgroundTasks, HTTPException, Request, Response
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from slack_sdk.errors import SlackApiError
from slack_sdk.signature import SignatureVerifier
from sqlalchemy.ext.asyncio import AsyncSession

from activities.context import load_approval_brief
from approvals import slack
from approvals import slack_blocks as blocks
from approvals.principals import SlackDecider, slack_decider
from approvals.slack import post_to_response_url
from soar.api.body import BodyTooLarge, read_capped
from soar.api.deps import AppState, StateDep
from soar.api.jsonsafe import JSONRefused, parse_json
from soar.api.response import DecisionRefused, send_decision
from soar.audit.chain import LogEvent, append
from soar.bounds import has_unsafe_chars
from soar.connectors import ApprovalBrief
from soar.db import transaction
from soar.domain import DecisionRequest
from soar.models import Action, Approval, Incident

log = logging.getLogger("soar.slack")
router = APIRouter(tags=["slack"])

_MAX_BODY = 1024 * 1024  # Slack payloads carry the whole message; far below this
_MAX_ID = 80  # approvals.id; also keeps the refusal's event_key within its column


@dataclass(frozen=True)
class Click:
    """One Approve / Reject click, or the modal submission that follows a click."""

    approval_id: str
    decision: str
    user_id: str
    action_ts: str
    channel: str | None
    ts: str | None
    response_url: str | None
    trigger_id: str | None = None
    comment: str | None = None


@router.post("/slack/interactions", include_in_schema=False)
async def slack_interactions(
    request: Request, state: StateDep, background: BackgroundTasks
) -> Response:
    try:
        raw = await read_capped(request, _MAX_BODY)
    except BodyTooLarge:
        return JSONResponse({"error": "body too large"}, status_code=413)
    if not _verified(state, raw, request):
        return JSONResponse({"error": "invalid Slack signature"}, status_code=401)
    try:
        payload = await _payload(raw)
    except NotSlack as exc:
        return JSONResponse({"error": exc.message}, status_code=400)
    click = _click(payload) if payload is not None else None
    if click is not None:
        background.add_task(_handle_guarded, state, click)
    # An empty 200 acknowledges a click and closes a submitted modal.
    return Response(status_code=200)


_MAX_HEADER = 256  # a v0 signature is 67 characters, a timestamp 10


def _verified(state: AppState, raw: bytes, request: Request) -> bool:
    secret = state.settings.slack_signing_secret
    if secret is None or not secret.get_secret_value():
        return False  # nothing can be verified: refuse everything
    # Header bytes reach us decoded as latin-1: anything outside ASCII cannot be Slack's, and
    # hmac.compare_digest raises TypeError on a non-ASCII str instead of answering False.
    timestamp = request.headers.get("x-slack-request-timestamp")
    signature = request.headers.get("x-slack-signature")
    if not (_plain(timestamp) and _plain(signature)):
        return False
    assert timestamp is not None and signature is not None
    if not timestamp.isdigit():
        return False
    verifier = SignatureVerifier(secret.get_secret_value())
    try:
        return verifier.is_valid(raw, timestamp, signature)
    except (ValueError, TypeError):  # a body that is not UTF-8, or anything else odd
        return False


def _plain(header: str | None) -> bool:
    return header is not None and header.isascii() and 0 < len(header) <= _MAX_HEADER


# --- Slack's payloads, typed ------------------------------------------------------------------
# Only the fields we read; everything else Slack sends is ignored. A field of the wrong type
# is not Slack's: the request is refused with a 400 instead of failing deeper down.


def _identifier(value: str) -> str:
    if has_unsafe_chars(value):
        raise ValueError("contains control characters")
    return value


def _prose(value: str) -> str:
    if has_unsafe_chars(value, text=True, bidi=False):
        raise ValueError("contains control characters")
    return value


SlackId = Annotated[str, Field(max_length=255), AfterValidator(_identifier)]


class _Part(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


class SlackUser(_Part):
    id: SlackId


class SlackAction(_Part):
    action_id: SlackId | None = None
    # Slack's button value limit; ours carry an approval id
    value: Annotated[str, Field(max_length=2000), AfterValidator(_identifier)] | None = None
    action_ts: SlackId | None = None


class SlackContainer(_Part):
    channel_id: SlackId | None = None
    message_ts: SlackId | None = None


class SlackChannel(_Part):
    id: SlackId | None = None


class SlackMessage(_Part):
    ts: SlackId | None = None


Url = Annotated[str, Field(max_length=2000), AfterValidator(_identifier)]


class BlockActions(_Part):
    type: Literal["block_actions"]
    user: SlackUser
    actions: Annotated[list[SlackAction], Field(max_length=100)] = []
    container: SlackContainer | None = None
    channel: SlackChannel | None = None
    message: SlackMessage | None = None
    response_url: Url | None = None
    trigger_id: SlackId | None = None


class InputValue(_Part):
    # plain_text_input (our reason field allows 2000); other elements carry other keys
    value: Annotated[str, Field(max_length=10_000), AfterValidator(_prose)] | None = None


class ViewState(_Part):
    values: dict[str, dict[str, InputValue]] = {}


class SlackView(_Part):
    callback_id: SlackId | None = None
    private_metadata: Annotated[str, Field(max_length=3000)] = ""  # Slack's limit; JSON
    state: ViewState | None = None


class ViewSubmission(_Part):
    type: Literal["view_submission"]
    user: SlackUser
    view: SlackView


class OtherInteraction(_Part):
    """Shortcuts, closed modals and the like: acknowledged, nothing else."""

    type: SlackId


Interaction = BlockActions | ViewSubmission


class NotSlack(ValueError):
    """The payload is not shaped like Slack's; `message` says what is wrong, briefly."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False, include_input=False)[0]
    where = ".".join(str(p) for p in e["loc"]) or "payload"
    return f"not a Slack interaction payload: {where}: {e['msg']}"[:200]


async def _payload(raw: bytes) -> Interaction | None:
    """The interaction in the form body's `payload` field; None for interactions of a type
    we do not handle. NotSlack for anything that is not Slack's shape."""
    try:
        form = parse_qs(raw.decode("utf-8"), strict_parsing=False, max_num_fields=20)
        values = form["payload"]
    except (UnicodeDecodeError, KeyError, ValueError):
        raise NotSlack("no interaction payload") from None
    if len(values) != 1:
        raise NotSlack("no interaction payload")
    try:
        data = await parse_json(values[0].encode())
    except JSONRefused as exc:
        raise NotSlack(f"payload: {exc.message}") from None
    if not isinstance(data, dict):
        raise NotSlack("not a Slack interaction payload: payload: must be an object")
    try:
        kind = OtherInteraction.model_validate(data).type
        if kind == "block_actions":
            return BlockActions.model_validate(data)
        if kind == "view_submission":
            return ViewSubmission.model_validate(data)
    except ValidationError as exc:
        raise NotSlack(_first_error(exc)) from None
    return None


def _click(p: Interaction) -> Click | None:
    """The decision asked for, or None for interactions that are not ours."""
    user_id = p.user.id
    if not user_id:
        return None
    if isinstance(p, BlockActions):
        action = next((a for a in p.actions if a.action_id in blocks.DECISION_ACTIONS), None)
        if action is None or action.action_id is None:
            return None
        if not action.value or len(action.value) > _MAX_ID:
            return None
        container = p.container or SlackContainer()
        return Click(
            approval_id=action.value,
            decision=blocks.DECISION_ACTIONS[action.action_id],
            user_id=user_id,
            action_ts=action.action_ts or p.trigger_id or "",
            channel=container.channel_id or (p.channel.id if p.channel else None),
            ts=container.message_ts or (p.message.ts if p.message else None),
            response_url=p.response_url,
            trigger_id=p.trigger_id,
        )
    view = p.view
    if view.callback_id != blocks.MODAL_CALLBACK_ID:
        return None
    try:
        ctx = blocks.ModalContext.load(view.private_metadata)
    except (ValueError, KeyError):
        return None
    if ctx.decision not in blocks.DECISION_ACTIONS.values() or len(ctx.approval_id) > _MAX_ID:
        return None
    return Click(
        approval_id=ctx.approval_id,
        decision=ctx.decision,
        user_id=user_id,
        action_ts=ctx.action_ts,
        channel=ctx.channel,
        ts=ctx.ts,
        response_url=ctx.response_url,
        comment=_comment(view),
    )


def _comment(view: SlackView) -> str | None:
    """The reason typed into the modal (see `blocks.reason_modal`)."""
    values = view.state.values if view.state else {}
    entered = values.get(blocks.REASON_BLOCK_ID, {}).get(blocks.REASON_ACTION_ID)
    value = entered.value if entered else None
    if value is None or not value.strip():
        return None
    return value.strip()[: blocks.COMMENT_MAX]


# --- background: decide, report ---------------------------------------------------------------


async def _handle_guarded(state: AppState, click: Click) -> None:
    try:
        await handle_click(state, click)
    except Exception:  # a background task has no caller to report to
        log.exception("Slack interaction on %s failed", click.approval_id)


def notifier_of(state: AppState) -> slack.SlackChannel | None:
    """One Slack client per API process, made on first use."""
    if not state.settings.slack_enabled:
        return None
    found = state.extras.get("slack_notifier")
    if not isinstance(found, slack.SlackChannel):
        found = slack.SlackChannel(state.settings)
        state.extras["slack_notifier"] = found
    return found


async def handle_click(state: AppState, click: Click) -> None:
    # Everything that talks to Slack happens after the session is closed: a slow or
    # unreachable Slack must never hold a database connection.
    refusal: str | None = None
    brief: ApprovalBrief | None = None
    async with state.factory() as session:
        decider = await slack_decider(
            session=session, settings=state.settings, slack_user_id=click.user_id
        )
        if decider is None:
            refusal = (
                "nothing changed: you are not allowed to decide "
                "approvals (ask an admin to grant your Slack ID)"
            )
        else:
            row = await session.get(Approval, click.approval_id)
            if row is None or row.status != "pending":
                refusal = _not_pending(click.approval_id, row)
            elif click.decision == "reject" and click.trigger_id and notifier_of(state) is not None:
                brief = await load_approval_brief(
                    session=session, settings=state.settings, approval_id=click.approval_id
                )
    if refusal is not None:
        await refuse(state, click, refusal)
        return
    assert decider is not None
    if brief is not None:
        await _open_reason_modal(state, brief, click)
        return
    await decide(state, click, decider)


def _not_pending(approval_id: str, row: Approval | None) -> str:
    if row is None:
        return f"approval {approval_id} does not exist"
    by = f" by {row.decided_by}" if row.decided_by else ""
    return f"nothing changed: approval {approval_id} is already {row.status}{by}"


async def _open_reason_modal(state: AppState, brief: ApprovalBrief | None, click: Click) -> None:
    notifier = notifier_of(state)
    if notifier is None or brief is None or not click.trigger_id:
        return
    ctx = blocks.ModalContext(
        approval_id=click.approval_id,
        decision=click.decision,
        channel=click.channel,
        ts=click.ts,
        response_url=click.response_url,
        action_ts=click.action_ts,
    )
    try:
        await asyncio.to_thread(
            notifier.client.views_open,
            trigger_id=click.trigger_id,
            view=blocks.reason_modal(brief, ctx),
        )
    except SlackApiError as exc:
        # The trigger is only valid for 3 seconds; say so instead of failing silently.
        log.warning("could not open the reason modal for %s: %s", click.approval_id, exc)
        await _ephemeral(
            state,
            click,
            "could not open the reason form; click Reject again or decide in the web UI",
        )


async def decide(state: AppState, click: Click, decider: SlackDecider) -> None:
    req = DecisionRequest(
        approval_id=click.approval_id,
        decision=click.decision,
        actor=decider.actor,
        role=decider.role,
        channel="slack",
        comment=click.comment,
        approver=decider.principal,
    )
    refusal: str | None = None
    unreachable: str | None = None
    async with state.factory() as session:
        try:
            result = await send_decision(state, session, click.approval_id, req)
        except DecisionRefused as exc:
            # Someone decided between our check and the update: say who, when we know.
            row = await session.get(Approval, click.approval_id, populate_existing=True)
            decided = row is not None and row.status != "pending"
            refusal = _not_pending(click.approval_id, row) if decided else f"nothing changed: {exc}"
        except HTTPException as exc:  # Temporal not reachable: nothing was decided
            unreachable = f"could not record the decision ({exc.detail}); try again in a minute"
        else:
            brief = await load_approval_brief(
                session=session, settings=state.settings, approval_id=click.approval_id
            )
    # Slack is told after the session is closed (a slow Slack holds no connection).
    if refusal is not None:
        await refuse(state, click, refusal)
        return
    if unreachable is not None:
        await _ephemeral(state, click, unreachable)
        return
    notifier = notifier_of(state)
    if notifier is None or brief is None:
        return
    # The worker updates the message too, right after recording the decision; this update
    # covers the message that was clicked and is the same content, so order does not matter.
    posted = brief.sent("slack")
    try:
        await asyncio.to_thread(
            notifier.update_message,
            brief,
            click.channel or (posted[0].conversation if posted else None),
            click.ts or (posted[0].message_id if posted else None),
            result.status,
            result.decided_by,
            result.decided_at,
        )
    except Exception as exc:  # the decision stands; the worker's update may still land
        log.warning("could not update the Slack message of %s: %s", click.approval_id, exc)


async def refuse(state: AppState, click: Click, reason: str) -> None:
    """Nothing changes; the attempt is logged with the Slack user ID and the user is told."""
    async with transaction(state.factory) as session:
        base = await _log_base(session, click.approval_id)
        await append(
            session,
            LogEvent(
                event_key=f"{click.approval_id}:slack-refused:{click.user_id}:{click.action_ts}",
                event="approval.refused",
                actor=f"slack:{click.user_id}",
                outcome="refused",
                details={
                    "approval_id": click.approval_id,
                    "decision": click.decision,
                    "channel": "slack",
                    "slack_user_id": click.user_id,
                    "reason": reason,
                },
                **base,
            ),
        )
    await _ephemeral(state, click, reason[:1].upper() + reason[1:] + ".")


async def _log_base(session: AsyncSession, approval_id: str) -> dict[str, Any]:
    row = await session.get(Approval, approval_id)
    if row is None:
        return {}
    inc = await session.get(Incident, row.incident_id)
    action = await session.get(Action, row.action_id)
    return {
        "incident_id": row.incident_id,
        "tenant": inc.tenant if inc else None,
        "subject": inc.subject_key if inc else None,
        "technique": inc.technique if inc else None,
        "action": action.action_type if action else None,
    }


def _slack_url(state: AppState, url: str) -> bool:
    """A response_url we may post to: Slack's own hooks host, or the host of the configured
    Slack API (a local fake in tests). Anything else in a payload is not followed."""
    from urllib.parse import urlsplit

    target = urlsplit(url)
    api = urlsplit(state.settings.slack_api_url)
    if target.scheme == "https" and target.hostname == "hooks.slack.com":
        return True
    return (target.scheme, target.netloc) == (api.scheme, api.netloc)


async def _ephemeral(state: AppState, click: Click, text: str) -> None:
    """Only the clicking user sees it: through the response_url when there is one, else
    chat.postEphemeral in the message's channel."""
    message = blocks.refusal_message(text)
    if click.response_url and _slack_url(state, click.response_url):
        try:
            status = await asyncio.to_thread(post_to_response_url, click.response_url, message)
            if status == 200:
                return
        except Exception as exc:  # fall through to chat.postEphemeral
            log.info("response_url failed for %s: %s", click.approval_id, type(exc).__name__)
    notifier = notifier_of(state)
    if notifier is None or not click.channel:
        return
    try:
        await asyncio.to_thread(
            notifier.client.chat_postEphemeral,
            channel=click.channel,
            user=click.user_id,
            text=message["text"],
        )
    except Exception as exc:  # a lost ephemeral must not hide the logged refusal
        log.warning("could not tell %s about %s: %s", click.user_id, click.approval_id, exc)
