"""A node's request ids and token secrets cannot be predicted from what it sends.

Both are drawn from the node's generator. If that were Python's Mersenne Twister, anyone could
rebuild its state from 624 words of output, which 312 request ids reveal (a verification ping is
sent to whoever asks), then predict every later id and recompute the token secret, and so forge the
token that proves an address receives our datagrams (docs/PROTOCOL.md, "Amplification"). The
default generator is the operating system's; only a generator the caller seeds, for a repeatable
run, is predictable.
"""

from __future__ import annotations

import random

from qadom import Node, Peer
from qadom.codec import Codec

from helpers import FAST


def _untemper(y: int) -> int:
    """The Mersenne Twister state word behind one 32-bit output."""
    y ^= y >> 18
    y ^= (y << 15) & 0xEFC60000
    t = y
    for _ in range(5):
        t = y ^ ((t << 7) & 0x9D2C5680)
    y = t & 0xFFFFFFFF
    t = y
    for _ in range(3):
        t = y ^ (t >> 11)
    return t & 0xFFFFFFFF


def _request_ids(node: Node, count: int) -> list[int]:
    codec = Codec(node.config)
    ids = []
    for i in range(count):
        node.ping(("127.0.0.1", 1000 + i), 0.0)
        (data, _), = node.datagrams_to_send()
        ids.append(codec.decode(data).rpc_id)
    return ids


def _predicts_next(node: Node) -> bool:
    """Whether 312 request ids of ``node`` predict its next one, as an attacker would."""
    words = []
    for rpc_id in _request_ids(node, 312):  # getrandbits(64): the low word is drawn first
        words += [_untemper(rpc_id & 0xFFFFFFFF), _untemper(rpc_id >> 32)]
    clone = random.Random()
    clone.setstate((3, (*words, 624), None))
    return clone.getrandbits(64) == _request_ids(node, 1)[0]


def test_a_seeded_generator_is_predictable_which_is_why_it_is_not_the_default() -> None:
    assert _predicts_next(Node(config=FAST, rng=random.Random(7)))


def test_a_default_node_request_ids_cannot_be_predicted_from_earlier_ones() -> None:
    assert not _predicts_next(Node(config=FAST))
    assert isinstance(Node(config=FAST).rng, random.SystemRandom)


async def test_a_default_peer_draws_from_the_operating_system() -> None:
    async with Peer(config=FAST) as peer:
        assert isinstance(peer.node.rng, random.SystemRandom)
        assert not _predicts_next(peer.node)
