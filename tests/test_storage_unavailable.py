"""A durable store whose database cannot be written (a disk remounted read-only after an error, a
failing disk, a lock held by another program) refuses writes with StorageUnavailable, changing
nothing, and the node on it goes on serving what it holds. SQLite's ``query_only`` pragma makes
the database refuse writes as a read-only file does (SQLITE_READONLY), without needing a mount."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import pytest

from qadom import Config, StorageFull, StorageUnavailable
from qadom.contact import Contact
from qadom.ids import key_for
from qadom.sim import SimNetwork
from qadom.sqlite_store import SqliteStore
from qadom.storage import MemoryStore, Meta

HOUR = 3600.0


def read_only(store: SqliteStore, on: bool = True) -> None:
    store._db.execute(f"PRAGMA query_only = {int(on)}")


def snapshot(store: SqliteStore) -> tuple[object, ...]:
    rows = tuple(tuple(store._db.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall())
                 for table in ("vals", "entries", "records", "contacts", "meta"))
    return (store.stats(), store.quotas.total_bytes, store.quotas.total_items, rows)


def test_every_write_is_refused_and_changes_nothing_until_the_database_can_be_written(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    meta = Meta(expires=100.0, republish_at=50.0)
    store.put_value(key_for(b"held"), b"held", meta)
    store.add_entry(7, 70, meta)
    store.put_record("namespace", 9, b"record", 0.0, "10.0.0.1",
                     Meta(expires=100.0, source="10.0.0.1"))
    store.save_contacts([Contact(5, ("127.0.0.1", 4000))])
    store.set_meta("id", b"ours")
    before = snapshot(store)
    read_only(store)
    writes: list[Callable[[], object]] = [
        lambda: store.put_value(key_for(b"new"), b"new", meta),
        lambda: store.put_value(key_for(b"held"), b"held", Meta(expires=500.0)),
        lambda: store.add_entry(7, 71, meta),
        lambda: store.put_record("namespace", 10, b"other", 0.0),
        lambda: store.delete_record("namespace", 9),
        lambda: store.expire(1000.0),
        lambda: store.forget(7),
        lambda: store.save_contacts([Contact(6, ("127.0.0.1", 4001))]),
        lambda: store.set_meta("id", b"theirs"),
    ]
    with caplog.at_level(logging.WARNING, logger="qadom"):
        for write in writes:
            with pytest.raises(StorageUnavailable) as refused:
                write()
            assert isinstance(refused.value, StorageFull)  # handled wherever a refusal is
            assert isinstance(refused.value, OSError)
            assert "readonly" in str(refused.value)
    assert snapshot(store) == before
    # What it holds is still served.
    assert store.get_value(key_for(b"held"), 10.0) == b"held"
    assert store.entries_after(7, None, 10, 10.0) == ([70], False)
    assert store.get_record("namespace", 9) == b"record"
    assert store.load_contacts() == [Contact(5, ("127.0.0.1", 4000))]
    # Said once, not once per refused write.
    warnings = [r.getMessage() for r in caplog.records]
    assert len([w for w in warnings if "cannot be written" in w]) == 1
    caplog.clear()
    read_only(store, False)
    with caplog.at_level(logging.WARNING, logger="qadom"):
        store.add_entry(7, 71, meta)
        store.add_entry(7, 72, meta)
    assert store.stats()["entries"] == 3
    assert [r.getMessage() for r in caplog.records] == [
        f"the store {store.path} accepts writes again"]
    assert store.unavailable is None
    store.close()
    reopened = SqliteStore(tmp_path / "store.sqlite3")
    assert reopened.entries_after(7, None, 10) == ([70, 71, 72], False)
    assert reopened.stats() == store.stats()
    reopened.close()


def test_a_node_whose_store_turns_read_only_serves_what_it_holds_and_refuses_only_writes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = SimNetwork(seed=21, config=Config(k=8))
    nodes = net.add_nodes(8)
    node = nodes[3]
    store = SqliteStore(tmp_path / "store.sqlite3", net.config)
    node.store = store
    writer, reader = nodes[1], nodes[6]
    key = net.run_call(net.call(writer, writer.set, b"before the disk failed"))
    assert store.get_value(key) is not None
    read_only(store)
    for other in nodes:
        if other is not node:
            other.store = MemoryStore(net.config)  # the failing node holds the only copy
    with caplog.at_level(logging.WARNING, logger="qadom"):
        assert net.run_call(net.call(reader, reader.get, key)) == b"before the disk failed"
        later = net.run_call(net.call(writer, writer.set, b"after the disk failed"))
        net.run_for(2 * HOUR)  # upkeep ticks every minute: expire, republish, save contacts
    assert node.stats["internal_errors"] == 0
    assert node.stats["storage_errors"] > 100
    assert store.get_value(later) is None  # refused, answered STORAGE_FULL
    assert any(n.store.get_value(later) is not None for n in nodes if n is not node)
    # The upkeep steps that need no writing still ran: buckets were refreshed.
    assert not node.table.stale_buckets(net.now, net.config.refresh_interval + 120)
    # Each failing step is logged when it starts failing, not at every tick.
    messages = [r.getMessage() for r in caplog.records]
    assert len([m for m in messages if m.startswith("the store ")]) == 1
    assert len([m for m in messages if m.startswith("maintenance could not save contacts")]) == 1
    assert len([m for m in messages if m.startswith("maintenance could not expire")]) == 1
    read_only(store, False)
    with caplog.at_level(logging.WARNING, logger="qadom"):
        net.run_for(61.0)
    assert "maintenance could save contacts again" in [r.getMessage() for r in caplog.records]
    assert store.load_contacts()
