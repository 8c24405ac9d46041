"""Both stores behind one interface: values, entries, expiry, schedule, quotas, persistence."""

from __future__ import annotations

import contextlib
import random
import sqlite3
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import cbor2
import pytest
from nacl.signing import SigningKey

from qadom import Config, NamespaceRecord, Node
from qadom import storage as storage_module
from qadom.contact import Contact
from qadom.dhtrecords import SECURED, Record, encode_record, make_entry
from qadom.dhtrecords import storage_key as dht_key
from qadom.errors import InvalidArgument, StorageFull
from qadom.ids import ID_SPACE, id_to_bytes, key_for
from qadom.messages import FindValue, Value
from qadom.namespace import NamespaceFind, NamespaceFound
from qadom.sqlite_store import SqliteStore
from qadom.storage import ENTRY_SIZE, NEVER, Due, MemoryStore, Meta, Quotas, Store, published_meta

DEFAULT = Config()
SMALL = Config(max_store_bytes=1000, max_store_items=20, max_bytes_per_source=400,
               max_items_per_source=8)


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[type]:
    opened: list[Store] = []

    def make(config: Config = DEFAULT) -> Store:
        store: Store
        if request.param == "memory":
            store = MemoryStore(config)
        else:
            store = SqliteStore(tmp_path / f"db{len(opened)}.sqlite3", config)
        opened.append(store)
        return store

    yield make  # type: ignore[misc]
    for store in opened:
        store.close()


def test_values_and_expiry(make_store: type) -> None:
    store: Store = make_store()
    store.put_value(1, b"a", Meta(expires=100.0))
    store.put_value(2, b"bb", Meta(expires=50.0, original=True))
    assert store.get_value(1) == b"a" and store.get_value(1, 99.0) == b"a"
    assert store.get_value(1, 100.0) is None  # expired, not served even before the sweep
    assert store.expire(100.0) == 1
    assert store.get_value(1) is None
    assert store.get_value(2, 1e9) == b"bb"  # original items live while we publish them
    assert store.forget(2) and not store.forget(2)
    meta = store.value_meta(2)
    assert meta is not None and not meta.original and meta.republish_at == NEVER
    assert store.expire(100.0) == 1 and store.get_value(2) is None
    assert store.stats()["values"] == 0 and store.stats()["stored_bytes"] == 0


def test_storing_a_value_again_changes_only_its_bookkeeping(make_store: type) -> None:
    store: Store = make_store()
    value = b"v" * 5000
    store.put_value(key_for(value), value, Meta(100.0, 50.0, source="10.0.0.1"))
    before = store.stats()
    again = Meta(200.0, 150.0, original=True, source="10.0.0.2")  # a republish, say
    store.put_value(key_for(value), value, again)
    assert store.get_value(key_for(value)) == value and store.value_meta(key_for(value)) == again
    assert store.stats() == before
    assert store.expire(199.0) == 0 and store.get_value(key_for(value), 199.0) == value


def test_held_between_reads_one_range_of_keys(make_store: type) -> None:
    store: Store = make_store()
    top = ID_SPACE - 1
    store.put_value(10, b"in", Meta(100.0))
    store.put_value(11, b"cached", Meta(100.0, cached=True))  # not a replica: never handed over
    store.put_value(30, b"out", Meta(100.0))
    store.put_value(top, b"last", Meta(100.0))
    store.add_entry(12, 5, Meta(100.0))
    store.put_record("namespace", 13, b"rec", 0.0, meta=Meta(100.0, 50.0))
    store.put_record("identity", 14, b"own", 0.0)  # no lifecycle: never handed over
    got = store.held_between(10, 20, 10)
    assert sorted((d.key, d.item if isinstance(d, Due) else d.data) for d in got) == [
        (10, b"in"), (12, 5), (13, b"rec")]
    assert len(store.held_between(10, 20, 2)) == 2 and store.held_between(10, 20, 0) == []
    assert [d.key for d in store.held_between(top, ID_SPACE, 10)] == [top]  # the top of the space


def test_entries_page_in_order(make_store: type) -> None:
    store: Store = make_store()
    for value in (5, 2**256 - 1, 0, 7, 3):
        assert store.add_entry(9, value, Meta(expires=10.0))
    assert not store.add_entry(9, 7, Meta(expires=20.0))
    assert store.entries_after(9, None, 2) == ([0, 3], True)
    assert store.entries_after(9, 3, 2) == ([5, 7], True)
    assert store.entries_after(9, 7, 2) == ([2**256 - 1], False)
    assert store.entries_after(8, None, 2) == ([], False)
    assert store.expire(15.0) == 4  # 7 was renewed until 20
    assert store.entries_after(9, None, 10) == ([7], False)


