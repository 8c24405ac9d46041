"""Where a node keeps what it stores for the network, and the rules for keeping it.

Two kinds of items: *values* (bytes under their SHA-256 key) and *entries* (ints in the multimap
set under a key). Each carries :class:`Meta`: when it expires, when this node must next republish
it, whether we are its original publisher, whether it is only a cached copy, and which host sent it
(for per-address quotas). Services (namespaces, /dht records) keep opaque *records* by kind and key,
with the same :class:`Meta` (never a cached copy): a record stored without one (the node's own
identity) never expires and is never republished. A durable store also keeps the routing table's
contacts and the node's identity (``meta`` blobs).

:class:`Store` is the interface the core talks to; :class:`MemoryStore` is the default and
:class:`qadom.sqlite_store.SqliteStore` the durable one. Guarantees of every implementation:

* a write that returns has been applied in full (and, for a durable store, committed); a write
  that raises (:class:`~qadom.errors.StorageFull`, also for a durable store's full disk, its
  subclass :class:`~qadom.errors.StorageUnavailable` for a database that cannot be written now,
  or InvalidArgument for a record's bad :class:`Meta`) changed nothing;
* a read of a durable store whose database cannot be read now (a failing disk, a damaged
  file) raises :class:`~qadom.errors.StorageUnavailable` and changed nothing, never the
  database's own error; :class:`MemoryStore` never refuses a read;
* an expired item is never returned once :meth:`Store.expire` has dropped it (a bounded batch
  per call, the soonest expired first), and :meth:`Store.get_value`, :meth:`Store.get_record` and
  :meth:`Store.entries_after` with ``now`` never return an expired one;
* quotas (:class:`Quotas`) hold at every moment: no write takes the store past them, and a
  store that holds more than they allow (opened with lower limits than it was filled under) only
  shrinks, while what it holds is still rewritten in place (:meth:`Quotas.replace`);
* :meth:`Store.stats` costs O(1) (a remote peer may ask for it): its counts are kept as the store
  changes, and equal a fresh count of what it holds after every write, refused or not.

Eviction rule: a full store *refuses* new items rather than evicting stored ones, because an item
held as one of the k replicas is a promise to the network. Only cached copies (which the network
can always rebuild) make room: when a write that is not itself a cached copy would exceed the
total quotas, cached copies are evicted, soonest-expiring first. Expired items free their room
when :meth:`Store.expire` drops them (every ``maintenance_interval``, a bounded batch at a time).
"""

from __future__ import annotations

import bisect
import heapq
import itertools
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from sortedcontainers import SortedList

from .config import Config
from .contact import Contact
from .errors import InvalidArgument, StorageFull
from .ids import ID_SPACE

ENTRY_SIZE = 32
"""Bytes a multimap entry counts for in quotas (its 256-bit value)."""

EXPIRE_BATCH = 4096
"""The most items and records one :meth:`Store.expire` of :class:`MemoryStore` and
:class:`~qadom.sqlite_store.SqliteStore` drops (their ``expire_batch``): a few tens of
milliseconds of the event loop. A node sweeps every ``maintenance_interval``, so more expiring at
once are dropped over the next ticks; until then every read that gives the time skips them."""

NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Meta:
    """The bookkeeping of one stored item."""

    expires: float
    """When the item stops being served (original items never expire while published)."""
    republish_at: float = NEVER
    """When this node must next republish the item to the k closest (NEVER: not at all)."""
    original: bool = False
    """We published it: renewed every ``publisher_renew_after`` (about 23 h) until forgotten."""
    cached: bool = False
    """A cached copy along a lookup path: never republished, first to be evicted."""
    source: str = ""
    """The host of the peer that sent it (for IPv6 its /64, :func:`~qadom.contact.host_key`),
    for the per-host quotas; "" when stored locally."""
    owners: frozenset[bytes] | None = None
    """Of a /dht record we put (``original``): the owners (compressed public keys) whose
    entries we wrote ourselves. Only a client's newer entry of one of them, written through
    another node, ends our publishing of the record (see
    :meth:`qadom.dhtrecords.DhtRecordService._handle_put`). None for every other item (one
    pointer, nothing more, for the values that make most of a store), and for a record of ours
    kept before its owners were: every owner it holds then counts as ours (as all did before)."""


@dataclass(frozen=True, slots=True)
class Due:
    """An item whose republish time has come: a value (bytes) or an entry (int)."""

    key: int
    item: bytes | int
    meta: Meta


@dataclass(frozen=True, slots=True)
class DueRecord:
    """A service record whose republish time has come."""

    kind: str
    key: int
    data: bytes
    meta: Meta


# ----------------------------------------------------------------------------- lifecycle rules
# The bookkeeping of records follows the rules the node applies to values (paper section 2.5):
# a TTL travels with every copy, storers republish hourly with what is left of it, the original
# publisher every 24 hours with a fresh one.


def published_meta(now: float, config: Config, *,
                   owners: frozenset[bytes] | None = None) -> Meta:
    """The bookkeeping of an item we publish ourselves: a full lifetime, renewed every
    ``publisher_renew_after`` (about 23 hours) until forgotten; ``owners`` as :attr:`Meta.owners`
    says (a /dht record's only)."""
    return Meta(now + config.expire_time, now + config.publisher_renew_after,
                original=True, owners=owners)


def received_meta(old: Meta | None, ttl: int, now: float, config: Config, source: str, *,
                  same: bool) -> Meta:
    """The bookkeeping of a record that host ``source`` sent with ``ttl`` (positive) seconds to
    live, when the live record we hold has ``old`` (None: we hold none).

    Its lifetime is the TTL capped at ``expire_time``. When the record sent is the one we hold
    (``same``) the lifetime we hold is never shortened and its first sender stays charged for
    it; a new version lives by its own TTL and is charged to its sender. Receiving it counts as
    this hour's republish. A record we publish ourselves keeps our bookkeeping, schedule, charge
    and :attr:`Meta.owners` alike (an original's ``source`` is never moved to a remote host): a
    caller that receives a version that replaces ours passes ``old`` None, which ends our
    publishing of it (the received version is then a storer's copy, renewed by its own
    publisher)."""
    if old is not None and old.original:
        return old
    expires = now + min(float(ttl), config.expire_time)
    republish_at = now + config.republish_interval
    if old is not None and same:
        return Meta(max(expires, old.expires), republish_at, source=old.source)
    return Meta(expires, republish_at, source=source)


