"""Config.validate() accepts only limits that work together, measured with the codec and the node
themselves (so the bounds validate() computes cannot drift from what is really written):

* every reply naming up to k contacts fits ``max_datagram_size`` at the largest k and
  ``search_page_size`` validate() accepts, every contact's host 45 characters long;
* a request padded to ``min_request_size`` or ``min_small_request_size`` fits a datagram;
* a /dht write whose text fills a record passes ``http_max_body_size`` however JSON escapes it.
"""

from __future__ import annotations

import asyncio
import json
import random
from dataclasses import replace
from typing import Any

import aiohttp
import pytest
from nacl.signing import SigningKey
from test_hand_over_budget import OWN, attacker_ids, join, stores

from qadom import Config, Peer
from qadom.codec import MAX_TOKEN, Codec
from qadom.config import MAX_CONTACTS
from qadom.contact import Address, Contact
from qadom.dhtrecords import (
    SECURED,
    DhtFind,
    DhtPut,
    DhtRecord,
    Entry,
    Record,
    encode_record,
    make_entry,
    parse_write,
    public_key,
    storage_key,
)
from qadom.errors import InvalidArgument
from qadom.http import HttpHelper
from qadom.ids import key_for
from qadom.messages import (
    Entries,
    Envelope,
    FindNode,
    FindNodeStore,
    FindValue,
    Message,
    Nodes,
    NodesStored,
    Ping,
    Search,
    Stored,
)
from qadom.namespace import NamespaceFind, NamespaceFound, NamespaceStore, NamespaceStored
from qadom.node import TOKEN_BYTES, Node
from qadom.storage import Meta

from helpers import FAST, signed_record

LONGEST_RPC_ID = 2**64 - 1
MEASURE = Codec(Config(max_datagram_size=1 << 20))  # writes what any codec writes, unbounded
REQUESTER: Address = ("198.51.100.7", 4000)


def accepted(base: Config, **fields: Any) -> bool:
    try:
        replace(base, **fields)
    except InvalidArgument:
        return False
    return True


def largest(base: Config, field: str, top: int, **fields: Any) -> int:
    """The largest value of ``field`` in [1, ``top``] that ``base`` with it (and ``fields``)
    passes validate() with: validate() accepts every value up to it (a binary search)."""
    assert accepted(base, **{field: 1}, **fields)
    low, high = 1, top
    while low < high:
        middle = (low + high + 1) // 2
        if accepted(base, **{field: middle}, **fields):
            low = middle
        else:
            high = middle - 1
    return low


def smallest(base: Config, field: str, top: int, **fields: Any) -> int:
    """The smallest value of ``field`` in [1, ``top``] that ``base`` with it (and ``fields``)
    passes validate() with: validate() accepts every value from it up (a binary search)."""
    assert accepted(base, **{field: top}, **fields)
    low, high = 1, top
    while low < high:
        middle = (low + high) // 2
        if accepted(base, **{field: middle}, **fields):
            high = middle
        else:
            low = middle + 1
    return low


def long_hosts(count: int, seed: int = 1) -> tuple[Contact, ...]:
    """``count`` contacts at 45-character IPv6 hosts (the longest an IP address is written), each
    in a network of its own, at the port that takes the most bytes."""
    rng = random.Random(seed)
    contacts = tuple(Contact(rng.getrandbits(256),
                             (f"2a01:{0x1000 + i:04x}:ffff:ffff:ffff:ffff:255.255.255.255", 65535))
                     for i in range(count))
    assert all(len(c.address[0]) == 45 for c in contacts)
    return contacts


def reply_size(message: Message) -> int:
    """The bytes of ``message`` as a node's reply at its longest: the longest request id echoed,
    the node's id, and the token every reply grants its requester."""
    return len(MEASURE.encode(Envelope(LONGEST_RPC_ID, 2**256 - 1, message,
                                       bytes(TOKEN_BYTES))))


def first_page(page: int, k: int) -> Entries:
    return Entries(tuple(2**256 - 1 - i for i in range(page)), True, long_hosts(k))