def test_expired_entries_are_not_served_before_the_sweep(make_store: type) -> None:
    store: Store = make_store()
    store.add_entry(9, 1, Meta(expires=10.0))
    store.add_entry(9, 2, Meta(expires=20.0))
    store.add_entry(9, 3, Meta(expires=5.0, original=True))  # ours: lives while we publish it
    store.add_entry(9, 4, Meta(expires=10.0))
    assert store.entries_after(9, None, 10, 9.0) == ([1, 2, 3, 4], False)
    assert store.entries_after(9, None, 10) == ([1, 2, 3, 4], False)  # no clock: what is held
    assert store.entries_after(9, 2, 1, 10.0) == ([3], False)  # only expired ones follow
    assert store.entries_after(9, None, 10) == ([1, 2, 3], False)  # 4 met expired: dropped
    assert store.entries_after(9, None, 10, 10.0) == ([2, 3], False)  # gone at their expiry
    assert store.entries_after(9, None, 1, 10.0) == ([2], True)
    for limit in (0, -1):  # no page, but whether live entries follow
        assert store.entries_after(9, None, limit, 10.0) == ([], True)
        assert store.entries_after(9, 3, limit, 10.0) == ([], False)
    # An expired entry a read met is dropped as the sweep drops it, and counted as gone.
    assert store.entries_after(9, None, 10) == ([2, 3], False)
    assert store.stats()["entries"] == 2 and store.quotas.total_items == 2
    assert store.entries_after(9, None, 10, 1e9) == ([3], False)
    assert store.expire(1e9) == 0
    assert store.entries_after(9, None, 10) == ([3], False)


def test_paging_across_expired_entries_serves_every_live_one_once(make_store: type) -> None:
    """Pages skip expired entries yet stay full: every live entry comes back exactly once, in
    order, and "more" is False only on the page that holds the last live one."""
    store: Store = make_store()
    rng = random.Random(7)
    held: dict[int, Meta] = {}
    for value in [*rng.sample(range(10**6), 250), ID_SPACE - 1]:
        meta = Meta(expires=float(rng.randrange(100)), original=rng.random() < 0.05)
        store.add_entry(4, value, meta)
        held[value] = meta
    store.add_entry(3, 5, Meta(expires=1e9))  # other keys never mix in
    store.add_entry(5, 0, Meta(expires=1e9))
    for now in (0.0, 50.0, 95.0, 100.0):
        live = sorted(v for v, m in held.items() if m.original or m.expires > now)
        for limit in (1, 3, 40, 1000):
            got: list[int] = []
            after: int | None = None
            for _ in range(len(held) + 1):  # bounded: one page per value at most
                page, more = store.entries_after(4, after, limit, now)
                got += page
                if not more:
                    break
                assert len(page) == limit, (now, limit, after)  # never short while more follow
                after = page[-1]
            assert got == live, (now, limit)


def test_due_items_for_republish(make_store: type) -> None:
    store: Store = make_store()
    store.put_value(1, b"x", Meta(expires=1e9, republish_at=10.0))
    store.put_value(2, b"y", Meta(expires=1e9, republish_at=30.0))
    store.add_entry(3, 4, Meta(expires=1e9, republish_at=5.0))
    due = store.due(20.0, 10)
    assert {(d.key, d.item) for d in due} == {(1, b"x"), (3, 4)}
    assert len(store.due(20.0, 1)) == 1
    assert store.due(20.0, 0) == [] and store.due_records(20.0, 0) == []


def test_quotas_refuse_and_lose_nothing(make_store: type) -> None:
    store: Store = make_store(SMALL)
    for i in range(8):
        store.put_value(i, b"v" * 40, Meta(expires=1e9, source="10.0.0.1"))
    before = store.stats()
    with pytest.raises(StorageFull):  # items per source
        store.put_value(100, b"v", Meta(expires=1e9, source="10.0.0.1"))
    with pytest.raises(StorageFull):  # bytes per source
        store.put_value(101, b"v" * 401, Meta(expires=1e9, source="10.0.0.2"))
    assert store.stats() == before
    for i in range(8):
        assert store.get_value(i) == b"v" * 40
    # Updating an item already stored never counts twice.
    store.put_value(0, b"v" * 40, Meta(expires=2e9, source="10.0.0.1"))
    assert store.stats() == before


def test_cached_copies_make_room_for_replicas(make_store: type) -> None:
    store: Store = make_store(SMALL)
    for i in range(6):  # 900 of the 1000 bytes
        store.put_value(i, b"c" * 150, Meta(expires=float(i), cached=True, source=f"h{i}"))
    store.put_value(10, b"r" * 200, Meta(expires=1e9, source="other"))  # evicts the oldest cache
    assert store.get_value(10) is not None
    assert store.get_value(0) is None
    assert all(store.get_value(i) is not None for i in range(1, 6))
    with pytest.raises(StorageFull):  # a cached copy never evicts anything
        store.put_value(11, b"c" * 300, Meta(expires=1e9, cached=True, source="x"))


