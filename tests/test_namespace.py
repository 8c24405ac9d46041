"""Signed namespaces: the signed bytes and storage key, verification, the versioning rule, the
Identity helper, on a virtual clock (qadom.sim) and over real UDP on 127.0.0.1 with 24 peers."""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import stat
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import cbor2
import pytest
from nacl.signing import SigningKey

from qadom import (
    BadSignature,
    Config,
    Identity,
    InvalidArgument,
    InvalidType,
    NamespaceRecord,
    Node,
    NotFoundError,
    OperationTimeout,
    Peer,
    ProtocolError,
    QadomError,
    StaleSequence,
    ValueTooLarge,
)
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.errors import StorageFull
from qadom.messages import Envelope, Error, ErrorCode, Message, Nodes
from qadom.namespace import (
    RECORD_KIND,
    NamespaceFind,
    NamespaceFound,
    NamespaceStore,
    NamespaceStored,
    signing_bytes,
    storage_key,
    supersedes,
)
from qadom.sim import SimNetwork
from qadom.storage import NEVER, Meta

from helpers import FAST, udp_network, wait_until

OWNER = SigningKey(bytes(range(32)))
PUBLIC = bytes(OWNER.verify_key)
OTHER = SigningKey(bytes(range(1, 33)))


def signed(key: int, seq: int, value: bytes, signer: SigningKey = OWNER,
           public_key: bytes = PUBLIC) -> NamespaceRecord:
    """A record signed with plain PyNaCl over the documented bytes (not through qadom)."""
    data = cbor2.dumps(["qadom/namespace/v1", public_key, key.to_bytes(32, "big"), seq, value])
    return NamespaceRecord(public_key, key, seq, value, signer.sign(data).signature)


# ============================================================================= pure pieces


def test_signing_bytes_are_the_documented_cbor_array() -> None:
    key, seq, value = 7, 300, b"hello"
    # Built by hand from RFC 8949: array(5), text(18), bytes(32), bytes(32), uint16, bytes(5).
    by_hand = (b"\x85" + b"\x72qadom/namespace/v1" + b"\x58\x20" + PUBLIC
               + b"\x58\x20" + key.to_bytes(32, "big") + b"\x19\x01\x2c" + b"\x45hello")
    assert signing_bytes(PUBLIC, key, seq, value) == by_hand
    assert signing_bytes(PUBLIC, key, seq, value) == cbor2.dumps(
        ["qadom/namespace/v1", PUBLIC, key.to_bytes(32, "big"), seq, value])


def test_storage_key_is_sha256_of_public_key_and_key() -> None:
    key = 2**256 - 1
    expected = int.from_bytes(hashlib.sha256(PUBLIC + b"\xff" * 32).digest(), "big")
    assert storage_key(PUBLIC, key) == expected
    assert signed(key, 0, b"").storage_key == expected
    assert storage_key(PUBLIC, 1) != storage_key(bytes(OTHER.verify_key), 1)


def test_verification_accepts_plain_pynacl_and_refuses_forgeries() -> None:
    good = signed(5, 3, b"v")
    good.verify()
    assert good.is_valid()
    forgeries = {
        "other value": dataclasses.replace(good, value=b"w"),
        "other key": dataclasses.replace(good, key=6),
        "other seq": dataclasses.replace(good, seq=4),
        "flipped bit": dataclasses.replace(good, signature=bytes([good.signature[0] ^ 1])
                                           + good.signature[1:]),
        "signed by another key": signed(5, 3, b"v", signer=OTHER),
        "not a curve point": dataclasses.replace(good, public_key=b"\xff" * 32),
    }
    for name, record in forgeries.items():
        assert not record.is_valid(), name
        with pytest.raises(BadSignature) as refused:
            record.verify()
        assert isinstance(refused.value, ValueError) and isinstance(refused.value, QadomError)


def test_versioning_rule() -> None:
    v1 = signed(1, 1, b"one")
    assert supersedes(v1, None)
    assert supersedes(signed(1, 2, b"two"), v1)
    assert not supersedes(signed(1, 1, b"one"), v1)  # the same record again: nothing to do
    with pytest.raises(StaleSequence) as older:
        supersedes(signed(1, 0, b"zero"), v1)
    assert older.value.current == 1 and isinstance(older.value, ValueError)
    with pytest.raises(StaleSequence):
        supersedes(signed(1, 1, b"conflict"), v1)


def test_argument_validation() -> None:
    good: dict[str, Any] = {"public_key": PUBLIC, "key": 1, "seq": 0, "value": b"v",
                            "signature": b"s" * 64}
    cases: list[tuple[str, object, type[Exception]]] = [
        ("public_key", PUBLIC[:31], InvalidArgument),
        ("public_key", PUBLIC + b"x", InvalidArgument),
        ("public_key", PUBLIC.hex(), InvalidType), ("signature", b"s" * 63, InvalidArgument),
        ("signature", None, InvalidType), ("key", -1, InvalidArgument),
        ("key", 2**256, InvalidArgument), ("key", True, InvalidType), ("key", "1", InvalidType),
        ("value", b"x" * 8193, ValueTooLarge), ("value", "text", InvalidType),
        ("seq", -1, InvalidArgument), ("seq", 2**63, InvalidArgument), ("seq", 1.0, InvalidType),
        ("seq", False, InvalidType),
    ]
    for field, bad, error in cases:
        with pytest.raises(error):
            NamespaceRecord.checked(**{**good, field: bad})
    edge = NamespaceRecord.checked(**{**good, "key": 2**256 - 1, "seq": 2**63 - 1,
                                      "value": b"x" * 8192})
    assert edge.seq == 2**63 - 1


