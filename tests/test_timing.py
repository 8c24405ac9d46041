"""Kademlia's timing on a virtual clock (paper sections 2.3-2.5): expiry, hourly republish by
storers, 24-hour republish by the original publisher, cache lifetimes and bucket refresh."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import replace

import pytest

from qadom import Config, NotFoundError
from qadom.events import LookupEvent, LookupReply, LookupStarted
from qadom.ids import key_for
from qadom.messages import Store
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import clustered_network

HOUR = 3600.0
CONFIG = Config(k=8)  # small replica sets keep the simulated traffic small


def network(count: int, seed: int) -> tuple[SimNetwork, list[Node]]:
    net = SimNetwork(seed=seed, config=CONFIG)
    return net, net.add_nodes(count)


def holders(nodes: list[Node], key: int) -> list[Node]:
    return [n for n in nodes if n.store.get_value(key) is not None]


def test_items_expire_24_hours_after_publication_despite_hourly_republish() -> None:
    net, nodes = network(24, seed=1)
    publisher = nodes[3]
    key = net.run_call(net.call(publisher, publisher.set, b"short-lived"))
    published = net.now
    assert publisher.forget(key) is True
    net.remove(publisher)  # the publisher is gone: nobody renews the lifetime
    others = [n for n in nodes if n is not publisher]
    net.run_for(23 * HOUR)
    assert len(holders(others, key)) >= CONFIG.k  # storers kept republishing it
    assert sum(n.stats["republished"] for n in others) > 0
    net.run_for(published + 24 * HOUR + 2 * CONFIG.maintenance_interval - net.now)
    assert holders(others, key) == []  # the TTL travelled with every republish
    with pytest.raises(NotFoundError):
        net.run_call(net.call(others[0], others[0].get, key))


def test_the_publishers_renewal_lands_before_the_copies_expire() -> None:
    # A publisher far from its key, so that only the copies it renews can answer a get.
    net, nodes = network(48, seed=7)
    value = b"readable every second of the day"
    key = key_for(value)
    publisher = max(nodes, key=lambda n: n.id ^ key)
    assert net.run_call(net.call(publisher, publisher.set, value)) == key
    published = net.now
    readers = [n for n in nodes if n is not publisher and n.store.get_value(key) is None]
    net.run_for(published + 24 * HOUR - 3 * CONFIG.maintenance_interval - net.now)
    failed = 0
    for i in range(150):  # a get every 2 s, from 3 minutes before the 24th hour to 2 after
        reader = readers[i % len(readers)]
        try:
            net.run_call(net.call(reader, reader.get, key))
        except NotFoundError:
            failed += 1
        net.run_for(2.0)
    assert net.now > published + 24 * HOUR + 2 * CONFIG.maintenance_interval
    assert failed == 0
    assert publisher.stats["republished"] >= 1


def join_next_to(net: SimNetwork, key: int, via: Node, count: int = 3) -> list[Node]:
    """``count`` newcomers whose ids are the closest of all to ``key``, joined through ``via``."""
    newcomers = []
    for i in range(count):
        node = net.add_node(node_id=key ^ (i + 1))
        net.run_call(net.call(node, node.bootstrap, [net.address_of(via)]))
        newcomers.append(node)
    return newcomers


def test_the_closest_holder_hands_newcomers_their_items_at_once() -> None:
    net, nodes = network(24, seed=2)
    key = net.run_call(net.call(nodes[0], nodes[0].set, b"handed over"))
    published = net.now
    far = net.add_node(node_id=key ^ (1 << 255))  # far from the key: it gets nothing
    net.run_call(net.call(far, far.bootstrap, [net.address_of(nodes[5])]))
    newcomers = join_next_to(net, key, nodes[5])
    net.run_for(5.0)  # the verifications of the joins, then the copies
    assert holders(newcomers, key) == newcomers and holders([far], key) == []
    for node in newcomers:
        meta = node.store.value_meta(key)
        assert meta is not None and not meta.original
        assert abs(meta.expires - (published + 24 * HOUR)) < 10  # what was left, not more
    # Only the holder closest to the key sends (the paper's rule against duplicate copies): one
    # of the original holders, then each newcomer, once it holds the item, for the next ones
    # (and to the contacts it meets while it joins, as the paper's rule has it).
    senders = [n for n in [*nodes, far] if n.stats["handed_over"]]
    assert len(senders) == 1 and senders[0].stats["handed_over"] == 1
    assert senders[0] is min(holders(nodes, key), key=lambda n: n.id ^ key)
    assert sum(n.stats["handed_over"] for n in [*nodes, far, *newcomers]) <= CONFIG.k


def test_a_neighbour_that_comes_back_within_the_hour_is_not_handed_over_to_again() -> None:
    """A neighbour dropped from the table (its answers lost, or refused under the very burst of
    copies it was sent) and seen again gets no second burst within the hour: otherwise each
    hand-over could set off the next."""
    net, nodes = network(24, seed=2)
    for i in range(30):
        net.run_call(net.call(nodes[i % 5], nodes[i % 5].set, f"item {i}".encode()))
    newcomer = net.add_node()
    net.run_call(net.call(newcomer, newcomer.bootstrap, [net.address_of(nodes[5])]))
    net.run_for(5.0)
    senders = [n for n in nodes if n.stats["handed_over"]]
    assert senders
    handed = sum(n.stats["handed_over"] for n in nodes)
    for _ in range(3):  # it leaves their tables and comes back, three times
        net.run_for(CONFIG.verify_interval)  # a requester is verified once a minute at most
        for node in senders:
            node.table.remove(newcomer.id)
            net.run_call(net.call(newcomer, newcomer.ping, net.address_of(node)))
        net.run_for(5.0)  # each verifies the newcomer and adds it again
        assert all(newcomer.id in node.table for node in senders)
    assert sum(n.stats["handed_over"] for n in nodes) == handed
    net.run_for(HOUR)
    for node in senders:  # an hour on, a hand-over is due again
        node.table.remove(newcomer.id)
        net.run_call(net.call(newcomer, newcomer.ping, net.address_of(node)))
    net.run_for(5.0)
    assert sum(n.stats["handed_over"] for n in nodes) > handed


def test_a_node_alone_hands_its_items_to_the_first_that_joins() -> None:
    net, (first,) = network(1, seed=4)
    keys = [net.run_call(net.call(first, first.set, b"item %d" % i)) for i in range(5)]
    second = net.add_node()
    net.run_call(net.call(second, second.bootstrap, [net.address_of(first)]))
    net.run_for(5.0)
    assert all(second.store.get_value(key) is not None for key in keys)
    assert first.stats["handed_over"] == 5


def test_storers_republish_hourly_to_newcomers_and_skip_when_others_did() -> None:
    net, nodes = network(24, seed=2)
    key = net.run_call(net.call(nodes[0], nodes[0].set, b"replicate me"))
    # The holder closest to the key leaves without notice; newcomers closer still join. The
    # others still list it as closer than themselves, so none hands the item over.
    closest = min(holders(nodes, key), key=lambda n: n.id ^ key)
    net.remove(closest)
    nodes = [n for n in nodes if n is not closest]
    newcomers = join_next_to(net, key, nodes[5])
    assert holders(newcomers, key) == []
    before = sum(n.stats["republished"] for n in nodes)
    net.run_for(HOUR + 2 * CONFIG.maintenance_interval)
    assert len(holders(newcomers, key)) == 3  # the hourly republish reached the new k closest
    # Storers that received the item by republish within the hour skip their own: over three
    # hours far fewer republishes happen than one per storer per hour.
    net.run_for(2 * HOUR)
    storers = len(holders(nodes, key))
    republished = sum(n.stats["republished"] for n in nodes) - before
    assert republished < storers * 3 / 2


def test_original_publisher_renews_the_lifetime_every_24_hours() -> None:
    net, nodes = network(16, seed=3)
    publisher = nodes[2]
    key = net.run_call(net.call(publisher, publisher.set, b"long-lived"))
    others = [n for n in nodes if n is not publisher]
    net.run_for(47 * HOUR)  # past the first lifetime: still everywhere, renewed at 24 h
    assert len(holders(others, key)) >= CONFIG.k
    assert publisher.stats["republished"] >= 1
    reader = others[-1]
    assert net.run_call(net.call(reader, reader.get, key)) == b"long-lived"
    # Once the publisher forgets it, the copies expire a lifetime after its last republish.
    assert publisher.forget(key)
    net.run_for(26 * HOUR)
    assert holders(nodes, key) == []


def test_multimap_entries_follow_the_same_schedule() -> None:
    net, nodes = network(16, seed=4)
    net.run_call(net.call(nodes[1], nodes[1].append, 77, 5))
    net.remove(nodes[1])
    others = [n for n in nodes if n is not nodes[1]]
    net.run_for(12 * HOUR)
    assert net.run_call(net.call(others[0], others[0].search, 77)) == {5}
    net.run_for(13 * HOUR)
    assert net.run_call(net.call(others[0], others[0].search, 77)) == set()


def test_entries_of_one_key_due_together_are_republished_after_one_lookup() -> None:
    """Fifty entries appended under one key come due together at their storers: each storer's
    republish looks up the key's k closest once, then sends every entry there."""
    net, nodes = network(16, seed=5)
    writer = nodes[1]
    for value in range(50):
        net.run_call(net.call(writer, writer.append, 77, value))
    started: list[LookupStarted] = []
    for node in nodes:
        if node is not writer:
            node.add_listener(lambda e: started.append(e) if isinstance(e, LookupStarted)
                              and e.target == 77 else None)
    republished = sum(n.stats["republished"] for n in nodes)
    net.run_for(HOUR + 2 * CONFIG.maintenance_interval)
    republished = sum(n.stats["republished"] for n in nodes) - republished
    assert republished >= 50  # every entry, by at least one storer
    assert 1 <= len(started) <= republished // 50 + 1
    searcher = nodes[-1]
    assert net.run_call(net.call(searcher, searcher.search, 77)) == set(range(50))


