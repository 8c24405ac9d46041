"""Fuzzing a node: generators of requests for every registered RPC, byte mutations, and the
invariants every node must keep whatever it receives. Shared by tests/test_fuzz.py and the
long-run target tests/fuzz/run_node_fuzz.py."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

import cbor2
from cbor_reference import plain_field

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.errors import InvalidArgument
from qadom.ids import ID_SPACE, key_for
from qadom.messages import MESSAGE_TYPES, Envelope, Kind, Message, Ping, Pong
from qadom.node import Node
from qadom.storage import MemoryStore, Meta

CONFIG = Config()
CODEC = Codec(CONFIG)
REQUEST_TYPES = sorted((cls for cls in MESSAGE_TYPES.values() if cls.IS_REQUEST),
                       key=lambda cls: cls.CODE)
SOURCES: list[Address] = [("127.7.0.1", 4000), ("127.7.0.2", 4001), ("::1", 4002)]


def random_field(kind: Kind, rng: random.Random) -> Any:
    """A value of ``kind``, biased to the edges where rules live (0, maxima, tiny sizes)."""
    edge = rng.random() < 0.3
    if kind is Kind.ID:
        return rng.choice([0, 1, ID_SPACE - 1]) if edge else rng.getrandbits(256)
    if kind is Kind.OPT_ID:
        return None if rng.random() < 0.3 else random_field(Kind.ID, rng)
    if kind is Kind.VALUE:
        size = rng.choice([0, 1, 32, CONFIG.max_value_size]) if edge else rng.randrange(200)
        return rng.randbytes(size)
    if kind is Kind.BOOL:
        return rng.random() < 0.5
    if kind is Kind.UINT16:
        return rng.choice([0, 65535]) if edge else rng.randrange(65536)
    if kind is Kind.UINT64:
        return rng.choice([0, 1, 2**63, 2**64 - 1]) if edge else rng.randrange(10**9)
    if kind is Kind.TEXT:
        return "".join(chr(rng.randrange(32, 0x2FF)) for _ in range(rng.randrange(40)))
    if kind is Kind.SHORT_BYTES:
        return rng.randbytes(rng.choice([0, 31, 32, 32, 32, 33, 63, 64, 64, 64]))
    if kind is Kind.IDS:
        return tuple(random_field(Kind.ID, rng) for _ in range(rng.randrange(5)))
    if kind is Kind.CONTACTS:
        return tuple(Contact(rng.getrandbits(256),
                             (f"127.7.{rng.randrange(256)}.{rng.randrange(256)}",
                              rng.randrange(1, 65536)))
                     for _ in range(rng.randrange(4)))
    raise AssertionError(f"no generator for {kind}")


def random_request(rng: random.Random, cls: type[Message] | None = None) -> Message:
    """A well-formed request of ``cls`` (a random registered type by default), random fields.
    Classes that check their fields' shapes refuse some draws; draw again (bounded)."""
    cls = cls or rng.choice(REQUEST_TYPES)
    for _ in range(1000):
        try:
            return cls(*(random_field(kind, rng) for _, kind in cls.FIELDS))
        except ValueError:
            continue
    raise AssertionError(f"could not draw a valid {cls.__name__}")


def raw_request(rng: random.Random) -> bytes:
    """A request whose fields have the right kinds but maybe not the shapes its class requires:
    CBOR written directly, so the decoder, not the generator, has to refuse it."""
    cls = rng.choice(REQUEST_TYPES)
    fields = [plain_field(kind, random_field(kind, rng)) for _, kind in cls.FIELDS]
    sender = rng.choice([None, rng.randbytes(32)])
    return bytes(cbor2.dumps([1, cls.CODE, rng.getrandbits(64), sender, fields, None,
                              bytes(rng.choice([0, 48, 600]))]))


def random_datagram(rng: random.Random) -> bytes:
    """A valid request (with or without token, padded or not), a mutation of one, or noise."""
    envelope = Envelope(rng.getrandbits(64), rng.choice([None, rng.getrandbits(256)]),
                        random_request(rng),
                        rng.choice([None, None, rng.randbytes(16)]),
                        rng.choice([0, 48, 600]))
    try:
        data = CODEC.encode(envelope) if rng.random() < 0.7 else raw_request(rng)
    except InvalidArgument:  # a generated message too large for a datagram: use noise instead
        data = rng.randbytes(rng.randrange(64))
    roll = rng.random()
    if roll < 0.5:
        return data
    if roll < 0.85:
        mutated = bytearray(data)
        for _ in range(rng.randrange(1, 6)):
            op = rng.random()
            position = rng.randrange(len(mutated) + 1)
            if op < 0.5 and mutated:
                mutated[position % len(mutated)] = rng.randrange(256)
            elif op < 0.75:
                mutated[position:position] = rng.randbytes(rng.randrange(1, 9))
            else:
                del mutated[position:position + rng.randrange(1, 9)]
        return bytes(mutated)
    return rng.randbytes(rng.randrange(200))


def loaded_node(seed: int = 1) -> Node:
    """A node with data of every kind and a routing table, ready to be fuzzed."""
    node = Node(config=CONFIG, rng=random.Random(seed), store=MemoryStore(CONFIG))
    rng = random.Random(seed + 1)
    for _ in range(100):
        node.table.seen(Contact(rng.getrandbits(256), (f"127.8.{rng.randrange(256)}.1", 4000)))
    for i in range(20):
        value = b"value %d" % i
        node.store.put_value(key_for(value), value, Meta(expires=1e12))
        node.store.add_entry(i, i * 7, Meta(expires=1e12))
    return node


def snapshot(node: Node) -> dict[str, Any]:
    return dict(node.store.stats())


def check_invariants(node: Node, now: float) -> None:
    """What no input may break: no internal error, a sound routing table, only values that hash
    to their keys, and a node that still answers."""
    assert node.stats["internal_errors"] == 0
    node.table.check_invariants()
    store = node.store
    if isinstance(store, MemoryStore):
        for key, value, _ in store.values():
            assert key_for(value) == key
    node.datagrams_to_send()
    probe = ("127.9.9.9", 9)
    node.datagram_received(CODEC.encode(Envelope(1, None, Ping(), None, 48)), probe, now)
    answers = [CODEC.decode(d).message for d, a in node.datagrams_to_send() if a == probe]
    assert Pong() in answers


def feed(node: Node, datagrams: list[bytes], rng: random.Random,
         now: float = 0.0, on_each: Callable[[], None] | None = None) -> float:
    """Deliver ``datagrams`` from random sources, running timers as time passes."""
    for data in datagrams:
        now += rng.random() * 0.05
        node.handle_timer(now)
        node.datagram_received(data, rng.choice(SOURCES), now)
        node.datagrams_to_send()
        if on_each is not None:
            on_each()
    return now
