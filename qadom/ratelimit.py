"""Token-bucket rate limiting, pure: time comes in as ``now``.

Used by the node for requests per sending address and per sending host, and by publish/subscribe
for messages per sender. Memory is bounded by ``max_senders`` per limiter, and
:meth:`RateLimiter.sweep` forgets the senders whose buckets have refilled, so a limiter holds
only the senders heard of late.
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
                # min(burst, refilled), without the builtin's call
                refilled = tokens + (now - updated) * self.rate
                tokens = refilled if refilled < self.burst else float(self.burst)
                updated = now
        allowed = tokens >= 1.0
        buckets[sender] = (tokens - 1.0 if allowed else tokens, updated)
        return allowed

    def sweep(self, now: float) -> int:
        """Forget the senders whose buckets have refilled to ``burst`` by ``now``; returns how many.

        Such a bucket is worth nothing: a sender not tracked gets a full bucket, so its next
        :meth:`allow` answers the same whether it is kept or not, and so does every later one.
        Buckets are kept least recently seen first, and each is refilled as of when it was last
        seen, so the first buckets are the first to be full: this stops at the first that is not,
        in time proportional to what it forgets (a full one behind it goes at a later sweep, at
        most ``burst / rate`` seconds after that one was last seen)."""
        buckets, burst, rate = self._buckets, float(self.burst), self.rate
        forgotten = 0
        while buckets:
            sender, (tokens, updated) = next(iter(buckets.items()))
            # As allow() refills: only when time has passed (an infinite rate times no time).
            if tokens < burst and not (now > updated and tokens + (now - updated) * rate >= burst):
                break
            del buckets[sender]
            forgotten += 1
        return forgotten

    def __len__(self) -> int:
        return len(self._buckets)
