"""Per-host budgets count an IPv6 /64 as one host: an end site holds at least a /64, and counting
each of its 2**64 addresses as a host would multiply every per-host budget (request rates,
storage quotas, subscriptions) by as much."""

from __future__ import annotations

from dataclasses import replace

from nacl.signing import SigningKey

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, host_key
from qadom.ids import key_for
from qadom.messages import Envelope, Error, ErrorCode, Message, Ping, Pong, Store, Stored
from qadom.namespace import NamespaceRecord, NamespaceStore, NamespaceStored, signing_bytes
from qadom.node import Node
from qadom.pubsub import RelayTable, StreamTable

SITE = "2001:db8:1:2"  # one /64
CONFIG = Config()


def test_host_key_is_the_ipv4_address_or_the_ipv6_slash_64() -> None:
    assert host_key("203.0.113.9") == "203.0.113.9"
    assert host_key(f"{SITE}::1") == host_key(f"{SITE}:ffff:ffff:ffff:ffff") == f"{SITE}::/64"
    assert host_key("2001:db8:1:3::1") == "2001:db8:1:3::/64"
    assert host_key("::ffff:203.0.113.9") == "203.0.113.9"
    assert host_key("fe80::1%eth0") == "fe80::1%eth0"  # every link's is in fe80::/64
    assert host_key("peer.example") == "peer.example"


def ask(node: Node, address: Address, message: Message, rpc_id: int) -> object:
    codec = Codec(CONFIG)
    # With the token the node grants the address: writes are served to proven requesters only.
    token = node.token_for(address)
    node.datagram_received(codec.encode(Envelope(rpc_id, None, message, token, 600)), address, 1.0)
    replies = [codec.decode(data).message for data, to in node.datagrams_to_send() if to == address]
    return replies[0] if replies else None


def test_the_addresses_of_one_ipv6_slash_64_share_one_host_request_budget() -> None:
    node = Node(config=replace(CONFIG, host_request_burst=5, host_request_rate=0.001), now=0.0)
    answers = [ask(node, (f"{SITE}::{i + 1:x}", 4000), Ping(), i) for i in range(8)]
    assert answers[:5] == [Pong()] * 5
    assert all(isinstance(a, Error) and a.code == ErrorCode.RATE_LIMITED for a in answers[5:6])
    assert node.stats["rate_limited"] == 3
    assert ask(node, ("2001:db8:1:3::1", 4000), Ping(), 99) == Pong()  # another /64


def test_the_addresses_of_one_ipv6_slash_64_share_one_storage_quota() -> None:
    node = Node(config=replace(CONFIG, max_items_per_source=2), now=0.0)
    values = [f"value {i}".encode() for i in range(3)]
    answers = [ask(node, (f"{SITE}::{i + 1:x}", 4000), Store(v), i) for i, v in enumerate(values)]
    assert answers[:2] == [Stored(), Stored()]
    assert isinstance(answers[2], Error) and answers[2].code == ErrorCode.STORAGE_FULL
    assert node.store.get_value(key_for(values[2])) is None
    assert ask(node, ("2001:db8:1:3::1", 4000), Store(values[2]), 9) == Stored()


def test_the_addresses_of_one_ipv6_slash_64_share_one_quota_for_signed_records() -> None:
    node = Node(config=replace(CONFIG, max_items_per_source=1), now=0.0)
    owner = SigningKey(bytes(range(32)))
    public = bytes(owner.verify_key)

    def record(key: int) -> NamespaceStore:
        signature = owner.sign(signing_bytes(public, key, 0, b"named")).signature
        return NamespaceStore.of(NamespaceRecord(public, key, 0, b"named", signature))

    assert ask(node, (f"{SITE}::1", 4000), record(1), 1) == NamespaceStored()
    refused = ask(node, (f"{SITE}::2", 4000), record(2), 2)
    assert isinstance(refused, Error) and refused.code == ErrorCode.STORAGE_FULL
    assert ask(node, ("2001:db8:1:3::1", 4000), record(2), 3) == NamespaceStored()


def test_the_addresses_of_one_ipv6_slash_64_share_one_host_share_of_a_relay() -> None:
    relays = RelayTable(100, 100, 600.0, max_per_host=2, max_per_host_topic=2)
    results = [relays.subscribe(topic, (f"{SITE}::{topic + 1:x}", 4000), 60.0, 0.0)[0]
               for topic in range(3)]
    assert results == [RelayTable.OK, RelayTable.OK, RelayTable.HOST_TOO_MANY_TOPICS]
    assert relays.held_by(f"{SITE}::99") == 2
    assert relays.subscribe(5, ("2001:db8:1:3::1", 4000), 60.0, 0.0)[0] == RelayTable.OK
    streams = StreamTable(4, 60.0, 100, max_per_host=2)
    for stream in range(2):
        streams.record(1, stream, (f"{SITE}::{stream + 1:x}", 4000), 0.0)
    assert streams.held_by(f"{SITE}::abc") == 2
    assert streams.check(1, 7, (f"{SITE}::7", 4000), 0.0) == StreamTable.HOST_TOO_MANY