def test_stored_form_round_trips_and_rejects_garbage() -> None:
    record = signed(9, 2**63 - 1, b"x" * 8192)
    assert NamespaceRecord.from_bytes(record.to_bytes()) == record
    assert cbor2.loads(record.to_bytes()) == [PUBLIC, (9).to_bytes(32, "big"), 2**63 - 1,
                                              b"x" * 8192, record.signature]
    for garbage in (b"", b"\xff", cbor2.dumps([1, 2, 3]), cbor2.dumps([PUBLIC, b"k", 0, b"", b""])):
        with pytest.raises(ProtocolError):
            NamespaceRecord.from_bytes(garbage)


def test_wire_messages_fit_a_datagram_and_are_checked() -> None:
    codec = Codec(Config())
    record = signed(3, 2**63 - 1, b"x" * 8192)
    for message in (NamespaceStore.of(record), NamespaceStore.of(record, 2**64 - 1),
                    NamespaceFind(record.storage_key), NamespaceStored(),
                    NamespaceFound(record.public_key, record.key, record.seq, record.value,
                                   record.signature, (), 2**64 - 1)):
        data = codec.encode(Envelope(1, 2, message))
        assert codec.decode(data).message == message
    assert codec.decode(cbor2.dumps([1, 8, 1, None, [PUBLIC, bytes(32), 0, b"", bytes(64), 60]])
                        ).message == NamespaceStore(PUBLIC, 0, 0, b"", bytes(64), 60)
    bad = cbor2.dumps([1, 8, 1, None, [PUBLIC[:31], bytes(32), 0, b"", bytes(64), 60]])
    with pytest.raises(ProtocolError):
        codec.decode(bad)
    too_high = cbor2.dumps([1, 8, 1, None, [PUBLIC, bytes(32), 2**63, b"", bytes(64), 60]])
    with pytest.raises(ProtocolError):
        codec.decode(too_high)
    without_ttl = cbor2.dumps([1, 8, 1, None, [PUBLIC, bytes(32), 0, b"", bytes(64)]])
    with pytest.raises(ProtocolError):  # the ttl is part of the message
        codec.decode(without_ttl)


def test_identity_generate_save_load_sign(tmp_path: Path) -> None:
    me = Identity.generate()
    path = tmp_path / "me.key"
    me.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    again = Identity.load(path)
    assert again.public_key == me.public_key and len(me.public_key) == 32
    record = again.record(11, b"v", 4)
    record.verify()
    assert record.signature == me.sign(11, b"v", 4)
    assert path.read_text().strip() not in repr(me)
    (tmp_path / "bad.key").write_text("not hex\n")
    with pytest.raises(InvalidArgument):
        Identity.load(tmp_path / "bad.key")
    with pytest.raises(InvalidArgument):
        Identity.from_seed(b"short")
    with pytest.raises(InvalidArgument):
        me.sign(1, b"v", -1)


# ============================================================================= virtual clock

SIM_CONFIG = Config(k=8)


def sim_network(count: int = 30, seed: int = 1) -> tuple[SimNetwork, list[Node]]:
    net = SimNetwork(seed, config=SIM_CONFIG)
    return net, net.add_nodes(count)


def records_at(nodes: list[Node], skey: int) -> dict[int, bytes | None]:
    return {n.id: n.store.get_record(RECORD_KIND, skey) for n in nodes}


def closest_to(nodes: list[Node], target: int, count: int,
               exclude: Node | None = None) -> list[Node]:
    return sorted((n for n in nodes if n is not exclude), key=lambda n: n.id ^ target)[:count]


def test_sim_set_get_versions_and_refusals() -> None:
    net, nodes = sim_network()
    v0 = signed(42, 0, b"first")
    assert net.run_call(net.call(nodes[0], nodes[0].namespace.set, v0)) == SIM_CONFIG.k
    skey = v0.storage_key
    for replica in closest_to(nodes, skey, SIM_CONFIG.k, exclude=nodes[0]):
        assert replica.namespace.local(skey) == v0
    assert net.run_call(net.call(nodes[17], nodes[17].namespace.get, PUBLIC, 42)) == v0

    v1 = signed(42, 1, b"second")
    net.run_call(net.call(nodes[5], nodes[5].namespace.set, v1))
    assert net.run_call(net.call(nodes[23], nodes[23].namespace.get, PUBLIC, 42)) == v1
    net.run_for(5)  # the read repair of that get lands

    before = records_at(nodes, skey)
    # A replayed older record, from a node that holds nothing locally: every replica refuses it.
    far = max(nodes, key=lambda n: n.id ^ skey)
    assert far.namespace.local(skey) is None
    with pytest.raises(StaleSequence):
        net.run_call(net.call(far, far.namespace.set, v0))
    # A conflicting record with the same seq.
    with pytest.raises(StaleSequence):
        net.run_call(net.call(far, far.namespace.set, signed(42, 1, b"other")))
    # From a node that holds v1 itself: refused at once, nothing sent.
    sent = nodes[5].stats["requests_out"]
    with pytest.raises(StaleSequence):
        nodes[5].namespace.set(v0, net.now)
    assert nodes[5].stats["requests_out"] == sent
    # Forgeries are refused before anything is sent.
    with pytest.raises(BadSignature):
        far.namespace.set(dataclasses.replace(v1, seq=2), net.now)
    with pytest.raises(BadSignature):
        far.namespace.set(signed(42, 5, b"evil", signer=OTHER), net.now)
    net.run_for(5)
    assert records_at(nodes, skey) == before
    with pytest.raises(NotFoundError):
        net.run_call(net.call(far, far.namespace.get, PUBLIC, 43))


