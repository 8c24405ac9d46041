"""Section 2.5's hand-over reaches past a holder's own subtree: a key in a sibling subtree that
holds no node is one its holder is the closest to, and a newcomer among the key's k closest
gets it when it joins, from that holder only, not an hour later from the republish."""

from __future__ import annotations

import random

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.ids import key_for
from qadom.messages import Append
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import Meta

CONFIG = Config(k=4)
VALUE = b"a key beside its closest holder"


def test_a_key_in_an_empty_sibling_subtree_reaches_a_newcomer_when_it_joins() -> None:
    key = key_for(VALUE)
    net = SimNetwork(seed=3, config=CONFIG)
    # Ids by the bit where they first differ from the key. The holder closest to the key
    # differs from it at bit 252, so the key lies in the sibling of the subtree the holder
    # shares with its nearest contact (which differs from it at bit 251): a sibling that holds
    # no node at all. The holder is the closest node to the key, yet the key is outside the
    # range of keys that share more leading bits with it than its nearest contact does.
    closest = net.add_node(node_id=key ^ (1 << 252) ^ 5)
    beside = net.add_node(node_id=closest.id ^ (1 << 251) ^ 7)
    farther = [net.add_node(node_id=key ^ (1 << 253) ^ i) for i in (1, 2)]
    far = [net.add_node(node_id=key ^ (1 << bit) ^ i) for bit in (254, 255) for i in (1, 2, 3)]
    nodes = [closest, beside, *farther, *far]
    for node in nodes[1:]:
        net.run_call(net.call(node, node.bootstrap, [net.address_of(closest)]))
    publisher = far[-1]
    assert net.run_call(net.call(publisher, publisher.set, VALUE)) == key
    holders = {n.id for n in nodes if n.store.get_value(key) is not None}
    assert holders == {closest.id, beside.id, *(n.id for n in farther), publisher.id}
    assert not any(n.stats["handed_over"] for n in nodes)

    # A newcomer beside the closest holder, second closest to the key of all, joins through a
    # far node; its own lookup makes the holders learn of it.
    newcomer = net.add_node(node_id=closest.id ^ 3)
    net.run_call(net.call(newcomer, newcomer.bootstrap, [net.address_of(far[0])]))
    assert newcomer.id in net.true_closest(key, CONFIG.k)
    assert newcomer.id in closest.table
    net.run_for(10.0)  # the verification of the join, then the copies
    assert net.now < CONFIG.republish_interval  # no republish has run: a hand-over only
    meta = newcomer.store.value_meta(key)
    assert meta is not None and not meta.original
    assert newcomer.store.get_value(key) == VALUE
    # Only the holder closest to the key sent it: the one beside it, whose table holds that
    # closer holder, left the key to it although the key lies in its empty sibling too.
    senders = [n for n in nodes if n.stats["handed_over"]]
    assert senders == [closest]
    assert closest.stats["handed_over"] == 1


def test_a_holder_hands_over_no_key_that_a_contact_it_knows_is_closer_to() -> None:
    """Driven directly: the keys of an empty sibling subtree go to a newcomer only when no other
    contact of the holder's table is closer to them than the holder itself."""
    holder = Node(config=CONFIG, rng=random.Random(5), node_id=(0b01100 << 251) | 5)
    mine = (0b01110 << 251) | 9  # empty sibling at bit 252, the holder the closest to it
    theirs = (0b01111 << 251) | 9  # same sibling, but the contact beside us is closer
    for key in (mine, theirs):
        holder.store.add_entry(key, 1, Meta(1e9, 1e9, original=True))
    contacts = [Contact(holder.id ^ (1 << 251) ^ (1 << 250), ("127.0.0.2", 4000)),
                Contact((0b010 << 253) | 1, ("127.0.0.3", 4000)),
                Contact((0b1 << 255) | 1, ("127.0.0.4", 4000))]
    for contact in contacts:
        holder.table.seen(contact)
    newcomer = Contact(holder.id ^ 3, ("127.0.0.9", 4000))
    holder._saw(newcomer, 10.0)
    assert holder.stats["handed_over"] == 1
    codec = Codec(CONFIG)
    sent = [codec.decode(data).message for data, address in holder.datagrams_to_send()
            if address == newcomer.address]
    assert [m.key for m in sent if isinstance(m, Append)] == [mine]


def test_a_newcomer_that_is_the_k_plus_first_closest_counting_the_holder_gets_nothing() -> None:
    """The routing table leaves its own node out: a newcomer that is the k-th closest contact
    to a key, but the (k+1)-th node counting the holder, is not one of its k closest."""
    config = Config(k=2)
    holder = Node(config=config, rng=random.Random(1), node_id=1)  # key 0: distances 1, 2, 3
    holder.store.add_entry(0, 5, Meta(1e9, 1e9, original=True))
    holder.table.seen(Contact(2, ("127.0.0.2", 4000)))
    newcomer = Contact(3, ("127.0.0.3", 4000))
    holder._saw(newcomer, 10.0)
    sent = [Codec(config).decode(data).message for data, address in holder.datagrams_to_send()
            if address == newcomer.address]
    assert [m for m in sent if isinstance(m, Append)] == []
    assert holder.stats["handed_over"] == 0


def test_with_k_1_a_holder_farther_than_another_contact_hands_nothing_over() -> None:
    """With k = 1 the newcomer alone is the k closest contact to a key, and a contact the holder
    knows may still be closer to the key than the holder: that contact sends it, not us."""
    config = Config(k=1)
    holder = Node(config=config, rng=random.Random(1), node_id=60)  # key 8: distance 52
    holder.store.add_entry(8, 5, Meta(1e9, 1e9, original=True))
    holder.table.seen(Contact(37, ("127.0.0.2", 4000)))  # distance 45
    newcomer = Contact(42, ("127.0.0.3", 4000))  # distance 34
    holder._saw(newcomer, 10.0)
    sent = [Codec(config).decode(data).message for data, address in holder.datagrams_to_send()
            if address == newcomer.address]
    assert [m for m in sent if isinstance(m, Append)] == []
    assert holder.stats["handed_over"] == 0
