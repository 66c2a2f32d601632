"""What `make run` (`soar up`) shows while it runs: one line per detection received, block
applied or lifted, approval opened and decision, read from the action log as it is sealed.

The log is the record of every step (written once, whatever retries), so following it gives
each line exactly once and in order, from whichever worker did the step. A line names what
happened and to whom (subject, target, incident); never a prompt, its excerpt, a comment or
any secret. Every value comes from outside (a source, an approver, a detection) and is
bounded and escaped for the terminal."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy import Engine, func, select

from soar import actions
from soar.audit import formats, query
from soar.audit.query import LogRow
from soar.db import make_sync_engine
from soar.escape import terminal_text
from soar.models import ActionLogEntry

VALUE_MAX = 80  # characters of one outside value on a console line
BATCH = 500


def _v(value: Any) -> str:
    """An outside value for a console line (rich markup): bounded, shown inert."""
    text = "" if value is None else str(value)
    if len(text) > VALUE_MAX:
        text = text[: VALUE_MAX - 1] + "\u2026"
    return terminal_text(text)


def _clock(at: Any) -> str:
    return formats.iso(at)[11:19]


def _until(value: Any) -> str:
    return f" until {_v(str(value)[11:19])}Z" if value else ""


def _detection(row: LogRow, d: dict[str, Any]) -> str:
    source = str(row["actor"]).removeprefix("source:")
    confidence = d.get("confidence")
    conf = f" {confidence:.2f}" if isinstance(confidence, int | float) else ""
    return (
        f"detection  {_v(row['technique'])} {_v(d.get('severity'))}{conf} from {_v(source)} "
        f"on {_v(row['subject'])} (incident {_v(row['incident_id'])})"
    )


def _applied(row: LogRow, d: dict[str, Any]) -> str | None:
    found = actions.find(str(row["action"]))
    if found is None or not found.enforces:  # tickets and notices are not containment
        return None
    how = "" if d.get("risk") != "low" else " (automatic)"
    return (
        f"applied    {_v(found.past)} {_v(d.get('target'))}{_until(d.get('until'))}{how} "
        f"(incident {_v(row['incident_id'])})"
    )


def _lifted(row: LogRow, d: dict[str, Any]) -> str:
    return (
        f"lifted     {_v(actions.label(str(row['action'])))} {_v(d.get('target'))} "
        f"({_v(row['outcome'])}; incident {_v(row['incident_id'])})"
    )


def _requested(row: LogRow, d: dict[str, Any]) -> str:
    return (
        f"approval   {_v(actions.label(str(row['action'])))} {_v(d.get('target'))} waits for "
        f"an approver{_until(d.get('expires_at'))} (approval {_v(d.get('approval_id'))}, "
        f"incident {_v(row['incident_id'])})"
    )


def _decided(row: LogRow, d: dict[str, Any]) -> str:
    return (
        f"decision   {_v(row['outcome'])} by {_v(row['actor'])}: "
        f"{_v(actions.label(str(row['action'])))} (approval {_v(d.get('approval_id'))}, "
        f"incident {_v(row['incident_id'])})"
    )


def _expired(row: LogRow, d: dict[str, Any]) -> str:
    return (
        f"decision   expired, not taken: {_v(actions.label(str(row['action'])))} "
        f"(approval {_v(d.get('approval_id'))}, incident {_v(row['incident_id'])})"
    )


_LINES: dict[str, Callable[[LogRow, dict[str, Any]], str | None]] = {
    "detection.received": _detection,
    "action.applied": _applied,
    "action.rolled_back": _lifted,
    "approval.requested": _requested,
    "approval.decided": _decided,
    "approval.expired": _expired,
}
EVENTS = tuple(_LINES)


def console_line(row: LogRow) -> str | None:
    """The console line of one action-log row (rich markup, outside values escaped), or None
    for a row the console does not show."""
    make = _LINES.get(str(row["event"]))
    if make is None:
        return None
    details = row.get("details")
    line = make(row, details if isinstance(details, dict) else {})
    return None if line is None else f"[dim]{_clock(row['at'])}[/dim] {line}"


class ConsoleFeed:
    """The new lines since the last `poll`, from the sealed action log; starts at its head
    (a restart does not replay the past)."""

    def __init__(self, database_url: str) -> None:
        self._engine: Engine = make_sync_engine(database_url)
        with self._engine.connect() as conn:
            head = conn.execute(select(func.max(ActionLogEntry.seq))).scalar()
        self.after = int(head or 0)
        self.failing = False  # the last poll failed (the caller says so once)

    def poll(self) -> list[str]:
        out: list[str] = []
        with self._engine.connect() as conn:
            while True:
                stmt = query.log_select(query.AuditFilter(), after_seq=self.after, limit=BATCH)
                rows = [query.as_row(r) for r in conn.execute(stmt)]
                for row in rows:
                    self.after = int(row["seq"])
                    line = console_line(row)
                    if line is not None:
                        out.append(line)
                if len(rows) < BATCH:
                    return out

    def close(self) -> None:
        self._engine.dispose()
