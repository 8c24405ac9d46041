"""What ``Store.stats()`` reports is kept as the store changes, never counted on request (a remote
peer may ask for it at will): after any mix of writes, replacements, refusals, evictions, expiry,
forgetting and a restart it equals a fresh count of what the store holds."""

from __future__ import annotations

import random
import sqlite3
from pathlib import Path

import pytest

from qadom import Config
from qadom.errors import StorageFull
from qadom.sqlite_store import SqliteStore
from qadom.storage import ENTRY_SIZE, MemoryStore, Meta, Store

CONFIG = Config(max_store_bytes=12_000, max_store_items=70, max_bytes_per_source=7_000,
                max_items_per_source=45)
SOURCES = ("", "10.0.0.1", "10.0.0.2")
DISK_FULL = "disk holding this node's store is full"


def recount(store: Store) -> dict[str, int]:
    """``stats()`` counted afresh from everything the store holds."""
    if isinstance(store, SqliteStore):
        def one(sql: str) -> int:
            return int(store._db.execute(sql).fetchone()[0] or 0)

        values, value_bytes = one("SELECT COUNT(*) FROM vals"), one(
            "SELECT SUM(length(value)) FROM vals")
        entry_keys, entries = one("SELECT COUNT(DISTINCT key) FROM entries"), one(
            "SELECT COUNT(*) FROM entries")
        records, record_bytes = one("SELECT COUNT(*) FROM records"), one(
            "SELECT SUM(length(data)) FROM records")
    else:
        assert isinstance(store, MemoryStore)
        held = [value for _, value, _ in store.values()]
        values, value_bytes = len(held), sum(len(value) for value in held)
        entry_keys = len({key for key, _ in store._entries})
        entries = len(store._entries)
        records = len(store._records)
        record_bytes = sum(len(data) for data, _ in store._records.values())
    return {"values": values, "value_bytes": value_bytes, "entry_keys": entry_keys,
            "entries": entries, "records": records,
            "stored_bytes": value_bytes + entries * ENTRY_SIZE + record_bytes}


def set_disk_full(store: Store, full: bool) -> None:
    """While full, the file has no free page and may not grow (SQLite's "database or disk is
    full")."""
    assert isinstance(store, SqliteStore)
    if full:
        store._db.execute("VACUUM")
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    else:  # SQLite's own limit
        with sqlite3.connect(":memory:") as fresh:
            pages = fresh.execute("PRAGMA max_page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_stats_equal_a_recount_after_any_mix_of_operations(kind: str, tmp_path: Path) -> None:
    path = tmp_path / "counts.sqlite3"

    def open_store() -> Store:
        return MemoryStore(CONFIG) if kind == "memory" else SqliteStore(path, CONFIG)

    store = open_store()
    rng = random.Random(11)
    # What the mix went through, to be sure it went through all of it.
    seen = dict.fromkeys(("evicted", "refused", "expired", "emptied keys", "forgotten"), 0)
    if kind == "sqlite":
        seen.update({"disk full": 0, "reopened": 0})
    now = 0.0
    try:
        for step in range(900):
            if kind == "sqlite" and step in (300, 600, 360, 660):
                set_disk_full(store, step in (300, 600))
            if kind == "sqlite" and step == 450:
                held = store.stats()
                store.close()
                store = open_store()
                assert store.stats() == held
                seen["reopened"] += 1
            before = recount(store)
            source = rng.choice(SOURCES)
            expires = now + rng.randrange(1, 60)
            op = rng.random()
            try:
                if op < 0.35:  # new values and replacements of other lengths, some cached
                    key = rng.randrange(40)
                    size = rng.choice([1, 40, 300, 1200, 3000])
                    new = store.value_meta(key) is None
                    store.put_value(key, bytes([size % 251]) * size,
                                    Meta(expires, source=source, cached=rng.random() < 0.4))
                    seen["evicted"] += recount(store)["values"] < before["values"] + new
                elif op < 0.6:
                    store.add_entry(rng.randrange(6), rng.randrange(25),
                                    Meta(expires, now + 5, original=rng.random() < 0.1,
                                         source=source))
                elif op < 0.72:
                    key = rng.randrange(12)
                    data = b"r" * rng.choice([5, 200, 900])
                    if rng.random() < 0.7:
                        store.put_record("dht", key, data, now, meta=Meta(
                            expires, now + 5, original=rng.random() < 0.1, source=source))
                    else:  # no lifecycle: kept until deleted
                        store.put_record("identity", key, data, now, source)
                elif op < 0.78:
                    store.delete_record(rng.choice(["dht", "identity"]), rng.randrange(12))
                elif op < 0.84:
                    seen["forgotten"] += store.forget(rng.randrange(40))
                else:
                    now += rng.choice([1.0, 5.0, 20.0])
                    seen["expired"] += store.expire(now) > 0
                    seen["emptied keys"] += recount(store)["entry_keys"] < before["entry_keys"]
            except StorageFull as exc:
                seen["disk full" if DISK_FULL in str(exc) else "refused"] += 1
                assert recount(store) == before, step  # a refused write changed nothing
            assert store.stats() == recount(store), step
    finally:
        store.close()
    assert all(seen.values()), seen


class Unread(dict):  # type: ignore[type-arg]
    """A dict that may be sized and looked up in, but not read through."""

    def _read_through(self, *args: object) -> None:
        raise AssertionError("stats() read through every stored item")

    __iter__ = values = items = keys = _read_through  # type: ignore[assignment]


def test_stats_read_no_stored_item(tmp_path: Path) -> None:
    memory = MemoryStore(CONFIG)
    sqlite = SqliteStore(tmp_path / "q.sqlite3", CONFIG)
    statements: list[str] = []
    try:
        for store in (memory, sqlite):
            for i in range(20):
                store.put_value(i, b"v" * i, Meta(1e9))
                store.add_entry(i % 3, i, Meta(1e9))
            store.put_record("dht", 1, b"r", 0.0)
        for name in ("_values", "_sets", "_entries", "_records"):
            setattr(memory, name, Unread(getattr(memory, name)))
        sqlite._db.set_trace_callback(statements.append)
        stats = [memory.stats(), sqlite.stats()]
        sqlite._db.set_trace_callback(None)
    finally:
        sqlite.close()
    assert statements == []  # not one query
    expected = {"values": 20, "value_bytes": sum(range(20)), "entry_keys": 3, "entries": 20,
                "records": 1, "stored_bytes": sum(range(20)) + 20 * ENTRY_SIZE + 1}
    assert stats == [expected, expected]
