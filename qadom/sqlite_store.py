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
or write (the stamp is written again at every opening to prove the file can be written). One
exception, SQLite's own: a write-ahead log a killed process left beside the file is folded into
it when the refused file is closed, as SQLite recovers any database it opens; what the file
holds is the same, its bytes are not. A file whose disk is too full to stamp it is no fault of
the file: opening it raises :class:`~qadom.errors.StorageUnavailable`, which says so, and leaves
everything stored in it. The store holds an exclusive lock (on a file beside the database, its
name and ``.lock``) while it is open, so two stores never share one file, even through a symbolic
link from another data dir: the second is refused with :class:`~qadom.errors.DataDirInUse`.

Damaged values. SQLite keeps no checksum of what it stores, so each value is stored with its
SHA-256 (``digest``; a row from before that column must hash to its key) and checked at every
read: a value whose bytes changed on the disk is never served, republished or handed over, and
its row is deleted (see :meth:`SqliteStore._drop_damaged`). A store whose values are all
content-addressed, as a node's are (``content_addressed``, as a :class:`~qadom.peer.Peer` opens
its data dir), checks each value against the key it is read under instead (the key asked for,
or the key read from its row), its SHA-256: a row reached through a damaged index, or whose key
changed, is damaged too, though its value and digest agree. Other damage SQLite does not see (a
column of another type than it was written with, text that is not UTF-8, a row charged to a host
the counts never saw) refuses the file when it is opened (:class:`StoreUnusable`) and, met
later, the read or write that meets it, as a damaged page does
(:class:`~qadom.errors.StorageUnavailable`). Saved contacts that cannot be sent to (an id that is
not 32 bytes, a host that is not an IP literal, a port out of 1..65535) are left out when the
contacts are loaded.

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
opening the file charges them to its host, in one transaction. A records table from before /dht
records kept the owners this node put (``Meta.owners``) gains the ``owners`` column, NULL in the
rows it holds: every owner a record of ours holds counts as ours, as all did before.

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
import hashlib
import heapq
import itertools
import logging
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path
from typing import IO, Any, Concatenate, ParamSpec, TypeVar

import cbor2

from .cbor import loads as cbor_loads
from .config import Config
from .contact import Contact, host_key, is_ip_literal
from .errors import (
    DataDirInUse,
    InvalidArgument,
    QadomError,
    StorageFull,
    StorageUnavailable,
    StoreUnusable,
    printable,
)
from .ids import ID_BYTES, ID_SPACE, id_from_bytes, id_to_bytes, key_for
from .storage import (
    ENTRY_SIZE,
    EXPIRE_BATCH,
    NEVER,
    Due,
    DueRecord,
    Meta,
    Quotas,
    record_meta,
)

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
# What Python's sqlite3 raises (with no SQLite code) for a TEXT column whose bytes are not UTF-8:
# qadom writes only valid text, so the bytes changed on the disk.
_NOT_UTF8 = "Could not decode to UTF-8"

_EXPIRED_CHUNK = 64
"""Expired entries :meth:`SqliteStore.entries_after` reads in one query beyond its page."""

_P = ParamSpec("_P")
_R = TypeVar("_R")
_T = TypeVar("_T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS vals (
    key BLOB PRIMARY KEY, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL, digest BLOB);
CREATE INDEX IF NOT EXISTS vals_republish ON vals (republish_at);
CREATE INDEX IF NOT EXISTS vals_renewal ON vals (republish_at) WHERE original = 1;
CREATE INDEX IF NOT EXISTS vals_expires ON vals (expires);
DROP INDEX IF EXISTS vals_cached;
CREATE INDEX IF NOT EXISTS vals_cached_key ON vals (cached, expires, key);
CREATE TABLE IF NOT EXISTS entries (
    key BLOB NOT NULL, value BLOB NOT NULL, expires REAL NOT NULL,
    republish_at REAL NOT NULL, original INTEGER NOT NULL, cached INTEGER NOT NULL,
    source TEXT NOT NULL, PRIMARY KEY (key, value));
