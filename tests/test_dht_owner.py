"""/dht records: the node that put a CONTROLLED record keeps publishing it until a write replaces
the entry of an owner it put itself; newer entries of the other owners it carries are kept in
its copy and renewed with it. Which owners it put is kept with the record, in memory and in
SqliteStore, across restarts."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from qadom import Config, NotFoundError
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    DhtPut,
    Record,
    encode_record,
    make_entry,
    public_key,
    storage_key,
)
from qadom.ids import id_to_bytes
from qadom.messages import Stored
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.sqlite_store import SqliteStore
from qadom.storage import Meta, published_meta

from helpers import ask_proven

T0 = 1_700_000_000.0
HOUR = 3600.0
HOST = ("198.51.100.9", 5000)
OTHER_HOST = ("203.0.113.7", 5000)
KEY = "shared"


def secret(i: int) -> bytes:
    return (i + 1).to_bytes(32, "big")


def owner(i: int) -> bytes:
    """The compressed public key of ``secret(i)``: the owner its entries count for."""
    return public_key(secret(i))


def write(secret_: bytes, data: str) -> DhtPut:
    """A client's write of one CONTROLLED entry under KEY, as a peer that ran a put sends it."""
    entry = make_entry(secret_, KEY, data, CONTROLLED)
    return DhtPut(encode_record(Record(KEY, CONTROLLED, (entry,))), 86400)


def put(net: SimNetwork, node: Node, secret_: bytes, data: str) -> None:
    entry = make_entry(secret_, KEY, data, CONTROLLED)
    net.run_call(net.call(node, node.dht_records.put, Record(KEY, CONTROLLED, (entry,))))


def by_distance(nodes: list[Node]) -> list[Node]:
    skey = storage_key(KEY)
    return sorted(nodes, key=lambda node: node.id ^ skey)


# ------------------------------------------------------------------ on the network


def test_our_entry_outlives_another_owners_newer_write_that_was_forgotten() -> None:
    """A puts owner X's entry; owner Y writes its entry through B, then a newer one, and B
    forgets it: A still publishes the record (X's entry and Y's newer one) until A forgets."""
    config = Config(k=4)
    net = SimNetwork(5, config=config)
    nodes = by_distance(net.add_nodes(8))
    a, reader, b = nodes[0], nodes[-2], nodes[-1]  # A is one of the k closest: Y's writes reach it
    put(net, a, secret(11), "X's data")
    put(net, b, secret(22), "Y's data")
    put(net, b, secret(22), "Y's newer data")
    meta = a.store.record_meta(RECORD_KIND, storage_key(KEY))
    assert meta is not None and meta.original  # still ours to renew
    assert b.dht_records.forget(KEY)
    start = net.now
    for hours in (25, 30, 49):
        net.run_for(start + hours * HOUR - net.now)
        got = net.run_call(net.call(reader, reader.dht_records.get, KEY))
        assert {e.data for e in got.entries} == {"X's data", "Y's newer data"}
    assert a.dht_records.forget(KEY)  # still ours to forget
    net.run_for(2 * config.expire_time)
    with pytest.raises(NotFoundError):
        net.run_call(net.call(reader, reader.dht_records.get, KEY))


def test_a_newer_entry_of_any_owner_we_put_ends_our_publishing() -> None:
    config = Config(k=4)
    net = SimNetwork(6, config=config)
    nodes = by_distance(net.add_nodes(8))
    a, b = nodes[0], nodes[-1]
    skey = storage_key(KEY)
    put(net, a, secret(11), "X's data")
    put(net, a, secret(33), "Z's data")  # a second owner written through us: ours too
    put(net, b, secret(22), "Y's data")
    put(net, b, secret(22), "Y's newer data")
    meta = a.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.original
    assert meta.owners == frozenset({owner(11), owner(33)})
    put(net, b, secret(33), "Z's newer data")  # Z's own newer entry, through B: B's to renew
    meta = a.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original
    held = a.dht_records.local(KEY, net.now)
    assert held is not None
    assert [e.data for e in held.entries] == ["X's data", "Z's newer data", "Y's newer data"]


# ------------------------------------------------------------------ one node, sans-IO


