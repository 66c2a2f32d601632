"""Token buckets at intake, per source and per subject.

In-process: each API replica enforces its own buckets (with N replicas behind a balancer a
client gets up to N times the rate). The number of buckets is bounded: the least recently
used ones are forgotten first, which only ever errs on the side of admitting.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable


class TokenBuckets:
    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        max_keys: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rate = rate
        self.burst = float(burst)
        self._max = max_keys
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # tokens, at

    def take(self, key: str, cost: float = 1.0) -> float:
        """0 when admitted (a token is spent), else the seconds until one is available."""
        now = self._clock()
        tokens, at = self._buckets.pop(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens >= cost:
            self._buckets[key] = (tokens - cost, now)
            wait = 0.0
        else:
            self._buckets[key] = (tokens, now)
            wait = (cost - tokens) / self.rate
        while len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        return wait

    def wait(self, key: str, cost: float = 1.0) -> float:
        """Like `take`, without spending: 0 when `cost` tokens are there now."""
        hit = self._buckets.get(key)
        if hit is None:
            return 0.0
        tokens = min(self.burst, hit[0] + (self._clock() - hit[1]) * self.rate)
        return 0.0 if tokens >= cost else (cost - tokens) / self.rate

    def forget(self, key: str) -> None:
        self._buckets.pop(key, None)


def retry_after(wait: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(wait)))
