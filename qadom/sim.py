"""A network simulator: many real :class:`~qadom.node.Node` objects on a virtual clock.

The simulator delivers the very datagrams the nodes produce (encoded and decoded by the real codec)
over a virtual network with a latency distribution and optional loss, all drawn from one seeded
``random.Random``: the same seed gives the same run, event for event. Virtual time jumps from one
event to the next, so hours of protocol time cost only the work done in them.

Simulated addresses are ``127.x.y.z:4000`` strings; nothing here opens a socket.
"""

from __future__ import annotations

import heapq
import random
from collections.abc import Callable
from typing import Any, TypeVar

from .call import Call
from .config import Config
from .contact import Address
from .node import Node

T = TypeVar("T")

_DELIVER = 0
_TIMER = 1


class SimNetwork:
    """Nodes, a virtual clock and a virtual network, all driven by one seed.

    ``latency`` is the (min, max) one-way delay in seconds, drawn uniformly per datagram;
    ``loss`` the probability that a datagram is dropped. Both can be changed between steps.
    """

    def __init__(self, seed: int = 0, *, config: Config | None = None,
                 latency: tuple[float, float] = (0.01, 0.05), loss: float = 0.0) -> None:
        self.rng = random.Random(seed)
        self.config = config or Config()
        self.latency = latency
        self.loss = loss
        self.now = 0.0
        self.nodes: dict[Address, Node] = {}
        self.down: set[Address] = set()
        self.delivered = 0
        self.dropped = 0
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._armed: dict[Address, float] = {}

    # ------------------------------------------------------------------ building

    def add_node(self, *, config: Config | None = None, node_id: int | None = None) -> Node:
        """A new node on the next free simulated address (not yet joined to anyone)."""
        index = len(self.nodes) + 1
        address = (f"127.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", 4000)
        node = Node(config=config or self.config, rng=random.Random(self.rng.getrandbits(64)),
                    node_id=node_id, now=self.now)
        node.address = address
        self.nodes[address] = node
        self._after_input(address, node)
        return node

    def address_of(self, node: Node) -> Address:
        assert node.address is not None
        return node.address

    def add_nodes(self, count: int, *, bootstrap: bool = True) -> list[Node]:
        """Add ``count`` nodes; with ``bootstrap`` each joins through a random earlier node."""
        added = []
        for _ in range(count):
            existing = list(self.nodes)
            node = self.add_node()
            added.append(node)
            if bootstrap and existing:
                self.run_call(self.call(node, node.bootstrap,
                                        [existing[self.rng.randrange(len(existing))]]))
        return added

    def remove(self, node: Node) -> None:
        """Take ``node`` off the network for good: it neither sends nor receives again."""
        self.down.add(self.address_of(node))

    # ------------------------------------------------------------------ driving

    def call(self, node: Node, operation: Callable[..., Call[T]], *args: Any) -> Call[T]:
        """Start ``operation(*args, now)`` on ``node`` (e.g. ``net.call(n, n.get, key)``)."""
        result = operation(*args, self.now)
        self._after_input(self.address_of(node), node)
        return result

    def step(self) -> bool:
        """Process the next event; False when there is none."""
        if not self._events:
            return False
        when, _, kind, payload = heapq.heappop(self._events)
        self.now = max(self.now, when)
        if kind == _DELIVER:
            data, source, destination = payload
            node = self.nodes.get(destination)
            if node is None or destination in self.down:
                self.dropped += 1
                return True
            self.delivered += 1
            node.datagram_received(data, source, self.now)
            self._after_input(destination, node)
        else:
            address = payload
            if self._armed.get(address) != when:
                return True  # superseded by an earlier arming
            del self._armed[address]
            node = self.nodes[address]
            if address not in self.down:
                node.handle_timer(self.now)
                self._after_input(address, node)
        return True

    def run_call(self, call: Call[T], *, timeout: float | None = None) -> T:
        """Run events until ``call`` completes (bounded by ``timeout`` virtual seconds, the
        operation timeout by default); returns its result or raises its exception."""
        limit = self.now + (timeout if timeout is not None else self.config.operation_timeout * 2)
        while not call.done:
            if not self._events or self._events[0][0] > limit:
                raise TimeoutError(f"{call!r} did not complete by virtual time {limit}")
            self.step()
        return call.result()

    def run_for(self, duration: float) -> None:
        """Run every event up to ``now + duration``; the clock then stands at that time."""
        until = self.now + duration
        while self._events and self._events[0][0] <= until:
            self.step()
        self.now = until

    # ------------------------------------------------------------------ internals

    def _after_input(self, address: Address, node: Node) -> None:
        down = address in self.down
        for data, destination in node.datagrams_to_send():
            if down or self.rng.random() < self.loss:
                self.dropped += 1
                continue
            low, high = self.latency
            self._push(self.now + self.rng.uniform(low, high), _DELIVER,
                       (data, address, destination))
        deadline = node.get_timer()
        if deadline is not None and deadline < self._armed.get(address, float("inf")):
            self._armed[address] = deadline
            self._push(deadline, _TIMER, address)

    def _push(self, when: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, payload))
