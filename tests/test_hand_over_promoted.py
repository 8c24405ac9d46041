"""A contact promoted from the replacement cache among our k closest is handed its items."""

from __future__ import annotations

from qadom import Config
from qadom.contact import Contact
from qadom.ids import key_for
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import published_meta


def test_a_replacement_promoted_among_our_k_closest_is_handed_its_items() -> None:
    """A's bucket of B and C is full, D (farther from A than both) waits as a replacement; B
    leaves, the ping that finds it gone promotes D, which is then one of A's k closest and of
    the k closest to a key A is the closest to: A hands it the value at once, not at its next
    renewal a day later."""
    config = Config(k=2)
    net = SimNetwork(4, config=config)
    value = b"handed over"
    key = key_for(value)
    a = net.add_node(node_id=key ^ 1)
    b, c, d = (net.add_node(node_id=a.id ^ (1 << 255 | i)) for i in (1, 2, 3))
    a.store.put_value(key, value, published_meta(net.now, config))

    def answered(node: Node) -> None:
        contact = Contact(node.id, net.address_of(node))
        net.call(a, lambda now: a._saw(contact, now))

    answered(b)
    answered(c)
    net.run_for(5.0)
    answered(c)  # B is now the least recently seen
    net.remove(b)
    answered(d)  # the bucket is full: D waits, and B is pinged
    assert a.table.get(d.id) is None
    net.run_for(60.0)
    assert a.table.get(b.id) is None and a.table.get(d.id) is not None
    assert d.id in [contact.id for contact in a.table.closest(a.id, config.k)]
    assert d.store.get_value(key) == value
