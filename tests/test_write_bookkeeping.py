"""A forget of a /dht key while its put is on its way holds, as for a value's set and a
namespace set; a probe's reply that its rules raise on fails that reply and the lookup goes on;
a node whose clock reads negative joins and looks up as one whose clock reads positive."""

from __future__ import annotations

import logging
import random

import pytest

from qadom import Config
from qadom.contact import Address, Contact
from qadom.dhtrecords import RECORD_KIND, SECURED, Record, make_entry, storage_key
from qadom.errors import StorageUnavailable, Unauthorized
from qadom.ids import key_for
from qadom.lookup import Lookup
from qadom.messages import FindValue, Message, Nodes, Value
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import NEVER

from helpers import answer_requests, deliver, node_near

CONFIG = Config(k=8)
HOUR = 3600.0
ALICE = (21).to_bytes(32, "big")
BOB = (22).to_bytes(32, "big")


def write(secret: bytes, key: str, data: str) -> Record:
    return Record(key, SECURED, (make_entry(secret, key, data, SECURED),))


def holding(nodes: list[Node], key: str) -> list[Node]:
    return [n for n in nodes if n.store.get_record(RECORD_KIND, storage_key(key)) is not None]


# ---------------------------------------------------------------------------- forget of a /dht put


def test_sim_a_dht_key_forgotten_while_its_put_is_on_its_way_is_not_renewed() -> None:
    net = SimNetwork(51, config=CONFIG)
    nodes = net.add_nodes(24)
    writer = nodes[4]
    call = net.call(writer, writer.dht_records.put, write(ALICE, "regret", "changed my mind"))
    assert writer.dht_records.forget("regret") is True  # on its way: the forget holds
    result = net.run_call(call)
    assert result.stored >= 1  # the put itself went through: the replicas hold it
    assert writer.store.record_meta(RECORD_KIND, storage_key("regret")) is None  # not ours
    assert writer.dht_records.forget("regret") is False  # nothing of ours left to forget
    assert writer._writing == {}
    others = [n for n in nodes if n is not writer]
    assert holding(others, "regret")
    net.run_for(26 * HOUR)  # a lifetime after the put, with no renewal from its writer
    assert holding(nodes, "regret") == []


def test_sim_a_dht_put_asked_for_after_a_forget_is_kept_and_renewed() -> None:
    net = SimNetwork(52, config=CONFIG)
    nodes = net.add_nodes(24)
    writer = nodes[6]
    first = net.call(writer, writer.dht_records.put, write(ALICE, "again", "forgotten"))
    assert writer.dht_records.forget("again") is True
    later = net.call(writer, writer.dht_records.put, write(ALICE, "again", "put after it"))
    net.run_call(first)
    net.run_call(later)
    meta = writer.store.record_meta(RECORD_KIND, storage_key("again"))
    assert meta is not None and meta.original and meta.republish_at != NEVER
    assert writer._writing == {}
    net.run_for(47 * HOUR)  # past the first lifetime: renewed by its writer
    others = [n for n in nodes if n is not writer]
    assert len(holding(others, "again")) >= CONFIG.k
    reader = others[-1]
    got = net.run_call(net.call(reader, reader.dht_records.get, "again"))
    assert got.entries[0].data == "put after it"
    assert writer.dht_records.forget("again") is True  # ours until now


def test_sim_a_refused_dht_put_leaves_no_write_on_its_way() -> None:
    net = SimNetwork(53, config=CONFIG)
    nodes = net.add_nodes(16)
    net.run_call(net.call(nodes[2], nodes[2].dht_records.put, write(ALICE, "owned", "alice's")))
    outsider = next(n for n in nodes if n not in holding(nodes, "owned"))
    call = net.call(outsider, outsider.dht_records.put, write(BOB, "owned", "forged"))
    assert outsider._writing == {storage_key("owned"): [1, 0]}  # on its way
    with pytest.raises(Unauthorized):
        net.run_call(call)
    assert outsider._writing == {}
    assert outsider.dht_records.forget("owned") is False  # no put of it on its way any more


def test_sim_values_namespaces_and_dht_puts_share_one_bookkeeping_of_writes() -> None:
    net = SimNetwork(54, config=CONFIG)
    writer = net.add_nodes(12)[0]
    value = b"a value"
    put = net.call(writer, writer.dht_records.put, write(ALICE, "shared", "a record"))
    sets = net.call(writer, writer.set, value)
    assert writer._writing == {storage_key("shared"): [1, 0], key_for(value): [1, 0]}
    assert writer.forget(storage_key("shared")) is True  # Node.forget sees the put too
    assert writer._writing[storage_key("shared")] == [1, 1]
    net.run_call(put)
    net.run_call(sets)
    assert writer._writing == {}
    assert writer.store.record_meta(RECORD_KIND, storage_key("shared")) is None
    meta = writer.store.value_meta(key_for(value))
    assert meta is not None and meta.original


