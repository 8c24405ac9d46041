"""Days of a whole network on the virtual clock, with everything on at once.

Nodes of the simulator (qadom.sim) run for three virtual days over a lossy network while nodes
leave and join every few hours, values are set and forgotten by publishers who stay and set by
publishers who leave, multimap entries are appended, namespace and /dht records are written and
overwritten, and a topic has subscribers and publishers. Every six virtual hours a checkpoint
reads everything back from random nodes among those churn never removes (a reader removed halfway
through its read would leave the read unfinished, which says nothing of the network) and
measures every node. What must hold:

* an item whose publisher still publishes it is found at every checkpoint, the newest version of
  a record; an item nobody republishes any more is found until 24 h after its last publication
  and is held by no live node a few maintenance ticks after that;
* every subscriber gets every message published to its topic, once;
* what the network stores, and each node's bookkeeping, stays level from day to day under a
  steady workload, and each routing table keeps its invariants;
* no node counts an internal error or logs an ERROR;
* the same seed gives the same run.
"""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from qadom import Config, NotFoundError
from qadom.dhtrecords import SECURED, Record, make_entry
from qadom.dhtrecords import storage_key as dht_storage_key
from qadom.identity import Identity
from qadom.ids import key_for
from qadom.namespace import storage_key as namespace_storage_key
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import MemoryStore

HOUR = 3600.0
DAY = 24 * HOUR
CONFIG = Config(k=8, replacement_cache_size=8, pubsub_lease=600.0, maintenance_interval=300.0)
TICK = CONFIG.maintenance_interval
GONE_AFTER = 3 * TICK  # an item past its lifetime is swept from every live store within this
CHECKPOINT = 6 * HOUR
CHURN_EVERY = 3 * HOUR
TOPIC = int.from_bytes(hashlib.sha256(b"soak topic").digest(), "big")
NS_KEY = 7
DHT_KEY = "soak/stayer"
DHT_SECRET = (3).to_bytes(32, "big")


@dataclass
class Item:
    """Something published: how to read it back and what must be read until when."""

    name: str
    kind: str  # "value", "entry", "namespace", "dht"
    key: int  # where it lives in the id space
    expected: object
    publisher: Node
    renewed: bool = True  # its publisher still renews it
    last_published: float = 0.0  # when its lifetime last started (set or renewal)


@dataclass
class Checkpoint:
    """What one checkpoint read and measured."""

    at: float
    missing: list[str] = field(default_factory=list)  # items to find, not found
    lingering: list[str] = field(default_factory=list)  # items past their life, still held
    checked_gone: int = 0  # items past their life checked for
    stored: int = 0  # items held by the live nodes (values, entries, records)
    cached: int = 0  # of which cached copies
    live: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # the largest of each per-node size


def node_sizes(node: Node) -> dict[str, int]:
    """Every per-node structure that must stay bounded, by name."""
    pubsub = node.pubsub
    table = node.table
    return {
        "pending": len(node._pending),
        "timers": len(node._timers),
        "request_timers": len(node._request_timers),
        "deadlines": len(node._deadlines),
        "cancelled": len(node._cancelled),
        "dead": len(node._dead),
        "failures": len(node._failures),
        "given_up": len(node._given_up),
        "banned": len(node._banned),
        "tokens": len(node._tokens),
        "granted": len(node._granted),
        "granted_old": len(node._granted_old),
        "verifying": len(node._verifying),
        "verifying_proven": len(node._verifying_proven),
        "handed": len(node._handed),
        "address_rate": len(node._address_rate),
        "host_rate": len(node._host_rate),
        "proven_address_rate": len(node._proven_address_rate),
        "proven_host_rate": len(node._proven_host_rate),
        "peer_rtt": len(node._peer_rtt),
        "failed_rpcs": len(node._failed_rpcs),
        "refusals": len(node._refusals),
        "bugs_logged": len(node._bugs_logged),
        "listeners": len(node._listeners),
        "relay": len(pubsub.relay),
        "silent": len(pubsub._silent),
        "pubsub_limiter": len(pubsub.limiter),
        "streams": len(pubsub.streams),
        "topics": len(pubsub._topics),
        "outboxes": len(pubsub._outboxes),
        "inbox": sum(len(t.inbox) for t in pubsub._topics.values()),
        "contacts": len(table),
        "buckets": len(table.buckets),
        "replacements": sum(len(b.replacements) for b in table.buckets),
        "bucket_failures": sum(len(b.failures) for b in table.buckets),
        "saved_contacts": len(node.store.load_contacts()),
    }