# The default limits, and others: a smaller datagram (the smallest value validate() allows with
# it) and a larger one.
LIMITS = [Config(),
          Config(max_value_size=512, max_datagram_size=768, dht_max_record_size=512, k=4,
                 search_page_size=8),
          Config(max_value_size=16384, max_datagram_size=16384 + 512)]


@pytest.mark.parametrize("base", LIMITS, ids=lambda c: f"datagram{c.max_datagram_size}")
def test_every_reply_naming_k_contacts_fits_at_the_largest_k_and_page_accepted(
        base: Config) -> None:
    limit = base.max_datagram_size
    pages = {1, largest(base, "search_page_size", 10_000, k=1)}
    if accepted(base, k=1):
        pages.add(base.search_page_size)
    for page in sorted(pages):
        k = largest(base, "k", MAX_CONTACTS, search_page_size=page)
        contacts = long_hosts(k)
        for message in (first_page(page, k), Nodes(contacts), NodesStored(contacts, True)):
            assert reply_size(message) <= limit, (type(message).__name__, page, k)
        # validate() refuses only what could not fit (its bound counts array heads at their
        # longest: up to 3 bytes more than a page's may take).
        if k < MAX_CONTACTS:
            assert reply_size(first_page(page, k + 1)) > limit - 3, (page, k)
        most = largest(base, "search_page_size", 10_000, k=k)
        assert reply_size(first_page(most, k)) <= limit
        assert reply_size(first_page(most + 1, k)) > limit - 3, (most, k)


def test_a_first_search_reply_that_cannot_fit_is_refused_with_its_fields_named() -> None:
    for fields in ({"k": 39}, {"k": 64, "search_page_size": 101},
                   {"k": 64, "search_page_size": 94}):
        with pytest.raises(InvalidArgument, match=r"search_page_size .* and k .* do not fit"):
            Config(**fields)  # type: ignore[arg-type]
    assert Config(k=64, search_page_size=93).k == 64
    assert Config(k=37).k == 37


def loaded_node(config: Config) -> tuple[Node, Codec]:
    """A sans-IO node whose table holds k contacts and more at 45-character hosts, holding more
    than a page of entries under the key 9, a full-size namespace record and a full /dht
    record (both stored through the wire, as a peer would)."""
    node = Node(config=config, rng=random.Random(3), now=0.0)
    for contact in long_hosts(4 * config.k, seed=4):
        node.table.seen(contact)
    for value in range(config.search_page_size + 10):
        node.store.add_entry(9, 2**256 - 1 - value, Meta(expires=1e12))
    return node, Codec(config)


def answer(node: Node, codec: Codec, message: Message) -> bytes:
    """The one reply ``node`` sends a proven request of ``message`` with the longest request
    id; AssertionError when it sends none (it could not encode it)."""
    node.datagrams_to_send()
    errors = node.stats["internal_errors"]
    request = Envelope(LONGEST_RPC_ID, None, message, node.token_for(REQUESTER))
    node.datagram_received(codec.encode(request), REQUESTER, 1.0)
    replies = [data for data, address in node.datagrams_to_send() if address == REQUESTER]
    assert node.stats["internal_errors"] == errors, type(message).__name__
    assert len(replies) == 1, type(message).__name__
    return replies[0]


def full_dht_write(config: Config, key: str, data_char: str = "\x01") -> Record:
    """A SECURED write of ``key`` whose text (of ``data_char``) fills a record of
    ``dht_max_record_size``: one more character would not fit."""
    secret = bytes(range(1, 33))
    owner = public_key(secret)

    def record(count: int, entry: Entry | None = None) -> Record:
        entry = entry or Entry(data_char * count, owner, None, bytes(64), owner)
        return Record(key, SECURED, (entry,))

    low, high = 1, config.dht_max_record_size  # characters: the most that fit, searched
    while low < high:
        middle = (low + high + 1) // 2
        if len(encode_record(record(middle))) <= config.dht_max_record_size:
            low = middle
        else:
            high = middle - 1
    count = low
    written = record(count, make_entry(secret, key, data_char * count, SECURED))
    assert len(encode_record(written)) <= config.dht_max_record_size
    assert len(encode_record(record(count + 1))) > config.dht_max_record_size
    return written


