"""Whom a lookup asks (docs/SECURITY.md, "Sybil and eclipse attacks"): at most two candidates of
one network that have not failed, whoever names them, and no peer narrower in scope than the
peer that named it. Real encoded datagrams, a virtual clock."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from qadom import Config
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.messages import Envelope, Message, Nodes, Value
from qadom.node import Node

from helpers import answer_requests

CODEC = Codec(Config())


def test_fake_contacts_named_in_an_honest_network_do_not_keep_its_peers_out_of_a_lookup() -> None:
    """A lookup takes two candidates per network. A hostile peer, asked first, names two fake
    ids next to the target at addresses of the network of the true closest peer (which answer
    with their own ids): they fail, and the true closest peer, named next by an honest one,
    still takes its network's share and ends the lookup among the closest."""
    node = Node(node_id=0, now=0.0)
    target = 1 << 200
    attacker = Contact(target ^ (1 << 190), ("1.2.3.1", 4000))  # the closest we know
    honest = Contact(target ^ (1 << 196), ("8.8.8.1", 4000))
    truth = Contact(target ^ (1 << 100), ("9.9.9.1", 4000))  # known only to the honest peer
    fakes = (Contact(target ^ 1, ("9.9.9.7", 4000)), Contact(target ^ 2, ("9.9.9.8", 4000)))
    node.table.seen(attacker)
    node.table.seen(honest)
    named = {attacker.address: fakes, honest.address: (truth,)}
    real_ids = {attacker.address: attacker.id, honest.address: honest.id,
                truth.address: truth.id, ("9.9.9.7", 4000): 7, ("9.9.9.8", 4000): 8}
    call = node.find_nodes(target, 0.0)
    for _ in range(20):
        # The attacker's answer first, then the others, as they come.
        out = sorted(node.datagrams_to_send(), key=lambda d: d[1] != attacker.address)
        if not out:
            break
        for data, address in out:
            request = CODEC.decode(data)
            reply = Envelope(request.rpc_id, real_ids[address], Nodes(named.get(address, ())))
            node.datagram_received(CODEC.encode(reply), address, 0.1)
    assert call.done
    assert node.stats["wrong_id"] == 2  # both fakes failed
    assert truth in call.result()
    assert [c for c in call.result() if c in fakes] == []


@pytest.mark.parametrize(("naming", "asked"), [
    ("1.2.3.4", ["5.6.7.8"]),  # out on the Internet: Internet peers only
    ("10.1.2.3", ["5.6.7.8", "192.168.1.5"]),  # on a private network: that network too
    ("127.0.0.1", ["5.6.7.8", "192.168.1.5", "127.0.0.2"]),  # this machine: anything
])
def test_a_peer_names_no_peer_narrower_in_scope_than_itself(naming: str,
                                                            asked: list[str]) -> None:
    """A peer out on the Internet naming loopback or private addresses would have us send
    requests to services of our own machine or network: those it names are left out of the
    lookup and counted."""
    node = Node(node_id=0, now=0.0, config=replace(Config(), alpha=1, k=4))
    codec = Codec(node.config)
    target = 1 << 200
    peer = Contact(target ^ (1 << 100), (naming, 4000))
    node.table.seen(peer)
    named = tuple(Contact(target ^ (i + 1), (host, 80)) for i, host in enumerate(
        ["127.0.0.2", "192.168.1.5", "5.6.7.8"]))
    ids = {c.address: c.id for c in (peer, *named)}
    call = node.find_nodes(target, 0.0)
    hosts = [a[0] for a in answer_requests(node, codec, lambda address, _: (
        ids[address], Nodes(named if address == peer.address else ())), 0.1)]
    assert call.done
    assert hosts[0] == naming and sorted(hosts[1:]) == sorted(asked)
    assert node.stats["contacts_out_of_scope"] == 3 - len(asked)