def raw_call(sender: Node, receiver: Contact, message: Message, now: float) -> Call[Message | None]:
    """Send one wire message bypassing every local check; resolves to the reply (None: none)."""
    call: Call[Message | None] = Call("raw")

    def on_reply(envelope: Envelope | None, now: float) -> None:
        call.resolve(None if envelope is None else envelope.message)

    sender.request(receiver.address, message, now, expect_id=receiver.id, on_reply=on_reply)
    return call


def neighbour(nodes: list[Node], of: Node) -> Node:
    """The node whose id is closest to ``of``'s: always in its routing table (section 4.2)."""
    return closest_to(nodes, of.id, 1, exclude=of)[0]


def test_sim_forged_store_is_refused_and_evicts_nobody() -> None:
    # A request's sender id and address prove nothing: a forged record in a NAMESPACE_STORE is
    # refused, but if it got its claimed sender banned, anyone could empty a routing table by
    # naming its contacts one by one.
    net, nodes = sim_network()
    victim = nodes[4]
    sender = neighbour(nodes, victim)
    assert sender.id in victim.table
    contacts_before = {c.id for c in victim.table}
    forged = dataclasses.replace(signed(1, 0, b"v"), value=b"forged")
    reply = net.run_call(net.call(sender, raw_call, sender,
                                  Contact(victim.id, net.address_of(victim)),
                                  NamespaceStore.of(forged)))
    assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_SIGNATURE
    assert victim.namespace.local(forged.storage_key) is None
    assert victim.stats["namespace_forged"] == 1
    assert victim.stats.get("liars", 0) == 0
    assert {c.id for c in victim.table} >= contacts_before


def test_sim_forged_record_in_a_reply_punishes_the_liar() -> None:
    net, nodes = sim_network()
    good = signed(77, 3, b"good")
    net.run_call(net.call(nodes[0], nodes[0].namespace.set, good))
    skey = good.storage_key
    liar = closest_to(nodes, skey, 1)[0]
    reader = neighbour(nodes, liar)
    # The liar answers with a higher seq that its owner never signed. (A store tampered with
    # would not do: a node serves only records of its store that verify.)
    forged = dataclasses.replace(good, seq=9, value=b"forged")

    def lie(message: Message, sender: int | None, address: object, now: float) -> Message:
        return NamespaceFound(forged.public_key, forged.key, forged.seq, forged.value,
                              forged.signature, (), 3600)

    liar.register_handler(NamespaceFind, lie)
    assert liar.id in reader.table
    assert net.run_call(net.call(reader, reader.namespace.get, PUBLIC, 77)) == good
    assert liar.id not in reader.table
    assert reader.stats["namespace_forged"] >= 1


def test_sim_read_repair_updates_stale_replicas() -> None:
    net, nodes = sim_network()
    reader = nodes[11]
    v0 = signed(8, 0, b"old")
    net.run_call(net.call(nodes[0], nodes[0].namespace.set, v0))
    replicas = closest_to(nodes, v0.storage_key, SIM_CONFIG.k, exclude=reader)
    v1 = signed(8, 1, b"new")
    for replica in replicas[:2]:  # only two replicas saw the update
        assert replica.namespace.accept(v1, net.now)
    blank = replicas[-1]  # and one lost its copy altogether
    blank.store.delete_record(RECORD_KIND, v1.storage_key)
    assert net.run_call(net.call(reader, reader.namespace.get, PUBLIC, 8)) == v1
    net.run_for(5)
    assert all(r.namespace.local(v1.storage_key) == v1 for r in replicas)
    assert reader.stats["namespace_repairs"] >= SIM_CONFIG.k - 2


# ============================================================================= lifecycle

HOUR = 3600.0
TICK = SIM_CONFIG.maintenance_interval


def holding(nodes: list[Node], skey: int) -> list[Node]:
    return [n for n in nodes if n.store.get_record(RECORD_KIND, skey) is not None]


def test_sim_storers_carry_a_record_through_churn_then_it_expires_with_its_ttl() -> None:
    net, nodes = sim_network(24, seed=21)
    publisher = nodes[3]
    record = signed(31, 0, b"churned")
    skey = record.storage_key
    net.run_call(net.call(publisher, publisher.namespace.set, record))
    published = net.now
    net.remove(publisher)  # nobody renews the lifetime
    others = [n for n in nodes if n is not publisher]
    first = holding(others, skey)
    assert len(first) == SIM_CONFIG.k
    # Newcomers whose ids are the closest of all to the storage key join: the holder closest to
    # it hands each the record as they join (paper section 2.5), with what is left of its TTL.
    newcomers = []
    for i in range(3):
        node = net.add_node(node_id=skey ^ (i + 1))
        net.run_call(net.call(node, node.bootstrap, [net.address_of(others[0])]))
        newcomers.append(node)
    net.run_for(5.0)
    assert holding(newcomers, skey) == newcomers
    assert sum(n.stats["handed_over"] for n in others + newcomers) >= len(newcomers)
    net.run_for(HOUR + 2 * TICK)
    for node in newcomers:
        meta = node.store.record_meta(RECORD_KIND, skey)
        assert meta is not None and not meta.original
        assert abs(meta.expires - (published + 24 * HOUR)) < 5  # what was left of the TTL
    # Every original replica leaves: the record lives on through the newcomers' republish.
    for node in first:
        net.remove(node)
    rest = [n for n in others if n not in first]
    net.run_for(5 * HOUR)
    assert len(holding(rest + newcomers, skey)) >= SIM_CONFIG.k
    reader = rest[0]
    assert net.run_call(net.call(reader, reader.namespace.get, PUBLIC, 31)) == record
    # Its publisher is gone: 24 hours after publication it has expired everywhere.
    net.run_for(published + 24 * HOUR + 2 * TICK - net.now)
    assert holding(rest + newcomers, skey) == []
    assert sum(n.stats["expired"] for n in rest + newcomers) >= SIM_CONFIG.k
    with pytest.raises(NotFoundError):
        net.run_call(net.call(reader, reader.namespace.get, PUBLIC, 31))