CREATE INDEX IF NOT EXISTS entries_republish ON entries (republish_at);
CREATE INDEX IF NOT EXISTS entries_renewal ON entries (republish_at) WHERE original = 1;
CREATE INDEX IF NOT EXISTS entries_expires ON entries (expires);
CREATE TABLE IF NOT EXISTS records (
    kind TEXT NOT NULL, key BLOB NOT NULL, data BLOB NOT NULL, source TEXT NOT NULL,
    expires REAL NOT NULL DEFAULT 9e999, republish_at REAL NOT NULL DEFAULT 9e999,
    original INTEGER NOT NULL DEFAULT 0, owners BLOB, PRIMARY KEY (kind, key));
CREATE TABLE IF NOT EXISTS contacts (
    id BLOB PRIMARY KEY, host TEXT NOT NULL, port INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, data BLOB NOT NULL);
"""

# Indexes on the columns the record migration adds: created once those columns exist.
RECORD_INDEXES = """
CREATE INDEX IF NOT EXISTS records_republish ON records (republish_at);
CREATE INDEX IF NOT EXISTS records_renewal ON records (republish_at) WHERE original = 1;
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
_OURS = "original = 1 AND "
"""The condition of a query of our own items due (``due`` with ``originals``), as the
``*_renewal`` partial indexes are made: SQLite reads such an index only for a query whose
condition contains the index's own."""
_RECORD_META_COLUMNS = "expires, republish_at, original, source, owners"


def _meta(row: tuple[float, float, int, int, str]) -> Meta:
    expires, republish_at, original, cached, source = row
    return Meta(expires, republish_at, bool(original), bool(cached), source)


def _meta_params(meta: Meta) -> tuple[float, float, int, int, str]:
    return (meta.expires, meta.republish_at, int(meta.original), int(meta.cached), meta.source)


def _record_meta(row: tuple[float, float, int, str, bytes | None]) -> Meta:
    expires, republish_at, original, source, owners = row
    return Meta(expires, republish_at, bool(original), False, source, _owners(owners))


def _owners_blob(owners: frozenset[bytes] | None) -> bytes | None:
    """How a record's :attr:`Meta.owners` is stored: a CBOR array of the keys, sorted (NULL for
    None)."""
    if owners is None:
        return None
    blob: bytes = cbor2.dumps(sorted(owners))
    return blob


