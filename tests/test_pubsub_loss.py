"""Publish/subscribe on a lossy network: a subscriber whose SUBSCRIBEs or their answers get
lost keeps the relays that hold its lease, and keeps its renewal pace.

A SUBSCRIBE left unanswered (after its resend) is far likelier lost than sent to a departed
relay when datagrams are lost: the relay stays one of the subscriber's (its DELIVERs accepted)
while the lease it confirmed last may still hold, and the subscriber registers again before the
next renewal only when fewer than half the relays it asked hold a lease of its own, after a
delay that doubles at each such round in a row (docs/PROTOCOL.md, "Publish/subscribe")."""

from __future__ import annotations

from collections.abc import Callable

from qadom import Config, Node
from qadom.contact import Address
from qadom.pubsub import Publish, Subscribe, Subscribed
from qadom.sim import SimNetwork

from helpers import far_topic

CONFIG = Config(k=8)  # the default lease (60 s), renewed every 20 s
INTERVAL = CONFIG.pubsub_lease / CONFIG.pubsub_renewals


def drop_replies(node: Node, drop: Callable[[object, Address], bool]) -> None:
    """Make the simulated ``node`` lose every datagram ``drop(message, source)`` says."""
    receive = node.datagram_received

    def filtered(data: bytes, address: Address, now: float) -> None:
        if not drop(node.codec.decode(data).message, address):
            receive(data, address, now)

    node.datagram_received = filtered  # type: ignore[method-assign]


def test_a_relay_whose_subscribed_is_lost_stays_a_relay_and_the_pace_holds() -> None:
    """A renewal whose SUBSCRIBED from one relay is lost (every attempt) leaves that relay one of
    ours: the DELIVER it sends next is taken, so it keeps forwarding to us. The others hold our
    lease, so the next round comes at the renewal interval, not at once."""
    net = SimNetwork(7, config=CONFIG)
    nodes = net.add_nodes(30)
    subscriber = nodes[0]
    topic = far_topic(nodes, [subscriber], CONFIG.k)
    got: list[bytes] = []
    _, call = net.call(subscriber, subscriber.pubsub.subscribe, topic, got.append)
    assert net.run_call(call) == CONFIG.k
    relay = min(nodes, key=lambda n: n.id ^ topic)
    address, ours = net.address_of(relay), net.address_of(subscriber)
    assert address in {c.address for c in subscriber.pubsub.relays_of(topic)}
    # The renewal reaches the relay; its answers do not come back.
    drop_replies(subscriber, lambda m, source: isinstance(m, Subscribed) and source == address)
    rounds = subscriber.stats["pubsub_rounds"]

    def asking() -> bool:
        return any(isinstance(r.message, Subscribe) and r.address == address
                   for r in subscriber._pending.values())

    deadline = net.now + INTERVAL + 10
    for waiting in (False, True):  # until the renewal's SUBSCRIBE is out, then until it failed
        while asking() is waiting:
            assert net.now < deadline
            net.run_for(0.01)
    assert subscriber.stats["pubsub_rounds"] == rounds + 1
    assert relay.pubsub.relay.subscribers(topic, net.now) == [ours]  # it did register us
    net.call(relay, relay.pubsub._forward, Publish(topic, 1, 0, b"m"))  # a publish, now
    net.run_for(1.0)
    assert relay.stats["pubsub_delivery_refused"] == 0
    assert relay.pubsub.relay.subscribers(topic, net.now) == [ours]
    assert got == [b"m"]
    assert address in {c.address for c in subscriber.pubsub.relays_of(topic)}
    net.run_for(INTERVAL / 2)  # no early round: seven of eight relays answered
    assert subscriber.stats["pubsub_rounds"] == rounds + 1


def test_rounds_nobody_answers_come_ever_less_often() -> None:
    """Relays that answer no SUBSCRIBE hold no lease of ours: we register again before the
    renewal interval, first after ``rpc_timeout_min``, then twice as long at each round in a
    row, up to that interval."""
    net = SimNetwork(3, config=CONFIG)
    nodes = net.add_nodes(30)
    subscriber = nodes[0]
    drop_replies(subscriber, lambda m, source: isinstance(m, Subscribed))
    _, call = net.call(subscriber, subscriber.pubsub.subscribe, 77, lambda v: None)
    net.run_for(10 * 60)
    assert call.done and call.exception() is not None  # no relay answered the first round
    rounds = subscriber.stats["pubsub_rounds"]
    # After 0.25 s (rpc_timeout_min), doubling up to 20 s: 8 rounds in about the first 40 s,
    # then one every 20 s and the time each round's lookup and resends take.
    assert rounds <= 8 + 10 * 60 / INTERVAL, rounds
    assert rounds >= 10 * 60 / INTERVAL  # the subscription keeps trying


def hour_of_publishing(loss: float, seed: int) -> tuple[list[bytes], int, int]:
    """One subscriber and one publisher in 40 nodes; 60 messages, one a minute, published while
    ``loss`` of the datagrams are lost: what the subscriber got, and how many registration
    rounds and requests it made in that hour."""
    net = SimNetwork(seed, config=CONFIG)
    nodes = net.add_nodes(40)
    net.loss = loss  # the network degrades once everyone has joined
    subscriber, publisher = nodes[0], nodes[1]
    topic = far_topic(nodes, [subscriber, publisher], CONFIG.k)
    got: list[bytes] = []
    _, call = net.call(subscriber, subscriber.pubsub.subscribe, topic, got.append)
    net.run_for(5)
    assert call.done and call.result() > 0
    rounds, requests = subscriber.stats["pubsub_rounds"], subscriber.stats["requests_out"]
    for i in range(60):
        net.call(publisher, publisher.pubsub.publish, topic, b"%d" % i)
        net.run_for(60)
    return (got, subscriber.stats["pubsub_rounds"] - rounds,
            subscriber.stats["requests_out"] - requests)


def test_at_thirty_percent_loss_every_message_arrives_at_the_lossless_pace() -> None:
    """With 30% of the datagrams lost each way, a subscriber still gets every message (once, in
    order), registering about as often and sending about as many requests as without loss."""
    sent = [b"%d" % i for i in range(60)]
    clean, clean_rounds, clean_requests = hour_of_publishing(0.0, 2)
    assert clean == sent
    assert clean_rounds <= 3600 / INTERVAL + 1
    for seed in (1, 2, 3):
        got, rounds, requests = hour_of_publishing(0.3, seed)
        assert got == sent, (seed, [m for m in sent if m not in got])
        assert rounds <= 1.5 * clean_rounds, (seed, rounds, clean_rounds)
        assert requests <= 2 * clean_requests, (seed, requests, clean_requests)