def test_sim_the_publisher_renews_a_record_every_24_hours_until_it_forgets_it() -> None:
    net, nodes = sim_network(16, seed=22)
    publisher = nodes[2]
    record = signed(32, 0, b"renewed")
    skey = record.storage_key
    net.run_call(net.call(publisher, publisher.namespace.set, record))
    others = [n for n in nodes if n is not publisher]
    net.run_for(47 * HOUR)  # past the first lifetime: renewed at 24 h
    assert len(holding(others, skey)) >= SIM_CONFIG.k
    assert publisher.stats["republished"] >= 1
    meta = publisher.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.original and meta.expires > net.now
    reader = others[-1]
    assert net.run_call(net.call(reader, reader.namespace.get, PUBLIC, 32)) == record
    assert publisher.namespace.forget(PUBLIC, 32) is True
    assert publisher.namespace.forget(PUBLIC, 32) is False
    assert reader.namespace.forget(PUBLIC, 32) is False  # not its publisher
    net.run_for(26 * HOUR)  # a lifetime after the last renewal: gone, here too
    assert holding(nodes, skey) == []


def test_sim_read_repair_carries_the_remaining_ttl() -> None:
    net, nodes = sim_network(seed=23)
    reader = nodes[11]
    record = signed(33, 0, b"repair me")
    skey = record.storage_key
    net.run_call(net.call(nodes[0], nodes[0].namespace.set, record))
    published = net.now
    net.run_for(5.5 * HOUR)  # between two hourly republishes
    replicas = closest_to(nodes, skey, SIM_CONFIG.k, exclude=reader)
    found = replicas[0].namespace._handle_find(NamespaceFind(skey), None, ("127.0.0.1", 9),
                                               net.now)
    assert isinstance(found, NamespaceFound)
    assert abs(found.ttl - (published + 24 * HOUR - net.now)) < 5  # what is left there
    blank = replicas[-1]
    blank.store.delete_record(RECORD_KIND, skey)
    repairs = reader.stats["namespace_repairs"]
    assert net.run_call(net.call(reader, reader.namespace.get, PUBLIC, 33)) == record
    net.run_for(5)
    assert reader.stats["namespace_repairs"] > repairs
    meta = blank.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original
    assert abs(meta.expires - (published + 24 * HOUR)) < 5  # not a fresh 24 hours


def test_sim_an_older_seq_republished_is_refused_and_changes_nothing() -> None:
    net, nodes = sim_network(seed=24)
    v0, v1 = signed(34, 0, b"old"), signed(34, 1, b"new")
    skey = v0.storage_key
    far = sorted(nodes, key=lambda n: n.id ^ skey)
    publisher, writer = far[-1], far[-2]  # neither is a replica
    net.run_call(net.call(publisher, publisher.namespace.set, v0))
    net.run_call(net.call(writer, writer.namespace.set, v1))
    replicas = closest_to(nodes, skey, SIM_CONFIG.k)
    assert all(r.namespace.local(skey) == v1 for r in replicas)
    assert publisher.namespace.local(skey) == v0

    def state() -> list[tuple[bytes | None, Meta | None, int]]:
        return [(r.store.get_record(RECORD_KIND, skey), r.store.record_meta(RECORD_KIND, skey),
                 r.stats["namespace_refused"]) for r in replicas]

    before = state()
    # The publisher's daily republish of v0 comes now.
    meta = publisher.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.original
    publisher.store.put_record(RECORD_KIND, skey, v0.to_bytes(), net.now,
                               meta=dataclasses.replace(meta, republish_at=net.now))
    net.run_for(TICK + 5)
    assert publisher.stats["republished"] == 1
    after = state()
    # Each replica refused it as stale and kept its record and its lifecycle.
    assert [a[:2] for a in after] == [b[:2] for b in before]
    assert [a[2] - b[2] for a, b in zip(after, before, strict=True)] == [1] * SIM_CONFIG.k


def test_a_namespace_store_ttl_is_positive_capped_and_never_shortens() -> None:
    node = Node(config=SIM_CONFIG)
    address = ("127.0.0.9", 1)
    record = signed(35, 0, b"v")
    skey = record.storage_key
    refused = node.namespace._handle_store(NamespaceStore.of(record, 0), None, address, 0.0)
    assert isinstance(refused, Error) and refused.code == ErrorCode.BAD_REQUEST
    assert node.store.get_record(RECORD_KIND, skey) is None and node.store.stats()["records"] == 0
    assert isinstance(node.namespace._handle_store(NamespaceStore.of(record, 2**64 - 1), None,
                                                   address, 0.0), NamespaceStored)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.expires == SIM_CONFIG.expire_time  # capped
    assert meta.republish_at == SIM_CONFIG.republish_interval and meta.source == "127.0.0.9"
    # The same record with less left: the lifetime held stays; the republish moves an hour on.
    node.namespace._handle_store(NamespaceStore.of(record, 60), None, address, 100.0)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.expires == SIM_CONFIG.expire_time
    assert meta.republish_at == 100.0 + SIM_CONFIG.republish_interval
    # A newer version lives by its own TTL.
    newer = signed(35, 1, b"w")
    node.namespace._handle_store(NamespaceStore.of(newer, 60), None, address, 200.0)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert node.namespace.local(skey) == newer and meta is not None and meta.expires == 260.0
    assert node.namespace.local(skey, 260.0) is None  # expired, even before the sweep
    found = node.namespace._handle_find(NamespaceFind(skey), None, address, 250.0)
    assert isinstance(found, NamespaceFound) and found.ttl == 10
    assert isinstance(node.namespace._handle_find(NamespaceFind(skey), None, address, 260.0),
                      Nodes)


