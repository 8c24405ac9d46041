"""Attacks on the services built on the core, each on the simulator (virtual clock, seeded):
lifetimes cut short by a replayed /dht write, subscriptions cut by a spoofed UNSUBSCRIBE,
publishes relayed for a spoofed source."""

from __future__ import annotations

from qadom import Config
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Address
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    SECURED,
    DhtPut,
    Record,
    encode_record,
    load,
    make_entry,
    storage_key,
)
from qadom.messages import Challenge, Envelope, Error, ErrorCode, Message, Stored
from qadom.node import Node
from qadom.pubsub import Deliver, Publish, Subscribe, Subscribed, Unsubscribe
from qadom.sim import SimNetwork

ALICE = (1).to_bytes(32, "big")
BOB = (2).to_bytes(32, "big")
MALLORY = (3).to_bytes(32, "big")
CODEC = Codec(Config())


def one_write(secret: bytes, key: str, data: str, mode: str = SECURED) -> Record:
    return Record(key, mode, (make_entry(secret, key, data, mode),))


def dht_holders(nodes: list[Node], key: str, now: float) -> list[Node]:
    """The nodes holding a live record for ``key`` at ``now``."""
    return [n for n in nodes if n.dht_records.local(key, now) is not None]


def spoof(node: Node, source: Address, message: Message, now: float,
          rpc_id: int = 7) -> list[Message]:
    """Hand ``node`` one datagram carrying ``message`` that claims to come from ``source`` (no
    token: an off-path host cannot have one) and return what it answers that address."""
    data = CODEC.encode(Envelope(rpc_id, None, message, None, 600))
    node.datagram_received(data, source, now)
    return [CODEC.decode(out).message for out, to in node.datagrams_to_send() if to == source]


# ============================================================================ /dht lifetimes


def test_a_replayed_secured_write_with_a_short_ttl_does_not_end_the_record() -> None:
    """The owner's write is public (GET /dht serves it, signature included). Replaying it in a
    DHT_PUT with a ttl of 1 s must not make the holders drop the record a second later."""
    net = SimNetwork(seed=11, config=Config(k=5))
    nodes = net.add_nodes(30)
    writer, attacker, reader = nodes[0], nodes[1], nodes[2]
    write = one_write(ALICE, "name", "v1")
    assert net.run_call(net.call(writer, writer.dht_records.put, write)).stored >= 4
    held = [n for n in dht_holders(nodes, "name", net.now) if n is not writer]
    assert len(held) >= 4
    replay = DhtPut(encode_record(write), 1, republish=False)
    for holder in held:
        reply = holder.dht_records._handle_put(replay, attacker.id, net.address_of(attacker),
                                               net.now)
        assert isinstance(reply, Stored)  # a valid write: accepted, as the rules say
    net.run_for(5.0)
    assert dht_holders(held, "name", net.now) == held
    assert net.run_call(net.call(reader, reader.dht_records.get, "name")).entries == (
        write.entries)


def test_another_owners_controlled_write_never_cuts_the_record_short() -> None:
    """Anyone may add an entry of their own to a CONTROLLED record; doing so with a ttl of 1 s
    must not end the entries of every other owner at that holder."""
    node = Node(config=Config())
    source = ("127.0.0.9", 1)
    skey = storage_key("c")
    alice = one_write(ALICE, "c", "alice", CONTROLLED)
    bob = one_write(BOB, "c", "bob", CONTROLLED)
    for write in (alice, bob):
        node.dht_records._handle_put(DhtPut(encode_record(write), 86400), None, source, 0.0)
    before = node.store.record_meta(RECORD_KIND, skey)
    assert before is not None and before.expires == 86400.0
    mallory = one_write(MALLORY, "c", "mallory", CONTROLLED)
    reply = node.dht_records._handle_put(DhtPut(encode_record(mallory), 1), None,
                                         ("127.0.0.66", 1), 10.0)
    assert isinstance(reply, Stored)
    live = node.dht_records.local("c", 3600.0)
    assert live is not None
    assert [e.data for e in live.entries] == ["alice", "bob", "mallory"]
    # The lifetime held is kept; a write never shortens it, it may only lengthen it.
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.expires == 86400.0
    node.dht_records._handle_put(DhtPut(encode_record(one_write(ALICE, "c", "alice 2",
                                                                CONTROLLED)), 86400),
                                 None, source, 100.0)
    meta = node.store.record_meta(RECORD_KIND, skey)
    assert meta is not None and meta.expires == 86500.0
    record = load(node.store, skey, node.config)
    assert record is not None and [e.data for e in record.entries] == ["alice 2", "bob",
                                                                       "mallory"]


# ============================================================================ pubsub spoofing

SIM = Config(k=5, pubsub_lease=30.0)


def subscribe(net: SimNetwork, node: Node, topic: int, got: list[bytes]) -> int:
    def start(now: float) -> Call[int]:
        _, call = node.pubsub.subscribe(topic, got.append, now)
        return call

    return net.run_call(net.call(node, start))


def test_a_spoofed_unsubscribe_does_not_cut_a_subscription() -> None:
    """UNSUBSCRIBE from the subscriber's address without a token (an off-path host forging it)
    must not make a relay forget the subscriber."""
    net = SimNetwork(seed=12, config=SIM)
    nodes = net.add_nodes(30)
    subscriber, publisher = nodes[0], nodes[1]
    topic = 2**255 + 4242
    got: list[bytes] = []
    assert subscribe(net, subscriber, topic, got) == SIM.k
    relays = [n for n in nodes if subscriber.address in n.pubsub.relay.subscribers(topic,
                                                                                   net.now)]
    assert len(relays) == SIM.k
    for relay in relays:
        answers = spoof(relay, net.address_of(subscriber), Unsubscribe(topic), net.now)
        assert answers == [Challenge()]
        assert subscriber.address in relay.pubsub.relay.subscribers(topic, net.now)
    # Well before the next renewal: the subscription still delivers.
    assert net.run_call(net.call(publisher, publisher.pubsub.publish, topic, b"m")) == SIM.k
    net.run_for(1.0)
    assert got == [b"m"]


