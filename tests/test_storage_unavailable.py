"""A durable store whose database cannot be written (a disk remounted read-only after an error, a
failing disk, a lock held by another program) refuses writes with StorageUnavailable, changing
nothing, and the node on it goes on serving what it holds. SQLite's ``query_only`` pragma makes
the database refuse writes as a read-only file does (SQLITE_READONLY), without needing a mount.

A store whose database cannot be read (a damaged page, a failing disk) refuses those reads with
StorageUnavailable too; the node answers a request it cannot read for with ERROR
STORAGE_UNAVAILABLE and its own gets go to the network. The damage is real: pages of the file
overwritten with garbage through a file handle of the test's own, once the connection's page
cache was emptied, so that SQLite reads them back from disk and finds them malformed
(SQLITE_CORRUPT). A lock another program holds is a real second connection to the file."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.signing import SigningKey

from qadom import Config, InvalidArgument, Peer, StorageFull, StorageUnavailable
from qadom.contact import Contact
from qadom.http import key_text, make_app
from qadom.ids import ID_SPACE, key_for
from qadom.messages import Error, ErrorCode, FindValue, Search
from qadom.namespace import RECORD_KIND, NamespaceRecord, signing_bytes
from qadom.sim import SimNetwork
from qadom.sqlite_store import SqliteStore
from qadom.storage import MemoryStore, Meta

from helpers import FAST

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


# ----------------------------------------------------------------------------- reads


def to_disk(store: SqliteStore) -> int:
    """Move everything into the database file (the WAL checkpointed and emptied) and empty the
    connection's page cache, so that the next read of any page goes to disk; the page size."""
    busy, _, _ = store._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0
    store._db.execute("PRAGMA shrink_memory")
    return int(store._db.execute("PRAGMA page_size").fetchone()[0])


def damage(store: SqliteStore, pages: list[int]) -> None:
    """Overwrite whole pages of the store's file with garbage, as a failing disk would, through a
    file handle of our own (call :func:`to_disk` first). Never page 1, the header."""
    size = int(store._db.execute("PRAGMA page_size").fetchone()[0])
    with open(store.path, "r+b") as file:
        for page in pages:
            assert page > 1
            file.seek((page - 1) * size)
            file.write(b"\xa5" * size)


def root_pages(store: SqliteStore, *names: str) -> list[int]:
    """The root pages of tables and indexes: damaged, every use of them fails."""
    marks = ", ".join("?" for _ in names)
    pages = [int(row[0]) for row in store._db.execute(
        f"SELECT rootpage FROM sqlite_master WHERE name IN ({marks})", names)]
    assert len(pages) == len(names)
    return pages


def store_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.getMessage().startswith("the store ")]


