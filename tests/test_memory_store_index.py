"""MemoryStore's indexes: the periodic queries (expire, due, due_records, held_between, forget)
and eviction read indexes instead of scanning everything held, yet answer exactly as a scan
does; the indexes' garbage stays bounded; a query examines about what it returns. The store
builds them once it holds ``INDEX_AT`` items; here they are built from the start, except where a
test crosses that threshold on purpose."""

from __future__ import annotations

import bisect
import random
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, cast

import pytest

from qadom import Config
from qadom import storage as storage_module
from qadom.errors import InvalidArgument, StorageFull
from qadom.ids import ID_SPACE
from qadom.storage import (
    _SLACK,
    ENTRY_SIZE,
    NEVER,
    Due,
    DueRecord,
    MemoryStore,
    Meta,
    Quotas,
    _TimeIndex,
    received_meta,
    record_meta,
)


@pytest.fixture(autouse=True)
def indexed_from_the_start(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(storage_module, "INDEX_AT", 0)


# ----------------------------------------------------------------------------- the oracle


class ScanningStore:
    """The scanning MemoryStore the indexes replace, kept as the reference: every query reads
    everything held. Its answers are put in MemoryStore's documented order (due: soonest first,
    ties by key, a value before its key's entries; held_between: by key, then value, entries,
    records by kind) before the limit is applied."""

    def __init__(self, config: Config) -> None:
        self.quotas = Quotas(config)
        self._values: dict[int, tuple[bytes, Meta]] = {}
        self._sets: dict[int, list[int]] = {}
        self._entries: dict[tuple[int, int], Meta] = {}
        self._records: dict[tuple[str, int], tuple[bytes, Meta]] = {}
        self._value_bytes = 0

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

    def due(self, now: float, limit: int) -> list[Due]:
        found = [Due(key, value, meta) for key, (value, meta) in self._values.items()
                 if meta.republish_at <= now]
        found += [Due(key, item, meta) for (key, item), meta in self._entries.items()
                  if meta.republish_at <= now]
        found.sort(key=lambda d: (d.meta.republish_at, d.key, isinstance(d.item, int),
                                  d.item if isinstance(d.item, int) else 0))
        return found[:max(0, limit)]

    def due_records(self, now: float, limit: int) -> list[DueRecord]:
        found = [DueRecord(kind, key, data, meta)
                 for (kind, key), (data, meta) in self._records.items()
                 if meta.republish_at <= now]
        found.sort(key=lambda d: (d.meta.republish_at, d.key, d.kind))
        return found[:max(0, limit)]

    def held_between(self, lo: int, hi: int, limit: int) -> list[Due | DueRecord]:
        found: list[tuple[tuple[int, int, Any], Due | DueRecord]] = []
        for key, (value, meta) in self._values.items():
            if lo <= key < hi and not meta.cached:
                found.append(((key, 0, 0), Due(key, value, meta)))
        for (key, item), meta in self._entries.items():
            if lo <= key < hi:
                found.append(((key, 1, item), Due(key, item, meta)))
        for (kind, key), (data, meta) in self._records.items():
            if lo <= key < hi and (meta.original or meta.expires != NEVER):
                found.append(((key, 2, kind), DueRecord(kind, key, data, meta)))
        found.sort(key=lambda pair: pair[0])
        return [held for _, held in found][:max(0, limit)]

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
        for (kind, held_key), (data, meta) in list(self._records.items()):
            if held_key == key and meta.original:
                self._records[(kind, key)] = (data, replace(meta, original=False,
                                                            republish_at=NEVER))
                mine = True
        return mine

    def put_record(self, kind: str, key: int, data: bytes, now: float, source: str = "",
                   meta: Meta | None = None) -> None:
        meta = record_meta(source, meta)
        old = self._records.get((kind, key))
        if old is None:
            self._make_room(meta.source, len(data), False)
            self.quotas.add(meta.source, len(data))
        else:
            self.quotas.replace(old[1].source, len(old[0]), meta.source, len(data),
                                victims=self._victims, drop=self._drop_value)
        self._records[(kind, key)] = (data, meta)

    def delete_record(self, kind: str, key: int) -> None:
        old = self._records.pop((kind, key), None)
        if old is not None:
            self.quotas.remove(old[1].source, len(old[0]))

    def stats(self) -> dict[str, int]:
        return {"values": len(self._values), "value_bytes": self._value_bytes,
                "entry_keys": len(self._sets), "entries": len(self._entries),
                "records": len(self._records), "stored_bytes": self.quotas.total_bytes}

    def _make_room(self, source: str, size: int, cached: bool) -> None:
        self.quotas.make_room(source, size, cached, self._victims, self._drop_value)

    def _victims(self) -> list[tuple[Any, int]]:
        held = sorted((m.expires, k) for k, (_, m) in self._values.items() if m.cached)
        return [(key, len(self._values[key][0])) for _, key in held]

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


# ----------------------------------------------------------------------------- index checks


def indexes(store: MemoryStore) -> dict[str, tuple[_TimeIndex, dict[tuple[Any, ...], float]]]:
    """Each time index with the live entries it must hold: (time, *handle) of every item that
    has that time, counted afresh from what the store holds."""
    def expiry(meta: Meta) -> float | None:
        return None if meta.original or meta.expires == NEVER else meta.expires

    def republish(meta: Meta) -> float | None:
        return None if meta.republish_at == NEVER else meta.republish_at

    def expected(items: Iterable[tuple[tuple[Any, ...], Meta]],
                 time: Callable[[Meta], float | None]) -> dict[tuple[Any, ...], float]:
        return {handle: t for handle, meta in items if (t := time(meta)) is not None}

    values = [((key,), meta) for key, (_, meta) in store._values.items()]
    entries = list(store._entries.items())
    records = [((key, kind), meta) for (kind, key), (_, meta) in store._records.items()]
    return {
        "value expiry": (store._value_expiry, expected(values, expiry)),
        "entry expiry": (store._entry_expiry, expected(entries, expiry)),
        "record expiry": (store._record_expiry, expected(records, expiry)),
        "value republish": (store._value_republish, expected(values, republish)),
        "entry republish": (store._entry_republish, expected(entries, republish)),
        "record republish": (store._record_republish, expected(records, republish)),
        "evictable": (store._evictable, expected(
            values, lambda m: m.expires if m.cached else None)),
    }


def check_indexes(store: MemoryStore) -> None:
    """Every index is exact (each item with a time has a live entry, the count of such items
    is right), a valid heap, and its garbage is within bounds; the key index holds exactly the
    keys held_between may return something under (nothing to check before they are built)."""
    if not store._indexed:
        return
    for name, (index, want) in indexes(store).items():
        heap = index._heap
        assert index.live == len(want), name
        assert len(heap) <= 2 * index.live + storage_module._SLACK, name
        assert all(heap[(i - 1) // 2] <= heap[i] for i in range(1, len(heap))), name
        live = {e[1:]: e[0] for e in heap if index._current(store, e) == e[0]}
        assert live == want, name
    handed = {key for key, (_, meta) in store._values.items() if not meta.cached}
    handed |= set(store._sets)
    handed |= {key for (_, key), (_, meta) in store._records.items()
               if meta.original or meta.expires != NEVER}
    keys = store._keys
    assert list(keys) == sorted(handed)
    kinds: dict[int, list[str]] = {}
    for kind, key in sorted(store._records):
        kinds.setdefault(key, []).append(kind)
    assert store._kinds == kinds


def snapshot(store: MemoryStore) -> list[object]:
    """Every index exactly as it is (to see that a refused write touched none)."""
    if not store._indexed:
        return []
    return [list(index._heap) for index, _ in indexes(store).values()] + [
        list(store._keys), dict(store._kinds)]


def held(store: MemoryStore | ScanningStore) -> tuple[object, ...]:
    return (store._values, store._sets, store._entries, store._records, store.stats(),
            store.quotas.total_bytes, store.quotas.total_items, store.quotas.cached_bytes,
            store.quotas.cached_items,
            {s: u for s, u in store.quotas._by_source.items() if u[1]})


# ----------------------------------------------------------------------------- equivalence

CONFIG = Config(max_store_bytes=6000, max_store_items=60, max_bytes_per_source=3000,
                max_items_per_source=35)
SOURCES = ("", "10.0.0.1", "10.0.0.2", "10.0.0.3")
TOP = ID_SPACE - 1
VALUE_KEYS = [*range(40), TOP]
ENTRY_KEYS = [0, 3, 7, 12, 20, 33, TOP]
KINDS = ("dht", "namespace", "identity")


@pytest.mark.parametrize(("seed", "slack", "index_at"), [(4, 1, 0), (512, 8, 0), (9, 4, 30)])
def test_indexed_queries_answer_as_a_scan(seed: int, slack: int, index_at: int,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A seeded mix of several thousand writes (new items and replacements with every kind of
    Meta, refusals, evictions), forgets, sweeps at advancing times and queries with various
    limits and ranges: MemoryStore answers exactly as the scanning reference, holds the same,
    its indexes stay exact and bounded, and a refused write leaves them as they were."""
    monkeypatch.setattr(storage_module, "_SLACK", slack)  # a small store compacts too
    # 30: the store scans until it holds 30 items, then builds its indexes and goes on with them.
    monkeypatch.setattr(storage_module, "INDEX_AT", index_at)
    scanned = [0]  # steps answered before the indexes were built
    compactions = [0]
    compact = _TimeIndex._compact

    def counted_compact(self: _TimeIndex, store: MemoryStore) -> None:
        compactions[0] += 1
        compact(self, store)

    monkeypatch.setattr(_TimeIndex, "_compact", counted_compact)
    store, reference = MemoryStore(CONFIG), ScanningStore(CONFIG)
    rng = random.Random(20240 + seed)
    now = 1000.0
    seen = dict.fromkeys(("refused", "invalid", "evicted", "expired", "forgotten", "due cut",
                          "due records", "handed cut", "replaced"), 0)

    def meta(value: bool = False) -> Meta:
        # Coarse times, so that items are often set back to a time they had before.
        expires = NEVER if rng.random() < 0.05 else now + rng.choice([1, 2, 5, 10, 30, 60])
        republish_at = NEVER if rng.random() < 0.3 else now + rng.choice([-5, 0, 5, 10, 30])
        return Meta(expires, republish_at, original=rng.random() < 0.1,
                    cached=value and rng.random() < 0.25, source=rng.choice(SOURCES))

    for step in range(3000):
        op = rng.random()
        name: str
        args: tuple[Any, ...]
        if op < 0.22:
            size = rng.choice([1, 30, 200, 700])
            name, args = "put_value", (rng.choice(VALUE_KEYS), bytes([size % 251]) * size,
                                       meta(value=True))
        elif op < 0.32 and reference._values:  # a republish: the same value, a new schedule
            key = rng.choice(sorted(reference._values))
            value, old = reference._values[key]
            name, args = "put_value", (key, value, replace(
                old, republish_at=now + rng.choice([5, 10, 30]),
                expires=rng.choice([old.expires, now + 30])))
        elif op < 0.50:
            name, args = "add_entry", (rng.choice(ENTRY_KEYS),
                                       rng.choice([*range(12), 2**256 - 1]), meta())
        elif op < 0.62:
            kind, key = rng.choice(KINDS), rng.choice(VALUE_KEYS)
            data = b"r" * rng.choice([5, 100, 400])
            if rng.random() < 0.03:  # a cached Meta: InvalidArgument
                name, args = "put_record", (kind, key, data, now, "", Meta(now + 5, cached=True))
            elif rng.random() < 0.75:
                name, args = "put_record", (kind, key, data, now, "", meta())
            else:  # no lifecycle: never expires, never due, never handed over
                name, args = "put_record", (kind, key, data, now, rng.choice(SOURCES))
        elif op < 0.66:
            name, args = "delete_record", (rng.choice(KINDS), rng.choice(VALUE_KEYS))
        elif op < 0.71:
            name, args = "forget", (rng.choice(VALUE_KEYS),)
        elif op < 0.79:
            now += rng.choice([0.0, 1.0, 5.0, 20.0])
            name, args = "expire", (now,)
        elif op < 0.86:
            name, args = "due", (now + rng.choice([0, 5, 30, 1e9]),
                                 rng.choice([-1, 0, 1, 3, 10, 1000]))
        elif op < 0.92:
            name, args = "due_records", (now + rng.choice([0, 5, 30, 1e9]),
                                         rng.choice([-1, 0, 1, 3, 10, 1000]))
        else:
            lo = rng.choice([0, rng.randrange(45), TOP])
            hi = rng.choice([lo + rng.randrange(1, 30), ID_SPACE])
            name, args = "held_between", (lo, hi, rng.choice([0, 1, 2, 5, 1000]))
        before = snapshot(store)
        had = len(reference._values)
        replacing = name == "put_value" and args[0] in reference._values
        outcome: list[object] = []
        for target in (store, reference):
            try:
                outcome.append(getattr(target, name)(*args))
            except (StorageFull, InvalidArgument) as exc:
                outcome.append(type(exc))
        assert outcome[0] == outcome[1], (step, name, args)
        scanned[0] += not store._indexed
        assert held(store) == held(reference), (step, name)
        check_indexes(store)
        result = outcome[0]
        if result in (StorageFull, InvalidArgument):
            assert snapshot(store) == before, (step, name)  # nothing left behind, nothing lost
            seen["refused" if result is StorageFull else "invalid"] += 1
        elif name == "put_value":
            seen["replaced"] += replacing
            seen["evicted"] += len(reference._values) < had + (not replacing)
        elif name == "expire":
            seen["expired"] += bool(result)
        elif name == "forget":
            seen["forgotten"] += bool(result)
        elif name == "due":
            at, _ = cast(tuple[float, int], args)
            seen["due cut"] += len(reference.due(at, 10**9)) > len(cast(list[Due], result)) > 0
        elif name == "due_records":
            seen["due records"] += bool(result)
        elif name == "held_between":
            lo, hi, _ = cast(tuple[int, int, int], args)
            handed = cast(list[Due | DueRecord], result)
            seen["handed cut"] += len(reference.held_between(lo, hi, 10**9)) > len(handed) > 0
    assert all(seen.values()), seen
    assert store._indexed and (scanned[0] > 100 if index_at else scanned[0] == 0), scanned
    assert compactions[0] > 0  # the garbage bound was reached and enforced


# ----------------------------------------------------------------------------- schedule rules


def test_due_is_soonest_first_and_not_consumed() -> None:
    store = MemoryStore()
    store.put_value(5, b"late", Meta(1e9, republish_at=30.0))
    store.put_value(9, b"soon", Meta(1e9, republish_at=10.0))
    store.add_entry(9, 1, Meta(1e9, republish_at=10.0))  # same time and key: after the value
    store.add_entry(2, 7, Meta(1e9, republish_at=20.0))
    store.put_value(3, b"never", Meta(1e9))  # off the schedule
    order = [(d.key, d.item) for d in store.due(40.0, 10)]
    assert order == [(9, b"soon"), (9, 1), (2, 7), (5, b"late")]
    assert [(d.key, d.item) for d in store.due(40.0, 2)] == order[:2]
    assert [(d.key, d.item) for d in store.due(40.0, 10)] == order  # still due: not consumed
    # Republished (a new Meta), it leaves the due items; one whose republish failed stays.
    store.put_value(9, b"soon", Meta(1e9, republish_at=3610.0))
    assert [(d.key, d.item) for d in store.due(40.0, 10)] == [(9, 1), (2, 7), (5, b"late")]


def test_an_item_whose_time_comes_back_is_due_and_expired_once() -> None:
    """A time changed and set back leaves two equal index entries: read once."""
    store = MemoryStore()
    for expires, republish_at in ((50.0, 10.0), (60.0, 20.0), (50.0, 10.0)):
        store.put_value(1, b"v", Meta(expires, republish_at))
        store.add_entry(2, 3, Meta(expires, republish_at))
        store.put_record("dht", 4, b"r", 0.0, meta=Meta(expires, republish_at))
    assert len(store._value_republish) == 3 and store._value_republish.live == 1
    assert [d.key for d in store.due(15.0, 10)] == [1, 2]
    assert [d.key for d in store.due_records(15.0, 10)] == [4]
    assert store.expire(55.0) == 3
    assert store.stats()["values"] == store.stats()["entries"] == store.stats()["records"] == 0
    check_indexes(store)


def test_forgotten_items_leave_the_schedule_and_then_expire() -> None:
    store = MemoryStore()
    store.put_value(1, b"v", Meta(50.0, 10.0, original=True))
    store.add_entry(1, 2, Meta(50.0, 10.0, original=True))
    store.put_record("dht", 1, b"r", 0.0, meta=Meta(50.0, 10.0, original=True))
    store.put_record("namespace", 1, b"s", 0.0, meta=Meta(NEVER, 10.0, original=True))
    assert store.expire(1e9) == 0  # ours: never expire
    assert len(store.due(20.0, 10)) == 2 and len(store.due_records(20.0, 10)) == 2
    assert len(store.held_between(1, 2, 10)) == 4
    assert store.forget(1) and not store.forget(1)
    assert store.due(1e9, 10) == [] and store.due_records(1e9, 10) == []
    # The namespace record now has no lifecycle (no expiry, not ours): no longer handed over.
    assert [type(d).__name__ for d in store.held_between(0, 10, 10)] == [
        "Due", "Due", "DueRecord"]
    assert store.expire(50.0) == 3 and store.stats()["records"] == 1
    assert store.held_between(0, ID_SPACE, 10) == []
    check_indexes(store)


# ----------------------------------------------------------------------------- garbage bound


def test_index_garbage_stays_bounded_under_repeated_updates() -> None:
    """Items received by republish every hour with a 24 h lifetime, republished by this node
    every hour, for three days: each index holds at most about twice its live items."""
    config = Config()
    store = MemoryStore(config)
    hour = config.republish_interval
    for i in range(300):
        meta = received_meta(None, int(config.expire_time), 0.0, config, "10.0.0.1", same=False)
        store.put_value(i, b"v%d" % i, meta)
        store.add_entry(i % 17, i, meta)
        store.put_record("dht", i, b"r", 0.0, "", meta)
    largest = 0
    for h in range(1, 73):
        now = h * hour + 0.5
        for due in store.due(now, 10**6):  # this node's republish: a new republish time
            meta = replace(due.meta, republish_at=now + hour)
            if isinstance(due.item, bytes):
                store.put_value(due.key, due.item, meta)
            else:
                store.add_entry(due.key, due.item, meta)
        for record in store.due_records(now, 10**6):
            store.put_record(record.kind, record.key, record.data, now, "",
                             replace(record.meta, republish_at=now + hour))
        for i in range(300):  # another storer's republish: a fresh lifetime, a new expiry
            store.put_value(i, b"v%d" % i, received_meta(
                store.value_meta(i), int(config.expire_time), now, config, "10.0.0.1",
                same=True))
            store.add_entry(i % 17, i, received_meta(
                store.entry_meta(i % 17, i), int(config.expire_time), now, config, "10.0.0.1",
                same=True))
        for index, _ in indexes(store).values():
            assert len(index) <= 2 * index.live + _SLACK
            largest = max(largest, len(index))
        store.expire(now)
    assert store.stats()["values"] == 300 and store.stats()["entries"] == 300
    assert largest <= 2 * 300 + _SLACK
    check_indexes(store)


# ----------------------------------------------------------------------------- scaling


def _counting(name: str) -> Callable[..., Any]:
    method = getattr(dict, name)

    def counted(self: dict[Any, Any], *args: Any) -> Any:
        Counted.reads += 1
        return method(self, *args)

    return counted


class Counted(dict):  # type: ignore[type-arg]
    """A dict that counts the items looked up in it and may not be read through."""

    reads = 0

    def _read_through(self, *args: object) -> None:
        raise AssertionError("a query read through every stored item")

    __iter__ = values = items = keys = _read_through  # type: ignore[assignment]
    get = _counting("get")
    pop = _counting("pop")
    __getitem__ = _counting("__getitem__")
    __contains__ = _counting("__contains__")


def test_queries_examine_what_they_return_not_everything_held() -> None:
    """100 000 items held: each query looks up a few items per item it returns (its heap and
    range reads are O(log n) each), never reads through what is held."""
    n = 100_000
    store = MemoryStore(Config(max_store_items=2 * n, max_store_bytes=10**9))
    step = ID_SPACE // n
    for i in range(n // 2):
        is_due, dies = i % 5000 == 0, i % 100 == 1  # 10 due, 1% expiring
        store.put_value(i * step, b"v", Meta(50.0 if dies else 1e9,
                                            republish_at=10.0 if is_due else 1e6))
        store.add_entry(i * step + 1, i, Meta(50.0 if dies else 1e9, republish_at=1e6))
    store.put_record("dht", 7, b"r", 0.0, meta=Meta(1e9, 10.0))
    store.put_value(3 * step, b"mine", Meta(1e9, 1e6, original=True))
    for name in ("_values", "_sets", "_entries", "_records", "_kinds"):
        setattr(store, name, Counted(getattr(store, name)))

    def reads(query: Callable[[], object]) -> tuple[object, int]:
        Counted.reads = 0
        result = query()
        return result, Counted.reads

    due, examined = reads(lambda: store.due(20.0, 200))
    assert isinstance(due, list) and len(due) == 10 and examined <= 3 * 10
    records, examined = reads(lambda: store.due_records(20.0, 200))
    assert isinstance(records, list) and len(records) == 1 and examined <= 3
    assert reads(lambda: store.expire(20.0)) == (0, 0)
    expired, examined = reads(lambda: store.expire(60.0))
    assert expired == 1000 and examined <= 8 * 1000
    handed, examined = reads(lambda: store.held_between(10 * step, 15 * step, 200))
    assert isinstance(handed, list) and len(handed) == 10 and examined <= 6 * 10
    forgot, examined = reads(lambda: store.forget(3 * step))
    assert forgot is True and examined <= 6
    # The indexes hold no more than the items: nothing was copied or left behind.
    assert len(store._value_expiry) <= 2 * store._value_expiry.live + _SLACK
    assert len(store._entry_republish) == n // 2


def test_a_store_builds_its_indexes_once_it_holds_index_at_items(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Below ``INDEX_AT`` items a store keeps no index (a node's usual share costs no index
    upkeep on its writes); the item that reaches it builds them all, exact from then on."""
    assert storage_module.INDEX_AT == 0  # this module's fixture; the default is 4096
    monkeypatch.setattr(storage_module, "INDEX_AT", 50)
    store = MemoryStore()
    for i in range(20):
        store.put_value(i, b"v%d" % i, Meta(100.0 + i, 50.0 + i))
        store.add_entry(i, i, Meta(200.0, 60.0, original=True))
    store.put_record("dht", 3, b"r", 0.0, meta=Meta(300.0, 70.0))
    assert not store._indexed and not hasattr(store, "_keys")
    before = (store.due(1e9, 1000), store.held_between(0, ID_SPACE, 1000))
    for i in range(20, 29):
        store.put_value(i, b"v%d" % i, Meta(100.0 + i, 50.0 + i))
    assert store.quotas.total_items == 50 and store._indexed
    check_indexes(store)
    due = store.due(1e9, 1000)
    assert due[:len(before[0])] == before[0] and len(due) == len(before[0]) + 9
    assert store.held_between(0, ID_SPACE, 1000)[:len(before[1])] == before[1]
    assert store.expire(119.5) == 20 and store.stats()["values"] == 9
    check_indexes(store)


def test_a_scanning_store_answers_an_infinite_now_as_the_indexes_do(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Items that never expire (the node's identity record, a value kept with NEVER) and items
    off the schedule are not expired nor due at any time, an infinite one included: the
    indexes hold no entry for them, and a store still scanning agrees."""
    answers = []
    for index_at in (10**9, 0):  # scanning, indexed
        monkeypatch.setattr(storage_module, "INDEX_AT", index_at)
        store = MemoryStore()
        assert store._indexed == (index_at == 0)
        store.put_value(1, b"kept", Meta(NEVER))
        store.add_entry(2, 3, Meta(NEVER))
        store.put_record("identity", 4, b"ours", 0.0)  # no lifecycle
        store.put_value(5, b"dies", Meta(50.0, republish_at=10.0))
        answers.append((store.due(NEVER, 10), store.due_records(NEVER, 10),
                        store.expire(NEVER), store.stats()))
    assert answers[0] == answers[1]
    due, due_records, expired, stats = answers[0]
    assert [d.key for d in due] == [5] and due_records == [] and expired == 1
    assert stats["values"] == stats["entries"] == stats["records"] == 1
