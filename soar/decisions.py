"""Signed approval decisions: nobody without the decision key can approve.

The one decision gate (:func:`soar.api.response.send_decision`), reached by every channel
after it has checked the principal, signs the whole request (approval id, decision, actor,
role, channel, comment, time, nonce) with HMAC-SHA256 under `SOAR_DECISION_KEY`. The
workflow's `decide` validator accepts only a request whose signature verifies under a key
this worker holds and whose time is fresh, so a client that can merely reach Temporal's port
(and could otherwise send the update with `role="admin"` and any name) is refused.

The key: `SOAR_DECISION_KEY` (several, comma-separated, while one is rotated: the first
signs, any verifies). Unset: the one `soar up` generated into SOAR_HOME, else a per-process
key (the API and the worker then agree only inside one process, as in the tests). Required
in production.

An analyst's actions (lift, extend, contain now, close, note: `AnalystRequest`, the
`analyst_action` update) are signed the same way by their gate (soar/api/analyst.py), under
their own tag, so a signed action can never pass as a decision or the reverse.

Replay of a signed decision: the approval id is signed, and an approval is decided once
(first decision wins), so a captured request can at most repeat a decision already taken,
and only within the freshness window.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import json
import logging
import secrets
from datetime import datetime, timedelta
from typing import TypeVar

from soar.config import Settings
from soar.domain import AnalystRequest, DecisionRequest

log = logging.getLogger("soar.decisions")

MAX_AGE = timedelta(minutes=5)  # a decision older than this is refused (stale)
MAX_SKEW = timedelta(minutes=1)  # ... and one from further in the future
_VERSION = "v1"
_ANALYST_VERSION = "analyst-v1"
_installed: list[bytes] = []
_process_key: bytes | None = None


def _message(req: DecisionRequest | AnalystRequest) -> bytes:
    if isinstance(req, AnalystRequest):
        # Its own tag: an analyst's signed request can never pass as a decision.
        return json.dumps(
            [
                _ANALYST_VERSION,
                req.kind,
                req.actor,
                req.role,
                req.reason,
                req.action_id,
                req.seconds,
                req.disposition,
                req.channel,
                req.issued_at,
                req.nonce,
            ],
            separators=(",", ":"),
            ensure_ascii=True,
        ).encode()
    fields = [
        _VERSION,
        req.approval_id,
        req.decision,
        req.actor,
        req.role,
        req.channel,
        req.comment,
        req.issued_at,
        req.nonce,
    ]
    if req.approver:
        # Who counts towards a quorum ("distinct approvers"): signed too, so a captured
        # request cannot be replayed as someone else's approval. Empty for one-approver
        # decisions, whose signed form stays the v1 one.
        fields.append(req.approver)
    return json.dumps(fields, separators=(",", ":"), ensure_ascii=True).encode()


_Signed = TypeVar("_Signed", DecisionRequest, AnalystRequest)


def _mac(key: bytes, req: DecisionRequest | AnalystRequest) -> str:
    return hmac.new(key, _message(req), hashlib.sha256).hexdigest()


def sign_decision(req: _Signed, key: bytes, *, now: datetime) -> _Signed:
    """The request with its time, a fresh nonce and the signature over all of it."""
    stamped = dataclasses.replace(
        req, issued_at=now.isoformat(), nonce=secrets.token_hex(16), signature=""
    )
    return dataclasses.replace(stamped, signature=_mac(key, stamped))


def refusal(
    req: DecisionRequest | AnalystRequest, keys: list[bytes], *, now: datetime
) -> str | None:
    """Why the request must be refused (unsigned, bad signature, stale), or None."""
    if not keys:
        return "this worker holds no decision key (SOAR_DECISION_KEY)"
    if not req.signature:
        return "the decision is not signed (decisions go through the API, Slack or the web UI)"
    unsigned = dataclasses.replace(req, signature="")
    if not any(hmac.compare_digest(_mac(k, unsigned), req.signature) for k in keys):
        return "the decision's signature does not verify"
    try:
        issued = datetime.fromisoformat(req.issued_at)
        age = now - issued
    except (ValueError, TypeError):
        return "the decision's time is not a valid timestamp"
    if age > MAX_AGE:
        return f"the decision is stale (signed {int(age.total_seconds())} s ago)"
    if age < -MAX_SKEW:
        return "the decision is signed in the future"
    return None


def install_keys(keys: tuple[bytes, ...]) -> None:
    """Makes `keys` verify decisions in this process's workflows (the worker calls this).
    Keys add up: several workers in one process (tests) each keep theirs."""
    for k in keys:
        if k not in _installed:
            _installed.append(k)


def installed_keys() -> list[bytes]:
    return _installed


def parse_keys(raw: str) -> tuple[bytes, ...]:
    return tuple(k.strip().encode() for k in raw.split(",") if k.strip())


def decision_keys(settings: Settings) -> tuple[bytes, ...]:
    """The keys from the settings (first signs), else SOAR_HOME's, else this process's."""
    if settings.decision_key is not None and settings.decision_key.get_secret_value():
        return parse_keys(settings.decision_key.get_secret_value())
    path = settings.home / "decision-key"
    try:
        found = parse_keys(path.read_text())
    except OSError:
        found = ()
    if found:
        return found
    global _process_key
    if _process_key is None:
        log.warning(
            "SOAR_DECISION_KEY is not set: approval decisions verify only inside this "
            "process (set it for the API and every worker alike)"
        )
        _process_key = secrets.token_urlsafe(32).encode()
    return (_process_key,)
