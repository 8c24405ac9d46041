"""Defects of the stores a review found: a value damaged on the disk, a database file this
process cannot write, two stores on one file, an expiry sweep of everything at once, and
expired multimap entries every SEARCH stepped over until the sweep. The performance bounds are
checked by counting (rows deleted, entries visited), never by timing."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qadom import Config
from qadom import storage as storage_module
from qadom.errors import DataDirInUse
from qadom.ids import id_to_bytes, key_for
from qadom.sqlite_store import SqliteStore
from qadom.storage import EXPIRE_BATCH, Due, MemoryStore, Meta, Store

DEFAULT = Config()
ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- damaged values


def test_a_value_damaged_on_the_disk_is_never_served_republished_or_handed_over(
        tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    damaged, intact = bytes(range(256)) * 32, b"an intact value"
    store = SqliteStore(path, DEFAULT)
    for value in (damaged, intact):
        store.put_value(key_for(value), value, Meta(1e12, 50.0, source="10.0.0.1"))
    store.close()
    flipped = bytearray(damaged)
    flipped[1010] ^= 0xFF  # one byte changed on the disk, behind SQLite's back
    db = sqlite3.connect(path)
    db.execute("UPDATE vals SET value = ? WHERE key = ?",
               (bytes(flipped), id_to_bytes(key_for(damaged))))
    db.commit()
    db.close()

    store = SqliteStore(path, DEFAULT)
    try:
        # Due for republishing, and in the range handed to a newcomer: only the intact one.
        assert [d.item for d in store.due(100.0, 10)] == [intact]
        held = store.held_between(0, 2**256, 10)
        assert [d.item for d in held if isinstance(d, Due)] == [intact] and len(held) == 1
        # Deleted: a damaged copy is worthless, the k closest peers hold good ones.
        assert store.get_value(key_for(damaged)) is None
        assert store.get_value_and_meta(key_for(damaged), 0.0) is None
        assert store.value_meta(key_for(damaged)) is None
        assert store.stats()["values"] == 1 and store.quotas.total_items == 1
        assert store.quotas.total_bytes == len(intact)
        assert store.get_value(key_for(intact)) == intact
        # A good copy received again is stored as any other.
        store.put_value(key_for(damaged), damaged, Meta(1e12, source="10.0.0.2"))
        assert store.get_value(key_for(damaged), 0.0) == damaged
    finally:
        store.close()


def test_a_value_damaged_in_place_is_not_served_before_the_store_is_reopened(
        tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    value = b"held for the network" * 10
    store = SqliteStore(path, DEFAULT)
    try:
        store.put_value(key_for(value), value, Meta(1e12))
        other = sqlite3.connect(path)
        other.execute("UPDATE vals SET value = ?", (value[:-1] + b"!",))
        other.commit()
        other.close()
        assert store.get_value_and_meta(key_for(value), 0.0) is None
        assert store.get_value(key_for(value)) is None
    finally:
        store.close()


# ----------------------------------------------------------------------------- read-only file

# The child opens the store as a process without the capability to override file modes (as
# root ignores them): a file it may read but not write.
UNPRIVILEGED_OPEN = textwrap.dedent("""
    import sys
    from qadom.errors import StoreUnusable
    from qadom.sqlite_store import SqliteStore
    try:
        SqliteStore(sys.argv[1]).close()
    except StoreUnusable as exc:
        print("StoreUnusable", exc.filename, exc)
    else:
        print("opened")