def republish_schedule(meta: Meta, now: float, config: Config) -> tuple[Meta, int]:
    """The bookkeeping after republishing a record now, and the TTL to send with it (nothing is
    sent below 1 s): a fresh lifetime from its original publisher, what is left of it from a
    storer. A record kept with no expiry (stored before records had a lifecycle) gets a full one
    from its first republish."""
    if meta.original:
        ttl = config.expire_time
        return replace(meta, expires=now + ttl,
                       republish_at=now + config.publisher_renew_after), int(ttl)
    if meta.expires == NEVER:
        meta = replace(meta, expires=now + config.expire_time)
    ttl = min(meta.expires - now, config.expire_time)
    republish_at = now + config.republish_interval if ttl >= 1 else NEVER
    return replace(meta, republish_at=republish_at), int(ttl)


def remaining_ttl(meta: Meta | None, now: float, config: Config) -> int:
    """What is left of a record's lifetime as a TTL to send (read repair): whole seconds, at
    least 1 and at most ``expire_time``; a full lifetime for a record kept with no expiry."""
    cap = int(config.expire_time)
    if meta is None or meta.expires == NEVER:
        return cap
    return max(1, min(cap, int(meta.expires - now)))


def record_meta(source: str, meta: Meta | None) -> Meta:
    """The bookkeeping a :meth:`Store.put_record` call asks for (see there)."""
    if meta is None:
        return Meta(NEVER, source=source)
    if meta.cached:
        raise InvalidArgument("a service record is never a cached copy")
    if source and source != meta.source:
        raise InvalidArgument("give the source of a record with meta in its Meta")
    return meta


class Quotas:
    """Bytes and items stored, in total and per sending host, against the configured limits."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.total_bytes = 0
        self.total_items = 0
        self.cached_bytes = 0  # the part of the totals held by cached copies (evictable)
        self.cached_items = 0
        self._by_source: dict[str, list[int]] = {}
        # Inside transaction(): the per-source counts as they were before it touched them.
        self._touched: dict[str, list[int] | None] | None = None

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Undo every change made inside the block if it raises, in time proportional to the
        hosts it touched (a durable store's rolled-back write leaves the counts as they were,
        without counting its file again)."""
        totals = (self.total_bytes, self.total_items, self.cached_bytes, self.cached_items)
        touched: dict[str, list[int] | None] = {}
        self._touched = touched
        try:
            yield
        except BaseException:
            self.total_bytes, self.total_items, self.cached_bytes, self.cached_items = totals
            for source, used in touched.items():
                if used is None:
                    self._by_source.pop(source, None)
                else:
                    self._by_source[source] = used
            raise
        finally:
            self._touched = None

    def _touch(self, source: str) -> None:
        if self._touched is not None and source not in self._touched:
            used = self._by_source.get(source)
            self._touched[source] = None if used is None else list(used)

    def check(self, source: str, size: int, *, freeable: int = 0, freeable_items: int = 0,
              ) -> None:
        """Raise StorageFull unless one more item of ``size`` bytes fits (``freeable`` bytes in
        ``freeable_items`` evictable items may be counted as free)."""
        cfg = self.config
        if self.total_items + 1 - freeable_items > cfg.max_store_items or (
                self.total_bytes + size - freeable > cfg.max_store_bytes):
            raise StorageFull("this node's storage is full")
        if source:
            used = self._by_source.get(source, [0, 0])
            if used[0] + size > cfg.max_bytes_per_source or used[1] + 1 > cfg.max_items_per_source:
                raise StorageFull(f"storage quota for {source} is exhausted")

    def check_own(self, size: int, replaced: int | None = None, *, pending: int = 0,
                  pending_items: int = 0) -> None:
        """Raise StorageFull unless one item of our own of ``size`` bytes fits, counting cached
        copies, which the store evicts for our items, as room: a new item when ``replaced`` is
        None, else one that takes the place of ``replaced`` bytes held in place (no new item, and
        those bytes free; one no larger always fits, as :meth:`replace` admits it). What a write
        checks before it sends anything, so that one we could not keep never reaches the
        network. ``pending`` bytes in ``pending_items`` new items of our own, of writes on their
        way that passed this check and are not stored yet, count as taken."""
        if replaced is None:
            self.check("", size + pending, freeable=self.cached_bytes,
                       freeable_items=self.cached_items - pending_items)
        elif size > replaced and (self.total_bytes - replaced + size
                                  > self.config.max_store_bytes + self.cached_bytes):
            raise StorageFull("this node's storage is full")

    def make_room(self, source: str, size: int, cached: bool,
                  victims: Callable[[], Iterable[tuple[Any, int]]],
                  drop: Callable[[Any], None]) -> None:
        """Admit one more item of ``size`` bytes from ``source`` or raise StorageFull.

        If only the total quotas stand in the way and the newcomer is not itself a cached copy,
        cached copies make room: ``victims()`` yields them as ``(handle, size)``, soonest-expiring
        first, and ``drop(handle)`` deletes one (and must account for it here). Nothing is dropped
        unless dropping is enough, and a refusal costs no scan (the cached totals are kept)."""
        try:
            self.check(source, size)
            return
        except StorageFull:
            if cached:
                raise
        self.check(source, size, freeable=self.cached_bytes, freeable_items=self.cached_items)
        for handle, _ in victims():
            drop(handle)
            try:
                self.check(source, size)
                return
            except StorageFull:
                continue

    def replace(self, old_source: str, old_size: int, new_source: str, new_size: int, *,
                old_cached: bool = False, new_cached: bool = False,
                victims: Callable[[], Iterable[tuple[Any, int]]] | None = None,
                drop: Callable[[Any], None] | None = None) -> None:
        """Account for an item replaced in place by a version of ``new_size`` bytes from
        ``new_source``; StorageFull, changing nothing, if it does not fit.

        A version no larger than the one it replaces always fits the total quotas, and also
        the per-host ones when it comes from the same host: a store may hold more than its
        limits allow (restarted with lower ones, or with rows charged anew to their host, see
        :class:`~qadom.sqlite_store.SqliteStore`), and the rewrite of an item's bookkeeping
        (a republish, a refresh of a replica) must not be refused for what it already holds,
        else the item would never be renewed again. A larger version that only the total bytes
        stand in the way of makes room as a new item does (:meth:`make_room`) when ``victims``
        and ``drop`` are given and neither version is a cached copy: ``victims()`` must not
        yield the item replaced."""
        cfg = self.config
        grows = new_size > old_size
        over = self.total_bytes - old_size + new_size - cfg.max_store_bytes
        freeable = 0 if victims is None or old_cached or new_cached else self.cached_bytes
        if grows and over > freeable:
            raise StorageFull("this node's storage is full")
        if new_source and (grows or new_source != old_source):
            used_bytes, used_items = self._by_source.get(new_source, [0, 0])
            if new_source == old_source:
                used_bytes, used_items = used_bytes - old_size, used_items - 1
            if (used_bytes + new_size > cfg.max_bytes_per_source
                    or used_items + 1 > cfg.max_items_per_source):
                raise StorageFull(f"storage quota for {new_source} is exhausted")
        if grows and over > 0 and victims is not None and drop is not None:
            for handle, _ in victims():
                drop(handle)
                if self.total_bytes - old_size + new_size <= cfg.max_store_bytes:
                    break
        self.remove(old_source, old_size, old_cached)
        self.add(new_source, new_size, new_cached)

    def add(self, source: str, size: int, cached: bool = False) -> None:
        self.load(source, size, 1)
        if cached:
            self.cached_bytes += size
            self.cached_items += 1

    def remove(self, source: str, size: int, cached: bool = False) -> None:
        self.unload(source, size, 1)
        if cached:
            self.cached_bytes -= size
            self.cached_items -= 1

    def load(self, source: str, size: int, items: int) -> None:
        """Account for ``items`` items of ``size`` bytes in all, already stored."""
        self.total_bytes += size
        self.total_items += items
        if source:
            self._touch(source)
            used = self._by_source.setdefault(source, [0, 0])
            used[0] += size
            used[1] += items

    def unload(self, source: str, size: int, items: int) -> None:
        """Stop accounting for ``items`` items of ``size`` bytes in all."""
        self.total_bytes -= size
        self.total_items -= items
        if source:
            self._touch(source)
            used = self._by_source[source]
            used[0] -= size
            used[1] -= items
            if used[1] <= 0:
                del self._by_source[source]


