"""Per-user rate limiting: a token bucket per user id, in memory (one process); feedback and chat use it."""

from __future__ import annotations

import time
from collections import OrderedDict

_MAX_USERS = 100_000


class RateLimiter:
    def __init__(self, rate_per_s: float, burst: int) -> None:
        self.rate = rate_per_s
        self.burst = burst
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()

    def allow(self, user_id: str, cost: float = 1.0) -> float:
        """0.0 if allowed (and charged); otherwise the seconds to wait before retrying."""
        now = time.monotonic()
        tokens, last = self._buckets.get(user_id, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - last) * self.rate)
        if tokens < cost:
            self._buckets[user_id] = (tokens, now)
            return (cost - tokens) / self.rate
        self._buckets[user_id] = (tokens - cost, now)
        self._buckets.move_to_end(user_id)
        if len(self._buckets) > _MAX_USERS:
            self._buckets.popitem(last=False)
        return 0.0
