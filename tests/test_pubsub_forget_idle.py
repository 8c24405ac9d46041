"""What publish/subscribe keeps follows its recent traffic (PubSubService.forget_old, at each
maintenance tick): a publisher forgets a topic once its next message would leave the stream
anyway, and a relay forgets a stream ``pubsub_stream_lifetime`` after its last message even when
no PUBLISH comes after it. On the simulator's virtual clock."""

from __future__ import annotations

import dataclasses

import pytest
from test_pubsub_streams import SIM, publish, relays_of, subscribed

from qadom import RateLimited
from qadom.contact import Address
from qadom.messages import Error, ErrorCode, Message
from qadom.pubsub import Publish, PubSubService


def outbox_topics(pubsub: PubSubService) -> list[int]:
    return list(pubsub._outboxes)


def test_a_publisher_forgets_a_topic_its_next_message_would_leave_the_stream_of() -> None:
    net, nodes, topic, got = subscribed(61)
    publisher = nodes[1]
    pubsub = publisher.pubsub
    others = [topic ^ (i << 200) for i in range(1, 6)]
    for i in range(3):
        assert publish(net, publisher, topic, b"m%d" % i) == SIM.k
    for other in others:
        publish(net, publisher, other, b"elsewhere")
    first_sent = min(outbox.sent for outbox in pubsub._outboxes.values())
    stream = pubsub._outboxes[topic].stream
    # Before the silence a stream is left after, every topic is kept: the next message would
    # still go on with its stream.
    net.run_for(first_sent + pubsub._stream_idle - 0.5 - net.now)
    pubsub.forget_old(net.now)
    assert outbox_topics(pubsub) == [topic, *others]
    # The maintenance ticks forget them once that silence is over.
    net.run_for(pubsub._stream_idle + SIM.maintenance_interval)
    assert outbox_topics(pubsub) == []
    # Publishing again opens a new stream, as it would have with the topic kept, and the
    # subscriber gets every message once, in order.
    assert publish(net, publisher, topic, b"m3") == SIM.k
    assert pubsub._outboxes[topic].stream != stream and pubsub._outboxes[topic].next_seq == 1
    net.run_for(2.0)
    assert got == [b"m0", b"m1", b"m2", b"m3"]


def test_a_topic_with_a_publish_waiting_for_its_lookup_is_kept() -> None:
    net, nodes, topic, got = subscribed(62)
    publisher = nodes[1]
    pubsub = publisher.pubsub
    net.run_for(pubsub._stream_idle + 1.0)  # the clock is past the silence a stream is left after
    call = net.call(publisher, pubsub.publish, topic, b"first")
    outbox = pubsub._outboxes[topic]
    assert outbox.batches and net.now - outbox.sent >= pubsub._stream_idle  # nothing sent yet
    pubsub.forget_old(net.now)
    assert pubsub._outboxes.get(topic) is outbox
    assert net.run_call(call) == SIM.k
    assert publish(net, publisher, topic, b"second") == SIM.k
    assert pubsub._outboxes[topic] is outbox and outbox.next_seq == 2  # one stream for both
    net.run_for(2.0)
    assert got == [b"first", b"second"]


def test_publishing_to_more_topics_at_once_than_kept_is_refused_here_with_nothing_sent() -> None:
    """The local RateLimited of PubSubService.publish (and Peer.publish): a new topic while
    ``pubsub_max_topics`` are kept and each has a publish waiting for its lookup. Once one has
    none waiting, it is the one forgotten for the new topic."""
    net, nodes, topic, got = subscribed(65)
    publisher = net.add_node(config=dataclasses.replace(SIM, pubsub_max_topics=2))
    net.run_call(net.call(publisher, publisher.bootstrap, [net.address_of(nodes[3])]))
    pubsub = publisher.pubsub
    first = net.call(publisher, pubsub.publish, topic, b"m0")
    second = net.call(publisher, pubsub.publish, topic ^ 1, b"elsewhere")
    with pytest.raises(RateLimited, match="publishing to 2 topics at once"):
        net.call(publisher, pubsub.publish, topic ^ 2, b"refused")
    assert outbox_topics(pubsub) == [topic, topic ^ 1]  # nothing kept for the refused one
    assert net.run_call(first) == SIM.k and net.run_call(second) == SIM.k
    assert publish(net, publisher, topic ^ 2, b"later") == SIM.k
    assert outbox_topics(pubsub) == [topic ^ 1, topic ^ 2]
    net.run_for(2.0)
    assert got == [b"m0"]


def test_a_topic_moved_to_a_new_stream_is_kept_for_the_rule_that_limits_moves() -> None:
    """After a STREAM_TAKEN moved the topic to a new stream, the publisher remembers when, to
    move at most once per stream lifetime (one relay answering so falsely must not make it open
    streams at every other relay): the topic is kept that long, however silent."""
    net, nodes, topic, got = subscribed(63)
    publisher = nodes[1]
    pubsub = publisher.pubsub
    liar = relays_of(net, topic, nodes[0])[0]

    def taken(message: Publish, sender: int | None, address: Address, now: float) -> Message:
        return Error(ErrorCode.STREAM_TAKEN, "this stream belongs to another address here")

    liar.register_handler(Publish, taken)
    assert publish(net, publisher, topic, b"m0") == SIM.k - 1
    outbox = pubsub._outboxes[topic]
    assert outbox.switched is not None
    net.run_for(outbox.sent + pubsub._stream_idle + 0.5 - net.now)
    pubsub.forget_old(net.now)
    assert pubsub._outboxes.get(topic) is outbox
    net.run_for(outbox.switched + SIM.pubsub_stream_lifetime + 0.5 - net.now)
    pubsub.forget_old(net.now)
    assert topic not in pubsub._outboxes
    assert got == [b"m0"]


def test_a_relay_forgets_a_stream_a_lifetime_after_its_last_message_without_more_publishes(
        ) -> None:
    net, nodes, topic, got = subscribed(64)
    publishers = nodes[1:3]  # none of them relays the topic
    relays = relays_of(net, topic, nodes[0])
    for i, publisher in enumerate(publishers):
        assert publish(net, publisher, topic, b"m%d" % i) == SIM.k
    for relay in relays:
        assert [owner for _, _, owner, _ in relay.pubsub.streams.entries()] == [
            net.address_of(p) for p in publishers]
    # Still within the lifetime: every stream is kept, for the address that opened it.
    net.run_for(SIM.pubsub_stream_lifetime - 0.5)
    for relay in relays:
        relay.pubsub.forget_old(net.now)
        assert len(relay.pubsub.streams) == len(publishers)
    # No PUBLISH comes after; the maintenance ticks forget the streams once it is over, and
    # with them what each address and host holds.
    net.run_for(SIM.maintenance_interval + 1.0)
    for relay in relays:
        streams = relay.pubsub.streams
        assert len(streams) == 0
        for publisher in publishers:
            address = net.address_of(publisher)
            assert streams.opened_by(topic, address) == 0 and streams.held_by(address[0]) == 0
    assert got == [b"m0", b"m1"]