def test_the_subscriber_itself_still_unsubscribes() -> None:
    net = SimNetwork(seed=13, config=SIM)
    nodes = net.add_nodes(30)
    subscriber = nodes[0]
    topic = 99
    handles = []

    def start(now: float) -> Call[int]:
        handle, call = subscriber.pubsub.subscribe(topic, lambda v: None, now)
        handles.append(handle)
        return call

    assert net.run_call(net.call(subscriber, start)) == SIM.k
    # Past two token rotations: the subscriber's tokens are stale, its UNSUBSCRIBE is
    # challenged and resent with a fresh one.
    net.run_for(2 * SIM.token_lifetime + 2 * SIM.maintenance_interval)

    def close(now: float) -> Call[None]:
        handles[0].close(now)
        done: Call[None] = Call("close")
        done.resolve(None)
        return done

    net.call(subscriber, close)
    net.run_for(2.0)
    assert [n for n in nodes if subscriber.address in n.pubsub.relay.subscribers(topic,
                                                                                 net.now)] == []


def test_a_publish_from_a_spoofed_source_is_not_relayed() -> None:
    """PUBLISH from an address that never proved it receives our datagrams is challenged, not
    relayed: else an off-path host could publish under any number of forged sources, each with
    its own rate budget, and have every relay deliver for it."""
    net = SimNetwork(seed=14, config=SIM)
    nodes = net.add_nodes(30)
    subscriber = nodes[0]
    topic = 2**254 + 17
    got: list[bytes] = []
    assert subscribe(net, subscriber, topic, got) == SIM.k
    relays = [n for n in nodes if subscriber.address in n.pubsub.relay.subscribers(topic,
                                                                                   net.now)]
    for index, relay in enumerate(relays):
        forged = (f"10.9.8.{index + 1}", 4000)
        answers = spoof(relay, forged, Publish(topic, 5, 0, b"forged"), net.now)
        assert answers == [Challenge()]
        delivers = [CODEC.decode(out).message for out, _ in relay.datagrams_to_send()]
        assert not any(isinstance(m, Deliver) for m in delivers)
    net.run_for(2.0)
    assert got == []


# ============================================================================ pubsub bounds


def test_one_host_cannot_take_every_topic_slot_of_a_relay() -> None:
    """One host, however many ports it uses, holds at most a tenth of a relay's subscriptions:
    the other hosts can still subscribe."""
    relay = Node(config=Config(pubsub_max_topics=20, pubsub_max_subscribers=20))
    greedy = [("10.0.0.1", port) for port in range(1, 41)]
    replies = [relay.pubsub._handle_subscribe(Subscribe(topic, 60_000), None, address, 0.0)
               for topic, address in enumerate(greedy)]
    assert sum(isinstance(r, Subscribed) for r in replies) == 2
    refused = [r for r in replies if isinstance(r, Error)]
    assert len(refused) == 38
    assert all(r.code == ErrorCode.STORAGE_FULL and "your host" in r.reason for r in refused)
    assert relay.pubsub.relay.held_by("10.0.0.1") == 2 and len(relay.pubsub.relay) == 2
    other = relay.pubsub._handle_subscribe(Subscribe(100, 60_000), None, ("10.0.0.2", 1), 0.0)
    assert isinstance(other, Subscribed)
    # Renewing is not joining: a host at its share keeps renewing what it holds.
    renewed = relay.pubsub._handle_subscribe(Subscribe(0, 60_000), None, greedy[0], 30.0)
    assert isinstance(renewed, Subscribed)
    # Its leases lapse (or it unsubscribes): its share is free again.
    relay.pubsub.relay.expire(61.0)
    assert relay.pubsub.relay.held_by("10.0.0.1") == 1
    relay.pubsub._handle_unsubscribe(Unsubscribe(0), None, greedy[0], 61.0)
    assert relay.pubsub.relay.held_by("10.0.0.1") == 0
    again = relay.pubsub._handle_subscribe(Subscribe(5, 60_000), None, greedy[5], 62.0)
    assert isinstance(again, Subscribed)


def test_one_host_cannot_take_every_seat_of_a_topic() -> None:
    relay = Node(config=Config(pubsub_max_topics=100, pubsub_max_subscribers=20))
    replies = [relay.pubsub._handle_subscribe(Subscribe(7, 60_000), None, ("10.0.0.1", port),
                                              0.0)
               for port in range(1, 21)]
    assert sum(isinstance(r, Subscribed) for r in replies) == 2
    refused = [r for r in replies if isinstance(r, Error)]
    assert all(r.code == ErrorCode.TOO_MANY_SUBSCRIBERS and "your host" in r.reason
               for r in refused)
    for host in range(2, 11):  # nine more hosts, two seats each: the topic is full
        for port in (1, 2):
            reply = relay.pubsub._handle_subscribe(Subscribe(7, 60_000), None,
                                                   (f"10.0.0.{host}", port), 0.0)
            assert isinstance(reply, Subscribed)
    full = relay.pubsub._handle_subscribe(Subscribe(7, 60_000), None, ("10.0.1.1", 1), 0.0)
    assert isinstance(full, Error) and full.code == ErrorCode.TOO_MANY_SUBSCRIBERS
    assert "maximum" in full.reason and len(relay.pubsub.relay.subscribers(7, 0.0)) == 20
