"""A publisher's renewals under ``republish_batch``: a bulk of its own items published at once is
renewed over several ticks, ahead of the items it stores for others, and every renewal lands
before the copies of the last one expire (``Config.publisher_renew_after``)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import qadom.storage as storage_module
from qadom import Config
from qadom.contact import Contact
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.sqlite_store import SqliteStore
from qadom.storage import NEVER, MemoryStore, Meta, Store

THEIRS = "10.0.0.1"  # the host that sent us the items we store for others


def test_every_value_of_a_bulk_set_outlives_its_first_lifetime() -> None:
    """Ten values set at once by one publisher, with room for two republishes a tick: each is
    held by another node throughout, its renewal landing before the first copies expire, and
    read from another node once the first lifetime has passed."""
    config = Config(k=3, republish_batch=2)
    net = SimNetwork(seed=5, config=config)
    nodes = net.build(8, spread=60.0)
    net.run_for(120.0)
    publisher, reader = nodes[0], nodes[5]
    values = [b"bulk value %d" % i for i in range(10)]
    keys = [net.run_call(call) for call in [net.call(publisher, publisher.set, value)
                                            for value in values]]
    published = net.now
    others = [n for n in nodes if n is not publisher]
    net.run_for(config.publisher_renew_after - 600.0)
    alone = set()
    while net.now < published + config.expire_time + 600.0:
        net.run_for(10.0)
        alone |= {key for key in keys
                  if not any(n.store.get_value(key, net.now) is not None for n in others)}
    assert publisher.stats["republished"] >= len(keys)
    assert alone == set(), f"{len(alone)} of {len(keys)} held by their publisher alone a while"
    for key, value in zip(keys, values, strict=True):
        assert net.run_call(net.call(reader, reader.get, key)) == value


@pytest.fixture(params=["memory", "sqlite"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    made: Store = (MemoryStore(Config()) if request.param == "memory"
                   else SqliteStore(tmp_path / "qadom.sqlite3", Config()))
    yield made
    made.close()


def test_a_tick_renews_our_own_items_before_those_of_others(store: Store) -> None:
    """Ten values and ten records of others fell due before three items of our own (two values,
    one record), with room for seven republishes a tick: ours are all sent, and the four left
    go to the others, half to their records."""
    config = Config(republish_batch=7)
    node = Node(config=config, now=0.0, store=store)
    node.table.seen(Contact(5, ("10.0.0.9", 4000)))  # somebody to send to (none answers)
    theirs = Meta(1e9, republish_at=10.0, source=THEIRS)
    ours = Meta(1e9, republish_at=30.0, original=True)
    for i in range(10):
        store.put_value(100 + i, b"theirs %d" % i, theirs)
        store.put_record("other", 100 + i, b"their record", 0.0, meta=theirs)
    for key in (1, 2):
        store.put_value(key, b"ours %d" % key, ours)
    store.put_record("other", 3, b"our record", 0.0, meta=ours)
    now = config.maintenance_interval
    node.handle_timer(now)
    for key in (1, 2):
        meta = store.value_meta(key)
        assert meta is not None and meta.republish_at == now + config.publisher_renew_after
        assert meta.expires == now + config.expire_time
    record = store.record_meta("other", 3)  # a kind no service sends: kept off the schedule
    assert record is not None and record.republish_at == NEVER
    moved = [i for i in range(10) if store.value_meta(100 + i) != theirs]
    moved_records = [i for i in range(10) if store.record_meta("other", 100 + i) != theirs]
    assert (len(moved), len(moved_records)) == (2, 2)
    assert node.stats["republished"] == 4  # values: our two, two of theirs


def test_due_of_our_own_only_answers_as_the_whole_schedule_filtered(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``due`` and ``due_records`` with ``originals`` give what their answer without it gives
    of our own items, soonest first, cut at the limit: in a MemoryStore that scans, one that
    keeps indexes, and a SqliteStore, through a seeded mix of writes, renewals, forgets and
    sweeps."""
    monkeypatch.setattr(storage_module, "INDEX_AT", 0)
    indexed = MemoryStore(Config())
    monkeypatch.setattr(storage_module, "INDEX_AT", 10**9)
    scanning = MemoryStore(Config())
    sqlite = SqliteStore(tmp_path / "qadom.sqlite3", Config())
    stores: list[Store] = [indexed, scanning, sqlite]
    assert indexed._indexed and not scanning._indexed
    rng = random.Random(26)
    now = 0.0
    seen = {"ours": 0, "our records": 0, "cut": 0}
    try:
        for _ in range(600):
            key = rng.randrange(12)
            meta = Meta(now + rng.choice([20.0, 1e9]), now + rng.choice([0.0, 5.0, 15.0]),
                        original=rng.random() < 0.5)
            op, value, kind = rng.random(), rng.randrange(4), rng.choice(["dht", "namespace"])
            for target in stores:
                if op < 0.3:
                    target.put_value(key, b"v%d" % key, meta)
                elif op < 0.55:
                    target.add_entry(key, value, meta)
                elif op < 0.8:
                    target.put_record(kind, key, b"r", now, meta=meta)
                elif op < 0.9:
                    target.forget(key)
                else:
                    target.expire(now)
            now += rng.choice([0.0, 1.0, 5.0])
            at, limit = now + rng.choice([0.0, 10.0]), rng.choice([1, 3, 1000])
            for target in stores:
                everything = target.due(at, 1000)
                records = target.due_records(at, 1000)
                mine = target.due(at, limit, originals=True)
                my_records = target.due_records(at, limit, originals=True)
                assert mine == [d for d in everything if d.meta.original][:limit]
                assert my_records == [r for r in records if r.meta.original][:limit]
                assert mine == indexed.due(at, limit, originals=True)
                assert my_records == indexed.due_records(at, limit, originals=True)
            seen["ours"] += bool(mine)
            seen["our records"] += bool(my_records)
            seen["cut"] += len(indexed.due(at, 1000, originals=True)) > limit
        assert all(seen.values()), seen
    finally:
        sqlite.close()


def test_the_renewal_window_counts_one_tick_at_least() -> None:
    """The renewal starts ``publisher_renew_window`` before the copies of the last one expire
    (less ``operation_timeout``), one ``maintenance_interval`` at least, and at half the
    lifetime at most."""
    config = Config()
    assert config.publisher_renew_after == (config.expire_time - config.publisher_renew_window
                                            - config.operation_timeout)
    short = replace(config, publisher_renew_window=1.0)
    assert short.publisher_renew_after == (config.expire_time - config.maintenance_interval
                                           - config.operation_timeout)
    long = replace(config, publisher_renew_window=config.expire_time)
    assert long.publisher_renew_after == config.expire_time / 2
