"""What a node takes from a request whose source address nothing proves (docs/SECURITY.md,
"Amplification" and "Resource exhaustion"; docs/PROTOCOL.md, "Amplification"): no write, no
DELIVER, no share of the proven requesters' rate budgets or verification pings. Real encoded
datagrams from spoofed addresses, a virtual clock."""

from __future__ import annotations

import random
from dataclasses import replace

import pytest
from nacl.signing import SigningKey

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.dhtrecords import SECURED, DhtPut, Record, encode_record, make_entry
from qadom.ids import key_for
from qadom.messages import (
    Append,
    Challenge,
    Envelope,
    Error,
    ErrorCode,
    FindNodeStore,
    Message,
    NodesStored,
    Ping,
    Pong,
    Store,
    Stored,
)
from qadom.namespace import NamespaceRecord, NamespaceStore, signing_bytes
from qadom.node import Node
from qadom.pubsub import Deliver
from qadom.sim import SimNetwork

CONFIG = Config()
CODEC = Codec(CONFIG)
VICTIM: Address = ("203.0.113.7", 4000)  # an honest peer's public address, which anyone can name


def send(node: Node, address: Address, message: Message, rpc_id: int, *,
         token: bytes | None = None, pad_to: int = 600, now: float = 1.0,
         ) -> list[Envelope]:
    """Feed ``node`` one request from ``address``; the envelopes it sends that address."""
    data = CODEC.encode(Envelope(rpc_id, None, message, token, pad_to))
    node.datagram_received(data, address, now)
    return [CODEC.decode(out) for out, to in node.datagrams_to_send() if to == address]


def namespace_store() -> NamespaceStore:
    owner = SigningKey(bytes(range(32)))
    public = bytes(owner.verify_key)
    signature = owner.sign(signing_bytes(public, 5, 0, b"named")).signature
    return NamespaceStore.of(NamespaceRecord(public, 5, 0, b"named", signature))


def dht_put() -> DhtPut:
    secret = (1).to_bytes(32, "big")
    return DhtPut(encode_record(Record("name", SECURED,
                                       (make_entry(secret, "name", "value", SECURED),))))


WRITES = {
    "store": Store(b"a value"),
    "append": Append(7, 8),
    "namespace_store": namespace_store(),
    "dht_put": dht_put(),
}


@pytest.mark.parametrize("name", list(WRITES))
@pytest.mark.parametrize("pad_to", [48, 600])
def test_an_unproven_write_is_challenged_and_stores_nothing(name: str, pad_to: int) -> None:
    """Every write is charged to its source's host quota, so it is served only to a proven
    source: without a token it is answered CHALLENGE carrying the token, and nothing is kept;
    sent again with that token, it is stored."""
    node = Node(rng=random.Random(1), node_id=1, now=0.0)
    write = WRITES[name]
    replies = send(node, VICTIM, write, 1, pad_to=pad_to)
    assert [type(r.message) for r in replies] == [Challenge]
    assert node.stats["challenges_sent"] == 1  # counted as the amplification bound's are
    token = replies[0].token
    assert token == node.token_for(VICTIM)
    assert node.store.quotas.total_items == 0
    replies = send(node, VICTIM, write, 1, token=token)
    assert len(replies) == 1 and not isinstance(replies[0].message, (Challenge, Error))
    assert node.store.quotas.total_items == 1


def test_spoofed_stores_cannot_use_up_a_peers_storage_quota() -> None:
    """An off-path host sends STOREs with an honest peer's address as source, as many as that
    host's quota: none is stored, and the peer's own STORE, proven, is."""
    cfg = replace(CONFIG, max_items_per_source=50, max_store_items=500)
    node = Node(config=cfg, rng=random.Random(1), node_id=1, now=0.0)
    for i in range(60):
        send(node, VICTIM, Store(b"junk %d" % i), i, pad_to=48)
    assert node.store.quotas.total_items == 0
    replies = send(node, VICTIM, Store(b"honest value"), 999, token=node.token_for(VICTIM))
    assert [r.message for r in replies] == [Stored()]
    assert node.store.get_value(key_for(b"honest value")) == b"honest value"