def test_found_values_are_cached_on_the_path_with_a_shrinking_lifetime() -> None:
    config = replace(CONFIG, k=4, alpha=1)
    net = SimNetwork(seed=5, config=config)
    nodes = net.add_nodes(60)
    key = net.run_call(net.call(nodes[0], nodes[0].set, b"popular"))
    replicas = {n.id for n in holders(nodes, key)}
    reader = max(nodes, key=lambda n: n.id ^ key)  # far from the key: a long path
    # The reader knows no replica: it must reach one through peers that do not hold the value.
    while known := [c.id for c in reader.table if c.id in replicas]:
        for node_id in known:
            reader.table.remove(node_id)
    seen: dict[int, int] = {}  # candidate id -> distance to the key

    def watch(event: LookupEvent) -> None:
        contacts = (event.initial if isinstance(event, LookupStarted)
                    else event.closer if isinstance(event, LookupReply) else ())
        for contact in contacts:
            seen[contact.id] = contact.id ^ key

    reader.add_listener(watch)
    assert net.run_call(net.call(reader, reader.get, key)) == b"popular"
    assert reader.stats["cached_sent"] == 1
    net.run_for(1.0)
    cached = [n for n in nodes if (m := n.store.value_meta(key)) is not None and m.cached]
    assert len(cached) == 1 and cached[0].id not in replicas
    cache = cached[0]
    between = sum(1 for d in seen.values() if d < cache.id ^ key) - config.k  # past the replicas
    lifetime = int(math.ldexp(config.expire_time, -max(0, between)))
    meta = cache.store.value_meta(key)
    assert meta is not None and meta.republish_at == math.inf  # caches are never republished
    assert abs(meta.expires - (net.now + lifetime)) < 2.0
    net.run_for(lifetime + 2 * config.maintenance_interval)
    assert cache.store.value_meta(key) is None  # the cached copy expired...
    assert replicas <= {n.id for n in holders(nodes, key)}  # ...the replicas did not


