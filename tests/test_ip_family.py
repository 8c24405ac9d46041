"""A node's socket reaches one IP family. Contacts of the other family, which dual-stack or hostile
peers may name and a data dir may have saved under another ``--host``, are not asked; and a
datagram the socket cannot send is counted, never an error out of the event loop's callbacks."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
import uvloop

from qadom import Config, NoPeersError, OperationTimeout, Peer
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.messages import Nodes, Ping
from qadom.node import Node

from helpers import FAST, answer_requests


def test_a_lookup_does_not_ask_candidates_of_the_other_family() -> None:
    node = Node(node_id=0, now=0.0, config=dataclasses.replace(Config(), alpha=1, k=4))
    node.ipv6 = False
    codec = Codec(node.config)
    target = 1 << 200
    peer = Contact(target ^ (1 << 100), ("1.2.3.4", 4000))
    node.table.seen(peer)
    named = (Contact(target ^ 1, ("2a00:1450::1", 4000)), Contact(target ^ 2, ("5.6.7.8", 4000)),
             Contact(target ^ 3, ("::ffff:9.9.9.9", 4000)))
    ids = {c.address: c.id for c in (peer, *named)}
    call = node.find_nodes(target, 0.0)
    asked = answer_requests(node, codec, lambda address, _: (
        ids[address], Nodes(named if address == peer.address else ())), 0.1)
    assert asked == [peer.address, ("5.6.7.8", 4000)]
    assert [c.address for c in call.result()] == [("5.6.7.8", 4000), peer.address]
    assert node.stats["unreachable"] == 2


def test_a_bootstrap_pings_only_addresses_of_our_family() -> None:
    node = Node(now=0.0)
    node.ipv6 = True
    call = node.bootstrap([("127.0.0.1", 4000), ("::1", 4000)], 0.0)
    assert [address for _, address in node.datagrams_to_send()] == [("::1", 4000)]
    node.ipv6 = False
    call = node.bootstrap([("::1", 4000)], 0.0)
    assert node.datagrams_to_send() == []
    with pytest.raises(NoPeersError):
        call.result()
    assert node.stats["unreachable"] == 2


def test_a_datagram_the_socket_cannot_send_is_counted_and_the_peer_goes_on() -> None:
    """uvloop raises out of ``sendto`` for an address of the other family (asyncio reports it to
    ``error_received``): the adapter counts it, sends the rest, and keeps its timers."""
    config = dataclasses.replace(FAST, rpc_timeout=0.05, rpc_timeout_min=0.05,
                                 rpc_timeout_max=0.05, rpc_retries=0)

    async def main() -> None:
        async with Peer("127.0.0.1", 0, config=config) as a, \
                Peer("127.0.0.1", 0, config=config) as b:
            with pytest.raises(OperationTimeout):  # the node's own timers still run
                await asyncio.wait_for(a.run_service(
                    lambda node, now: node.ask(("::1", 4000), Ping(), now)), 5)
            assert a.stats["socket_errors"] == 1
            assert (await asyncio.wait_for(a.ping(b.address), 5)).id == b.id

    uvloop.run(main())
