"""What a node's periodic store queries cost on a full in-memory store.

A :class:`~qadom.storage.MemoryStore` filled with ``--items`` items (by default a million, the
default ``max_store_items``: 55% values, 40% multimap entries, 5% service records, random keys,
1% of them expiring and 1% due for republishing early) answers the queries a node makes every
maintenance tick (expire, due, due_records), at each new neighbour (held_between) and on forget.
Each figure is the median of ``--repeat`` calls, in milliseconds. ``--storage FILE`` measures
another version of ``qadom/storage.py`` (for instance one from ``git show REV:qadom/storage.py``)
on the same workload.

    pipenv run python bench/store_scale.py
    git show f896a2a:qadom/storage.py > /tmp/old.py
    pipenv run python bench/store_scale.py --storage /tmp/old.py
"""

from __future__ import annotations

import argparse
import importlib.util
import random
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import qadom.storage
from bench.common import collect, current_rss_mb, load, machine, positive_int, table
from qadom import Config

HOUR, DAY = 3600.0, 86400.0


def storage_module(path: str | None) -> ModuleType:
    if path is None:
        return qadom.storage
    spec = importlib.util.spec_from_file_location("qadom._measured_storage", path)
    if spec is None or spec.loader is None:
        raise SystemExit(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    module.__package__ = "qadom"  # its relative imports resolve in the installed package
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=positive_int, default=1_000_000)
    parser.add_argument("--repeat", type=positive_int, default=5)
    parser.add_argument("--storage", help="another qadom/storage.py to measure")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    n_values, n_records = args.items * 55 // 100, args.items * 5 // 100
    # "forget" forgets one of our values per repeat: one in a thousand values is ours.
    ours = len(range(7, n_values, 1000))
    if ours < args.repeat:
        parser.error(f"--items {args.items} holds {ours} values of our own, fewer than "
                     f"--repeat {args.repeat} forgets need")
    module = storage_module(args.storage)
    Meta = module.Meta
    n_entry_keys = (args.items - n_values - n_records) // 4  # four entries under each key
    config = Config(max_store_items=2 * args.items + 10, max_store_bytes=1 << 40,
                    max_items_per_source=2 * args.items + 10, max_bytes_per_source=1 << 40)
    print(f"# qadom store queries at scale\n\nmachine: {machine()}, {load()}\n"
          f"storage: {args.storage or 'qadom.storage'}; {args.items} items, seed {args.seed}\n")

    def meta(i: int, **kw: bool) -> object:
        return Meta(500.0 if i % 100 == 0 else DAY + rng.random() * DAY,  # 1% expire at 500
                    100.0 if i % 100 == 1 else HOUR + rng.random() * HOUR,  # 1% due at 100
                    source=f"10.0.{i % 200}.1", **kw)

    rng = random.Random(args.seed)
    collect()
    base = current_rss_mb()
    started = time.perf_counter()
    store = module.MemoryStore(config)
    value_keys = []
    for i in range(n_values):
        key = rng.getrandbits(256)
        value_keys.append(key)
        store.put_value(key, b"%020d" % i, meta(i, original=i % 1000 == 7))
    n = 0
    for _ in range(n_entry_keys):
        key = rng.getrandbits(256)
        for _ in range(4):
            n += 1
            store.add_entry(key, rng.getrandbits(256), meta(n))
    for i in range(n_records):
        key = rng.getrandbits(256) if i % 10 else value_keys[i]  # some share a value's key
        store.put_record("dht", key, b"r" * 40, 0.0, meta=meta(i))
    fill = time.perf_counter() - started
    collect()
    print(f"filled in {fill:.1f} s ({fill / args.items * 1e6:.1f} µs per item); resident memory "
          f"grew {current_rss_mb() - base:.0f} MiB; {store.stats()}\n")

    rows: list[list[object]] = []

    def timed(label: str, query: Callable[[], object], repeat: int = args.repeat) -> None:
        times, result = [], None
        for _ in range(repeat):
            began = time.perf_counter()
            result = query()
            times.append(time.perf_counter() - began)
        found = len(result) if isinstance(result, list) else result
        rows.append([label, statistics.median(times) * 1e3, found])

    narrow = (1 << 256) >> 14  # about 60 keys of a million
    lo = value_keys[len(value_keys) // 2] & ~(narrow - 1)
    originals = iter(value_keys[7::1000])
    timed("expire: nothing expired", lambda: store.expire(50.0))
    timed("due(limit 200): nothing due", lambda: store.due(50.0, 200))
    timed("due_records(limit 200): nothing due", lambda: store.due_records(50.0, 200))
    timed("due(limit 200): 1% due", lambda: store.due(150.0, 200))
    timed("due_records(limit 200): 1% due", lambda: store.due_records(150.0, 200))
    timed("held_between: a narrow range", lambda: store.held_between(lo, lo + narrow, 200))
    timed("forget: a key of ours", lambda: store.forget(next(originals)))
    timed("expire: 1% expired (once)", lambda: store.expire(600.0), repeat=1)
    timed("expire: right after that sweep", lambda: store.expire(600.0))
    print(table(["query", "median ms", "returned"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
