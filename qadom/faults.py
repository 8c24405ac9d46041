"""Faults on real sockets: drop, duplicate and delay the datagrams of a started :class:`Peer`.

The simulator (:mod:`qadom.sim`) puts loss on a virtual wire; this module puts the same faults on
the real one, for tests and experiments over 127.0.0.1. :func:`inject_faults` slips a
:class:`FaultyLink` between a started peer's :class:`~qadom.transport.NodeProtocol` and its UDP
socket, in either direction or both, with one :class:`FaultRule` per direction:

* each datagram is dropped with probability ``loss``; otherwise it goes through, plus a second
  copy with probability ``duplicate``;
* each copy that goes through is held back with probability ``delay`` by a uniform
  ``(0, max_delay)`` seconds (``loop.call_later``, never a sleep), so datagrams sent after it
  overtake it: reordering.

Guarantees:

* Every decision comes from the ``random.Random`` passed in, so a seed and the same sequence of
  datagrams give the same faults. (Over real sockets the sequence itself depends on scheduling;
  for runs identical datagram for datagram use the simulator.)
* Nothing of the peer is changed but the path between its protocol and its socket: the node, its
  stats and its timers are untouched, and :meth:`FaultyLink.remove` restores the direct path.
* A datagram held back past the peer's close is discarded, never sent on a closed socket; closing
  the peer cancels every pending delay.
* ``counts`` says what was done: ``out_sent``, ``out_dropped``, ``out_duplicated``,
  ``out_delayed`` and the same with ``in_`` for received datagrams.

Loss is per datagram and direction: with ``outgoing=FaultRule(loss=0.1)`` on every peer of a
network, each datagram (requests and replies alike) is lost with probability 0.1, so a request's
round trip fails with probability 1 - 0.9**2 = 0.19. Putting the rule on both directions of every
peer makes each datagram meet it twice.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .errors import InvalidArgument, PeerClosedError
from .peer import Peer
from .transport import NodeProtocol

Deliver = Callable[[bytes, Any], None]


@dataclass(frozen=True, slots=True)
class FaultRule:
    """What happens to the datagrams of one direction: probabilities in [0, 1], delay in s."""

    loss: float = 0.0
    duplicate: float = 0.0
    delay: float = 0.0
    max_delay: float = 0.0

    def __post_init__(self) -> None:
        for name in ("loss", "duplicate", "delay"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise InvalidArgument(f"{name} must be a probability in [0, 1], got {value!r}")
        if not isinstance(self.max_delay, (int, float)) or not 0.0 <= self.max_delay < 3600:
            raise InvalidArgument(f"max_delay must be in [0, 3600) seconds, got {self.max_delay!r}")


class FaultyLink:
    """The faulty path of one peer; made by :func:`inject_faults`."""

    def __init__(self, protocol: NodeProtocol, rng: random.Random, *,
                 outgoing: FaultRule | None, incoming: FaultRule | None) -> None:
        if protocol.transport is None:
            raise PeerClosedError("the peer's socket is closed")
        if isinstance(protocol.transport, _FaultyTransport):
            raise InvalidArgument("faults are injected already; remove() them first")
        self.protocol = protocol
        self.rng = rng
        self.outgoing = outgoing
        self.incoming = incoming
        self.counts: Counter[str] = Counter()
        self._loop = protocol.loop
        self._socket = protocol.transport
        self._pending: set[asyncio.TimerHandle] = set()
        self._transport = _FaultyTransport(self, self._socket)
        self._receiver = _FaultyReceiver(self)
        protocol.transport = self._transport
        self._socket.set_protocol(self._receiver)

    @property
    def held(self) -> int:
        """Datagrams held back now, waiting for their delay."""
        return len(self._pending)

    def remove(self) -> None:
        """Restore the direct path; datagrams still held back are discarded."""
        self._cancel_pending()
        if self.protocol.transport is self._transport:
            self.protocol.transport = self._socket
        if self._socket.get_protocol() is self._receiver:
            self._socket.set_protocol(self.protocol)

    # ------------------------------------------------------------------ the fault rule

    def pass_through(self, rule: FaultRule | None, direction: str, data: bytes, address: Any,
                     deliver: Deliver) -> None:
        """Apply ``rule`` to one datagram, handing each surviving copy to ``deliver``."""
        if rule is None:
            self.counts[f"{direction}_sent"] += 1
            deliver(data, address)
            return
        rng = self.rng
        if rng.random() < rule.loss:
            self.counts[f"{direction}_dropped"] += 1
            return
        copies = 1
        if rng.random() < rule.duplicate:
            copies = 2
            self.counts[f"{direction}_duplicated"] += 1
        for _ in range(copies):
            self.counts[f"{direction}_sent"] += 1
            if rule.max_delay > 0 and rng.random() < rule.delay:
                self.counts[f"{direction}_delayed"] += 1
                self._later(rng.uniform(0.0, rule.max_delay), deliver, data, address)
            else:
                deliver(data, address)

    def _later(self, delay: float, deliver: Deliver, data: bytes, address: Any) -> None:
        handle: asyncio.TimerHandle | None = None

        def fire() -> None:
            assert handle is not None
            self._pending.discard(handle)
            if not self._socket.is_closing():
                deliver(data, address)

        handle = self._loop.call_later(delay, fire)
        self._pending.add(handle)

    def _cancel_pending(self) -> None:
        for handle in self._pending:
            handle.cancel()
        self._pending.clear()


class _FaultyTransport(asyncio.DatagramTransport):
    """What the node's protocol sends through: the socket, with the outgoing rule applied."""

    def __init__(self, link: FaultyLink, socket: asyncio.DatagramTransport) -> None:
        super().__init__()
        self._link = link
        self._socket = socket

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._link.pass_through(self._link.outgoing, "out", bytes(data), addr,
                                self._socket.sendto)

    def close(self) -> None:
        self._link._cancel_pending()
        self._socket.close()

    def abort(self) -> None:
        self._link._cancel_pending()
        self._socket.abort()

    def is_closing(self) -> bool:
        return self._socket.is_closing()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._socket.get_extra_info(name, default)


class _FaultyReceiver(asyncio.DatagramProtocol):
    """What the socket delivers to: the node's protocol, with the incoming rule applied."""

    def __init__(self, link: FaultyLink) -> None:
        self._link = link

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        link = self._link
        link.pass_through(link.incoming, "in", data, addr, link.protocol.datagram_received)

    def error_received(self, exc: Exception) -> None:
        self._link.protocol.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        self._link._cancel_pending()
        self._link.protocol.connection_lost(exc)


def inject_faults(peer: Peer, rng: random.Random, *, outgoing: FaultRule | None = None,
                  incoming: FaultRule | None = None) -> FaultyLink:
    """Put ``outgoing`` / ``incoming`` faults between the started ``peer`` and its socket.

    Returns the :class:`FaultyLink` (its ``counts``; ``remove()`` undoes it). Raises
    PeerClosedError when the peer is not running.
    """
    protocol = peer._running()
    return FaultyLink(protocol, rng, outgoing=outgoing, incoming=incoming)
