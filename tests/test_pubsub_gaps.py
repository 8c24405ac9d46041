"""Publish/subscribe: a publisher over its rate leaves a gap in its sequence before every message a
relay takes (each publish every relay refused was numbered before it left), and each such message
still reaches a subscriber within ``pubsub_reorder_timeout`` of its arrival, not one timeout per
gap before it. The pure inbox on a virtual clock, then the protocol on the simulator."""

from __future__ import annotations

from qadom import Config, NoPeersError, RateLimited
from qadom.call import Call
from qadom.pubsub import Inbox
from qadom.sim import SimNetwork

from helpers import far_topic


def test_inbox_holds_no_message_longer_than_the_reorder_timeout_however_many_gaps() -> None:
    """Fifty messages, each behind a gap of its own, arriving 10 ms apart: each comes out once,
    in order, exactly ``reorder_timeout`` after it came, not after the gaps before it were given
    up one timeout at a time (which held the last for 25 s, until the stream fell silent)."""
    inbox = Inbox(reorder_timeout=0.5, max_held=256, max_streams=4, guard=8.0,
                  max_held_bytes=1 << 20)
    assert inbox.accept(1, 0, b"0", 0.0) == [b"0"]
    came: dict[bytes, float] = {}
    for i in range(1, 51):  # seqs 2, 4, ... 100: every odd one never comes
        came[b"%d" % (2 * i)] = i * 0.01
        assert inbox.accept(1, 2 * i, b"%d" % (2 * i), i * 0.01) == []
    released: dict[bytes, float] = {}
    order: list[bytes] = []
    while (deadline := inbox.next_deadline()) is not None:  # as the gap timer runs it
        for value in inbox.expire(deadline):
            released[value] = deadline
            order.append(value)
    assert order == [b"%d" % (2 * i) for i in range(1, 51)]
    late = {v: released[v] - came[v] for v in came if released[v] - came[v] > 0.5 + 1e-9}
    assert not late, late
    assert inbox.skipped == 50 and inbox.held_bytes == 0


def test_inbox_gives_up_at_once_every_gap_before_an_overdue_message() -> None:
    """A message that came early but behind later-coming ones is released once it has waited
    ``reorder_timeout``, with everything held before it; those after it wait on."""
    inbox = Inbox(reorder_timeout=0.5, max_held=256, max_streams=4, guard=8.0,
                  max_held_bytes=1 << 20)
    assert inbox.accept(1, 0, b"0", 0.0) == [b"0"]
    assert inbox.accept(1, 10, b"10", 0.0) == []
    assert inbox.accept(1, 5, b"5", 0.3) == []
    assert inbox.accept(1, 12, b"12", 0.4) == []
    assert inbox.next_deadline() == 0.5
    assert inbox.expire(0.49) == []
    assert inbox.expire(0.5) == [b"5", b"10"]  # gaps 1-4 and 6-9 given up
    assert inbox.next_deadline() == 0.9  # 12 came at 0.4
    assert inbox.accept(1, 11, b"11", 0.6) == [b"11", b"12"]  # the gap filled in time
    assert inbox.next_deadline() is None and inbox.skipped == 8


SIM = Config(k=5, pubsub_lease=3.0, pubsub_rate=20.0, pubsub_burst=10)


def test_sim_a_publisher_over_its_rate_reaches_a_subscriber_within_the_reorder_timeout() -> None:
    """A publisher sends 100 messages a second for 3 s to relays that take 20 a second (bursts
    of 10) from it: most publishes raise RateLimited, each leaving a gap in its stream. Every
    message a relay took reaches the subscriber once, in order, within ``pubsub_reorder_timeout``
    (plus the two hops) of its publish, and nothing is left held once the publisher stops. It
    used to take one reorder timeout per gap before it: two messages a second came out of a
    stream bringing twenty, the rest waited behind, and all that was held when the subscriber
    stopped listening was lost to it."""
    net = SimNetwork(11, config=SIM)
    nodes = net.add_nodes(30)
    subscriber, publisher = nodes[0], nodes[1]
    topic = far_topic(nodes, [subscriber, publisher], SIM.k, 11)
    got: list[tuple[float, bytes]] = []
    handles = []

    def start(now: float) -> Call[int]:
        handle, call = subscriber.pubsub.subscribe(topic, lambda v: got.append((net.now, v)), now)
        handles.append(handle)
        return call

    assert net.run_call(net.call(subscriber, start)) == SIM.k
    sent: list[tuple[float, bytes, Call[int]]] = []
    for i in range(300):
        value = b"%d" % i
        sent.append((net.now, value, net.call(publisher, publisher.pubsub.publish, topic, value)))
        net.run_for(0.01)
    net.run_for(1.0)
    assert all(call.done for _, _, call in sent)
    taken = [(at, value) for at, value, call in sent if call.exception() is None]
    refused = [call for _, _, call in sent if isinstance(call.exception(), RateLimited)]
    assert len(taken) + len(refused) == len(sent) and taken and refused
    received = [value for _, value in got]
    assert received == [value for _, value in taken]  # every one, once, in order
    came = dict((value, at) for at, value in got)
    slowest = max(came[value] - at for at, value in taken)
    assert slowest <= SIM.pubsub_reorder_timeout + 0.2, slowest
    assert subscriber.pubsub._topics[topic].inbox.held_bytes == 0


def test_sim_a_publish_whose_lookup_was_refused_for_our_request_rate_is_rate_limited() -> None:
    """A publisher asking its only contact faster than that node's request rate gets the
    lookup of the topic refused (RATE_LIMITED): the publish fails with RateLimited, not with a
    NoPeersError saying no peer is known, and the contact stays known."""
    config = Config(k=5, request_rate=5.0, request_burst=5, pubsub_rate=1000.0,
                    pubsub_burst=1000)
    net = SimNetwork(3, config=config)
    _relay, publisher = net.add_nodes(2)
    errors: list[BaseException] = []
    for i in range(40):  # one after the other, as fast as they complete
        call = net.call(publisher, publisher.pubsub.publish, 5, b"%d" % i)
        try:
            net.run_call(call)
        except Exception as exc:
            errors.append(exc)
    assert errors and all(isinstance(e, RateLimited) for e in errors), errors
    assert len(publisher.table) == 1


def test_sim_a_subscription_whose_lookup_was_refused_for_our_request_rate_is_rate_limited(
        ) -> None:
    """The same for a subscription: its first registration's lookup refused for our rate says
    so (RateLimited), not that no peer is known."""
    config = Config(k=5, request_rate=0.01, request_burst=3)
    net = SimNetwork(4, config=config)
    _relay, subscriber = net.add_nodes(2)
    errors: list[BaseException] = []
    for topic in range(6):  # one after the other, each a registration round
        _, call = net.call(subscriber, subscriber.pubsub.subscribe, topic, lambda message: None)
        try:
            net.run_call(call)
        except Exception as exc:
            errors.append(exc)
    # Over its limit the relay answers one refusal a second and drops the rest: a round it was
    # silent to times out; none says no peer is known.
    assert any(isinstance(e, RateLimited) for e in errors), errors
    assert not any(isinstance(e, NoPeersError) for e in errors), errors
    assert len(subscriber.table) == 1
