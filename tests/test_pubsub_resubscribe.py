"""Publish/subscribe: closing a subscription and subscribing again to the same topic at once.

A relay cannot tell which of a subscriber's subscriptions to a topic an UNSUBSCRIBE meant, so one
sent on closing that reaches it after the SUBSCRIBE of the next subscription (resent after a lost
datagram, duplicated, or held up on the way) drops that one, which still counts the relay as its
own. The subscriber sends that relay SUBSCRIBE again once the UNSUBSCRIBE is over, and again once
none of its datagrams can still be on the way (docs/PROTOCOL.md, "Unsubscribing"): the new
subscription gets every message published after that. A subscription closed for good stays
closed at its relays. Deterministic: a seeded simulator, per-datagram loss and delays set around
the close."""

from __future__ import annotations

from collections.abc import Iterator

from qadom import Config, Node
from qadom.pubsub import SubscriptionHandle
from qadom.sim import SimNetwork

TOPIC = 99
CONFIG = Config(k=2)  # lease 60 s, renewed every 20 s: far beyond what each test runs


class Setup:
    """Six nodes; the subscriber and the publisher are not among the topic's two relays."""

    def __init__(self) -> None:
        self.net = net = SimNetwork(seed=7, latency=(0.01, 0.03), config=CONFIG)
        nodes = net.build(6)
        by_distance = sorted(nodes, key=lambda n: n.id ^ TOPIC)
        self.relays = by_distance[:2]
        self.subscriber: Node = by_distance[-1]
        self.publisher: Node = by_distance[-2]

    def subscribe(self, got: list[bytes]) -> SubscriptionHandle:
        s = self.subscriber
        handle, call = self.net.call(s, s.pubsub.subscribe, TOPIC, got.append)
        assert self.net.run_call(call) == 2
        return handle

    def close(self, handle: SubscriptionHandle) -> None:
        self.net.call(self.subscriber, handle.close)

    def holding(self) -> int:
        """How many relays hold the subscriber's subscription now."""
        ours = self.net.address_of(self.subscriber)
        now = self.net.now
        return sum(1 for r in self.relays if ours in r.pubsub.relay.subscribers(TOPIC, now))

    def publish_five(self) -> None:
        p = self.publisher
        for i in range(5):
            assert self.net.run_call(self.net.call(p, p.pubsub.publish, TOPIC, b"m%d" % i)) == 2
            self.net.run_for(1.0)


FIVE = [b"m0", b"m1", b"m2", b"m3", b"m4"]


def test_a_retried_unsubscribe_does_not_cut_off_the_next_subscription() -> None:
    """The first UNSUBSCRIBE datagrams are lost; their resends reach the relays after the new
    subscription's SUBSCRIBE (about a second later). The relays hold the new subscription after
    that, and it gets every message published."""
    setup = Setup()
    net, s = setup.net, setup.subscriber
    first = setup.subscribe([])
    net.loss = 1.0  # the UNSUBSCRIBEs of the close are lost, their resends are not
    setup.close(first)
    net.loss = 0.0
    got: list[bytes] = []
    setup.subscribe(got)
    assert setup.holding() == 2
    retries = s.stats["retries"]
    net.run_for(2.0)
    assert s.stats["retries"] >= retries + 2  # the UNSUBSCRIBEs were resent meanwhile
    assert len(s.pubsub.relays_of(TOPIC)) == 2
    assert setup.holding() == 2
    setup.publish_five()
    assert got == FIVE


def test_an_unsubscribe_held_up_past_the_next_subscribe_does_not_cut_it_off() -> None:
    """No datagram is lost: the UNSUBSCRIBEs of the close are held up on the way (0.2 s, less
    than the subscriber waits before resending) and reach the relays after the new
    subscription's SUBSCRIBE; their answers come after its SUBSCRIBED."""
    setup = Setup()
    net, s = setup.net, setup.subscriber
    first = setup.subscribe([])
    net.latency = (0.2, 0.2)
    setup.close(first)
    net.latency = (0.01, 0.03)
    got: list[bytes] = []
    retries = s.stats["retries"]
    setup.subscribe(got)
    assert setup.holding() == 2  # registered before the UNSUBSCRIBEs came
    net.run_for(2.0)
    assert s.stats["retries"] == retries  # each UNSUBSCRIBE went out once
    assert setup.holding() == 2
    setup.publish_five()
    assert got == FIVE


def test_a_late_copy_of_an_unsubscribe_does_not_cut_off_the_next_subscription() -> None:
    """Each UNSUBSCRIBE of the close is duplicated: one copy comes at once and is answered
    before the new subscription sends its SUBSCRIBEs, the other comes 1.5 s later and drops
    that subscription at the relays. Once no copy can still be on the way, the subscriber
    registers there again."""
    setup = Setup()
    net = setup.net
    first = setup.subscribe([])
    delays: Iterator[float] = iter([0.01, 1.5] * 2)  # per datagram: the copy, then its duplicate
    net.duplicate = 1.0
    net.latency = lambda _: next(delays)
    setup.close(first)
    net.duplicate = 0.0
    net.latency = (0.01, 0.03)
    got: list[bytes] = []
    setup.subscribe(got)
    assert setup.holding() == 2
    net.run_for(1.6)
    assert setup.holding() == 0  # the late copies came
    net.run_for(2.0)
    assert setup.holding() == 2
    setup.publish_five()
    assert got == FIVE


def test_a_subscription_closed_for_good_stays_closed_at_its_relays() -> None:
    """Closed, subscribed again while the resends of the close are out, and closed again once
    the relays were sent SUBSCRIBE again: the relays end holding nothing of the subscriber, the
    second look that the first close scheduled brings nothing back, and nothing published
    reaches it."""
    setup = Setup()
    net, s = setup.net, setup.subscriber
    first = setup.subscribe([])
    net.loss = 1.0
    setup.close(first)
    net.loss = 0.0
    got: list[bytes] = []
    second = setup.subscribe(got)
    net.run_for(1.5)  # the resends came, were answered, and the relays were sent SUBSCRIBE again
    assert s.stats["pubsub_subscribed_again"] >= 2
    assert setup.holding() == 2
    setup.close(second)
    net.run_for(4.0)  # past the second look at each UNSUBSCRIBE
    assert setup.holding() == 0
    assert s.pubsub.relays_of(TOPIC) == []
    setup.publish_five()
    assert got == []
    assert all(r.pubsub.relay.subscribers(TOPIC, net.now) == [] for r in setup.relays)