def test_a_maintenance_tick_shares_its_republish_batch_with_records() -> None:
    config = dataclasses.replace(SIM_CONFIG, republish_batch=4)
    node = Node(config=config, now=0.0)
    node.table.seen(Contact(5, ("10.0.0.9", 4000)))  # somebody to send to (none answers yet)
    for i in range(10):
        node.store.put_value(i, bytes([i]), Meta(expires=1e9, republish_at=30.0))
        record = signed(i, 0, b"r")
        node.store.put_record(RECORD_KIND, record.storage_key, record.to_bytes(), 0.0,
                              meta=Meta(expires=1e9, republish_at=30.0, source="10.0.0.1"))
    node.handle_timer(config.maintenance_interval)
    assert node.stats["republished"] == 4
    values = [node.store.value_meta(i) for i in range(10)]
    records = [node.store.record_meta(RECORD_KIND, signed(i, 0, b"r").storage_key)
               for i in range(10)]
    assert sum(m is not None and m.republish_at > 30.0 for m in values) == 2
    assert sum(m is not None and m.republish_at > 30.0 for m in records) == 2


# ============================================================================= real UDP

UDP_CONFIG = dataclasses.replace(FAST, k=8)
SIZE = 24


async def raw_request(sender: Peer, receiver: Peer, message: Message) -> Message | None:
    """Send one wire message from ``sender`` to ``receiver`` bypassing every local check."""

    return await sender.run_service(
        lambda node, now: raw_call(node, receiver.contact(), message, now))


def snapshot(peers: list[Peer], skey: int) -> dict[int, bytes | None]:
    return {p.id: p.node.store.get_record(RECORD_KIND, skey) for p in peers}


def replicas_of(peers: list[Peer], skey: int, exclude: Peer | None = None) -> list[Peer]:
    return sorted((p for p in peers if p is not exclude),
                  key=lambda p: p.id ^ skey)[:UDP_CONFIG.k]


async def test_set_and_get_across_24_udp_peers_with_plain_pynacl_and_identity(
        tmp_path: Path) -> None:
    async with udp_network(SIZE, config=UDP_CONFIG) as peers:
        key = 2**200 + 5
        record = signed(key, 0, b"x" * 8192)
        stored = await peers[3].namespace_set(PUBLIC, record.signature, key, record.value)
        assert stored == UDP_CONFIG.k
        for reader in (peers[0], peers[12], peers[23]):
            assert await reader.namespace_get(PUBLIC, key) == b"x" * 8192
        got = await peers[7].namespace_get_record(PUBLIC, key)
        assert (got.seq, got.value, got.signature) == (0, record.value, record.signature)
        with pytest.raises(KeyError):
            await peers[8].namespace_get(PUBLIC, key + 1)

        me = Identity.generate()
        me.save(tmp_path / "id")
        assert await me.set(peers[1], 5, b"one") == 0
        # A fresh object from the saved key still moves forward: it reads the seq first.
        loaded = Identity.load(tmp_path / "id")
        assert await loaded.set(peers[9], 5, b"two") == 1
        assert await loaded.set(peers[10], 5, b"three") == 2
        got = await peers[20].namespace_get_record(me.public_key, 5)
        assert (got.seq, got.value) == (2, b"three")
        assert await me.get(peers[2], 5) == b"three"

        for peer in peers:
            assert peer.stats.get("internal_errors", 0) == 0


async def test_bad_signature_wrong_key_and_rollback_are_refused_everywhere() -> None:
    async with udp_network(SIZE, config=UDP_CONFIG) as peers:
        key = 99
        v0, v1 = signed(key, 0, b"zero"), signed(key, 1, b"one")
        await peers[0].namespace_set(PUBLIC, v0.signature, key, v0.value, 0)
        await peers[1].namespace_set(PUBLIC, v1.signature, key, v1.value, 1)
        skey = v1.storage_key
        replicas = [p for p in peers if p.node.namespace.local(skey) == v1]
        assert len(replicas) >= UDP_CONFIG.k
        before = snapshot(peers, skey)
        stats_before = [p.node.store.stats() for p in peers]

        # Local callers, on every peer: refused before anything is sent.
        attempts: list[tuple[Callable[[Peer], Awaitable[int]], type[Exception]]] = [
            (lambda p: p.namespace_set(PUBLIC, bytes(64), key, b"forged", 2), BadSignature),
            (lambda p: p.namespace_set(PUBLIC, v1.signature, key + 1, v1.value, 1), BadSignature),
            (lambda p: p.namespace_set(PUBLIC, signed(key, 2, b"x", signer=OTHER).signature,
                                       key, b"x", 2), BadSignature),
            (lambda p: p.namespace_set(PUBLIC, v0.signature, key, v0.value, 0), StaleSequence),
        ]
        for peer in peers:
            for attempt, error in attempts:
                with pytest.raises(error):
                    await attempt(peer)

        # The same records sent straight over the wire to every replica: refused by each one.
        for replica in replicas:
            sender = peers[0] if replica is not peers[0] else peers[1]
            replay = await raw_request(sender, replica, NamespaceStore.of(v0))
            assert isinstance(replay, Error) and replay.code == ErrorCode.STALE_SEQUENCE
            same = await raw_request(sender, replica, NamespaceStore.of(v1))
            assert isinstance(same, NamespaceStored)
            liars = replica.stats.get("liars", 0)
            forged = await raw_request(sender, replica, NamespaceStore.of(
                dataclasses.replace(v1, seq=2, value=b"forged")))
            assert isinstance(forged, Error) and forged.code == ErrorCode.BAD_SIGNATURE
            # Refused, and nobody punished: a request's sender id and address prove nothing.
            assert replica.stats.get("liars", 0) == liars

        assert snapshot(peers, skey) == before
        assert [p.node.store.stats() for p in peers] == stats_before
        assert await peers[15].namespace_get(PUBLIC, key) == b"one"