def test_a_record_growing_in_place_makes_room_as_a_new_one_does(make_store: type) -> None:
    store: Store = make_store(SMALL)
    held = Meta(1e9, 1e9, source="10.0.0.1")
    store.put_record("namespace", 1, b"v" * 100, 0.0, meta=held)
    for i in range(6):  # 600 bytes of cached copies: 700 of the 1000 bytes held
        store.put_value(10 + i, bytes([i]) * 100, Meta(500.0 + i, cached=True, source=f"h{i}"))
    store.put_record("namespace", 2, b"n" * 350, 0.0, meta=Meta(1e9, 1e9, source="10.0.0.3"))
    assert store.get_value(10) is None  # a new record evicted the soonest-expiring copy
    # A newer, larger version of record 1 (+250 bytes) evicts what it needs, soonest first.
    store.put_record("namespace", 1, b"w" * 350, 0.0, meta=held)
    assert store.get_record("namespace", 1) == b"w" * 350
    assert [store.get_value(10 + i) is not None for i in range(6)] == [False] * 3 + [True] * 3
    assert store.stats()["stored_bytes"] == 350 + 350 + 300
    # Growth that no eviction can fit changes nothing, and evicts nothing.
    before = store.stats()
    with pytest.raises(StorageFull):
        store.put_record("namespace", 1, b"x" * 651, 0.0, meta=held)
    assert store.stats() == before
    # The per-host quota is not the total's: eviction does not get past it.
    with pytest.raises(StorageFull):
        store.put_record("namespace", 1, b"x" * 401, 0.0, meta=held)
    assert store.stats() == before
    assert [store.get_value(10 + i) is not None for i in range(6)] == [False] * 3 + [True] * 3


def test_equal_expiries_evict_the_lower_key_first(make_store: type) -> None:
    store: Store = make_store(Config(max_store_bytes=300, max_store_items=100))
    for key in (9, 3, 2**255 + 1, 5):  # written out of key order, all expiring together
        store.put_value(key, bytes([key % 251]) * 75, Meta(500.0, cached=True, source="h"))
    store.put_value(7, b"r" * 150, Meta(1e9, 1e9, source="other"))  # evicts two
    assert [k for k in (3, 5, 9, 2**255 + 1) if store.get_value(k) is not None] == [
        9, 2**255 + 1]


def test_total_item_quota(make_store: type) -> None:
    store: Store = make_store(SMALL)
    for i in range(20):
        store.add_entry(1, i, Meta(expires=1e9, source=f"s{i % 4}"))
    with pytest.raises(StorageFull):
        store.add_entry(1, 99, Meta(expires=1e9))
    assert store.entries_after(1, None, 100)[0] == list(range(20))


def test_records_count_against_the_total_quota(make_store: type) -> None:
    store: Store = make_store(SMALL)
    store.put_record("namespace", 1, b"r" * 600, 0.0)
    before = store.stats()
    with pytest.raises(StorageFull):
        store.put_record("namespace", 2, b"r" * 500, 0.0)
    with pytest.raises(StorageFull):  # growing a record in place is checked too
        store.put_record("namespace", 1, b"r" * 1100, 0.0)
    assert store.stats() == before and store.get_record("namespace", 1) == b"r" * 600
    store.delete_record("namespace", 1)
    store.put_record("namespace", 2, b"r" * 500, 0.0)  # the room came back
    assert store.stats()["stored_bytes"] == 500


def test_records_count_against_the_sending_host(make_store: type) -> None:
    store: Store = make_store(SMALL)
    store.put_record("dht", 1, b"r" * 300, 0.0, "10.0.0.9")
    with pytest.raises(StorageFull):  # 300 + 101 > 400 bytes for one host
        store.put_record("dht", 2, b"r" * 101, 0.0, "10.0.0.9")
    store.put_record("dht", 1, b"r" * 400, 0.0, "10.0.0.9")  # growing in place fits exactly
    with pytest.raises(StorageFull):
        store.put_record("dht", 1, b"r" * 401, 0.0, "10.0.0.9")
    store.put_record("dht", 1, b"s" * 10, 0.0, "10.0.0.8")  # a newer version from another host
    store.put_record("dht", 2, b"r" * 390, 0.0, "10.0.0.9")  # so 10.0.0.9 has room again
    assert store.stats()["stored_bytes"] == 400
    store.delete_record("dht", 2)
    assert store.stats()["stored_bytes"] == 10


def test_records_contacts_and_meta(make_store: type) -> None:
    store: Store = make_store()
    store.put_record("namespace", 5, b"rec", 0.0)
    assert store.get_record("namespace", 5) == b"rec" and store.get_record("dht", 5) is None
    store.delete_record("namespace", 5)
    assert store.get_record("namespace", 5) is None
    contacts = [Contact(i, ("127.0.0.1", 1000 + i)) for i in range(3)]
    store.save_contacts(contacts)
    assert sorted(store.load_contacts(), key=lambda c: c.id) == contacts
    store.set_meta("node_id", b"\x01" * 32)
    assert store.get_meta("node_id") == b"\x01" * 32 and store.get_meta("other") is None