@runtime_checkable
class Store(Protocol):
    """What the protocol core needs from storage (see the module docstring for guarantees).
    ``isinstance(obj, Store)`` checks that every attribute and method is there (not their
    signatures)."""

    quotas: Quotas
    """What the store holds, counted against the limits (``total_items``: how many items)."""

    def get_value(self, key: int, now: float | None = None) -> bytes | None: ...

    def value_meta(self, key: int) -> Meta | None: ...

    def get_value_and_meta(self, key: int, now: float) -> tuple[bytes, Meta] | None:
        """What :meth:`get_value` and :meth:`value_meta` answer together, in one read."""
        ...

    def put_value(self, key: int, value: bytes, meta: Meta) -> None:
        """Store or update a value; raises StorageFull (changing nothing) when over quota."""
        ...

    def entry_meta(self, key: int, value: int) -> Meta | None: ...

    def add_entry(self, key: int, value: int, meta: Meta) -> bool:
        """Add or update an entry; True if it was new. Raises StorageFull when over quota."""
        ...

    def entries_after(self, key: int, after: int | None, limit: int, now: float | None = None,
                      ) -> tuple[list[int], bool]:
        """Up to ``limit`` values of the set under ``key`` greater than ``after``, ascending, and
        whether more follow.

        With ``now``, entries expired at ``now`` (as :meth:`expire` would drop them) are skipped
        as if they were gone: the page is short only when no live entry follows it, and "more"
        means a live one does. Such a read may drop, as :meth:`expire` would, some of the
        expired entries it steps over (MemoryStore and SqliteStore drop up to their
        ``expire_batch``), so ``now`` must be the present. A ``limit`` below one is taken as
        0."""
        ...

    def due(self, now: float, limit: int, originals: bool = False) -> list[Due]:
        """Up to ``limit`` items whose republish time is at or before ``now``, soonest first;
        with ``originals``, only our own (:attr:`Meta.original`), which the node renews before
        the others."""
        ...

    def due_records(self, now: float, limit: int, originals: bool = False,
                    ) -> list[DueRecord]:
        """Up to ``limit`` service records whose republish time is at or before ``now``,
        soonest first; with ``originals``, only our own."""
        ...

    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        """Up to ``limit`` values, entries and service records (cached copies excepted) whose key
        is in ``[lo, hi)``, whatever their schedule: what a node hands to a new neighbour."""
        ...

    def expire(self, now: float) -> int:
        """Drop items and records expired at ``now`` (original ones excepted), the soonest
        expired first; returns how many. A store may bound the work of one call (MemoryStore and
        SqliteStore drop at most their ``expire_batch``, :data:`EXPIRE_BATCH` by default): a
        call that returns that many may have left more for the next call, and the reads that
        give ``now`` skip those meanwhile."""
        ...

    def forget(self, key: int) -> bool:
        """Stop republishing ``key`` as its original publisher (values, entries and records of
        every kind); they then expire as any other. True if anything was ours."""
        ...

    def renew_originals(self, before: float, expires: float) -> int:
        """Give every item and record of ours (original) whose lifetime ends before ``before``,
        or that has none (a record stored before records had a lifecycle), the lifetime
        ``expires``, keeping its republish time (it stays due); returns how many. What a node
        does before it serves: restarted after its own items' lifetime lapsed, or on a store
        migrated from before records had a lifecycle (see :class:`~qadom.node.Node`)."""
        ...

    def cap_times(self, ours: float, others: float, expires: float) -> int:
        """Bring back every saved time that lies later than a write could set it now, and
        return how many items and records changed: the republish time of our own items and
        records (``original``) to at most ``ours``, that of the others (held for their
        publishers) to at most ``others``, and the lifetime of every one to at most
        ``expires``. NEVER stays NEVER (an item kept off the schedule, a record that never
        expires). What a node does before it serves (see :class:`~qadom.node.Node`): times are
        kept as the node's clock read them, and one restarted with its clock set back would
        otherwise wait out the time its clock was ahead, its replicas expiring meanwhile."""
        ...

    def get_record(self, kind: str, key: int, now: float | None = None) -> bytes | None:
        """The record of ``kind`` (a service's name, e.g. ``"namespace"``) stored under ``key``
        (with ``now``: unless it has expired)."""
        ...

    def record_meta(self, kind: str, key: int) -> Meta | None: ...

    def put_record(self, kind: str, key: int, data: bytes, now: float, source: str = "",
                   meta: Meta | None = None) -> None:
        """Store (or replace) one service record with its bookkeeping ``meta``, whose ``source``
        is the sending host ("" when local). Without ``meta`` the record has no lifecycle (it
        never expires and is never republished) and is charged to ``source``. Services check
        their own rules first. Records count against the total and per-host quotas; StorageFull
        (nothing changed) past them. InvalidArgument for a cached ``meta`` or a ``source`` that
        contradicts it."""
        ...

    def delete_record(self, kind: str, key: int) -> None: ...

    def save_contacts(self, contacts: Iterable[Contact]) -> None:
        """Replace the saved routing-table contacts (a durable store keeps them for a restart).
        No contacts at all (a node restarted and not yet rejoined, or one whose every contact
        failed while its network was down) keep those saved: they are its way back."""
        ...

    def load_contacts(self) -> list[Contact]: ...

    def get_meta(self, name: str) -> bytes | None:
        """A node-level blob (identity, keys) saved under ``name``."""
        ...

    def set_meta(self, name: str, data: bytes) -> None: ...

    def stats(self) -> dict[str, int]:
        """What the store holds, in O(1): ``values`` and ``value_bytes`` (their total length),
        ``entry_keys`` (keys with at least one entry) and ``entries``, ``records``, and
        ``stored_bytes`` (all of it as counted against the quotas)."""
        ...

    def close(self) -> None: ...