async def test_read_repair_over_udp() -> None:
    async with udp_network(SIZE, config=UDP_CONFIG) as peers:
        key = 12345
        v0, v1 = signed(key, 0, b"old"), signed(key, 1, b"new")
        await peers[0].namespace_set(PUBLIC, v0.signature, key, v0.value, 0)
        reader = peers[-1]
        replicas = replicas_of(peers, v0.storage_key, exclude=reader)
        assert all(r.node.namespace.local(v0.storage_key) == v0 for r in replicas)
        # Two replicas got the update; the others are stale.
        for replica in replicas[:2]:
            assert replica.node.namespace.accept(v1, 0.0)
        got = await reader.namespace_get_record(PUBLIC, key)
        assert (got.seq, got.value) == (1, b"new")
        await wait_until(lambda: all(r.node.namespace.local(v1.storage_key) == v1
                                     for r in replicas), timeout=10)
        assert reader.stats["namespace_repairs"] >= len(replicas) - 2


async def test_peer_namespace_arguments_are_checked_before_anything_is_stored() -> None:
    async with udp_network(3, config=UDP_CONFIG) as peers:
        peer = peers[1]
        before = peer.node.store.stats()
        with pytest.raises(InvalidArgument):
            await peer.namespace_set(PUBLIC[:31], bytes(64), 1, b"v")
        with pytest.raises(InvalidType):
            await peer.namespace_set(PUBLIC, "sig", 1, b"v")  # type: ignore[arg-type]
        with pytest.raises(ValueTooLarge):
            await peer.namespace_set(PUBLIC, bytes(64), 1, b"v" * 8193)
        with pytest.raises(InvalidArgument):
            await peer.namespace_set(PUBLIC, bytes(64), 1, b"v", seq=2**63)
        with pytest.raises(InvalidArgument):
            await peer.namespace_get(PUBLIC, 2**256)
        with pytest.raises(InvalidType):
            await peer.namespace_get("key", 1)  # type: ignore[arg-type]
        assert peer.node.store.stats() == before


async def test_peer_namespace_forget_stops_our_republishing() -> None:
    async with udp_network(3, config=UDP_CONFIG) as peers:
        record = signed(56, 0, b"mine")
        await peers[1].namespace_set(PUBLIC, record.signature, 56, record.value)
        skey = record.storage_key
        meta = peers[1].node.store.record_meta(RECORD_KIND, skey)
        assert meta is not None and meta.original
        replica = peers[2].node.store.record_meta(RECORD_KIND, skey)
        assert replica is not None and not replica.original
        assert peers[2].namespace_forget(PUBLIC, 56) is False  # a replica, not its publisher
        assert peers[1].namespace_forget(PUBLIC, 56) is True
        assert peers[1].namespace_forget(PUBLIC, 56) is False
        meta = peers[1].node.store.record_meta(RECORD_KIND, skey)
        assert meta is not None and not meta.original and meta.republish_at == NEVER
        with pytest.raises(InvalidArgument):
            peers[1].namespace_forget(PUBLIC[:31], 56)


def test_nodes_reply_when_nothing_is_stored() -> None:
    node = Node(config=SIM_CONFIG)
    node.table.seen(Contact(5, ("127.0.0.1", 9)))
    reply = node.namespace._handle_find(NamespaceFind(storage_key(PUBLIC, 1)), None,
                                        ("127.0.0.1", 10), 0.0)
    assert isinstance(reply, Nodes) and [c.id for c in reply.nodes] == [5]
    node.namespace.accept(signed(1, 0, b"v"), 0.0)
    found = node.namespace._handle_find(NamespaceFind(storage_key(PUBLIC, 1)), None,
                                        ("127.0.0.1", 10), 0.0)
    assert isinstance(found, NamespaceFound) and found.record() == signed(1, 0, b"v")
    assert [c.id for c in found.nodes] == [5]


def test_a_namespace_set_that_every_replica_refuses_as_full_fails() -> None:
    full = dataclasses.replace(SIM_CONFIG, max_store_bytes=1, max_bytes_per_source=1)
    net = SimNetwork(seed=9, config=SIM_CONFIG)
    replicas = [net.add_node(config=full) for _ in range(5)]
    writer = net.add_node()
    net.run_call(net.call(writer, writer.bootstrap, [net.address_of(replicas[0])]))
    record = signed(3, 0, b"too much")
    with pytest.raises(StorageFull):
        net.run_call(net.call(writer, writer.namespace.set, record))
    assert all(n.store.get_record("namespace", record.storage_key) is None for n in replicas)


def writer_with_room(room: Config) -> tuple[SimNetwork, Node, list[Node]]:
    """Twelve nodes and a writer among them with its own config, holding nothing."""
    net = SimNetwork(seed=21, config=SIM_CONFIG)
    others = net.add_nodes(12)
    writer = net.add_node(config=room)
    net.run_call(net.call(writer, writer.bootstrap, [net.address_of(others[0])]))
    return net, writer, others


def namespace_held(nodes: list[Node], *records: NamespaceRecord) -> list[list[bytes | None]]:
    """What each node's store holds at the storage keys of ``records``."""
    return [[n.store.get_record(RECORD_KIND, r.storage_key) for r in records] for n in nodes]


FIRST = signed(11, 0, b"first")


