"""Signed /dht records: the signature construction, the ownership rules, the codec, and the
service on a simulated network (every holder checks the rules itself)."""

from __future__ import annotations

import contextlib
import hashlib
import json
from dataclasses import replace

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadom import Config
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    SECURED,
    DhtFind,
    DhtPut,
    DhtRecord,
    DhtRefused,
    Record,
    RefusedCode,
    apply_write,
    decode_record,
    encode_record,
    load,
    make_entry,
    node_signing_key,
    parse_write,
    signed_message,
    storage_key,
    verify,
)
from qadom.errors import (
    InvalidField,
    NotFoundError,
    ProtocolError,
    StorageFull,
    Unauthorized,
    ValueTooLarge,
)
from qadom.messages import Envelope, Error, ErrorCode, Message, Stored
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import NEVER, MemoryStore, Meta

from helpers import EXAMPLE

CONFIG = Config()
ALICE = (1).to_bytes(32, "big")
BOB = (2).to_bytes(32, "big")
N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141



def write(secret: bytes, key: str, data: str, mode: str = SECURED,
          exp_time: int | float | None = None, *, compressed: bool = True) -> Record:
    return Record(key, mode, (make_entry(secret, key, data, mode, exp_time,
                                         compressed=compressed),))


# ---------------------------------------------------------------------------- the signature


def test_the_real_client_request_verifies() -> None:
    record = parse_write("test_id", EXAMPLE, CONFIG)
    assert verify(record.entries[0], "test_id", SECURED)
    assert apply_write(None, record, 1e9, CONFIG) == record
    # Bound to its key, its data and its mode.
    assert not verify(record.entries[0], "test_id2", SECURED)
    assert not verify(record.entries[0], "test_id", CONTROLLED)
    assert not verify(replace(record.entries[0], data="string_payload!"), "test_id", SECURED)


def test_signed_message_is_the_documented_construction() -> None:
    inner = hashlib.sha1(b"k").hexdigest()
    assert signed_message("k", "d", None, SECURED) == hashlib.sha1(
        (inner + "d" + "None" + "SECURED").encode()).digest()
    assert signed_message("k", "d", 1700000000, CONTROLLED) == hashlib.sha1(
        (inner + "d" + "1700000000" + "CONTROLLED").encode()).digest()
    assert len(signed_message("k", "d", None, SECURED)) == 20


def test_high_s_signatures_and_uncompressed_keys_are_accepted() -> None:
    entry = make_entry(ALICE, "k", "v", SECURED, compressed=False)
    assert len(entry.pub_key) == 65 and verify(entry, "k", SECURED)
    s = int.from_bytes(entry.sign[32:], "big")
    high = replace(entry, sign=entry.sign[:32] + (N - s).to_bytes(32, "big"))
    assert verify(high, "k", SECURED)
    for bad in (b"\x00" * 64, b"\xff" * 64, entry.sign[:32] + b"\x00" * 32):
        assert not verify(replace(entry, sign=bad), "k", SECURED)


# ---------------------------------------------------------------------------- JSON writes


@pytest.mark.parametrize(("body", "field"), [
    ([], "body"),
    ({**EXAMPLE, "data": ""}, "data"),
    ({k: v for k, v in EXAMPLE.items() if k != "data"}, "data"),
    ({**EXAMPLE, "data": 5}, "data"),
    ({**EXAMPLE, "data": "\ud800"}, "data"),
    ({**EXAMPLE, "persist_mode": "FOREVER"}, "persist_mode"),
    ({k: v for k, v in EXAMPLE.items() if k != "persist_mode"}, "persist_mode"),
    ({**EXAMPLE, "authorization": {}}, "authorization"),
    ({**EXAMPLE, "authorization": "x"}, "authorization"),
    ({**EXAMPLE, "authorization": {"sign": "00" * 64}}, "authorization.pub_key"),
    ({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "pub_key": {"key": "zz"}}},
     "authorization.pub_key.key"),
    ({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "pub_key": {"key": "05" * 33}}},
     "authorization.pub_key.key"),
    ({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "pub_key": {
        "key": EXAMPLE["authorization"]["pub_key"]["key"], "exp_time": "soon"}}},
     "authorization.pub_key.exp_time"),
    ({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "pub_key": {
        "key": EXAMPLE["authorization"]["pub_key"]["key"], "exp_time": True}}},
     "authorization.pub_key.exp_time"),
    ({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "sign": "ab"}},
     "authorization.sign"),
    ({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "sign": " " + "0" * 127}},
     "authorization.sign"),
])
def test_bad_writes_name_the_field(body: object, field: str) -> None:
    with pytest.raises(InvalidField) as info:
        parse_write("k", body, CONFIG)
    assert info.value.field == field