""")


def test_a_store_file_this_process_cannot_write_is_refused_at_start(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is needed to drop root's CAP_DAC_OVERRIDE")
    path = tmp_path / "qadom.sqlite3"
    value = b"stored before"
    store = SqliteStore(path, DEFAULT)
    store.put_value(key_for(value), value, Meta(1e12))
    store.close()
    os.chmod(path, 0o444)
    before = path.read_bytes()
    command = [sys.executable, "-c", UNPRIVILEGED_OPEN, str(path)]
    if os.geteuid() == 0:
        command = [setpriv, "--bounding-set", "-dac_override,-dac_read_search,-fowner",
                   "--inh-caps", "-dac_override,-dac_read_search,-fowner", *command]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"StoreUnusable {path} "), result.stdout
    assert "cannot write" in result.stdout, result.stdout
    assert path.read_bytes() == before


# ----------------------------------------------------------------------------- one file


def test_two_stores_on_one_file_through_a_link_are_refused(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    first = tmp_path / "x" / "qadom.sqlite3"
    linked = tmp_path / "y" / "qadom.sqlite3"
    linked.symlink_to(first)
    store = SqliteStore(first, DEFAULT)
    try:
        with pytest.raises(DataDirInUse, match="in use by another qadom store"):
            SqliteStore(linked, DEFAULT)
        with pytest.raises(DataDirInUse):
            SqliteStore(first, DEFAULT)
    finally:
        store.close()
    SqliteStore(linked, DEFAULT).close()  # released on close


def test_the_lock_on_the_file_is_held_against_another_process(tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    try:
        child = textwrap.dedent("""
            import sys
            from qadom.errors import DataDirInUse
            from qadom.sqlite_store import SqliteStore
            try:
                SqliteStore(sys.argv[1]).close()
            except DataDirInUse:
                print("in use")
        """)
        result = subprocess.run([sys.executable, "-c", child, str(path)], capture_output=True,
                                text=True, timeout=60, check=False,
                                env={**os.environ, "PYTHONPATH": str(ROOT)})
        assert result.stdout.strip() == "in use", result.stdout + result.stderr
    finally:
        store.close()


# ----------------------------------------------------------------------------- bounded sweeps


@pytest.fixture(params=["memory", "sqlite"])
def make_store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore(DEFAULT)
    return SqliteStore(tmp_path / "qadom.sqlite3", DEFAULT)


def test_one_sweep_drops_at_most_a_batch_the_soonest_expired_first(make_store: Store) -> None:
    store = make_store
    assert isinstance(store, (MemoryStore, SqliteStore))
    store.expire_batch = 10
    for i in range(15):
        store.put_value(1000 + i, b"v", Meta(100.0 + i, source="10.0.0.1"))
        store.add_entry(7, i, Meta(200.0 + i, source="10.0.0.2"))
    store.put_record("dht", 5, b"r", 0.0, meta=Meta(50.0))
    store.add_entry(8, 1, Meta(1e12))  # alive
    calls = []
    while dropped := store.expire(1000.0):
        calls.append(dropped)
        # What is left of them is never served meanwhile.
        assert all(store.get_value(1000 + i, 1000.0) is None for i in range(15))
        assert store.get_record("dht", 5, 1000.0) is None
    assert calls == [10, 10, 10, 1]  # the record, the values, then the entries
    assert store.stats() == {"values": 0, "value_bytes": 0, "entry_keys": 1, "entries": 1,
                             "records": 0, "stored_bytes": 32}
    store.close()


def test_the_default_batch_bounds_a_sweep(make_store: Store) -> None:
    store = make_store
    meta = Meta(100.0, source="10.0.0.1")
    if isinstance(store, SqliteStore):  # written in one transaction, as many puts would
        with store._writing():
            for i in range(EXPIRE_BATCH + 5):
                store._db.execute("INSERT INTO entries VALUES (?, ?, 100.0, 9e999, 0, 0, "
                                  "'10.0.0.1')", (id_to_bytes(3), id_to_bytes(i)))
                store.quotas.add("10.0.0.1", 32)
                store._counts.entries += 1
            store._counts.entry_keys += 1
    else:
        for i in range(EXPIRE_BATCH + 5):
            store.add_entry(3, i, meta)
    assert store.expire(200.0) == EXPIRE_BATCH
    assert store.stats()["entries"] == 5
    assert store.expire(200.0) == 5
    assert store.stats()["entries"] == 0 and store.quotas.total_items == 0
    store.close()


# ----------------------------------------------------------------------------- SEARCH


def test_a_search_steps_over_each_expired_entry_once(monkeypatch: pytest.MonkeyPatch) -> None:
    store = MemoryStore(DEFAULT)
    for i in range(2000):
        store.add_entry(42, i, Meta(1.0, source="10.0.0.1"))
    for i in (5000, 5001):
        store.add_entry(42, i, Meta(1e12, source="10.0.0.1"))
    visited = [0]
    expired = storage_module._expired

    def counting(meta: Meta, now: float) -> bool:
        visited[0] += 1
        return expired(meta, now)

    monkeypatch.setattr(storage_module, "_expired", counting)
    for _ in range(20):
        assert store.entries_after(42, None, 160, 2.0) == ([5000, 5001], False)
    # The first SEARCH met the 2000 expired entries and dropped them; the others read 2 each.
    assert visited[0] <= 2002 + 19 * 2, visited[0]
    assert store.stats()["entries"] == 2 and store.quotas.total_items == 2


def test_a_sqlite_search_steps_over_each_expired_entry_once(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "qadom.sqlite3", DEFAULT)
    for i in range(2000):
        store.add_entry(42, i, Meta(1.0, source="10.0.0.1"))
    for i in (5000, 5001):
        store.add_entry(42, i, Meta(1e12, source="10.0.0.1"))
    steps = [0]

    def step() -> int:
        steps[0] += 1
        return 0

    try:
        assert store.entries_after(42, None, 160, 2.0) == ([5000, 5001], False)
        store._db.set_progress_handler(step, 100)  # every 100 SQLite VM instructions
        for _ in range(20):
            assert store.entries_after(42, None, 160, 2.0) == ([5000, 5001], False)
        store._db.set_progress_handler(None, 0)
        # Reading 2000 expired rows costs hundreds of steps per SEARCH; two live ones, a few.
        assert steps[0] < 20 * 10, steps[0]
        assert store.stats()["entries"] == 2 and store.quotas.total_items == 2
        assert store._db.execute("SELECT COUNT(*) FROM entries").fetchone()[0] == 2
    finally:
        store.close()


def test_one_search_drops_at_most_a_batch_of_expired_entries(make_store: Store) -> None:
    store = make_store
    assert isinstance(store, (MemoryStore, SqliteStore))
    store.expire_batch = 100
    for i in range(250):
        store.add_entry(42, i, Meta(1.0, source="10.0.0.1"))
    store.add_entry(42, 5000, Meta(1e12, source="10.0.0.1"))
    counts = []
    for _ in range(4):
        assert store.entries_after(42, None, 160, 2.0) == ([5000], False)
        counts.append(store.stats()["entries"])
    assert counts == [151, 51, 1, 1]  # a batch per search, as a sweep would drop
    store.close()


@pytest.mark.skipif(not Path("/proc/locks").exists(), reason="needs Linux's /proc/locks")
def test_a_second_store_refused_in_this_process_leaves_sqlites_own_locks(tmp_path: Path) -> None:
    # Closing any descriptor of a file drops every POSIX lock the process holds on it: the
    # refused store must never have opened the database file itself.
    path = tmp_path / "qadom.sqlite3"
    store = SqliteStore(path, DEFAULT)
    inode = os.stat(path).st_ino

    def posix_locks() -> int:
        lines = Path("/proc/locks").read_text().splitlines()
        return sum(" POSIX " in line and f":{inode} " in line and str(os.getpid()) in line
                   for line in lines)

    try:
        before = posix_locks()
        assert before > 0  # SQLite holds a shared lock while the database is open (WAL)
        with pytest.raises(DataDirInUse):
            SqliteStore(path, DEFAULT)
        assert posix_locks() == before
    finally:
        store.close()
