"""SqliteStore answers as MemoryStore does: the same writes, refusals, sweeps and queries give the
same answers, with the same limits (the soonest-due items first, the lowest keys handed over
first), and the same quotas and counts, before and after the file is opened again."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from qadom import Config
from qadom.errors import InvalidArgument, StorageFull
from qadom.ids import ID_SPACE
from qadom.sqlite_store import SqliteStore
from qadom.storage import NEVER, Due, DueRecord, MemoryStore, Meta, Store

CONFIG = Config(max_store_bytes=6000, max_store_items=60, max_bytes_per_source=3000,
                max_items_per_source=35)
SOURCES = ("", "10.0.0.1", "10.0.0.2", "2001:db8::/64")
TOP = ID_SPACE - 1
VALUE_KEYS = [*range(40), TOP]
ENTRY_KEYS = [0, 3, 7, 12, 20, 33, TOP]
KINDS = ("dht", "namespace", "identity")


@pytest.fixture
def sqlite(tmp_path: Path) -> Iterator[SqliteStore]:
    store = SqliteStore(tmp_path / "qadom.sqlite3", CONFIG)
    yield store
    store.close()


def held(store: Store) -> tuple[object, ...]:
    quotas = store.quotas
    return (store.stats(), quotas.total_bytes, quotas.total_items, quotas.cached_bytes,
            quotas.cached_items, {s: tuple(u) for s, u in quotas._by_source.items() if u[1]})


def test_due_is_soonest_first_across_values_and_entries(sqlite: SqliteStore) -> None:
    """Values due later do not hold back an entry due first (a node restarted after a while
    finds everything due at once, and republishes a batch per tick)."""
    memory = MemoryStore(CONFIG)
    for store in (sqlite, memory):
        for i in range(5):
            store.put_value(40 + i, bytes([i]), Meta(1e12, 50.0 + i))
        store.add_entry(100, 1, Meta(1e12, 10.0))
        store.add_entry(3, 2, Meta(1e12, 51.0))
    due = sqlite.due(100.0, 3)
    assert [(d.key, d.item) for d in due] == [(100, 1), (40, b"\x00"), (3, 2)]
    assert due == memory.due(100.0, 3)
    assert sqlite.due(100.0, 10) == memory.due(100.0, 10)


def test_held_between_hands_over_the_lowest_keys_first(sqlite: SqliteStore) -> None:
    """A newcomer is handed a batch from the bottom of the range, values, entries and records
    alike, not every value before any entry or record."""
    memory = MemoryStore(CONFIG)
    for store in (sqlite, memory):
        for key in range(10, 20):
            store.put_value(key, b"v", Meta(1e12, 1e12))
        store.add_entry(5, 1, Meta(1e12, 1e12))
        store.put_record("namespace", 6, b"r", 0.0, meta=Meta(1e12, 1e12))
    handed = sqlite.held_between(0, 100, 3)
    assert [(type(h).__name__, h.key) for h in handed] == [
        ("Due", 5), ("DueRecord", 6), ("Due", 10)]
    assert handed == memory.held_between(0, 100, 3)


@pytest.mark.parametrize("seed", [1, 2])
def test_sqlite_answers_as_memory_store(seed: int, tmp_path: Path) -> None:
    """A seeded mix of writes (new items, replacements, refusals, evictions), forgets, deletes,
    sweeps at advancing times and queries with various limits and ranges."""
    path = tmp_path / "qadom.sqlite3"
    sqlite, memory = SqliteStore(path, CONFIG), MemoryStore(CONFIG)
    rng = random.Random(seed)
    now = 1000.0

    def meta(value: bool = False) -> Meta:
        cached = value and rng.random() < 0.25
        # Cached copies get distinct expiries: which one makes room is then not a tie.
        expires = (now + rng.choice([1, 5, 30]) + rng.random() if cached else
                   NEVER if rng.random() < 0.05 else now + rng.choice([1, 2, 5, 10, 30, 60]))
        republish_at = NEVER if rng.random() < 0.3 else now + rng.choice([-5, 0, 5, 10, 30])
        return Meta(expires, republish_at, original=rng.random() < 0.1, cached=cached,
                    source=rng.choice(SOURCES))

    try:
        for step in range(1200):
            op = rng.random()
            name: str
            args: tuple[Any, ...]
            if op < 0.22:
                size = rng.choice([1, 30, 200, 700])
                name, args = "put_value", (rng.choice(VALUE_KEYS), bytes([size % 251]) * size,
                                           meta(value=True))
            elif op < 0.30 and memory._values:  # a republish: the same value, a new schedule
                key = rng.choice(sorted(memory._values))
                value, old = memory._values[key]
                name, args = "put_value", (key, value, replace(
                    old, republish_at=now + rng.choice([5, 10, 30]),
                    expires=old.expires if old.cached else rng.choice([old.expires, now + 30])))
            elif op < 0.46:
                name, args = "add_entry", (rng.choice(ENTRY_KEYS),
                                           rng.choice([*range(12), 2**256 - 1]), meta())
            elif op < 0.58:
                kind, key = rng.choice(KINDS), rng.choice(VALUE_KEYS)
                data = b"r" * rng.choice([5, 100, 400])
                if rng.random() < 0.75:
                    name, args = "put_record", (kind, key, data, now, "", meta())
                else:  # no lifecycle: never expires, never due, never handed over
                    name, args = "put_record", (kind, key, data, now, rng.choice(SOURCES))
            elif op < 0.62:
                name, args = "delete_record", (rng.choice(KINDS), rng.choice(VALUE_KEYS))
            elif op < 0.67:
                name, args = "forget", (rng.choice(VALUE_KEYS),)
            elif op < 0.75:
                now += rng.choice([0.0, 1.0, 5.0, 20.0])
                name, args = "expire", (now,)
            elif op < 0.83:
                name, args = "due", (now + rng.choice([0, 5, 30, 1e9]),
                                     rng.choice([-1, 0, 1, 3, 10, 1000]))
            elif op < 0.88:
                name, args = "due_records", (now + rng.choice([0, 5, 30, 1e9]),
                                             rng.choice([0, 1, 3, 1000]))
            elif op < 0.95:
                lo = rng.choice([0, rng.randrange(45), TOP])
                hi = rng.choice([lo + rng.randrange(1, 30), ID_SPACE])
                name, args = "held_between", (lo, hi, rng.choice([0, 1, 2, 5, 1000]))
            elif op < 0.98:
                name, args = "entries_after", (rng.choice(ENTRY_KEYS), rng.choice([None, 3]),
                                               rng.choice([1, 4, 100]), now + rng.choice([0, 5]))
            else:
                name, args = "get_value", (rng.choice(VALUE_KEYS), now + rng.choice([0, 5]))
            outcome: list[object] = []
            for store in (sqlite, memory):
                try:
                    outcome.append(getattr(store, name)(*args))
                except (StorageFull, InvalidArgument) as exc:
                    outcome.append(type(exc))
            assert outcome[0] == outcome[1], (step, name, args)
            assert held(sqlite) == held(memory), (step, name, args)
            if step % 300 == 299:  # what the file holds, counted afresh
                sqlite.close()
                sqlite = SqliteStore(path, CONFIG)
                assert held(sqlite) == held(memory), step
        handed: list[Due | DueRecord] = sqlite.held_between(0, ID_SPACE, 10**6)
        assert handed == memory.held_between(0, ID_SPACE, 10**6) and handed
    finally:
        sqlite.close()
