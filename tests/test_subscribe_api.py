"""Subscribing as a user does: the lease a relay grants, a second subscription to a topic the
peer already follows, on the simulator and over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import time

import pytest

from qadom import Config, NoPeersError, OperationTimeout, PeerClosedError
from qadom.call import Call
from qadom.contact import Address
from qadom.errors import InvalidArgument, SubscriptionClosed
from qadom.pubsub import Subscribe, Subscribed
from qadom.sim import SimNetwork

from helpers import FAST, udp_network, wait_until


def test_a_subscription_renews_within_the_shorter_lease_a_relay_grants() -> None:
    # Relays grant at most 1 s; the subscriber asks for 6 s (renewing every 2 s by its own
    # lease). It must renew by the lease granted, or it drops off its relays between rounds.
    relays = Config(k=5, pubsub_max_lease=1.0)
    net = SimNetwork(3, config=relays)
    nodes = net.add_nodes(20)
    subscriber = net.add_node(config=Config(k=5, pubsub_lease=6.0))
    net.run_call(net.call(subscriber, subscriber.bootstrap, [net.address_of(nodes[0])]))
    topic = 12345
    got: list[bytes] = []

    def start(now: float) -> Call[int]:
        return subscriber.pubsub.subscribe(topic, got.append, now)[1]

    assert net.run_call(net.call(subscriber, start)) == relays.k
    listed = []
    for _ in range(40):  # 8 s: four of the subscriber's renewal intervals
        net.run_for(0.2)
        listed.append(sum(subscriber.address in n.pubsub.relay.subscribers(topic, net.now)
                          for n in net.live_nodes()))
    assert min(listed) == relays.k, listed
    net.call(nodes[3], nodes[3].pubsub.publish, topic, b"still here")
    net.run_for(1.0)
    assert got == [b"still here"]


def test_one_relay_granting_a_tiny_lease_does_not_make_subscribers_renew_at_every_turn() -> None:
    """Subscribers renew within the lease most of their relays grant: one relay that grants a
    millisecond (hostile, or misconfigured) does not multiply every subscriber's traffic."""
    net = SimNetwork(4, config=Config(k=5))
    nodes = net.add_nodes(20)
    subscriber = net.add_node(config=Config(k=5, pubsub_lease=6.0))
    net.run_call(net.call(subscriber, subscriber.bootstrap, [net.address_of(nodes[0])]))
    topic = 777
    stingy = min(nodes, key=lambda n: n.id ^ topic)  # surely one of the topic's relays
    stingy.pubsub.relay.max_lease = 0.001
    net.run_call(net.call(subscriber, lambda now: subscriber.pubsub.subscribe(
        topic, lambda _: None, now)[1]))
    sent = subscriber.stats["requests_out"]
    net.run_for(20.0)  # 10 renewal intervals of the lease asked (6 s / 3)
    # A round is one lookup and k SUBSCRIBEs: about 10 rounds, not 80 (every 0.25 s).
    assert subscriber.stats["requests_out"] - sent < 12 * 12


async def test_a_second_subscription_to_a_topic_whose_relays_are_gone_raises() -> None:
    # Short timeouts: the subscriber notices its only relay is dead within a fraction of a second.
    config = dataclasses.replace(FAST, k=4, pubsub_lease=0.6, rpc_timeout=0.1,
                                 rpc_timeout_min=0.05, rpc_timeout_max=0.2)
    async with udp_network(2, config=config) as (subscriber, relay):
        topic = 99
        async with subscriber.subscribe(topic) as messages:
            assert messages.relays == 1
            async with subscriber.subscribe(topic) as second:  # shares the registration
                assert second.relays == 1
                assert await relay.publish(topic, b"to both") == 1
                both = await asyncio.wait_for(asyncio.gather(anext(messages), anext(second)), 5)
                assert list(both) == [b"to both", b"to both"]
            await relay.close()
            await wait_until(lambda: subscriber.node.pubsub.relays_of(topic) == [], 5)
            # As a first subscription would: no relay accepted it, so entering raises, as a
            # read would: OperationTimeout while the dead relay is still known, NoPeersError
            # once our table has dropped it.
            with pytest.raises((NoPeersError, OperationTimeout)):
                async with subscriber.subscribe(topic):
                    pass
        with pytest.raises((NoPeersError, OperationTimeout)):
            async with subscriber.subscribe(topic):
                pass



