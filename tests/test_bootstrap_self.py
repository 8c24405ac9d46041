"""A join through our own address: an answer with our own id is no peer answering, so the join
fails with NoPeersError once the pings are over, without the lookups of our own id (on the
virtual clock of qadom.sim, and over UDP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import random

import pytest

from qadom import Config, NoPeersError, Peer
from qadom.sim import SimNetwork

from helpers import FAST

SIM_CONFIG = Config(k=5)


def test_a_join_through_our_own_address_alone_finds_no_peer_at_once() -> None:
    net = SimNetwork(seed=4, config=SIM_CONFIG)
    net.add_nodes(6)
    node = net.add_node()
    start = net.now
    with pytest.raises(NoPeersError, match="this node itself"):
        net.run_call(net.call(node, node.bootstrap, [net.address_of(node)]))
    # One ping answered by ourselves, no lookup: well within one request's timeout (the
    # lookups of our own id would have taken rpc_timeout_max, then twice that).
    assert net.now - start < SIM_CONFIG.rpc_timeout_max
    assert node.stats["requests_out"] == 1
    assert len(node.table) == 0


def test_our_own_address_among_others_is_not_counted_and_the_join_goes_on() -> None:
    net = SimNetwork(seed=4, config=SIM_CONFIG)
    others = net.add_nodes(6)
    node = net.add_node()
    size = net.run_call(net.call(node, node.bootstrap,
                                 [net.address_of(node), net.address_of(others[2])]))
    assert size == len(node.table) > 0
    assert node.id not in {c.id for c in node.table}
    assert {c.id for c in node.table} <= {n.id for n in others}


async def test_a_peer_joining_through_its_own_address_gets_no_peers_error_promptly() -> None:
    async with Peer("127.0.0.1", 0, config=FAST, rng=random.Random(1)) as peer:
        loop = asyncio.get_running_loop()
        start = loop.time()
        with pytest.raises(NoPeersError):
            # The lookups of our own id would take rpc_timeout_max (1 s here), then 2 s more.
            await asyncio.wait_for(peer.bootstrap([peer.address]), FAST.rpc_timeout_max)
        assert loop.time() - start < FAST.rpc_timeout_max
        assert len(peer.routing_table) == 0


async def test_a_peer_with_our_id_at_another_address_is_no_peer_to_join_through() -> None:
    # Two processes sharing an id (a copied data dir, say): neither joins through the other.
    async with Peer("127.0.0.1", 0, config=FAST, rng=random.Random(2)) as twin, \
            Peer("127.0.0.1", 0, config=FAST, node_id=twin.id) as peer:
        with pytest.raises(NoPeersError):
            await asyncio.wait_for(peer.bootstrap([twin.address]), FAST.rpc_timeout_max)
        assert len(peer.routing_table) == 0
