"""Where an interrupted `soar ingest` resumes: a small JSON file under SOAR_HOME/ingest.

It holds the number of lines fully done (a contiguous prefix), the SHA-256 of that prefix's
bytes (so a changed file is noticed, and stdin can resume too), the tally of those lines, and
`sent_upto`: every line up to it may have reached the intake (it is written *before* those
lines are sent), and `settled`: the results of lines past the prefix that the intake had
answered when the checkpoint was written (they are not sent again). On resume a line past
the prefix but within `sent_upto`, not in `settled`, that the intake calls a duplicate, and
whose id no earlier line of the file had, may have been accepted by the interrupted run (its
answer lost) or may have been a duplicate already (pre-registered, never sent): it is
counted as `resumed` ("accepted or duplicate"), never claimed as accepted. A run that reaches
the end removes its checkpoint, so running the same file again reports every line as a
duplicate.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LIST_MAX = 1000  # invalid / unmapped lines kept by line number (all are counted)
OUTCOMES = ("accepted", "duplicate", "clean", "unmapped", "invalid", "resumed")


@dataclass(frozen=True)
class Result:
    line: int
    outcome: str  # accepted | duplicate | clean | unmapped | invalid | resumed | blank
    key: str | None = None
    reason: str | None = None


@dataclass
class Tally:
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(OUTCOMES, 0))
    invalid: list[tuple[int, str]] = field(default_factory=list)
    unmapped: list[tuple[int, str, str]] = field(default_factory=list)

    def add(self, r: Result) -> None:
        if r.outcome not in self.counts:
            return  # a blank line
        self.counts[r.outcome] += 1
        if r.outcome == "invalid" and len(self.invalid) < LIST_MAX:
            self.invalid.append((r.line, r.reason or "invalid"))
        if r.outcome == "unmapped" and len(self.unmapped) < LIST_MAX:
            self.unmapped.append((r.line, r.key or "", r.reason or "unmapped"))

    def merged(self, results: list[Result]) -> Tally:
        out = Tally(dict(self.counts), list(self.invalid), list(self.unmapped))
        for r in sorted(results, key=lambda r: r.line):
            out.add(r)
        return out

    def as_json(self) -> dict[str, Any]:
        return {
            "counts": self.counts,
            "invalid": [list(x) for x in self.invalid],
            "unmapped": [list(x) for x in self.unmapped],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Tally:
        counts = dict.fromkeys(OUTCOMES, 0)
        for k, v in (data.get("counts") or {}).items():
            if k in counts and isinstance(v, int):
                counts[k] = v
        return cls(
            counts,
            [(int(n), str(r)) for n, r in data.get("invalid") or []][:LIST_MAX],
            [(int(n), str(k), str(r)) for n, k, r in data.get("unmapped") or []][:LIST_MAX],
        )


def checkpoint_path(home: Path, identity: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()
    return home / "ingest" / f"{digest[:32]}.json"


def _results(rows: list[Any], *, after: int) -> list[Result]:
    """The saved results past line `after` (a malformed one is dropped: that line is sent
    again, which the intake's idempotency makes safe)."""
    out = []
    for row in rows:
        if not (isinstance(row, list) and len(row) == 4):
            continue
        n, outcome, key, reason = row
        if not (isinstance(n, int) and n > after and outcome in (*OUTCOMES, "blank")):
            continue
        out.append(
            Result(
                n,
                outcome,
                key if isinstance(key, str) else None,
                reason if isinstance(reason, str) else None,
            )
        )
    return out


@dataclass
class Checkpoint:
    path: Path
    identity: dict[str, Any]
    done: int = 0
    prefix_sha256: str = hashlib.sha256().hexdigest()
    sent_upto: int = 0
    tally: Tally = field(default_factory=Tally)
    settled: list[Result] = field(default_factory=list)

    @classmethod
    def open(cls, home: Path, identity: dict[str, Any]) -> Checkpoint:
        """The saved checkpoint of this input and options, or a fresh one."""
        path = checkpoint_path(home, identity)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            if data.get("version") != 1 or data.get("identity") != identity:
                raise ValueError("not ours")
            return cls(
                path,
                identity,
                done=int(data["done"]),
                prefix_sha256=str(data["prefix_sha256"]),
                sent_upto=int(data["sent_upto"]),
                tally=Tally.from_json(data.get("tally") or {}),
                settled=_results(data.get("settled") or [], after=int(data["done"])),
            )
        except (OSError, ValueError, KeyError, TypeError):
            return cls(path, identity)

    def save(self) -> None:
        """Atomically: a crash mid-write leaves the previous checkpoint."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        body = {
            "version": 1,
            "identity": self.identity,
            "done": self.done,
            "prefix_sha256": self.prefix_sha256,
            "sent_upto": self.sent_upto,
            "tally": self.tally.as_json(),
            "settled": [[r.line, r.outcome, r.key, r.reason] for r in self.settled],
        }
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(body, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)

    def remove(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