def test_an_unproven_find_node_store_gets_its_contacts_and_stores_nothing() -> None:
    """A FIND_NODE_STORE is a lookup step as well as a write: unproven (and padded, as a first
    contact is) it is answered as a FIND_NODE of its key with ``stored`` false and a token, so
    the lookup goes on at once; proven, it stores. A spoofed flood of them from many hosts
    stores nothing, and an honest STORE after it finds room."""
    cfg = replace(CONFIG, max_items_per_source=50, max_store_items=500)
    node = Node(config=cfg, rng=random.Random(2), node_id=1, now=0.0)
    for j in range(20):
        node.table.seen(Contact(random.Random(j).getrandbits(256), (f"100.{j}.0.1", 4000)))
    value = b"set on the lookup"
    replies = send(node, VICTIM, FindNodeStore(value, 86400), 1)
    assert len(replies) == 1
    reply = replies[0].message
    assert isinstance(reply, NodesStored) and reply.stored is False
    assert reply.nodes == tuple(node.table.closest(key_for(value), cfg.k))
    assert replies[0].token == node.token_for(VICTIM)
    assert node.store.quotas.total_items == 0
    proven = send(node, VICTIM, FindNodeStore(value, 86400), 2, token=replies[0].token)
    assert isinstance(proven[0].message, NodesStored) and proven[0].message.stored is True
    assert node.store.get_value(key_for(value)) == value

    flooded = Node(config=cfg, rng=random.Random(3), node_id=1, now=0.0)
    for host in range(11):
        for i in range(50):
            for pad_to in (48, 600):
                send(flooded, (f"198.51.{host}.9", 4000),
                     FindNodeStore(b"junk %d %d %d" % (host, i, pad_to), 86400), i, pad_to=pad_to)
    assert flooded.store.quotas.total_items == 0
    honest: Address = ("192.0.2.200", 4000)
    replies = send(flooded, honest, Store(b"honest"), 5, token=flooded.token_for(honest))
    assert [r.message for r in replies] == [Stored()]


def test_a_set_through_peers_it_holds_no_token_from_needs_no_challenge_on_its_lookup() -> None:
    """A writer that holds no token from anybody (as on first contact) sets a value: its
    lookup is answered at once (no CHALLENGE round trip), the peers asked unproven keep
    nothing on it, and the value still ends at the k closest, through the STORE sent to them
    after the lookup with the tokens it brought."""
    net = SimNetwork(11, config=CONFIG)
    nodes = net.add_nodes(40)
    writer = nodes[7]
    writer._tokens.clear()
    challenged = writer.stats["challenged"]
    value = b"stored through unproven first contacts"
    assert net.run_call(net.call(writer, writer.set, value)) == key_for(value)
    assert writer.stats["challenged"] == challenged
    closest = set(net.true_closest(key_for(value), CONFIG.k, exclude=writer.id))
    holders = {n.id for n in nodes if n is not writer and n.store.get_value(key_for(value))}
    assert closest <= holders