def test_only_a_write_replacing_an_entry_of_an_owner_we_put_ends_our_publishing() -> None:
    config = Config()
    node = Node(config=config, rng=random.Random(1), node_id=1, now=T0)
    skey = storage_key(KEY)
    x = make_entry(secret(11), KEY, "X's data", CONTROLLED)
    ours = published_meta(T0, config, owners=frozenset({owner(11)}))
    node.store.put_record(RECORD_KIND, skey, encode_record(Record(KEY, CONTROLLED, (x,))), T0,
                          meta=ours)
    # Y's entry, then Y's newer one and an older one again: carried, the record stays ours.
    for at, data in ((10, "Y's data"), (20, "Y's newer data"), (30, "Y's data")):
        assert isinstance(ask_proven(node, write(secret(22), data), HOST, T0 + at), Stored)
        held = node.dht_records.local(KEY, T0 + at)
        assert held is not None and [e.data for e in held.entries] == ["X's data", data]
        assert node.store.record_meta(RECORD_KIND, skey) == ours
    # X's newer entry through another peer replaces ours: that peer renews the record now.
    now = T0 + HOUR
    newer = write(secret(11), "X's newer data")
    assert isinstance(ask_proven(node, newer, OTHER_HOST, now), Stored)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original and meta.source == OTHER_HOST[0]


def test_a_record_of_ours_kept_without_its_owners_counts_every_owner_it_holds_as_ours() -> None:
    """Owners None (a record put before they were kept): a newer entry of any owner it holds
    ends our publishing, so an overwrite through another node is never renewed past its
    forget; an owner it holds no entry of is still only added."""
    config = Config()
    node = Node(config=config, rng=random.Random(1), node_id=1, now=T0)
    skey = storage_key(KEY)
    x = make_entry(secret(11), KEY, "X's data", CONTROLLED)
    ours = published_meta(T0, config)
    node.store.put_record(RECORD_KIND, skey, encode_record(Record(KEY, CONTROLLED, (x,))), T0,
                          meta=ours)
    assert isinstance(ask_proven(node, write(secret(22), "Y's data"), HOST, T0 + 10), Stored)
    assert node.store.record_meta(RECORD_KIND, skey) == ours
    assert isinstance(ask_proven(node, write(secret(22), "Y's newer data"), HOST, T0 + 20), Stored)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original and meta.source == HOST[0]
    held = node.dht_records.local(KEY, T0 + 20)
    assert held is not None and [e.data for e in held.entries] == ["X's data", "Y's newer data"]


# ------------------------------------------------------------------ SqliteStore


def test_the_owners_we_put_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    owners = frozenset({owner(11), owner(33)})
    ours = Meta(T0 + 86400, T0 + 3600, original=True, owners=owners)
    store = SqliteStore(path, Config())
    try:
        store.put_record(RECORD_KIND, 5, b"our record", T0, meta=ours)
        store.put_record(RECORD_KIND, 6, b"held", T0, meta=Meta(T0 + 60, T0 + 30, source="h"))
    finally:
        store.close()
    again = SqliteStore(path, Config())
    try:
        assert again.record_meta(RECORD_KIND, 5) == ours
        assert again.record_meta(RECORD_KIND, 6) == Meta(T0 + 60, T0 + 30, source="h")
        assert [due.meta for due in again.due_records(T0 + 3600, 10)] == [
            Meta(T0 + 60, T0 + 30, source="h"), ours]
        assert [held.meta for held in again.held_between(5, 6, 10)] == [ours]
        again.forget(5)
        meta = again.record_meta(RECORD_KIND, 5)
        assert meta is not None and not meta.original
    finally:
        again.close()


def test_a_store_from_before_owners_were_kept_opens_with_its_records(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, Config())
    store.close()
    db = sqlite3.connect(path)  # the records table as it was before the owners column
    db.executescript("""
        DROP TABLE records;
        CREATE TABLE records (
            kind TEXT NOT NULL, key BLOB NOT NULL, data BLOB NOT NULL, source TEXT NOT NULL,
            expires REAL NOT NULL DEFAULT 9e999, republish_at REAL NOT NULL DEFAULT 9e999,
            original INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, key));
        """)
    db.execute("INSERT INTO records VALUES ('dht', ?, ?, '', ?, ?, 1)",
               (id_to_bytes(5), b"our record", T0 + 86400, T0 + 3600))
    db.commit()
    db.close()
    store = SqliteStore(path, Config())
    try:
        # Ours still, its owners unknown: every owner it holds counts as ours.
        assert store.record_meta(RECORD_KIND, 5) == Meta(T0 + 86400, T0 + 3600, original=True)
        assert store.get_record(RECORD_KIND, 5) == b"our record"
        assert store.stats()["records"] == 1
        mine = Meta(T0 + 86400, T0 + 7200, original=True, owners=frozenset({owner(11)}))
        store.put_record(RECORD_KIND, 5, b"our record", T0, meta=mine)
        assert store.record_meta(RECORD_KIND, 5) == mine
    finally:
        store.close()
