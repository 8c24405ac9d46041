"""The lifecycle of stored items against the quotas and the publishers: a store holding more
than its limits allow still renews what it holds, and a /dht overwrite received by the node that
put the older version is not renewed by it."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qadom import Config, NotFoundError
from qadom.contact import host_key
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    SECURED,
    DhtPut,
    Record,
    apply_write,
    encode_record,
    load,
    make_entry,
    storage_key,
)
from qadom.errors import StorageFull
from qadom.ids import key_for
from qadom.messages import Stored
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.sqlite_store import SqliteStore
from qadom.storage import (
    MemoryStore,
    Meta,
    Store,
    published_meta,
    received_meta,
)

HOUR = 3600.0
ROOMY = Config(max_store_bytes=10_000, max_bytes_per_source=4_000)
TIGHT = replace(ROOMY, max_store_bytes=2_000, max_bytes_per_source=1_000)
PEER = "10.0.0.7"


@pytest.fixture(params=["memory", "sqlite"])
def over_limits(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store filled under ROOMY (3 000 bytes of our own values, 2 000 bytes of PEER's values,
    an entry and a record of PEER's), then under TIGHT's lower limits: a durable store reopened
    with them, a memory store given them."""
    store: Store = (MemoryStore(ROOMY) if request.param == "memory"
                    else SqliteStore(tmp_path / "db.sqlite3", ROOMY))
    for i in range(3):
        store.put_value(i, bytes([i]) * 1_000, published_meta(0.0, ROOMY))
    for i in range(3, 5):
        store.put_value(i, bytes([i]) * 1_000, Meta(1e5, HOUR, source=PEER))
    store.add_entry(9, 1, Meta(1e5, HOUR, source=PEER))
    store.put_record("dht", 9, b"r" * 100, 0.0, meta=Meta(1e5, HOUR, source=PEER))
    if isinstance(store, SqliteStore):
        store.close()
        store = SqliteStore(tmp_path / "db.sqlite3", TIGHT)
    else:
        store.quotas.config = TIGHT
    try:
        yield store
    finally:
        store.close()


def test_a_store_over_lower_limits_still_rewrites_what_it_holds(over_limits: Store) -> None:
    store = over_limits
    held = store.quotas.total_bytes
    assert held > TIGHT.max_store_bytes
    # A republish rewrites the bookkeeping of our own value and of PEER's (the same bytes, from
    # the same host): never refused for the quotas the store is already past.
    ours = replace(published_meta(0.0, TIGHT), expires=5e4, republish_at=5e4)
    store.put_value(0, bytes([0]) * 1_000, ours)
    assert store.value_meta(0) == ours
    theirs = Meta(2e5, 2 * HOUR, source=PEER)
    store.put_value(3, bytes([3]) * 1_000, theirs)
    assert store.value_meta(3) == theirs
    assert not store.add_entry(9, 1, theirs)
    assert store.entry_meta(9, 1) == theirs
    # A record replaced by one no larger, from its host or from us, fits too.
    store.put_record("dht", 9, b"s" * 100, 0.0, meta=theirs)
    store.put_record("dht", 9, b"t" * 90, 0.0, meta=ours)
    assert store.get_record("dht", 9) == b"t" * 90
    assert store.quotas.total_bytes == held - 10
    # Our own write no larger than what it replaces passes the check made before sending it.
    store.quotas.check_own(90, 90)
    # What would grow the store, or add to it, is still refused, and changes nothing.
    with pytest.raises(StorageFull):
        store.put_record("dht", 9, b"u" * 91, 0.0, meta=ours)
    with pytest.raises(StorageFull):
        store.quotas.check_own(91, 90)
    with pytest.raises(StorageFull):
        store.put_value(10, b"new", published_meta(0.0, TIGHT))
    with pytest.raises(StorageFull):
        store.add_entry(9, 2, theirs)
    assert store.get_record("dht", 9) == b"t" * 90
    assert store.get_value(10) is None and store.entry_meta(9, 2) is None
    assert store.quotas.total_bytes == held - 10


