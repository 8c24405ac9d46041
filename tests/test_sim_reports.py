"""The simulator's joins under loss and its lookup reports: add_nodes / build(joins=) never leave
a node that did not join on the network, and LookupReport.messages counts the measured lookup's
datagrams only, not the origin's other traffic meanwhile."""

from __future__ import annotations

import random
from collections import Counter
from typing import Any

import pytest

from qadom import Config, NoPeersError
from qadom.codec import Codec
from qadom.contact import Address
from qadom.errors import InvalidArgument, InvalidType
from qadom.messages import FindNode, Ping
from qadom.node import Node
from qadom.sim import SimNetwork

CONFIG = Config(k=8)


def _joined(net: SimNetwork, nodes: list[Node]) -> None:
    """Every node is live and knows others: it joined, and a lookup from it finds the truth."""
    live = set(net.live_addresses())
    for node in nodes:
        assert node.address in live
        assert len(node.table) > 0


def test_add_nodes_under_loss_tries_again_and_every_node_joins() -> None:
    # At 30% loss a join's two pings are both lost (or their pongs) about once in four: this
    # seed's joins raised NoPeersError out of add_nodes and left the node live, knowing nobody.
    net = SimNetwork(0, config=CONFIG, loss=0.3)
    net.build(50)
    added = net.add_nodes(10)
    assert len(added) == 10
    assert len(net.live_nodes()) == 60
    _joined(net, added)
    assert sum(n.stats["requests_out"] for n in added) > 0
    report = net.lookup(added[-1], 1)
    assert report.ok and report.closest_found > 0


def test_build_with_joins_under_loss_joins_every_node() -> None:
    # build(joins=) goes through add_nodes: on this seed a join failed and build raised.
    net = SimNetwork(1, config=CONFIG, loss=0.3)
    built = net.build(50, joins=10)
    assert len(built) == 50
    assert len(net.live_nodes()) == 60 and not net.down
    _joined(net, net.live_nodes())


def test_a_node_whose_every_join_fails_leaves_and_add_nodes_raises() -> None:
    net = SimNetwork(2, config=CONFIG, trace=True)
    before = net.build(20)
    net.loss = 1.0  # nothing gets through
    with pytest.raises(NoPeersError):
        net.add_nodes(1)
    (joiner,) = [n for n in net.nodes.values() if n not in before]
    assert joiner.address in net.down  # not left live knowing nobody
    assert net.live_nodes() == sorted(before, key=lambda n: n.id)
    # it tried several joins, each through another node (a ping and its resend to each)
    assert net.trace is not None
    pinged = Counter(e[3] for e in net.trace if e[1] == "drop" and e[2] == joiner.address)
    assert len(pinged) > 1 and set(pinged.values()) == {2}
    # with tries=3, three joins; with tries=1 the first failed join is the last
    for tries in (3, 1):
        with pytest.raises(NoPeersError):
            net.add_nodes(1, tries=tries)
        joiner = list(net.nodes.values())[-1]
        pinged = Counter(e[3] for e in net.trace if e[1] == "drop" and e[2] == joiner.address)
        assert len(pinged) == tries and joiner.address in net.down
    assert len(net.live_nodes()) == 20 and len(net.down) == 3


def test_a_joiner_taken_off_by_the_churn_schedule_is_not_an_error() -> None:
    net = SimNetwork(3, config=CONFIG)
    before = net.build(20)
    # Every node built is kept: the one departure can only be the node joining next.
    net.churn(leave=1, duration=0.0, keep=before)
    (joiner,) = net.add_nodes(1)
    assert joiner.address in net.down
    assert len(net.live_nodes()) == 20


@pytest.mark.parametrize(("tries", "error"), [(0, InvalidArgument), (-1, InvalidArgument),
                                               (2.5, InvalidType), (True, InvalidType)])
def test_add_nodes_refuses_a_bad_number_of_tries(tries: Any, error: type[Exception]) -> None:
    net = SimNetwork(4, config=CONFIG)
    net.build(5)
    with pytest.raises(error):
        net.add_nodes(1, tries=tries)
    assert len(net.nodes) == 5  # refused before any node was added