def test_a_spoofed_deliver_neither_forges_a_message_nor_drops_the_publishers_next() -> None:
    """An off-path host sends a subscriber DELIVERs from one of its relays' (public)
    addresses, carrying the publisher's stream id (which every subscriber sees) and a seq far
    ahead, then a flood of fresh stream ids. DELIVER is served only to proven sources: the
    subscriber passes on none of them, gives up no gap for them, and receives the publisher's
    next messages and a new publisher's."""
    net = SimNetwork(3, config=CONFIG)
    nodes = net.add_nodes(12)
    topic = 0x1234 << 200
    subscriber, publisher = nodes[3], nodes[7]
    got: list[bytes] = []
    _, call = net.call(subscriber, subscriber.pubsub.subscribe, topic, got.append)
    assert net.run_call(call) >= 1
    net.run_call(net.call(publisher, publisher.pubsub.publish, topic, b"honest 0"))
    net.run_for(2)
    assert got == [b"honest 0"]
    stream = publisher.pubsub._outboxes[topic].stream
    relay = next(iter(subscriber.pubsub._topics[topic].relays))
    forged = CODEC.encode(Envelope(99, None, Deliver(topic, stream, 1000, b"FORGED"), None, 48))
    net.call(subscriber, subscriber.datagram_received, forged, relay)
    for s in range(1024):
        crowd = CODEC.encode(Envelope(1000 + s, None, Deliver(topic, 10**9 + s, 0, b"x"), None, 48))
        net.call(subscriber, subscriber.datagram_received, crowd, relay)
    net.run_for(5)  # past the reorder timeout: a gap taken for real would be given up
    for i in range(1, 6):
        net.run_call(net.call(publisher, publisher.pubsub.publish, topic, b"honest %d" % i))
    newcomer = nodes[9]
    net.run_call(net.call(newcomer, newcomer.pubsub.publish, topic, b"a new publisher's"))
    net.run_for(5)
    assert got == [b"honest %d" % i for i in range(6)] + [b"a new publisher's"]
    assert subscriber.stats["pubsub_inbox_full"] == 0


def test_spoofed_requests_do_not_spend_a_proven_senders_rate_budget() -> None:
    """Requests spoofed from a peer's address, past every budget of that address and its host,
    leave the peer's own requests, which carry its token, their full budget; past that budget
    the peer is refused RATE_LIMITED, once a second, whatever the spoofed ones were sent."""
    cfg = replace(CONFIG, request_burst=5, request_rate=0.001, host_request_burst=8,
                  host_request_rate=0.001)
    node = Node(config=cfg, rng=random.Random(4), node_id=1, now=0.0)
    token = node.token_for(VICTIM)
    for i in range(50):
        send(node, VICTIM, Ping(), i, pad_to=48)
    assert node.stats["rate_limited"] == 45
    answers = [send(node, VICTIM, Ping(), 100 + i, token=token) for i in range(6)]
    assert [[r.message for r in a] for a in answers[:5]] == [[Pong()]] * 5
    assert [r.message for r in answers[5]] == [Error(ErrorCode.RATE_LIMITED, "slow down")]
    # Another port of the same host, proven too: the host's proven budget (8) is what is left.
    other: Address = (VICTIM[0], 4001)
    answers = [send(node, other, Ping(), 200 + i, token=node.token_for(other)) for i in range(4)]
    assert [[r.message for r in a] for a in answers[:3]] == [[Pong()]] * 3
    assert [r.message for r in answers[3]] == [Error(ErrorCode.RATE_LIMITED, "slow down")]


def test_spoofed_requests_cannot_keep_a_proven_requester_from_being_verified() -> None:
    """Unproven requests from many addresses fill the verification pings' room; a requester
    that proves its address is still pinged (and so may enter the routing table), and both
    kinds stay bounded by ``max_verifying``."""
    cfg = replace(CONFIG, max_verifying=10)
    rng = random.Random(5)
    node = Node(config=cfg, rng=random.Random(6), node_id=rng.getrandbits(256), now=0.0)
    for i in range(30):
        spoofed: Address = (f"198.51.100.{i + 1}", 4000)
        sender = node.id ^ rng.getrandbits(40)
        data = CODEC.encode(Envelope(i, sender, Ping(), None, cfg.min_small_request_size))
        node.datagram_received(data, spoofed, 1.0)
        node.datagrams_to_send()
    assert len(node._verifying) == cfg.max_verifying
    for i in range(15):
        proven: Address = (f"192.0.2.{i + 1}", 5000)
        sender = node.id ^ rng.getrandbits(40)
        data = CODEC.encode(Envelope(100 + i, sender, Ping(), node.token_for(proven)))
        node.datagram_received(data, proven, 2.0)
        sent = [CODEC.decode(out).message for out, to in node.datagrams_to_send() if to == proven]
        assert sent == ([Pong(), Ping()] if i < cfg.max_verifying else [Pong()])
    assert len(node._verifying) == len(node._verifying_proven) == cfg.max_verifying