@pytest.mark.parametrize("fields", [{}, {"k": MAX_CONTACTS}], ids=["page160", "k64"])
def test_a_node_answers_every_request_naming_contacts_at_the_largest_accepted_sizes(
        fields: dict[str, int]) -> None:
    """At the largest k (and page) validate() accepts, a node's table full of contacts at the
    longest hosts: every reply naming contacts goes out within the datagram limit, the full
    ones with all k contacts, and none is dropped for its size (an internal error)."""
    if "k" in fields:
        page = largest(Config(), "search_page_size", 10_000, k=fields["k"])
        config = Config(k=fields["k"], search_page_size=page)
    else:
        config = Config(k=largest(Config(), "k", MAX_CONTACTS))
    node, codec = loaded_node(config)
    k, limit = config.k, config.max_datagram_size
    full: list[Message] = []
    for request in (Search(9, None), FindNode(5), FindValue(5), FindNodeStore(b"v" * 40, 60)):
        data = answer(node, codec, request)
        assert len(data) <= limit
        full.append(codec.decode(data).message)
    assert [type(m) for m in full] == [Entries, Nodes, Nodes, NodesStored]
    first = full[0]
    assert isinstance(first, Entries) and len(first.values) == config.search_page_size
    assert all(isinstance(m, Entries | Nodes | NodesStored) and len(m.nodes) == k for m in full)
    # The replies that carry a record name as many contacts as fit beside it.
    owner = SigningKey(bytes(32))
    record = signed_record(owner, 11, 1, b"\xff" * config.max_value_size)
    stored = answer(node, codec, NamespaceStore.of(record, 600))
    assert isinstance(codec.decode(stored).message, NamespaceStored)
    found = answer(node, codec, NamespaceFind(record.storage_key))
    assert len(found) <= limit and isinstance(codec.decode(found).message, NamespaceFound)
    write = full_dht_write(config, "full")
    stored = answer(node, codec, DhtPut(encode_record(write), 600))
    assert isinstance(codec.decode(stored).message, Stored)
    found = answer(node, codec, DhtFind(storage_key("full")))
    assert len(found) <= limit and isinstance(codec.decode(found).message, DhtRecord)


# ---------------------------------------------------------------------------- hand-overs


def test_the_hand_over_recipients_remembered_are_bounded_by_config() -> None:
    """``max_hand_over_recipients`` bounds the neighbours, addresses and hosts whose last
    hand-over a node remembers; newcomers past it are still handed their items."""
    with pytest.raises(InvalidArgument, match="max_hand_over_recipients"):
        Config(max_hand_over_recipients=0)
    config = Config(max_hand_over_recipients=2)
    node = Node(config=config, rng=random.Random(2), node_id=OWN)
    codec = Codec(config)
    for i in range(50):
        value = b"%08d" % i * 16
        node.store.put_value(key_for(value), value,
                             Meta(expires=1e12, republish_at=1e12, source="10.0.0.9"))
    ids = attacker_ids()
    for network in range(5):  # each newcomer from a public network of its own
        assert stores(join(node, codec, (f"93.184.{network}.34", 4000), next(ids), 1.0))
        assert len(node._handed) <= 2
        assert len(node._handed_addresses) <= 2 and len(node._handed_hosts) <= 2
    assert len(node._handed_addresses) == 2 and len(node._handed_hosts) == 2


# ---------------------------------------------------------------------------- padding


@pytest.mark.parametrize("base", [*LIMITS, Config(max_datagram_size=70_000)],
                         ids=lambda c: f"datagram{c.max_datagram_size}")
@pytest.mark.parametrize("field", ["min_request_size", "min_small_request_size"])
def test_a_padding_minimum_is_at_most_what_a_padded_request_fits_in(base: Config,
                                                                     field: str) -> None:
    limit = base.max_datagram_size
    too_large: dict[str, Any] = {field: limit}
    with pytest.raises(InvalidArgument, match=field):
        replace(base, **too_large)
    most = largest(base, field, limit)
    # Padded with no token (the usual first request) and with the longest token a peer grants.
    for token in (None, bytes(MAX_TOKEN)):
        for message in (Ping(), FindNode(5)):
            padded = MEASURE.encode(Envelope(LONGEST_RPC_ID, 2**256 - 1, message, token, most))
            assert most <= len(padded) <= limit
    # One more, and a request would be a byte or more too long (validate() refuses only that).
    padded = MEASURE.encode(Envelope(LONGEST_RPC_ID, 2**256 - 1, Ping(), None, most + 1))
    assert len(padded) > limit


