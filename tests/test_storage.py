"""Both stores behind one interface: values, entries, expiry, schedule, quotas, persistence."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from qadom import Config
from qadom.contact import Contact
from qadom.errors import StorageFull
from qadom.sqlite_store import SqliteStore
from qadom.storage import ENTRY_SIZE, NEVER, MemoryStore, Meta, Quotas, Store

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


def test_due_items_for_republish(make_store: type) -> None:
    store: Store = make_store()
    store.put_value(1, b"x", Meta(expires=1e9, republish_at=10.0))
    store.put_value(2, b"y", Meta(expires=1e9, republish_at=30.0))
    store.add_entry(3, 4, Meta(expires=1e9, republish_at=5.0))
    due = store.due(20.0, 10)
    assert {(d.key, d.item) for d in due} == {(1, b"x"), (3, 4)}
    assert len(store.due(20.0, 1)) == 1


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
    if isinstance(store, SqliteStore):
        fresh = SqliteStore(store.path, store.config)  # counts the committed file
        quotas = fresh.quotas
        fresh.close()
    else:
        assert isinstance(store, MemoryStore)
        quotas = Quotas(store.quotas.config)
        for _, value, meta in store.values():
            quotas.add(meta.source, len(value), meta.cached)
        for (_, _), meta in store._entries.items():
            quotas.add(meta.source, ENTRY_SIZE)
        for data, source in store._records.values():
            quotas.add(source, len(data))
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
                store.put_record("r", rng.randrange(10), b"x" * rng.choice([10, 300]), 0.0,
                                 source)
            elif op < 0.9:
                store.delete_record("r", rng.randrange(10))
            else:
                store.expire(float(step // 4))
        if step % 20 == 0:
            quotas = store.quotas  # type: ignore[attr-defined]
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