def test_bad_keys_and_oversized_writes() -> None:
    for key in ("", "x" * (CONFIG.dht_max_key_size + 1), "\udc00"):
        with pytest.raises(InvalidField) as info:
            parse_write(key, EXAMPLE, CONFIG)
        assert info.value.field == "key"
    with pytest.raises(ValueTooLarge):
        parse_write("k", {**EXAMPLE, "data": "x" * CONFIG.dht_max_record_size}, CONFIG)


# ---------------------------------------------------------------------------- the rules


def test_secured_only_its_owner_replaces_it() -> None:
    first = apply_write(None, write(ALICE, "k", "one"), 0, CONFIG)
    second = apply_write(first, write(ALICE, "k", "two", compressed=False), 0, CONFIG)
    assert second.entries[0].data == "two"  # the uncompressed spelling is the same owner
    with pytest.raises(Unauthorized, match="another public key"):
        apply_write(second, write(BOB, "k", "forged"), 0, CONFIG)
    with pytest.raises(Unauthorized, match="SECURED mode"):
        apply_write(second, write(ALICE, "k", "c", CONTROLLED), 0, CONFIG)
    forged = write(ALICE, "k", "x")
    forged = replace(forged, entries=(replace(forged.entries[0], data="y"),))
    with pytest.raises(Unauthorized, match="signature"):
        apply_write(None, forged, 0, CONFIG)


def test_controlled_one_entry_per_key() -> None:
    record = apply_write(None, write(ALICE, "k", "a1", CONTROLLED), 0, CONFIG)
    record = apply_write(record, write(BOB, "k", "b1", CONTROLLED), 0, CONFIG)
    record = apply_write(record, write(ALICE, "k", "a2", CONTROLLED), 0, CONFIG)
    assert [e.data for e in record.entries] == ["a2", "b1"]
    with pytest.raises(Unauthorized, match="CONTROLLED mode"):
        apply_write(record, write(BOB, "k", "s"), 0, CONFIG)
    small = Config(dht_max_record_size=400)
    with pytest.raises(ValueTooLarge):
        apply_write(record, write((3).to_bytes(32, "big"), "k", "c" * 150, CONTROLLED), 0, small)


def test_expiry() -> None:
    with pytest.raises(Unauthorized, match="past"):
        apply_write(None, write(ALICE, "k", "late", exp_time=100), 100, CONFIG)
    record = apply_write(None, write(ALICE, "k", "v", exp_time=100), 50, CONFIG)
    assert record.live(99) is record and record.live(100) is None
    # Once expired, the key is free for anyone, in any mode.
    taken = apply_write(record, write(BOB, "k", "mine", CONTROLLED), 100, CONFIG)
    assert taken.entries[0].data == "mine"
    mixed = apply_write(taken, write(ALICE, "k", "short", CONTROLLED, 150), 100, CONFIG)
    assert [e.data for e in mixed.live(200).entries] == ["mine"]  # type: ignore[union-attr]


NOW = 1_763_700_000  # Unix seconds, November 2025


def resplit(record: Record, data: str, exp_time: int | float) -> Record:
    """``record`` with its one entry's signed text split differently into data and exp_time."""
    (entry,) = record.entries
    assert (data + str(exp_time)) == (entry.data + str(entry.exp_time))
    return replace(record, entries=(replace(entry, data=data, exp_time=exp_time),))


@pytest.mark.parametrize(("data", "exp_time", "forged_data", "forged_exp"), [
    ("price=25", 1_800_000_000, "price=", 251_800_000_000),  # digits of data into exp_time
    ("price=25", 1_800_000_000, "price=2", 51_800_000_000),
    ("v", 1_800_000_000.5, "v1", 800_000_000.5),  # a digit of exp_time into data: in the past
    ("n=1e+", 16, "n=", 1e16),
])
def test_one_signature_vouches_for_one_split_of_data_and_exp_time(
        data: str, exp_time: int | float, forged_data: str, forged_exp: int | float) -> None:
    genuine = write(ALICE, "k", data, SECURED, exp_time)
    forged = resplit(genuine, forged_data, forged_exp)
    assert signed_message("k", data, exp_time, SECURED) == signed_message(
        "k", forged_data, forged_exp, SECURED)
    # The other split has an exp_time past the limit (refused whatever the signature says) or
    # one with fewer digits, long past.
    assert not verify(forged.entries[0], "k", SECURED) or forged_exp < NOW
    with pytest.raises(Unauthorized):
        apply_write(None, forged, NOW, CONFIG)
    if exp_time > NOW:
        held = apply_write(None, genuine, NOW, CONFIG)
        with pytest.raises(Unauthorized):
            apply_write(held, forged, NOW, CONFIG)
        assert held.entries[0].data == data