def test_sqlite_survives_reopening_with_quotas_intact(tmp_path: Path) -> None:
    path = tmp_path / "q.sqlite3"
    store = SqliteStore(path, SMALL)
    for i in range(8):
        store.put_value(i, b"v" * 40, Meta(expires=1e9, republish_at=5.0, source="10.0.0.1"))
    store.add_entry(1, 2, Meta(expires=1e9, original=True))
    store.put_record("dht", 3, b"r", 0.0)
    store.save_contacts([Contact(7, ("127.0.0.1", 9))])
    store.close()
    again = SqliteStore(path, SMALL)
    try:
        assert again.get_value(3) == b"v" * 40
        assert again.entries_after(1, None, 5) == ([2], False)
        assert again.get_record("dht", 3) == b"r"
        assert again.stats()["stored_bytes"] == 8 * 40 + 32 + 1  # values, entry, record
        assert again.load_contacts() == [Contact(7, ("127.0.0.1", 9))]
        assert len(again.due(10.0, 100)) == 8
        with pytest.raises(StorageFull):  # the per-source count was rebuilt from the file
            again.put_value(100, b"v", Meta(expires=1e9, source="10.0.0.1"))
    finally:
        again.close()


def recount(store: Store) -> tuple[int, int, int, int, dict[str, list[int]]]:
    """The quota totals counted afresh from what the store holds."""
    if isinstance(store, SqliteStore):  # counts a copy of the committed file (a store holds a
        copy = store.path.with_name(store.path.name + ".copy")  # lock on its own)
        copy.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(copy)) as target:
            store._db.backup(target)
        fresh = SqliteStore(copy, store.config)
        quotas = fresh.quotas
        fresh.close()
    else:
        assert isinstance(store, MemoryStore)
        quotas = Quotas(store.quotas.config)
        for _, value, meta in store.values():
            quotas.add(meta.source, len(value), meta.cached)
        for (_, _), meta in store._entries.items():
            quotas.add(meta.source, ENTRY_SIZE)
        for data, meta in store._records.values():
            quotas.add(meta.source, len(data))
    return (quotas.total_bytes, quotas.total_items, quotas.cached_bytes, quotas.cached_items,
            {s: u for s, u in quotas._by_source.items() if u[1]})


