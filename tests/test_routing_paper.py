"""Routing-table rules of the paper and their edges: replacement caches under the network diversity
limits, the order of promoted replacements, one id per address, has_room_for against seen, and
ping-before-evict without a replacement cache."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.errors import InvalidArgument, InvalidType
from qadom.ids import ID_SPACE
from qadom.messages import Envelope, Message, Ping, Pong
from qadom.node import Node
from qadom.routing import RoutingTable

H = ID_SPACE // 2  # the far half from id 0
Q = H // 2


def drain(node: Node, codec: Codec) -> list[tuple[Envelope, Address]]:
    return [(codec.decode(data), address) for data, address in node.datagrams_to_send()]


def answer(node: Node, codec: Codec, request: Envelope, sender: int, address: Address,
           now: float, message: Message | None = None) -> None:
    node.datagram_received(codec.encode(Envelope(request.rpc_id, sender, message or Pong())),
                           address, now)


# ------------------------------------------------------------------ retransmission back-off

# ------------------------------------------------------------------ replacements and networks

def far_bucket_with_replacements(attackers: int) -> RoutingTable:
    table = RoutingTable(0, k=4, replacement_cache_size=20, max_bucket_per_prefix=2,
                         max_table_per_prefix=10)
    for i in range(1, 5):
        table.seen(Contact(i, (f"9.{i}.0.1", 1)))  # our neighbourhood
    for i in range(4):
        table.seen(Contact(H + (1 << 200) + i, (f"20.{i}.0.1", 1)))  # honest far contacts
    for i in range(3):
        table.seen(Contact(H + (1 << 201) + i, (f"30.{i}.0.1", 1)))  # honest replacements
    for i in range(attackers):  # one /24
        table.seen(Contact(H + (1 << 202) + i, (f"66.6.6.{i + 1}", 1)))
    table.check_invariants()
    return table


def test_one_network_cannot_flush_a_replacement_cache() -> None:
    """Twenty newcomers from one /24 take at most its share (2) of the far bucket's places, its
    newest two: the honest replacements keep waiting and take the slots honest contacts free."""
    table = far_bucket_with_replacements(20)
    bucket = table.bucket_for(H)
    queued = [c.address[0] for c in bucket.replacements.values()]
    assert queued == ["30.0.0.1", "30.1.0.1", "30.2.0.1", "66.6.6.19", "66.6.6.20"]
    for i in range(3):
        assert table.failed(H + (1 << 200) + i)  # removed at once: a replacement waits
    table.check_invariants()
    hosts = sorted(c.address[0] for c in bucket.contacts.values())
    assert len(hosts) == 4 and sum(h.startswith("30.") for h in hosts) >= 1
    assert sum(h.startswith("66.") for h in hosts) <= 2


def test_a_newcomer_at_its_networks_share_replaces_that_networks_oldest_replacement() -> None:
    table = far_bucket_with_replacements(0)
    bucket = table.bucket_for(H)
    table.seen(Contact(H + 50, ("20.0.0.9", 1)))  # 20.0.0.0/24 holds one contact: one place left
    assert list(bucket.replacements)[-1] == H + 50
    table.seen(Contact(H + 51, ("20.0.0.10", 1)))  # takes H + 50's place, not the oldest's
    assert [c.address[0] for c in bucket.replacements.values()] == [
        "30.0.0.1", "30.1.0.1", "30.2.0.1", "20.0.0.10"]
    table.check_invariants()


def test_replacements_promoted_after_a_split_keep_the_order_they_were_seen_in() -> None:
    table = RoutingTable(0, k=4, replacement_cache_size=4)
    for i in range(1, 5):
        table.seen(Contact(i, ("10.0.0.2", i)))
    for i in range(4):
        table.seen(Contact(H + Q + i, ("10.0.0.1", 1000 + i)))  # the far bucket, upper quarter
    newer = [H + 100, H + 101, H + 102]  # lower quarter, seen in this order
    for node_id in newer:
        table.seen(Contact(node_id, ("10.0.0.3", node_id & 0xFFFF)))
    for i in range(1, 5):
        table.remove(i)
    table.seen(Contact(H + 200, ("10.0.0.3", 200)))  # splits the far bucket: it is now close
    table.check_invariants()
    assert list(table.bucket_for(H).contacts) == [*newer, H + 200]


# ------------------------------------------------------------------ has_room_for is exact

@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), bits=st.sampled_from([8, 12, 256]),
       k=st.sampled_from([1, 2, 3, 4, 8]), cache=st.sampled_from([0, 1, 3]),
       limits=st.sampled_from([(0, 0), (2, 10), (1, 3), (0, 2)]),
       split=st.sampled_from([1, 2, 3]))
def test_has_room_for_says_exactly_whether_seen_would_add(seed: int, bits: int, k: int,
                                                           cache: int,
                                                           limits: tuple[int, int],
                                                           split: int) -> None:
    rng = random.Random(seed)
    own = rng.getrandbits(bits)
    table = RoutingTable(own, k, cache, 2, 0.0, max_bucket_per_prefix=limits[0],
                         max_table_per_prefix=limits[1], split_bits=split)
    hosts = ["127.0.0.1"] + [f"8.8.{i}.{j}" for i in range(3) for j in range(3)]
    for _ in range(150):
        node_id, host = rng.getrandbits(bits), rng.choice(hosts)
        if rng.random() < 0.2 and len(table):
            table.failed(rng.choice(list(table)).id)
            continue
        new = node_id != own and node_id not in table
        room = table.has_room_for(node_id, host)
        assert table.has_room_for(node_id) or not room  # no host: no limit on the newcomer
        asked = table.seen(Contact(node_id, (host, 1)))
        assert room == (new and node_id in table)
        if asked is not None and rng.random() < 0.5:
            table.seen(asked)
    table.check_invariants()


def test_a_close_requester_is_verified_when_its_bucket_would_split() -> None:
    """Two contacts of one /24 fill the only bucket (k = 2); a requester of that /24 close to us
    would split it into an empty half: it is pinged, and its answer adds it."""
    config = Config(k=2)
    node, codec = Node(config=config, node_id=0, now=0.0), Codec(config)
    node.table.seen(Contact(H + 1, ("8.8.8.1", 1)))
    node.table.seen(Contact(H + 2, ("8.8.8.2", 1)))
    address: Address = ("8.8.8.3", 1)
    assert node.table.has_room_for(5, address[0])
    node.datagram_received(codec.encode(Envelope(1, 5, Ping(), node.token_for(address))),
                           address, 0.0)
    pings = [e for e, a in drain(node, codec) if type(e.message) is Ping and a == address]
    assert len(pings) == 1 and node.stats["verify_skipped"] == 0
    answer(node, codec, pings[0], 5, address, 0.0)
    assert node.table.get(5) == Contact(5, address)


# ------------------------------------------------------------------ no replacement cache

def test_without_a_replacement_cache_ping_before_evict_still_swaps_a_dead_contact() -> None:
    """replacement_cache_size 0: the newcomer waits only for the ping it sets off; it takes the
    pinged contact's slot if that fails, and is dropped if it answers (paper section 2.2)."""
    table = RoutingTable(0, k=2, replacement_cache_size=0)
    for i in (1, 2, H + 1, H + 2):
        table.seen(Contact(i, (f"10.0.0.{i % 250}", 1)))
    oldest = table.seen(Contact(H + 3, ("10.0.0.9", 1)))
    assert oldest is not None and oldest.id == H + 1
    table.check_invariants()
    assert table.failed(oldest.id)
    assert list(table.bucket_for(H).contacts) == [H + 2, H + 3]
    oldest = table.seen(Contact(H + 4, ("10.0.0.10", 1)))
    assert oldest is not None and oldest.id == H + 2
    table.seen(oldest)  # it answered: it stays, the newcomer is gone
    bucket = table.bucket_for(H)
    assert list(bucket.contacts) == [H + 3, H + 2] and not bucket.replacements
    table.check_invariants()


