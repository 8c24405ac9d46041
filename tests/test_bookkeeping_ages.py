"""Per-peer bookkeeping follows recent traffic, not every address churn ever showed a node.

Tokens granted to us, neighbours handed items over to, counts of failed requests, request and
publish rate buckets and a subscriber's inbox streams are forgotten at the maintenance ticks once
they can no longer change an answer; until then they answer as they always did. Contacts the
routing table gave up are pinged ever more seldom, and forgotten after a day.
"""

from __future__ import annotations

import itertools
import random

from qadom import Config
from qadom.contact import Contact
from qadom.messages import Ping, Pong
from qadom.node import Node
from qadom.pubsub import Inbox
from qadom.ratelimit import RateLimiter
from qadom.sim import SimNetwork
from qadom.storage import Meta

HOUR = 3600.0
CONFIG = Config(k=8, replacement_cache_size=8, maintenance_interval=300.0, pubsub_lease=600.0)
TICK = CONFIG.maintenance_interval
TOKEN_DEAD = 2 * (CONFIG.token_lifetime + CONFIG.maintenance_interval)
TOPIC = 12345


def run_ticks(node: Node, start: float, until: float) -> None:
    """Drive ``node``'s timers alone from ``start`` to ``until`` (every 10 virtual seconds)."""
    t = start
    while t <= until:
        node.handle_timer(t)
        node.datagrams_to_send()
        t += 10.0


def test_under_steady_churn_bookkeeping_holds_only_recent_peers() -> None:
    net = SimNetwork(11, config=CONFIG, loss=0.02)
    nodes = net.build(24, spread=TICK)
    relays = [net._by_id[i] for i in net.true_closest(TOPIC, 2)]
    stayers = [*nodes[:2], *(r for r in relays if r not in nodes[:2])]
    received: list[bytes] = []
    for stayer in stayers[:2]:
        net.call(stayer, lambda now, s=stayer: s.pubsub.subscribe(TOPIC, received.append, now)[1])
    rng = random.Random(2)
    ever: dict[str, set[object]] = {}

    def structures(node: Node) -> dict[str, list[object]]:
        return {"tokens": list(node._tokens), "handed": list(node._handed),
                "address_rate": list(node._address_rate._buckets),
                "pubsub_limiter": list(node.pubsub.limiter._buckets),
                "inbox": [s for t in node.pubsub._topics.values() for s in t.inbox._streams]}

    for _ in range(8):
        net.churn(leave=3, join=3, duration=HOUR, keep=stayers)
        for _ in range(6):
            setter, publisher = rng.choice(net.live_nodes()), rng.choice(net.live_nodes())
            net.call(setter, setter.set, rng.randbytes(20))
            net.call(publisher, publisher.pubsub.publish, TOPIC, b"m")
            for _ in range(10):
                net.run_for(HOUR / 60)
                for stayer in stayers:
                    for name, keys in structures(stayer).items():
                        ever.setdefault(name, set()).update((stayer.id, k) for k in keys)
    assert received, "the workload published nothing that arrived"
    now = net.now
    cfg = CONFIG
    refill = cfg.request_burst / cfg.request_rate
    for stayer in stayers:
        # What is kept was heard of within the time it can matter, plus one tick.
        assert all(now - came < TOKEN_DEAD + TICK for _, came in stayer._tokens.values())
        assert all(now - at < cfg.republish_interval + TICK for at in stayer._handed.values())
        assert all(now - updated < refill + TICK
                   for _, updated in stayer._address_rate._buckets.values())
        assert all(now - updated < cfg.pubsub_burst / cfg.pubsub_rate + TICK
                   for _, updated in stayer.pubsub.limiter._buckets.values())
        idle = cfg.pubsub_stream_lifetime + cfg.pubsub_copy_window
        for topic in stayer.pubsub._topics.values():
            assert all(now - s.heard < idle + TICK for s in topic.inbox._streams.values())
    # Far fewer than every peer the stayers ever kept such an entry for (a hand-over happens
    # only when a neighbour joins: fewer of those, and each matters for an hour).
    for name, seen in ever.items():
        kept = sum(len(structures(s)[name]) for s in stayers)
        # Tokens live half an hour, in which a stayer asks most live peers: kept, they would be
        # every peer it ever met.
        factor = {"handed": 1.0, "tokens": 1.5}.get(name, 3.0)
        assert kept * factor < len(seen), (name, kept, len(seen))


def test_a_token_is_sent_while_alive_and_forgotten_once_surely_dead() -> None:
    node = Node(config=CONFIG, rng=random.Random(1), node_id=1 << 200)
    early, late = ("127.0.0.2", 4000), ("127.0.0.3", 4000)
    node._keep_token(early, b"e" * 16, 0.0)
    node._keep_token(late, b"l" * 16, 500.0)
    run_ticks(node, 0.0, TOKEN_DEAD - 1.0)
    # Not surely valid any more, but possibly: still sent (with padding) after every tick.
    assert node._token_to_send(early, TOKEN_DEAD - 1.0) == (b"e" * 16, False)
    run_ticks(node, TOKEN_DEAD - 1.0, TOKEN_DEAD + TICK)
    assert early not in node._tokens  # forgotten at a tick, not only when next used
    assert node._token_to_send(early, TOKEN_DEAD + TICK) == (None, False)
    assert node._token_to_send(late, TOKEN_DEAD + TICK) == (b"l" * 16, False)