def test_exp_time_must_lie_below_the_year_2286() -> None:
    last = 9_999_999_999.5
    assert apply_write(None, write(ALICE, "k", "ok", SECURED, last), NOW, CONFIG)
    for late in (10_000_000_000, 1e10, 2**53 - 1):
        body = json.loads(json.dumps(EXAMPLE))
        body["authorization"]["pub_key"]["exp_time"] = late
        with pytest.raises(InvalidField, match="2286") as info:
            parse_write("test_id", body, CONFIG)
        assert info.value.field == "authorization.pub_key.exp_time"
        with pytest.raises(Unauthorized, match="2286"):
            apply_write(None, write(ALICE, "k", "late", SECURED, late), NOW, CONFIG)


def test_a_holder_of_a_record_signed_past_the_year_2286_is_not_read_nor_punished(
        net: tuple[SimNetwork, list[Node]]) -> None:
    network, nodes = net
    a = nodes[0]
    network.run_call(network.call(a, a.dht_records.put, write(ALICE, "far", "kept")))
    far = write(ALICE, "far", "far", SECURED, 10**11)  # taken before the limit, or by another build
    for holder in holders(nodes, "far"):
        holder.store.put_record(RECORD_KIND, storage_key("far"), encode_record(far), 0)
    reader = next(n for n in nodes if n not in holders(nodes, "far"))
    with pytest.raises(NotFoundError):
        network.run_call(network.call(reader, reader.dht_records.get, "far"))
    assert reader.stats["liars"] == 0


def test_a_record_signed_past_the_year_2286_is_still_checked_for_lies(
        net: tuple[SimNetwork, list[Node]]) -> None:
    """Only a true copy is spared: an entry past the limit does not cover a record made for
    another key, nor one whose signatures do not verify."""
    network, nodes = net
    wrong_key = write(ALICE, "other", "x", SECURED, 2 * 10**10)
    unsigned = write(ALICE, "lie", "x", SECURED, 2 * 10**10)
    unsigned = replace(unsigned, entries=(replace(unsigned.entries[0], sign=bytes(64)),))
    for name, record in (("wanted", wrong_key), ("lie", unsigned)):
        liar = min(nodes, key=lambda n: n.id ^ storage_key(name))
        lie_with(liar, record)
        reader = max(nodes, key=lambda n: n.id ^ storage_key(name))
        before = reader.stats["liars"]
        with pytest.raises(NotFoundError):
            network.run_call(network.call(reader, reader.dht_records.get, name))
        assert reader.stats["liars"] > before, name


# ---------------------------------------------------------------------------- the codec


def test_record_roundtrip_and_json_text() -> None:
    record = apply_write(None, write(ALICE, "k", "a", CONTROLLED, 9_999_999_999), 0, CONFIG)
    record = apply_write(record, write(BOB, "k", "b", CONTROLLED, 1700000000.5), 0, CONFIG)
    assert decode_record(encode_record(record), CONFIG) == record
    text = record.to_json_text()
    assert text.startswith('[{"data":"a","persist_mode":"CONTROLLED"')
    example = parse_write("test_id", EXAMPLE, CONFIG)
    assert json.loads(example.to_json_text()) == EXAMPLE


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300) | st.builds(
    cbor2.dumps,
    st.lists(st.one_of(st.integers(), st.text(max_size=5), st.binary(max_size=70), st.none(),
                       st.lists(st.binary(max_size=65), max_size=4)), max_size=5)))
def test_decode_never_raises_anything_but_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        decode_record(data, CONFIG)


def test_node_signing_key_is_kept_in_the_store() -> None:
    store = MemoryStore()
    made = []

    def new() -> bytes:
        made.append(1)
        return bytes(32) if len(made) == 1 else (7).to_bytes(32, "big")  # 0 is not a key

    secret = node_signing_key(store, 0, new)
    assert secret == (7).to_bytes(32, "big") and len(made) == 2
    assert node_signing_key(store, 1, new) == secret and len(made) == 2


