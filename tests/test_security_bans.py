"""Liars stay out for their whole ban (docs/SECURITY.md, "Value poisoning"): a node that answered
a get with a false value is neither asked again nor let back into the routing table, under
whatever id, until ``liar_backoff`` has passed. Real encoded datagrams, a virtual clock."""

from __future__ import annotations

from dataclasses import replace

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.ids import key_for
from qadom.messages import Nodes, Value
from qadom.node import Node

from helpers import answer_requests

VALUE = b"the truth"
KEY = key_for(VALUE)
LIAR: Address = ("1.2.3.4", 4000)


def answer(node: Node, codec: Codec, ids: dict[Address, int], now: float,
           asked: list[Address]) -> None:
    """Answer every request ``node`` sends until it sends none: the liar's address with a false
    value, everybody else with no contacts."""
    asked += answer_requests(node, codec, lambda address, _: (
        ids[address], Value(b"lies") if address == LIAR else Nodes(())), now)


def at_liar(node: Node) -> list[Contact]:
    """What the routing table holds at the liar's address, contacts and replacements."""
    held = [c for c in node.table if c.address == LIAR]
    for bucket in node.table.buckets:
        held += [c for c in bucket.replacements.values() if c.address == LIAR]
    return held


def test_a_liar_waiting_as_a_replacement_under_another_id_is_not_promoted() -> None:
    """The liar's address also waits in the replacement cache of the bucket it lied from, under
    a second id. Dropping the liar frees a slot; that slot must not go to the same address."""
    config = replace(Config(), k=2, alpha=1)
    own = KEY ^ (1 << 255)  # the key lies in the half of the id space we do not
    node = Node(node_id=own, now=0.0, config=config)
    codec = Codec(config)
    near = [Contact(own ^ 1, ("8.8.0.1", 4000)), Contact(own ^ 2, ("8.8.1.1", 4000))]
    liar = Contact(KEY ^ 1, LIAR)
    other = Contact(KEY ^ 2, ("5.6.7.8", 4000))
    second = Contact(KEY ^ 3, LIAR)  # the same address under another id
    for contact in (*near, liar, other, second):
        node.table.seen(contact)
    bucket = node.table.bucket_for(KEY)
    assert list(bucket.contacts) == [liar.id, other.id] and second.id in bucket.replacements
    ids = {c.address: c.id for c in (*near, liar, other)}
    call = node.get(KEY, 0.0)
    asked: list[Address] = []
    answer(node, codec, ids, 0.0, asked)
    assert call.done and node.stats["liars"] == 1
    assert at_liar(node) == []
    node.table.check_invariants()


def test_a_running_lookup_does_not_ask_an_address_banned_while_it_runs() -> None:
    """A lookup holds two candidates at the liar's address (two ids). The first lies: the
    second, at the same address, is not asked afterwards."""
    config = replace(Config(), k=3, alpha=1, probe_gets=False)
    own = KEY ^ (1 << 255)
    node = Node(node_id=own, now=0.0, config=config)
    codec = Codec(config)
    first = Contact(KEY ^ 1, LIAR)
    second = Contact(KEY ^ 2, LIAR)
    honest = Contact(KEY ^ 3, ("5.6.7.8", 4000))
    for contact in (first, second, honest):
        node.table.seen(contact)
    ids = {first.address: first.id, honest.address: honest.id}
    asked: list[Address] = []
    call = node.get(KEY, 0.0)
    answer(node, codec, ids, 0.0, asked)
    assert call.done and node.stats["liars"] == 1
    assert asked.count(LIAR) == 1 and honest.address in asked
    assert at_liar(node) == []
