"""Token-bucket rate limiting, pure: time comes in as ``now``.

Used by the node for requests per sending address and per sending host, and by publish/subscribe
for messages per sender. Memory is bounded by ``max_senders`` per limiter.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


class RateLimiter(Generic[K]):
    """A token bucket per sender (an address, a host...): ``burst`` tokens refilled at ``rate``
    a second, one spent per message. At most ``max_senders`` senders are tracked; the least
    recently seen is forgotten first, which hands it a fresh burst if it comes back: bounded
    memory matters more than exactness against an attacker with many addresses."""

    def __init__(self, rate: float, burst: int, max_senders: int) -> None:
        self.rate = rate
        self.burst = burst
        self.max_senders = max_senders
        # Each sender's bucket is a (tokens, updated) pair of floats: tuples of floats are not
        # tracked by the garbage collector, which matters when a node tracks thousands.
        self._buckets: OrderedDict[K, tuple[float, float]] = OrderedDict()

    def allow(self, sender: K, now: float) -> bool:
        """Spend one of ``sender``'s tokens if it has one."""
        buckets = self._buckets
        held = buckets.get(sender)
        if held is None:
            if len(buckets) >= self.max_senders:
                buckets.popitem(last=False)
            tokens, updated = float(self.burst), now
        else:
            buckets.move_to_end(sender)
            tokens, updated = held
            if now > updated:
                tokens = min(float(self.burst), tokens + (now - updated) * self.rate)
                updated = now
        allowed = tokens >= 1.0
        buckets[sender] = (tokens - 1.0 if allowed else tokens, updated)
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