class MemoryStore:
    """A :class:`Store` in process memory; everything is lost when the process ends.

    Once it holds :data:`INDEX_AT` items, indexed so that the periodic work (every
    ``maintenance_interval``, on a store of up to ``max_store_items`` items, a million by
    default, in the event loop) costs time in proportion to what it finds, times a log factor,
    not to everything held; each write then pays O(log n) more to keep the indexes (each holds
    one tuple per item it orders, plus bounded garbage), and keeps them from then on. A smaller
    store scans what it holds, which costs less than keeping indexes would (a node holds about
    k / N of what a network of N nodes stores: a few hundred items in the benchmarks and the
    simulator), and answers every query exactly as the indexes would:

    * :meth:`expire` reads time indexes by expiry (original items have no entry: they never
      expire), :meth:`due` and :meth:`due_records` time indexes by republish time (items kept
      off the schedule, ``republish_at`` NEVER, have none; with ``originals``, indexes of our
      own items and records only), eviction a time index of the cached copies by expiry; see
      :class:`_TimeIndex` for how they stay exact and bounded as items are replaced with a new
      :class:`Meta` at every update;
    * :meth:`held_between` reads a sorted index of the keys it could hand over (a value that is
      not a cached copy, an entry, or a record with a lifecycle), then those keys' items;
    * :meth:`forget` reads the items under its key only (records through an index of the kinds
      stored under each key).

    Every write updates the indexes only once it has been admitted, so a refused write changes
    none of them. :meth:`due` returns the soonest-due items first (ties: by key, a value before
    the entries under its key, entries by value), :meth:`due_records` likewise (ties: by key,
    then kind); neither consumes them: an item stays due until its Meta changes.
    :meth:`held_between` returns items by ascending key (under one key: its value, its entries
    by value, its records by kind)."""

    def __init__(self, config: Config | None = None) -> None:
        self.quotas = Quotas(config or Config())
        self.expire_batch = EXPIRE_BATCH
        """The most items and records one :meth:`expire` call drops."""
        self._values: dict[int, tuple[bytes, Meta]] = {}
        self._sets: dict[int, list[int]] = {}
        self._entries: dict[tuple[int, int], Meta] = {}
        self._records: dict[tuple[str, int], tuple[bytes, Meta]] = {}
        self._kinds: dict[int, list[str]] = {}  # key -> the kinds of record under it, sorted
        self._value_bytes = 0  # the total length of the values (the dicts count the rest)
        self._contacts: list[Contact] = []
        self._meta: dict[str, bytes] = {}
        # The indexes, built once the store holds INDEX_AT items (_build_index). Heap entries:
        # (time, key) for values, (time, key, value) for entries, (time, key, kind) for
        # records; each index asks the store for the item's time now.
        self._indexed = False
        self._value_expiry: _TimeIndex
        self._entry_expiry: _TimeIndex
        self._record_expiry: _TimeIndex
        self._value_republish: _TimeIndex
        self._entry_republish: _TimeIndex
        self._record_republish: _TimeIndex
        # Our own (original) items and records only, by republish time: the renewals the node
        # sends before the others (due with originals). Values and entries share one index, as
        # due merges them: (time, key) and (time, key, value).
        self._item_renewal: _TimeIndex
        self._record_renewal: _TimeIndex
        self._evictable: _TimeIndex
        # The keys held_between may return something under, in order (O(log n) to add or
        # discard one, O(log n + what it yields) to read a range).
        self._keys: SortedList
        if INDEX_AT <= 0:
            self._build_index()

    # ------------------------------------------------------------------ values

    def get_value(self, key: int, now: float | None = None) -> bytes | None:
        held = self._values.get(key)
        if held is None or (now is not None and _expired(held[1], now)):
            return None
        return held[0]

    def value_meta(self, key: int) -> Meta | None:
        held = self._values.get(key)
        return None if held is None else held[1]

    def get_value_and_meta(self, key: int, now: float) -> tuple[bytes, Meta] | None:
        held = self._values.get(key)
        return None if held is None or _expired(held[1], now) else held

    def put_value(self, key: int, value: bytes, meta: Meta) -> None:
        old = self._values.get(key)
        if old is None:
            self._make_room(meta.source, len(value), meta.cached)
            self.quotas.add(meta.source, len(value), meta.cached)
        else:
            self.quotas.replace(old[1].source, len(old[0]), meta.source, len(value),
                                old_cached=old[1].cached, new_cached=meta.cached)
            self._value_bytes -= len(old[0])
        self._values[key] = (value, meta)
        self._value_bytes += len(value)
        if old is None:
            self._index_value(key, None, meta)
            self._grew()
        else:
            self._index_value(key, old[1], meta)

    # ------------------------------------------------------------------ entries

    def entry_meta(self, key: int, value: int) -> Meta | None:
        return self._entries.get((key, value))

    def add_entry(self, key: int, value: int, meta: Meta) -> bool:
        old = self._entries.get((key, value))
        if old is not None:
            self.quotas.replace(old.source, ENTRY_SIZE, meta.source, ENTRY_SIZE)
            self._entries[(key, value)] = meta
            self._index_entry(key, value, old, meta)
            return False
        self._make_room(meta.source, ENTRY_SIZE, meta.cached)
        self.quotas.add(meta.source, ENTRY_SIZE)
        self._entries[(key, value)] = meta
        values = self._sets.get(key)
        if values is None:
            self._sets[key] = [value]
            if self._indexed and key not in self._keys:  # every entry is handed over
                self._keys.add(key)
        else:
            bisect.insort(values, value)
        self._index_entry(key, value, None, meta)
        self._grew()
        return True

    def entries_after(self, key: int, after: int | None, limit: int, now: float | None = None,
                      ) -> tuple[list[int], bool]:
        """See :meth:`Store.entries_after`. With ``now``, the entries expired since the last
        sweep that the page steps over are dropped (as :meth:`expire` drops them), at most
        :attr:`expire_batch` of them (as one :meth:`expire`; the others are only stepped over),
        so each is met by few calls: a search does not pay for every expired entry of the key
        at every SEARCH until the sweep."""
        limit = max(0, limit)
        values = self._sets.get(key, [])
        start = 0 if after is None else bisect.bisect_right(values, after)
        if now is None:
            return values[start:start + limit], start + limit < len(values)
        page: list[int] = []
        dead: list[int] = []
        more = False
        end = len(values)
        for i in range(start, len(values)):
            value = values[i]
            if _expired(self._entries[(key, value)], now):
                if len(dead) < self.expire_batch:
                    dead.append(value)
            elif len(page) == limit:
                more, end = True, i
                break
            else:
                page.append(value)
        if dead:
            self._drop_entries(key, start, end, dead, now)
        return page, more

    # ------------------------------------------------------------------ schedule

    def due(self, now: float, limit: int, originals: bool = False) -> list[Due]:
        """Up to ``limit`` values and entries whose republish time is at or before ``now``,
        soonest first (see the class docstring), with ``originals`` only our own, in
        O((limit + garbage met) log n)."""
        if limit <= 0:
            return []
        soonest: Iterable[tuple[Any, ...]]
        if self._indexed and originals:
            soonest = self._item_renewal.peek(self, now, limit)
        elif self._indexed:
            soonest = heapq.merge(self._value_republish.peek(self, now, limit),
                                  self._entry_republish.peek(self, now, limit))
        else:
            values = heapq.nsmallest(limit, ((m.republish_at, k) for k, (_, m)
                                             in self._values.items()
                                             if _due(m, now) and (m.original or not originals)))
            entries = heapq.nsmallest(limit, ((m.republish_at, k, v) for (k, v), m
                                              in self._entries.items()
                                              if _due(m, now) and (m.original or not originals)))
            soonest = heapq.merge(values, entries)
        found: list[Due] = []
        # (time, key) sorts before (time, key, value): a value before the entries under its key.
        for entry in itertools.islice(soonest, limit):
            if len(entry) == 2:
                value, meta = self._values[entry[1]]
                found.append(Due(entry[1], value, meta))
            else:
                found.append(Due(entry[1], entry[2], self._entries[(entry[1], entry[2])]))
        return found

    def due_records(self, now: float, limit: int, originals: bool = False,
                    ) -> list[DueRecord]:
        """Up to ``limit`` service records whose republish time is at or before ``now``,
        soonest first (ties by key, then kind), with ``originals`` only our own, in
        O((limit + garbage met) log n)."""
        found: list[DueRecord] = []
        if limit <= 0:
            return found
        if self._indexed:
            index = self._record_renewal if originals else self._record_republish
            records = index.peek(self, now, limit)
        else:
            records = heapq.nsmallest(limit, ((m.republish_at, k, kind) for (kind, k), (_, m)
                                              in self._records.items()
                                              if _due(m, now) and (m.original or not originals)))
        for _, key, kind in records:
            data, meta = self._records[(kind, key)]
            found.append(DueRecord(kind, key, data, meta))
        return found

    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        """See :meth:`Store.held_between`: by ascending key, in O(log n + what it returns)."""
        found: list[Due | DueRecord] = []
        if limit <= 0:
            return found
        keys: Iterable[int] = (self._keys.irange(lo, hi, inclusive=(True, False))
                               if self._indexed else sorted(self._handed_keys(lo, hi)))
        for key in keys:
            held = self._values.get(key)
            if held is not None and not held[1].cached:
                found.append(Due(key, held[0], held[1]))
                if len(found) >= limit:
                    return found
            for item in self._sets.get(key, ()):
                found.append(Due(key, item, self._entries[(key, item)]))
                if len(found) >= limit:
                    return found
            for kind in self._kinds.get(key, ()):
                data, meta = self._records[(kind, key)]
                if _has_lifecycle(meta):
                    found.append(DueRecord(kind, key, data, meta))
                    if len(found) >= limit:
                        return found
        return found

    def expire(self, now: float) -> int:
        """See :meth:`Store.expire`: at most :attr:`expire_batch` items and records, the soonest
        expired first, in O((dropped + garbage met) log n)."""
        batch = max(0, self.expire_batch)
        # (expiry, kind of item, entry of its index): 0 a value, 1 an entry, 2 a record.
        found: list[tuple[float, int, tuple[Any, ...]]]
        if self._indexed:
            found = [(e[0], tag, e) for tag, index in enumerate(
                (self._value_expiry, self._entry_expiry, self._record_expiry))
                for e in index.pop(self, now, batch)]
        else:
            found = [(m.expires, 0, (m.expires, k)) for k, (_, m) in self._values.items()
                     if _dead(m, now)]
            found += [(m.expires, 1, (m.expires, *ke)) for ke, m in self._entries.items()
                      if _dead(m, now)]
            found += [(m.expires, 2, (m.expires, k, kind))
                      for (kind, k), (_, m) in self._records.items() if _dead(m, now)]
        found.sort(key=lambda item: item[:2])
        if self._indexed:  # popped but left for the next call: back into their indexes
            indexes = (self._value_expiry, self._entry_expiry, self._record_expiry)
            for _, tag, entry in found[batch:]:
                indexes[tag].put_back(entry)
        for _, tag, entry in found[:batch]:
            if tag == 0:
                self._drop_value(entry[1])
            elif tag == 1:
                self._drop_entry(entry[1], entry[2])
            else:
                self.delete_record(entry[2], entry[1])
        return min(len(found), batch)

    def forget(self, key: int) -> bool:
        """See :meth:`Store.forget`: reads only what is stored under ``key``."""
        mine = False
        held = self._values.get(key)
        if held is not None and held[1].original:
            meta = replace(held[1], original=False, republish_at=NEVER)
            self._values[key] = (held[0], meta)
            self._index_value(key, held[1], meta)
            mine = True
        for value in self._sets.get(key, ()):
            old = self._entries[(key, value)]
            if old.original:
                meta = replace(old, original=False, republish_at=NEVER)
                self._entries[(key, value)] = meta
                self._index_entry(key, value, old, meta)
                mine = True
        for kind in self._kinds.get(key, ()):
            data, old = self._records[(kind, key)]
            if old.original:
                meta = replace(old, original=False, republish_at=NEVER)
                self._records[(kind, key)] = (data, meta)
                self._index_record(kind, key, old, meta)
                mine = True
        return mine

    def renew_originals(self, before: float, expires: float) -> int:
        """See :meth:`Store.renew_originals`: a scan of everything held (no index orders the
        originals by expiry), done once, when a node starts; a store that lives in memory only
        is then empty, unless handed over from a node before."""
        renewed = 0
        for key, (blob, old) in list(self._values.items()):
            if old.original and (old.expires < before or old.expires == NEVER):
                meta = replace(old, expires=expires)
                self._values[key] = (blob, meta)
                self._index_value(key, old, meta)
                renewed += 1
        for (key, value), old in list(self._entries.items()):
            if old.original and (old.expires < before or old.expires == NEVER):
                meta = replace(old, expires=expires)
                self._entries[(key, value)] = meta
                self._index_entry(key, value, old, meta)
                renewed += 1
        for (kind, key), (data, old) in list(self._records.items()):
            if old.original and (old.expires < before or old.expires == NEVER):
                meta = replace(old, expires=expires)
                self._records[(kind, key)] = (data, meta)
                self._index_record(kind, key, old, meta)
                renewed += 1
        return renewed

    def cap_times(self, ours: float, others: float, expires: float) -> int:
        """See :meth:`Store.cap_times`: a scan of everything held, done once, when a node starts
        (as :meth:`renew_originals`)."""
        capped = 0
        for key, (blob, old) in list(self._values.items()):
            meta = _capped(old, ours, others, expires)
            if meta is not old:
                self._values[key] = (blob, meta)
                self._index_value(key, old, meta)
                capped += 1
        for (key, value), old in list(self._entries.items()):
            meta = _capped(old, ours, others, expires)
            if meta is not old:
                self._entries[(key, value)] = meta
                self._index_entry(key, value, old, meta)
                capped += 1
        for (kind, key), (data, old) in list(self._records.items()):
            meta = _capped(old, ours, others, expires)
            if meta is not old:
                self._records[(kind, key)] = (data, meta)
                self._index_record(kind, key, old, meta)
                capped += 1
        return capped

    # ------------------------------------------------------------------ records, contacts, meta

    def get_record(self, kind: str, key: int, now: float | None = None) -> bytes | None:
        held = self._records.get((kind, key))
        if held is None or (now is not None and _expired(held[1], now)):
            return None
        return held[0]

    def record_meta(self, kind: str, key: int) -> Meta | None:
        held = self._records.get((kind, key))
        return None if held is None else held[1]

    def put_record(self, kind: str, key: int, data: bytes, now: float, source: str = "",
                   meta: Meta | None = None) -> None:
        meta = record_meta(source, meta)
        old = self._records.get((kind, key))
        if old is None:
            self._make_room(meta.source, len(data), False)
            self.quotas.add(meta.source, len(data))
            bisect.insort(self._kinds.setdefault(key, []), kind)
        else:  # a newer version is charged to the host that sent it
            self.quotas.replace(old[1].source, len(old[0]), meta.source, len(data),
                                victims=self._victims, drop=self._drop_value)
        self._records[(kind, key)] = (data, meta)
        self._index_record(kind, key, None if old is None else old[1], meta)
        if old is None:
            self._grew()

    def delete_record(self, kind: str, key: int) -> None:
        old = self._records.pop((kind, key), None)
        if old is not None:
            self.quotas.remove(old[1].source, len(old[0]))
            kinds = self._kinds[key]
            kinds.remove(kind)
            if not kinds:
                del self._kinds[key]
            self._index_record(kind, key, old[1], None)

    def save_contacts(self, contacts: Iterable[Contact]) -> None:
        saved = list(contacts)
        if saved:  # an empty routing table keeps the contacts to rejoin through
            self._contacts = saved

    def load_contacts(self) -> list[Contact]:
        return list(self._contacts)

    def get_meta(self, name: str) -> bytes | None:
        return self._meta.get(name)

    def set_meta(self, name: str, data: bytes) -> None:
        self._meta[name] = data

    def stats(self) -> dict[str, int]:
        return {
            "values": len(self._values),
            "value_bytes": self._value_bytes,
            "entry_keys": len(self._sets),
            "entries": len(self._entries),
            "records": len(self._records),
            "stored_bytes": self.quotas.total_bytes,
        }

    def close(self) -> None:
        return None

    def values(self) -> Iterator[tuple[int, bytes, Meta]]:
        """Every stored value with its key and bookkeeping (for inspection and tests)."""
        for key, (value, meta) in self._values.items():
            yield key, value, meta

    # ------------------------------------------------------------------ internals

    def _make_room(self, source: str, size: int, cached: bool) -> None:
        self.quotas.make_room(source, size, cached, self._victims, self._drop_value)

    def _victims(self) -> Iterator[tuple[Any, int]]:  # only called when eviction will be enough
        """The cached copies, soonest-expiring first, ties by key, as ``(key, size)``."""
        soonest: Iterable[tuple[Any, ...]] = (
            self._evictable.drain(self) if self._indexed else
            sorted((m.expires, k) for k, (_, m) in self._values.items() if m.cached))
        for _, key in soonest:
            yield key, len(self._values[key][0])

    def _drop_value(self, key: int) -> None:
        value, meta = self._values.pop(key)
        self.quotas.remove(meta.source, len(value), meta.cached)
        self._value_bytes -= len(value)
        self._index_value(key, meta, None)

    def _drop_entries(self, key: int, start: int, end: int, dead: list[int], now: float) -> None:
        """Drop the entries ``dead`` under ``key``, expired at ``now`` and all at positions
        ``start`` to ``end`` of its set, in O(end - start) plus O(log n) for each (one by one,
        :meth:`_drop_entry` would shift the set's list once per entry). An entry that
        :meth:`expire` would keep (one that never expires, when ``now`` is infinite) is kept."""
        gone = {value for value in dead if _dead(self._entries[(key, value)], now)}
        if not gone:
            return
        values = self._sets[key]
        values[start:end] = [value for value in values[start:end] if value not in gone]
        for value in gone:
            meta = self._entries.pop((key, value))
            self.quotas.remove(meta.source, ENTRY_SIZE)
            self._index_entry(key, value, meta, None)
        if not values:
            del self._sets[key]
            self._reindex(key)

    def _drop_entry(self, key: int, value: int) -> None:
        meta = self._entries.pop((key, value))
        self.quotas.remove(meta.source, ENTRY_SIZE)
        values = self._sets[key]
        del values[bisect.bisect_left(values, value)]
        if not values:
            del self._sets[key]
            self._reindex(key)
        self._index_entry(key, value, meta, None)

    # The indexes follow every change of an item's Meta (None: the item is not held), once the
    # change is made.

    def _grew(self) -> None:
        """An item was added: build the indexes once the store holds INDEX_AT items."""
        if not self._indexed and self.quotas.total_items >= INDEX_AT:
            self._build_index()

    def _build_index(self) -> None:
        """Index everything held; from now on every change keeps the indexes exact."""
        self._indexed = True
        self._value_expiry = _TimeIndex(_value_expiry)
        self._entry_expiry = _TimeIndex(_entry_expiry)
        self._record_expiry = _TimeIndex(_record_expiry)
        self._value_republish = _TimeIndex(_value_republish)
        self._entry_republish = _TimeIndex(_entry_republish)
        self._record_republish = _TimeIndex(_record_republish)
        self._item_renewal = _TimeIndex(_item_renewal)
        self._record_renewal = _TimeIndex(_record_renewal)
        self._evictable = _TimeIndex(_value_eviction)
        self._keys = SortedList(self._handed_keys(0, ID_SPACE))
        for key, (_, meta) in self._values.items():
            self._value_expiry.moved(self, None, _expiry(meta), key)
            self._value_republish.moved(self, None, _republish(meta), key)
            self._item_renewal.moved(self, None, _renewal(meta), key)
            self._evictable.moved(self, None, _eviction(meta), key)
        for (key, value), meta in self._entries.items():
            self._entry_expiry.moved(self, None, _expiry(meta), key, value)
            self._entry_republish.moved(self, None, _republish(meta), key, value)
            self._item_renewal.moved(self, None, _renewal(meta), key, value)
        for (kind, key), (_, meta) in self._records.items():
            self._record_expiry.moved(self, None, _expiry(meta), key, kind)
            self._record_republish.moved(self, None, _republish(meta), key, kind)
            self._record_renewal.moved(self, None, _renewal(meta), key, kind)

    def _handed_keys(self, lo: int, hi: int) -> set[int]:
        """The keys in ``[lo, hi)`` held_between may return something under (a scan)."""
        keys = {k for k, (_, m) in self._values.items() if lo <= k < hi and not m.cached}
        keys.update(k for k in self._sets if lo <= k < hi)
        keys.update(k for (_, k), (_, m) in self._records.items()
                    if lo <= k < hi and _has_lifecycle(m))
        return keys

    def _index_value(self, key: int, old: Meta | None, new: Meta | None) -> None:
        if not self._indexed:
            return
        self._value_expiry.moved(self, _expiry(old), _expiry(new), key)
        self._value_republish.moved(self, _republish(old), _republish(new), key)
        self._item_renewal.moved(self, _renewal(old), _renewal(new), key)
        if (old is not None and old.cached) or (new is not None and new.cached):
            self._evictable.moved(self, _eviction(old), _eviction(new), key)
        if (old is not None and not old.cached) != (new is not None and not new.cached):
            if old is None and key not in self._sets and key not in self._kinds:
                self._keys.add(key)  # a new value under a key with nothing else: not indexed yet
            else:
                self._reindex(key)

    def _index_entry(self, key: int, value: int, old: Meta | None, new: Meta | None) -> None:
        if not self._indexed:
            return
        self._entry_expiry.moved(self, _expiry(old), _expiry(new), key, value)
        self._entry_republish.moved(self, _republish(old), _republish(new), key, value)
        self._item_renewal.moved(self, _renewal(old), _renewal(new), key, value)

    def _index_record(self, kind: str, key: int, old: Meta | None, new: Meta | None) -> None:
        if not self._indexed:
            return
        self._record_expiry.moved(self, _expiry(old), _expiry(new), key, kind)
        self._record_republish.moved(self, _republish(old), _republish(new), key, kind)
        self._record_renewal.moved(self, _renewal(old), _renewal(new), key, kind)
        if _has_lifecycle(old) != _has_lifecycle(new):
            self._reindex(key)

    def _reindex(self, key: int) -> None:
        """Keep ``key`` in the key index exactly while held_between may return an item under
        it."""
        if not self._indexed:
            return
        held = self._values.get(key)
        keep = ((held is not None and not held[1].cached) or key in self._sets
                or any(_has_lifecycle(self._records[(kind, key)][1])
                       for kind in self._kinds.get(key, ())))
        if keep and key not in self._keys:
            self._keys.add(key)
        elif not keep:
            self._keys.discard(key)