def test_a_cached_copy_over_an_expired_one_stays_a_cached_copy() -> None:
    """A cache STORE that arrives after a replica expired, before the sweep removed it, is kept
    as the cached copy it is: never republished, and not the replica it replaces."""
    net = SimNetwork(seed=7, config=replace(CONFIG, maintenance_interval=HOUR))  # no sweep
    sender, holder = net.add_nodes(2)
    value = b"short-lived"
    key = key_for(value)
    net.run_call(net.call(sender, sender.ask, net.address_of(holder), Store(value, ttl=30)))
    assert holder.store.value_meta(key) is not None
    net.run_for(40)  # expired, still on disk
    assert holder.store.get_value(key, net.now) is None
    net.run_call(net.call(sender, sender.ask, net.address_of(holder),
                          Store(value, ttl=600, cache=True)))
    meta = holder.store.value_meta(key)
    assert meta is not None and meta.cached and meta.republish_at == math.inf
    assert meta.expires == pytest.approx(net.now + 600, abs=1)


def test_a_cached_copy_never_lengthens_the_life_of_a_replica() -> None:
    """A value cached for a day by a get late in its life, then sent by a storer's republish
    with what is left of it, is a replica that ends with the value's day, not the cache's: else
    it would republish the longer lifetime onward and a value nobody renews would outlive its
    day. And a cache STORE reaching a replica leaves its lifetime as it is."""
    net = SimNetwork(seed=8, config=replace(CONFIG, maintenance_interval=HOUR))
    sender, cache, replica = net.add_nodes(3)
    value = b"nobody renews me"
    key = key_for(value)

    def send(to: Node, message: Store) -> None:
        net.run_call(net.call(sender, sender.ask, net.address_of(to), message))

    send(cache, Store(value, ttl=int(CONFIG.expire_time), cache=True))  # a get cached it
    send(cache, Store(value, ttl=2 * 3600))  # a storer's republish: two hours are left
    meta = cache.store.value_meta(key)
    assert meta is not None and not meta.cached
    assert meta.expires == pytest.approx(net.now + 2 * 3600, abs=1)
    send(replica, Store(value, ttl=2 * 3600))
    send(replica, Store(value, ttl=int(CONFIG.expire_time), cache=True))
    meta = replica.store.value_meta(key)
    assert meta is not None and not meta.cached
    assert meta.expires == pytest.approx(net.now + 2 * 3600, abs=1)