@pytest.mark.parametrize("quota", ["items", "bytes"])
def test_a_namespace_set_through_a_node_whose_store_is_full_fails_with_nothing_sent(
        quota: str) -> None:
    # The writer's store takes exactly one record: FIRST.
    room = (dataclasses.replace(SIM_CONFIG, max_store_items=1) if quota == "items"
            else dataclasses.replace(SIM_CONFIG, max_store_bytes=len(FIRST.to_bytes())))
    net, writer, others = writer_with_room(room)
    assert net.run_call(net.call(writer, writer.namespace.set, FIRST)) == SIM_CONFIG.k
    second = signed(12, 0, b"second")
    before = namespace_held(others, FIRST, second)
    sent = writer.stats["requests_out"]
    with pytest.raises(StorageFull):  # at once: nothing reaches the network
        writer.namespace.set(second, net.now)
    assert writer.stats["requests_out"] == sent
    net.run_for(30)
    assert namespace_held(others, FIRST, second) == before
    assert writer.namespace.local(second.storage_key) is None
    # The key is still free: a node with room writes it.
    assert net.run_call(net.call(others[3], others[3].namespace.set, second)) == SIM_CONFIG.k


def test_a_namespace_set_into_a_full_store_needs_room_only_for_what_it_adds() -> None:
    net, writer, others = writer_with_room(dataclasses.replace(
        SIM_CONFIG, max_store_items=1, max_store_bytes=len(FIRST.to_bytes())))
    net.run_call(net.call(writer, writer.namespace.set, FIRST))
    # A newer version of the same size replaces the record in the room it holds.
    same_size = signed(11, 1, b"newer")
    assert net.run_call(net.call(writer, writer.namespace.set, same_size)) == SIM_CONFIG.k
    # One that grows the record past the byte quota is refused before it is sent, as is a record
    # of another key (one more item): every replica keeps what it held, as the writer does.
    grown, other = signed(11, 2, b"newer and longer"), signed(13, 0, b"v")
    before = namespace_held(others, FIRST, other)
    for refused in (grown, other):
        with pytest.raises(StorageFull):
            writer.namespace.set(refused, net.now)
    net.run_for(30)
    assert namespace_held(others, FIRST, other) == before
    assert writer.namespace.local(FIRST.storage_key) == same_size


def test_a_namespace_set_whose_room_is_taken_during_its_lookup_fails_with_nothing_sent() -> None:
    net, writer, others = writer_with_room(dataclasses.replace(SIM_CONFIG, max_store_items=1))
    second = signed(12, 0, b"second")
    call = net.call(writer, writer.namespace.set, second)
    # While the lookup runs, a record sent to the writer takes its one item.
    stored = writer.namespace._handle_store(NamespaceStore.of(FIRST, 3600), None,
                                            ("127.0.0.9", 1), net.now)
    assert isinstance(stored, NamespaceStored)
    with pytest.raises(StorageFull):
        net.run_call(call)
    net.run_for(30)
    assert namespace_held(others, second) == [[None]] * len(others)


# ======================================================================== hostile replicas, owners


def test_sim_a_replica_that_refuses_every_write_as_stale_cannot_veto_a_set() -> None:
    # An ERROR costs nothing to send: a replica that answers STALE_SEQUENCE to every write, with
    # no newer record to show for it, must not make every set of the key fail (nor keep the
    # writer from storing, and so republishing, its own record).
    net, nodes = sim_network(seed=3)
    record = signed(5, 0, b"v")
    skey = record.storage_key
    liar = closest_to(nodes, skey, 1)[0]
    liar.register_handler(NamespaceStore, lambda message, sender, address, now: Error(
        ErrorCode.STALE_SEQUENCE, "seq 0 of key 5 is older than the stored seq 99"))
    writer = max(nodes, key=lambda n: n.id ^ skey)
    assert net.run_call(net.call(writer, writer.namespace.set, record)) == SIM_CONFIG.k - 1
    assert writer.namespace.local(skey) == record
    assert writer.stats["namespace_unproven_refusals"] == 1
    assert net.run_call(net.call(nodes[9], nodes[9].namespace.get, PUBLIC, 5)) == record


def test_sim_a_refusal_backed_by_a_newer_record_still_fails_the_set() -> None:
    # A replica that takes a newer version between the writer's lookup and its store refuses the
    # store, and shows that version when asked: the set fails and says which seq is held.
    net, nodes = sim_network(seed=3)
    older, newer = signed(6, 0, b"old"), signed(6, 1, b"new")
    skey = older.storage_key
    replica = closest_to(nodes, skey, 1)[0]

    def racing(message: NamespaceStore, sender: int | None, address: Any, now: float) -> Message:
        replica.namespace.accept(newer, now, ttl=3600)  # the newer version lands first
        return replica.namespace._handle_store(message, sender, address, now)

    replica.register_handler(NamespaceStore, racing)
    writer = max(nodes, key=lambda n: n.id ^ skey)
    with pytest.raises(StaleSequence) as refused:
        net.run_call(net.call(writer, writer.namespace.set, older))
    assert refused.value.current == 1
    assert writer.namespace.local(skey) is None
    assert writer.stats["namespace_unproven_refusals"] == 0


def test_sim_a_set_that_timed_out_while_its_stores_were_in_flight_stores_nothing_here() -> None:
    # The caller was told the set failed: the writer must not then keep the record as its own
    # (and republish it every day) because the replicas' answers came in after the deadline.
    net, nodes = sim_network(seed=3)
    record = signed(8, 0, b"late")
    skey = record.storage_key
    writer = max(nodes, key=lambda n: n.id ^ skey)
    calls: list[Call[int]] = []
    replica = closest_to(nodes, skey, 1)[0]

    def deadline_passes(message: NamespaceStore, sender: int | None, address: Any,
                        now: float) -> Message:
        calls[0].fail(OperationTimeout("namespace_set timed out"))  # as its deadline would
        return replica.namespace._handle_store(message, sender, address, now)

    replica.register_handler(NamespaceStore, deadline_passes)
    calls.append(net.call(writer, writer.namespace.set, record))
    with pytest.raises(OperationTimeout):
        net.run_call(calls[0])
    net.run_for(10.0)  # every answer is in
    assert replica.namespace.local(skey) == record
    assert writer.namespace.local(skey) is None