def _owners(blob: bytes | None) -> frozenset[bytes] | None:
    """The :attr:`Meta.owners` an ``owners`` column holds: None for NULL, and for a blob that is
    not an array of byte strings (every owner of the record then counts as ours, as for a record
    stored before owners were kept, rather than none, which would renew it past a newer owner's
    forget)."""
    if blob is None:
        return None
    try:
        owners = cbor_loads(bytes(blob))
    except (cbor2.CBORDecodeError, ValueError, TypeError, OverflowError, RecursionError):
        return None
    if not isinstance(owners, list) or not all(isinstance(key, bytes) for key in owners):
        return None
    return frozenset(owners)


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

    One thread at a time may use it, not necessarily the one that opened it: a peer's store is
    used on its loop's thread, and may be closed from another once that loop has ended.

    :class:`StoreUnusable` (the file left as it was) when the file cannot be a qadom store,
    :class:`~qadom.errors.StorageUnavailable` when its disk is too full to open it; see the
    module docstring. With ``content_addressed``, a value read back is intact only under its
    SHA-256 (see the module docstring): what a node's store holds, and a peer opens its data dir
    so."""

    def __init__(self, path: str | Path, config: Config | None = None, *,
                 content_addressed: bool = False) -> None:
        self.config = config or Config()
        self.content_addressed = content_addressed
        """Whether every value is stored under its SHA-256 (as a node stores them): a value read
        under any other key is then damaged (:meth:`_intact`)."""
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
        self._kept_damaged = False  # damaged values kept, logged (_drop_damaged)
        self.expire_batch = EXPIRE_BATCH
        """The most items one :meth:`expire` call drops."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = self._lock_file()
        try:
            # check_same_thread off: the store is used by one thread at a time (its node's
            # loop), but not always the one that opened it (a peer whose loop ran in a worker
            # thread is closed from the main thread once that thread ended).
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       timeout=self.config.sqlite_busy_timeout,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            self._lock.close()
            raise StoreUnusable(self.path, f"cannot open it: {exc}") from None
        try:
            self._open()
        except sqlite3.Error as exc:
            self._db.close()
            self._lock.close()
            code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
            if code == sqlite3.SQLITE_FULL:  # the disk, not the file: nothing in it is lost
                raise StorageUnavailable(
                    f"the disk holding the store {str(self.path)!r} is full ({exc}); nothing "
                    "stored in it was lost: free some room on it and start again") from None
            if code in (sqlite3.SQLITE_READONLY, sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM):
                raise StoreUnusable(self.path, f"this process cannot write it: {exc}") from None
            raise StoreUnusable(self.path, f"cannot use it as a qadom store: {exc}") from None
        except BaseException as exc:
            self._db.close()
            self._lock.close()
            if isinstance(exc, QadomError) or not isinstance(exc, Exception):
                raise
            # Damage SQLite does not report: a column of another type than qadom writes (a
            # source that is no text), a name in the schema that is not UTF-8.
            raise StoreUnusable(self.path, f"damaged, cannot use it as a qadom store: "
                                f"{type(exc).__name__}: {printable(str(exc))}") from None

    def _lock_file(self) -> IO[bytes]:
        """Hold an exclusive ``flock`` on a lock file beside the database file (the file a
        symbolic link names, its name and ``.lock``) until :meth:`close`: two stores on one
        file, from two data dirs whose database is one file through a link, or twice in one
        process, would each count what the other writes wrong. DataDirInUse, nothing opened,
        when another store holds it; StoreUnusable when the lock file cannot be opened.

        The lock is never taken on the database file itself: closing a descriptor of a file
        drops every POSIX lock this process holds on it, SQLite's own included, and the
        descriptor of a refused second store would be closed. Where ``fcntl`` is missing,
        nothing is locked."""
        resolved = self.path.resolve()
        path = resolved.with_name(resolved.name + ".lock")
        try:
            lock = os.fdopen(os.open(path, os.O_RDONLY | os.O_CREAT | os.O_NONBLOCK, 0o644), "rb")
        except OSError as exc:
            raise StoreUnusable(path, f"cannot open it: {exc}") from None
        try:
            import fcntl
        except ImportError:  # pragma: no cover (no advisory locks on this platform)
            return lock
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise DataDirInUse(f"the store {str(resolved)!r} is in use by another qadom store"
                               ) from None
        return lock

    def _open(self) -> None:
        """Check what the file holds before writing anything to it, then create or upgrade the
        schema and count the quotas, in one transaction that a refusal rolls back: a file
        refused here is left byte for byte as it was."""
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
        # Created or upgraded, and stamped, in one transaction: a process killed meanwhile leaves
        # the file as it was, never some of the tables without the others.
        # The stamp is written at every opening, so that a file this process can read but not
        # write (its mode, a read-only mount) is refused here, with StoreUnusable, rather than
        # serving while it refuses every write.
        # The tables are counted inside that transaction: counting reads every page of them,
        # and a damaged one refuses the file, whose transaction is then rolled back. Only then
        # is the file switched to WAL (a file from before the stamp may have kept SQLite's
        # rollback journal), as that switch writes the file's header at once: a refused file is
        # left exactly as it was. That transaction runs with SQLite's default synchronous
        # (FULL), the safe one with a rollback journal.
        with db:
            db.execute("BEGIN IMMEDIATE")
            self._execute_all(SCHEMA)
            self._migrate_records()
            self._migrate_digests()
            self._migrate_owners()
            self._execute_all(RECORD_INDEXES)
            db.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            legacy = self._load_counts()
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={self.config.sqlite_synchronous.upper()}")
        db.execute(f"PRAGMA journal_size_limit={int(self.config.sqlite_wal_limit)}")
        # One read in WAL mode opens the write-ahead log now, so that the store holds SQLite's
        # shared lock on the file from its opening on, whatever journal the file had.
        db.execute("PRAGMA schema_version").fetchone()
        if legacy and self._rekey_sources(legacy):
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

    def _migrate_digests(self) -> None:
        """Give a vals table from before values carried their digest the ``digest`` column
        (NULL in the rows it holds: see :meth:`_intact`), inside the transaction that opens the
        file."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(vals)")}
        if "digest" not in present:
            self._db.execute("ALTER TABLE vals ADD COLUMN digest BLOB")

    def _migrate_owners(self) -> None:
        """Give a records table from before /dht records kept the owners we put
        (:attr:`Meta.owners`) the ``owners`` column (NULL in the rows it holds: every owner of a
        record of ours then counts as ours), inside the transaction that opens the file."""
        present = {row[1] for row in self._db.execute("PRAGMA table_info(records)")}
        if "owners" not in present:
            self._db.execute("ALTER TABLE records ADD COLUMN owners BLOB")

    def _load_counts(self) -> set[str]:
        """Count what the file holds, per source, and what cached copies hold (the quotas), and
        what :meth:`stats` reports: the one time the whole file is counted (twice when its rows
        are charged to their host anew). Returns the tables with rows charged to a source that
        is not a host key (see :meth:`_rekey_sources`)."""
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
        counts.entry_keys = int(self._db.execute(
            "SELECT COUNT(DISTINCT key) FROM entries").fetchone()[0])
        cached_bytes, cached_items = self._db.execute(
            "SELECT COALESCE(SUM(length(value)), 0), COUNT(*) FROM vals WHERE cached = 1"
        ).fetchone()
        quotas.cached_bytes, quotas.cached_items = int(cached_bytes), int(cached_items)
        return legacy

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
        :meth:`_refusal`), and so is a row charged to a host the quotas do not count (see
        below). Only a transaction that changed a row ends an outage: one that found nothing to
        write (a sweep with nothing expired) never wrote to the disk."""
        changes = self._db.total_changes
        try:
            with self.quotas.transaction(), self._counts.transaction(), self._db:
                self._db.execute("BEGIN")
                yield
        except sqlite3.Error as exc:
            refusal = self._refusal(exc, writing=True)
            if refusal is None:
                raise
            raise refusal from None
        except KeyError as exc:
            # The quotas count every source the file held when it opened, and every write keeps
            # them so: a row charged to one they never counted was read from damaged pages.
            raise self._damage(f"a row is charged to a host never counted ({exc})",
                               writing=True) from None
        if (self.unavailable is not None and not self._damaged
                and self._db.total_changes != changes):
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
        if code is None and isinstance(exc, sqlite3.OperationalError) and str(exc).startswith(
                _NOT_UTF8):
            return self._damage(printable(str(exc)), writing=writing)
        if primary not in _UNAVAILABLE and primary != sqlite3.SQLITE_FULL:
            return None
        if primary in _DAMAGED or code in _DAMAGED_READS:
            return self._damage(str(exc), writing=writing)
        if self.unavailable is None:  # said once, not at every refusal
            log.warning("the store %s cannot be %s: %s; what needs it is refused until a "
                        "write works again", self.path, doing, exc)
        self.unavailable = str(exc)
        return StorageUnavailable(f"this node's store cannot be {doing} ({exc})")

    def _damage(self, reason: str, *, writing: bool) -> StorageUnavailable:
        """What a read or write that met damage in the file (``reason``) raises: the store is
        damaged from then on, which is logged once (see :attr:`unavailable`)."""
        if not self._damaged:
            self._damaged = True
            log.warning("the store %s is damaged: %s; what touches the damage is refused while "
                        "it is open (stop the node, then restore or remove the file)",
                        self.path, reason)
        self.unavailable = reason
        doing = "written" if writing else "read"
        return StorageUnavailable(f"this node's store cannot be {doing} ({reason})")

    # ------------------------------------------------------------------ values

    @_reading
    def get_value(self, key: int, now: float | None = None) -> bytes | None:
        """The value, None when it is missing, expired at ``now`` or damaged (see
        :meth:`_intact`)."""
        row = self._db.execute("SELECT value, expires, original, digest FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        if row is None:
            return None
        value, expires, original, digest = row
        if now is not None and not original and expires <= now:
            return None
        if not self._intact(key, value, digest):
            self._drop_damaged([key])
            return None
        return bytes(value)

    def _intact(self, key: int, value: object, digest: object) -> bool:
        """Whether a value row read back is what was stored under ``key`` (the key asked for,
        or read from the row): its SHA-256 is the digest written with it (a row from before
        values carried one: its key); with :attr:`content_addressed`, its SHA-256 is ``key``,
        so that a row reached through a damaged index, or whose key changed, is damaged too.
        SQLite keeps no checksum of what it stores, so bytes changed on the disk would otherwise
        be served as good, and every peer served them would take this node for a liar."""
        if not isinstance(value, bytes):  # a column damaged into another type
            return False
        if self.content_addressed or digest is None:
            return key_for(value) == key
        return isinstance(digest, bytes) and hashlib.sha256(value).digest() == digest

    def _drop_damaged(self, keys: list[int]) -> None:
        """Delete the value rows under ``keys``, found damaged (:meth:`_intact`), and log each
        once the deletion is committed.

        A damaged copy is never served, republished or handed over, and it is deleted rather
        than kept: nothing can mend it here, while the k closest peers hold good copies (a
        replica comes back with their next republish; a value we published ourselves is no
        longer republished by us, as the warning says, and must be set again). Deleting it
        frees its quota and takes it off the schedule, where it would stay due forever. A store
        that cannot be written now keeps the row, still never returned, and says so once until
        a deletion commits again (not at every read of such a row, which any peer can ask
        for); each row is logged when it is deleted."""
        deleted: list[tuple[int, bool]] = []
        try:
            with self._writing():
                for key in keys:
                    if not 0 <= key < ID_SPACE:  # a key column damaged to another length
                        continue
                    row = self._db.execute(
                        f"SELECT length(value), {_META_COLUMNS} FROM vals WHERE key = ?",
                        (id_to_bytes(key),)).fetchone()
                    if row is None:
                        continue
                    meta = _meta(row[1:])
                    self.quotas.remove(meta.source, int(row[0]), meta.cached)
                    self._counts.values -= 1
                    self._counts.value_bytes -= int(row[0])
                    self._db.execute("DELETE FROM vals WHERE key = ?", (id_to_bytes(key),))
                    deleted.append((key, meta.original))
        except StorageFull as exc:  # the store's own trouble is logged by _refusal
            if not self._kept_damaged:
                self._kept_damaged = True
                log.warning("the store %s holds damaged values (their bytes changed on the "
                            "disk) that it cannot delete now (%s); they are never served, and "
                            "are deleted once the store can be written", self.path, exc)
            return
        self._kept_damaged = False
        for key, original in deleted:
            log.warning("the store %s held a damaged copy of the value %064x (its bytes "
                        "changed on the disk); it was deleted%s", self.path, key,
                        ", and is no longer republished by this node: set it again"
                        if original else "")

    @_reading
    def value_meta(self, key: int) -> Meta | None:
        row = self._db.execute(f"SELECT {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        return None if row is None else _meta(row)

    @_reading
    def get_value_and_meta(self, key: int, now: float) -> tuple[bytes, Meta] | None:
        """As :meth:`get_value`: never a damaged value."""
        row = self._db.execute(f"SELECT value, digest, {_META_COLUMNS} FROM vals WHERE key = ?",
                               (id_to_bytes(key),)).fetchone()
        if row is None:
            return None
        meta = _meta(row[2:])
        if not meta.original and meta.expires <= now:
            return None
        if not self._intact(key, row[0], row[1]):
            self._drop_damaged([key])
            return None
        return bytes(row[0]), meta

    @_reading
    def put_value(self, key: int, value: bytes, meta: Meta) -> None:
        """Stored with its SHA-256 (:meth:`_intact` checks every read against it)."""
        digest = hashlib.sha256(value).digest()
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
                # A damaged copy differs from the value: the whole row is written again.
                if int(row[0]) == len(value) and self._db.execute(
                        "UPDATE vals SET expires = ?, republish_at = ?, original = ?, cached = ?, "
                        "source = ?, digest = ? WHERE key = ? AND value = ?",
                        (*_meta_params(meta), digest, id_to_bytes(key), value)).rowcount:
                    return
            self._db.execute(f"INSERT OR REPLACE INTO vals (key, value, {_META_COLUMNS}, digest) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                             (id_to_bytes(key), value, *_meta_params(meta), digest))

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
        """See :meth:`Store.entries_after <qadom.storage.Store.entries_after>`. With ``now``,
        the entries expired and not yet swept that the page steps over are deleted (as
        :meth:`expire` deletes them, in one transaction), so that each is read by one call
        only: the cost of a call is its page plus the expired entries it meets for the first
        time, never every expired entry of the key at every SEARCH until the sweep. At most
        :attr:`expire_batch` are deleted by one call, as by one :meth:`expire`: past that, the
        expired entries are only stepped over."""
        limit = max(0, limit)
        raw = id_to_bytes(key)
        low = b"" if after is None else id_to_bytes(after)
        if now is None:
            rows = self._db.execute(
                "SELECT value FROM entries WHERE key = ? AND value > ? ORDER BY value LIMIT ?",
                (raw, low, limit + 1)).fetchall()
            return [id_from_bytes(bytes(row[0])) for row in rows[:limit]], len(rows) > limit
        page: list[int] = []
        dead: list[tuple[bytes, str]] = []  # expired (as expire drops them): value, source
        chunk = limit + 1 + _EXPIRED_CHUNK
        more = False
        while not more:
            rows = self._db.execute(
                "SELECT value, original, expires, source FROM entries WHERE key = ? AND value > ? "
                "ORDER BY value LIMIT ?", (raw, low, chunk)).fetchall()
            for value, original, expires, source in rows:
                if not original and expires <= now:
                    if len(dead) < self.expire_batch:
                        dead.append((bytes(value), str(source)))
                elif len(page) == limit:
                    more = True
                    break
                else:
                    page.append(id_from_bytes(bytes(value)))
            if len(rows) < chunk:
                break
            low = bytes(rows[-1][0])
        if dead:
            self._drop_expired_entries(raw, dead, now)
        return page, more

    def _drop_expired_entries(self, raw_key: bytes, dead: list[tuple[bytes, str]],
                              now: float) -> None:
        """Delete the entries ``dead`` (value, source) under ``raw_key``, expired at ``now``, as
        :meth:`expire` would; a store that cannot be written now keeps them (still skipped by
        every read that gives ``now``)."""
        try:
            with self._writing():
                deleted = 0
                for value, source in dead:
                    if self._db.execute(
                            "DELETE FROM entries WHERE key = ? AND value = ? AND original = 0 "
                            "AND expires <= ?", (raw_key, value, now)).rowcount:
                        self.quotas.remove(source, ENTRY_SIZE)
                        self._counts.entries -= 1
                        deleted += 1
                if deleted and not self._has_entries(raw_key):
                    self._counts.entry_keys -= 1
        except StorageFull:
            pass  # logged by _refusal

    def _has_entries(self, raw_key: bytes) -> bool:
        """Whether any entry is stored under the key (one lookup in the primary key)."""
        return self._db.execute("SELECT 1 FROM entries WHERE key = ? LIMIT 1",
                                (raw_key,)).fetchone() is not None

    # ------------------------------------------------------------------ schedule

    @_reading
    def due(self, now: float, limit: int, originals: bool = False) -> list[Due]:
        """Soonest first, as :meth:`MemoryStore.due <qadom.storage.MemoryStore.due>` (ties: by
        key, a value before the entries under its key, entries by value): values due later
        never hold back an entry due sooner. With ``originals``, only our own, read through
        indexes of those only (``*_renewal``)."""
        if limit <= 0:  # SQLite reads a negative LIMIT as none at all
            return []
        ours = _OURS if originals else ""
        values = [((meta.republish_at, key), Due(key, value, meta))
                  for key, value, meta in self._intact_values(
                      f"SELECT key, value, {_META_COLUMNS}, digest FROM vals "
                      f"WHERE {ours}republish_at <= ? ORDER BY republish_at, key LIMIT ?",
                      (now, limit))]
        entries = [((meta.republish_at, key, id_from_bytes(bytes(value))),
                    Due(key, id_from_bytes(bytes(value)), meta))
                   for key, value, meta in self._rows(
                       f"SELECT key, value, {_META_COLUMNS} FROM entries "
                       f"WHERE {ours}republish_at <= ? ORDER BY republish_at, key, value LIMIT ?",
                       (now, limit))]
        return _first(limit, values, entries)

    def _intact_values(self, sql: str, params: tuple[object, ...],
                       ) -> list[tuple[int, bytes, Meta]]:
        """``(key, value, Meta)`` of each row of ``sql`` (which selects a key, the value,
        :data:`_META_COLUMNS` and the digest) whose value is intact under the key read with it;
        the damaged ones are left out and deleted (:meth:`_drop_damaged`)."""
        found: list[tuple[int, bytes, Meta]] = []
        damaged: list[int] = []
        for raw, value, *rest, digest in self._db.execute(sql, params).fetchall():
            key = id_from_bytes(bytes(raw))
            if self._intact(key, value, digest):
                found.append((key, bytes(value), _meta(rest)))
            else:
                damaged.append(key)
        if damaged:
            self._drop_damaged(damaged)
        return found

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
        values = [((key, 0), Due(key, value, meta)) for key, value, meta in self._intact_values(
            f"SELECT key, value, {_META_COLUMNS}, digest FROM vals WHERE key >= ?{bound} "
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
        """See :meth:`Store.expire <qadom.storage.Store.expire>`: at most :attr:`expire_batch`
        items and records, the soonest expired first, read through the expiry indexes and
        deleted in one transaction; a call that returns ``expire_batch`` may have left more for
        the next. Each table's rows are read and deleted in the same order (expiry, then
        rowid), so the rows deleted are the rows counted."""
        batch = max(0, self.expire_batch)
        tables = (("vals", "length(value)"), ("entries", str(ENTRY_SIZE)),
                  ("records", "length(data)"))
        soonest = "original = 0 AND expires <= ? ORDER BY expires, rowid LIMIT ?"
        with self._writing():
            found: list[tuple[tuple[Any, ...], tuple[str, str, int, bool, bytes]]] = []
            for tag, (table, size) in enumerate(tables):
                cached = "cached" if table == "vals" else "0"
                found.extend(
                    ((expires, tag, rowid), (table, str(source), int(length), bool(is_cached),
                                             bytes(key)))
                    for rowid, expires, source, length, is_cached, key in self._db.execute(
                        f"SELECT rowid, expires, source, {size}, {cached}, key FROM {table} "
                        f"WHERE {soonest}", (now, batch)))
            found.sort(key=lambda pair: pair[0])
            dropped = [row for _, row in found[:batch]]
            counts = self._counts
            keys: set[bytes] = set()  # keys of entries dropped: those left with none are counted
            for table, source, length, is_cached, key in dropped:
                self.quotas.remove(source, length, is_cached)
                if table == "vals":
                    counts.values -= 1
                    counts.value_bytes -= length
                elif table == "entries":
                    counts.entries -= 1
                    keys.add(key)
                else:
                    counts.records -= 1
            for table, _ in tables:  # run even when none is due: a read-only disk refuses it
                self._db.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} "
                                 f"WHERE {soonest})",
                                 (now, sum(1 for row in dropped if row[0] == table)))
            counts.entry_keys -= sum(1 for key in keys if not self._has_entries(key))
        return len(dropped)

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

    def cap_times(self, ours: float, others: float, expires: float) -> int:
        """See :meth:`Store.cap_times <qadom.storage.Store.cap_times>`: one UPDATE of each
        table in one transaction, each reading the rows beyond a bound through the republish
        and expiry indexes (SQLite's OR of index ranges), not the whole table. The range of the
        others' republish times holds our own items due later than ``others`` too: a node's own
        publications, few beside what it holds for others."""
        beyond = ("(republish_at > :others AND republish_at < 9e999 AND original = 0) "
                  "OR (republish_at > :ours AND republish_at < 9e999 AND original = 1) "
                  "OR (expires > :expires AND expires < 9e999)")
        bounds = {"ours": ours, "others": others, "expires": expires}
        capped = 0
        with self._writing():
            for table in ("vals", "entries", "records"):
                capped += self._db.execute(
                    f"UPDATE {table} SET republish_at = CASE "
                    "WHEN republish_at >= 9e999 THEN republish_at "
                    "WHEN original = 1 THEN MIN(republish_at, :ours) "
                    "ELSE MIN(republish_at, :others) END, "
                    "expires = CASE WHEN expires >= 9e999 THEN expires "
                    f"ELSE MIN(expires, :expires) END WHERE {beyond}", bounds).rowcount
        return capped

    # ------------------------------------------------------------------ records, contacts, meta

    @_reading
    def due_records(self, now: float, limit: int, originals: bool = False,
                    ) -> list[DueRecord]:
        """Soonest first (ties: by key, then kind), with ``originals`` only our own, as
        MemoryStore."""
        ours = _OURS if originals else ""
        return [DueRecord(kind, id_from_bytes(bytes(key)), bytes(data), _record_meta(rest))
                for kind, key, data, *rest in self._db.execute(
                    f"SELECT kind, key, data, {_RECORD_META_COLUMNS} FROM records "
                    f"WHERE {ours}republish_at <= ? ORDER BY republish_at, key, kind LIMIT ?",
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
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, id_to_bytes(key), data, meta.expires, meta.republish_at,
                 int(meta.original), meta.source, _owners_blob(meta.owners)))

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
        """The contacts :meth:`save_contacts` saved, without those whose row was damaged on the
        disk (logged with their count): an id that is not 32 bytes, a host that is not an IP
        literal (text that is not UTF-8 included), a port out of 1..65535. Such a contact would
        be sent to, and an address a socket cannot send to closes it."""
        contacts: list[Contact] = []
        damaged = 0
        # The host as its bytes: SQLite's text that is not UTF-8 would fail the whole read.
        for node_id, raw_host, port in self._db.execute(
                "SELECT id, CAST(host AS BLOB), port FROM contacts"):
            try:
                host = raw_host.decode() if isinstance(raw_host, bytes) else None
            except UnicodeDecodeError:
                host = None
            if (host is None or not is_ip_literal(host) or not isinstance(node_id, bytes)
                    or len(node_id) != ID_BYTES or type(port) is not int
                    or not 0 < port < 65536):
                damaged += 1
                continue
            contacts.append(Contact(id_from_bytes(node_id), (host, port)))
        if damaged:
            log.warning("the store %s held %d damaged saved contacts (changed on the disk); "
                        "they were left out", self.path, damaged)
        return contacts

    @_reading
    def get_meta(self, name: str) -> bytes | None:
        """The blob saved as ``name``; a column damaged into a number or text comes back as the
        bytes of its text, for the caller to refuse as any other damaged blob."""
        row = self._db.execute("SELECT CAST(data AS BLOB) FROM meta WHERE name = ?",
                               (name,)).fetchone()
        return None if row is None or row[0] is None else bytes(row[0])

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
        """Close the database (the last connection to it checkpoints the WAL into the file)
        and release its lock (:meth:`_lock_file`), from any thread; idempotent. The lock is
        released even when closing the database fails."""
        try:
            self._db.close()
        finally:
            self._lock.close()

    def __del__(self) -> None:
        """A store dropped without :meth:`close` releases its lock when collected."""
        lock = getattr(self, "_lock", None)
        if lock is not None and not lock.closed:
            self._db.close()
            lock.close()

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
