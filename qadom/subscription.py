"""A topic subscription on a :class:`~qadom.peer.Peer`, as an async context manager and iterator.

```python
async with peer.subscribe(key) as messages:
    async for value in messages:
        ...
```

Entering registers at the topic's relays (see :mod:`qadom.pubsub`) and raises if none accepted.
A subscription is entered once; reading it before that, or entering it again, raises
:class:`~qadom.errors.SubscriptionMisuse` (subscribe again for a new one).
Leaving the block, cancelling the task, or :meth:`Subscription.close` unsubscribes; iteration then
ends. Closed from another task while it is still registering, entering raises
:class:`~qadom.errors.SubscriptionClosed`. If the peer is closed, iteration raises
:class:`~qadom.errors.PeerClosedError` once the messages already received have been read.

A consumer that does not keep up has its messages queued, at most ``Config.pubsub_queue_size``
messages and ``Config.pubsub_queue_bytes`` bytes of them (4 MiB); past either bound the newest
are dropped. :attr:`Subscription.dropped` counts those it lost, and
``peer.stats["pubsub_dropped"]`` those of all subscriptions.
"""

from __future__ import annotations

import asyncio
from types import TracebackType
from typing import TYPE_CHECKING

from .errors import PeerClosedError, SubscriptionMisuse
from .pubsub import SubscriptionHandle

if TYPE_CHECKING:
    from .peer import Peer


class _End:
    """Queued after the last message."""


_END = _End()


class Subscription:
    """Messages published to one topic key, as they arrive."""

    def __init__(self, peer: Peer, key: int) -> None:
        self.key = key
        self.relays = 0  # relays that accepted the first registration
        self._peer = peer
        self._queue: asyncio.Queue[bytes | _End] = asyncio.Queue()
        self._limit = peer.config.pubsub_queue_size
        self._byte_limit = peer.config.pubsub_queue_bytes
        self._queued_bytes = 0  # of the messages in the queue
        self._dropped = 0
        self._handle: SubscriptionHandle | None = None
        self._peer_gone = False
        self._closed = False

    async def __aenter__(self) -> Subscription:
        if self._handle is not None or self._closed:
            raise SubscriptionMisuse("a subscription can be entered once; subscribe again")
        protocol = self._peer._running()
        handle, call = protocol.node.pubsub.subscribe(self.key, self._on_value, protocol.now())
        self._handle = handle
        self._peer._subscriptions.add(self)
        try:
            self.relays = await self._peer._run(call)
        except BaseException as exc:
            self.close()
            if self._peer_gone and isinstance(exc, Exception) and not isinstance(
                    exc, PeerClosedError):  # closing the peer ended the registration
                raise PeerClosedError("the peer was closed") from None
            raise
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        """Unsubscribe (idempotent); iteration ends after the messages already queued."""
        if self._closed:
            return
        self._closed = True
        self._peer._subscriptions.discard(self)
        protocol = self._peer._protocol
        try:
            if self._handle is not None and protocol is not None:
                self._handle.close(protocol.now())
                protocol.flush()
        finally:  # whatever happened, iteration ends
            self._queue.put_nowait(_END)

    def _peer_closed(self) -> None:
        if not self._closed:
            self._peer_gone = True
            self.close()

    def _on_value(self, value: bytes) -> None:
        if self._closed:
            return
        if (self._queue.qsize() >= self._limit
                or self._queued_bytes + len(value) > self._byte_limit):
            self._dropped += 1
            self._peer.node.stats["pubsub_dropped"] += 1
            return
        self._queued_bytes += len(value)
        self._queue.put_nowait(value)

    @property
    def dropped(self) -> int:
        """Messages this subscription received but dropped because its reader had fallen behind
        by ``Config.pubsub_queue_size`` messages or ``Config.pubsub_queue_bytes`` bytes. Missed
        messages show here and nowhere in the iteration itself, which goes on with the next one
        that had room."""
        return self._dropped

    @property
    def closed(self) -> bool:
        return self._closed

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> bytes:
        if self._handle is None and not self._closed:
            raise SubscriptionMisuse("enter the subscription first: async with "
                                     "peer.subscribe(key) as messages: async for ...")
        item = await self._queue.get()
        if isinstance(item, _End):
            self._queue.put_nowait(item)  # every later read ends too
            if self._peer_gone:
                raise PeerClosedError("the peer was closed")
            raise StopAsyncIteration
        self._queued_bytes -= len(item)
        return item

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        # The key as errors, the HTTP API and the CLI write it: every digit, so that two keys
        # are never shown alike (small ones all begin with zeros).
        return f"<Subscription {self.key:064x} {state}>"
