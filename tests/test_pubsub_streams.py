"""Publisher streams: what one address inventing or taking stream ids can do to a subscriber
(docs/SECURITY.md, "Publish/subscribe: duplicates and drops"). The relay's stream table and the
inbox's guard on a virtual clock, attacks on the simulator, and a publisher restarting over real
UDP."""

from __future__ import annotations

import asyncio
import dataclasses
import random
from collections.abc import Callable
from functools import partial

import pytest

from qadom import Config, InvalidArgument, Node, Peer, RemoteError
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Address
from qadom.messages import Error, ErrorCode, Message, Ping
from qadom.pubsub import (
    Deliver,
    Inbox,
    Publish,
    Published,
    StreamTable,
    Subscribe,
    Subscribed,
    SubscriptionHandle,
    Unsubscribe,
)
from qadom.sim import SimNetwork

from helpers import FAST, udp_network

P = ("10.0.0.1", 4000)
Q = ("10.0.0.2", 4000)

# ============================================================================= pure pieces


def test_stream_table_bounds_what_one_address_opens_per_topic() -> None:
    table = StreamTable(per_publisher=2, lifetime=10.0, max_streams=100)
    for stream in (1, 2):
        assert table.check(7, stream, P, 0.0) == StreamTable.OK
        table.record(7, stream, P, 0.0)
    assert table.check(7, 3, P, 1.0) == StreamTable.TOO_MANY
    assert table.check(7, 1, P, 1.0) == StreamTable.OK  # its own streams go on
    assert table.check(8, 3, P, 1.0) == StreamTable.OK  # another topic has its own share
    assert table.check(7, 3, Q, 1.0) == StreamTable.OK  # another address too
    table.record(7, 1, P, 5.0)  # stream 1 renewed, stream 2 silent since 0
    assert table.check(7, 3, P, 9.99) == StreamTable.TOO_MANY
    assert table.check(7, 3, P, 10.0) == StreamTable.OK  # stream 2 lapsed: its slot is free
    assert table.opened_by(7, P) == 1 and len(table) == 1
    assert table.check(7, 1, P, 14.99) == StreamTable.OK
    assert table.expire(15.0) == 1 and len(table) == 0 and table.opened_by(7, P) == 0


def test_stream_table_keeps_a_stream_for_the_address_that_opened_it() -> None:
    table = StreamTable(per_publisher=4, lifetime=10.0, max_streams=100)
    table.record(7, 42, P, 0.0)
    assert table.check(7, 42, Q, 9.0) == StreamTable.TAKEN
    assert table.check(8, 42, Q, 9.0) == StreamTable.OK  # the same id in another topic is free
    table.record(7, 42, P, 9.0)
    assert table.check(7, 42, Q, 18.99) == StreamTable.TAKEN  # every message renews it
    assert table.check(7, 42, Q, 19.0) == StreamTable.OK  # silent for a lifetime: forgotten
    table.record(7, 42, Q, 19.0)
    assert table.check(7, 42, P, 19.0) == StreamTable.TAKEN
    assert table.entries() == [(7, 42, Q, 19.0)]


def test_stream_table_host_share_and_total_are_bounded() -> None:
    table = StreamTable(per_publisher=4, lifetime=60.0, max_streams=50, max_per_host=5)
    # One host, however many ports: at most five streams in all.
    for port in range(1, 6):
        table.record(1, port, ("10.0.0.9", port), 0.0)
    assert table.check(2, 99, ("10.0.0.9", 77), 0.0) == StreamTable.HOST_TOO_MANY
    assert table.held_by("10.0.0.9") == 5
    # Many hosts, many topics: never more than 50 streams, counts exact.
    rng = random.Random(1)
    now = 0.0
    for _ in range(5000):
        now += 0.001
        topic, stream = rng.randrange(20), rng.getrandbits(64)
        address = (f"10.1.{rng.randrange(200)}.1", rng.randrange(1, 4))
        if table.check(topic, stream, address, now) == StreamTable.OK:
            table.record(topic, stream, address, now)
        assert len(table) <= 50
    entries = table.entries()
    assert len(entries) == 50
    hosts = {owner[0] for _, _, owner, _ in entries}
    assert sum(table.held_by(h) for h in hosts) == 50
    assert all(table.held_by(h) <= 5 for h in hosts)
    assert [last for *_, last in entries] == sorted(last for *_, last in entries)
    # The least recently used was forgotten first: what is kept is the most recent.
    assert table.expire(now + 60.0) == 50
    assert len(table) == 0 and all(table.held_by(h) == 0 for h in hosts)
    assert table.held_by("10.0.0.9") == 0


def test_inbox_never_forgets_a_stream_heard_within_its_guard() -> None:
    inbox = Inbox(reorder_timeout=0.5, max_held=8, max_streams=4, guard=8.0,
                  max_held_bytes=1 << 20)
    assert inbox.accept(1, 0, b"honest", 0.0) == [b"honest"]
    for stream in range(100, 103):  # the inbox is full
        assert inbox.accept(stream, 0, b"junk", 0.1) == [b"junk"]
    # A fourth stream finds no room: every stream was heard within the guard. Dropped, counted,
    # and the honest stream still knows what it passed on.
    assert inbox.accept(200, 0, b"new", 1.0) == []
    assert inbox.overflowed == 1 and len(inbox) == 4
    assert inbox.accept(1, 0, b"honest", 7.9) == []  # a late copy: still a duplicate
    assert inbox.duplicates == 1
    # Past the guard the least recently heard (stream 100, at 0.1) makes room; the message
    # dropped before comes again and is passed on once.
    assert inbox.accept(200, 0, b"new", 8.1) == [b"new"]
    assert inbox.accept(200, 0, b"new", 8.2) == []
    assert inbox.accept(1, 1, b"honest 1", 8.3) == [b"honest 1"]


