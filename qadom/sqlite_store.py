"""The durable :class:`~qadom.storage.Store`: one SQLite database (stdlib ``sqlite3``, WAL mode).

It holds values and multimap entries with their bookkeeping, service records (namespaces, /dht
records), the routing table's contacts and the node's identity. Every write runs in its own
transaction and is committed before the method returns, so the core acknowledges a STORE to the
network only once it would survive the process being killed (``Config.sqlite_synchronous``).

Ids are stored as 32-byte big-endian blobs, whose byte order is their numeric order, so multimap
pages are index range scans.

Which files it opens. A new or empty file becomes a store, created and stamped in one
transaction (a process killed meanwhile leaves the file as it was), and so does a file holding
only some of qadom's tables, all empty, and no stamp (what an older qadom killed while creating
its store left). A store is stamped with qadom's ``application_id`` and its schema version
(``user_version``); a file written by qadom before the stamp is recognised by its tables.
Anything else is refused with :class:`StoreUnusable` and left exactly as it was: a file that is
not an SQLite database (corrupt, truncated, something else), a database of another program, one
written by a newer qadom (a schema this code does not know), or a file this process cannot open
or write.

Migration. A database written before service records had a lifecycle has a ``records`` table
without the ``expires``, ``republish_at`` and ``original`` columns (and, from the first durable
release, without ``source``); opening it adds them in one transaction, keeping every record.
Those records were kept forever and their age is unknown, so nothing is dropped by the upgrade
itself and the first maintenance (no clock is at hand when the file opens) starts their
lifecycle as if they had just been stored: a namespace or /dht record
this node wrote itself (source "", from its own set or put) becomes ours as original publisher,
republished at once with a fresh lifetime and every 24 hours after, until forgotten; one received
from a peer is republished at once too, with a full lifetime from then, and expires a day after
the upgrade unless its publisher renews it. A node given the file gives ours a lifetime before
it serves (``Store.renew_originals``), so one forgotten before that first republish expires a
day after the node started. A record from a table that had no ``source`` column cannot be told
apart, so it is taken as received (source ""): never as ours, which would republish another
publisher's record forever. Records of other kinds (the node's identity) get no lifecycle: they
never expire and are never republished. Rows a peer stored before the per-host quotas counted an
IPv6 /64 as one host (``qadom.contact.host_key``) were charged to the sender's full address;
opening the file charges them to its host, in one transaction.

A full disk (SQLite's "database or disk is full") refuses a write as a quota does, with
:class:`~qadom.errors.StorageFull`, and changes nothing. So does a database that cannot be written
now (a disk remounted read-only after an error, a failing disk, a lock another program holds), with
its subclass :class:`~qadom.errors.StorageUnavailable`, which every read that fails for the same
causes raises too (a disk I/O error, a damaged page), instead of SQLite's own error: the node goes
on serving what it can read, refuses what it would store, and asks the network for what it cannot
read. The first refusal is logged, not the ones after it; see :attr:`SqliteStore.unavailable` for
when the outage ends. A lock another program holds is waited for ``Config.sqlite_busy_timeout``
(0.1 s), not SQLite's 5 s, since the node's event loop waits with it. In WAL mode such a lock
blocks writes only: readers are never blocked by a writer.

What :meth:`SqliteStore.stats` reports is counted once when the file opens and then kept in
memory by every write, and restored with the quotas when a write is rolled back, so asking costs
no query.
"""

from __future__ import annotations

import functools
import heapq
import itertools
import logging
import sqlite3
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import Any, Concatenate, ParamSpec, TypeVar

from .config import Config
from .contact import Contact, host_key
from .errors import InvalidArgument, StorageFull, StorageUnavailable, StoreUnusable
from .ids import ID_SPACE, id_from_bytes, id_to_bytes
from .storage import ENTRY_SIZE, NEVER, Due, DueRecord, Meta, Quotas, record_meta

log = logging.getLogger("qadom")

