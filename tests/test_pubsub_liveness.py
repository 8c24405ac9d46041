"""Publish/subscribe: when a relay gives up on a subscriber that does not answer its DELIVERs.

DELIVERs out at the same time fail together (one outage, one burst), so they count as one
failure: a live subscriber cut off for a moment keeps its relays and misses only what could not
reach it, while one gone for good is still dropped within a bounded time
(``Config.pubsub_silent_deliveries``). The relay's rule on a virtual clock, then the protocol on
the simulator."""

from __future__ import annotations

from qadom import Config, Node, Peer
from qadom.call import Call
from qadom.messages import Envelope
from qadom.pubsub import Delivered, Subscribe, Subscribed
from qadom.sim import SimNetwork
from qadom.subscription import Subscription

from helpers import far_topic

CONFIG = Config(k=8)
LIFETIME = (1 + CONFIG.rpc_retries) * CONFIG.rpc_timeout_max  # the longest a request takes
RATE = 10.0  # messages a second, one publisher


def test_deliveries_failing_together_count_as_one() -> None:
    """Unanswered DELIVERs count toward ``pubsub_silent_deliveries`` only when each fails at
    least a request's longest lifetime after the one counted before it: any number failing
    within that time of each other (out together) count once."""
    relay = Node(config=CONFIG)
    service = relay.pubsub
    subscriber = ("10.0.9.9", 4000)
    assert isinstance(service._handle_subscribe(Subscribe(5, 600_000), None, subscriber, 0.0),
                      Subscribed)
    lease = service.relay.lease(5, subscriber)

    def unanswered(now: float) -> None:
        service._on_delivered(5, subscriber, lease, None, now)

    for i in range(200):  # a burst, and an outage of nearly a request lifetime: one
        unanswered(1.0 + i * (LIFETIME - 0.01) / 200)
    unanswered(1.0 + LIFETIME)  # the second: sent after the first had failed
    for i in range(100):
        unanswered(1.0 + LIFETIME + i * (LIFETIME - 0.01) / 100)
    unanswered(1.0 + 2 * LIFETIME - 0.001)  # just short of a lifetime after the second
    assert service.relay.subscribers(5, 20.0) == [subscriber]
    assert relay.stats["pubsub_lost_subscribers"] == 0
    unanswered(1.0 + 2 * LIFETIME)  # the third
    assert service.relay.subscribers(5, 20.0) == []
    assert relay.stats["pubsub_lost_subscribers"] == 1


def test_an_answer_starts_the_count_afresh() -> None:
    """A subscriber that answers one DELIVER between failures is there: the failures before
    that answer no longer count toward dropping it."""
    relay = Node(config=CONFIG)
    service = relay.pubsub
    subscriber = ("10.0.9.9", 4000)
    service._handle_subscribe(Subscribe(5, 600_000), None, subscriber, 0.0)
    lease = service.relay.lease(5, subscriber)
    service._on_delivered(5, subscriber, lease, None, 1.0)
    service._on_delivered(5, subscriber, lease, None, 1.0 + LIFETIME)
    # An answer (any envelope that is not an ERROR) in between: the subscriber is there.
    service._on_delivered(5, subscriber, lease, Envelope(1, None, Delivered()), 1.0 + LIFETIME + 1)
    service._on_delivered(5, subscriber, lease, None, 1.0 + 2 * LIFETIME)
    service._on_delivered(5, subscriber, lease, None, 1.0 + 3 * LIFETIME)
    assert service.relay.subscribers(5, 20.0) == [subscriber]


def network(seed: int) -> tuple[SimNetwork, list[Node], int, Node, Node, list[bytes]]:
    """40 nodes; ``subscriber`` subscribed to a topic that neither it nor ``publisher`` relays;
    what it gets."""
    net = SimNetwork(seed, config=CONFIG)
    nodes = net.add_nodes(40)
    subscriber, publisher = nodes[3], nodes[7]
    topic = far_topic(nodes, [subscriber, publisher], CONFIG.k)
    got: list[bytes] = []

    def start(now: float) -> Call[int]:
        return subscriber.pubsub.subscribe(topic, got.append, now)[1]

    assert net.run_call(net.call(subscriber, start)) == CONFIG.k
    net.run_for(1.0)
    return net, nodes, topic, subscriber, publisher, got


def holding(net: SimNetwork, nodes: list[Node], topic: int, subscriber: Node) -> int:
    """How many relays forward ``topic`` to ``subscriber`` now."""
    return sum(subscriber.address in n.pubsub.relay.subscribers(topic, net.now) for n in nodes
               if n.address not in net.down)


