"""Amplification: an address that has not proven it receives our datagrams never gets more than
amplification_factor (3) times the bytes it sent, whatever it asks; proven peers get everything."""

from __future__ import annotations

import random

import pytest

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.dhtrecords import DhtFind, DhtPut
from qadom.info import InfoRequest
from qadom.messages import (
    Append,
    Challenge,
    Envelope,
    FindNode,
    FindNodeStore,
    FindValue,
    Message,
    Nodes,
    Ping,
    Search,
    Store,
    Value,
)
from qadom.namespace import NamespaceFind, NamespaceStore
from qadom.node import Node
from qadom.pubsub import Deliver, Publish, Subscribe, Unsubscribe
from qadom.sim import SimNetwork
from qadom.storage import Meta

CONFIG = Config()
CODEC = Codec(CONFIG)
SOURCE: Address = ("127.66.0.1", 4000)


def loaded_node() -> Node:
    """A node holding every kind of large answer: a full value, a long set, a full table."""
    node = Node(config=CONFIG, rng=random.Random(1))
    node.store.put_value(7, b"\xff" * CONFIG.max_value_size, Meta(expires=1e12))
    for value in range(1000):
        node.store.add_entry(9, value, Meta(expires=1e12))
    rng = random.Random(2)
    for i in range(200):
        host = f"ffff:ffff:ffff:ffff:ffff:ffff:{i // 256 + 1:x}:{i % 256 + 1:x}"
        node.table.seen(Contact(rng.getrandbits(256), (host, 65535)))
    return node


REQUESTS: list[Message] = [
    Ping(), FindNode(2**255), FindValue(7), FindValue(8), Search(9, None), Search(9, 100),
    NamespaceFind(5), DhtFind(5), InfoRequest(), Subscribe(3, 60_000),
    # The requests that write: a value storing or not (FIND_NODE_STORE answers k contacts), an
    # entry, a record that does not verify, a /dht write that does not decode, pub/sub traffic.
    Store(b"v" * 100), Store(b"v" * 100, cache=True), FindNodeStore(b"w" * 100, 86400),
    FindNodeStore(b"w" * 100, 0), Append(9, 5000, 86400), Append(10, 1, 86400),
    NamespaceStore(bytes(32), 5, 0, b"value", bytes(64), 86400), DhtPut(b"\x00" * 40),
    Unsubscribe(3), Publish(3, 1, 0, b"message"), Deliver(3, 1, 0, b"message"),
]
"""Every request type the node serves (``test_every_request_type_is_covered`` checks it)."""


def test_every_request_type_is_covered() -> None:
    assert {type(m) for m in REQUESTS} == set(loaded_node()._handlers)


def sent_later(node: Node, destination: Address, until: float) -> list[bytes]:
    """What ``node`` sends to ``destination`` as its timers run, up to virtual time ``until``."""
    sent: list[bytes] = []
    deadline = node.get_timer()
    while deadline is not None and deadline <= until:
        node.handle_timer(deadline)
        sent += [out for out, dest in node.datagrams_to_send() if dest == destination]
        deadline = node.get_timer()
    return sent


def exchange(node: Node, envelope: Envelope, source: Address = SOURCE) -> tuple[int, list[bytes]]:
    data = CODEC.encode(envelope)
    node.datagram_received(data, source, 0.0)
    return len(data), [out for out, dest in node.datagrams_to_send() if dest == source]


@pytest.mark.parametrize("message", REQUESTS, ids=lambda m: type(m).__name__)
@pytest.mark.parametrize("sender", [None, 12345])
@pytest.mark.parametrize("pad_to", [0, 64, 600])
def test_unproven_sources_get_at_most_three_times_what_they_sent(
        message: Message, sender: int | None, pad_to: int) -> None:
    node = loaded_node()
    size, replies = exchange(node, Envelope(1, sender, message, None, pad_to))
    # The source never answers (it was spoofed): count the resends of whatever we asked it too.
    replies += sent_later(node, SOURCE, until=120.0)
    assert sum(len(r) for r in replies) <= CONFIG.amplification_factor * size
    # Every answer carries a token that proves the address next time (a verification PING
    # we send the requester is a request of ours and carries none).
    for reply in map(CODEC.decode, replies):
        assert reply.message.IS_REQUEST or reply.token is not None


