"""Any datagram, to every RPC handler: no exception escapes, nothing invalid is stored, and the
node keeps answering. (The bounded long run is tests/fuzz/run_node_fuzz.py.)"""

from __future__ import annotations

import random

from fuzzing import (
    CODEC,
    REQUEST_TYPES,
    check_invariants,
    feed,
    loaded_node,
    random_datagram,
    random_request,
    snapshot,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from qadom.errors import ProtocolError
from qadom.messages import Envelope


def test_every_request_type_is_generated() -> None:
    rng = random.Random(0)
    seen = {type(random_request(rng)) for _ in range(2000)}
    assert seen == set(REQUEST_TYPES)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 2**32))
def test_random_traffic_breaks_nothing(seed: int) -> None:
    rng = random.Random(seed)
    node = loaded_node(seed)
    now = feed(node, [random_datagram(rng) for _ in range(60)], rng)
    check_invariants(node, now)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_undecodable_bytes_change_nothing(data: bytes) -> None:
    node = loaded_node()
    before = snapshot(node)
    try:
        CODEC.decode(data)
        decodable = True
    except ProtocolError:
        decodable = False
    node.datagram_received(data, ("127.7.0.1", 4000), 0.0)
    if not decodable:
        assert snapshot(node) == before and node.stats["malformed"] == 1
    check_invariants(node, 0.0)


@settings(max_examples=100, deadline=None)
@given(st.integers(0, 2**32))
def test_every_handler_survives_edge_values(seed: int) -> None:
    rng = random.Random(seed)
    node = loaded_node(seed)
    source = ("127.7.0.1", 4000)
    for cls in REQUEST_TYPES:  # every handler, from a proven address, so that each one runs
        envelope = Envelope(rng.getrandbits(64), rng.getrandbits(256), random_request(rng, cls),
                            node.token_for(source))
        node.datagram_received(CODEC.encode(envelope), source, 1.0)
        assert node.datagrams_to_send()  # answered
    check_invariants(node, 1.0)