# ---------------------------------------------------------------------------- on a network


@pytest.fixture
def net() -> tuple[SimNetwork, list[Node]]:
    network = SimNetwork(seed=5, config=Config(k=5))
    return network, network.add_nodes(30)


def holders(nodes: list[Node], key: str) -> list[Node]:
    return [n for n in nodes if n.store.get_record(RECORD_KIND, storage_key(key)) is not None]


def lie_with(liar: Node, record: Record) -> None:
    """``liar`` answers every DHT_FIND with ``record``. (A store tampered with would not do: a
    node serves only records of its store whose signatures verify.)"""

    def lie(message: Message, sender: int | None, address: object, now: float) -> Message:
        return DhtRecord(encode_record(record), ())

    liar.register_handler(DhtFind, lie)


def test_put_then_get_through_another_node(net: tuple[SimNetwork, list[Node]]) -> None:
    network, nodes = net
    a, b = nodes[0], nodes[17]
    result = network.run_call(network.call(a, a.dht_records.put, write(ALICE, "name", "v1")))
    assert result.stored == 5 and result.refused == 0
    assert len(holders(nodes, "name")) >= 5
    got = network.run_call(network.call(b, b.dht_records.get, "name"))
    assert got.entries[0].data == "v1"
    # The owner replaces it through a third node.
    c = nodes[9]
    network.run_call(network.call(c, c.dht_records.put, write(ALICE, "name", "v2")))
    assert network.run_call(network.call(b, b.dht_records.get, "name")).entries[0].data == "v2"
    with pytest.raises(NotFoundError):
        network.run_call(network.call(b, b.dht_records.get, "other"))


def test_forged_overwrite_is_refused_by_every_holder(net: tuple[SimNetwork, list[Node]]) -> None:
    network, nodes = net
    a = nodes[0]
    network.run_call(network.call(a, a.dht_records.put, write(ALICE, "name", "owned")))
    held = holders(nodes, "name")
    before = {n.id: n.store.get_record(RECORD_KIND, storage_key("name")) for n in held}
    # Through a node that never saw the write: refused by the checks on the way.
    outsider = next(n for n in nodes if n not in held)
    with pytest.raises(Unauthorized):
        network.run_call(network.call(outsider, outsider.dht_records.put,
                                      write(BOB, "name", "forged")))
    # Straight to each holder, skipping every check of the sender: each refuses on its own.
    forged = DhtPut(encode_record(write(BOB, "name", "forged")))
    replies: list[object] = []
    for holder in held:
        assert holder.address is not None

        def on_reply(envelope: Envelope | None, now: float) -> None:
            replies.append(envelope.message if envelope else None)

        network.call(outsider, lambda now, h=holder, r=on_reply: outsider.request(
            h.address, forged, now, expect_id=h.id, on_reply=r))
    network.run_for(5)
    assert len(replies) == len(held)
    assert all(isinstance(r, DhtRefused) and r.code == RefusedCode.UNAUTHORIZED for r in replies)
    after = {n.id: n.store.get_record(RECORD_KIND, storage_key("name")) for n in held}
    assert after == before


def test_expired_records_are_no_longer_served(net: tuple[SimNetwork, list[Node]]) -> None:
    network, nodes = net
    a, b = nodes[0], nodes[20]
    expires = network.now + 100
    network.run_call(network.call(a, a.dht_records.put, write(ALICE, "t", "v", exp_time=expires)))
    assert network.run_call(network.call(b, b.dht_records.get, "t")).entries[0].data == "v"
    network.run_for(expires - network.now + 1)
    with pytest.raises(NotFoundError):
        network.run_call(network.call(b, b.dht_records.get, "t"))


def test_a_holder_serving_a_tampered_record_is_punished(
        net: tuple[SimNetwork, list[Node]]) -> None:
    network, nodes = net
    a = nodes[0]
    network.run_call(network.call(a, a.dht_records.put, write(ALICE, "name", "true")))
    tampered = write(ALICE, "name", "true")
    tampered = replace(tampered, entries=(replace(tampered.entries[0], data="lie"),))
    liars = holders(nodes, "name")
    for liar in liars[:-1]:  # every holder but one lies
        lie_with(liar, tampered)
    readers = [n for n in nodes if n not in liars]
    for reader in readers[:5]:
        got = network.run_call(network.call(reader, reader.dht_records.get, "name"))
        assert got.entries[0].data == "true"
    assert sum(n.stats["liars"] for n in readers) > 0