def test_a_token_unlocks_the_full_answer_and_a_forged_one_does_not() -> None:
    node = loaded_node()
    _, replies = exchange(node, Envelope(1, None, FindValue(7), None, 64))
    (challenge,) = [CODEC.decode(r) for r in replies]
    assert isinstance(challenge.message, Challenge) and challenge.token is not None
    _, replies = exchange(node, Envelope(2, None, FindValue(7), b"\x00" * 16))
    assert all(isinstance(CODEC.decode(r).message, Challenge) for r in replies)
    _, replies = exchange(node, Envelope(3, None, FindValue(7), challenge.token))
    (answer,) = [CODEC.decode(r).message for r in replies]
    assert answer == Value(b"\xff" * CONFIG.max_value_size)
    # The token is bound to the address: another address cannot use it.
    other = ("127.66.0.2", 4000)
    _, replies = exchange(node, Envelope(4, None, FindValue(7), challenge.token), other)
    assert all(isinstance(CODEC.decode(r).message, Challenge) for r in replies)


def test_tokens_expire_after_two_rotations() -> None:
    node = loaded_node()
    _, replies = exchange(node, Envelope(1, None, Ping(), None, 64))
    token = CODEC.decode(replies[0]).token
    assert token is not None
    node.handle_timer(CONFIG.token_lifetime + CONFIG.maintenance_interval)
    _, replies = exchange(node, Envelope(2, None, FindNode(1), token))
    assert isinstance(CODEC.decode(replies[0]).message, Nodes)  # previous secret still valid
    node.handle_timer(2 * CONFIG.token_lifetime + 2 * CONFIG.maintenance_interval)
    _, replies = exchange(node, Envelope(3, None, FindNode(1), token))
    assert isinstance(CODEC.decode(replies[0]).message, Challenge)


def test_a_token_of_the_previous_secret_is_answered_with_a_fresh_one() -> None:
    node = loaded_node()
    _, replies = exchange(node, Envelope(1, None, Ping(), None, 64))
    token = CODEC.decode(replies[0]).token
    assert token is not None
    _, replies = exchange(node, Envelope(2, None, FindNode(1), token))
    assert CODEC.decode(replies[0]).token is None  # a token of the current secret: nothing new
    node.handle_timer(CONFIG.token_lifetime + CONFIG.maintenance_interval)  # one rotation
    _, replies = exchange(node, Envelope(3, None, FindNode(1), token))
    reply = CODEC.decode(replies[0])
    assert isinstance(reply.message, Nodes) and reply.token not in (None, token)
    node.handle_timer(2 * CONFIG.token_lifetime + 2 * CONFIG.maintenance_interval)
    _, replies = exchange(node, Envelope(4, None, FindNode(1), reply.token))
    assert isinstance(CODEC.decode(replies[0]).message, Nodes)  # the fresh one outlives the old


def _two_nodes() -> tuple[SimNetwork, Node, Node]:
    """Two nodes of a network of 30, so that a NODES answer is large (k contacts)."""
    net = SimNetwork(4, config=CONFIG)
    asker, asked, *_ = net.add_nodes(30)
    net.run_for(5.0)
    return net, asker, asked


def test_a_peer_asked_now_and_then_never_challenges() -> None:
    """A token is refreshed while it is used: a peer asked every 100 s for an hour, across
    twelve changes of its secret, answers each request at once, never with a CHALLENGE."""
    net, asker, asked = _two_nodes()
    for _ in range(36):
        net.run_for(100.0)
        assert net.run_call(net.call(asker, asker.find_nodes, asked.id ^ 1)) is not None
    assert asker.stats["challenged"] == 0
    assert sum(n.stats["challenges_sent"] for n in net.live_nodes()) == 0