def test_rows_charged_anew_to_their_host_past_its_quota_are_still_refreshed(
        tmp_path: Path) -> None:
    """A store written when each IPv6 address was charged on its own: reopened, its rows are
    charged to their /64, which then holds more than its quota; refreshing them is no new
    charge, while a new item from that host is refused."""
    config = Config(max_bytes_per_source=1_500)
    path = tmp_path / "db.sqlite3"
    store = SqliteStore(path, config)
    for key, host in ((1, "2001:db8::1"), (2, "2001:db8::2")):
        store.put_value(key, bytes([key]) * 1_000, Meta(1e5, HOUR, source=host))
    store.close()
    store = SqliteStore(path, config)
    try:
        host = host_key("2001:db8::1")
        assert store.value_meta(1) == Meta(1e5, HOUR, source=host)
        refreshed = Meta(2e5, 2 * HOUR, source=host)
        for key in (1, 2):
            store.put_value(key, bytes([key]) * 1_000, refreshed)
            assert store.value_meta(key) == refreshed
        store.add_entry(5, 5, Meta(1e5, HOUR, source="2001:db8:1::1"))  # another host: room
        with pytest.raises(StorageFull):
            store.add_entry(5, 6, Meta(1e5, HOUR, source=host))
        assert store.entry_meta(5, 6) is None
        assert store.quotas.total_bytes == 2_000 + 32
    finally:
        store.close()


def test_a_publisher_restarted_with_lower_limits_goes_on_renewing(tmp_path: Path) -> None:
    """A publisher restarted on its durable store with a quota below what it holds renews its
    own values every day as before: they stay on the network past their first lifetime."""
    config = Config(k=4)
    net = SimNetwork(5, config=config)
    nodes = net.add_nodes(12)
    publisher = nodes[5]
    path = tmp_path / "db.sqlite3"
    publisher.store = SqliteStore(path, config)
    keys = [net.run_call(net.call(publisher, publisher.set, bytes([i]) * 1_000))
            for i in range(3)]
    net.run_for(60.0)
    publisher.store.close()
    low = replace(config, max_store_bytes=1_500)
    store = SqliteStore(path, low)
    try:
        again = Node(config=low, rng=random.Random(1), node_id=publisher.id, store=store,
                     now=net.now)
        again.address = net.address_of(publisher)
        net.nodes[again.address] = again
        net.call(again, lambda now: None)
        net.run_for(30 * HOUR)
        assert again.stats["storage_errors"] == 0
        assert again.stats["republished"] >= len(keys)
        reader = nodes[0]
        for key in keys:
            meta = store.value_meta(key)
            assert meta is not None and meta.original
            assert meta.republish_at > net.now  # renewed, not stuck due
            assert net.run_call(net.call(reader, reader.get, key)) is not None
    finally:
        store.close()