def _capped(meta: Meta, ours: float, others: float, expires: float) -> Meta:
    """``meta`` with its times brought back as :meth:`Store.cap_times` says; ``meta`` itself
    when neither lies beyond its bound."""
    republish_at = ours if meta.original else others
    if meta.republish_at == NEVER or meta.republish_at <= republish_at:
        republish_at = meta.republish_at
    if meta.expires == NEVER or meta.expires <= expires:
        expires = meta.expires
    if republish_at == meta.republish_at and expires == meta.expires:
        return meta
    return replace(meta, republish_at=republish_at, expires=expires)


def _expired(meta: Meta, now: float) -> bool:
    return not meta.original and meta.expires <= now


def _dead(meta: Meta, now: float) -> bool:
    """Whether :meth:`Store.expire` at ``now`` drops the item, as the expiry index says: never
    one that never expires (``now`` infinite included)."""
    expiry = _expiry(meta)
    return expiry is not None and expiry <= now


def _due(meta: Meta, now: float) -> bool:
    """Whether the item is due at ``now``, as the republish index says: never one kept off the
    schedule (``now`` infinite included)."""
    republish_at = _republish(meta)
    return republish_at is not None and republish_at <= now


def _expiry(meta: Meta | None) -> float | None:
    """When :meth:`Store.expire` drops the item; None: never (or not held)."""
    if meta is None or meta.original or meta.expires == NEVER:
        return None
    return meta.expires


