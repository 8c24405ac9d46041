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
* an expired item is never returned once :meth:`Store.expire` has run past its expiry, and
  :meth:`Store.get_value`, :meth:`Store.get_record` and :meth:`Store.entries_after` with ``now``
  never return an expired one;
* quotas (:class:`Quotas`) hold at every moment;
* :meth:`Store.stats` costs O(1) (a remote peer may ask for it): its counts are kept as the store
  changes, and equal a fresh count of what it holds after every write, refused or not.

Eviction rule: a full store *refuses* new items rather than evicting stored ones, because an item
held as one of the k replicas is a promise to the network. Only cached copies (which the network
can always rebuild) make room: when a write that is not itself a cached copy would exceed the
total quotas, cached copies are evicted, soonest-expiring first. Expired items free their room at
the next :meth:`Store.expire` (every ``maintenance_interval``).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Protocol, runtime_checkable

from .config import Config
from .contact import Contact
from .errors import InvalidArgument, StorageFull

ENTRY_SIZE = 32
"""Bytes a multimap entry counts for in quotas (its 256-bit value)."""

NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Meta:
    """The bookkeeping of one stored item."""

    expires: float
    """When the item stops being served (original items never expire while published)."""
    republish_at: float = NEVER
    """When this node must next republish the item to the k closest (NEVER: not at all)."""
    original: bool = False
    """We published it: renewed every ``publisher_renew_after`` (about 24 h) until forgotten."""
    cached: bool = False
    """A cached copy along a lookup path: never republished, first to be evicted."""
    source: str = ""
    """Host of the peer that sent it, for per-address quotas; "" when stored locally."""


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


def published_meta(now: float, config: Config) -> Meta:
    """The bookkeeping of an item we publish ourselves: a full lifetime, renewed every
    ``publisher_renew_after`` (about 24 hours) until forgotten."""
    return Meta(now + config.expire_time, now + config.publisher_renew_after,
                original=True)