def test_a_neighbour_is_handed_items_over_once_per_interval_then_forgotten() -> None:
    node = Node(config=CONFIG, rng=random.Random(2), node_id=1 << 200)
    node.store.add_entry(node.id ^ 1, 9, Meta(1e9, 1e9, original=True))
    newcomer = Contact(node.id ^ 2, ("127.0.0.9", 4000))
    node._saw(newcomer, 10.0)
    assert node.stats["handed_over"] == 1
    node.table.remove(newcomer.id)
    interval = CONFIG.republish_interval
    run_ticks(node, 10.0, 10.0 + interval - 20.0)
    node._saw(newcomer, 10.0 + interval - 20.0)  # back within the interval: nothing again
    assert node.stats["handed_over"] == 1
    node.table.remove(newcomer.id)
    run_ticks(node, 10.0 + interval - 20.0, 10.0 + interval + TICK)
    assert newcomer.id not in node._handed
    node._saw(newcomer, 10.0 + interval + TICK)  # after it: handed over again, as before
    assert node.stats["handed_over"] == 2


def test_a_rate_limiter_swept_answers_as_one_never_swept_and_forgets_refilled_senders() -> None:
    swept: RateLimiter[int] = RateLimiter(rate=2.0, burst=4, max_senders=100_000)
    kept: RateLimiter[int] = RateLimiter(rate=2.0, burst=4, max_senders=100_000)
    rng = random.Random(4)
    now, sizes = 0.0, []
    for _ in range(3000):
        now += rng.expovariate(20.0)
        sender = rng.randrange(6) if rng.random() < 0.9 else rng.randrange(10_000)
        assert swept.allow(sender, now) == kept.allow(sender, now), (sender, now)
        if rng.random() < 0.05:
            swept.sweep(now)
            sizes.append(len(swept))
    assert len(kept) > 200 and max(sizes) < 40  # the passers-by are forgotten once refilled
    flooder = -1
    assert [swept.allow(flooder, now) for _ in range(5)] == [True] * 4 + [False]
    swept.sweep(now + 1.9)  # not refilled yet: kept, and still short of tokens
    assert flooder in swept._buckets
    swept.sweep(now + 2.0)
    assert flooder not in swept._buckets


def test_a_node_tick_forgets_refilled_request_buckets() -> None:
    node = Node(config=CONFIG, rng=random.Random(3), node_id=1 << 200)
    for port in range(50):
        assert node._within_rate(("127.0.0.5", port), 1.0)
    run_ticks(node, 1.0, TICK + 10.0)
    assert len(node._address_rate) == 0


def test_an_inbox_forgets_a_silent_stream_but_not_one_a_copy_can_still_reach() -> None:
    inbox = Inbox(0.5, 16, 8, guard=8.0, max_held_bytes=1 << 20)
    assert inbox.accept(1, 0, b"a", 0.0) == [b"a"]
    assert inbox.accept(2, 1, b"held", 0.0) == []  # behind a gap
    assert inbox.forget_idle(5.0, idle=68.0) == 0
    assert inbox.accept(1, 0, b"a", 5.0) == []  # a late copy is still a duplicate
    inbox.expire(10.0)  # the gap of stream 2 is given up
    assert inbox.forget_idle(67.9, idle=68.0) == 0
    assert inbox.forget_idle(70.0, idle=68.0) == 1  # stream 2, heard last at 0.0
    assert inbox.forget_idle(72.9, idle=68.0) == 0  # stream 1, heard last at 5.0: not yet
    assert inbox.forget_idle(73.0, idle=68.0) == 1 and len(inbox) == 0


def test_a_failure_counts_toward_a_backoff_only_as_long_as_a_backoff_lasts() -> None:
    # Failed requests in a row below the backoff (dead_after_failures = 2): a count whose last
    # failure is dead_backoff old is forgotten, at the next failure of that address and by the
    # sweep, oldest first, which stops at the first count still of use.
    node = Node(config=CONFIG, rng=random.Random(5), node_id=1, now=0.0)
    backoff = CONFIG.dead_backoff
    gone = [(f"10.0.0.{i}", 4000) for i in range(1, 6)]
    for address in gone:
        node.ping(address, 0.0)
    run_ticks(node, 0.0, 20.0)
    assert set(node._failures) == set(gone) and {c for c, _ in node._failures.values()} == {1}
    times = [failed for _, failed in node._failures.values()]
    assert times == sorted(times)  # the oldest first
    first, second, *rest = list(node._failures)
    # Again within the backoff: two in a row, the address is skipped.
    node.ping(first, 20.0)
    run_ticks(node, 20.0, 40.0)
    assert first in node._dead and first not in node._failures
    # Again once its last failure is a backoff old: the count starts afresh.
    again = max(times) + backoff
    node.ping(second, again)
    run_ticks(node, again, again + 20.0)
    assert second not in node._dead and node._failures[second][0] == 1
    assert list(node._failures) == [*rest, second]  # the newest last
    node._forget_old_bookkeeping(again)
    assert list(node._failures) == [second]
    node._forget_old_bookkeeping(node._failures[second][1] + backoff)
    assert not node._failures


