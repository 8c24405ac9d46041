"""Token-bucket rate limiting, pure: time comes in as ``now``.

Used by the node for requests per sending address and per sending host, and by publish/subscribe
for messages per sender. Memory is bounded by ``max_senders`` per limiter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; one message costs one token."""

    __slots__ = ("tokens", "updated")

    def __init__(self, burst: float, now: float) -> None:
        self.tokens = float(burst)
        self.updated = now

    def take(self, rate: float, burst: float, now: float) -> bool:
        """Spend one token if there is one."""
        if now > self.updated:
            self.tokens = min(float(burst), self.tokens + (now - self.updated) * rate)
            self.updated = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class RateLimiter(Generic[K]):
    """One :class:`TokenBucket` per sender (an address, a host...), at most ``max_senders`` of
    them (the least recently seen is forgotten first, which hands it a fresh burst if it comes
    back: bounded memory matters more than exactness against an attacker with many addresses)."""

    def __init__(self, rate: float, burst: int, max_senders: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_senders = max_senders
        self._buckets: OrderedDict[K, TokenBucket] = OrderedDict()

    def allow(self, sender: K, now: float) -> bool:
        """Spend one of ``sender``'s tokens if it has one."""
        bucket = self._buckets.get(sender)
        if bucket is None:
            if len(self._buckets) >= self.max_senders:
                self._buckets.popitem(last=False)
            bucket = self._buckets[sender] = TokenBucket(self.burst, now)
        else:
            self._buckets.move_to_end(sender)
        return bucket.take(self.rate, self.burst, now)

    def __len__(self) -> int:
        return len(self._buckets)