def test_a_subscriber_cut_off_for_a_second_misses_only_what_was_sent_meanwhile() -> None:
    """A steady stream (10 messages a second); the subscriber cut off from everyone for 1 s.
    Every relay keeps it, and it misses no message sent more than a moment before the cut or
    after it ends (the relays retry, so even some sent meanwhile reach it). Counting each
    DELIVER that failed in that second, every relay dropped it at once, and it missed every
    message until its next renewal."""
    net, nodes, topic, subscriber, publisher, got = network(5)
    others = [n for n in nodes if n is not subscriber]
    sent: list[tuple[float, bytes]] = []
    start = net.now
    cut, healed = start + 3.0, start + 4.0
    for i in range(int(12 * RATE)):
        if net.now >= cut and net._sides is None and net.now < healed:
            net.partition([subscriber], others)
        if net.now >= healed and net._sides is not None:
            net.heal()
        value = b"%d" % i
        net.call(publisher, publisher.pubsub.publish, topic, value)
        sent.append((net.now, value))
        net.run_for(1 / RATE)
    net.run_for(5.0)
    assert holding(net, nodes, topic, subscriber) == CONFIG.k
    assert sum(n.stats["pubsub_lost_subscribers"] for n in nodes) == 0
    missed = [(when - start, value) for when, value in sent if value not in got]
    # A message left up to one hop before the cut may still be on its way when it comes.
    assert all(cut - 0.2 <= start + when < healed for when, _ in missed), missed
    assert len(got) == len(set(got))


def test_a_burst_the_subscriber_cannot_answer_does_not_cut_it_off() -> None:
    """Fifty messages published at once while none of their DELIVERs can be answered: every
    relay keeps the subscriber, which gets every message published afterwards."""
    net, nodes, topic, subscriber, publisher, got = network(6)
    net.partition([subscriber], [n for n in nodes if n is not subscriber])
    for i in range(50):
        net.call(publisher, publisher.pubsub.publish, topic, b"burst %d" % i)
    net.run_for(LIFETIME + 0.5)  # every DELIVER of the burst has failed
    net.heal()
    after = [b"after %d" % i for i in range(20)]
    for value in after:
        net.call(publisher, publisher.pubsub.publish, topic, value)
        net.run_for(1 / RATE)
    net.run_for(5.0)
    assert holding(net, nodes, topic, subscriber) == CONFIG.k
    assert [v for v in got if v.startswith(b"after")] == after


def test_a_subscriber_gone_for_good_is_dropped_within_three_request_lifetimes() -> None:
    """A subscriber that vanishes (no UNSUBSCRIBE) from a steady stream costs each relay the
    DELIVERs of about ``pubsub_silent_deliveries`` request lifetimes (12 s at the defaults),
    far less than its lease (60 s), and then none."""
    net, nodes, topic, subscriber, publisher, _ = network(7)
    relays = [n for n in nodes if subscriber.address in n.pubsub.relay.subscribers(topic, net.now)]
    assert len(relays) == CONFIG.k
    forwarded = sum(r.stats["pubsub_forwarded"] for r in relays)
    net.remove(subscriber)
    gone = net.now
    bound = CONFIG.pubsub_silent_deliveries * LIFETIME + 2 / RATE
    dropped: dict[int, float] = {}
    while net.now < gone + 20.0:
        net.call(publisher, publisher.pubsub.publish, topic, b"m")
        net.run_for(1 / RATE)
        for relay in relays:
            if relay.id not in dropped and subscriber.address not in (
                    relay.pubsub.relay.subscribers(topic, net.now)):
                dropped[relay.id] = net.now - gone
    assert len(dropped) == len(relays)
    assert max(dropped.values()) <= bound, dropped
    # Each relay sent it at most the messages of that time: no DELIVER after it was dropped.
    sent = sum(r.stats["pubsub_forwarded"] for r in relays) - forwarded
    assert sent <= len(relays) * (bound + 1 / RATE) * RATE
    assert sum(r.stats["pubsub_lost_subscribers"] for r in relays) == len(relays)


def test_the_repr_of_a_subscription_tells_keys_apart() -> None:
    """Small keys begin with many zeros: the repr shows every digit, as errors and the HTTP API
    write a key, not the first eight (``<Subscription 00000000… open>`` for all of them)."""
    peer = Peer("127.0.0.1", 0)
    five, six = Subscription(peer, 5), Subscription(peer, 6)
    assert repr(five) == f"<Subscription {5:064x} open>"
    assert repr(five) != repr(six)
    six.close()
    assert repr(six) == f"<Subscription {6:064x} closed>"
