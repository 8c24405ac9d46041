"""Whom a lookup asks (docs/SECURITY.md, "Sybil and eclipse attacks"): at most two candidates of
one network that have not failed, whoever names them, and no peer narrower in scope than the
peer that named it. Real encoded datagrams, a virtual clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.messages import Envelope, Nodes
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
