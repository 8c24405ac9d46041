"""The durable :class:`~qadom.storage.Store`: one SQLite database (stdlib ``sqlite3``, WAL mode).

It holds values and multimap entries with their bookkeeping, service records (namespaces, /dht
records), the routing table's contacts and the node's identity. Every write runs in its own
transaction and is committed before the method returns, so the core acknowledges a STORE to the
network only once it would survive the process being killed (``Config.sqlite_synchronous``).

Ids are stored as 32-byte big-endian blobs, whose byte order is their numeric order, so multimap
pages are index range scans.

Migration. A database written before service records had a lifecycle has a ``records`` table
without the ``expires``, ``republish_at`` and ``original`` columns; opening it adds them in one
transaction, keeping every record. Those records were kept forever and their age is unknown, so
nothing is dropped by the upgrade itself and the first maintenance (no clock is at hand when the
file opens) starts their lifecycle as if they had just been stored: a namespace or /dht record
this node wrote itself (source "", from its own set or put) becomes ours as original publisher,
republished at once with a fresh lifetime and every 24 hours after, until forgotten; one received
from a peer is republished at once too, with a full lifetime from then, and expires a day after
the upgrade unless its publisher renews it. Records of other kinds (the node's identity) get no
lifecycle: they never expire and are never republished.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .config import Config
from .contact import Contact
from .errors import InvalidArgument
from .ids import ID_SPACE, id_from_bytes, id_to_bytes
from .storage import ENTRY_SIZE, NEVER, Due, DueRecord, Meta, Quotas, record_meta

SCHEMA = """
CREATE TABLE IF NOT EXISTS vals (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS vals_republish ON vals (republish_at);
CREATE INDEX IF NOT EXISTS vals_expires ON vals (expires);
CREATE INDEX IF NOT EXISTS vals_cached ON vals (cached, expires);
CREATE TABLE IF NOT EXISTS entries (
    key BLOB NOT NULL, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL, PRIMARY KEY (key, value));
CREATE INDEX IF NOT EXISTS entries_republish ON entries (republish_at);
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key BLOB NOT NULL, data BLOB NOT NULL, source TEXT NOT NULL,
    expires REAL NOT NULL DEFAULT 9e999, republish_at REAL NOT NULL DEFAULT 9e999,
    original INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS contacts (
    id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, data BLOB NOT NULL);
"""

# Indexes on the columns the record migration adds: created once those columns exist.
RECORD_INDEXES = """
CREATE INDEX IF NOT EXISTS records_republish ON records (republish_at);
CREATE INDEX IF NOT EXISTS records_expires ON records (expires);
"""

# The columns records gained with their lifecycle (9e999 is SQLite's infinity, NEVER), and the
# record kinds that had one to gain: see the module docstring.
_RECORD_COLUMNS = (("expires", "REAL NOT NULL DEFAULT 9e999"),
                   ("republish_at", "REAL NOT NULL DEFAULT 9e999"),
                   ("original", "INTEGER NOT NULL DEFAULT 0"))
_LIFECYCLE_KINDS = ("namespace", "dht")

_META_COLUMNS = "expires, republish_at, original, cached, source"
_RECORD_META_COLUMNS = "expires, republish_at, original, source"


def _meta(row: tuple[float, float, int, int, str]) -> Meta:
    expires, republish_at, original, cached, source = row
    return Meta(expires, republish_at, bool(original), bool(cached), source)


def _meta_params(meta: Meta) -> tuple[float, float, int, int, str]:
    return (meta.expires, meta.republish_at, int(meta.original), int(meta.cached), meta.source)


def _record_meta(row: tuple[float, float, int, str]) -> Meta:
    expires, republish_at, original, source = row
    return Meta(expires, republish_at, bool(original), False, source)


class SqliteStore:
    """A :class:`~qadom.storage.Store` in the SQLite file ``path`` (created if missing)."""

    def __init__(self, path: str | Path, config: Config | None = None) -> None:
        self.config = config or Config()
        if self.config.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise InvalidArgument("sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={self.config.sqlite_synchronous.upper()}")
        self._db.executescript(SCHEMA)
        self._migrate_records()
        self._db.executescript(RECORD_INDEXES)
        self.quotas = Quotas(self.config)
        self._load_quotas()

    def _migrate_records(self) -> None:
        """Give a records table of the schema before records had a lifecycle its columns, in one
        transaction (see the module docstring for the lifecycle the records get)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        missing = [(name, ddl) for name, ddl in _RECORD_COLUMNS if name not in present]
        if not missing:
            return
        kinds = ", ".join("?" for _ in _LIFECYCLE_KINDS)
        with self._db:
            self._db.execute("BEGIN")
            for name, ddl in missing:
                self._db.execute(f"ALTER TABLE records ADD COLUMN {name} {ddl}")
            self._db.execute("UPDATE records SET republish_at = 0, original = (source = '') "
                             f"WHERE kind IN ({kinds})", _LIFECYCLE_KINDS)

    def _load_quotas(self) -> None:
        """Count what the file holds, per source, and what cached copies hold."""
        quotas = self.quotas = Quotas(self.config)
        for table, size in (("vals", "length(value)"), ("entries", str(ENTRY_SIZE)),
                            ("records", "length(data)")):
            for source, size_sum, count in self._db.execute(
                    f"SELECT source, SUM({size}), COUNT(*) FROM {table} GROUP BY source"):
                quotas.load(source, int(size_sum), int(count))
        cached_bytes, cached_items = self._db.execute(
            "SELECT COALESCE(SUM(length(value)), 0), COUNT(*) FROM vals WHERE cached = 1"
        ).fetchone()
        quotas.cached_bytes, quotas.cached_items = int(cached_bytes), int(cached_items)

    def _write(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        """One statement in its own committed transaction."""
        with self._writing():
            return self._db.execute(sql, params)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction: committed at the end, rolled back on any exception. The quotas are
        adjusted as the transaction goes; if SQLite fails, they are counted again from the file,
        so they never drift from what was committed."""
        try:
            with self._db:
                self._db.execute("BEGIN")
                yield
        except sqlite3.Error:
            self._load_quotas()
            raise

    # ------------------------------------------------------------------ values

    def get_value(self, key: int, now: float | None = None) -> bytes | None:
        row = self._db.execute("SELECT value, expires, original FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        if row is None:
            return None
        value, expires, original = row
        if now is not None and not original and expires <= now:
            return None
        return bytes(value)

    def value_meta(self, key: int) -> Meta | None:
        row = self._db.execute(f"SELECT {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        return None if row is None else _meta(row)

    def put_value(self, key: int, value: bytes, meta: Meta) -> None:
        row = self._db.execute(f"SELECT length(value), {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        with self._writing():
            if row is None:
                self._make_room(meta.source, len(value), meta.cached)
                self.quotas.add(meta.source, len(value), meta.cached)
            else:
                old = _meta(row[1:])
                self.quotas.replace(old.source, int(row[0]), meta.source, len(value),
                                    old_cached=old.cached, new_cached=meta.cached)
                if int(row[0]) == len(value):
                    # A key names one value (its SHA-256): storing it again, as every republish
                    # does, changes only its bookkeeping, so the blob is not written again.
                    self._db.execute(
                        "UPDATE vals SET expires = ?, republish_at = ?, original = ?, cached = ?, "
                        "source = ? WHERE key = ?", (*_meta_params(meta), id_to_bytes(key)))
                    return
            self._db.execute(f"INSERT OR REPLACE INTO vals (key, value, {_META_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (id_to_bytes(key), value, *_meta_params(meta)))

    # ------------------------------------------------------------------ entries

    def entry_meta(self, key: int, value: int) -> Meta | None:
        row = self._db.execute(f"SELECT {_META_COLUMNS} FROM entries WHERE key = ? AND value = ?",
                               (id_to_bytes(key), id_to_bytes(value))).fetchone()
        return None if row is None else _meta(row)

    def add_entry(self, key: int, value: int, meta: Meta) -> bool:
        old = self.entry_meta(key, value)
        with self._writing():
            if old is None:
                self._make_room(meta.source, ENTRY_SIZE, meta.cached)
                self.quotas.add(meta.source, ENTRY_SIZE)
            else:
                self.quotas.replace(old.source, ENTRY_SIZE, meta.source, ENTRY_SIZE)
            self._db.execute(f"INSERT OR REPLACE INTO entries (key, value, {_META_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (id_to_bytes(key), id_to_bytes(value), *_meta_params(meta)))
        return old is None

    def entries_after(self, key: int, after: int | None, limit: int) -> tuple[list[int], bool]:
        low = b"" if after is None else id_to_bytes(after)
        rows = self._db.execute(
            "SELECT value FROM entries WHERE key = ? AND value > ? ORDER BY value LIMIT ?",
            (id_to_bytes(key), low, limit + 1)).fetchall()
        values = [id_from_bytes(bytes(row[0])) for row in rows[:limit]]
        return values, len(rows) > limit

    # ------------------------------------------------------------------ schedule

    def due(self, now: float, limit: int) -> list[Due]:
        found = [Due(id_from_bytes(bytes(key)), bytes(value), _meta(rest))
                 for key, value, *rest in self._db.execute(
                     f"SELECT key, value, {_META_COLUMNS} FROM vals WHERE republish_at <= ? "
                     "LIMIT ?", (now, limit))]
        if len(found) < limit:
            found += [Due(id_from_bytes(bytes(key)), id_from_bytes(bytes(value)), _meta(rest))
                      for key, value, *rest in self._db.execute(
                          f"SELECT key, value, {_META_COLUMNS} FROM entries "
                          "WHERE republish_at <= ? LIMIT ?", (now, limit - len(found)))]
        return found

    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        if limit <= 0:
            return []
        # Ids are 32-byte big-endian blobs, so a key range is a blob range on the primary keys.
        low = id_to_bytes(lo)
        bound, params = ("", (low,)) if hi >= ID_SPACE else (" AND key < ?", (low, id_to_bytes(hi)))
        found: list[Due | DueRecord] = [
            Due(id_from_bytes(bytes(key)), bytes(value), _meta(rest))
            for key, value, *rest in self._db.execute(
                f"SELECT key, value, {_META_COLUMNS} FROM vals WHERE key >= ?{bound} "
                "AND cached = 0 LIMIT ?", (*params, limit))]
        if len(found) < limit:
            found += [Due(id_from_bytes(bytes(key)), id_from_bytes(bytes(value)), _meta(rest))
                      for key, value, *rest in self._db.execute(
                          f"SELECT key, value, {_META_COLUMNS} FROM entries WHERE key >= ?{bound} "
                          "LIMIT ?", (*params, limit - len(found)))]
        if len(found) < limit:
            found += [DueRecord(kind, id_from_bytes(bytes(key)), bytes(data), _record_meta(rest))
                      for kind, key, data, *rest in self._db.execute(
                          f"SELECT kind, key, data, {_RECORD_META_COLUMNS} FROM records "
                          f"WHERE key >= ?{bound} AND (original = 1 OR expires < 9e999) LIMIT ?",
                          (*params, limit - len(found)))]
        return found

    def expire(self, now: float) -> int:
        dropped = 0
        with self._writing():
            cached_bytes, cached_items = self._db.execute(
                "SELECT COALESCE(SUM(length(value)), 0), COUNT(*) FROM vals "
                "WHERE original = 0 AND cached = 1 AND expires <= ?", (now,)).fetchone()
            self.quotas.cached_bytes -= int(cached_bytes)
            self.quotas.cached_items -= int(cached_items)
            for source, size_sum, count in self._db.execute(
                    "SELECT source, SUM(length(value)), COUNT(*) FROM vals "
                    "WHERE original = 0 AND expires <= ? GROUP BY source", (now,)).fetchall():
                self.quotas.unload(source, int(size_sum), int(count))
                dropped += int(count)
            for source, count in self._db.execute(
                    "SELECT source, COUNT(*) FROM entries "
                    "WHERE original = 0 AND expires <= ? GROUP BY source", (now,)).fetchall():
                self.quotas.unload(source, int(count) * ENTRY_SIZE, int(count))
                dropped += int(count)
            for source, size_sum, count in self._db.execute(
                    "SELECT source, SUM(length(data)), COUNT(*) FROM records "
                    "WHERE original = 0 AND expires <= ? GROUP BY source", (now,)).fetchall():
                self.quotas.unload(source, int(size_sum), int(count))
                dropped += int(count)
            self._db.execute("DELETE FROM vals WHERE original = 0 AND expires <= ?", (now,))
            self._db.execute("DELETE FROM entries WHERE original = 0 AND expires <= ?", (now,))
            self._db.execute("DELETE FROM records WHERE original = 0 AND expires <= ?", (now,))
        return dropped

    def forget(self, key: int) -> bool:
        raw = id_to_bytes(key)
        with self._db:
            self._db.execute("BEGIN")
            changed = self._db.execute(
                "UPDATE vals SET original = 0, republish_at = ? WHERE key = ? AND original = 1",
                (NEVER, raw)).rowcount
            changed += self._db.execute(
                "UPDATE entries SET original = 0, republish_at = ? WHERE key = ? AND original = 1",
                (NEVER, raw)).rowcount
            changed += self._db.execute(
                "UPDATE records SET original = 0, republish_at = ? WHERE key = ? AND original = 1",
                (NEVER, raw)).rowcount
        return changed > 0

    # ------------------------------------------------------------------ records, contacts, meta

    def due_records(self, now: float, limit: int) -> list[DueRecord]:
        return [DueRecord(kind, id_from_bytes(bytes(key)), bytes(data), _record_meta(rest))
                for kind, key, data, *rest in self._db.execute(
                    f"SELECT kind, key, data, {_RECORD_META_COLUMNS} FROM records "
                    "WHERE republish_at <= ? LIMIT ?", (now, max(0, limit)))]

    def get_record(self, kind: str, key: int, now: float | None = None) -> bytes | None:
        row = self._db.execute(
            "SELECT data, expires, original FROM records WHERE kind = ? AND key = ?",
            (kind, id_to_bytes(key))).fetchone()
        if row is None:
            return None
        data, expires, original = row
        if now is not None and not original and expires <= now:
            return None
        return bytes(data)

    def record_meta(self, kind: str, key: int) -> Meta | None:
        row = self._db.execute(
            f"SELECT {_RECORD_META_COLUMNS} FROM records WHERE kind = ? AND key = ?",
            (kind, id_to_bytes(key))).fetchone()
        return None if row is None else _record_meta(row)

    def put_record(self, kind: str, key: int, data: bytes, now: float, source: str = "",
                   meta: Meta | None = None) -> None:
        meta = record_meta(source, meta)
        old = self._record_size(kind, key)
        with self._writing():
            if old is None:
                self._make_room(meta.source, len(data), False)
                self.quotas.add(meta.source, len(data))
            else:  # a newer version is charged to the host that sent it
                self.quotas.replace(old[1], old[0], meta.source, len(data))
            self._db.execute(
                f"INSERT OR REPLACE INTO records (kind, key, data, {_RECORD_META_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, id_to_bytes(key), data, meta.expires, meta.republish_at,
                 int(meta.original), meta.source))

    def delete_record(self, kind: str, key: int) -> None:
        old = self._record_size(kind, key)
        self._write("DELETE FROM records WHERE kind = ? AND key = ?", (kind, id_to_bytes(key)))
        if old is not None:
            self.quotas.remove(old[1], old[0])

    def _record_size(self, kind: str, key: int) -> tuple[int, str] | None:
        row = self._db.execute(
            "SELECT length(data), source FROM records WHERE kind = ? AND key = ?",
            (kind, id_to_bytes(key))).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def save_contacts(self, contacts: Iterable[Contact]) -> None:
        rows = [(id_to_bytes(c.id), c.address[0], c.address[1]) for c in contacts]
        with self._db:
            self._db.execute("BEGIN")
            self._db.execute("DELETE FROM contacts")
            self._db.executemany("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?)", rows)

    def load_contacts(self) -> list[Contact]:
        return [Contact(id_from_bytes(bytes(node_id)), (host, port))
                for node_id, host, port in self._db.execute("SELECT id, host, port FROM contacts")]

    def get_meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT data FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, data: bytes) -> None:
        self._write("INSERT OR REPLACE INTO meta (name, data) VALUES (?, ?)", (name, data))

    def stats(self) -> dict[str, int]:
        def one(sql: str) -> int:
            return int(self._db.execute(sql).fetchone()[0] or 0)

        return {
            "values": one("SELECT COUNT(*) FROM vals"),
            "value_bytes": one("SELECT SUM(length(value)) FROM vals"),
            "entry_keys": one("SELECT COUNT(DISTINCT key) FROM entries"),
            "entries": one("SELECT COUNT(*) FROM entries"),
            "records": one("SELECT COUNT(*) FROM records"),
            "stored_bytes": self.quotas.total_bytes,
        }

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ internals

    def _make_room(self, source: str, size: int, cached: bool) -> None:
        """Inside a :meth:`_writing` transaction: evictions commit with the write or not at all."""
        def victims() -> Iterator[tuple[Any, int]]:  # a few at a time, soonest-expiring first
            while rows := self._db.execute(
                    "SELECT key, length(value), source FROM vals WHERE cached = 1 "
                    "ORDER BY expires LIMIT 32").fetchall():
                for key, length, victim_source in rows:
                    yield (key, victim_source, int(length)), int(length)

        def drop(handle: Any) -> None:
            key, victim_source, length = handle
            self._db.execute("DELETE FROM vals WHERE key = ?", (key,))
            self.quotas.remove(victim_source, length, cached=True)

        self.quotas.make_room(source, size, cached, victims, drop)