class Soak:
    """The scenario: a network, its workload, and what its checkpoints found."""

    def __init__(self, seed: int, *, nodes: int = 64, loss: float = 0.02) -> None:
        self.net = SimNetwork(seed, config=CONFIG, loss=loss)
        self.rng = random.Random(seed)
        built = self.net.build(nodes, spread=TICK)
        self.stayers = built[:8]  # publishers and subscribers that never leave
        self.items: list[Item] = []
        self.checkpoints: list[Checkpoint] = []
        self.published: list[bytes] = []  # messages published to the topic, in order
        self.received: dict[int, list[bytes]] = {}  # by subscriber id
        self.errors: list[str] = []  # operations of the workload that failed
        self.ns_owner = Identity.from_seed(hashlib.sha256(b"soak owner %d" % seed).digest())
        self.ns_seq = -1
        self.dht_version = 0
        self.leaver_count = 0

    # ------------------------------------------------------------------ driving

    def run(self, hours: int) -> None:
        self.start()
        for hour in range(hours):
            if hour % int(CHURN_EVERY // HOUR) == 0:
                self.net.churn(leave=5, join=5, duration=CHURN_EVERY, keep=self.stayers)
            if hour % int(CHECKPOINT // HOUR) == 0 and hour:
                self.checkpoint()
            self.workload(hour)
            self.net.run_for(HOUR - (self.net.now % HOUR))
        self.checkpoint()

    def call(self, node: Node, operation: Callable[..., Any], *args: Any) -> Any:
        return self.net.run_call(self.net.call(node, operation, *args))

    def start(self) -> None:
        """Subscriptions, then what the stayers publish for the whole run."""
        for subscriber in self.stayers[5:]:
            inbox = self.received.setdefault(subscriber.id, [])
            _, registered = self.net.call(subscriber, subscriber.pubsub.subscribe, TOPIC,
                                          inbox.append)
            self.net.run_call(registered)
        for i, publisher in enumerate(self.stayers[:4]):
            self.set_value(publisher, b"stayer %d" % i)
            self.append(publisher, key_for(b"stayer entries"), i + 1)
        self.set_namespace(0)
        self.put_dht(0)

    def workload(self, hour: int) -> None:
        """One hour of steady work: a message to the topic every hour; a value set and later
        forgotten by a stayer every 6 h; a publisher that sets a value and an entry and leaves
        at once every 4 h; a new namespace version every 12 h and a /dht overwrite every day."""
        now = self.net.now
        for item in self.items:  # the original publisher's renewals restart the lifetime
            if item.renewed and now - item.last_published >= CONFIG.publisher_renew_after:
                item.last_published += CONFIG.publisher_renew_after
        publisher = self.stayers[hour % 2]
        message = b"message %d" % hour
        self.published.append(message)
        self.net.call(publisher, publisher.pubsub.publish, TOPIC, message)
        if hour % 6 == 3:
            self.rotate(hour)
        if hour % 4 == 1:
            self.leaver(hour)
        if hour % 12 == 0 and hour:
            self.set_namespace(hour)
        if hour % 24 == 12:
            self.put_dht(hour)

    def rotate(self, hour: int) -> None:
        """A stayer sets a value, and forgets the one it set 6 h ago."""
        publisher = self.stayers[4]
        for item in self.items:
            if item.publisher is publisher and item.renewed and item.kind == "value":
                assert publisher.forget(item.key)
                item.renewed = False
        self.set_value(publisher, b"rotating %d" % hour)

    def leaver(self, hour: int) -> None:
        """A node sets a value and appends an entry, then leaves without a word."""
        stay = {n.id for n in self.stayers}
        live = [n for n in self.net.live_nodes() if n.id not in stay]
        node = self.rng.choice(live)
        self.leaver_count += 1
        self.set_value(node, b"left behind %d" % hour)
        self.append(node, key_for(b"leaver entries"), 1000 + hour)
        self.net.remove(node)
        self.net.churn(join=1, duration=HOUR)  # someone else takes its place
        for item in self.items:
            if item.publisher is node:
                item.renewed = False

    def set_value(self, node: Node, value: bytes) -> None:
        try:
            key = self.call(node, node.set, value)
        except Exception as exc:  # the checkpoints show what it costs
            self.errors.append(f"set {value!r}: {exc!r}")
            key = key_for(value)
        self.items.append(Item(value.decode(), "value", key, value, node,
                               last_published=self.net.now))

    def append(self, node: Node, key: int, value: int) -> None:
        try:
            self.call(node, node.append, key, value)
        except Exception as exc:
            self.errors.append(f"append {value}: {exc!r}")
        self.items.append(Item(f"entry {value}", "entry", key, value, node,
                               last_published=self.net.now))

    def set_namespace(self, hour: int) -> None:
        node = self.stayers[2]
        self.ns_seq += 1
        record = self.ns_owner.record(NS_KEY, b"version at hour %d" % hour, self.ns_seq)
        try:
            self.call(node, node.namespace.set, record)
        except Exception as exc:
            self.errors.append(f"namespace seq {self.ns_seq}: {exc!r}")
        skey = namespace_storage_key(self.ns_owner.public_key, NS_KEY)
        self.items = [i for i in self.items if i.kind != "namespace"]
        self.items.append(Item(f"namespace seq {self.ns_seq}", "namespace", skey, self.ns_seq,
                               node, last_published=self.net.now))

    def put_dht(self, hour: int) -> None:
        node = self.stayers[3]
        data = f"written at hour {hour}"
        write = Record(DHT_KEY, SECURED, (make_entry(DHT_SECRET, DHT_KEY, data, SECURED),))
        try:
            self.call(node, node.dht_records.put, write)
        except Exception as exc:
            self.errors.append(f"dht put {data}: {exc!r}")
        self.items = [i for i in self.items if i.kind != "dht"]
        self.items.append(Item(f"dht {data}", "dht", dht_storage_key(DHT_KEY), data, node,
                               last_published=self.net.now))

    # ------------------------------------------------------------------ checking

    def checkpoint(self) -> None:
        net = self.net
        point = Checkpoint(net.now)
        live = net.live_nodes()
        point.live = len(live)
        for item in self.items:
            ends = item.last_published + CONFIG.expire_time
            if item.renewed or net.now < ends - TICK:
                if not self.found(item, live):
                    point.missing.append(item.name)
            elif net.now >= ends + GONE_AFTER:
                point.checked_gone += 1
                if any(self.holds(n, item) for n in live):
                    point.lingering.append(item.name)
        for node in live:
            node.table.check_invariants()
            stats = node.store.stats()
            point.stored += stats["values"] + stats["entries"] + stats["records"]
            assert isinstance(node.store, MemoryStore)
            point.cached += sum(1 for _, _, meta in node.store.values() if meta.cached)
            for name, size in node_sizes(node).items():
                point.sizes[name] = max(point.sizes.get(name, 0), size)
        self.checkpoints.append(point)

    def found(self, item: Item, live: list[Node]) -> bool:
        # The reader is one of the stayers, which churn never removes: any other live node may
        # leave in the middle of its read, and a read whose reader is gone never completes.
        reader = self.rng.choice([n for n in self.stayers if n is not item.publisher])
        try:
            if item.kind == "value":
                return bool(self.call(reader, reader.get, item.key) == item.expected)
            if item.kind == "entry":
                return item.expected in self.call(reader, reader.search, item.key)
            if item.kind == "namespace":
                record = self.call(reader, reader.namespace.get, self.ns_owner.public_key,
                                   NS_KEY)
                return bool(record.seq == item.expected)
            # Records carry no version: a get reads the copy of the closest holder it reaches,
            # which churn can leave with an older one (filled by a lagging storer) until that
            # one expires. What must hold is that the get returns that copy, not another met on
            # the way.
            record = self.call(reader, reader.dht_records.get, DHT_KEY)
            return bool(record == self.closest_dht_copy(live))
        except NotFoundError:
            return False

    def closest_dht_copy(self, live: list[Node]) -> Record | None:
        """The live /dht record of the live node closest to its storage key that holds one."""
        skey = dht_storage_key(DHT_KEY)
        for node in sorted(live, key=lambda n: n.id ^ skey):
            record = node.dht_records.local(DHT_KEY, self.net.now)
            if record is not None:
                return record
        return None

    def holds(self, node: Node, item: Item) -> bool:
        store = node.store
        if item.kind == "value":
            return store.value_meta(item.key) is not None
        if item.kind == "entry":
            assert isinstance(item.expected, int)
            return store.entry_meta(item.key, item.expected) is not None
        kind = "namespace" if item.kind == "namespace" else "dht"
        return store.record_meta(kind, item.key) is not None


class ErrorLog(logging.Handler):
    """Keeps every record of WARNING and above logged on the "qadom" logger."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def run_logged(scenario: Soak, hours: int) -> Iterator[tuple[Soak, ErrorLog]]:
    """Run ``scenario`` for ``hours`` keeping what the "qadom" logger says; a fixture's body."""
    handler = ErrorLog()
    logger = logging.getLogger("qadom")
    logger.addHandler(handler)
    try:
        scenario.run(hours)
        yield scenario, handler
    finally:
        logger.removeHandler(handler)


@pytest.fixture(scope="module")
def soak() -> Iterator[tuple[Soak, ErrorLog]]:
    yield from run_logged(Soak(2024), 72)


def days(points: list[Checkpoint], first: float, last: float) -> list[Checkpoint]:
    return [p for p in points if first <= p.at <= last]


# Sizes that follow the work in progress (requests and lookups under way, fresh bookkeeping):
# they must be no larger on day 3 than on day 1, give or take a few lookups under way.
LEVEL = ("pending", "timers", "request_timers", "deadlines", "cancelled", "dead", "banned",
         "granted", "granted_old", "verifying", "verifying_proven", "listeners", "relay",
         "silent", "streams", "topics", "outboxes", "bugs_logged", "replacements",
         "bucket_failures", "contacts", "buckets", "saved_contacts", "given_up")
# Sizes kept per address or stream ever met, forgotten least recently used first: they grow
# with churn up to their configured bounds.
CAPPED = {"failures": CONFIG.max_failure_counts, "tokens": CONFIG.max_tokens,
          "address_rate": CONFIG.rate_limit_senders, "host_rate": CONFIG.rate_limit_senders,
          "proven_address_rate": CONFIG.rate_limit_senders,
          "proven_host_rate": CONFIG.rate_limit_senders,
          "peer_rtt": CONFIG.max_peer_rtts, "failed_rpcs": CONFIG.max_failed_rpcs,
          "refusals": CONFIG.rate_limit_senders, "pubsub_limiter": CONFIG.pubsub_max_senders,
          "handed": CONFIG.max_hand_over_recipients, "inbox": CONFIG.pubsub_max_publishers,
          "given_up": CONFIG.max_given_up}


def test_the_run_covered_three_days_of_churn_and_work(soak: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = soak
    net = scenario.net
    assert net.now >= 3 * DAY
    assert len(scenario.checkpoints) == 12
    assert scenario.errors == []
    joined = net.joins
    assert len(joined) >= 100
    # A churn departure may pick a node still joining: its bootstrap, like all it was doing,
    # ends with it. Every join of a node still on the network ends (within operation_timeout).
    running = {id(call): address for address, node in net.nodes.items()
               for _, call in node._deadlines.values()}
    assert all(running.get(id(c)) in net.down for c in joined if not c.done)
    # A join fails only when both attempts of its one bootstrap ping are lost (2% loss each
    # way) or its bootstrap node leaves meanwhile; such a node leaves again.
    failed = [c for c in joined if c.exception() is not None]
    assert len(failed) <= 3 and len(net.live_nodes()) == 64 - len(failed)
    assert len(net.down) >= 100  # the network turned over more than once
    assert all(p.live >= 55 for p in scenario.checkpoints)
    assert net.stats()["dropped"] > 0


def test_what_is_published_is_found_while_it_lives_and_then_is_gone(
        soak: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = soak
    points = scenario.checkpoints
    assert [p.missing for p in points if p.missing] == []
    assert [p.lingering for p in points if p.lingering] == []
    # Values and entries of publishers that left, and values forgotten, did run out meanwhile.
    assert sum(p.checked_gone for p in points) >= 40
    kinds = {i.kind for i in scenario.items}
    assert kinds == {"value", "entry", "namespace", "dht"}


def test_every_subscriber_gets_every_message_once(soak: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = soak
    assert len(scenario.published) == 72
    for received in scenario.received.values():
        assert received == scenario.published


def test_what_the_network_stores_stays_level(soak: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = soak
    points = scenario.checkpoints
    # The workload is steady from the end of day 1 on: as many items run out as are published.
    settled = days(points, DAY, DAY)[0].stored
    later = [p.stored for p in days(points, DAY + 1, 3 * DAY)]
    assert max(later) <= 1.25 * settled
    assert all(p.cached <= 10 for p in points)  # cached copies run out too


def test_each_nodes_bookkeeping_stays_bounded(soak: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = soak
    points = scenario.checkpoints
    first, last = days(points, 0, DAY), days(points, 2 * DAY + 1, 3 * DAY)
    for name in LEVEL:
        before = max(p.sizes[name] for p in first)
        after = max(p.sizes[name] for p in last)
        assert after <= 2 * before + 4 * CONFIG.k, (name, before, after)
    for name, cap in CAPPED.items():
        assert max(p.sizes[name] for p in points) <= cap, name
    for point in points:  # every table holds at most k per bucket (checked there too)
        assert point.sizes["contacts"] <= CONFIG.k * point.sizes["buckets"]


def test_no_node_met_an_internal_error(soak: tuple[Soak, ErrorLog]) -> None:
    scenario, log = soak
    stats = scenario.net.stats()
    bugs = {name: count for name, count in stats.items()
            if count and name in ("node.internal_errors", "node.listener_errors",
                                  "node.storage_errors", "node.malformed")}
    assert bugs == {}
    assert [r.getMessage() for r in log.records if r.levelno >= logging.ERROR] == []
    assert all(not r.exc_info for r in log.records)


def fingerprint(seed: int) -> str:
    scenario = Soak(seed, nodes=24)
    scenario.run(7)
    net = scenario.net
    summary = (net.stats(), net.churn_log, [(p.at, p.stored, p.sizes, p.missing)
                                            for p in scenario.checkpoints],
               scenario.received, [(i.name, i.key) for i in scenario.items])
    return hashlib.sha256(repr(summary).encode()).hexdigest()


def test_the_same_seed_gives_the_same_run() -> None:
    assert fingerprint(5) == fingerprint(5)
    assert fingerprint(6) != fingerprint(5)


def dht_write(data: str) -> Record:
    return Record(DHT_KEY, SECURED, (make_entry(DHT_SECRET, DHT_KEY, data, SECURED),))


def test_a_dht_get_returns_the_overwrite_not_a_version_left_on_the_path() -> None:
    config = Config(k=4, replacement_cache_size=4)
    net = SimNetwork(8, config=config)
    nodes = net.add_nodes(24)
    owner = nodes[0]
    net.run_call(net.call(owner, owner.dht_records.put, dht_write("first")))
    skey = dht_storage_key(DHT_KEY)
    old = [n for n in nodes if n.dht_records.local(DHT_KEY, net.now) is not None]
    # k newcomers closer to the key than anyone: the overwrite goes to them, and the nodes that
    # held the first version keep it (and republish it, refused by the newcomers) for 24 h.
    for i in range(config.k):
        node = net.add_node(node_id=skey ^ (i + 1))
        net.run_call(net.call(node, node.bootstrap, [net.address_of(nodes[1])]))
    net.run_call(net.call(owner, owner.dht_records.put, dht_write("second")))
    assert any(n.dht_records.local(DHT_KEY, net.now).entries[0].data == "first"  # type: ignore[union-attr]
               for n in old if n is not owner)
    read = []
    for reader in nodes[1:]:
        record = net.run_call(net.call(reader, reader.dht_records.get, DHT_KEY))
        read.append(record.entries[0].data)
    assert read.count("first") == 0, read


def test_checkpoint_readers_are_nodes_churn_never_removes() -> None:
    # Churn removes a node at a random instant, possibly in the middle of a read it makes: the
    # read then never completes, and the checkpoint would count as missing an item the network
    # holds. So the checkpoints read from the stayers only.
    scenario = Soak(1, nodes=24)
    readers: list[Node] = []
    call = scenario.call

    def recording(node: Node, operation: Callable[..., Any], *args: Any) -> Any:
        readers.append(node)
        return call(node, operation, *args)

    scenario.start()
    scenario.net.churn(leave=5, join=5, duration=CHURN_EVERY, keep=scenario.stayers)
    scenario.net.run_for(HOUR)
    scenario.call = recording  # type: ignore[method-assign]
    scenario.checkpoint()
    assert len(readers) == len(scenario.items) > 0
    assert all(reader in scenario.stayers for reader in readers)