def test_requests_with_wrong_tokens_cost_no_hmac_each(monkeypatch: pytest.MonkeyPatch) -> None:
    """Proof is checked before the rate limit, against the current and the previous secret's
    tokens: both are minted once per address and remembered, so a flood of requests with wrong
    tokens from one address costs one HMAC per secret, not one per datagram."""
    import qadom.node as node_module
    node = Node(config=replace(CONFIG, request_rate=10.0, request_burst=20), node_id=1, now=0.0)
    minted: list[Address] = []
    mint = node_module._mint_token

    def counting(address: Address, secret: bytes) -> bytes:
        minted.append(address)
        return mint(address, secret)

    monkeypatch.setattr(node_module, "_mint_token", counting)
    for rpc_id in range(1, 501):
        send(node, VICTIM, Ping(), rpc_id, token=bytes(16))
    assert node.stats["rate_limited"] > 0  # the flood went past the limit too
    assert minted == [VICTIM, VICTIM]  # the current secret's token and the previous one's
    # After a change of secret the old tokens are those granted until then: no HMAC again.
    node.handle_timer(CONFIG.token_lifetime + CONFIG.maintenance_interval + 1.0)
    minted.clear()
    for rpc_id in range(501, 601):
        send(node, VICTIM, Ping(), rpc_id, token=bytes(16),
             now=CONFIG.token_lifetime + CONFIG.maintenance_interval + 2.0)
    assert minted == [VICTIM]  # the new current secret's token only


def test_a_write_whose_resend_crossed_its_challenge_gets_its_real_answer() -> None:
    """A write without a token whose first copy is answered late (after our resend): both
    copies get a CHALLENGE. The first makes us resend with the token; the second, which answers
    the copy sent before the proof, is not the request's answer: the proven copy's STORED is."""
    client, server = Node(rng=random.Random(1), now=0.0), Node(rng=random.Random(2), now=0.0)
    client.address, server.address = ("127.0.0.1", 1000), ("127.0.0.1", 2000)
    got: list[Envelope | None] = []
    client.request(server.address, Store(b"x" * 100), 0.0, expect_id=server.id,
                   on_reply=lambda envelope, _now: got.append(envelope))
    first = client.datagrams_to_send()
    timer = client.get_timer()
    assert timer is not None
    client.handle_timer(timer)  # the first copy is slow to answer: resent, still unproven
    copies = first + client.datagrams_to_send()
    assert len(copies) == 2
    now = timer + 0.1

    def carry(sender: Node, receiver: Node, datagrams: list[tuple[bytes, Address]]) -> list[
            tuple[bytes, Address]]:
        assert sender.address is not None
        for data, _ in datagrams:
            receiver.datagram_received(data, sender.address, now)
        return receiver.datagrams_to_send()

    def replies(datagrams: list[tuple[bytes, Address]]) -> list[tuple[bytes, Address]]:
        # (the server also pings the client, a requester it does not know, to verify it)
        return [(d, a) for d, a in datagrams if not CODEC.decode(d).message.IS_REQUEST]

    challenges = replies(carry(client, server, copies))
    assert [type(CODEC.decode(d).message) for d, _ in challenges] == [Challenge, Challenge]
    proven = carry(server, client, challenges)  # one resend with the token, not two
    assert [type(CODEC.decode(d).message) for d, _ in proven] == [Store]
    answers = replies(carry(client, server, proven))
    carry(server, client, answers)
    assert [type(e.message) for e in got if e is not None] == [Stored] and len(got) == 1
    assert client.stats["unexpected"] == 0 and client.stats["challenged"] == 1