def test_buckets_without_lookups_are_refreshed_every_hour() -> None:
    net, nodes = network(30, seed=6)
    net.run_for(3 * HOUR)
    for node in nodes:
        for bucket in node.table.buckets:
            assert net.now - bucket.last_lookup <= HOUR + CONFIG.maintenance_interval + 60
        node.table.check_invariants()


def test_a_table_split_along_clustered_ids_refreshes_a_bounded_number_of_buckets_an_upkeep(
        ) -> None:
    """Ids clustered around a node's own split its table into a bucket per level, over 200:
    they come stale together every hour, and an upkeep refreshes the 32 oldest, not all at
    once; the others follow at the next upkeeps, so none waits long past its hour."""
    net, nodes = clustered_network(12)
    config = net.config
    node = nodes[5]
    buckets = len(node.table.buckets)
    assert buckets > 200  # the case at stake: far more than the bound
    started: Counter[float] = Counter()
    node.add_listener(
        lambda e: started.update([e.now]) if isinstance(e, LookupStarted) else None)
    upkeeps = math.ceil(buckets / 32)
    for _ in range(27):  # 2 h 15 min: two hours' refreshes, each spread over its upkeeps
        net.run_for(5 * 60)
        oldest = min(b.last_lookup for b in node.table.buckets)
        assert net.now - oldest <= HOUR + (upkeeps + 1) * config.maintenance_interval
    assert max(started.values()) <= 32, started.most_common(3)
    assert sum(started.values()) >= 2 * buckets  # each bucket was still refreshed every hour


