"""Active blocks in memory: what an API replica and a gateway replica both keep.

Pure Python, no I/O. Keyed by ``(kind, tenant, target)`` so a check is one dict lookup and
a comparison of a float expiry with the clock; expiry is evaluated at lookup, never by a
timer, so an expired block stops blocking at its instant even if no lift has arrived yet.

An entry's `kind` is the target kind (`session`, `api_key`, `user`, `model`, ...) for a
block, and `<effect>:<target kind>` for any other effect (`throttle:session`): a client
that knows only blocks never mistakes a milder effect for one.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

KINDS = ("session", "api_key", "user")  # the identities of a subject
_FOREVER = float("inf")


def stored_kind(effect: str, kind: str) -> str:
    """The `kind` of an entry with this effect on a target of this kind."""
    return kind if effect == "block" else f"{effect}:{kind}"


def split_kind(stored: str) -> tuple[str, str]:
    """(effect, target kind) of an entry's `kind`."""
    effect, sep, kind = stored.partition(":")
    return (effect, kind) if sep else ("block", stored)


@dataclass(frozen=True, slots=True)
class Block:
    action_id: str
    kind: str
    tenant: str
    target: str
    until: datetime | None
    incident_id: str
    technique: str

    @property
    def until_ts(self) -> float:
        return self.until.timestamp() if self.until is not None else _FOREVER

    @property
    def effect(self) -> str:
        return split_kind(self.kind)[0]

    def as_event(self) -> dict[str, object]:
        """The `data:` of a stream event (CONTRACT.md, GET /v1/enforcement/stream)."""
        return {
            "kind": self.kind,
            "tenant": self.tenant,
            "target": self.target,
            "until": self.until.isoformat() if self.until is not None else None,
            "incident_id": self.incident_id,
            "technique": self.technique,
            "action_id": self.action_id,
        }

    @classmethod
    def from_event(cls, data: dict[str, object]) -> Block:
        """Parses a stream event's data; raises ValueError naming the bad field."""
        values: dict[str, str] = {}
        for name in ("action_id", "kind", "tenant", "target", "incident_id", "technique"):
            v = data.get(name)
            if not isinstance(v, str) or not v or len(v) > 512:
                raise ValueError(f"{name}: must be a non-empty string")
            values[name] = v
        raw_until = data.get("until")
        until: datetime | None = None
        if raw_until is not None:
            if not isinstance(raw_until, str) or len(raw_until) > 64:
                raise ValueError("until: must be an ISO 8601 timestamp or null")
            until = datetime.fromisoformat(raw_until)
            if until.tzinfo is None:
                until = until.replace(tzinfo=UTC)
        return cls(until=until, **values)


class BlockTable:
    """``(kind, tenant, target) -> {action_id: (until_ts, Block)}``; a key holds every block
    of that subject (several incidents may block one session), the longest-lasting wins."""

    __slots__ = ("_by_key", "_effects", "_key_of")

    def __init__(self) -> None:
        self._by_key: dict[tuple[str, str, str], dict[str, tuple[float, Block]]] = {}
        self._key_of: dict[str, tuple[str, str, str]] = {}
        self._effects: set[str] = set()  # effects other than block ever added

    def __len__(self) -> int:
        return len(self._key_of)

    def add(self, block: Block) -> None:
        key = (block.kind, block.tenant, block.target)
        self.remove(block.action_id)
        self._by_key.setdefault(key, {})[block.action_id] = (block.until_ts, block)
        self._key_of[block.action_id] = key
        if block.effect != "block":
            self._effects.add(block.effect)

    def remove(self, action_id: str) -> Block | None:
        key = self._key_of.pop(action_id, None)
        if key is None:
            return None
        entries = self._by_key.get(key)
        if entries is None:
            return None
        found = entries.pop(action_id, None)
        if not entries:
            del self._by_key[key]
        return found[1] if found else None

    def lookup(self, kind: str, target: str, tenant: str, now: float | None = None) -> Block | None:
        """The active block of that subject that lasts longest, or None."""
        entries = self._by_key.get((kind, tenant, target))
        if not entries:
            return None
        t = time.time() if now is None else now
        best: tuple[float, Block] | None = None
        # tuple(): a C-level copy, atomic for other threads (the feed of running_in_thread
        # changes the table while the app's threads look up: iterating the dict itself could
        # raise "dictionary changed size during iteration")
        for entry in tuple(entries.values()):
            if entry[0] > t and (best is None or entry[0] > best[0]):
                best = entry
        return best[1] if best else None

    def effects(
        self, kind: str, target: str, tenant: str, now: float | None = None
    ) -> dict[str, Block]:
        """Every effect active on that target (the longest-lasting entry of each), block
        first."""
        t = time.time() if now is None else now
        found: dict[str, Block] = {}
        for effect in ("block", *sorted(self._effects)):
            hit = self.lookup(stored_kind(effect, kind), target, tenant, t)
            if hit is not None:
                found[effect] = hit
        return found

    def blocks(self, now: float | None = None) -> list[Block]:
        """Every active block."""
        t = time.time() if now is None else now
        return [b for e in tuple(self._by_key.values()) for ts, b in tuple(e.values()) if ts > t]

    def action_ids(self, now: float | None = None) -> set[str]:
        return {b.action_id for b in self.blocks(now)}

    def purge_expired(self, now: float | None = None) -> int:
        t = time.time() if now is None else now
        gone = [aid for e in self._by_key.values() for aid, (ts, _) in e.items() if ts <= t]
        for aid in gone:
            self.remove(aid)
        return len(gone)