# ---------------------------------------------------------------------------- a probe's reply


def raise_(error: Exception) -> None:
    raise error


@pytest.mark.parametrize(("where", "error", "stat", "logged"), [
    ("hit", OverflowError("a rule's bug"), "internal_errors", [OverflowError]),
    ("hit", StorageUnavailable("the disk is away"), "storage_errors", []),
    ("on_hit", OverflowError("a rule's bug"), "internal_errors", [OverflowError]),
], ids=["hit-bug", "hit-store", "on_hit-bug"])
def test_a_probe_reply_the_rule_raises_on_fails_the_probe_and_the_lookup_finishes(
        caplog: pytest.LogCaptureFixture, where: str, error: Exception, stat: str,
        logged: list[type[Exception]]) -> None:
    """A value lookup's probe answers with the value, and judging it raises (in ``hit`` or in
    ``on_hit``): counted, logged as a bug (a store that cannot be read is no bug), and the
    probe counts as failed, so the lookup goes on to the other peers and finishes."""
    target = 1 << 200
    node, codec, contacts = node_near(target)
    probe = contacts[0]  # the closest to the target: a likely holder, asked alone first
    ids = {c.address: c.id for c in contacts}

    def on_message(contact: Contact, message: Message, lookup: Lookup,
                   now: float) -> tuple[Contact, ...] | None:
        return message.nodes if isinstance(message, Nodes) else None

    def hit(message: Message) -> bool:
        if where == "hit":
            raise_(error)
        return isinstance(message, Value)

    hits: list[Message] = []

    def on_hit(message: Message, now: float) -> None:
        hits.append(message)
        raise_(error)

    def reply(address: Address, request: Message) -> tuple[int, Message]:
        return ids[address], Value(b"held") if address == probe.address else Nodes(())

    finished: list[list[Contact]] = []
    node.run_lookup(target, "value", FindValue(target), 0.0, on_message,
                    lambda lookup, now: finished.append(lookup.closest()), probe=True, hit=hit,
                    on_hit=on_hit)
    with caplog.at_level(logging.ERROR, logger="qadom"):
        asked = answer_requests(node, codec, reply, 0.1)
    assert node.stats["probes"] == 1
    assert asked[0] == probe.address
    assert sorted(asked) == sorted(c.address for c in contacts)
    assert finished == [[c for c in contacts if c != probe]]
    assert len(hits) == (where == "on_hit")
    assert node.stats[stat] == 1
    assert sum(node.stats[name] for name in ("internal_errors", "storage_errors")) == 1
    assert [r.exc_info[0] for r in caplog.records
            if r.exc_info and r.levelno >= logging.ERROR] == logged


# ---------------------------------------------------------------------------- a negative clock


def joined_and_looked_up(t0: float) -> tuple[list[list[Address]], list[Address], bytes, bytes]:
    """Six sans-IO nodes whose clocks start at ``t0`` join through the first, one after the
    other; then one looks up an id, sets a value, and another gets it. Returns each node's
    routing table, the lookup's result, and the value as two other nodes get it."""
    nodes: dict[Address, Node] = {}
    for i in range(6):
        node = Node(config=Config(k=4), rng=random.Random(i), now=t0)
        node.address = (f"127.0.0.{i + 1}", 4000)
        nodes[node.address] = node
    first, *rest = nodes
    now = t0
    for address in rest:
        nodes[address].bootstrap([first], now)
        deliver(nodes, now)
    now += 1
    some, other = nodes[rest[2]], nodes[rest[0]]
    found = some.find_nodes(12345, now)
    stored = some.set(b"a value", now)
    deliver(nodes, now)
    got = other.get(stored.result(), now)
    deliver(nodes, now)
    again = nodes[rest[-1]].get(stored.result(), now)
    deliver(nodes, now)
    tables = [sorted(c.address for c in node.table) for node in nodes.values()]
    return tables, [c.address for c in found.result()], got.result(), again.result()


def test_a_network_whose_clocks_read_negative_joins_and_looks_up_as_at_zero() -> None:
    """Any float is a time (a driver may offset its clock): nothing is taken for in backoff,
    or banned, merely because the clock reads below zero."""
    at_zero = joined_and_looked_up(0.0)
    tables, found, got, again = at_zero
    assert all(len(table) >= 4 for table in tables)
    assert len(found) == 4 and got == again == b"a value"
    assert joined_and_looked_up(-1000.0) == at_zero