def test_handler_replies(net: tuple[SimNetwork, list[Node]]) -> None:
    _, nodes = net
    node = nodes[0]
    ok = node.dht_records._handle_put(DhtPut(encode_record(write(ALICE, "h", "v"))), None,
                                      ("127.0.0.9", 1), 0)
    assert isinstance(ok, Stored)
    bad = node.dht_records._handle_put(DhtPut(b"\xff"), None, ("127.0.0.9", 1), 0)
    assert isinstance(bad, DhtRefused) and bad.code == RefusedCode.MALFORMED
    found = node.dht_records._handle_find(DhtFind(storage_key("h")), None, ("127.0.0.9", 1), 0)
    assert isinstance(found, DhtRecord)
    assert load(node.store, storage_key("h"), CONFIG) == decode_record(found.record, CONFIG)


def test_a_put_that_every_holder_refuses_as_full_fails() -> None:
    full = Config(max_store_bytes=1, max_bytes_per_source=1)
    network = SimNetwork(seed=9)
    holders_ = [network.add_node(config=full) for _ in range(5)]
    writer = network.add_node()
    network.run_call(network.call(writer, writer.bootstrap, [network.address_of(holders_[0])]))
    with pytest.raises(StorageFull):
        network.run_call(network.call(writer, writer.dht_records.put,
                                      write(ALICE, "k", "too much")))
    assert all(n.store.get_record(RECORD_KIND, storage_key("k")) is None for n in holders_)


def records_held(nodes: list[Node], *keys: str) -> list[dict[str, bytes]]:
    """What each node's store holds of the /dht records of ``keys``."""
    return [{key: data for key in keys
             if (data := n.store.get_record(RECORD_KIND, storage_key(key))) is not None}
            for n in nodes]


def network_with_writer(writer_config: Config) -> tuple[SimNetwork, Node, list[Node]]:
    """Twelve nodes (k=5) and a writer among them, with its own config, holding nothing."""
    network = SimNetwork(seed=21, config=Config(k=5))
    others = network.add_nodes(12)
    writer = network.add_node(config=writer_config)
    network.run_call(network.call(writer, writer.bootstrap, [network.address_of(others[0])]))
    return network, writer, others


FIRST = write(ALICE, "first", "v1")


@pytest.mark.parametrize("quota", ["items", "bytes"])
def test_a_put_through_a_node_whose_store_is_full_fails_with_nothing_sent(quota: str) -> None:
    # The writer's store takes exactly one record: FIRST.
    room = (Config(k=5, max_store_items=1) if quota == "items"
            else Config(k=5, max_store_bytes=len(encode_record(FIRST))))
    network, writer, others = network_with_writer(room)
    network.run_call(network.call(writer, writer.dht_records.put, FIRST))
    assert writer.store.quotas.total_items == 1 and len(holders(others, "first")) == 5
    before = records_held(others, "first", "second")
    with pytest.raises(StorageFull):  # at once: nothing reaches the network
        network.call(writer, writer.dht_records.put, write(ALICE, "second", "v"))
    network.run_for(30)
    assert records_held(others, "first", "second") == before
    assert writer.dht_records.local("second", network.now) is None
    # The key is still free: another owner writes it through a node with room.
    other = others[3]
    network.run_call(network.call(other, other.dht_records.put, write(BOB, "second", "mine")))


def test_an_overwrite_into_a_full_store_needs_room_only_for_what_it_adds() -> None:
    network, writer, others = network_with_writer(
        Config(k=5, max_store_items=1, max_store_bytes=len(encode_record(FIRST))))
    network.run_call(network.call(writer, writer.dht_records.put, FIRST))
    # The owner's overwrite of the same size replaces the record in the room it holds.
    result = network.run_call(network.call(writer, writer.dht_records.put,
                                           write(ALICE, "first", "v2")))
    assert result.stored == 5
    got = network.run_call(network.call(others[7], others[7].dht_records.get, "first"))
    assert got.entries[0].data == "v2"
    # One that grows the record past the byte quota is refused before it is sent, as is a
    # record of another key (one more item): the holders keep v2, as the writer does.
    before = records_held(others, "first", "other")
    for refused in (write(ALICE, "first", "v3, longer"), write(BOB, "other", "v")):
        with pytest.raises(StorageFull):
            network.call(writer, writer.dht_records.put, refused)
    network.run_for(30)
    assert records_held(others, "first", "other") == before
    assert writer.dht_records.local("first", network.now) == write(ALICE, "first", "v2")