def test_a_republish_our_store_refuses_is_logged_when_it_starts_and_ends(
        caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> None:
    config = Config(k=3)
    net = SimNetwork(2, config=config)
    nodes = net.add_nodes(6)
    publisher = nodes[0]
    key = net.run_call(net.call(publisher, publisher.set, b"kept"))
    store = publisher.store
    assert isinstance(store, MemoryStore)
    put_value = store.put_value

    def refuse(key: int, value: bytes, meta: Meta) -> None:
        raise StorageFull("the disk holding this node's store is full")

    monkeypatch.setattr(store, "put_value", refuse)
    caplog.set_level(logging.WARNING, logger="qadom")
    net.run_for(config.publisher_renew_after + 10 * config.maintenance_interval)
    errors = publisher.stats["storage_errors"]
    assert errors >= 5  # tried again at every tick...
    failing = [r for r in caplog.records if "could not renew the items due" in r.getMessage()]
    assert len(failing) == 1  # ...and logged once
    assert "disk" in failing[0].getMessage()
    monkeypatch.setattr(store, "put_value", put_value)
    net.run_for(3 * config.maintenance_interval)
    again = [r for r in caplog.records if "could renew the items due again" in r.getMessage()]
    assert len(again) == 1
    meta = store.value_meta(key)
    assert meta is not None and meta.original and meta.republish_at > net.now


# ---------------------------------------------------------------------------- /dht records

OWNER = (42).to_bytes(32, "big")
OTHER = (43).to_bytes(32, "big")


def test_an_originals_bookkeeping_stays_ours_whatever_is_received() -> None:
    config = Config()
    ours = published_meta(100.0, config)
    for same in (True, False):
        assert received_meta(ours, 60, 200.0, config, PEER, same=same) == ours
    # A version that ends our publishing is received as a storer's copy, charged to its sender.
    assert received_meta(None, 60, 200.0, config, PEER, same=False) == Meta(
        260.0, 200.0 + config.republish_interval, source=PEER)


def test_a_dht_overwrite_through_another_node_ends_the_first_putters_renewals() -> None:
    """P, the closest to the key, puts v1; the owner overwrites it with v2 through a far node,
    which then forgets it: P keeps v2 as a storer's copy, charged to that node's host, and v2 is
    gone a lifetime after that node's put."""
    config = Config(k=6)
    net = SimNetwork(3, config=config)
    nodes = net.add_nodes(20)
    key = "owner/profile"
    skey = storage_key(key)
    by_distance = sorted(nodes, key=lambda n: n.id ^ skey)
    first, far, reader = by_distance[0], by_distance[-1], by_distance[-2]

    def put(node: Node, data: str) -> None:
        record = Record(key, SECURED, (make_entry(OWNER, key, data, SECURED),))
        net.run_call(net.call(node, node.dht_records.put, record))

    put(first, "v1")
    net.run_for(HOUR)
    put(far, "v2")
    put_at = net.now
    held = first.dht_records.local(key, net.now)
    assert held is not None and held.entries[0].data == "v2"
    meta = first.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and not meta.original
    assert meta.source == host_key(net.address_of(far)[0])
    assert put_at + config.expire_time - 60 <= meta.expires <= put_at + config.expire_time
    assert not first.dht_records.forget(key)  # no longer ours to forget
    assert far.dht_records.forget(key)
    net.run_for(put_at + config.expire_time + 2 * HOUR - net.now)
    assert all(n.dht_records.local(key, net.now) is None for n in nodes)
    with pytest.raises(NotFoundError):
        net.run_call(net.call(reader, reader.dht_records.get, key))


def test_a_write_that_leaves_our_dht_record_as_it_is_keeps_it_ours() -> None:
    node = Node(config=Config())
    key = "k"
    skey = storage_key(key)
    entry = Record(key, CONTROLLED, (make_entry(OWNER, key, "mine", CONTROLLED),))
    ours = published_meta(0.0, node.config)
    node.store.put_record(RECORD_KIND, skey, encode_record(entry), 0.0, meta=ours)
    address = (PEER, 4000)
    # Our own entry written again (a replay) changes nothing: the record stays ours.
    reply = node.dht_records._handle_put(DhtPut(encode_record(entry), 60), None, address, 10.0)
    assert isinstance(reply, Stored)
    assert node.store.record_meta(RECORD_KIND, skey) == ours
    # A republish that fills in another owner keeps it ours, and charged to us.
    theirs = Record(key, CONTROLLED, (make_entry(OTHER, key, "theirs", CONTROLLED),))
    reply = node.dht_records._handle_put(DhtPut(encode_record(theirs), 60, True), None,
                                         address, 20.0)
    assert isinstance(reply, Stored)
    both = apply_write(entry, theirs, 20.0, node.config)
    assert load(node.store, skey, node.config) == both
    assert node.store.record_meta(RECORD_KIND, skey) == ours
    # A client's write that changes it is the writer's to renew: a storer's copy here, which a
    # short TTL does not end before the lifetime ours had.
    changed = Record(key, CONTROLLED, (make_entry(OTHER, key, "theirs 2", CONTROLLED),))
    reply = node.dht_records._handle_put(DhtPut(encode_record(changed), 60), None, address,
                                         30.0)
    assert isinstance(reply, Stored)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta == Meta(ours.expires, 30.0 + node.config.republish_interval, source=PEER)
    assert not node.forget(skey)
    assert node.store.quotas.total_bytes == len(encode_record(
        apply_write(both, changed, 30.0, node.config)))


@pytest.mark.parametrize("kind", ["set", "append"])
def test_writes_asked_for_at_once_hold_room_for_what_they_will_store(kind: str) -> None:
    """Our own store has room for one more item, and five writes are asked for at once: each
    checks for room before it sends anything, counting the room of the writes already on their
    way, so one goes out and the four others fail with StorageFull at once, nothing sent.
    (Before, all five passed the check, went out, and four failed after the network had stored
    them.)"""
    config = Config(k=4)
    net = SimNetwork(5, config=config)
    nodes = net.build(12)
    writer = net.add_node(config=replace(config, max_store_items=8))
    net.run_call(net.call(writer, writer.bootstrap, [net.address_of(nodes[0])]))

    def write(i: int) -> Any:
        if kind == "set":
            return net.call(writer, writer.set, b"item %d" % i)
        return net.call(writer, writer.append, 1000 + i, i)

    for i in range(7):
        net.run_call(write(i))
    assert writer.store.quotas.total_items - writer.store.quotas.cached_items == 7
    calls: dict[int, Any] = {}
    refused = []
    for i in range(5):
        try:
            calls[i] = write(100 + i)
        except StorageFull:  # at once, nothing sent
            refused.append(i)
    assert len(refused) == 4 and len(calls) == 1
    net.run_for(60.0)
    ((went, call),) = calls.items()
    assert call.done and call.exception() is None
    for i in range(5):  # no peer holds what was refused: nothing was sent
        if kind == "set":
            held = [n for n in nodes if n.store.value_meta(key_for(b"item %d" % (100 + i)))]
        else:
            held = [n for n in nodes if n.store.entry_meta(1100 + i, 100 + i)]
        assert bool(held) == (i == went), i