def test_a_node_with_the_largest_padding_minimums_sends_its_first_requests() -> None:
    """Before the limit, a minimum larger than a datagram made every first request to a peer
    fail to encode: a ping raised InvalidArgument, a lookup's requests were lost."""
    base = Config()
    config = replace(base, min_request_size=largest(base, "min_request_size", 100_000),
                     min_small_request_size=largest(base, "min_small_request_size", 100_000))
    node = Node(config=config, rng=random.Random(5), now=0.0)
    peer: Address = ("198.51.100.9", 4000)
    node.ping(peer, 0.0)
    node.request(peer, FindNode(5), 0.0)
    sent = node.datagrams_to_send()
    assert len(sent) == 2 and all(address == peer for _, address in sent)
    for data, _ in sent:
        least = min(config.min_request_size, config.min_small_request_size)
        assert least <= len(data) <= config.max_datagram_size
        assert Codec(config).decode(data).message in (Ping(), FindNode(5))
    assert node.stats["internal_errors"] == 0


# ---------------------------------------------------------------------------- HTTP body limit


def worst_body(config: Config, key: str, data_char: str) -> bytes:
    """The body of a /dht write whose text of ``data_char`` fills a record, as docs/HTTP.md's
    ``dht_body`` writes it (json.dumps, every non-ASCII or control character escaped)."""
    (entry,) = full_dht_write(config, key, data_char).entries
    body = json.dumps(entry.to_json(SECURED)).encode()
    parse_write(key, json.loads(body), config)  # a write the node takes
    return body


SMALL_RECORDS = Config(dht_max_record_size=512)


@pytest.mark.parametrize("config", [
    FAST,
    # The smallest body limit validate() accepts with records of 512 bytes.
    replace(FAST, dht_max_record_size=512,
            http_max_body_size=smallest(SMALL_RECORDS, "http_max_body_size", 1 << 20)),
], ids=["default", "small"])
@pytest.mark.parametrize("data_char", ["\x01", "Ж", "\U0001f600"], ids=["control", "cyrillic",
                                                                        "emoji"])
async def test_a_dht_write_whose_text_fills_a_record_passes_the_body_limit(
        config: Config, data_char: str) -> None:
    key = "filled"
    body = worst_body(config, key, data_char)
    (entry,) = full_dht_write(config, key, data_char).entries
    assert len(body) > 2 * len(entry.data.encode())  # escaping inflated it
    async with Peer("127.0.0.1", 0, config=config) as peer, \
            HttpHelper(peer, "127.0.0.1", 0) as http:
        assert http.address is not None
        host, port = http.address
        url = f"http://{host}:{port}/dht/{key}"
        async with aiohttp.ClientSession() as session:
            async with session.post(url, data=body) as response:
                assert response.status == 200, (len(body), await response.text())
                assert (await response.json())["key"] == key
            async with session.get(url) as response:
                assert response.status == 200
                read = await asyncio.wait_for(response.json(), 10)
    assert json.loads(read["data"])["data"] == entry.data


def test_a_body_limit_below_a_filled_record_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="http_max_body_size"):
        Config(http_max_body_size=16384)
    with pytest.raises(InvalidArgument, match="http_max_body_size"):
        Config(dht_max_record_size=512, http_max_body_size=4000)
    # The bound follows the record size; a full value (raw, or as base64 in a namespace write)
    # always fits too.
    least = smallest(SMALL_RECORDS, "http_max_body_size", 1 << 20)
    assert least < Config().http_max_body_size
    assert least >= 4 * -(-Config().max_value_size // 3)
    assert least >= len(worst_body(SMALL_RECORDS, "k", "\x01"))