def test_a_put_whose_room_is_taken_during_its_lookup_fails_with_nothing_sent() -> None:
    network, writer, others = network_with_writer(Config(k=5, max_store_items=1))
    call = network.call(writer, writer.dht_records.put, write(ALICE, "second", "v"))
    # While the lookup runs, a record sent to the writer takes its one item.
    first = encode_record(FIRST)
    stored = writer.dht_records._handle_put(DhtPut(first), None, ("127.0.0.9", 1), network.now)
    assert isinstance(stored, Stored)
    with pytest.raises(StorageFull):
        network.run_call(call)
    network.run_for(30)
    assert records_held(others, "second") == [{}] * len(others)


# ---------------------------------------------------------------------------- lifecycle

HOUR = 3600.0
LIFE = Config(k=5)
TICK = LIFE.maintenance_interval


def test_a_dht_put_ttl_is_checked_and_a_republish_only_fills() -> None:
    node = Node(config=LIFE)
    address = ("127.0.0.9", 1)
    skey = storage_key("t")
    for republish in (False, True):  # a ttl of 0 stores nothing
        reply = node.dht_records._handle_put(
            DhtPut(encode_record(write(ALICE, "t", "v")), 0, republish), None, address, 0.0)
        assert isinstance(reply, Error) and reply.code == ErrorCode.BAD_REQUEST
    assert node.store.stats()["records"] == 0
    # A republished CONTROLLED record of two entries fills a node that has none...
    both = apply_write(None, write(ALICE, "t", "a", CONTROLLED), 0, CONFIG)
    both = apply_write(both, write(BOB, "t", "b", CONTROLLED), 0, CONFIG)
    reply = node.dht_records._handle_put(DhtPut(encode_record(both), 600, True), None, address,
                                         0.0)
    assert isinstance(reply, Stored) and load(node.store, skey, CONFIG) == both
    assert node.store.record_meta(RECORD_KIND, skey) == Meta(600.0, HOUR, source="127.0.0.9")
    # ...each of its entries checked as a write: a forged one is refused.
    forged = replace(both, entries=(both.entries[0], replace(both.entries[1], data="lie")))
    other = Node(config=LIFE)
    reply = other.dht_records._handle_put(DhtPut(encode_record(forged), 600, True), None,
                                          address, 0.0)
    assert isinstance(reply, DhtRefused) and reply.code == RefusedCode.UNAUTHORIZED
    assert other.store.stats()["records"] == 0
    # Holding every entry sent, a republish renews the lifetime (never shortening it).
    alone = apply_write(None, write(ALICE, "t", "a", CONTROLLED), 0, CONFIG)
    node.dht_records._handle_put(DhtPut(encode_record(alone), 900, True), None, address, 100.0)
    assert node.store.record_meta(RECORD_KIND, skey) == Meta(1000.0, 100 + HOUR,
                                                             source="127.0.0.9")
    assert load(node.store, skey, CONFIG) == both  # the record itself did not change
    # A record with an entry we do not hold changes nothing at all.
    newer = apply_write(None, write(ALICE, "t", "a2", CONTROLLED), 0, CONFIG)
    node.dht_records._handle_put(DhtPut(encode_record(newer), 5000, True), None, address, 200.0)
    assert load(node.store, skey, CONFIG) == both
    assert node.store.record_meta(RECORD_KIND, skey) == Meta(1000.0, 100 + HOUR,
                                                             source="127.0.0.9")
    # A client's write lands on the record; its TTL may lengthen the lifetime held, never
    # shorten it (else Alice's write would end Bob's entry here at 350).
    node.dht_records._handle_put(DhtPut(encode_record(write(ALICE, "t", "a3", CONTROLLED)), 50),
                                 None, address, 300.0)
    held = load(node.store, skey, CONFIG)
    assert held is not None and [e.data for e in held.entries] == ["a3", "b"]
    assert node.store.record_meta(RECORD_KIND, skey) == Meta(1000.0, 300 + HOUR,
                                                             source="127.0.0.9")
    assert node.dht_records.local("t", 999.0) == held
    node.dht_records._handle_put(DhtPut(encode_record(write(ALICE, "t", "a4", CONTROLLED)), 900),
                                 None, address, 400.0)
    assert node.store.record_meta(RECORD_KIND, skey) == Meta(1300.0, 400 + HOUR,
                                                             source="127.0.0.9")
    assert node.dht_records.local("t", 1300.0) is None  # its lifetime is over