def test_nodes_started_at_the_same_instant_do_not_all_republish_in_the_same_tick() -> None:
    """Storers skip the hourly republish of an item another storer republished to them within
    the hour; that works only if their maintenance ticks are not simultaneous. Nodes started
    at the same instant (a script, a cluster, the simulator's build) tick at phases of their
    own."""
    net = SimNetwork(seed=9, config=CONFIG)
    nodes = net.build(60)  # every node starts at virtual time 0
    keys = [net.run_call(net.call(nodes[0], nodes[0].set, b"item %d" % i)) for i in range(10)]
    storers = sum(len(holders(nodes, key)) for key in keys)
    before = sum(n.stats["republished"] for n in nodes)
    net.run_for(3 * HOUR)
    republished = sum(n.stats["republished"] for n in nodes) - before
    # One storer's republish an hour per item is the aim; every storer's every hour would be
    # storers * 3.
    assert republished <= len(keys) * 3 * 3, (republished, storers * 3)


def test_gets_through_peers_without_the_value_leave_cached_copies_at_default_k() -> None:
    """With k = 20, a get whose path passed a peer without the value caches it there: the peers
    the lookup saw closer to the key include the 20 replicas, which do not shorten the copy's
    lifetime (else it would be 24 h / 2^20, under a second, and never sent). The tables are
    those of section 2.4 alone (split_bits 1): with the default b = 2, readers among 300 nodes
    nearly always know a holder, and their gets pass no peer without the value."""
    net = SimNetwork(0, config=Config(split_bits=1))
    nodes = net.build(300, spread=60)
    paths = 0
    keys = []
    for i in range(10):
        value = b"a popular value %d" % i
        keys.append(key_for(value))
        net.run_call(net.call(nodes[i], nodes[i].set, value), timeout=120)
        for getter in nodes[50:80]:
            events: list[LookupEvent] = []
            stop = getter.add_listener(events.append)
            assert net.run_call(net.call(getter, getter.get, keys[-1]), timeout=120) == value
            stop()
            paths += any(isinstance(e, LookupReply) and not e.found_value for e in events)
    net.run_for(5.0)
    lifetimes = [m.expires - net.now for n in nodes for key in keys
                 if (m := n.store.value_meta(key)) is not None and m.cached]
    assert paths > 0 and sum(n.stats["cached_sent"] for n in nodes) > 0
    defaults = Config()
    assert lifetimes and all(
        defaults.cache_min_lifetime - 10 <= t <= defaults.expire_time for t in lifetimes)


def test_a_cached_copy_never_outlives_the_copy_it_was_read_from() -> None:
    """A value its publisher stopped renewing, read late in its day through peers without it:
    the copy cached on the path ends when the replicas' copies end, not a day after the read."""
    config = replace(CONFIG, k=4, alpha=1)
    net = SimNetwork(seed=5, config=config)
    nodes = net.add_nodes(60)
    key = net.run_call(net.call(nodes[0], nodes[0].set, b"fading"))
    assert nodes[0].forget(key)
    net.run_for(23 * HOUR)
    replicas = holders(nodes, key)
    last = max(m.expires for n in replicas if (m := n.store.value_meta(key)) is not None)
    assert last < net.now + 2 * HOUR  # what is left of the day
    reader = max((n for n in nodes if n not in replicas), key=lambda n: n.id ^ key)
    for replica in replicas:
        reader.table.remove(replica.id)
    assert net.run_call(net.call(reader, reader.get, key)) == b"fading"
    assert reader.stats["cached_sent"] == 1
    net.run_for(1.0)
    cached = [m for n in nodes if (m := n.store.value_meta(key)) is not None and m.cached]
    assert len(cached) == 1 and cached[0].expires <= last + 2.0
    net.run_for(last - net.now + 3 * config.maintenance_interval)
    assert holders(nodes, key) == []
