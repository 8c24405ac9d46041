"""A forget of a namespace key while its set is on its way holds, as it does for a value's set:
the record is then neither kept by its writer as its own nor renewed (on a virtual clock,
qadom.sim)."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from nacl.signing import SigningKey

from qadom import Config, NamespaceRecord, Node, StaleSequence
from qadom.namespace import RECORD_KIND
from qadom.sim import SimNetwork
from qadom.storage import NEVER

OWNER = SigningKey(bytes(range(7, 39)))
PUBLIC = bytes(OWNER.verify_key)
CONFIG = Config(k=8)
HOUR = 3600.0


def signed(key: int, seq: int, value: bytes) -> NamespaceRecord:
    """A record signed with plain PyNaCl over the documented bytes."""
    data = cbor2.dumps(["qadom/namespace/v1", PUBLIC, key.to_bytes(32, "big"), seq, value])
    return NamespaceRecord(PUBLIC, key, seq, value, OWNER.sign(data).signature)


def holding(nodes: list[Node], skey: int) -> list[Node]:
    return [n for n in nodes if n.store.get_record(RECORD_KIND, skey) is not None]


def test_sim_a_namespace_key_forgotten_while_its_set_is_on_its_way_is_not_renewed() -> None:
    net = SimNetwork(41, config=CONFIG)
    nodes = net.add_nodes(24)
    writer = nodes[3]
    record = signed(5, 0, b"changed my mind")
    skey = record.storage_key
    call = net.call(writer, writer.namespace.set, record)
    assert writer.namespace.forget(PUBLIC, 5) is True  # on its way: the forget holds
    stored = net.run_call(call)
    assert stored >= 1  # the set itself went through: the replicas hold it
    assert writer.store.record_meta(RECORD_KIND, skey) is None  # not kept here as ours
    assert writer.namespace.forget(PUBLIC, 5) is False  # nothing of ours left to forget
    assert writer._writing == {}
    others = [n for n in nodes if n is not writer]
    assert holding(others, skey)
    net.run_for(26 * HOUR)  # a lifetime after the set, with no renewal from its writer
    assert holding(nodes, skey) == []


def test_sim_a_namespace_set_asked_for_after_a_forget_is_kept_and_renewed() -> None:
    net = SimNetwork(42, config=CONFIG)
    nodes = net.add_nodes(24)
    writer = nodes[5]
    first = signed(6, 0, b"forgotten")
    again = signed(6, 1, b"set again after the forget")
    skey = first.storage_key
    call = net.call(writer, writer.namespace.set, first)
    assert writer.namespace.forget(PUBLIC, 6) is True
    later = net.call(writer, writer.namespace.set, again)  # after the forget: ours as usual
    # The two sets race: the first lands, or seq 1 reached its replicas first and it may not.
    with contextlib.suppress(StaleSequence):
        net.run_call(call)
    net.run_call(later)
    meta = writer.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.original and meta.republish_at != NEVER
    assert writer.namespace.local(skey) == again
    assert writer._writing == {}
    net.run_for(47 * HOUR)  # past the first lifetime: renewed by its writer
    others = [n for n in nodes if n is not writer]
    assert len(holding(others, skey)) >= CONFIG.k
    assert all(n.namespace.local(skey) == again for n in holding(others, skey))
    assert writer.namespace.forget(PUBLIC, 6) is True  # ours until now


def test_sim_a_failed_namespace_set_leaves_no_write_on_its_way() -> None:
    net = SimNetwork(43, config=CONFIG)
    nodes = net.add_nodes(16)
    newer = signed(7, 3, b"newer")
    net.run_call(net.call(nodes[9], nodes[9].namespace.set, newer))
    writer = max(nodes, key=lambda n: n.id ^ newer.storage_key)  # not a replica: it asks them
    assert writer.namespace.local(newer.storage_key) is None
    call = net.call(writer, writer.namespace.set, signed(7, 1, b"older"))
    with pytest.raises(StaleSequence):  # a replica holds seq 3
        net.run_call(call)
    assert writer._writing == {}
    assert writer.namespace.forget(PUBLIC, 7) is False  # no set of it on its way any more