def test_a_peer_not_asked_for_a_while_answers_in_full_without_a_challenge() -> None:
    """A token kept past the time it is surely valid goes with a padded request: the answer
    comes in full whether the token died meanwhile or not, in one round trip."""
    for idle in (CONFIG.token_lifetime, 2 * CONFIG.token_lifetime + CONFIG.maintenance_interval,
                 3 * (CONFIG.token_lifetime + CONFIG.maintenance_interval)):
        net, asker, asked = _two_nodes()
        net.run_call(net.call(asker, asker.find_nodes, asked.id ^ 1))
        net.run_for(idle)
        sent = asker.stats["requests_out"]
        net.run_call(net.call(asker, asker.find_nodes, asked.id ^ 2))
        assert asker.stats["requests_out"] - sent >= 1
        assert asker.stats["challenged"] == 0, idle
        assert sum(n.stats["challenges_sent"] for n in net.live_nodes()) == 0, idle


def test_a_token_goes_alone_while_surely_valid_then_with_padding_then_not_at_all() -> None:
    net, asker, asked = _two_nodes()
    address = net.address_of(asked)
    net.run_call(net.call(asker, asker.ping, address))
    token = asker._tokens[address][0]

    def sent_now() -> tuple[bytes | None, int]:
        """The token and the size of a FIND_NODE the asker sends the asked now."""
        asker.datagrams_to_send()
        asker.request(address, FindNode(1), net.now)
        ((data, _),) = asker.datagrams_to_send()
        return CODEC.decode(data).token, len(data)

    sent, size = sent_now()  # the token alone proves the address
    assert sent == token and size < CONFIG.min_request_size
    net.now += CONFIG.token_lifetime  # it may have died: padded as if there were none
    sent, size = sent_now()
    assert sent == token and size >= CONFIG.min_request_size
    net.now += CONFIG.token_lifetime + 2 * CONFIG.maintenance_interval  # surely dead: forgotten
    sent, size = sent_now()
    assert sent is None and size >= CONFIG.min_request_size
    assert address not in asker._tokens


def test_spoofed_subscription_is_not_registered() -> None:
    node = loaded_node()
    _, replies = exchange(node, Envelope(1, 12345, Subscribe(3, 60_000), None, 600))
    answers = [m for m in (CODEC.decode(r).message for r in replies) if not m.IS_REQUEST]
    assert answers == [Challenge()]
    assert len(node.pubsub.relay.subscribers(3, 0.0)) == 0


def test_fresh_nodes_fetch_full_values_through_challenges() -> None:
    net = SimNetwork(seed=3)
    nodes = net.add_nodes(40)
    big = bytes(range(256)) * 32
    key = net.run_call(net.call(nodes[1], nodes[1].set, big))
    newcomer = net.add_node()
    net.run_call(net.call(newcomer, newcomer.bootstrap, [net.address_of(nodes[0])]))
    newcomer._tokens.clear()  # as if it had not asked the holders while joining
    assert net.run_call(net.call(newcomer, newcomer.get, key)) == big
    holder = min(nodes, key=lambda n: n.id ^ 99)
    for value in range(500):
        holder.store.add_entry(99, value, Meta(expires=1e12))
    assert net.run_call(net.call(newcomer, newcomer.search, 99)) == set(range(500))
    total = sum(n.stats["challenges_sent"] for n in nodes)
    assert total > 0  # the bound was enforced along the way, and nothing failed
    assert all(n.stats["internal_errors"] == 0 for n in [*nodes, newcomer])


def test_naming_a_known_contact_proves_nothing() -> None:
    """A spoofer that forges a request from a contact's address with that contact's (public)
    id still gets no more than 3x what it sent."""
    node = loaded_node()
    victim = next(iter(node.table))
    size, replies = exchange(node, Envelope(1, victim.id, FindValue(7), None, 64),
                             victim.address)
    assert sum(len(r) for r in replies) <= CONFIG.amplification_factor * size
    assert [CODEC.decode(r).message for r in replies] == [Challenge()]