def test_inbox_keeps_a_stream_holding_messages() -> None:
    inbox = Inbox(reorder_timeout=0.5, max_held=8, max_streams=1, guard=0.1,
                  max_held_bytes=1 << 20)
    assert inbox.accept(1, 3, b"m3", 0.0) == []  # held behind a gap, not yet expired
    assert inbox.accept(2, 0, b"x", 5.0) == []  # no room: stream 1 would lose m3
    assert inbox.expire(5.0) == [b"m3"]
    assert inbox.accept(2, 0, b"x", 5.0) == [b"x"]


def test_inbox_memory_is_bounded_under_a_flood_of_streams() -> None:
    inbox = Inbox(reorder_timeout=0.5, max_held=8, max_streams=64, guard=1.0,
                  max_held_bytes=1 << 20)
    rng = random.Random(2)
    now = 0.0
    for _ in range(20_000):
        now += 0.0005
        inbox.accept(rng.getrandbits(64), rng.randrange(3), b"x", now)
        assert len(inbox) <= 64
    assert inbox.overflowed > 0  # two thousand streams a second: most found no room


def test_inbox_holds_at_most_max_held_bytes_and_the_fullest_stream_gives_up_first() -> None:
    """Publishers that send only out of order (every message behind a gap that never closes)
    cannot make a subscriber hold more than ``max_held_bytes``: the stream holding the most
    gives up its gap, and an honest stream's short gap is left to close."""
    big = bytes(8192)
    inbox = Inbox(reorder_timeout=0.5, max_held=256, max_streams=1024, guard=8.0,
                  max_held_bytes=64 * 1024)
    assert inbox.accept(1, 1, b"honest 1", 0.0) == []  # honest: seq 0 is late, 1 is held
    released: list[bytes] = []
    for i in range(200):  # eight streams that never send their seq 0, 8 KiB a message
        released += inbox.accept(100 + i % 8, 1 + i // 8, big, 0.001 * i)
        assert inbox.held_bytes <= 64 * 1024
    assert released and all(m == big for m in released)  # what the cap gave up: theirs only
    assert inbox.accept(1, 0, b"honest 0", 0.3) == [b"honest 0", b"honest 1"]
    assert inbox.held_bytes == sum(s.held_bytes for s in inbox._streams.values())
    assert inbox.held_bytes == sum(len(v) for s in inbox._streams.values() for v in s.held.values())


def test_each_subscription_holds_at_most_pubsub_reorder_bytes() -> None:
    with pytest.raises(InvalidArgument):
        Config(pubsub_reorder_bytes=0)
    net = SimNetwork(seed=4, config=dataclasses.replace(SIM, pubsub_reorder_bytes=10_000))
    nodes = net.add_nodes(12)
    got: list[bytes] = []
    subscribe(net, nodes[0], 77, got)
    inbox = nodes[0].pubsub._topics[77].inbox
    assert inbox.max_held_bytes == 10_000
    service = nodes[0].pubsub
    for seq in range(1, 4):  # a stream whose first message never comes, 4 000 bytes each
        service._receive(service._topics[77], 9, seq, bytes(4000), net.now)
    assert inbox.held_bytes <= 10_000 and got == [bytes(4000)] * 3


def test_copy_window_covers_both_hops_and_their_resends() -> None:
    assert Config().pubsub_copy_window == 8.0  # 2 hops x 2 attempts x 2 s
    assert Config(rpc_retries=2, rpc_timeout_max=3.0).pubsub_copy_window == 18.0
    # A relay must keep a stream for at least 1.5 copy windows after its last message.
    assert Config(rpc_timeout_max=10.0).pubsub_stream_lifetime == 60.0  # 1.5 x 40: allowed
    with pytest.raises(InvalidArgument, match="pubsub_stream_lifetime"):
        Config(rpc_timeout_max=10.5)
    with pytest.raises(InvalidArgument, match="pubsub_stream_lifetime"):
        Config(pubsub_stream_lifetime=11.9)
    # A relay keeps a stream far longer than a subscriber waits for copies of its messages.
    assert Config().pubsub_stream_lifetime >= 2 * Config().pubsub_copy_window


# ============================================================================= one relay


def drain(node: Node) -> list[Message]:
    codec = Codec(node.config)
    return [codec.decode(data).message for data, _ in node.datagrams_to_send()]


def test_a_refused_publish_changes_nothing_at_the_relay() -> None:
    config = Config(pubsub_burst=6, pubsub_rate=0.001)
    relay = Node(config=config)
    subscriber = ("10.0.9.9", 4000)
    relay.pubsub._handle_subscribe(Subscribe(5, 60_000), None, subscriber, 0.0)
    drain(relay)
    for stream in range(4):
        reply = relay.pubsub._handle_publish(Publish(5, stream, 0, b"m"), None, P, 1.0)
        assert reply == Published(1)
    assert sum(isinstance(m, Deliver) for m in drain(relay)) == 4
    kept = relay.pubsub.streams.entries()
    stats = dict(relay.stats)

    def refused(message: Publish, sender: Address, code: int) -> None:
        reply = relay.pubsub._handle_publish(message, None, sender, 2.0)
        assert isinstance(reply, Error) and reply.code == code, reply
        assert drain(relay) == []  # nothing forwarded
        assert relay.pubsub.streams.entries() == kept  # nothing kept or renewed

    for stream in range(10, 20):  # a fifth stream of this topic, and more
        refused(Publish(5, stream, 0, b"m"), P, ErrorCode.TOO_MANY_STREAMS)
    refused(Publish(5, 2, 1, b"forged"), Q, ErrorCode.STREAM_TAKEN)  # P's stream, from Q
    assert relay.stats["pubsub_too_many_streams"] == 10
    assert relay.stats["pubsub_stream_taken"] == 1
    changed = {k for k in relay.stats if relay.stats[k] != stats.get(k, 0)}
    assert changed == {"pubsub_too_many_streams", "pubsub_stream_taken"}
    # No refusal spent a token of P's burst of six: two more pass, then its rate refuses.
    for seq in (1, 2):
        assert relay.pubsub._handle_publish(Publish(5, 0, seq, b"m"), None, P, 2.0) == Published(1)
    assert len(drain(relay)) == 2
    kept = relay.pubsub.streams.entries()
    refused(Publish(5, 0, 3, b"m"), P, ErrorCode.RATE_LIMITED)


def test_a_resent_publish_is_answered_again_but_forwarded_once() -> None:
    """A publisher resends a PUBLISH whose PUBLISHED was lost or late: the relay answers it
    again, forwards nothing more, and charges nothing more to the sender's rate."""
    config = Config(pubsub_burst=3, pubsub_rate=0.001)
    relay = Node(config=config)
    for port in (4000, 4001):
        relay.pubsub._handle_subscribe(Subscribe(5, 60_000), None, ("10.0.9.9", port), 0.0)
    drain(relay)
    first = Publish(5, 7, 0, b"once")
    assert relay.pubsub._handle_publish(first, None, P, 1.0) == Published(2)
    assert sum(isinstance(m, Deliver) for m in drain(relay)) == 2
    for _ in range(3):  # the resends of one request, and a late copy of it
        assert relay.pubsub._handle_publish(first, None, P, 1.5) == Published(2)
        assert drain(relay) == []
    assert relay.stats["pubsub_resent"] == 3 and relay.stats["pubsub_published"] == 1
    # Two tokens of the burst of three are left: the next two messages pass, then the rate.
    for seq in (1, 2):
        assert relay.pubsub._handle_publish(Publish(5, 7, seq, b"m"), None, P, 2.0) == (
            Published(2))
    reply = relay.pubsub._handle_publish(Publish(5, 7, 3, b"m"), None, P, 2.0)
    assert isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED
    # Only the owner's resend is taken for one: the same seq from another address is refused.
    reply = relay.pubsub._handle_publish(first, None, Q, 2.0)
    assert isinstance(reply, Error) and reply.code == ErrorCode.STREAM_TAKEN


def subscribed(seed: int, config: Config | None = None, *, size: int = 30, trace: bool = False,
               ) -> tuple[SimNetwork, list[Node], int, list[bytes]]:
    """``size`` nodes (``SIM`` by default); nodes[0] subscribed to a topic that none of
    nodes[:3] relays; what it gets."""
    config = config or SIM
    net = SimNetwork(seed, config=config, trace=trace)
    nodes = net.add_nodes(size)
    topic = far_topic(nodes, nodes[:3], config.k)
    got: list[bytes] = []
    subscribe(net, nodes[0], topic, got)
    return net, nodes, topic, got


def test_publishes_whose_answers_are_lost_reach_each_subscriber_once_per_relay() -> None:
    """With a third of all datagrams lost, publishers resend; every relay forwards each message
    it took once, so subscribers see no more copies than relays."""
    net, nodes, topic, got = subscribed(31)
    publisher = nodes[1]
    net.loss = 0.3
    for i in range(20):
        net.call(publisher, publisher.pubsub.publish, topic, b"m%d" % i)
        net.run_for(0.5)
    net.run_for(10.0)
    published = sum(n.stats["pubsub_published"] for n in nodes)
    resent = sum(n.stats["pubsub_resent"] for n in nodes)
    assert resent > 0  # some answers were lost and their requests resent
    assert published <= 20 * SIM.k  # each relay took each message once at most
    assert len(set(got)) == len(got) and len(got) >= 15  # once each; loss may cost a few


def test_a_relay_stops_forwarding_to_a_subscriber_that_stays_silent_or_refuses() -> None:
    """A subscriber gone without a word costs each relay ``pubsub_silent_deliveries`` DELIVERs
    (each with its resend), then no more; one that answers ERROR (not subscribed there any
    more) is dropped at its first."""
    net, nodes, topic, _ = subscribed(41, dataclasses.replace(SIM, pubsub_lease=600.0))
    subscriber, publisher, other = nodes[:3]
    subscribe(net, other, topic, [])
    relays = relays_of(net, topic, subscriber)
    net.remove(subscriber)  # gone, no UNSUBSCRIBE
    for i in range(6):
        publish(net, publisher, topic, b"m%d" % i)
        net.run_for(5.0)  # every attempt of the DELIVERs timed out
    address = net.address_of(subscriber)
    assert all(address not in r.pubsub.relay.subscribers(topic, net.now) for r in relays)
    assert sum(r.stats["pubsub_lost_subscribers"] for r in relays) == len(relays)
    assert sum(r.stats["pubsub_forwarded"] for r in relays) == len(relays) * (
        SIM.pubsub_silent_deliveries + 6)  # the silent one three times each, the other six
    # A subscriber that answers NOT_SUBSCRIBED (it dropped the topic without telling) is
    # dropped at once.
    other.pubsub._topics.pop(topic)
    before = sum(r.stats["pubsub_forwarded"] for r in relays)
    publish(net, publisher, topic, b"after")
    publish(net, publisher, topic, b"after 2")
    net.run_for(5.0)
    assert sum(r.stats["pubsub_forwarded"] for r in relays) - before == len(relays)
    assert sum(r.stats["pubsub_delivery_refused"] for r in relays) == len(relays)


def test_a_lossy_link_does_not_cut_a_live_subscriber_off() -> None:
    """With 10% of datagrams lost, a DELIVER now and then goes unanswered through both its
    attempts; the relays keep forwarding to the subscriber, which gets every message. (Relays
    its renewal rounds under loss left out of its latest round are answered NOT_SUBSCRIBED and
    drop it until it subscribes there again: by design.)"""
    net, nodes, topic, got = subscribed(43)
    publisher = nodes[1]
    net.loss = 0.1
    sent = [b"m%d" % i for i in range(150)]
    for value in sent:
        net.call(publisher, publisher.pubsub.publish, topic, value)
        net.run_for(0.3)
    net.loss = 0.0
    net.run_for(10.0)
    assert sorted(got) == sorted(sent)
    # A relay drops a subscriber only after pubsub_silent_deliveries (3) DELIVERs in a row went
    # unanswered through both their attempts: at 10% loss about once in 20 000 windows of three,
    # under 0.1 expected in this run (of some 1 500 deliveries), while one lost exchange is not
    # rare (3.6%); a relay that dropped it at every lost exchange would drop it dozens of times.
    assert sum(n.stats["pubsub_lost_subscribers"] for n in nodes) <= 1
    assert sum(n.stats["timeouts"] for n in nodes) > 0  # DELIVERs (and others) went unanswered


# ============================================================================= attacks

SIM = Config(k=10, pubsub_lease=3.0)


def run_on(net: SimNetwork, node: Node, action: Callable[[float], object]) -> None:
    """Run ``action(now)`` on ``node`` and put whatever it sends on the network."""
    def start(now: float) -> Call[None]:
        action(now)
        done: Call[None] = Call("done")
        done.resolve(None)
        return done

    net.call(node, start)


def run_until(net: SimNetwork, predicate: Callable[[], bool], timeout: float) -> None:
    limit = net.now + timeout
    while not predicate():
        assert net.now < limit and net.step(), "timed out"


def subscribe(net: SimNetwork, node: Node, topic: int, got: list[bytes]) -> None:
    def start(now: float) -> Call[int]:
        return node.pubsub.subscribe(topic, got.append, now)[1]

    assert net.run_call(net.call(node, start)) == net.config.k


def publish(net: SimNetwork, node: Node, topic: int, value: bytes) -> int:
    return net.run_call(net.call(node, node.pubsub.publish, topic, value))


def far_topic(nodes: list[Node], participants: list[Node], k: int) -> int:
    """A topic whose k closest nodes (its relays) include none of ``participants``."""
    rng = random.Random(k)
    for _ in range(1000):
        topic = rng.getrandbits(256)
        closest = sorted(nodes, key=lambda n: n.id ^ topic)[:k]
        if not any(p in closest for p in participants):
            return topic
    raise AssertionError("no such topic in this network")


def relays_of(net: SimNetwork, topic: int, subscriber: Node) -> list[Node]:
    """The live nodes that forward ``topic`` to ``subscriber`` now."""
    return [n for n in net.live_nodes()
            if subscriber.address in n.pubsub.relay.subscribers(topic, net.now)]


def hold_tokens(net: SimNetwork, node: Node, peers: list[Node]) -> None:
    """``node`` gets each peer's token (as any peer that looked the topic up holds them)."""
    def ping(now: float) -> None:
        for peer in peers:
            node.request(net.address_of(peer), Ping(), now)

    run_on(net, node, ping)
    net.run_for(1.0)


def invent_streams(net: SimNetwork, attacker: Node, relays: list[Node], topic: int, count: int,
                   rng: random.Random) -> None:
    """The attacker sends each relay ``count`` PUBLISHes, each on a stream id never used."""
    def send(now: float) -> None:
        for relay in relays:
            for _ in range(count):
                attacker.request(net.address_of(relay),
                                 Publish(topic, rng.getrandbits(64), 0, b"junk"), now,
                                 retry=False)  # a resend would spend budget on nothing new

    run_on(net, attacker, send)


def publish_as(net: SimNetwork, attacker: Node, relays: list[Node], message: Publish,
               ) -> list[Message]:
    """The attacker sends ``message`` to each relay; their replies."""
    calls = [net.call(attacker, attacker.ask, net.address_of(r), message) for r in relays]
    return [net.run_call(call) for call in calls]


def streams_seen_by(net: SimNetwork, node: Node, topic: int) -> set[int]:
    """The stream ids of the DELIVERs of ``topic`` that reached ``node`` (from the trace)."""
    assert net.trace is not None
    codec = Codec(net.config)
    seen = set()
    for event in net.trace:
        if event[1] == "deliver" and event[3] == node.address:
            message = codec.decode(event[4]).message
            if isinstance(message, Deliver) and message.key == topic:
                seen.add(message.stream)
    return seen


def test_one_address_inventing_streams_cannot_make_a_subscriber_deliver_twice() -> None:
    """Right after each honest message reaches the subscriber, an attacker floods the topic's
    relays with new stream ids, within its rate budget at each (its burst of 200, then 50 a
    second), while the other copies of the message are still on their way (reordered by up to
    half a second). A subscriber that forgot the honest stream among the flood would take the
    late copies for new messages and deliver them again; the relays now forward at most four
    streams of the attacker each, and the subscriber never forgets a stream heard within the
    copy window."""
    net = SimNetwork(21, config=SIM)
    nodes = net.add_nodes(40)
    subscriber, publisher, attacker = nodes[:3]
    topic = far_topic(nodes, [subscriber, publisher, attacker], SIM.k)
    got: list[bytes] = []
    subscribe(net, subscriber, topic, got)
    relays = relays_of(net, topic, subscriber)
    assert len(relays) == SIM.k
    hold_tokens(net, attacker, relays)
    net.reorder, net.reorder_delay = 0.3, 0.5
    rng = random.Random(5)
    rounds = 6
    for i in range(rounds):
        value = b"honest %d" % i
        net.call(publisher, publisher.pubsub.publish, topic, value)
        run_until(net, lambda v=value: v in got, 5.0)  # type: ignore[misc]
        invent_streams(net, attacker, relays, topic, SIM.pubsub_burst, rng)
        for _ in range(20):
            net.run_for(0.02)
            invent_streams(net, attacker, relays, topic, 1, rng)
        net.run_for(3.0)  # every relay's bucket for the attacker fills up again
    net.run_for(10.0)
    assert [v for v in got if v != b"junk"] == [b"honest %d" % i for i in range(rounds)]
    attacker_address = net.address_of(attacker)
    for relay in relays:
        assert relay.pubsub.streams.opened_by(topic, attacker_address) <= 4
        assert relay.stats["pubsub_rate_limited"] == 0  # the attacker kept to its budget
        assert relay.stats["pubsub_too_many_streams"] > 0
    assert got.count(b"junk") <= SIM.k * 4
    assert subscriber.stats["pubsub_inbox_full"] == 0
    assert all(n.stats["internal_errors"] == 0 for n in nodes)


def test_an_address_cannot_publish_on_a_stream_it_learnt_by_subscribing() -> None:
    """Stream ids are not secret: every subscriber sees them. An attacker that subscribes and
    then publishes on the honest stream, ahead of it, would have subscribers take its messages
    for the honest ones and drop those as duplicates."""
    net = SimNetwork(22, config=SIM, trace=True)
    nodes = net.add_nodes(40)
    subscriber, publisher, attacker = nodes[:3]
    topic = far_topic(nodes, [subscriber, publisher, attacker], SIM.k)
    got: list[bytes] = []
    spied: list[bytes] = []
    subscribe(net, subscriber, topic, got)
    subscribe(net, attacker, topic, spied)
    relays = relays_of(net, topic, subscriber)
    for i in range(2):
        assert publish(net, publisher, topic, b"honest %d" % i) == SIM.k
    net.run_for(1.0)
    (stream,) = streams_seen_by(net, attacker, topic)
    replies = publish_as(net, attacker, relays, Publish(topic, stream, 2, b"forged"))
    assert all(isinstance(r, Error) and r.code == ErrorCode.STREAM_TAKEN for r in replies), replies
    for i in range(2, 4):
        assert publish(net, publisher, topic, b"honest %d" % i) == SIM.k
    net.run_for(2.0)
    assert got == [b"honest %d" % i for i in range(4)]
    assert all(r.stats["pubsub_stream_taken"] == 1 for r in relays)


def test_a_publisher_silent_longer_than_relays_keep_its_stream_starts_a_new_one() -> None:
    """Once relays have forgotten a stream, any address may open one with its id. The honest
    publisher, silent that long, goes on with a new stream, so what the attacker publishes
    under the old id takes the place of none of its messages."""
    net, nodes, topic, got = subscribed(23, size=40, trace=True)
    subscriber, publisher, attacker = nodes[:3]
    subscribe(net, attacker, topic, [])
    relays = relays_of(net, topic, subscriber)
    for i in range(2):
        assert publish(net, publisher, topic, b"honest %d" % i) == SIM.k
    net.run_for(SIM.pubsub_stream_lifetime + 1.0)
    (stream,) = streams_seen_by(net, attacker, topic)
    replies = publish_as(net, attacker, relays, Publish(topic, stream, 2, b"forged"))
    assert all(isinstance(r, Published) for r in replies)  # the id was free again
    for i in range(2, 4):
        assert publish(net, publisher, topic, b"honest %d" % i) == SIM.k
    net.run_for(2.0)
    assert [v for v in got if v != b"forged"] == [b"honest %d" % i for i in range(4)]
    assert len(streams_seen_by(net, subscriber, topic)) == 2  # the publisher's two streams


def test_a_publisher_refused_its_stream_by_a_new_relay_goes_on_with_a_new_one() -> None:
    """A relay that became one of the k closest after the stream's last message there has not
    seen it, and the first address to publish on it there opens it. The publisher, refused
    there, moves to a new stream: its later messages get through every relay."""
    net, nodes, topic, got = subscribed(24, size=40, trace=True)
    subscriber, publisher, attacker = nodes[:3]
    subscribe(net, attacker, topic, [])
    assert publish(net, publisher, topic, b"honest 0") == SIM.k
    newcomer = net.add_node(node_id=topic ^ 1)  # the closest peer to the topic from now on
    net.run_call(net.call(newcomer, newcomer.bootstrap, [net.address_of(nodes[5])]))
    net.run_for(SIM.pubsub_lease)  # the subscriber's renewals register it there
    assert newcomer in relays_of(net, topic, subscriber)
    (stream,) = streams_seen_by(net, attacker, topic)
    hold_tokens(net, attacker, [newcomer])
    (reply,) = publish_as(net, attacker, [newcomer], Publish(topic, stream, 50, b"forged"))
    assert isinstance(reply, Published)
    assert publish(net, publisher, topic, b"honest 1") == SIM.k - 1  # refused at the newcomer
    assert newcomer.stats["pubsub_stream_taken"] == 1
    for i in range(2, 4):
        net.run_for(1.0)  # the subscriber gives up waiting for what comes before "forged"
        assert publish(net, publisher, topic, b"honest %d" % i) == SIM.k
    net.run_for(2.0)
    assert [v for v in got if v != b"forged"] == [b"honest %d" % i for i in range(4)]


# ============================================================================= honest publishers


def test_a_publisher_that_forgets_the_topic_gets_a_new_stream_through() -> None:
    """An honest node opens a new stream after a restart or after its outbox forgot the topic:
    three such within a stream lifetime pass; a fourth new stream is refused until the oldest
    lapses, with a clear error."""
    net = SimNetwork(25, config=SIM)
    nodes = net.add_nodes(39)
    forgetful = net.add_node(config=dataclasses.replace(SIM, pubsub_max_topics=1))
    net.run_call(net.call(forgetful, forgetful.bootstrap, [net.address_of(nodes[3])]))
    subscriber = nodes[0]
    topic = far_topic([*nodes, forgetful], [subscriber, forgetful], SIM.k)
    other = topic ^ 2**255
    got: list[bytes] = []
    subscribe(net, subscriber, topic, got)
    sent = []
    for restart in range(4):
        for i in range(3):
            value = b"%d:%d" % (restart, i)
            assert publish(net, forgetful, topic, value) == SIM.k
            sent.append(value)
        publish(net, forgetful, other, b"elsewhere")  # the outbox now forgets the topic
    with pytest.raises(RemoteError) as refused:
        publish(net, forgetful, topic, b"too soon")
    assert refused.value.code == ErrorCode.TOO_MANY_STREAMS and "maximum" in str(refused.value)
    net.run_for(SIM.pubsub_stream_lifetime)
    assert publish(net, forgetful, topic, b"later") == SIM.k
    net.run_for(2.0)
    assert got == [*sent, b"later"]


def test_many_honest_publishers_on_one_topic_all_get_through() -> None:
    net = SimNetwork(26, config=SIM, reorder=0.2, duplicate=0.05)
    nodes = net.add_nodes(40)
    topic = 2**255 + 99
    subscribers = nodes[:3]
    publishers = nodes[3:19]
    got: dict[int, list[bytes]] = {}
    for node in subscribers:
        got[node.id] = []
        subscribe(net, node, topic, got[node.id])
    for i in range(8):  # interleaved, without waiting
        for p, node in enumerate(publishers):
            net.call(node, node.pubsub.publish, topic, b"%d:%d" % (p, i))
        net.run_for(0.2)
    net.run_for(5.0)
    for received in got.values():
        assert len(received) == len(set(received)) == 8 * len(publishers)
        for p in range(len(publishers)):
            mine = [int(v.split(b":")[1]) for v in received if v.startswith(b"%d:" % p)]
            assert mine == list(range(8))
    refusals = sum(n.stats["pubsub_too_many_streams"] + n.stats["pubsub_stream_taken"]
                   for n in nodes)
    assert refusals == 0


async def test_a_publisher_restarting_on_its_address_gets_through_each_time() -> None:
    """Over real UDP: a publisher that restarts on the same address (a new node, a new stream
    id) is served by the relays each time; its subscriber gets every message once."""
    config = dataclasses.replace(FAST, k=6)
    async with udp_network(10, config=config) as peers:
        topic = 2**200 + 5
        async with peers[2].subscribe(topic) as messages:
            port = 0
            sent = []
            for restart in range(3):
                publisher = Peer("127.0.0.1", port, config=config,
                                 rng=random.Random(restart))
                await publisher.start()
                port = publisher.address[1]
                try:
                    await asyncio.wait_for(publisher.bootstrap([peers[0].address]), 30)
                    for i in range(3):
                        value = b"%d:%d" % (restart, i)
                        assert await asyncio.wait_for(publisher.publish(topic, value), 30) >= 1
                        sent.append(value)
                finally:
                    await publisher.close()
            received = [await asyncio.wait_for(anext(messages), 10) for _ in sent]
            assert received == sent
            await asyncio.sleep(0.5)  # late copies would show up here
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(anext(messages), 0.5)
        # Each relay keeps the three streams of that one address (one per incarnation).
        kept = [p.node.pubsub.streams.opened_by(topic, ("127.0.0.1", port)) for p in peers]
        assert max(kept) == 3 and sum(kept) >= 3


# ======================================================================= limits under pressure


def test_inbox_held_bytes_bound_holds_when_a_gap_is_given_up_for_max_held() -> None:
    """A message that both overflows its stream's ``max_held`` and brings the held bytes past
    ``max_held_bytes`` must not leave the inbox above ``max_held_bytes``: giving up the one
    gap of that stream may release only a few bytes."""
    inbox = Inbox(reorder_timeout=0.5, max_held=2, max_streams=8, guard=8.0,
                  max_held_bytes=100)
    assert inbox.accept(1, 1, bytes(90), 0.0) == []  # 90 bytes behind stream 1's gap
    assert inbox.accept(2, 2, b"a", 0.0) == []
    assert inbox.accept(2, 4, b"b", 0.0) == []
    released = inbox.accept(2, 6, bytes(20), 0.0)  # stream 2 holds three: one gap given up
    assert inbox.held_bytes <= 100, inbox.held_bytes
    assert released[:1] == [b"a"] and bytes(90) in released
    assert inbox.held_bytes == sum(s.held_bytes for s in inbox._streams.values())


def test_inbox_a_long_silent_stream_holding_messages_does_not_keep_new_streams_out() -> None:
    """A stream holding messages is never forgotten. Once every tracked stream was heard
    longer than the guard ago, a new stream must still find room (the inbox drops only while
    every tracked stream was heard within the guard): a stream silent for the guard has given up
    its gaps (each held message gives them up ``reorder_timeout`` after it came, and the guard
    gives them all up even so: their missing messages, published before the held ones, would
    have come by then)."""
    inbox = Inbox(reorder_timeout=0.5, max_held=256, max_streams=2, guard=8.0,
                  max_held_bytes=1 << 20)
    for seq in range(2, 42, 2):  # twenty messages, each behind a gap of its own
        assert inbox.accept(1, seq, b"%d" % seq, 0.0) == []
    assert inbox.accept(2, 0, b"y", 0.0) == [b"y"]
    released: list[bytes] = []
    while (deadline := inbox.next_deadline()) is not None:  # as the gap timer runs it
        assert deadline <= 8.0
        released += inbox.expire(deadline)
    assert released == [b"%d" % seq for seq in range(2, 42, 2)]  # in order, once
    assert inbox.held_bytes == 0
    assert inbox.accept(3, 0, b"new", 8.5) == [b"new"] and inbox.overflowed == 0


def test_a_subscription_gives_up_a_silent_streams_gaps_within_the_copy_window() -> None:
    net = SimNetwork(seed=5, config=SIM)
    nodes = net.add_nodes(12)
    got: list[bytes] = []
    subscribe(net, nodes[0], 78, got)
    service = nodes[0].pubsub
    topic = service._topics[78]
    for seq in range(2, 82, 2):  # forty messages behind forty gaps, given up together
        service._receive(topic, 9, seq, b"%d" % seq, net.now)
    net.run_for(SIM.pubsub_reorder_timeout + 0.1)  # not one reorder timeout a gap (20 s)
    assert got == [b"%d" % seq for seq in range(2, 82, 2)]
    assert topic.inbox.held_bytes == 0


def test_a_subscriber_back_after_leaving_starts_with_no_silent_deliveries() -> None:
    """The count of DELIVERs a subscriber left unanswered in a row belongs to its subscription:
    one that unsubscribed (or whose lease lapsed) and subscribes again must not be dropped at
    its first unanswered DELIVER for the silences of the subscription before."""
    relay = Node(config=Config())
    service = relay.pubsub
    subscriber = ("10.0.9.9", 4000)

    def unanswered(now: float) -> None:  # a DELIVER to the subscription it holds now
        service._on_delivered(5, subscriber, service.relay.lease(5, subscriber), None, now)

    assert isinstance(service._handle_subscribe(Subscribe(5, 60_000), None, subscriber, 0.0),
                      Subscribed)
    for _ in range(Config().pubsub_silent_deliveries - 1):
        unanswered(1.0)  # unanswered, short of the limit
    assert service.relay.subscribers(5, 1.0) == [subscriber]
    service._handle_unsubscribe(Unsubscribe(5), None, subscriber, 2.0)
    assert isinstance(service._handle_subscribe(Subscribe(5, 60_000), None, subscriber, 3.0),
                      Subscribed)
    unanswered(4.0)  # one unlucky DELIVER of the new one
    assert service.relay.subscribers(5, 4.0) == [subscriber]
    # Nor does a lapsed lease leave its count behind.
    unanswered(5.0)
    assert service.relay.expire(70.0) == 1
    assert isinstance(service._handle_subscribe(Subscribe(5, 60_000), None, subscriber, 70.0),
                      Subscribed)
    unanswered(71.0)
    assert service.relay.subscribers(5, 71.0) == [subscriber]


def test_one_relay_answering_stream_taken_cannot_cut_a_publisher_off_the_others() -> None:
    """A relay that answers STREAM_TAKEN to every PUBLISH (hostile, or broken) must cost the
    publisher that relay only. Moving to a new stream at every such answer would open a stream
    per message at every honest relay, and after ``pubsub_streams_per_publisher`` of them all
    the honest relays would refuse the publisher (TOO_MANY_STREAMS) for a stream lifetime."""
    net, nodes, topic, got = subscribed(51)
    publisher = nodes[1]
    relays = relays_of(net, topic, nodes[0])
    liar = relays[0]

    def taken(message: Publish, sender: int | None, address: Address, now: float) -> Message:
        return Error(ErrorCode.STREAM_TAKEN, "this stream belongs to another address here")

    liar.register_handler(Publish, taken)
    sent = [b"m%d" % i for i in range(8)]
    for value in sent:
        assert publish(net, publisher, topic, value) == SIM.k - 1
        net.run_for(1.0)
    net.run_for(2.0)
    assert got == sent
    assert sum(n.stats["pubsub_too_many_streams"] for n in nodes) == 0


def test_a_burst_of_publishes_resent_is_forwarded_once() -> None:
    """A publisher sends a batch at once (those published during one lookup leave together,
    up to its burst); a PUBLISH of the batch resent because its answer was lost comes back after
    the rest of the batch was taken. It is still a resend: answered again, neither forwarded nor
    charged again."""
    config = Config(pubsub_burst=200, pubsub_rate=0.001)
    relay = Node(config=config)
    relay.pubsub._handle_subscribe(Subscribe(5, 60_000), None, ("10.0.9.9", 4000), 0.0)
    drain(relay)
    for seq in range(100):  # one batch
        assert relay.pubsub._handle_publish(Publish(5, 7, seq, b"m"), None, P, 1.0) == (
            Published(1))
    # Forwarded once each: as many out at once as one address takes, the rest waiting.
    out = config.max_requests_in_flight
    assert sum(isinstance(m, Deliver) for m in drain(relay)) == out
    assert relay.stats["requests_queued"] == 100 - out
    for seq in (0, 1, 50):  # their answers were lost: resent a moment later
        assert relay.pubsub._handle_publish(Publish(5, 7, seq, b"m"), None, P, 2.0) == (
            Published(1))
    assert drain(relay) == []
    assert relay.stats["pubsub_resent"] == 3 and relay.stats["pubsub_published"] == 100
    # A publisher jumping far ahead on its own stream costs the relay nothing more to remember.
    assert relay.pubsub._handle_publish(Publish(5, 7, 2**64 - 1, b"m"), None, P, 3.0) == (
        Published(1))
    assert relay.pubsub.streams.taken(5, 7, 2**64 - 1)
    assert not relay.pubsub.streams.taken(5, 7, 99)


def test_a_subscriber_back_at_once_is_not_cut_off_by_an_answer_to_its_old_subscription() -> None:
    """A subscriber leaves a topic and subscribes again at once while a publisher streams. A
    DELIVER its relays sent before its UNSUBSCRIBE reached them is answered NOT_SUBSCRIBED (its
    new subscription does not know the relay yet); with datagrams reordered, that answer can
    reach a relay after the new SUBSCRIBE. It is about the old subscription: the relay keeps the
    new one."""
    config = dataclasses.replace(SIM, k=5, pubsub_lease=60.0)
    for seed in (2, 11):  # seeds whose reordering makes such an answer overtake a SUBSCRIBE
        net = SimNetwork(seed, config=config)
        nodes = net.add_nodes(25)
        net.reorder = 0.3
        subscriber, publisher = nodes[0], nodes[1]
        topic = far_topic(nodes, [subscriber, publisher], config.k)
        handles: list[SubscriptionHandle] = []
        start = partial(subscribe_again, subscriber, topic, handles)
        assert net.run_call(net.call(subscriber, start)) == config.k
        for i in range(50):
            net.call(publisher, publisher.pubsub.publish, topic, b"first %d" % i)
            net.run_for(0.01)
        again = net.call(subscriber, start)  # leaves, and subscribes again
        for i in range(50):
            net.call(publisher, publisher.pubsub.publish, topic, b"again %d" % i)
            net.run_for(0.01)
        net.run_for(2.0)
        assert again.result() == config.k
        assert len(relays_of(net, topic, subscriber)) == config.k, seed


def subscribe_again(node: Node, topic: int, handles: list[SubscriptionHandle],
                    now: float) -> Call[int]:
    """Close every subscription in ``handles`` and open a new one (added to them)."""
    for handle in handles:
        handle.close(now)
    handle, call = node.pubsub.subscribe(topic, lambda value: None, now)
    handles.append(handle)
    return call