def test_quota_accounting_never_drifts(make_store: type) -> None:
    """Random writes, replacements, refusals, evictions and expiry: the running totals always
    equal a fresh count of what is stored."""
    store: Store = make_store(Config(max_store_bytes=3000, max_store_items=40,
                                     max_bytes_per_source=1500, max_items_per_source=25))
    rng = random.Random(3)
    for step in range(400):
        source = rng.choice(["", "10.0.0.1", "10.0.0.2"])
        op = rng.random()
        with contextlib.suppress(StorageFull):
            if op < 0.45:
                size = rng.choice([1, 50, 200, 600])
                store.put_value(rng.randrange(30), bytes([size % 256]) * size,
                                Meta(expires=float(rng.randrange(100)), source=source,
                                     cached=rng.random() < 0.4))
            elif op < 0.7:
                store.add_entry(rng.randrange(5), rng.randrange(20),
                                Meta(expires=float(rng.randrange(100)), source=source))
            elif op < 0.85:
                data = b"x" * rng.choice([10, 300])
                if rng.random() < 0.5:  # with a lifecycle: expiry frees its room
                    store.put_record("r", rng.randrange(10), data, 0.0, meta=Meta(
                        expires=float(rng.randrange(100)), source=source,
                        original=rng.random() < 0.2))
                else:
                    store.put_record("r", rng.randrange(10), data, 0.0, source)
            elif op < 0.9:
                store.delete_record("r", rng.randrange(10))
            else:
                store.expire(float(step // 4))
        if step % 20 == 0:
            quotas = store.quotas
            running = (quotas.total_bytes, quotas.total_items, quotas.cached_bytes,
                       quotas.cached_items,
                       {s: u for s, u in quotas._by_source.items() if u[1]})
            assert running == recount(store), step


def test_cached_copies_make_room_when_the_item_count_is_full(make_store: type) -> None:
    store: Store = make_store(Config(max_store_items=3))
    for i in range(3):
        store.put_value(i, b"c", Meta(expires=float(i), cached=True))
    store.put_value(9, b"replica", Meta(expires=1e9))
    assert store.get_value(9) == b"replica" and store.get_value(0) is None
    with pytest.raises(StorageFull):  # a cached copy never evicts another
        store.put_value(10, b"c", Meta(expires=1e9, cached=True))


def test_records_expire_and_are_republished_like_values(make_store: type) -> None:
    store: Store = make_store(SMALL)
    store.put_record("namespace", 1, b"a" * 400, 0.0,
                     meta=Meta(expires=100.0, republish_at=50.0, source="10.0.0.1"))
    store.put_record("namespace", 2, b"b" * 100, 0.0,
                     meta=Meta(expires=100.0, republish_at=60.0, original=True))
    store.put_record("identity", 3, b"c", 0.0)  # no lifecycle: never expires, never due
    assert store.record_meta("identity", 3) == Meta(NEVER)
    assert store.record_meta("namespace", 1) == Meta(100.0, 50.0, source="10.0.0.1")
    assert store.get_record("namespace", 1, 99.0) == b"a" * 400
    assert store.get_record("namespace", 1, 100.0) is None  # expired, even before the sweep
    assert store.get_record("namespace", 2, 1e9) == b"b" * 100  # ours lives while we publish it
    assert [(d.kind, d.key) for d in store.due_records(55.0, 10)] == [("namespace", 1)]
    assert len(store.due_records(1e9, 10)) == 2
    assert len(store.due_records(1e9, 1)) == 1 and store.due_records(1e9, 0) == []
    with pytest.raises(StorageFull):  # 10.0.0.1 used its 400 bytes
        store.put_record("dht", 4, b"d", 0.0, meta=Meta(expires=1e9, source="10.0.0.1"))
    assert store.expire(100.0) == 1
    assert store.get_record("namespace", 1) is None
    assert store.stats()["stored_bytes"] == 101
    store.put_record("dht", 4, b"d", 0.0, meta=Meta(expires=1e9, source="10.0.0.1"))  # room back
    # Forgetting a record we publish: it then expires like any other.
    assert store.forget(2) and not store.forget(2) and not store.forget(3)
    meta = store.record_meta("namespace", 2)
    assert meta is not None and not meta.original and meta.republish_at == NEVER
    assert store.due_records(1e9, 10) == []
    assert store.expire(1e9) == 2
    assert store.get_record("identity", 3) == b"c" and store.stats()["records"] == 1
    # A write the store refuses changes nothing.
    before = store.stats()
    with pytest.raises(InvalidArgument):  # a record is never a cached copy
        store.put_record("dht", 5, b"x", 0.0, meta=Meta(expires=1.0, cached=True))
    with pytest.raises(InvalidArgument):  # two different sources
        store.put_record("dht", 5, b"x", 0.0, "10.0.0.2", meta=Meta(1.0, source="10.0.0.3"))
    assert store.stats() == before and store.get_record("dht", 5) is None


def test_sqlite_records_keep_their_lifecycle_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "records.sqlite3"
    store = SqliteStore(path, SMALL)
    theirs = Meta(expires=100.0, republish_at=50.0, source="10.0.0.1")
    ours = Meta(expires=200.0, republish_at=150.0, original=True)
    store.put_record("namespace", 1, b"r" * 300, 0.0, meta=theirs)
    store.put_record("dht", 2, b"s", 0.0, meta=ours)
    store.put_record("identity", 3, b"t", 0.0)
    store.close()
    again = SqliteStore(path, SMALL)
    try:
        assert again.record_meta("namespace", 1) == theirs
        assert again.record_meta("dht", 2) == ours
        assert again.record_meta("identity", 3) == Meta(NEVER)
        assert [(d.kind, d.key, d.data) for d in again.due_records(60.0, 10)] == [
            ("namespace", 1, b"r" * 300)]
        with pytest.raises(StorageFull):  # the per-source count includes the record
            again.put_record("dht", 4, b"x" * 101, 0.0, meta=Meta(1e9, source="10.0.0.1"))
        assert again.expire(100.0) == 1 and again.stats()["stored_bytes"] == 2
        assert again.forget(2)
    finally:
        again.close()
    third = SqliteStore(path, SMALL)
    try:
        meta = third.record_meta("dht", 2)
        assert meta is not None and not meta.original and meta.republish_at == NEVER
    finally:
        third.close()


# The schema of a data dir written before service records had a lifecycle.
OLD_SCHEMA = """
CREATE TABLE vals (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL);
CREATE TABLE entries (
    key BLOB NOT NULL, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL, PRIMARY KEY (key, value));
CREATE TABLE records (
    kind TEXT NOT NULL, key BLOB NOT NULL, data BLOB NOT NULL, source TEXT NOT NULL,
    PRIMARY KEY (kind, key));
CREATE TABLE contacts (id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


def test_sqlite_migrates_records_written_without_a_lifecycle(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", [
        ("namespace", id_to_bytes(1), b"published here", ""),
        ("namespace", id_to_bytes(2), b"stored for a peer", "10.0.0.1"),
        ("dht", id_to_bytes(3), b"put here", ""),
        ("dht", id_to_bytes(4), b"stored for another", "10.0.0.2"),
        ("identity", id_to_bytes(5), b"secret", "")])
    db.execute("INSERT INTO vals VALUES (?, ?, 1e9, 5.0, 0, 0, '10.0.0.1')",
               (id_to_bytes(key_for(b"value")), b"value"))  # a value is kept under its SHA-256
    db.commit()
    db.close()

    store = SqliteStore(path, DEFAULT)
    try:
        assert store.get_record("namespace", 1) == b"published here"
        assert store.get_record("dht", 4, 1e12) == b"stored for another"
        assert store.get_record("identity", 5) == b"secret"
        assert store.get_value(key_for(b"value")) == b"value"
        # Written here: ours, as original publisher; received: no expiry until the first
        # republish (at the first maintenance) gives it a full lifetime. Both are due at once.
        assert store.record_meta("namespace", 1) == Meta(NEVER, 0.0, original=True)
        assert store.record_meta("namespace", 2) == Meta(NEVER, 0.0, source="10.0.0.1")
        assert store.record_meta("dht", 3) == Meta(NEVER, 0.0, original=True)
        assert store.record_meta("dht", 4) == Meta(NEVER, 0.0, source="10.0.0.2")
        assert store.record_meta("identity", 5) == Meta(NEVER)  # never expires, never due
        assert sorted(d.key for d in store.due_records(0.0, 10)) == [1, 2, 3, 4]
        assert store.stats()["stored_bytes"] == 5 + 14 + 17 + 8 + 18 + 6
        assert store.expire(1e12) == 1  # the value; no record is lost by the upgrade itself
        assert store.stats()["records"] == 5
        store.put_record("namespace", 6, b"new", 0.0, meta=Meta(10.0, 5.0, source="10.0.0.3"))
        assert store.expire(10.0) == 1
    finally:
        store.close()
    again = SqliteStore(path, DEFAULT)  # a migrated file opens as any other
    try:
        assert again.record_meta("namespace", 2) == Meta(NEVER, 0.0, source="10.0.0.1")
        assert again.stats()["records"] == 5
    finally:
        again.close()


def old_file(path: Path, rows: list[tuple[str, bytes, bytes, str]]) -> Path:
    """A store file of the schema from before records had a lifecycle (OLD_SCHEMA) holding the
    records ``rows``: (kind, key, record, source)."""
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.executemany("INSERT INTO records VALUES (?, ?, ?, ?)", rows)
    db.commit()
    db.close()
    return path


def signed_record(key: int) -> NamespaceRecord:
    """The namespace record of ``key`` (seq 0, value b"v") of the key pair of the zero seed."""
    owner = SigningKey(bytes(32))
    public = bytes(owner.verify_key)
    data = cbor2.dumps(["qadom/namespace/v1", public, key.to_bytes(32, "big"), 0, b"v"])
    return NamespaceRecord(public, key, 0, b"v", owner.sign(data).signature)


def test_migrated_records_get_their_lifecycle_at_the_first_maintenance(tmp_path: Path) -> None:
    ours, theirs = signed_record(1), signed_record(2)
    put = Record("k", SECURED, (make_entry((1).to_bytes(32, "big"), "k", "v", SECURED),))
    path = old_file(tmp_path / "old.sqlite3", [
        ("namespace", id_to_bytes(ours.storage_key), ours.to_bytes(), ""),
        ("namespace", id_to_bytes(theirs.storage_key), theirs.to_bytes(), "10.0.0.1"),
        ("dht", id_to_bytes(dht_key("k")), encode_record(put), "")])
    store = SqliteStore(path, DEFAULT)
    node = Node(config=DEFAULT, store=store, now=1000.0)
    node.table.seen(Contact(5, ("10.0.0.9", 4000)))  # somebody to send to (none answers yet)
    try:
        node.handle_timer(1000.0 + DEFAULT.maintenance_interval)
        now = 1000.0 + DEFAULT.maintenance_interval
        assert node.stats["republished"] == 3
        day, hour = DEFAULT.expire_time, DEFAULT.republish_interval
        assert store.record_meta("namespace", ours.storage_key) == Meta(
            now + day, now + DEFAULT.publisher_renew_after, original=True)
        assert store.record_meta("dht", dht_key("k")) == Meta(
            now + day, now + DEFAULT.publisher_renew_after, original=True)
        assert store.record_meta("namespace", theirs.storage_key) == Meta(
            now + day, now + hour, source="10.0.0.1")
        assert store.expire(now + day) == 1  # received: gone a lifetime after the upgrade
        assert store.get_record("namespace", ours.storage_key) == ours.to_bytes()
    finally:
        store.close()


def test_a_migrated_record_forgotten_before_the_first_maintenance_expires(
        tmp_path: Path) -> None:
    # Ours, with no expiry until the first republish: forgotten before it, it must still expire
    # (a day after the node started), not be kept forever, off the schedule.
    ours = signed_record(1)
    put = Record("k", SECURED, (make_entry((1).to_bytes(32, "big"), "k", "v", SECURED),))
    path = old_file(tmp_path / "old.sqlite3", [
        ("namespace", id_to_bytes(ours.storage_key), ours.to_bytes(), ""),
        ("dht", id_to_bytes(dht_key("k")), encode_record(put), "")])
    store = SqliteStore(path, DEFAULT)
    node = Node(config=DEFAULT, store=store, now=1000.0)  # gives them a lifetime: it starts
    try:
        assert node.forget(ours.storage_key) and node.forget(dht_key("k"))
        node.handle_timer(1000.0 + DEFAULT.maintenance_interval)
        assert node.stats["republished"] == 0  # forgotten: not ours to renew any more
        day = DEFAULT.expire_time
        for kind, key in (("namespace", ours.storage_key), ("dht", dht_key("k"))):
            assert store.record_meta(kind, key) == Meta(1000.0 + day)
        assert store.expire(1000.0 + day - 1) == 0
        assert store.expire(1000.0 + day) == 2
        assert store.stats()["records"] == 0
    finally:
        store.close()


def test_renewing_our_own_items_whose_lifetime_lapsed_keeps_them_due(make_store: type) -> None:
    store: Store = make_store()
    store.put_value(1, b"ours", Meta(100.0, 90.0, original=True))
    store.put_value(2, b"ours, alive", Meta(500.0, 400.0, original=True))
    store.put_value(3, b"theirs", Meta(100.0, 90.0, source="10.0.0.1"))
    store.add_entry(4, 7, Meta(150.0, 90.0, original=True))
    store.put_record("namespace", 5, b"r", 0.0, meta=Meta(100.0, 90.0, original=True))
    store.put_record("dht", 6, b"r", 0.0, meta=Meta(NEVER, 0.0, original=True))  # no expiry
    store.put_record("identity", 7, b"r", 0.0)  # no lifecycle, not ours
    assert store.renew_originals(200.0, 1000.0) == 4
    assert store.value_meta(1) == Meta(1000.0, 90.0, original=True)
    assert store.value_meta(2) == Meta(500.0, 400.0, original=True)
    assert store.value_meta(3) == Meta(100.0, 90.0, source="10.0.0.1")
    assert store.entry_meta(4, 7) == Meta(1000.0, 90.0, original=True)
    assert store.record_meta("namespace", 5) == Meta(1000.0, 90.0, original=True)
    assert store.record_meta("dht", 6) == Meta(1000.0, 0.0, original=True)
    assert store.record_meta("identity", 7) == Meta(NEVER)
    assert [(d.key, d.item) for d in store.due(200.0, 10)] == [(1, b"ours"), (3, b"theirs"),
                                                               (4, 7)]
    assert [d.key for d in store.due_records(200.0, 10)] == [6, 5]
    assert store.expire(1000.0) == 1  # theirs; ours never expire while ours
    assert store.renew_originals(200.0, 2000.0) == 0


def test_a_node_restarted_after_a_day_down_sends_its_own_items_with_a_full_lifetime(
        tmp_path: Path) -> None:
    # Published here at 1000, the node then down for two days: its own items' lifetime has
    # lapsed. Before it serves, it renews them (not 1 s in its answers, which read repair would
    # pass on) and leaves them due, so that its first upkeep sends them out.
    record = signed_record(1)
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    store.put_value(key_for(b"ours"), b"ours", published_meta(1000.0, DEFAULT))
    store.put_record("namespace", record.storage_key, record.to_bytes(), 1000.0,
                     meta=published_meta(1000.0, DEFAULT))
    store.close()
    now = 1000.0 + 2 * DEFAULT.expire_time
    store = SqliteStore(path, DEFAULT)
    try:
        store.expire(now)  # what a peer does when it opens its data dir
        node = Node(config=DEFAULT, store=store, now=now)
        day = int(DEFAULT.expire_time)
        assert node._handle_find_value(FindValue(key_for(b"ours")), None, ("10.0.0.9", 1),
                                       now) == Value(b"ours", day)
        found = node.namespace._handle_find(NamespaceFind(record.storage_key), None,
                                            ("10.0.0.9", 1), now)
        assert isinstance(found, NamespaceFound) and found.ttl == day
        assert {d.key for d in store.due(now, 10)} == {key_for(b"ours")}
        assert [d.key for d in store.due_records(now, 10)] == [record.storage_key]
        # Its first upkeep, before any saved contact answered, sends nothing: they stay due.
        node.handle_timer(now + DEFAULT.maintenance_interval)
        assert node.stats["republished"] == 0
        assert {d.key for d in store.due(now, 10)} == {key_for(b"ours")}
        assert [d.key for d in store.due_records(now, 10)] == [record.storage_key]
        # The first upkeep with contacts sends them.
        node.table.seen(Contact(5, ("10.0.0.9", 4000)))
        node.handle_timer(now + 2 * DEFAULT.maintenance_interval)
        then = now + 2 * DEFAULT.maintenance_interval
        assert node.stats["republished"] == 2
        assert store.value_meta(key_for(b"ours")) == published_meta(then, DEFAULT)
        assert store.record_meta("namespace", record.storage_key) == published_meta(then,
                                                                                   DEFAULT)
    finally:
        store.close()


def test_a_node_restarted_with_its_clock_set_back_keeps_no_time_beyond_its_own(
        make_store: type) -> None:
    # Everything here was stored while the node's clock ran an hour ahead; it starts again with
    # the clock set right. Unix times are kept, so each would otherwise come an hour late: our
    # own renewal among them, after every replica had expired.
    store: Store = make_store()
    now, ahead = 1000.0, 1000.0 + 3600.0
    day, renew, hour = DEFAULT.expire_time, DEFAULT.publisher_renew_after, 3600.0
    theirs = Meta(ahead + day, ahead + DEFAULT.republish_interval, source="10.0.0.1")
    store.put_value(1, b"ours", published_meta(ahead, DEFAULT))
    store.put_value(2, b"theirs", theirs)
    store.put_value(3, b"cached", Meta(ahead + day, cached=True))  # never republished
    store.put_value(4, b"forgotten", Meta(ahead + day))  # ours once, off the schedule
    store.put_value(5, b"in time", Meta(now + 100.0, now + 50.0, source="10.0.0.1"))
    store.add_entry(6, 7, replace(theirs, expires=now + 200.0))
    store.add_entry(6, 8, published_meta(ahead, DEFAULT))
    store.put_record("namespace", 9, b"r", ahead, meta=published_meta(ahead, DEFAULT))
    store.put_record("dht", 10, b"r", ahead, meta=theirs)
    store.put_record("identity", 11, b"me", ahead)  # no lifecycle: never expires

    Node(config=DEFAULT, store=store, now=now)

    assert store.value_meta(1) == published_meta(now, DEFAULT)
    assert store.value_meta(2) == Meta(now + day, now + hour, source="10.0.0.1")
    assert store.value_meta(3) == Meta(now + day, cached=True)
    assert store.value_meta(4) == Meta(now + day)
    assert store.value_meta(5) == Meta(now + 100.0, now + 50.0, source="10.0.0.1")
    assert store.entry_meta(6, 7) == Meta(now + 200.0, now + hour, source="10.0.0.1")
    assert store.entry_meta(6, 8) == published_meta(now, DEFAULT)
    assert store.record_meta("namespace", 9) == published_meta(now, DEFAULT)
    assert store.record_meta("dht", 10) == Meta(now + day, now + hour, source="10.0.0.1")
    assert store.record_meta("identity", 11) == Meta(NEVER)
    # Due, and expired, on the node's own clock.
    assert [(d.key, d.item) for d in store.due(now + hour, 10)] == [
        (5, b"in time"), (2, b"theirs"), (6, 7)]
    assert [(d.key, d.item) for d in store.due(now + renew, 10)][-2:] == [(1, b"ours"), (6, 8)]
    assert [d.key for d in store.due_records(now + renew, 10)] == [10, 9]
    assert store.expire(now + day - 1) == 2  # the entry and the value held in time
    assert store.expire(now + day) == 4 and store.get_value(3) is None
    assert store.cap_times(now + renew, now + hour, now + day) == 0  # nothing left beyond


def test_capped_times_keep_the_memory_stores_indexes_exact(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "INDEX_AT", 0)  # indexed from the first item
    store = MemoryStore(DEFAULT)
    for key in range(1, 5):
        store.put_value(key, bytes([key]), Meta(5000.0 + key, 4000.0 + key))
    store.put_value(5, b"cached", Meta(5000.0, cached=True))
    store.add_entry(9, 1, Meta(5000.0, 4000.0))
    store.put_record("dht", 9, b"r", 0.0, meta=Meta(5000.0, 4000.0, original=True))
    assert store.cap_times(300.0, 200.0, 500.0) == 7
    assert [d.key for d in store.due(200.0, 10)] == [1, 2, 3, 4, 9]
    assert [d.key for d in store.due_records(300.0, 10)] == [9]
    assert store.expire(500.0) == 6  # the original record never expires
    assert store.stats()["values"] == 0 and store.stats()["records"] == 1


def test_an_empty_routing_table_keeps_the_saved_contacts(make_store: type) -> None:
    # A node restarted while its network is down (or cut off long enough for every contact to
    # fail) has an empty table: saving it must not erase the contacts it could rejoin through.
    store: Store = make_store()
    contacts = [Contact(i, ("127.0.0.1", 2000 + i)) for i in range(3)]
    store.save_contacts(contacts)
    store.save_contacts([])
    assert sorted(store.load_contacts(), key=lambda c: c.id) == contacts
    store.save_contacts(contacts[:1])  # a table with contacts replaces them
    assert store.load_contacts() == contacts[:1]


def test_storing_another_value_under_a_key_replaces_it(make_store: type) -> None:
    # The store keeps whatever bytes it is given under a key (the node only ever gives the value
    # whose SHA-256 is the key), the same in both stores, even when the lengths are equal.
    store: Store = make_store()
    store.put_value(1, b"a", Meta(100.0))
    store.put_value(1, b"b", Meta(200.0))
    assert store.get_value(1) == b"b" and store.value_meta(1) == Meta(200.0)
    assert store.stats()["value_bytes"] == 1 and store.stats()["stored_bytes"] == 1


def test_due_with_a_limit_below_one_returns_nothing(make_store: type) -> None:
    store: Store = make_store()
    for i in range(3):
        store.put_value(i, b"x", Meta(1e9, republish_at=1.0))
    store.put_record("namespace", 9, b"r", 0.0, meta=Meta(1e9, 1.0))
    for limit in (0, -1):
        assert store.due(5.0, limit) == [] and store.due_records(5.0, limit) == []
        assert store.held_between(0, ID_SPACE, limit) == []


def test_a_value_and_its_meta_read_together_answer_as_read_apart(make_store: type) -> None:
    store: Store = make_store()
    store.put_value(1, b"held", Meta(expires=100.0, source="h"))
    store.put_value(2, b"ours", Meta(expires=100.0, original=True))
    for key in (1, 2, 3):
        for now in (99.0, 100.0, 500.0):
            value, meta = store.get_value(key, now), store.value_meta(key)
            together = store.get_value_and_meta(key, now)
            assert together == (None if value is None else (value, meta)), (key, now)