async def test_closing_a_peer_unsubscribes_its_open_subscriptions_at_the_relays() -> None:
    """Relays stop listing a closed peer's subscriptions at once, not when the leases lapse (or
    after three deliveries go unanswered)."""
    config = dataclasses.replace(FAST, k=4, pubsub_lease=30.0)
    async with udp_network(6, config=config) as peers:
        subscriber = peers[1]
        topic = 5

        def listed() -> int:
            now = time.time()  # the nodes' clock is Unix time; leases last 30 s
            return sum(subscriber.address in p.node.pubsub.relay.subscribers(topic, now)
                       for p in peers if p is not subscriber)

        messages = subscriber.subscribe(topic)
        await asyncio.wait_for(messages.__aenter__(), 5)
        assert listed() == messages.relays > 0
        await subscriber.close()
        await wait_until(lambda: listed() == 0, 5)
        assert messages.closed


def test_a_late_answer_to_a_closed_subscription_leaves_the_next_one_registered() -> None:
    """A SUBSCRIBED that arrives for a subscription closed meanwhile makes the node say
    UNSUBSCRIBE again, in case the relay took the SUBSCRIBE after the first one; but not when the
    topic has been subscribed to again since: that would take the new subscription off the
    relay, which then stops forwarding to it."""
    slow = Config(k=5, pubsub_lease=60.0, rpc_timeout=5.0, rpc_timeout_min=5.0,
                  rpc_timeout_max=5.0)
    net = SimNetwork(5, config=slow)
    nodes = net.add_nodes(20)
    subscriber, publisher = nodes[0], nodes[1]
    topic = 2**255 + 99
    relay = min((n for n in nodes if n not in (subscriber, publisher)),
                key=lambda n: n.id ^ topic)
    held: list[tuple[bytes, Address]] = []
    receive = subscriber.datagram_received

    def holding(data: bytes, address: Address, now: float) -> None:
        if address == relay.address and isinstance(
                subscriber.codec.decode(data).message, Subscribed) and not released:
            held.append((data, address))  # the relay's answer to the first SUBSCRIBE, late
            return
        receive(data, address, now)

    released = False
    subscriber.datagram_received = holding  # type: ignore[method-assign]
    got: list[bytes] = []
    first, _ = subscriber.pubsub.subscribe(topic, got.append, net.now)
    net.call(subscriber, lambda now: None)
    net.run_for(1.0)
    assert held and relay.pubsub.relay.subscribers(topic, net.now) == [subscriber.address]
    net.call(subscriber, first.close)  # UNSUBSCRIBE reaches the relay
    net.run_for(0.5)
    assert relay.pubsub.relay.subscribers(topic, net.now) == []
    released = True
    _, again = subscriber.pubsub.subscribe(topic, got.append, net.now)
    net.call(subscriber, lambda now: None)
    assert net.run_call(again) == slow.k
    assert relay.pubsub.relay.subscribers(topic, net.now) == [subscriber.address]
    for data, address in held:  # the first subscription's answer arrives at last
        subscriber.datagram_received(data, address, net.now)
        net.call(subscriber, lambda now: None)
    net.run_for(0.5)
    assert relay.pubsub.relay.subscribers(topic, net.now) == [subscriber.address]
    net.call(publisher, publisher.pubsub.publish, topic, b"after")
    net.run_for(1.0)
    assert got == [b"after"]


def test_a_subscribe_overtaken_by_its_unsubscribe_is_undone_when_the_relay_answers() -> None:
    slow = Config(k=5, pubsub_lease=60.0, rpc_timeout=5.0, rpc_timeout_min=5.0,
                  rpc_timeout_max=5.0)
    net = SimNetwork(6, config=slow)
    nodes = net.add_nodes(20)
    subscriber = nodes[0]
    topic = 2**254 + 7
    relay = min(nodes[1:], key=lambda n: n.id ^ topic)
    held: list[tuple[bytes, Address]] = []
    receive = relay.datagram_received

    def holding(data: bytes, address: Address, now: float) -> None:
        if address == subscriber.address and isinstance(
                relay.codec.decode(data).message, Subscribe):
            held.append((data, address))  # the SUBSCRIBE is overtaken by the UNSUBSCRIBE
            return
        receive(data, address, now)

    relay.datagram_received = holding  # type: ignore[method-assign]
    handle, _ = subscriber.pubsub.subscribe(topic, lambda value: None, net.now)
    net.call(subscriber, lambda now: None)
    net.run_for(1.0)
    net.call(subscriber, handle.close)
    net.run_for(0.5)
    assert held
    relay.datagram_received = receive  # type: ignore[method-assign]
    for data, address in held:
        relay.datagram_received(data, address, net.now)
        net.call(relay, lambda now: None)
    assert relay.pubsub.relay.subscribers(topic, net.now) == [subscriber.address]
    net.run_for(1.0)  # its SUBSCRIBED reaches the subscriber, which says UNSUBSCRIBE again
    assert relay.pubsub.relay.subscribers(topic, net.now) == []