# ------------------------------------------------------------------ accelerated lookups (4.2)

def table_with_far_quarter_full(split_bits: int) -> RoutingTable:
    """Own id 0, k = 2: two contacts next to us (so the relaxed rule of section 2.4 does not
    apply farther out), and two in the far half's upper quarter."""
    table = RoutingTable(0, k=2, replacement_cache_size=2, split_bits=split_bits)
    for node_id in (1, 2, H + Q + 1, H + Q + 2):
        assert table.seen(Contact(node_id, ("127.0.0.1", node_id % 60000 + 1))) is None
    return table


def test_a_full_far_bucket_splits_until_its_depth_is_a_multiple_of_split_bits() -> None:
    """With b = 2 the far half (depth 1) splits when full, so a newcomer in its other quarter
    is added; with b = 1 (section 2.4 alone) it waits as a replacement and the least recently
    seen contact is to be pinged."""
    accelerated = table_with_far_quarter_full(2)
    newcomer = Contact(H + 5, ("127.0.0.1", 9))
    assert accelerated.has_room_for(newcomer.id)
    assert accelerated.seen(newcomer) is None and newcomer.id in accelerated
    assert [(b.lo, b.hi) for b in accelerated.buckets][-2:] == [(H, H + Q), (H + Q, ID_SPACE)]
    accelerated.check_invariants()

    plain = table_with_far_quarter_full(1)
    assert not plain.has_room_for(newcomer.id)
    assert plain.seen(newcomer) == plain.get(H + Q + 1)
    assert newcomer.id not in plain and newcomer.id in plain.bucket_for(newcomer.id).replacements
    plain.check_invariants()


def test_a_bucket_at_a_depth_that_is_a_multiple_of_split_bits_does_not_split() -> None:
    """With b = 2 the quarter next to ours (depth 2) keeps k contacts, as in section 2.4: a
    newcomer there waits as a replacement."""
    table = RoutingTable(0, k=2, replacement_cache_size=2, split_bits=2)
    for node_id in (1, 2, Q + Q // 2 + 1, Q + Q // 2 + 2):  # the quarter [Q, H), its upper half
        assert table.seen(Contact(node_id, ("127.0.0.1", node_id % 60000 + 1))) is None
    newcomer = Contact(Q + 7, ("127.0.0.1", 9))
    assert table.bucket_for(newcomer.id).depth == 2
    assert not table.has_room_for(newcomer.id)
    assert table.seen(newcomer) is not None and newcomer.id not in table
    table.check_invariants()


def test_split_bits_is_checked() -> None:
    for bad in (0, 6, -1):
        with pytest.raises(InvalidArgument):
            Config(split_bits=bad).validate()
    with pytest.raises(InvalidType):
        Config(split_bits=2.0).validate()  # type: ignore[arg-type]