def test_reads_of_a_damaged_page_are_refused_with_storage_unavailable_and_said_once(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = SqliteStore(tmp_path / "store.sqlite3")
    meta = Meta(expires=100.0, republish_at=50.0)
    values = [b"%04d" % i * 150 for i in range(600)]  # 600 bytes: six rows to a page
    for value in values:
        store.put_value(key_for(value), value, meta)
    store.add_entry(7, 70, meta)
    size = to_disk(store)
    data = store.path.read_bytes()
    page_of = {value: data.index(value) // size + 1 for value in values}
    middle = page_of[values[300]]
    assert 1 < middle < len(data) // size - 10  # a leaf of vals in the middle of the file
    on_page = [v for v in values if page_of[v] == middle]
    elsewhere = [v for v in values if page_of[v] != middle]
    damage(store, [middle])
    reads: list[Callable[[], object]] = [
        *(lambda v=v: store.get_value(key_for(v), 10.0) for v in on_page),
        lambda: store.value_meta(key_for(on_page[0])),
        lambda: store.due(60.0, len(values)),  # every value is due: the scan crosses the page
        lambda: store.held_between(0, ID_SPACE, len(values) + 10),
        # A write whose first read meets the damage is refused as well, changing nothing.
        lambda: store.put_value(key_for(on_page[0]), on_page[0], Meta(expires=500.0)),
    ]
    with caplog.at_level(logging.WARNING, logger="qadom"):
        for read in reads:
            with pytest.raises(StorageUnavailable) as refused:
                read()
            assert isinstance(refused.value, StorageFull)
            assert "malformed" in str(refused.value)  # SQLITE_CORRUPT
        # What lies on other pages is still read, and still written.
        assert [store.get_value(key_for(v), 10.0) for v in elsewhere] == elsewhere
        assert store.entries_after(7, None, 10, 10.0) == ([70], False)
        store.add_entry(7, 71, meta)
        store.set_meta("id", b"ours")
        # A write that missed the damage mends nothing: the outage goes on, said once.
        with pytest.raises(StorageUnavailable):
            store.get_value(key_for(on_page[-1]))
    assert store_lines(caplog) == [
        f"the store {store.path} is damaged: database disk image is malformed; what touches the "
        "damage is refused while it is open (stop the node, then restore or remove the file)"]
    assert store.unavailable == "database disk image is malformed"
    assert store.entries_after(7, None, 10) == ([70, 71], False)
    store.close()


def test_an_outside_lock_refuses_writes_within_the_busy_timeout_and_they_work_once_released(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "store.sqlite3"
    store = SqliteStore(path)
    assert store.config.sqlite_busy_timeout == 0.1
    meta = Meta(expires=100.0)
    store.put_value(key_for(b"held"), b"held", meta)
    before = snapshot(store)
    # Another program (the sqlite3 shell, say) in a write transaction holds the write lock. In WAL
    # mode that blocks writers only; readers go on reading the last committed state.
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO meta (name, data) VALUES ('theirs', x'00')")
    try:
        with caplog.at_level(logging.WARNING, logger="qadom"):
            writes: tuple[Callable[[], None], ...] = (
                lambda: store.set_meta("id", b"ours"),
                lambda: store.put_value(key_for(b"new"), b"new", meta))
            for write in writes:
                started = time.monotonic()
                with pytest.raises(StorageUnavailable, match="database is locked"):
                    write()
                # Refused after the short busy timeout, not SQLite's default 5 s.
                assert time.monotonic() - started < 2.0
            assert store.get_value(key_for(b"held")) == b"held"
            assert snapshot(store) == before
    finally:
        other.execute("ROLLBACK")
        other.close()
    with caplog.at_level(logging.WARNING, logger="qadom"):
        store.set_meta("id", b"ours")
        store.put_value(key_for(b"new"), b"new", meta)
    assert store.get_meta("id") == b"ours"
    assert store.get_value(key_for(b"new")) == b"new"
    assert store_lines(caplog) == [
        f"the store {path} cannot be written: database is locked; what needs it is refused "
        "until a write works again",
        f"the store {path} accepts writes again"]
    assert store.unavailable is None
    store.close()


@pytest.mark.parametrize("timeout", [-0.1, 61.0, float("nan"), float("inf")])
def test_the_busy_timeout_is_checked(timeout: float) -> None:
    with pytest.raises(InvalidArgument, match="sqlite_busy_timeout"):
        Config(sqlite_busy_timeout=timeout)


def test_a_node_whose_store_cannot_be_read_answers_storage_unavailable_and_gets_go_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    net = SimNetwork(seed=23, config=Config(k=8))
    nodes = net.add_nodes(8)
    node = nodes[3]
    store = SqliteStore(tmp_path / "store.sqlite3", net.config)
    node.store = store
    writer, reader = nodes[1], nodes[6]
    value = b"held by every node " * 30
    key = net.run_call(net.call(writer, writer.set, value))
    net.run_call(net.call(writer, writer.append, 7, 70))
    owner = SigningKey(bytes(range(32)))
    public = bytes(owner.verify_key)
    named = NamespaceRecord(public, 5, 0, b"named",
                            owner.sign(signing_bytes(public, 5, 0, b"named")).signature)
    net.run_call(net.call(writer, writer.namespace.set, named))
    assert store.get_value(key) == value  # eight nodes, k = 8: every node holds all three
    assert store.entries_after(7, None, 10) == ([70], False)
    assert store.get_record(RECORD_KIND, named.storage_key) is not None
    to_disk(store)
    damage(store, root_pages(store, "vals", "sqlite_autoindex_vals_1", "entries",
                             "sqlite_autoindex_entries_1", "sqlite_autoindex_records_1"))
    with caplog.at_level(logging.WARNING, logger="qadom"):
        for request in (FindValue(key), Search(7, None)):
            reply = net.run_call(net.call(reader, reader.ask, net.address_of(node), request))
            assert isinstance(reply, Error)
            assert reply.code == ErrorCode.STORAGE_UNAVAILABLE
            assert "cannot be read" in reply.reason
        # Others hold the value: a get from another node finds it, a get on this node too.
        assert net.run_call(net.call(reader, reader.get, key)) == value
        assert net.run_call(net.call(node, node.get, key)) == value
        assert net.run_call(net.call(node, node.search, 7)) == {70}
        assert net.run_call(net.call(node, node.namespace.get, public, 5)) == named
        # A /dht read looks at our own copy last, once no peer had a record: that read fails,
        # and so does the operation, at once rather than at its deadline.
        started = net.now
        with pytest.raises(StorageUnavailable):
            net.run_call(net.call(node, node.dht_records.get, "nobody has it"),
                         timeout=net.config.operation_timeout / 2)
        assert net.now - started < 5.0
        # A store refused for a read is refused as a write the store cannot make.
        net.run_call(net.call(writer, writer.set, b"after the damage"))
        newer = NamespaceRecord(public, 5, 1, b"newer",
                                owner.sign(signing_bytes(public, 5, 1, b"newer")).signature)
        assert net.run_call(net.call(writer, writer.namespace.set, newer)) == 6  # all but it
        net.add_nodes(1)  # a newcomer: the node would hand over what it holds
        net.run_for(2 * HOUR)  # upkeep ticks every minute; the value is due for republish
    assert node.stats["internal_errors"] == 0
    assert node.stats["storage_unavailable"] == 3  # the two above and the set's lookup
    assert node.stats["namespace_refused"] == 0  # the record was good; our store was not
    # The get, the search, the hand-over, and a refused republish at every tick of the second hour.
    assert node.stats["storage_errors"] > 50
    assert not [r for r in caplog.records if r.exc_info]  # no traceback per request
    messages = [r.getMessage() for r in caplog.records]
    assert len(store_lines(caplog)) == 1  # the store says it once
    assert "is damaged" in store_lines(caplog)[0]
    for step in ("republish", "hand over"):
        assert len([m for m in messages if m.startswith(f"maintenance could not {step}")]) == 1
    assert store.stats()["values"] == 1  # the value stored after the damage was refused


def test_a_record_the_store_cannot_rewrite_holds_back_no_other_republish(
        tmp_path: Path) -> None:
    """A damaged page under one record (its primary-key index) refuses that record's rewrite at
    every upkeep tick; the values and entries due with it, which the store can still rewrite,
    are republished all the same (our own value included: held back, it would expire
    everywhere), and the record stays due for the next tick."""
    net = SimNetwork(seed=29, config=Config(k=8))
    node, _ = net.add_nodes(2)  # with a peer to republish to
    store = SqliteStore(tmp_path / "store.sqlite3", net.config)
    node.store = store
    owner = SigningKey(bytes(range(32)))
    public = bytes(owner.verify_key)
    named = NamespaceRecord(public, 5, 0, b"named",
                            owner.sign(signing_bytes(public, 5, 0, b"named")).signature)
    due = Meta(expires=10 * HOUR, republish_at=30.0)
    store.put_record(RECORD_KIND, named.storage_key, named.to_bytes(), 0.0, meta=due)
    value = b"ours, renewed every day"
    store.put_value(key_for(value), value, Meta(10 * HOUR, 30.0, original=True))
    store.add_entry(7, 70, due)
    to_disk(store)
    damage(store, root_pages(store, "sqlite_autoindex_records_1"))
    with pytest.raises(StorageUnavailable):
        store.record_meta(RECORD_KIND, named.storage_key)
    net.run_for(130.0)  # two upkeep ticks: the first in (30 s, 60 s], the next 60 s later
    assert node.stats["internal_errors"] == 0
    assert node.stats["republished"] == 2  # the value and the entry, at the first tick
    mine = store.value_meta(key_for(value))
    assert mine is not None and mine.republish_at > 20 * HOUR and mine.expires > 20 * HOUR
    entry = store.entry_meta(7, 70)
    assert entry is not None  # republished at the first tick, after it was due (30 s)
    assert 30.0 < entry.republish_at - net.config.republish_interval <= 60.0
    # The record was refused at both ticks and is still due.
    assert node.stats["storage_errors"] >= 2
    assert [d.key for d in store.due_records(net.now, 10)] == [named.storage_key]
    store.close()


async def test_http_answers_a_store_that_cannot_be_read_with_503_or_the_network_never_500(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    octets = {"Content-Type": "application/octet-stream"}
    async with (Peer(config=FAST, data_dir=tmp_path) as peer,
                TestClient(TestServer(make_app(peer))) as client):
        answer = await client.post("/values", data=b"held here", headers=octets)
        assert answer.status == 200
        key = (await answer.json())["key"]
        store = peer.node.store
        assert isinstance(store, SqliteStore)
        to_disk(store)
        damage(store, root_pages(store, "vals", "sqlite_autoindex_vals_1",
                                 "sqlite_autoindex_records_1"))
        with caplog.at_level(logging.INFO):
            stored = await client.post("/values", data=b"new", headers=octets)
            # Our own copy cannot be read: the network is asked, and there is nobody to ask (no
            # peer known: 502, not a 404 that would say the network holds nothing).
            got = await client.get(f"/values/{key}")
            namespace = await client.get(f"/namespaces/{'11' * 32}/{key_text(9)}")
            # A /dht read looks at our own copy last, once the network has none: it fails at
            # once with the store's refusal, not at the operation deadline.
            dht = await asyncio.wait_for(client.get("/dht/name"), FAST.operation_timeout / 2)
        for answer, status in ((stored, 503), (got, 502), (namespace, 502), (dht, 503)):
            assert answer.status == status
            assert answer.content_type == "application/json"
            assert set(await answer.json()) == {"error"}
        assert "cannot be read" in (await dht.json())["error"]
        assert not [r for r in caplog.records if r.exc_info and r.levelno > logging.DEBUG]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