def test_a_republish_adds_the_controlled_owners_a_holder_missed_and_replaces_none() -> None:
    node = Node(config=LIFE)
    address = ("127.0.0.9", 1)
    skey = storage_key("c")
    mine = apply_write(None, write(ALICE, "c", "alice, newest", CONTROLLED), 0, CONFIG)
    node.dht_records._handle_put(DhtPut(encode_record(mine), 600, False), None, address, 0.0)
    before = node.store.record_meta(RECORD_KIND, skey)
    # A lagging storer's copy: Alice's older entry, and Bob's, which this holder never got.
    lagging = apply_write(None, write(ALICE, "c", "alice, older", CONTROLLED), 0, CONFIG)
    lagging = apply_write(lagging, write(BOB, "c", "bob", CONTROLLED), 0, CONFIG)
    reply = node.dht_records._handle_put(DhtPut(encode_record(lagging), 5000, True), None,
                                         address, 10.0)
    held = load(node.store, skey, CONFIG)
    assert isinstance(reply, Stored) and held is not None
    assert [e.data for e in held.entries] == ["alice, newest", "bob"]
    assert node.store.record_meta(RECORD_KIND, skey) == before  # our record, our lifecycle
    # Nothing missing any more: the same republish again changes nothing.
    node.dht_records._handle_put(DhtPut(encode_record(lagging), 5000, True), None, address, 20.0)
    assert load(node.store, skey, CONFIG) == held


def dht_holders(nodes: list[Node], key: str) -> list[Node]:
    return [n for n in nodes if n.store.get_record(RECORD_KIND, storage_key(key)) is not None]


def test_sim_storers_carry_a_dht_record_through_churn_then_it_expires() -> None:
    network = SimNetwork(seed=41, config=LIFE)
    nodes = network.add_nodes(20)
    publisher = nodes[4]
    network.run_call(network.call(publisher, publisher.dht_records.put,
                                  write(ALICE, "churn", "kept")))
    published = network.now
    network.remove(publisher)
    others = [n for n in nodes if n is not publisher]
    first = dht_holders(others, "churn")
    assert len(first) == LIFE.k
    skey = storage_key("churn")
    # The holder closest to the key leaves without notice too, so nobody hands the newcomers
    # the record as they join (the others still list it as closer to the key than themselves).
    gone = min(first, key=lambda n: n.id ^ skey)
    network.remove(gone)
    others = [n for n in others if n is not gone]
    first = [n for n in first if n is not gone]
    newcomers = []
    for i in range(3):
        node = network.add_node(node_id=skey ^ (i + 1))
        network.run_call(network.call(node, node.bootstrap, [network.address_of(others[0])]))
        newcomers.append(node)
    assert dht_holders(newcomers, "churn") == []
    network.run_for(HOUR + 2 * TICK)
    assert dht_holders(newcomers, "churn") == newcomers  # filled by the storers' republish
    for node in newcomers:
        meta = node.store.record_meta(RECORD_KIND, skey)
        assert meta is not None and abs(meta.expires - (published + 24 * HOUR)) < 5
    for node in first:
        network.remove(node)
    rest = [n for n in others if n not in first]
    network.run_for(5 * HOUR)
    reader = rest[0]
    got = network.run_call(network.call(reader, reader.dht_records.get, "churn"))
    assert got.entries[0].data == "kept"
    network.run_for(published + 24 * HOUR + 2 * TICK - network.now)
    assert dht_holders(rest + newcomers, "churn") == []
    with pytest.raises(NotFoundError):
        network.run_call(network.call(reader, reader.dht_records.get, "churn"))


def test_sim_the_putter_renews_a_dht_record_every_24_hours_until_it_forgets_it() -> None:
    network = SimNetwork(seed=42, config=LIFE)
    nodes = network.add_nodes(14)
    publisher = nodes[1]
    network.run_call(network.call(publisher, publisher.dht_records.put,
                                  write(ALICE, "long", "lived")))
    others = [n for n in nodes if n is not publisher]
    network.run_for(47 * HOUR)
    assert len(dht_holders(others, "long")) >= LIFE.k
    assert publisher.stats["republished"] >= 1
    reader = others[-1]
    got = network.run_call(network.call(reader, reader.dht_records.get, "long"))
    assert got.entries[0].data == "lived"
    assert publisher.dht_records.forget("long") is True
    assert publisher.dht_records.forget("long") is False
    network.run_for(26 * HOUR)
    assert dht_holders(nodes, "long") == []