def _republish(meta: Meta | None) -> float | None:
    """When the item falls due; None: never (or not held)."""
    return None if meta is None or meta.republish_at == NEVER else meta.republish_at


def _renewal(meta: Meta | None) -> float | None:
    """When our own item falls due; None: never, not ours (or not held)."""
    return _republish(meta) if meta is not None and meta.original else None


def _eviction(meta: Meta | None) -> float | None:
    """The order in which a cached copy makes room (its expiry, NEVER included); None: the
    value is not a cached copy (or not held)."""
    return meta.expires if meta is not None and meta.cached else None


def _has_lifecycle(meta: Meta | None) -> bool:
    """Whether a record is handed over: ours, or one that expires (not the node's identity)."""
    return meta is not None and (meta.original or meta.expires != NEVER)


# The time each index orders an item by, as the store holds it now (entries of the indexes name
# their item as in MemoryStore.__init__). Plain functions given the store, so that the indexes
# hold no reference back to it.

def _value_expiry(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _expiry(store.value_meta(e[1]))


def _entry_expiry(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _expiry(store.entry_meta(e[1], e[2]))


def _record_expiry(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _expiry(store.record_meta(e[2], e[1]))


def _value_republish(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _republish(store.value_meta(e[1]))


def _entry_republish(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _republish(store.entry_meta(e[1], e[2]))


def _record_republish(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _republish(store.record_meta(e[2], e[1]))


def _item_renewal(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _renewal(store.value_meta(e[1]) if len(e) == 2 else store.entry_meta(e[1], e[2]))


def _record_renewal(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _renewal(store.record_meta(e[2], e[1]))


def _value_eviction(store: MemoryStore, e: tuple[Any, ...]) -> float | None:
    return _eviction(store.value_meta(e[1]))


INDEX_AT = 4096
"""Items a :class:`MemoryStore` holds before it builds its indexes. Below, a maintenance tick's
scans of everything held cost about a millisecond, less than keeping indexes would add to the
writes between two ticks. A node of a network of N nodes holds about k / N of the items stored
in it: this many only in a small network holding many items, or as a cache of many lookups."""

_SLACK = 64
"""Garbage entries a :class:`_TimeIndex` may hold beyond as many as its live ones before it is
compacted (so that a small index is not rebuilt at every change)."""


class _TimeIndex:
    """Stored items ordered by one of their times (expiry, republish, eviction): a min-heap of
    ``(time, *handle)`` tuples with lazy deletion.

    ``current(store, entry)`` is the time the item named by the entry's handle has now in
    ``store`` (None when it has none or is no longer held), and an entry is *live* while that
    equals its time. The store is passed to each method that needs it, so the index holds no
    reference to it. Items are
    replaced with a new :class:`Meta` at every update, so instead of finding an item's entry, the
    store calls :meth:`moved` with the item's time before and after each change: a new time gets
    a new entry, and the old entry becomes garbage, skipped and dropped wherever a read meets it.

    Guarantees: every item with a time has a live entry (two equal ones when a time changes and
    comes back before the first is dropped: equal tuples come out of the heap together, and are
    read once); reads cost O(log n) per entry they pop, live or garbage; garbage is bounded: when
    the entries exceed twice the items with a time plus ``_SLACK``, the heap is rebuilt from its
    live entries in O(entries), paid for by the garbage made since the last rebuild (amortized
    O(1) per change)."""

    __slots__ = ("_current", "_heap", "live")

    def __init__(self, current: Callable[[MemoryStore, tuple[Any, ...]], float | None]) -> None:
        self._current = current
        self._heap: list[tuple[Any, ...]] = []
        self.live = 0
        """How many items have a time (each has a live entry)."""

    def __len__(self) -> int:
        """Entries held, live and garbage."""
        return len(self._heap)

    def moved(self, store: MemoryStore, old: float | None, new: float | None,
              *handle: Any) -> None:
        """The item named by ``handle`` had time ``old`` and has ``new`` (None: none, or not
        held)."""
        if old == new:
            return
        if old is not None:
            self.live -= 1
        if new is not None:
            self.live += 1
            heapq.heappush(self._heap, (new, *handle))
        if len(self._heap) > 2 * self.live + _SLACK:
            self._compact(store)

    def peek(self, store: MemoryStore, now: float, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` live entries whose time is at or before ``now``, soonest first; they
        stay in the index (the garbage met on the way does not)."""
        heap, current = self._heap, self._current
        found: list[tuple[Any, ...]] = []
        while heap and len(found) < limit and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if current(store, entry) == entry[0] and (not found or found[-1] != entry):
                found.append(entry)
        for entry in found:
            heapq.heappush(heap, entry)
        return found

    def pop(self, store: MemoryStore, now: float, limit: int) -> list[tuple[Any, ...]]:
        """Up to ``limit`` live entries whose time is at or before ``now``, soonest first, taken
        out: the caller drops each of those items (and reports it with :meth:`moved`), or gives
        it back with :meth:`put_back`."""
        heap, current = self._heap, self._current
        found: list[tuple[Any, ...]] = []
        while heap and len(found) < limit and heap[0][0] <= now:
            entry = heapq.heappop(heap)
            if current(store, entry) == entry[0] and (not found or found[-1] != entry):
                found.append(entry)
        return found

    def put_back(self, entry: tuple[Any, ...]) -> None:
        """Return a live entry :meth:`pop` took out and whose item was not dropped."""
        heapq.heappush(self._heap, entry)

    def drain(self, store: MemoryStore) -> Iterator[tuple[Any, ...]]:
        """The live entries, soonest first, each taken out as it is yielded: the caller drops
        every item it is given before asking for the next."""
        while self._heap:  # read afresh: a drop may compact the heap
            entry = heapq.heappop(self._heap)
            if self._current(store, entry) == entry[0]:
                yield entry

    def _compact(self, store: MemoryStore) -> None:
        current = self._current
        heap = list(dict.fromkeys(e for e in self._heap if current(store, e) == e[0]))
        heapq.heapify(heap)
        self._heap = heap