def received_meta(old: Meta | None, ttl: int, now: float, config: Config, source: str, *,
                  same: bool) -> Meta:
    """The bookkeeping of a record that host ``source`` sent with ``ttl`` (positive) seconds to
    live, when the live record we hold has ``old`` (None: we hold none).

    Its lifetime is the TTL capped at ``expire_time``. When the record sent is the one we hold
    (``same``) the lifetime we hold is never shortened and its first sender stays charged for
    it; a new version lives by its own TTL and is charged to its sender. Receiving it counts as
    this hour's republish. A record we publish ourselves keeps our schedule."""
    if old is not None and old.original:
        return old if same else replace(old, source=source)
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
                old_cached: bool = False, new_cached: bool = False) -> None:
        """Account for an item replaced in place by a version of ``new_size`` bytes from
        ``new_source``; StorageFull, changing nothing, if it does not fit."""
        cfg = self.config
        if self.total_bytes - old_size + new_size > cfg.max_store_bytes:
            raise StorageFull("this node's storage is full")
        if new_source:
            used_bytes, used_items = self._by_source.get(new_source, [0, 0])
            if new_source == old_source:
                used_bytes, used_items = used_bytes - old_size, used_items - 1
            if (used_bytes + new_size > cfg.max_bytes_per_source
                    or used_items + 1 > cfg.max_items_per_source):
                raise StorageFull(f"storage quota for {new_source} is exhausted")
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
        means a live one does. A ``limit`` below one is taken as 0."""
        ...

    def due(self, now: float, limit: int) -> list[Due]:
        """Up to ``limit`` items whose republish time is at or before ``now``."""
        ...

    def due_records(self, now: float, limit: int) -> list[DueRecord]:
        """Up to ``limit`` service records whose republish time is at or before ``now``."""
        ...

    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        """Up to ``limit`` values, entries and service records (cached copies excepted) whose key
        is in ``[lo, hi)``, whatever their schedule: what a node hands to a new neighbour."""
        ...

    def expire(self, now: float) -> int:
        """Drop every item and record expired at ``now`` (original ones excepted); returns how
        many."""
        ...

    def forget(self, key: int) -> bool:
        """Stop republishing ``key`` as its original publisher (values, entries and records of
        every kind); they then expire as any other. True if anything was ours."""
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
    """A :class:`Store` in process memory; everything is lost when the process ends."""

    def __init__(self, config: Config | None = None) -> None:
        self.quotas = Quotas(config or Config())
        self._values: dict[int, tuple[bytes, Meta]] = {}
        self._sets: dict[int, list[int]] = {}
        self._entries: dict[tuple[int, int], Meta] = {}
        self._records: dict[tuple[str, int], tuple[bytes, Meta]] = {}
        self._value_bytes = 0  # the total length of the values (the dicts count the rest)
        self._contacts: list[Contact] = []
        self._meta: dict[str, bytes] = {}

    # ------------------------------------------------------------------ values

    def get_value(self, key: int, now: float | None = None) -> bytes | None:
        held = self._values.get(key)
        if held is None or (now is not None and _expired(held[1], now)):
            return None
        return held[0]

    def value_meta(self, key: int) -> Meta | None:
        held = self._values.get(key)
        return None if held is None else held[1]

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

    # ------------------------------------------------------------------ entries

    def entry_meta(self, key: int, value: int) -> Meta | None:
        return self._entries.get((key, value))

    def add_entry(self, key: int, value: int, meta: Meta) -> bool:
        old = self._entries.get((key, value))
        if old is not None:
            self.quotas.replace(old.source, ENTRY_SIZE, meta.source, ENTRY_SIZE)
            self._entries[(key, value)] = meta
            return False
        self._make_room(meta.source, ENTRY_SIZE, meta.cached)
        self.quotas.add(meta.source, ENTRY_SIZE)
        self._entries[(key, value)] = meta
        bisect.insort(self._sets.setdefault(key, []), value)
        return True

    def entries_after(self, key: int, after: int | None, limit: int, now: float | None = None,
                      ) -> tuple[list[int], bool]:
        limit = max(0, limit)
        values = self._sets.get(key, [])
        start = 0 if after is None else bisect.bisect_right(values, after)
        if now is None:
            return values[start:start + limit], start + limit < len(values)
        # The set still holds entries expired since the last sweep: step over them.
        page: list[int] = []
        for i in range(start, len(values)):
            value = values[i]
            if _expired(self._entries[(key, value)], now):
                continue
            if len(page) == limit:
                return page, True
            page.append(value)
        return page, False

    # ------------------------------------------------------------------ schedule

    def due(self, now: float, limit: int) -> list[Due]:
        found: list[Due] = []
        if limit <= 0:
            return found
        for key, (value, meta) in self._values.items():
            if meta.republish_at <= now:
                found.append(Due(key, value, meta))
                if len(found) >= limit:
                    return found
        for (key, item), meta in self._entries.items():
            if meta.republish_at <= now:
                found.append(Due(key, item, meta))
                if len(found) >= limit:
                    break
        return found

    def due_records(self, now: float, limit: int) -> list[DueRecord]:
        found: list[DueRecord] = []
        if limit <= 0:
            return found
        for (kind, key), (data, meta) in self._records.items():
            if meta.republish_at <= now:
                found.append(DueRecord(kind, key, data, meta))
                if len(found) >= limit:
                    break
        return found

    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        found: list[Due | DueRecord] = []
        if limit <= 0:
            return found
        # A scan: a node asks only when a new contact joins its own neighbourhood.
        for key, (value, meta) in self._values.items():
            if lo <= key < hi and not meta.cached:
                found.append(Due(key, value, meta))
                if len(found) >= limit:
                    return found
        for (key, item), meta in self._entries.items():
            if lo <= key < hi:
                found.append(Due(key, item, meta))
                if len(found) >= limit:
                    return found
        for (kind, key), (data, meta) in self._records.items():
            if lo <= key < hi and (meta.original or meta.expires != NEVER):  # has a lifecycle
                found.append(DueRecord(kind, key, data, meta))
                if len(found) >= limit:
                    break
        return found

    def expire(self, now: float) -> int:
        dead_values = [k for k, (_, m) in self._values.items() if _expired(m, now)]
        for key in dead_values:
            self._drop_value(key)
        dead_entries = [ke for ke, m in self._entries.items() if _expired(m, now)]
        for key, value in dead_entries:
            self._drop_entry(key, value)
        dead_records = [kk for kk, (_, m) in self._records.items() if _expired(m, now)]
        for kind, key in dead_records:
            self.delete_record(kind, key)
        return len(dead_values) + len(dead_entries) + len(dead_records)

    def forget(self, key: int) -> bool:
        mine = False
        held = self._values.get(key)
        if held is not None and held[1].original:
            self._values[key] = (held[0], replace(held[1], original=False, republish_at=NEVER))
            mine = True
        for value in self._sets.get(key, []):
            meta = self._entries[(key, value)]
            if meta.original:
                self._entries[(key, value)] = replace(meta, original=False, republish_at=NEVER)
                mine = True
        for (kind, held_key), (data, meta) in self._records.items():
            if held_key == key and meta.original:
                self._records[(kind, key)] = (data, replace(meta, original=False,
                                                            republish_at=NEVER))
                mine = True
        return mine

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
        else:  # a newer version is charged to the host that sent it
            self.quotas.replace(old[1].source, len(old[0]), meta.source, len(data))
        self._records[(kind, key)] = (data, meta)

    def delete_record(self, kind: str, key: int) -> None:
        old = self._records.pop((kind, key), None)
        if old is not None:
            self.quotas.remove(old[1].source, len(old[0]))

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
        def victims() -> list[tuple[Any, int]]:  # only called when eviction will be enough
            held = sorted((m.expires, k) for k, (_, m) in self._values.items() if m.cached)
            return [(key, len(self._values[key][0])) for _, key in held]

        self.quotas.make_room(source, size, cached, victims, self._drop_value)

    def _drop_value(self, key: int) -> None:
        value, meta = self._values.pop(key)
        self.quotas.remove(meta.source, len(value), meta.cached)
        self._value_bytes -= len(value)

    def _drop_entry(self, key: int, value: int) -> None:
        meta = self._entries.pop((key, value))
        self.quotas.remove(meta.source, ENTRY_SIZE)
        values = self._sets[key]
        del values[bisect.bisect_left(values, value)]
        if not values:
            del self._sets[key]


def _expired(meta: Meta, now: float) -> bool:
    return not meta.original and meta.expires <= now