def test_a_node_set_of_a_value_over_the_limit_fails_at_once() -> None:
    # Identity.record signs any size; the node's own set must refuse what no datagram can carry
    # before anything is sent, not fail inside a handler and time out.
    net, nodes = sim_network(12)
    record = Identity.from_seed(bytes(32)).record(1, b"x" * (SIM_CONFIG.max_value_size + 1), 0)
    sent = nodes[0].stats["requests_out"]
    with pytest.raises(ValueTooLarge):
        nodes[0].namespace.set(record, net.now)
    assert nodes[0].stats["requests_out"] == sent
    assert nodes[0].stats["internal_errors"] == 0


async def test_concurrent_identity_sets_never_sign_one_seq_twice() -> None:
    # Two sets of one key through one Identity, started together, both read the same current
    # seq: each must still sign its own, or the network holds two values under one seq.
    async with udp_network(4) as peers:
        me = Identity.generate()
        signed_seqs: list[tuple[int, bytes]] = []
        sign = me.sign

        def spy(key: int, value: bytes, seq: int) -> bytes:
            signed_seqs.append((seq, value))
            return sign(key, value, seq)

        me.sign = spy  # type: ignore[method-assign]
        seqs = await asyncio.wait_for(asyncio.gather(me.set(peers[1], 1, b"a"),
                                                     me.set(peers[1], 1, b"b")), 30)
        assert len({seq for seq, _ in signed_seqs}) == len(signed_seqs)
        got = await asyncio.wait_for(peers[2].namespace_get_record(me.public_key, 1), 30)
        assert got.seq == max(seqs)


async def test_identity_set_at_the_highest_seq_says_the_key_cannot_move() -> None:
    async with udp_network(1) as (peer,):
        me = Identity.generate()
        top = (1 << 63) - 1
        await peer.namespace_set(me.public_key, me.sign(3, b"last", top), 3, b"last", top)
        with pytest.raises(StaleSequence) as stuck:
            await asyncio.wait_for(me.set(peer, 3, b"more"), 30)
        assert stuck.value.current == top
        # The same when the highest is one this identity signed, not one the network holds.
        me._last[4] = top
        with pytest.raises(StaleSequence) as signed_here:
            await asyncio.wait_for(me.set(peer, 4, b"more"), 30)
        assert signed_here.value.current == top


def test_identity_save_never_writes_the_seed_into_a_file_made_beforehand(
        tmp_path: Path) -> None:
    # Anyone who can write the directory could make the temporary file first, readable by all
    # or as a link to a file of theirs; the seed must land only in a file save created itself.
    me = Identity.generate()
    path = tmp_path / "me.key"
    planted = tmp_path / f".me.key.{os.getpid()}.tmp"
    planted.write_text("")
    planted.chmod(0o644)
    elsewhere = tmp_path / "elsewhere"
    me.save(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert Identity.load(path).public_key == me.public_key
    planted.unlink(missing_ok=True)
    planted.symlink_to(elsewhere)
    Identity.generate().save(path)
    assert not elsewhere.exists()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_nobody_but_the_owner_makes_a_second_valid_signature_or_namespace() -> None:
    # SECURITY.md: S + L (the classic ed25519 malleation) and small-order keys and R are refused,
    # so a record has one valid signature per signing and a public key one namespace.
    order = 2**252 + 27742317777372353535851937790883648493
    record = signed(5, 1, b"v")
    s = int.from_bytes(record.signature[32:], "little") + order
    assert s < 1 << 256
    assert not dataclasses.replace(
        record, signature=record.signature[:32] + s.to_bytes(32, "little")).is_valid()
    identity = (1).to_bytes(32, "little")  # the neutral point: small order
    for public_key, r in ((identity, identity), (PUBLIC, identity), (identity, bytes(32))):
        assert not NamespaceRecord(public_key, 5, 1, b"v", r + bytes(32)).is_valid()


def test_sim_a_namespace_set_that_no_peer_took_fails_as_a_set_does() -> None:
    """A writer whose known peers have all left: the set fails (OperationTimeout, nothing stored
    here), as a set of a value does, instead of resolving to 0 replicas while only the writer
    holds the record. A node that knows no other peer still stores it and resolves to 0."""
    net, nodes = sim_network(count=6, seed=4)
    writer = nodes[0]
    for node in nodes[1:]:
        net.remove(node)
    record = signed(77, 0, b"v")
    with pytest.raises(OperationTimeout):
        net.run_call(net.call(writer, writer.namespace.set, record))
    assert writer.namespace.local(record.storage_key) is None
    alone = SimNetwork(5, config=SIM_CONFIG).add_nodes(1)[0]
    assert alone.namespace.set(record, 0.0).result() == 0
    assert alone.namespace.local(record.storage_key) == record


def test_sim_replicas_that_all_refuse_as_stale_unbacked_cannot_veto_a_set() -> None:
    """Every replica answers STALE_SEQUENCE and shows no record when asked: no store, but no
    veto either; the writer keeps the record (as its publisher) and the set resolves to 0."""
    net, nodes = sim_network(count=10, seed=6)
    writer = nodes[0]
    for liar in nodes[1:]:
        liar.register_handler(NamespaceStore, lambda message, sender, address, now: Error(
            ErrorCode.STALE_SEQUENCE, "no"))
    record = signed(78, 0, b"v")
    assert net.run_call(net.call(writer, writer.namespace.set, record)) == 0
    assert writer.namespace.local(record.storage_key) == record