def _play(node: Node, call: Call[Any], first: Address,
          reply: Callable[[Address], tuple[int, Message] | None]) -> None:
    """Answer what ``node`` asks with ``reply(address)`` (None: silence), the peer at ``first``
    before the others, on a virtual clock that jumps to the node's timers when nobody answers,
    until ``call`` is done."""
    now = 0.0
    for _ in range(200):
        if call.done:
            return
        out = sorted(node.datagrams_to_send(), key=lambda d: d[1] != first)
        if not out:
            timer = node.get_timer()
            assert timer is not None
            now = max(now, timer)
            node.handle_timer(now)
            continue
        now += 0.01
        for data, address in out:
            request = CODEC.decode(data)
            answer = reply(address) if request.message.IS_REQUEST else None
            if answer is not None:
                sender, message = answer
                node.datagram_received(CODEC.encode(Envelope(request.rpc_id, sender, message)),
                                       address, now)
    raise AssertionError("the call did not end")


def _shadowed(target: int) -> tuple[Contact, Contact, list[Contact], tuple[Contact, ...]]:
    """A hostile peer, the closest we know; an honest one; the 20 true closest peers, which
    only the honest one knows; and their ids at addresses of the hostile peer's choosing."""
    attacker = Contact(target ^ (1 << 190), ("1.2.3.1", 4000))
    honest = Contact(target ^ (1 << 196), ("8.8.8.1", 4000))
    truths = [Contact(target ^ (1 << 100) ^ i, (f"9.9.{i}.1", 4000)) for i in range(1, 21)]
    fakes = tuple(Contact(t.id, (f"5.{i}.0.1", 4000)) for i, t in enumerate(truths, 1))
    return attacker, honest, truths, fakes


@pytest.mark.parametrize("fakes_answer", [False, True])
def test_ids_named_first_at_wrong_addresses_do_not_hide_the_true_closest(
        fakes_answer: bool) -> None:
    """A hostile peer, answering first, names the 20 true closest ids at addresses that stay
    silent (or answer with another id); the honest peer names them at their real addresses
    a moment later. The lookup asks them there once the fake addresses fail, and finds all."""
    node = Node(node_id=0, now=0.0)
    target = 1 << 200
    attacker, honest, truths, fakes = _shadowed(target)
    node.table.seen(attacker)
    node.table.seen(honest)
    ids = {c.address: c.id for c in (attacker, honest, *truths)}
    named = {attacker.address: fakes, honest.address: tuple(truths)}

    def reply(address: Address) -> tuple[int, Message] | None:
        if address not in ids:  # a fake address: silent, or another peer
            return (12345, Nodes(())) if fakes_answer else None
        return ids[address], Nodes(named.get(address, ()))

    call = node.find_nodes(target, 0.0)
    _play(node, call, attacker.address, reply)
    assert sorted(call.result(), key=lambda c: c.id) == truths
    assert node.stats["wrong_id" if fakes_answer else "timeouts"] >= 20


def test_a_get_finds_the_value_the_true_closest_hold_though_their_ids_are_named_elsewhere(
        ) -> None:
    """The same attack on a get: the 20 true closest hold the value; the hostile peer names
    their ids at silent addresses first. The get asks them at their real addresses."""
    value = b"hello world"
    key = int.from_bytes(hashlib.sha256(value).digest(), "big")
    node = Node(node_id=key ^ (1 << 255), now=0.0, config=replace(Config(), probe_gets=False))
    attacker, honest, truths, fakes = _shadowed(key)
    node.table.seen(attacker)
    node.table.seen(honest)
    ids = {c.address: c.id for c in (attacker, honest, *truths)}

    def reply(address: Address) -> tuple[int, Message] | None:
        if address == attacker.address:
            return attacker.id, Nodes(fakes)
        if address == honest.address:
            return honest.id, Nodes(tuple(truths))
        if address in ids:
            return ids[address], Value(value, 80000)
        return None  # a fake address

    call = node.get(key, 0.0)
    _play(node, call, attacker.address, reply)
    assert call.result() == value