def give_up(node: Node, contact: Contact, now: float) -> None:
    """Put ``contact`` in ``node``'s table, then fail ``stale_failures`` requests to it."""
    node.table.seen(contact)
    for _ in range(node.config.stale_failures):
        node._contact_failed(contact.address, contact.id, now)
    assert contact.id not in node.table


def test_a_given_up_contact_is_pinged_ever_more_seldom_then_forgotten_after_a_day() -> None:
    # A contact the table gave up with no replacement waiting is pinged at the maintenance ticks
    # with a delay doubling from given_up_retry up to refresh_interval, and forgotten once it has
    # been given up for given_up_lifetime.
    node = Node(config=CONFIG, rng=random.Random(5), node_id=1, now=0.0)
    contact = Contact(1 << 255, ("10.0.0.7", 4000))
    give_up(node, contact, 0.0)
    assert list(node._given_up) == [contact.id]
    pinged: list[float] = []
    t = 0.0
    while t <= CONFIG.given_up_lifetime + 2 * TICK:
        before = node.stats["given_up_pings"]
        node.handle_timer(t)
        node.datagrams_to_send()
        if node.stats["given_up_pings"] != before:
            pinged.append(t)
        t += 10.0
    assert not node._given_up
    assert pinged[0] >= CONFIG.given_up_retry and pinged[-1] < CONFIG.given_up_lifetime + TICK
    gaps = [b - a for a, b in itertools.pairwise(pinged)]
    delay = CONFIG.given_up_retry
    for gap in gaps:  # each ping at the first tick its delay allows
        assert delay <= gap < delay + TICK
        delay = min(2 * delay, CONFIG.refresh_interval)
    assert len(pinged) <= 4 + CONFIG.given_up_lifetime / CONFIG.refresh_interval


def test_given_up_contacts_are_bounded_oldest_first_and_leave_when_back() -> None:
    config = Config(k=8, maintenance_interval=300.0, max_given_up=2, given_up_pings=1)
    node = Node(config=config, rng=random.Random(6), node_id=1, now=0.0)
    gone = [Contact(i << 250, (f"10.0.0.{i}", 4000)) for i in range(1, 5)]
    for i, contact in enumerate(gone[:3]):
        give_up(node, contact, float(i))
    assert list(node._given_up) == [gone[1].id, gone[2].id]  # the oldest forgotten first
    # One that answers on its own comes back to the table and leaves the pool.
    node._saw(gone[1], 10.0)
    assert gone[1].id in node.table and list(node._given_up) == [gone[2].id]
    # At most given_up_pings per tick.
    give_up(node, gone[3], 11.0)
    node._retry_given_up(11.0 + config.given_up_retry)
    assert node.stats["given_up_pings"] == 1
    # None pinged while its bucket has no room for it (it would only wait as a replacement).
    full = Node(config=Config(k=1, maintenance_interval=300.0), rng=random.Random(7),
                node_id=1, now=0.0)
    far = Contact((1 << 255) + 2, ("10.0.0.8", 4000))
    give_up(full, far, 0.0)
    full.table.seen(Contact(1 << 254, ("10.0.0.9", 4000)))  # closer to us: the far half may
    full.table.seen(Contact((1 << 255) + 1, ("10.0.0.10", 4000)))  # not split, and is full
    assert not full.table.has_room_for(far.id)
    full._retry_given_up(full.config.given_up_retry)
    assert full.stats["given_up_pings"] == 0 and far.id in full._given_up


def test_a_given_up_contact_is_not_pinged_while_banned_nor_forgotten_for_another_address() -> None:
    node = Node(config=CONFIG, rng=random.Random(8), node_id=1, now=0.0)
    contact = Contact(1 << 255, ("10.0.0.7", 4000))
    give_up(node, contact, 0.0)
    # Its address lied meanwhile: it is neither asked nor let back in while banned.
    node.punish(contact, 1.0)
    node._retry_given_up(CONFIG.given_up_retry)
    assert node.stats["given_up_pings"] == 0 and contact.id in node._given_up
    # Once the ban has ended, it is pinged again.
    node._retry_given_up(1.0 + CONFIG.liar_backoff)
    assert node.stats["given_up_pings"] == 1
    # Another address answering for another id when asked for this one says nothing of the
    # contact at its own address: it stays remembered.
    elsewhere = ("10.0.0.8", 4000)
    node.datagrams_to_send()  # the ping above
    node.request(elsewhere, Ping(), 2000.0, expect_id=contact.id)
    ((data, _),) = node.datagrams_to_send()
    request = node.codec.decode(data)
    reply = node.codec.encode_parts(request.rpc_id, 99, Pong())
    node.datagram_received(reply, elsewhere, 2000.001)
    assert node.stats["wrong_id"] == 1 and contact.id in node._given_up
