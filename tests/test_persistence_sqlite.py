"""The SQLite store as a node running for weeks meets it: files it must refuse without touching
them, a data dir from the first schema, a full disk, a process killed while writing, and every
per-operation query served by an index."""

from __future__ import annotations

import contextlib
import hashlib
import re
import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import qadom
from qadom import Config
from qadom.contact import Contact
from qadom.errors import QadomError, StorageFull, StorageUnavailable
from qadom.ids import ID_SPACE, id_to_bytes, key_for
from qadom.sqlite_store import SqliteStore
from qadom.storage import NEVER, Meta

DEFAULT = Config()
KILL_LIMIT = 60.0


def refused(path: Path) -> QadomError:
    """Open ``path``, expecting a refusal; the error raised."""
    with pytest.raises(qadom.StoreUnusable) as info:
        SqliteStore(path, DEFAULT).close()
    error = info.value
    assert isinstance(error, QadomError)
    # An OSError naming the file: what the command line reports as "cannot use data dir".
    assert isinstance(error, OSError) and error.filename == str(path), repr(error)
    assert str(path) in str(error)
    return error


def test_a_corrupt_file_is_refused_with_a_qadom_error_and_left_as_is(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    garbage = b"these bytes are no SQLite database " * 200
    path.write_bytes(garbage)
    assert "not a database" in str(refused(path))
    assert path.read_bytes() == garbage
    # Nothing written beside it but the store's empty lock file (no journal, no WAL).
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qadom.sqlite3", "qadom.sqlite3.lock"]
    assert (tmp_path / "qadom.sqlite3.lock").stat().st_size == 0


def test_another_programs_database_is_refused_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE notes (body TEXT)")
    db.execute("INSERT INTO notes VALUES ('mine')")
    db.commit()
    db.close()
    before = path.read_bytes()
    assert "not a qadom database" in str(refused(path))
    assert path.read_bytes() == before
    db = sqlite3.connect(path)
    try:
        tables = [row[0] for row in db.execute("SELECT name FROM sqlite_master")]
    finally:
        db.close()
    assert tables == ["notes"]


def test_a_database_from_a_newer_qadom_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    SqliteStore(path, DEFAULT).close()
    db = sqlite3.connect(path)
    version = db.execute("PRAGMA user_version").fetchone()[0]
    assert version >= 1  # a store stamps its schema version
    db.execute(f"PRAGMA user_version = {version + 1}")
    db.close()
    assert "newer" in str(refused(path))
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA user_version").fetchone()[0] == version + 1
    finally:
        db.close()


def _stored(path: Path, *, before_the_stamp: bool) -> None:
    """A store of 200 values of 300 bytes in ``path``, closed; ``before_the_stamp``: as a qadom
    from before the stamp left it (a rollback journal, no application_id or user_version)."""
    store = SqliteStore(path, DEFAULT)
    try:
        for i in range(200):
            store.put_value(*_value(i, 300), Meta(1e12, source="10.0.0.1"))
    finally:
        store.close()
    if before_the_stamp:
        db = sqlite3.connect(path)
        db.execute("PRAGMA journal_mode=DELETE")
        db.execute("PRAGMA application_id = 0")
        db.execute("PRAGMA user_version = 0")
        db.commit()
        db.close()


@pytest.mark.parametrize("before_the_stamp", [False, True], ids=["current", "before-stamp"])
def test_a_store_with_a_damaged_table_page_is_refused_and_left_byte_for_byte(
        tmp_path: Path, before_the_stamp: bool) -> None:
    path = tmp_path / "qadom.sqlite3"
    _stored(path, before_the_stamp=before_the_stamp)
    data = bytearray(path.read_bytes())
    page_size = int.from_bytes(data[16:18], "big")
    page = data.find(_value(100, 300)[1]) // page_size  # a leaf page of the values' table
    assert page > 0
    data[page * page_size:(page + 1) * page_size] = b"\xa5" * page_size
    path.write_bytes(data)
    before = bytes(data)
    # Found when the tables are counted, after the checks of the header and the schema.
    assert "malformed" in str(refused(path))
    assert path.read_bytes() == before  # neither switched to WAL, nor stamped, nor upgraded
    assert sorted(p.name for p in tmp_path.iterdir()) == ["qadom.sqlite3", "qadom.sqlite3.lock"]


def test_a_full_disk_at_start_says_so_and_leaves_the_store_as_it_was(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qadom.sqlite3"
    _stored(path, before_the_stamp=True)
    db = sqlite3.connect(path)  # the records' indexes to create again: the file must grow
    for index in ("records_republish", "records_expires", "records_key"):
        db.execute(f"DROP INDEX {index}")
    db.execute("VACUUM")
    db.close()
    before = path.read_bytes()
    connect = sqlite3.connect

    def no_room(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        """A connection whose file may not grow: SQLite's "database or disk is full"."""
        db: sqlite3.Connection = connect(*args, **kwargs)
        pages = int(db.execute("PRAGMA page_count").fetchone()[0])
        db.execute(f"PRAGMA max_page_count = {pages}")
        return db

    monkeypatch.setattr(sqlite3, "connect", no_room)
    with pytest.raises(StorageUnavailable) as info:
        SqliteStore(path, DEFAULT).close()
    message = str(info.value)
    assert "is full" in message and "nothing stored in it was lost" in message, message
    assert str(path) in message and "qadom store" not in message
    assert path.read_bytes() == before
    monkeypatch.setattr(sqlite3, "connect", connect)
    again = SqliteStore(path, DEFAULT)  # room again: it opens, with everything it held
    try:
        assert again.stats()["values"] == 200
        assert again.get_value(_value(7, 300)[0]) == _value(7, 300)[1]
    finally:
        again.close()


def test_an_empty_file_becomes_a_store(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    path.write_bytes(b"")  # what an interrupted first start can leave behind
    store = SqliteStore(path, DEFAULT)
    try:
        store.put_value(1, b"v", Meta(1e9))
        assert store.get_value(1) == b"v"
    finally:
        store.close()


# The schema of the first durable release: service records had no source (and no lifecycle).
FIRST_SCHEMA = """
CREATE TABLE vals (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL);
CREATE INDEX vals_republish ON vals (republish_at);
CREATE INDEX vals_expires ON vals (expires);
CREATE TABLE entries (
    key BLOB NOT NULL, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL, PRIMARY KEY (key, value));
CREATE INDEX entries_republish ON entries (republish_at);
CREATE INDEX entries_expires ON entries (expires);
CREATE TABLE records (
    kind TEXT NOT NULL, key BLOB NOT NULL, data BLOB NOT NULL, PRIMARY KEY (kind, key));
CREATE TABLE contacts (id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL);
CREATE TABLE meta (name TEXT PRIMARY KEY, data BLOB NOT NULL);
"""


def test_a_data_dir_of_the_first_schema_opens_with_every_record(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(FIRST_SCHEMA)
    db.executemany("INSERT INTO records VALUES (?, ?, ?)", [
        ("namespace", id_to_bytes(1), b"a namespace record"),
        ("dht", id_to_bytes(2), b"a dht record"),
        ("identity", id_to_bytes(3), b"secret")])
    ours = key_for(b"ours")  # a value's key is its SHA-256: a row that breaks it is damaged
    db.execute("INSERT INTO vals VALUES (?, ?, 1e12, 5.0, 1, 0, '')", (id_to_bytes(ours), b"ours"))
    db.executemany("INSERT INTO entries VALUES (?, ?, 1e12, 5.0, 0, 0, '10.0.0.1')", [
        (id_to_bytes(key), id_to_bytes(value)) for key, value in ((4, 1), (4, 2), (5, 1))])
    db.execute("INSERT INTO meta VALUES ('node_id', ?)", (b"\x07" * 32,))
    db.commit()
    db.close()

    store = SqliteStore(path, DEFAULT)
    try:
        assert store.get_meta("node_id") == b"\x07" * 32
        assert store.get_value(ours) == b"ours"
        assert store.get_record("namespace", 1) == b"a namespace record"
        assert store.get_record("identity", 3) == b"secret"
        # Who sent them is unknown: never taken for ours (that would republish another
        # publisher's record forever), but due at once, to get a lifetime at the first
        # maintenance like any record that predates the lifecycle.
        assert store.record_meta("namespace", 1) == Meta(NEVER, 0.0)
        assert store.record_meta("dht", 2) == Meta(NEVER, 0.0)
        assert store.record_meta("identity", 3) == Meta(NEVER)
        assert sorted(d.key for d in store.due_records(0.0, 10)) == [1, 2]
        # Counted when the file opens, the upgrade included.
        stats = {"values": 1, "value_bytes": 4, "entry_keys": 2, "entries": 3, "records": 3,
                 "stored_bytes": 4 + 3 * 32 + 18 + 12 + 6}
        assert store.stats() == stats
    finally:
        store.close()
    again = SqliteStore(path, DEFAULT)
    try:
        assert again.stats() == stats
    finally:
        again.close()


def test_a_full_disk_refuses_with_storage_full_and_changes_nothing(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "qadom.sqlite3", DEFAULT)
    try:
        store.put_value(0, b"first", Meta(1e9, source="10.0.0.1"))
        # The file may not grow past its current pages: SQLite's "database or disk is full".
        pages = store._db.execute("PRAGMA page_count").fetchone()[0]
        store._db.execute(f"PRAGMA max_page_count = {pages + 2}")
        refusals = 0
        for i in range(1, 50):
            try:
                store.put_value(i, bytes([i]) * 4000, Meta(1e9, source="10.0.0.1"))
            except StorageFull:
                refusals += 1
        assert refusals > 0
        with pytest.raises(StorageFull):  # entries fill what room the pages had left
            for value in range(10_000):
                store.add_entry(1, value, Meta(1e9))
        statements: list[str] = []
        store._db.set_trace_callback(statements.append)
        with pytest.raises(StorageFull):
            store.put_record("namespace", 1, b"r" * 8000, 0.0, meta=Meta(1e9))
        store._db.set_trace_callback(None)
        # A refusal costs no recount of the whole file (a full node refuses every write).
        assert not [sql for sql in statements if "GROUP BY" in sql]
        quotas = store.quotas
        running = (quotas.total_bytes, quotas.total_items, dict(quotas._by_source))
    finally:
        store.close()
    again = SqliteStore(tmp_path / "qadom.sqlite3", DEFAULT)
    try:
        fresh = again.quotas
        assert running == (fresh.total_bytes, fresh.total_items, dict(fresh._by_source))
        assert again.get_value(0) == b"first"
    finally:
        again.close()


def test_every_per_operation_query_is_served_by_an_index(tmp_path: Path) -> None:
    """A node answers each request with a few queries: none may scan a whole table, which
    would stall the event loop in proportion to what the node stores."""
    store = SqliteStore(tmp_path / "qadom.sqlite3", Config(max_store_items=90))
    top = ID_SPACE - 1
    for i in range(30):
        store.put_value(i, b"v", Meta(100.0 + i, 50.0, source="10.0.0.1", cached=i % 3 == 0))
        store.add_entry(i % 5, i, Meta(100.0 + i, 50.0))
        store.put_record("namespace", i, b"r", 0.0, meta=Meta(100.0 + i, 50.0))
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    try:
        store.get_value(3, 10.0)
        store.value_meta(3)
        store.put_value(3, b"v", Meta(500.0))
        store.put_value(99, b"w", Meta(500.0))  # evicts a cached copy: the store is full
        with contextlib.suppress(StorageFull):  # a cached copy never evicts another
            store.put_value(100, b"x", Meta(500.0, cached=True))
        store.entry_meta(1, 1)
        store.add_entry(1, 99, Meta(500.0))  # evicts one more
        store.entries_after(1, 6, 2)
        store.entries_after(1, 6, 2, 120.0)  # skipping expired entries
        store.due(60.0, 10)
        store.due_records(60.0, 10)
        store.held_between(10, 20, 100)
        store.held_between(top, ID_SPACE, 100)
        store.get_record("namespace", 4, 10.0)
        store.record_meta("namespace", 4)
        store.put_record("namespace", 4, b"s", 0.0, meta=Meta(500.0))
        store.delete_record("namespace", 5)
        store.forget(7)
        store.expire(110.0)
        store.renew_originals(120.0, 500.0)
        store.cap_times(130.0, 125.0, 140.0)
    finally:
        store._db.set_trace_callback(None)
    scans = []
    for sql in statements:
        if not sql.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            continue
        sql = re.sub(r"\bInf\b", "9e999", sql)  # how a bound infinity (NEVER) is expanded
        for row in store._db.execute(f"EXPLAIN QUERY PLAN {sql}"):
            detail = str(row[-1])
            if detail.startswith("SCAN "):  # a whole table, or a whole index
                scans.append((detail, sql))
    store.close()
    assert scans == []


# A child that writes values, entries and records as fast as it can, each acknowledged on
# stdout once the store returned, until it is killed.
WRITER = textwrap.dedent("""
    import hashlib, sys
    from qadom.config import Config
    from qadom.ids import key_for
    from qadom.sqlite_store import SqliteStore
    from qadom.storage import Meta

    store = SqliteStore(sys.argv[1], Config())
    i = 0
    while True:
        value = hashlib.sha256(str(i).encode()).digest() * (1 + i % 256)
        store.put_value(key_for(value), value, Meta(1e12, 1e12, source=f"10.0.0.{i % 7}",
                                                     cached=i % 5 == 0))
        store.add_entry(i % 11, i, Meta(1e12, source=f"10.0.0.{i % 3}"))
        store.put_record("namespace", i % 13, value[:100], 0.0,
                         meta=Meta(1e12, source=f"10.0.0.{i % 5}"))
        store.expire(float(i))
        print(i, flush=True)
        i += 1
""")


def test_a_writer_killed_mid_write_leaves_every_acknowledged_write_and_nothing_torn(
        tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    acknowledged = -1
    with subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL) as child:
        try:
            assert child.stdout is not None
            while acknowledged < 400:
                line = child.stdout.readline()
                assert line, "the writer ended before it was killed"
                acknowledged = int(line)
            child.send_signal(signal.SIGKILL)
            child.wait(KILL_LIMIT)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait(KILL_LIMIT)
    assert child.returncode == -signal.SIGKILL

    store = SqliteStore(path, DEFAULT)
    try:
        assert store._db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        for i in range(acknowledged + 1):
            value = hashlib.sha256(str(i).encode()).digest() * (1 + i % 256)
            assert store.get_value(key_for(value)) == value, i
            assert i in store.entries_after(i % 11, i - 1 if i else None, 1)[0]
        for key, value in store._db.execute("SELECT key, value FROM vals"):
            assert id_to_bytes(key_for(bytes(value))) == bytes(key)  # no value stored half
        counted = store._db.execute(
            "SELECT (SELECT COALESCE(SUM(length(value)), 0) FROM vals)"
            " + (SELECT COUNT(*) * 32 FROM entries)"
            " + (SELECT COALESCE(SUM(length(data)), 0) FROM records)").fetchone()[0]
        assert store.quotas.total_bytes == counted
        # The store keeps working: a write after the crash is kept as any other.
        store.save_contacts([Contact(5, ("127.0.0.1", 7))])
    finally:
        store.close()


def test_handing_over_a_range_reads_the_range_not_every_value(tmp_path: Path) -> None:
    """held_between over a narrow range of keys (a newcomer next to us) reads the values in that
    range, not every value the node holds to test its key."""
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    with store._db:
        store._db.execute("BEGIN")
        store._db.executemany(
            "INSERT INTO vals VALUES (?, x'00', 1e12, 1e12, 0, ?, '10.0.0.1', ?)",
            ((id_to_bytes(key), int(key % 10 == 0), hashlib.sha256(b"\0").digest())
             for key in range(20_000)))
    store.close()
    store = SqliteStore(path, DEFAULT)
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    store._db.set_progress_handler(step, 100)  # called every 100 SQLite VM instructions
    try:
        lo = 1 << 200
        assert store.held_between(lo, lo + (1 << 190), 50) == []
        assert [d.key for d in store.held_between(100, 110, 50)] == list(range(101, 110))
    finally:
        store._db.set_progress_handler(None, 0)
        store.close()
    assert steps[0] < 20, steps[0]


def _value(i: int, size: int) -> tuple[int, bytes]:
    value = i.to_bytes(4, "big") * (size // 4)
    return key_for(value), value


def test_a_large_sweep_leaves_no_large_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    wal = Path(f"{path}-wal")
    store = SqliteStore(path, DEFAULT)
    try:
        for i in range(800):  # 6.4 MB of values, swept in one transaction
            store.put_value(*_value(i, 8000), Meta(100.0, source="10.0.0.1"))
        assert store.expire(200.0) == 800
        assert wal.stat().st_size > DEFAULT.sqlite_wal_limit  # the sweep's own log
        store.put_value(*_value(800, 100), Meta(1e9, source="10.0.0.1"))  # the next write
        assert wal.stat().st_size <= DEFAULT.sqlite_wal_limit
        assert store.get_value(_value(800, 100)[0]) == _value(800, 100)[1]
    finally:
        store.close()


def test_rows_charged_to_single_ipv6_addresses_are_charged_to_their_host_on_opening(
        tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    config = Config(max_items_per_source=3)
    store = SqliteStore(path, config)
    try:  # what a store written before a /64 counted as one host holds: one charge per address
        for i, source in enumerate(["2001:db8::1", "2001:db8::1", "2001:db8::2",
                                    "2001:db8::2", "10.0.0.1"]):
            store.put_value(*_value(i, 40), Meta(1e9, source=source))
        store.add_entry(7, 1, Meta(1e9, source="2001:db8::3"))
        store.put_record("namespace", 9, b"r", 0.0, meta=Meta(1e9, source="2001:db8::4"))
    finally:
        store.close()
    again = SqliteStore(path, config)
    try:
        sources = {row[0] for table in ("vals", "entries", "records")
                   for row in again._db.execute(f"SELECT DISTINCT source FROM {table}")}
        assert sources == {"2001:db8::/64", "10.0.0.1"}
        assert again.quotas._by_source["2001:db8::/64"][1] == 6
        with pytest.raises(StorageFull):  # the host is past its 3 items
            again.put_value(*_value(10, 40), Meta(1e9, source="2001:db8::/64"))
        assert [again.get_value(_value(i, 40)[0]) is not None for i in range(5)] == [True] * 5
        assert again.entries_after(7, None, 10) == ([1], False)
        assert again.get_record("namespace", 9) is not None
    finally:
        again.close()
    third = SqliteStore(path, config)  # counted again from the file: the same charges
    try:
        assert third.quotas._by_source == again.quotas._by_source
    finally:
        third.close()