class _Recorder:
    """Every datagram one node receives, and every batch it sends after an input (a datagram
    received, a timer, a call), decoded, while ``on`` is set."""

    def __init__(self, node: Node) -> None:
        self.codec = Codec(node.config)
        # ("in", envelope, source), or ("out", [(envelope, destination)...], whether the batch
        # was sent handling the datagram logged just before it)
        self.log: list[tuple[str, Any, Any]] = []
        self.on = False
        self._handling = False
        send, receive = node.datagrams_to_send, node.datagram_received

        def sent() -> list[tuple[bytes, Address]]:
            out = send()
            handling, self._handling = self._handling, False
            if self.on:
                batch = [(self.codec.decode(d), a) for d, a in out]
                self.log.append(("out", batch, handling))
            return out

        def received(data: bytes, address: Address, now: float) -> None:
            if self.on:
                self.log.append(("in", self.codec.decode(data), address))
                self._handling = True
            receive(data, address, now)

        node.datagrams_to_send = sent  # type: ignore[method-assign]
        node.datagram_received = received  # type: ignore[method-assign]

    def lookup_datagrams(self, target: int) -> tuple[int, int]:
        """(the datagrams of the lookup of ``target``, the others), as LookupReport.messages
        defines them: the FIND_NODE requests for ``target`` and every attempt of them, the
        PINGs from the peers they went to, what the node sent handling one of those or of their
        replies, and the replies to those requests."""
        ours: set[int] = set()
        asked: set[Address] = set()
        mine = others = 0
        handled_ours = False
        for way, item, extra in self.log:
            if way == "in":
                message = item.message
                handled_ours = (isinstance(message, Ping) and extra in asked
                                if message.IS_REQUEST else item.rpc_id in ours)
                mine += handled_ours
                others += not handled_ours
                continue
            provoked = extra and handled_ours
            for envelope, destination in item:
                message = envelope.message
                if provoked or envelope.rpc_id in ours or (
                        isinstance(message, FindNode) and message.target == target):
                    mine += 1
                    if message.IS_REQUEST:
                        ours.add(envelope.rpc_id)
                        asked.add(destination)
                else:
                    others += 1
        return mine, others


def test_lookup_messages_count_the_lookup_not_the_origins_other_traffic() -> None:
    net = SimNetwork(5, config=CONFIG)
    nodes = net.build(150)
    origin = nodes[0]
    recorder = _Recorder(origin)
    rng = random.Random(5)
    unrelated = 0
    for _ in range(8):
        # Lookups from other nodes for ids next to the origin's, started beside the measured
        # one: they ask the origin, which serves them while its own lookup runs.
        for node in rng.sample(nodes[1:], 4):
            net.call(node, node.find_nodes, origin.id ^ rng.getrandbits(8))
        target = rng.getrandbits(256)
        recorder.log.clear()
        recorder.on = True
        window = origin.stats["datagrams_in"] + origin.stats["datagrams_out"]
        report = net.lookup(origin, target)
        window = origin.stats["datagrams_in"] + origin.stats["datagrams_out"] - window
        recorder.on = False
        assert report.ok
        mine, others = recorder.lookup_datagrams(target)
        assert mine + others == window
        assert report.messages == mine
        assert report.messages >= report.requests + report.replies
        unrelated += others
        net.run_for(10.0)
    assert unrelated > 0  # the origin did serve the others' lookups meanwhile


def test_lookup_messages_alone_are_every_datagram_of_the_origin() -> None:
    # No other traffic, no loss, and the previous lookup's last replies and pings arrived: the
    # lookup's datagrams are all the origin sends and receives.
    net = SimNetwork(6, config=CONFIG)
    nodes = net.build(150)
    origin = nodes[3]
    rng = random.Random(6)
    for _ in range(5):
        window = origin.stats["datagrams_in"] + origin.stats["datagrams_out"]
        report = net.lookup(origin, rng.getrandbits(256))
        assert report.messages == (origin.stats["datagrams_in"] + origin.stats["datagrams_out"]
                                   - window)
        assert report.messages >= 2 * report.requests
        net.run_for(10.0)
