"""A node killed on its very first start, while its store is being created, leaves a data dir
that opens as a store at the next start: never some of qadom's tables without the others, which
would read as another program's database and keep the node from starting."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from qadom import Config
from qadom.sqlite_store import APPLICATION_ID, SCHEMA_VERSION, SqliteStore
from qadom.storage import Meta

KILL_LIMIT = 60.0

# A child that opens a new store and is killed (SIGKILL) as SQLite starts the statement that
# contains argv[2].
KILLED_WHILE_CREATING = textwrap.dedent("""
    import os, signal, sqlite3, sys
    from qadom.config import Config
    from qadom.sqlite_store import SqliteStore

    connect = sqlite3.connect

    def connect_killed_at(*args, **kwargs):
        db = connect(*args, **kwargs)

        def trace(sql):
            if sys.argv[2] in sql:
                os.kill(os.getpid(), signal.SIGKILL)

        db.set_trace_callback(trace)
        return db

    sqlite3.connect = connect_killed_at
    SqliteStore(sys.argv[1], Config())
    print("created", flush=True)
""")


def opens_as_a_store(path: Path) -> None:
    store = SqliteStore(path, Config())
    try:
        store.set_meta("node_id", b"\x01" * 32)
        store.put_value(1, b"kept", Meta(1e12, source="10.0.0.1"))
    finally:
        store.close()
    again = SqliteStore(path, Config())
    try:
        assert again.get_meta("node_id") == b"\x01" * 32
        assert again.get_value(1) == b"kept"
        assert again.quotas.total_items == 1
        db = again._db
        assert db.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        again.close()


@pytest.mark.parametrize("statement", ["CREATE TABLE IF NOT EXISTS entries",
                                       "CREATE TABLE IF NOT EXISTS meta"])
def test_a_first_start_killed_while_creating_the_store_leaves_a_file_that_opens(
        tmp_path: Path, statement: str) -> None:
    path = tmp_path / "qadom.sqlite3"
    child = subprocess.run([sys.executable, "-c", KILLED_WHILE_CREATING, str(path), statement],
                           capture_output=True, timeout=KILL_LIMIT, check=False)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    assert path.exists()
    opens_as_a_store(path)


def test_a_file_left_by_an_interrupted_first_start_opens(tmp_path: Path) -> None:
    """Some of qadom's tables, each empty, and no stamp: what a first start killed before its
    store was created in one transaction left behind. Nothing in it can be lost."""
    path = tmp_path / "qadom.sqlite3"
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE vals (key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT "
               "NULL, republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT "
               "NULL, source TEXT NOT NULL)")
    db.execute("CREATE INDEX vals_republish ON vals (republish_at)")
    db.close()
    opens_as_a_store(path)


def test_another_programs_tables_named_as_qadoms_are_refused_when_not_empty(
        tmp_path: Path) -> None:
    path = tmp_path / "qadom.sqlite3"
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, data BLOB NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('theirs', x'00')")
    db.commit()
    db.close()
    before = path.read_bytes()
    with pytest.raises(OSError, match="not a qadom database"):
        SqliteStore(path, Config()).close()
    assert path.read_bytes() == before
