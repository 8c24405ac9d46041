"""/dht records: another owner's CONTROLLED write leaves the record ours to renew (only a write
that replaces an entry ends our publishing), and at the default Config a whole hand-over of
full records passes the receiver's verification budget, which still bounds a host's flood."""

from __future__ import annotations

import random

import pytest

from qadom import Config, NotFoundError, dhtrecords
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    DhtPut,
    Entry,
    Record,
    encode_record,
    make_entry,
    sign,
    storage_key,
)
from qadom.messages import Error, ErrorCode, Stored
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import Meta, published_meta

from helpers import ask_proven, deliver

T0 = 1_700_000_000.0
HOUR = 3600.0
# Public addresses: loopback has no verification budget.
HOST = ("198.51.100.9", 5000)
OTHER_HOST = ("203.0.113.7", 5000)


def secret(i: int) -> bytes:
    return (i + 1).to_bytes(32, "big")


def write(secret_: bytes, key: str, data: str) -> DhtPut:
    """A client's write of one CONTROLLED entry, as a peer that ran a put sends it."""
    entry = make_entry(secret_, key, data, CONTROLLED)
    return DhtPut(encode_record(Record(key, CONTROLLED, (entry,))), 86400)


# ------------------------------------------------------------------ another owner's write


def test_another_owners_controlled_write_leaves_our_record_ours() -> None:
    config = Config()
    node = Node(config=config, rng=random.Random(1), node_id=1, now=T0)
    key, skey = "shared", storage_key("shared")
    x = make_entry(secret(11), key, "X's data", CONTROLLED)
    # We put X's entry: our record, renewed by us until we forget it.
    node.store.put_record(RECORD_KIND, skey, encode_record(Record(key, CONTROLLED, (x,))), T0,
                          meta=published_meta(T0, config))
    ours = node.store.record_meta(RECORD_KIND, skey)
    assert ours is not None and ours.original

    # Owner Y writes its own entry through another peer: added, and the record stays ours.
    y_put = write(secret(22), key, "Y's data")
    assert isinstance(ask_proven(node, y_put, HOST, T0 + 10), Stored)
    held = node.dht_records.local(key, T0 + 10)
    assert held is not None and [e.data for e in held.entries] == ["X's data", "Y's data"]
    assert node.store.record_meta(RECORD_KIND, skey) == ours
    # The same entry written again changes nothing either.
    assert isinstance(ask_proven(node, y_put, HOST, T0 + 20), Stored)
    assert node.store.record_meta(RECORD_KIND, skey) == ours

    # An owner's newer entry (X's own, through another peer) ends our publishing: that peer
    # renews the record now, and ours is a storer's copy charged to the sender.
    now = T0 + HOUR
    assert isinstance(ask_proven(node, write(secret(11), key, "X's newer data"), OTHER_HOST, now),
                      Stored)
    held = node.dht_records.local(key, now)
    assert held is not None and [e.data for e in held.entries] == ["X's newer data", "Y's data"]
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original and meta.source == OTHER_HOST[0]


def test_our_controlled_entry_outlives_another_owners_forgotten_write() -> None:
    """A puts owner X's entry and never forgets it; owner Y writes its own entry through B,
    which then forgets it: X's entry (and Y's, which A now renews with it) stays readable."""
    config = Config(k=4)
    net = SimNetwork(5, config=config)
    nodes = net.add_nodes(8)
    key = "shared"
    a, b, reader = nodes[1], nodes[2], nodes[5]
    for secret_, data, node in ((secret(11), "X's data", a), (secret(22), "Y's data", b)):
        entry = make_entry(secret_, key, data, CONTROLLED)
        net.run_call(net.call(node, node.dht_records.put, Record(key, CONTROLLED, (entry,))))
    assert b.dht_records.forget(key)
    start = net.now
    for hours in (25, 30, 49):
        net.run_for(start + hours * HOUR - net.now)
        got = net.run_call(net.call(reader, reader.dht_records.get, key))
        assert {e.data for e in got.entries} == {"X's data", "Y's data"}
    assert a.dht_records.forget(key)  # still ours to forget
    net.run_for(2 * config.expire_time)
    with pytest.raises(NotFoundError):
        net.run_call(net.call(reader, reader.dht_records.get, key))


# ------------------------------------------------------------------ the verification budget


_PUBLIC: dict[int, bytes] = {}


def full_record(key: str, config: Config) -> Record:
    """A CONTROLLED record of ``key`` with as many entries as fit (one-letter data, no
    exp_time: the most a record can hold)."""
    entries: list[Entry] = []
    for i in range(400):
        owner = _PUBLIC.get(i) or _PUBLIC.setdefault(i, dhtrecords.public_key(secret(i)))
        entry = Entry("x", owner, None, sign(secret(i), key, "x", None, CONTROLLED), owner)
        if len(encode_record(Record(key, CONTROLLED, (*entries, entry)))) > (
                config.dht_max_record_size):
            return Record(key, CONTROLLED, tuple(entries))
        entries.append(entry)
    raise AssertionError("the record never filled up")


def test_a_hand_over_of_full_records_passes_whole_at_the_default_config() -> None:
    config = Config()
    holder = Node(config=config, rng=random.Random(1), now=T0)
    newcomer = Node(config=config, rng=random.Random(2), now=T0)
    holder.address, newcomer.address = ("198.51.100.1", 4000), ("198.51.100.2", 4000)
    records = [full_record(f"rec{r}", config) for r in range(config.republish_batch)]
    assert len(records[0].entries) == 77
    for record in records:  # held as a storer's copies
        holder.store.put_record(RECORD_KIND, storage_key(record.key), encode_record(record), T0,
                                meta=Meta(T0 + config.expire_time, T0 + HOUR,
                                          source="192.0.2.1"))
    newcomer.bootstrap([holder.address], T0)
    deliver({holder.address: holder, newcomer.address: newcomer}, T0)
    assert holder.stats["handed_over"] == len(records)
    assert newcomer.stats["dht_verify_limited"] == 0
    for record in records:
        assert newcomer.dht_records.local(record.key, T0) == record


def test_a_hosts_flood_verifies_at_most_the_default_burst_then_the_rate(
        monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config()
    node = Node(config=config, rng=random.Random(1), node_id=1, now=T0)
    verified = 0
    verify = dhtrecords.verify

    def counting_verify(entry: Entry, key: str, mode: str) -> bool:
        nonlocal verified
        verified += 1
        return verify(entry, key, mode)

    monkeypatch.setattr(dhtrecords, "verify", counting_verify)
    full = full_record("flood", config)
    # Its last signature is forged: refused, so every replay is verified anew.
    last = full.entries[-1]
    forged = DhtPut(encode_record(Record("flood", CONTROLLED, (
        *full.entries[:-1], Entry("y", last.pub_key, None, last.sign, last.owner)))),
        86400, republish=True)
    limited = 0
    for _ in range(2 * config.dht_verify_burst // len(full.entries)):
        reply = ask_proven(node, forged, HOST, T0)
        limited += isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED
    assert verified == config.dht_verify_burst
    assert limited > 0 and node.stats["dht_verify_limited"] == limited
    assert node.store.stats()["records"] == 0
    # Ten seconds later, the rate's worth more and no more.
    for _ in range(100):
        ask_proven(node, forged, HOST, T0 + 10)
    assert verified == config.dht_verify_burst + int(10 * config.dht_verify_rate)
