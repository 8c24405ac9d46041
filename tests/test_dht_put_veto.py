"""/dht puts: only the k closest to a key decide whether a write lands. A peer outside them that
holds nothing for the key takes any validly signed write, so anyone can plant there a record of
the key in the other mode, or under another public key; such a copy must not make the owner's
writes fail, whether the put meets it on its lookup or it is the writing node's own copy. The k
closest still refuse a write their rules refuse, with nothing stored anywhere."""

from __future__ import annotations

import pytest

from qadom import Config
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    SECURED,
    DhtPut,
    Record,
    encode_record,
    make_entry,
    public_key,
    storage_key,
)
from qadom.errors import Unauthorized
from qadom.node import Node
from qadom.sim import SimNetwork

KEY = "owned-by-x"
SKEY = storage_key(KEY)
X = (11).to_bytes(32, "big")
EVE = (66).to_bytes(32, "big")
K = 4


def network(seed: int) -> tuple[SimNetwork, list[Node]]:
    """24 nodes sorted by their distance to KEY, the first K of which are its k closest."""
    net = SimNetwork(seed, config=Config(k=K))
    nodes = sorted(net.add_nodes(24), key=lambda node: node.id ^ SKEY)
    return net, nodes


def put(net: SimNetwork, via: Node, secret: bytes, data: str, mode: str = SECURED) -> int:
    """Put a write of ``secret`` through ``via``; how many of the k closest stored it."""
    write = Record(KEY, mode, (make_entry(secret, KEY, data, mode),))
    result = net.run_call(net.call(via, via.dht_records.put, write))
    return result.stored


def plant(net: SimNetwork, nodes: list[Node], targets: list[Node]) -> None:
    """Eve sends, as a client's write, a CONTROLLED record of KEY under her own key to
    ``targets``, which hold nothing for it and take it."""
    bogus = DhtPut(encode_record(Record(KEY, CONTROLLED,
                                        (make_entry(EVE, KEY, "mine", CONTROLLED),))), 86400)
    eve = nodes[-1]
    for target in targets:
        net.call(eve, eve.request, net.address_of(target), bogus)
    net.run_for(5)
    for target in targets:
        held = target.dht_records.local(KEY, net.now)
        assert held is not None and held.mode == CONTROLLED


def held_by(node: Node, now: float) -> tuple[str, tuple[str, ...], tuple[bytes, ...]] | None:
    record = node.dht_records.local(KEY, now)
    if record is None:
        return None
    return (record.mode, tuple(e.data for e in record.entries),
            tuple(e.owner for e in record.entries))


def test_copies_planted_outside_the_k_closest_do_not_veto_the_owners_update() -> None:
    net, nodes = network(7)
    assert put(net, nodes[0], X, "v1") == K
    # 8 peers just outside the k closest (the first of them, nodes[K], took the write too: a
    # put through one of the k closest sends it to the k others it found).
    planted = nodes[K + 1:K + 9]
    plant(net, nodes, planted)
    assert all(held_by(node, net.now) == (SECURED, ("v1",), (public_key(X),))
               for node in nodes[:K])
    # Through a peer whose own copy is planted (it is not one of the k closest), and through
    # peers whose lookup meets planted copies on its way.
    for number, via in enumerate([planted[1], planted[5], *nodes[14:23]]):
        assert put(net, via, X, f"v{number + 2}") == K
        got = net.run_call(net.call(nodes[20], nodes[20].dht_records.get, KEY))
        assert (got.mode, got.entries[0].data) == (SECURED, f"v{number + 2}")
    # The writing peer's planted copy gave way to the owner's write, which it now renews.
    assert held_by(planted[1], net.now) == (SECURED, ("v2",), (public_key(X),))
    meta = planted[1].store.record_meta(RECORD_KIND, SKEY)
    assert meta is not None and meta.original and meta.owners == frozenset({public_key(X)})


def test_a_copy_past_the_k_closest_does_not_veto_a_write_through_one_of_them() -> None:
    """A node among the k closest finds k other peers, the farthest of which is not among
    the k closest: its copy decides nothing either."""
    net, nodes = network(7)
    assert put(net, nodes[20], X, "v1") == K  # through a peer further out: nodes[K] holds none
    plant(net, nodes, [nodes[K]])
    assert put(net, nodes[1], X, "v2") == K - 1  # the planted peer refuses it, the others store
    assert all(held_by(node, net.now) == (SECURED, ("v2",), (public_key(X),))
               for node in nodes[:K])


@pytest.mark.parametrize("mode", [SECURED, CONTROLLED])
@pytest.mark.parametrize("via", [1, 12])
def test_the_k_closest_still_refuse_another_owners_write(mode: str, via: int) -> None:
    """X holds the key SECURED at the k closest; Eve's write of it, in either mode, through
    one of them or a peer further out, is refused, and nothing stored changes anywhere."""
    net, nodes = network(7)
    assert put(net, nodes[0], X, "v1") == K
    plant(net, nodes, nodes[K + 1:K + 3])
    before = {node.id: node.store.get_record(RECORD_KIND, SKEY) for node in nodes}
    with pytest.raises(Unauthorized):
        put(net, nodes[via], EVE, "hijack", mode)
    after = {node.id: node.store.get_record(RECORD_KIND, SKEY) for node in nodes}
    assert after == before
    got = net.run_call(net.call(nodes[20], nodes[20].dht_records.get, KEY))
    assert (got.mode, got.entries[0].data) == (SECURED, "v1")