def test_sim_a_dht_record_whose_entries_all_expired_is_dropped_everywhere() -> None:
    network = SimNetwork(seed=43, config=LIFE)
    nodes = network.add_nodes(14)
    publisher = nodes[0]
    ends = network.now + 2 * HOUR
    network.run_call(network.call(publisher, publisher.dht_records.put,
                                  write(ALICE, "brief", "v", exp_time=ends)))
    network.run_call(network.call(nodes[1], nodes[1].dht_records.put,
                                  write(ALICE, "lasting", "v", CONTROLLED)))
    network.run_call(network.call(nodes[1], nodes[1].dht_records.put,
                                  write(BOB, "lasting", "w", CONTROLLED, exp_time=ends)))
    assert publisher in dht_holders(nodes, "brief")
    assert len(dht_holders(nodes, "brief")) >= LIFE.k
    network.run_for(ends + 2 * TICK - network.now)
    assert dht_holders(nodes, "brief") == []  # the putter's own copy too
    lasting = dht_holders(nodes, "lasting")  # one entry never expires: the record stays
    assert len(lasting) >= LIFE.k
    reader = nodes[-1]
    got = network.run_call(network.call(reader, reader.dht_records.get, "lasting"))
    assert [e.data for e in got.entries] == ["v"]


def test_sim_a_republished_older_dht_record_fills_but_never_replaces() -> None:
    network = SimNetwork(seed=44, config=LIFE)
    nodes = network.add_nodes(16)
    skey = storage_key("fill")
    network.run_call(network.call(nodes[0], nodes[0].dht_records.put,
                                  write(ALICE, "fill", "v1")))
    old = encode_record(write(ALICE, "fill", "v1"))
    network.run_call(network.call(nodes[1], nodes[1].dht_records.put,
                                  write(ALICE, "fill", "v2")))
    closest = sorted(nodes, key=lambda n: n.id ^ skey)[:LIFE.k]
    lagging = next(n for n in nodes[2:] if n not in closest)
    # A storer that missed the update republishes v1 now, with 20 hours left.
    lagging.store.put_record(RECORD_KIND, skey, old, network.now,
                             meta=Meta(network.now + 20 * HOUR, network.now, source="10.9.9.9"))
    blank = closest[-1]
    blank.store.delete_record(RECORD_KIND, skey)
    kept = closest[:-1]
    before = [(n.store.get_record(RECORD_KIND, skey), n.store.record_meta(RECORD_KIND, skey))
              for n in kept]
    assert all(load(n.store, skey, CONFIG).entries[0].data == "v2"  # type: ignore[union-attr]
               for n in kept)
    republished_at = network.now
    network.run_for(TICK + 5)
    assert lagging.stats["republished"] == 1
    after = [(n.store.get_record(RECORD_KIND, skey), n.store.record_meta(RECORD_KIND, skey))
             for n in kept]
    assert after == before  # no replica rolled back, none changed its lifecycle
    filled = load(blank.store, skey, CONFIG)
    assert filled is not None and filled.entries[0].data == "v1"  # it had none: filled
    meta = blank.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original and meta.republish_at != NEVER
    assert abs(meta.expires - (republished_at + 20 * HOUR)) < 5


def test_a_holder_names_its_closest_contacts_with_the_record_within_a_datagram() -> None:
    """A /dht get or put runs on to the k closest, so a holder on the way names the contacts it
    knows closest to the key with its record, as many as fit in one datagram."""
    network = SimNetwork(seed=43, config=CONFIG)
    nodes = network.add_nodes(30)
    holder, asker = nodes[3], nodes[7]
    skey = storage_key("named")
    closest = holder.table.closest(skey, CONFIG.k, exclude=asker.id)
    assert len(closest) == CONFIG.k
    for data in ("small", "x" * 7900):
        encoded = encode_record(write(ALICE, "named", data))
        holder.store.put_record(RECORD_KIND, skey, encoded, network.now,
                                meta=Meta(network.now + 3600, network.now + 3600))
        reply = network.run_call(network.call(asker, asker.ask, network.address_of(holder),
                                              DhtFind(skey)))
        assert isinstance(reply, DhtRecord) and reply.record == encoded
        assert list(reply.nodes) == closest[:len(reply.nodes)]
        if data == "small":
            assert len(reply.nodes) == CONFIG.k
        else:  # a record near the size limit leaves room for a few
            assert 0 < len(reply.nodes) < CONFIG.k
            size = len(holder.codec.encode(Envelope(2**64 - 1, holder.id, reply, b"t" * 16)))
            assert size <= CONFIG.max_datagram_size
