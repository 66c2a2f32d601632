"""Parsing JSON that an attacker wrote: nesting depth checked before the parser recurses,
and large bodies parsed off the event loop so one request cannot stall the others.

Every route that parses a request body (intake, Slack interactions) goes through
`parse_json`.
"""

from __future__ import annotations

import json
import re
from typing import Any

import anyio

MAX_DEPTH = 32  # far more than any detection, OCSF finding or Slack payload needs
OFF_LOOP_BYTES = 16 * 1024  # bodies above this are parsed in a worker thread

# A JSON string: no nested quantifiers, so the match is linear in the input.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


class JSONRefused(ValueError):
    """The body is not acceptable JSON; `message` says why (without echoing the input)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _no_constant(name: str) -> object:
    raise JSONRefused(f"{name} is not valid JSON")


def nesting_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in `raw`, ignoring brackets inside strings.
    Linear time; exact for valid JSON, an upper bound for anything else."""
    brackets = _STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    opened = brackets.count(b"[") + brackets.count(b"{")
    if opened <= MAX_DEPTH:
        return opened
    depth = deepest = 0
    for ch in brackets:
        if ch in b"[{":
            depth += 1
            if depth > deepest:
                deepest = depth
        else:
            depth -= 1
    return deepest


def parse_json_sync(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    if nesting_depth(raw) > max_depth:
        raise JSONRefused(f"nested deeper than {max_depth} levels")
    try:
        return json.loads(raw, parse_constant=_no_constant)
    except json.JSONDecodeError as exc:
        raise JSONRefused(f"invalid JSON at line {exc.lineno} column {exc.colno}") from None
    except UnicodeDecodeError:
        raise JSONRefused("invalid JSON: not UTF-8") from None
    except RecursionError:  # pragma: no cover - the depth check comes first
        raise JSONRefused(f"nested deeper than {max_depth} levels") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise JSONRefused(f"invalid JSON: {str(exc)[:100]}") from None


def printable(value: str) -> str:
    """`value` safe to put in a JSON answer: lone surrogates (which cannot be encoded as
    UTF-8) written as escapes, and cut to a sane length."""
    return value[:300].encode("utf-8", "backslashreplace").decode("utf-8")


async def parse_json(raw: bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """`json.loads` with a depth limit, in a worker thread for large bodies."""
    if len(raw) <= OFF_LOOP_BYTES:
        return parse_json_sync(raw, max_depth=max_depth)
    return await anyio.to_thread.run_sync(lambda: parse_json_sync(raw, max_depth=max_depth))
