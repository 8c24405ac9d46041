"""A read that no peer answered says so: nobody to ask (NoPeersError) or nobody answering
(OperationTimeout), never "not found" or an empty set, which would say the network holds
nothing. What the node holds itself is still read."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

import pytest

from qadom import Config, Identity, NoPeersError, NotFoundError, OperationTimeout, Peer, key_for
from qadom.call import Call
from qadom.contact import Address
from qadom.messages import Error, ErrorCode, FindValue, Search
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import FAST

CONFIG = Config(k=4, rpc_timeout=0.5, rpc_timeout_min=0.25, rpc_timeout_max=1.0,
                operation_timeout=20.0)


def each_read(net: SimNetwork, node: Node, owner: bytes) -> list[BaseException | object]:
    """What get, search, namespace get and /dht get of things nobody stored give on ``node``."""
    outcomes: list[BaseException | object] = []
    starts: list[Callable[[float], Call[Any]]] = [
        lambda now: node.get(5, now), lambda now: node.search(5, now),
        lambda now: node.namespace.get(owner, 5, now),
        lambda now: node.dht_records.get("name", now)]
    for start in starts:
        call = net.call(node, start)
        try:
            outcomes.append(net.run_call(call))
        except Exception as exc:  # what the read failed with
            outcomes.append(exc)
    return outcomes


def test_a_lone_node_has_nobody_to_ask_but_reads_what_it_holds() -> None:
    net = SimNetwork(1, config=CONFIG)
    (node,) = net.add_nodes(1)
    owner = Identity.generate().public_key
    assert all(isinstance(o, NoPeersError) for o in each_read(net, node, owner))
    net.run_call(net.call(node, node.append, 5, 9))
    assert net.run_call(net.call(node, node.search, 5)) == {9}
    key = net.run_call(net.call(node, node.set, b"mine"))
    assert net.run_call(net.call(node, node.get, key)) == b"mine"


def test_a_node_whose_peers_are_all_gone_says_none_answered() -> None:
    net = SimNetwork(2, config=CONFIG)
    node, *others = net.add_nodes(8)
    for other in others:
        net.remove(other)
    owner = Identity.generate().public_key
    outcomes = each_read(net, node, owner)
    # The first read asks them all in vain; the routing table has given them up by the later
    # reads, which then have nobody left to ask.
    assert isinstance(outcomes[0], OperationTimeout)
    assert all(isinstance(o, (OperationTimeout, NoPeersError)) for o in outcomes), outcomes


def test_peers_that_answer_without_the_item_give_not_found_and_empty() -> None:
    net = SimNetwork(3, config=CONFIG)
    node, *_ = net.add_nodes(8)
    owner = Identity.generate().public_key
    got, searched, named, dht = each_read(net, node, owner)
    assert isinstance(got, NotFoundError) and searched == set()
    assert isinstance(named, NotFoundError) and isinstance(dht, NotFoundError)


async def test_an_identity_sets_through_a_lone_peer_from_its_own_seqs() -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        owner = Identity.generate()
        assert await owner.set(peer, 7, b"v1") == 0
        assert await owner.set(peer, 7, b"v2") == 1
        assert await peer.namespace_get(owner.public_key, 7) == b"v2"


def test_a_node_whose_known_peers_all_failed_of_late_says_so_not_join_first() -> None:
    net = SimNetwork(4, config=CONFIG)
    node, *_ = net.add_nodes(8)
    for contact in node.table:  # every contact failed twice in a row just now: in backoff
        node._dead[contact.address] = net.now + CONFIG.dead_backoff
    assert len(node.table)
    outcomes = each_read(net, node, Identity.generate().public_key)
    assert all(isinstance(o, OperationTimeout) and "failed" in str(o) for o in outcomes), outcomes


def refuse_every_read(node: Node) -> None:
    """Have ``node`` answer every value and multimap read with ERROR STORAGE_UNAVAILABLE."""
    def refuse(message: object, sender: int | None, address: Address, now: float) -> Error:
        return Error(ErrorCode.STORAGE_UNAVAILABLE, "the disk\nis gone")

    node.register_handler(FindValue, refuse)
    node.register_handler(Search, refuse)


def test_peers_that_all_refuse_a_read_are_told_from_peers_that_are_silent() -> None:
    net = SimNetwork(5, config=CONFIG)
    node, *others = net.add_nodes(6)
    for other in others:
        refuse_every_read(other)
    starts: list[Callable[[float], Call[Any]]] = [
        lambda now: node.get(5, now), lambda now: node.search(5, now)]
    for start in starts:
        try:
            net.run_call(net.call(node, start))
        except OperationTimeout as exc:  # the class the HTTP layer answers 504 for
            text = str(exc)
        else:
            raise AssertionError("a read every peer refused succeeded")
        assert text == ("every peer asked answered with an error: "
                        "STORAGE_UNAVAILABLE (the disk?is gone)"), text


def test_a_read_some_peers_refuse_and_the_others_ignore_says_both() -> None:
    net = SimNetwork(6, config=CONFIG)
    node, *others = net.add_nodes(6)
    refusing, silent = others[:2], others[2:]
    for other in refusing:
        refuse_every_read(other)
    for other in silent:
        net.remove(other)
    try:
        net.run_call(net.call(node, node.get, 5))
    except OperationTimeout as exc:
        text = str(exc)
    else:
        raise AssertionError("a read no peer answered succeeded")
    assert text.startswith("no peer answered the lookup with a result: 2 of the "), text
    assert "answered with an error (the first: STORAGE_UNAVAILABLE (the disk?is gone))" in text



def test_sim_a_node_whose_table_gave_everyone_up_asks_them_again_and_says_so() -> None:
    """Cut off from every contact until its table has given them all up (as its own overload
    can do to a node): a read says OperationTimeout (peers are known: the table gave them up),
    not NoPeersError's "join a network first"; and once the cut heals, the next lookup asks the
    contacts the table gave up, out of backoff, at once, instead of minutes later, and those
    that answer are back in the table."""
    net = SimNetwork(8)
    nodes = net.build(30)
    origin = nodes[0]
    net.partition([origin], nodes[1:])
    for _ in range(12):
        if not len(origin.table):
            break
        with contextlib.suppress(OperationTimeout, NoPeersError):
            net.run_call(net.call(origin, origin.find_nodes, origin.id ^ 1))
    assert len(origin.table) == 0 and origin._given_up
    with pytest.raises(OperationTimeout):
        net.run_call(net.call(origin, origin.find_nodes, 12345))
    net.heal()
    net.run_for(origin.config.dead_backoff + 1)  # out of backoff, well before any ping back
    assert origin.stats["given_up_pings"] == 0
    found = net.run_call(net.call(origin, origin.find_nodes, 12345))
    assert found and len(origin.table) >= len(found)


def test_sim_a_node_whose_every_peer_left_for_good_still_writes_alone() -> None:
    """Once its table has given up every contact (its network gone), a write is stored here
    alone, as on the first node of a network, at once and once those contacts are out of
    backoff and asked again; a read still says OperationTimeout, peers being known."""
    net = SimNetwork(8)
    nodes = net.build(6)
    me = nodes[0]
    for node in nodes[1:]:
        net.remove(node)
    for i in range(40):
        if not len(me.table):
            break
        with contextlib.suppress(OperationTimeout, NoPeersError):
            net.run_call(net.call(me, me.find_nodes, me.id ^ (i + 1)))
    assert len(me.table) == 0 and me._given_up
    for wait in (0.0, me.config.dead_backoff + 1, 3600.0):
        net.run_for(wait)
        value = b"alone after %d s" % wait
        assert net.run_call(net.call(me, me.set, value)) == key_for(value)
        assert me.store.get_value(key_for(value)) == value
    with pytest.raises(OperationTimeout):
        net.run_call(net.call(me, me.get, 1234))
