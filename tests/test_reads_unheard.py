"""A read that finds nothing says so (NotFoundError, an empty set) only when at least as many of
the peers nearest the key answered without it as failed it; otherwise those that did not answer
may hold it, and the read fails with OperationTimeout (Node.unheard). Sans-IO, virtual clock."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import cbor2
import pytest
from nacl.signing import SigningKey

from qadom.call import Call
from qadom.config import Config
from qadom.contact import Address, Contact
from qadom.dhtrecords import SECURED, Record, make_entry
from qadom.dhtrecords import storage_key as dht_key
from qadom.errors import NotFoundError, OperationTimeout
from qadom.ids import key_for
from qadom.messages import Entries, Error, ErrorCode, Message, Nodes, Search
from qadom.namespace import NamespaceRecord
from qadom.namespace import storage_key as ns_key
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import answer_requests, node_near

TARGET = 1 << 210


def run_read(silent: int, search: bool = False) -> tuple[Node, BaseException | None]:
    """A read of TARGET by a node knowing 5 contacts near it (k = 5) of which the ``silent``
    closest never answer and the others answer without it."""
    _, _, contacts = node_near(TARGET, 5)
    node = Node(node_id=0, now=0.0, rng=random.Random(1), config=Config(k=5, alpha=5))
    for contact in contacts:
        node.table.seen(contact)
    quiet = {c.address for c in contacts[:silent]}
    ids = {c.address: c.id for c in contacts}

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        if address in quiet:
            return None
        if isinstance(message, Search):
            return ids[address], Entries((), False, ())
        return ids[address], Nodes(())

    call = node.search(TARGET, 0.0) if search else node.get(TARGET, 0.0)
    for now in (0.0, 5.0, 10.0, 15.0):
        node.handle_timer(now)
        answer_requests(node, node.codec, reply, now)
    assert call.done
    return node, call.exception()


def test_a_get_whose_nearest_peers_mostly_stay_silent_fails_with_a_timeout() -> None:
    _, error = run_read(silent=3)
    assert isinstance(error, OperationTimeout), error
    assert "3 of the peers nearest it did not answer" in str(error)
    assert "against 2 that answered" in str(error)


def test_a_get_whose_nearest_peers_mostly_answer_says_not_found() -> None:
    _, error = run_read(silent=2)  # as under churn: some are gone, the others answer
    assert isinstance(error, NotFoundError), error


def test_a_search_whose_nearest_peers_mostly_stay_silent_fails_rather_than_say_empty() -> None:
    _, error = run_read(silent=4, search=True)
    assert isinstance(error, OperationTimeout), error
    _, error = run_read(silent=1, search=True)
    assert error is None  # an empty set: four of five answered


def test_peers_passed_over_for_a_backoff_count_as_not_answering() -> None:
    """The nearest contacts failed of late (their addresses are in backoff): a read does not ask
    them, and what farther peers say without the value does not make it NotFound."""
    _, _, near = node_near(TARGET, 3)
    node = Node(node_id=0, now=0.0, rng=random.Random(2), config=Config(k=4, alpha=4))
    far = [Contact(TARGET ^ (1 << (120 + i)), (f"10.0.1.{i + 1}", 4000)) for i in range(1)]
    for contact in (*near, *far):
        node.table.seen(contact)
        if contact in near:
            node._dead[contact.address] = 100.0  # failed of late: skipped until then
    ids = {c.address: c.id for c in far}
    call = node.get(TARGET, 1.0)
    asked = answer_requests(node, node.codec, lambda a, m: (ids[a], Nodes(tuple(near))), 1.0)
    assert asked and set(asked) <= set(ids)  # only the far one is asked
    assert call.done and isinstance(call.exception(), OperationTimeout), call.exception()


def test_failures_far_from_the_key_do_not_make_a_missing_value_a_timeout() -> None:
    """The lookup's first requests go to far contacts: one names the peers near the key, the
    others refuse (an ERROR, a failure as silence is). The near ones answer without the value:
    those near answered and none near failed, so NotFound, however many far ones failed on the
    way."""
    node = Node(node_id=0, now=0.0, rng=random.Random(3),
                config=Config(k=2, alpha=5, probe_gets=False))
    far = [Contact(1 << (255 - i), (f"10.0.2.{i + 1}", 4000)) for i in range(5)]  # 5 buckets
    near = [Contact(TARGET ^ (1 << (100 + i)), (f"10.0.3.{i + 1}", 4000)) for i in range(2)]
    for contact in far:
        node.table.seen(contact)
    ids = {c.address: c.id for c in (*far, *near)}

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        if address == far[0].address:
            return ids[address], Nodes(tuple(near))
        if address in {c.address for c in near}:
            return ids[address], Nodes(())
        return ids[address], Error(ErrorCode.INTERNAL, "cannot serve it")

    call = node.get(TARGET, 0.0)
    for now in (0.0, 5.0, 10.0, 15.0):
        node.handle_timer(now)
        answer_requests(node, node.codec, reply, now)
    assert isinstance(call.exception(), NotFoundError), call.exception()


def test_namespace_and_dht_reads_cut_off_from_the_holders_do_not_say_not_found() -> None:
    """The 30 nodes nearest each key are cut off from the reader (a partition): a get, a
    namespace read and a /dht read all fail with OperationTimeout, none says NotFound; once the
    partition heals, each finds its record."""
    net = SimNetwork(3)
    nodes = net.build(80)
    writer = nodes[0]
    owner = SigningKey(b"\x05" * 32)
    public = bytes(owner.verify_key)
    signed = cbor2.dumps(["qadom/namespace/v1", public, (42).to_bytes(32, "big"), 1, b"ns"])
    record = NamespaceRecord(public, 42, 1, b"ns", owner.sign(signed).signature)
    entry = make_entry((1).to_bytes(32, "big"), "name", "dht value", SECURED, None)
    net.run_call(net.call(writer, writer.set, b"plain value"))
    net.run_call(net.call(writer, writer.namespace.set, record))
    net.run_call(net.call(writer, writer.dht_records.put, Record("name", SECURED, (entry,))))
    keys = {"get": key_for(b"plain value"), "namespace": ns_key(public, 42),
            "dht": dht_key("name")}

    def nearest(key: int) -> list[Node]:
        return sorted(net.live_nodes(), key=lambda n: n.id ^ key)[:30]

    cut = {id(n) for key in keys.values() for n in nearest(key)}
    reader = next(n for n in net.live_nodes() if id(n) not in cut and n is not writer)
    reads: dict[str, Callable[[], Call[Any]]] = {
        "get": lambda: net.call(reader, reader.get, keys["get"]),
        "namespace": lambda: net.call(reader, reader.namespace.get, public, 42),
        "dht": lambda: net.call(reader, reader.dht_records.get, "name")}
    for name, key in keys.items():
        held = nearest(key)
        net.partition([n for n in net.live_nodes() if n not in held], held)
        # 30 near it were silent; the count is kept only as far as telling needs (k + 1).
        with pytest.raises(OperationTimeout, match="more than 20 of the peers nearest it"):
            net.run_call(reads[name]())
        net.heal()
        assert net.run_call(reads[name]()) is not None