# SQLite's primary result codes for a database that cannot be read or written now, though nothing
# is wrong with the statement: a read-only or failing disk, a damaged file, a lock held by another
# program.
_UNAVAILABLE = frozenset({
    sqlite3.SQLITE_READONLY, sqlite3.SQLITE_IOERR, sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED,
    sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM, sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB,
    sqlite3.SQLITE_PROTOCOL,
})
# Those that say the file itself is damaged (primary codes), or that reading it back failed
# (extended codes): what caused them does not mend while the file is open.
_DAMAGED = frozenset({sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB})
_DAMAGED_READS = frozenset({sqlite3.SQLITE_IOERR_READ, sqlite3.SQLITE_IOERR_SHORT_READ})

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS vals (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS vals_republish ON vals (republish_at);
CREATE INDEX IF NOT EXISTS vals_expires ON vals (expires);
DROP INDEX IF EXISTS vals_cached;
CREATE INDEX IF NOT EXISTS vals_cached_key ON vals (cached, expires, key);
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
CREATE INDEX IF NOT EXISTS records_key ON records (key);
"""

APPLICATION_ID = 0x7161646D
"""``PRAGMA application_id`` of a qadom store ("qadm")."""
SCHEMA_VERSION = 1
"""``PRAGMA user_version`` of the schema above; a file with a higher one is refused."""
_TABLES = frozenset({"vals", "entries", "records", "contacts", "meta"})

# The columns records gained with their lifecycle (9e999 is SQLite's infinity, NEVER), and the
# record kinds that had one to gain: see the module docstring.
_RECORD_COLUMNS = (("source", "TEXT NOT NULL DEFAULT ''"),
                   ("expires", "REAL NOT NULL DEFAULT 9e999"),
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


def _first(limit: int, *runs: Iterable[tuple[tuple[Any, ...], _T]]) -> list[_T]:
    """The first ``limit`` items of ``runs``, each a list of ``(order, item)`` in ascending
    order, merged in that order."""
    merged = heapq.merge(*runs, key=lambda pair: pair[0])
    return [item for _, item in itertools.islice(merged, limit)]


def _reading(method: Callable[Concatenate[SqliteStore, _P], _R],
             ) -> Callable[Concatenate[SqliteStore, _P], _R]:
    """A method of :class:`SqliteStore` that reads the database outside a write's transaction:
    SQLite's refusals become StorageUnavailable (:meth:`SqliteStore._refusal`), and anything
    else it raises is raised as it is."""
    @functools.wraps(method)
    def read(self: SqliteStore, /, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return method(self, *args, **kwargs)
        except sqlite3.Error as exc:
            refusal = self._refusal(exc, writing=False)
            if refusal is None:
                raise
            raise refusal from None
    return read


@dataclass(slots=True)
class _Counts:
    """What the file holds, as :meth:`SqliteStore.stats` reports it, kept as it changes."""

    values: int = 0
    value_bytes: int = 0
    entry_keys: int = 0
    entries: int = 0
    records: int = 0

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every change made inside the block if it raises (as the write it counts was
        rolled back)."""
        saved = astuple(self)
        try:
            yield
        except BaseException:
            (self.values, self.value_bytes, self.entry_keys, self.entries,
             self.records) = saved
            raise


class SqliteStore:
    """A :class:`~qadom.storage.Store` in the SQLite file ``path`` (created if missing).

    :class:`StoreUnusable` (the file left as it was) when the file cannot be a qadom store; see
    the module docstring."""

    def __init__(self, path: str | Path, config: Config | None = None) -> None:
        self.config = config or Config()
        if self.config.sqlite_synchronous.upper() not in ("OFF", "NORMAL", "FULL", "EXTRA"):
            raise InvalidArgument("sqlite_synchronous must be OFF, NORMAL, FULL or EXTRA")
        self.path = Path(path)
        self.unavailable: str | None = None
        """Why the store last refused a read or a write with :class:`StorageUnavailable`: set
        by the first refusal of an outage (the one logged), None again once a write commits
        (logged too).

        A read that works does not end an outage: SQLite may have answered it from its page
        cache, and a file that fails on some pages serves the others, so ending the outage at
        every read that works would log it again at every read that fails. A write that commits
        has reached the disk and held the write lock. A damaged file (SQLite's CORRUPT or NOTADB,
        a read of the disk that failed) does not mend while it is open, and a write that misses
        the damaged pages commits all the same: such an outage lasts as long as the store is
        open, and is logged once."""
        self._damaged = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       timeout=self.config.sqlite_busy_timeout)
        except sqlite3.Error as exc:
            raise StoreUnusable(self.path, f"cannot open it: {exc}") from None
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            raise StoreUnusable(self.path, f"cannot use it as a qadom store: {exc}") from None
        except BaseException:
            self._db.close()
            raise

    def _open(self) -> None:
        """Check what the file holds before writing anything to it, then create or upgrade the
        schema and count the quotas."""
        db = self._db
        # The first read of the file: SQLite checks its header here ("file is not a database").
        application_id = int(db.execute("PRAGMA application_id").fetchone()[0])
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = {str(row[0]) for row in db.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if application_id not in (0, APPLICATION_ID) or (
                application_id == 0 and tables and not tables >= _TABLES
                and not self._interrupted_creation(tables)):
            raise StoreUnusable(self.path, "not a qadom database (another program's?); "
                                "it was left as it is")
        if version > SCHEMA_VERSION:
            raise StoreUnusable(self.path, f"written by a newer qadom (schema {version}, this "
                                f"one knows {SCHEMA_VERSION}); it was left as it is")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.config.sqlite_synchronous.upper()}")
        db.execute(f"PRAGMA journal_size_limit={int(self.config.sqlite_wal_limit)}")
        # Created or upgraded, and stamped, in one transaction: a process killed meanwhile leaves
        # the file as it was, never some of the tables without the others.
        with db:
            db.execute("BEGIN")
            self._execute_all(SCHEMA)
            self._migrate_records()
            self._execute_all(RECORD_INDEXES)
            if (application_id, version) != (APPLICATION_ID, SCHEMA_VERSION):
                db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._load_counts()

    def _execute_all(self, script: str) -> None:
        """The statements of ``script``, in the transaction under way (executescript would
        commit it first)."""
        for statement in script.split(";"):
            if statement.strip():
                self._db.execute(statement)

    def _interrupted_creation(self, tables: set[str]) -> bool:
        """Whether ``tables`` (of a file with no qadom stamp) are what an older qadom killed while
        creating its store left: some of qadom's tables, each empty. Nothing in them is lost."""
        return tables <= _TABLES and all(
            self._db.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone() is None
            for table in tables)

    def _migrate_records(self) -> None:
        """Give a records table of the schema before records had a lifecycle its columns, inside
        the transaction that opens the file (see the module docstring for the lifecycle the
        records get)."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        missing = [(name, ddl) for name, ddl in _RECORD_COLUMNS if name not in present]
        if not missing:
            return
        kinds = ", ".join("?" for _ in _LIFECYCLE_KINDS)
        # Written here (source "") is ours; without a source column nobody can tell: received.
        original = "(source = '')" if "source" in present else "0"
        for name, ddl in missing:
            self._db.execute(f"ALTER TABLE records ADD COLUMN {name} {ddl}")
        self._db.execute(f"UPDATE records SET republish_at = 0, original = {original} "
                         f"WHERE kind IN ({kinds})", _LIFECYCLE_KINDS)

    def _load_counts(self, *, rekey: bool = True) -> None:
        """Count what the file holds, per source, and what cached copies hold (the quotas), and
        what :meth:`stats` reports: the one time the whole file is counted."""
        quotas = self.quotas = Quotas(self.config)
        counts = self._counts = _Counts()
        legacy: set[str] = set()  # tables with rows charged to a source that is not a host key
        for table, size in (("vals", "length(value)"), ("entries", str(ENTRY_SIZE)),
                            ("records", "length(data)")):
            for source, size_sum, count in self._db.execute(
                    f"SELECT source, SUM({size}), COUNT(*) FROM {table} GROUP BY source"):
                quotas.load(source, int(size_sum), int(count))
                if host_key(source) != source:
                    legacy.add(table)
                if table == "vals":
                    counts.values += int(count)
                    counts.value_bytes += int(size_sum)
                elif table == "entries":
                    counts.entries += int(count)
                else:
                    counts.records += int(count)
        if legacy and rekey and self._rekey_sources(legacy):
            return self._load_counts(rekey=False)
        counts.entry_keys = int(self._db.execute(
            "SELECT COUNT(DISTINCT key) FROM entries").fetchone()[0])
        cached_bytes, cached_items = self._db.execute(
            "SELECT COALESCE(SUM(length(value)), 0), COUNT(*) FROM vals WHERE cached = 1"
        ).fetchone()
        quotas.cached_bytes, quotas.cached_items = int(cached_bytes), int(cached_items)

    def _rekey_sources(self, tables: set[str]) -> bool:
        """Charge the rows of ``tables`` to the host key of their source, in one transaction,
        and say whether that was done: a store written before per-host budgets counted an IPv6
        /64 as one host charged each IPv6 address on its own, which would leave such a host more
        than its quota for as long as the rows are renewed. A store that cannot be written now
        keeps the old charges (logged), as it was before."""
        self._db.create_function("qadom_host_key", 1, host_key, deterministic=True)
        try:
            with self._writing():
                for table in sorted(tables):
                    self._db.execute(f"UPDATE {table} SET source = qadom_host_key(source) "
                                     "WHERE qadom_host_key(source) != source")
        except StorageFull as exc:
            log.warning("the store %s keeps rows charged to single IPv6 addresses: %s",
                        self.path, exc)
            return False
        return True

    def _write(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Cursor:
        """One statement in its own committed transaction."""
        with self._writing():
            return self._db.execute(sql, params)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction: committed at the end, rolled back on any exception (a failed commit
        too). The quotas and the counts of :meth:`stats` are adjusted as the transaction goes and
        restored with it, so they never drift from what was committed, and a refusal costs no
        recount of the file (a node on a full disk refuses every write). A full disk is
        StorageFull; a database that cannot be written now is StorageUnavailable (see
        :meth:`_refusal`)."""
        try:
            with self.quotas.transaction(), self._counts.transaction(), self._db:
                self._db.execute("BEGIN")
                yield
        except sqlite3.Error as exc:
            refusal = self._refusal(exc, writing=True)
            if refusal is None:
                raise
            raise refusal from None
        if self.unavailable is not None and not self._damaged:
            log.warning("the store %s accepts writes again", self.path)
            self.unavailable = None

    def _refusal(self, exc: sqlite3.Error, *, writing: bool) -> StorageFull | None:
        """What a statement that failed with ``exc`` raises instead: StorageFull for a write on
        a full disk, StorageUnavailable for a database that cannot be read or written now (the
        first of an outage is logged, see :attr:`unavailable`), None for anything else (a bug,
        raised as it is). Every read and every write goes through here."""
        code = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        doing = "written" if writing else "read"
        if primary == sqlite3.SQLITE_FULL and writing:
            return StorageFull(f"the disk holding this node's store is full ({exc})")
        if primary not in _UNAVAILABLE and primary != sqlite3.SQLITE_FULL:
            return None
        if not self._damaged and (primary in _DAMAGED or code in _DAMAGED_READS):
            self._damaged = True
            log.warning("the store %s is damaged: %s; what touches the damage is refused while "
                        "it is open (stop the node, then restore or remove the file)",
                        self.path, exc)
        elif self.unavailable is None:  # said once, not at every refusal
            log.warning("the store %s cannot be %s: %s; what needs it is refused until a "
                        "write works again", self.path, doing, exc)
        self.unavailable = str(exc)
        return StorageUnavailable(f"this node's store cannot be {doing} ({exc})")

    # ------------------------------------------------------------------ values

    @_reading
    def get_value(self, key: int, now: float | None = None) -> bytes | None:
        row = self._db.execute("SELECT value, expires, original FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        if row is None:
            return None
        value, expires, original = row
        if now is not None and not original and expires <= now:
            return None
        return bytes(value)

    @_reading
    def value_meta(self, key: int) -> Meta | None:
        row = self._db.execute(f"SELECT {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        return None if row is None else _meta(row)

    @_reading
    def get_value_and_meta(self, key: int, now: float) -> tuple[bytes, Meta] | None:
        row = self._db.execute(f"SELECT value, {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        if row is None:
            return None
        meta = _meta(row[1:])
        if not meta.original and meta.expires <= now:
            return None
        return bytes(row[0]), meta

    @_reading
    def put_value(self, key: int, value: bytes, meta: Meta) -> None:
        row = self._db.execute(f"SELECT length(value), {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        with self._writing():
            if row is None:
                self._make_room(meta.source, len(value), meta.cached)
                self.quotas.add(meta.source, len(value), meta.cached)
                self._counts.values += 1
                self._counts.value_bytes += len(value)
            else:
                old = _meta(row[1:])
                self.quotas.replace(old.source, int(row[0]), meta.source, len(value),
                                    old_cached=old.cached, new_cached=meta.cached)
                self._counts.value_bytes += len(value) - int(row[0])
                # A key names one value (its SHA-256): storing it again, as every republish
                # does, changes only its bookkeeping, so the blob is not written again.
                if int(row[0]) == len(value) and self._db.execute(
                        "UPDATE vals SET expires = ?, republish_at = ?, original = ?, cached = ?, "
                        "source = ? WHERE key = ? AND value = ?",
                        (*_meta_params(meta), id_to_bytes(key), value)).rowcount:
                    return
            self._db.execute(f"INSERT OR REPLACE INTO vals (key, value, {_META_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (id_to_bytes(key), value, *_meta_params(meta)))

    # ------------------------------------------------------------------ entries

    @_reading
    def entry_meta(self, key: int, value: int) -> Meta | None:
        row = self._db.execute(f"SELECT {_META_COLUMNS} FROM entries WHERE key = ? AND value = ?",
                               (id_to_bytes(key), id_to_bytes(value))).fetchone()
        return None if row is None else _meta(row)

    @_reading
    def add_entry(self, key: int, value: int, meta: Meta) -> bool:
        old = self.entry_meta(key, value)
        raw = id_to_bytes(key)
        with self._writing():
            if old is None:
                self._make_room(meta.source, ENTRY_SIZE, meta.cached)
                self.quotas.add(meta.source, ENTRY_SIZE)
                self._counts.entries += 1
                if not self._has_entries(raw):
                    self._counts.entry_keys += 1
            else:
                self.quotas.replace(old.source, ENTRY_SIZE, meta.source, ENTRY_SIZE)
            self._db.execute(f"INSERT OR REPLACE INTO entries (key, value, {_META_COLUMNS}) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (raw, id_to_bytes(value), *_meta_params(meta)))
        return old is None

    @_reading
    def entries_after(self, key: int, after: int | None, limit: int, now: float | None = None,
                      ) -> tuple[list[int], bool]:
        limit = max(0, limit)
        low = b"" if after is None else id_to_bytes(after)
        live, params = ("", ()) if now is None else (
            " AND (original = 1 OR expires > ?)", (now,))  # not expired (see expire)
        rows = self._db.execute(
            f"SELECT value FROM entries WHERE key = ? AND value > ?{live} ORDER BY value LIMIT ?",
            (id_to_bytes(key), low, *params, limit + 1)).fetchall()
        values = [id_from_bytes(bytes(row[0])) for row in rows[:limit]]
        return values, len(rows) > limit

    def _has_entries(self, raw_key: bytes) -> bool:
        """Whether any entry is stored under the key (one lookup in the primary key)."""
        return self._db.execute("SELECT 1 FROM entries WHERE key = ? LIMIT 1",
                                (raw_key,)).fetchone() is not None

    # ------------------------------------------------------------------ schedule

    @_reading
    def due(self, now: float, limit: int) -> list[Due]:
        """Soonest first, as :meth:`MemoryStore.due <qadom.storage.MemoryStore.due>` (ties: by
        key, a value before the entries under its key, entries by value): values due later
        never hold back an entry due sooner."""
        if limit <= 0:  # SQLite reads a negative LIMIT as none at all
            return []
        values = [((meta.republish_at, key), Due(key, bytes(value), meta))
                  for key, value, meta in self._rows(
                      f"SELECT key, value, {_META_COLUMNS} FROM vals WHERE republish_at <= ? "
                      "ORDER BY republish_at, key LIMIT ?", (now, limit))]
        entries = [((meta.republish_at, key, id_from_bytes(bytes(value))),
                    Due(key, id_from_bytes(bytes(value)), meta))
                   for key, value, meta in self._rows(
                       f"SELECT key, value, {_META_COLUMNS} FROM entries "
                       "WHERE republish_at <= ? ORDER BY republish_at, key, value LIMIT ?",
                       (now, limit))]
        return _first(limit, values, entries)

    def _rows(self, sql: str, params: tuple[object, ...]) -> Iterator[tuple[int, Any, Meta]]:
        """``(key, second column, Meta)`` of each row of ``sql``, which selects a key, one more
        column and :data:`_META_COLUMNS`."""
        for key, other, *rest in self._db.execute(sql, params):
            yield id_from_bytes(bytes(key)), other, _meta(rest)

    @_reading
    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        if limit <= 0:
            return []
        # Ids are 32-byte big-endian blobs, so a key range is a blob range on the primary keys.
        # By ascending key, as MemoryStore: under one key its value, its entries by value, its
        # records by kind.
        low = id_to_bytes(lo)
        bound, params = ("", (low,)) if hi >= ID_SPACE else (" AND key < ?", (low, id_to_bytes(hi)))
        # "+cached": SQLite would otherwise read the cached index for every value that is not a
        # cached copy, to test its key, instead of reading only the keys in the range.
        values: list[tuple[tuple[Any, ...], Due | DueRecord]]
        values = [((key, 0), Due(key, bytes(value), meta)) for key, value, meta in self._rows(
            f"SELECT key, value, {_META_COLUMNS} FROM vals WHERE key >= ?{bound} "
            "AND +cached = 0 ORDER BY key LIMIT ?", (*params, limit))]
        entries: list[tuple[tuple[Any, ...], Due | DueRecord]]
        entries = [((key, 1, id_from_bytes(bytes(value))),
                    Due(key, id_from_bytes(bytes(value)), meta))
                   for key, value, meta in self._rows(
                       f"SELECT key, value, {_META_COLUMNS} FROM entries WHERE key >= ?{bound} "
                       "ORDER BY key, value LIMIT ?", (*params, limit))]
        records: list[tuple[tuple[Any, ...], Due | DueRecord]] = []
        for raw, kind, data, *rest in self._db.execute(
                f"SELECT key, kind, data, {_RECORD_META_COLUMNS} FROM records "
                f"WHERE key >= ?{bound} AND (original = 1 OR expires < 9e999) "
                "ORDER BY key, kind LIMIT ?", (*params, limit)):
            key = id_from_bytes(bytes(raw))
            records.append(((key, 2, kind), DueRecord(kind, key, bytes(data), _record_meta(rest))))
        return _first(limit, values, entries, records)

    def expire(self, now: float) -> int:
        dropped = 0
        with self._writing():
            cached_bytes, cached_items = self._db.execute(
                "SELECT COALESCE(SUM(length(value)), 0), COUNT(*) FROM vals "
                "WHERE original = 0 AND cached = 1 AND expires <= ?", (now,)).fetchone()
            self.quotas.cached_bytes -= int(cached_bytes)
            self.quotas.cached_items -= int(cached_items)
            counts = self._counts
            for source, size_sum, count in self._db.execute(
                    "SELECT source, SUM(length(value)), COUNT(*) FROM vals "
                    "WHERE original = 0 AND expires <= ? GROUP BY source", (now,)).fetchall():
                self.quotas.unload(source, int(size_sum), int(count))
                counts.values -= int(count)
                counts.value_bytes -= int(size_sum)
                dropped += int(count)
            # One pass over the expiring entries: their sources (for the quotas) and their keys
            # (those left with no entry no longer count, checked below).
            per_source: Counter[str] = Counter()
            keys: set[bytes] = set()
            for key, source in self._db.execute(
                    "SELECT key, source FROM entries WHERE original = 0 AND expires <= ?", (now,)):
                per_source[source] += 1
                keys.add(bytes(key))
            for source, count in per_source.items():
                self.quotas.unload(source, count * ENTRY_SIZE, count)
                counts.entries -= count
                dropped += count
            for source, size_sum, count in self._db.execute(
                    "SELECT source, SUM(length(data)), COUNT(*) FROM records "
                    "WHERE original = 0 AND expires <= ? GROUP BY source", (now,)).fetchall():
                self.quotas.unload(source, int(size_sum), int(count))
                counts.records -= int(count)
                dropped += int(count)
            self._db.execute("DELETE FROM vals WHERE original = 0 AND expires <= ?", (now,))
            self._db.execute("DELETE FROM entries WHERE original = 0 AND expires <= ?", (now,))
            self._db.execute("DELETE FROM records WHERE original = 0 AND expires <= ?", (now,))
            counts.entry_keys -= sum(1 for key in keys if not self._has_entries(key))
        return dropped

    def forget(self, key: int) -> bool:
        raw = id_to_bytes(key)
        with self._writing():
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

    def renew_originals(self, before: float, expires: float) -> int:
        """See :meth:`Store.renew_originals <qadom.storage.Store.renew_originals>`: read through
        the expiry indexes, which hold little else expiring so soon once :meth:`expire` ran, and
        little else that never expires (the node's identity, records of an older file not yet
        republished)."""
        renewed = 0
        with self._writing():
            for table in ("vals", "entries", "records"):
                renewed += self._db.execute(
                    f"UPDATE {table} SET expires = ? "
                    "WHERE (expires < ? OR expires = 9e999) AND original = 1",
                    (expires, before)).rowcount
        return renewed

    # ------------------------------------------------------------------ records, contacts, meta

    @_reading
    def due_records(self, now: float, limit: int) -> list[DueRecord]:
        """Soonest first (ties: by key, then kind), as MemoryStore."""
        return [DueRecord(kind, id_from_bytes(bytes(key)), bytes(data), _record_meta(rest))
                for kind, key, data, *rest in self._db.execute(
                    f"SELECT kind, key, data, {_RECORD_META_COLUMNS} FROM records "
                    "WHERE republish_at <= ? ORDER BY republish_at, key, kind LIMIT ?",
                    (now, max(0, limit)))]

    @_reading
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

    @_reading
    def record_meta(self, kind: str, key: int) -> Meta | None:
        row = self._db.execute(
            f"SELECT {_RECORD_META_COLUMNS} FROM records WHERE kind = ? AND key = ?",
            (kind, id_to_bytes(key))).fetchone()
        return None if row is None else _record_meta(row)

    @_reading
    def put_record(self, kind: str, key: int, data: bytes, now: float, source: str = "",
                   meta: Meta | None = None) -> None:
        meta = record_meta(source, meta)
        old = self._record_size(kind, key)
        with self._writing():
            if old is None:
                self._make_room(meta.source, len(data), False)
                self.quotas.add(meta.source, len(data))
                self._counts.records += 1
            else:  # a newer version is charged to the host that sent it
                self.quotas.replace(old[1], old[0], meta.source, len(data),
                                    victims=self._victims, drop=self._drop_cached)
            self._db.execute(
                f"INSERT OR REPLACE INTO records (kind, key, data, {_RECORD_META_COLUMNS}) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (kind, id_to_bytes(key), data, meta.expires, meta.republish_at,
                 int(meta.original), meta.source))

    @_reading
    def delete_record(self, kind: str, key: int) -> None:
        old = self._record_size(kind, key)
        with self._writing():
            if old is not None:
                self.quotas.remove(old[1], old[0])
                self._counts.records -= 1
            self._db.execute("DELETE FROM records WHERE kind = ? AND key = ?",
                             (kind, id_to_bytes(key)))

    def _record_size(self, kind: str, key: int) -> tuple[int, str] | None:
        row = self._db.execute(
            "SELECT length(data), source FROM records WHERE kind = ? AND key = ?",
            (kind, id_to_bytes(key))).fetchone()
        return None if row is None else (int(row[0]), str(row[1]))

    def save_contacts(self, contacts: Iterable[Contact]) -> None:
        rows = [(id_to_bytes(c.id), c.address[0], c.address[1]) for c in contacts]
        if not rows:  # an empty routing table keeps the contacts to rejoin through
            return
        with self._writing():
            self._db.execute("DELETE FROM contacts")
            self._db.executemany("INSERT OR REPLACE INTO contacts VALUES (?, ?, ?)", rows)

    @_reading
    def load_contacts(self) -> list[Contact]:
        return [Contact(id_from_bytes(bytes(node_id)), (host, port))
                for node_id, host, port in self._db.execute("SELECT id, host, port FROM contacts")]

    @_reading
    def get_meta(self, name: str) -> bytes | None:
        row = self._db.execute("SELECT data FROM meta WHERE name = ?", (name,)).fetchone()
        return None if row is None else bytes(row[0])

    def set_meta(self, name: str, data: bytes) -> None:
        self._write("INSERT OR REPLACE INTO meta (name, data) VALUES (?, ?)", (name, data))

    def stats(self) -> dict[str, int]:
        counts = self._counts
        return {
            "values": counts.values,
            "value_bytes": counts.value_bytes,
            "entry_keys": counts.entry_keys,
            "entries": counts.entries,
            "records": counts.records,
            "stored_bytes": self.quotas.total_bytes,
        }

    def close(self) -> None:
        self._db.close()

    # ------------------------------------------------------------------ internals

    def _make_room(self, source: str, size: int, cached: bool) -> None:
        """Inside a :meth:`_writing` transaction: evictions commit with the write or not at all."""
        self.quotas.make_room(source, size, cached, self._victims, self._drop_cached)

    def _victims(self) -> Iterator[tuple[Any, int]]:
        """The cached copies, a few at a time, soonest-expiring first and ties by key (as
        MemoryStore evicts), as ``(handle, size)`` for :meth:`_drop_cached`."""
        while rows := self._db.execute(
                "SELECT key, length(value), source FROM vals WHERE cached = 1 "
                "ORDER BY expires, key LIMIT 32").fetchall():
            for key, length, victim_source in rows:
                yield (key, victim_source, int(length)), int(length)

    def _drop_cached(self, handle: Any) -> None:
        key, victim_source, length = handle
        self._db.execute("DELETE FROM vals WHERE key = ?", (key,))
        self.quotas.remove(victim_source, length, cached=True)
        self._counts.values -= 1
        self._counts.value_bytes -= length