def test_a_subscription_closed_before_it_is_registered_fails_as_closed_not_as_no_peers() -> None:
    """Closing a subscription whose first round is under way ends its call at once with
    SubscriptionClosed: its own code ended it, and a NoPeersError (or nothing until the round is
    over, when another subscription shares the topic) would read as a network failure."""
    net = SimNetwork(7, config=Config(k=5))
    nodes = net.add_nodes(20)
    subscriber = nodes[0]
    topic = 4242
    _, first_call = subscriber.pubsub.subscribe(topic, lambda value: None, net.now)
    second, second_call = subscriber.pubsub.subscribe(topic, lambda value: None, net.now)
    net.call(subscriber, lambda now: None)  # the lookup of the topic's relays is under way
    assert not first_call.done and not second_call.done
    net.call(subscriber, second.close)  # the first still holds the topic
    assert isinstance(second_call.exception(), SubscriptionClosed)
    assert net.run_call(first_call) == 5
    third, third_call = subscriber.pubsub.subscribe(2**200 + 1, lambda value: None, net.now)
    net.call(subscriber, lambda now: None)
    net.call(subscriber, third.close)  # the only one on its topic
    assert isinstance(third_call.exception(), SubscriptionClosed)
    assert not isinstance(third_call.exception(), NoPeersError)
    net.run_for(5.0)
    assert not any(n.pubsub.relay.subscribers(2**200 + 1, net.now) for n in nodes)


async def test_closing_a_subscription_that_is_being_entered_raises_subscription_closed() -> None:
    config = dataclasses.replace(FAST, k=4)
    async with udp_network(2, config=config) as (subscriber, relay):
        await relay.close()  # the subscriber's lookup waits for it: entering takes a while
        messages = subscriber.subscribe(7)
        entering = asyncio.create_task(messages.__aenter__())
        await wait_until(lambda: subscriber.node.stats["requests_out"] > 0, 5)
        assert not entering.done()
        messages.close()  # from another task
        with pytest.raises(SubscriptionClosed):
            await asyncio.wait_for(entering, 5)
        assert messages.closed
        # Closing the peer is another matter: entering says so.
        messages = subscriber.subscribe(8)
        entering = asyncio.create_task(messages.__aenter__())
        await wait_until(lambda: messages in subscriber._subscriptions, 5)
        await subscriber.close()
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(entering, 5)


async def test_a_slow_reader_loses_the_newest_messages_past_its_byte_bound_and_sees_it() -> None:
    """A subscription's queue holds at most pubsub_queue_bytes of messages, however few; what
    does not fit is dropped, and the subscription counts it as the peer's stats do."""
    big = b"x" * 8000
    config = dataclasses.replace(FAST, k=4, pubsub_queue_bytes=2 * 8192)
    async with udp_network(3, config=config) as peers:
        subscriber, publisher = peers[1], peers[2]
        topic = 31
        async with subscriber.subscribe(topic) as messages:
            for i in range(5):  # nobody reads meanwhile
                assert await publisher.publish(topic, bytes([i]) + big) > 0
            await wait_until(lambda: subscriber.node.stats["pubsub_received"] == 5, 5)
            assert messages.dropped == 3 == subscriber.stats["pubsub_dropped"]
            got = [await asyncio.wait_for(anext(messages), 5) for _ in range(2)]
            assert [value[0] for value in got] == [0, 1]  # the oldest kept, the newest dropped
            await publisher.publish(topic, b"\xff" + big)  # read, the queue has room again
            assert (await asyncio.wait_for(anext(messages), 5))[0] == 0xFF
            assert messages.dropped == 3


async def test_a_slow_reader_past_its_message_bound_sees_how_many_it_lost() -> None:
    config = dataclasses.replace(FAST, k=4, pubsub_queue_size=2)
    async with udp_network(3, config=config) as peers:
        subscriber, publisher = peers[1], peers[2]
        async with subscriber.subscribe(32) as messages:
            for i in range(5):
                await publisher.publish(32, bytes([i]))
            await wait_until(lambda: subscriber.node.stats["pubsub_received"] == 5, 5)
            assert messages.dropped == 3 == subscriber.stats["pubsub_dropped"]
            assert [await asyncio.wait_for(anext(messages), 5) for _ in range(2)] == [
                b"\x00", b"\x01"]


def test_the_byte_bound_of_a_subscription_queue_holds_at_least_one_value() -> None:
    with pytest.raises(InvalidArgument):
        Config(pubsub_queue_bytes=8191)  # max_value_size is 8192
    assert Config(pubsub_queue_bytes=8192).pubsub_queue_bytes == 8192
