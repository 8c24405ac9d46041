"""Signed records at their boundaries, on the simulator (virtual clock, seeded) and on Node
objects: entries whose exp_time passes while a copy travels, refusals of every holder, stores
that cannot be read."""

from __future__ import annotations

from qadom import Config
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    DhtPut,
    Record,
    apply_write,
    encode_record,
    make_entry,
    storage_key,
)
from qadom.messages import Error, ErrorCode, Stored
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import DueRecord

ALICE = (1).to_bytes(32, "big")
BOB = (2).to_bytes(32, "big")
LIFE = Config(k=5)
SOURCE = ("127.0.0.9", 1)


def one_write(secret: bytes, key: str, data: str, mode: str = CONTROLLED,
              exp_time: float | None = None) -> Record:
    return Record(key, mode, (make_entry(secret, key, data, mode, exp_time),))


# ============================================================================ /dht: exp_time


def test_a_republish_whose_entry_expired_on_the_way_still_fills_the_live_ones() -> None:
    """A storer sends the live entries of its record, but one of them reaches its exp_time while
    the copy travels. That entry is gone; the others are still good and must fill a holder that
    has none, rather than the whole copy being refused as a write that already expired."""
    node = Node(config=LIFE)
    record = apply_write(None, one_write(ALICE, "c", "alice", exp_time=100.0), 0.0, LIFE)
    record = apply_write(record, one_write(BOB, "c", "bob"), 0.0, LIFE)
    reply = node.dht_records._handle_put(DhtPut(encode_record(record), 600, True), None, SOURCE,
                                         100.0)
    assert isinstance(reply, Stored)
    held = node.dht_records.local("c", 100.0)
    assert held is not None and [e.data for e in held.entries] == ["bob"]
    meta = node.store.record_meta(RECORD_KIND, storage_key("c"))
    assert meta is not None and meta.expires == 700.0 and meta.source == SOURCE[0]


def test_sim_a_storer_republish_reaches_blank_holders_past_an_entry_expiring_meanwhile() -> None:
    net = SimNetwork(seed=45, config=LIFE)
    nodes = net.add_nodes(16)
    writer = nodes[0]
    ends = net.now + 100.0
    net.run_call(net.call(writer, writer.dht_records.put,
                          one_write(ALICE, "soon", "alice", exp_time=ends)))
    net.run_call(net.call(writer, writer.dht_records.put, one_write(BOB, "soon", "bob")))
    skey = storage_key("soon")
    holders = [n for n in nodes if n is not writer and n.dht_records.local("soon", net.now)]
    assert len(holders) >= LIFE.k - 1
    storer, blanks = holders[0], holders[1:]
    for blank in blanks:
        blank.store.delete_record(RECORD_KIND, skey)
    # The storer's republish comes 10 ms before Alice's entry ends: it is live when the storer
    # sends, gone by the time the copy lands (a lookup round trip and a hop later at least).
    net.run_for(ends - 0.01 - net.now)
    data = storer.store.get_record(RECORD_KIND, skey)
    meta = storer.store.record_meta(RECORD_KIND, skey)
    assert data is not None and meta is not None and not meta.original
    net.call(storer, storer.dht_records.republish, DueRecord(RECORD_KIND, skey, data, meta))
    net.run_for(5.0)
    assert storer.stats["republished"] == 1
    for blank in blanks:
        held = blank.dht_records.local("soon", net.now)
        assert held is not None and [e.data for e in held.entries] == ["bob"]


# ============================================================================ /dht: quotas


def test_a_republish_that_adds_owners_is_charged_to_the_host_that_sent_it() -> None:
    """Filling a CONTROLLED record with the owners a holder missed grows it: the bytes are the
    sender's to account for, as a client's write would be, so a host past its quota cannot grow
    records held for others, nor spend another host's quota doing it."""
    node = Node(config=Config(max_bytes_per_source=400))
    alice_host, mallory_host = ("10.0.0.1", 1), ("10.0.0.66", 1)
    skey = storage_key("c")
    alice = one_write(ALICE, "c", "alice")
    assert isinstance(node.dht_records._handle_put(DhtPut(encode_record(alice), 600), None,
                                                   alice_host, 0.0), Stored)
    # Mallory's host has used its quota on a record of its own.
    own = one_write(BOB, "m" * 200, "x")
    assert isinstance(node.dht_records._handle_put(DhtPut(encode_record(own), 600), None,
                                                   mallory_host, 0.0), Stored)
    before = (node.store.get_record(RECORD_KIND, skey), node.store.record_meta(RECORD_KIND, skey))
    grown = apply_write(alice, one_write(BOB, "c", "b" * 150), 0.0, LIFE)
    reply = node.dht_records._handle_put(DhtPut(encode_record(grown), 600, True), None,
                                         mallory_host, 10.0)
    assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE_FULL
    assert (node.store.get_record(RECORD_KIND, skey),
            node.store.record_meta(RECORD_KIND, skey)) == before
    # From a host with room, the owner it missed is added, and that host is charged for it.
    reply = node.dht_records._handle_put(DhtPut(encode_record(grown), 600, True), None,
                                         ("10.0.0.2", 1), 20.0)
    assert isinstance(reply, Stored)
    held = node.dht_records.local("c", 20.0)
    assert held is not None and [e.data for e in held.entries] == ["alice", "b" * 150]
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.source == "10.0.0.2" and meta.expires == 600.0
