"""The k-bucket routing table: invariants, ping-before-evict, replacements, splitting."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qadom import Config
from qadom.contact import Contact
from qadom.ids import ID_SPACE
from qadom.routing import RoutingTable
from qadom.sim import SimNetwork


def contact(node_id: int, port: int = 1) -> Contact:
    return Contact(node_id, ("127.0.0.1", port))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, ID_SPACE - 1),
       st.lists(st.tuples(st.sampled_from(["seen", "failed", "remove"]),
                          st.integers(0, ID_SPACE - 1)), max_size=400),
       st.integers(1, 8))
def test_invariants_under_random_operations(own: int, ops: list[tuple[str, int]],
                                            k: int) -> None:
    table = RoutingTable(own, k=k, replacement_cache_size=3, stale_failures=2)
    known: list[int] = []
    for op, node_id in ops:
        if op != "seen" and known:
            node_id = known[node_id % len(known)]
        if op == "seen":
            table.seen(contact(node_id))
            known.append(node_id)
        elif op == "failed":
            table.failed(node_id)
        else:
            table.remove(node_id)
        table.check_invariants()
    assert own not in table


def test_contacts_are_kept_least_recently_seen_first() -> None:
    table = RoutingTable(0, k=20)
    for i in range(1, 6):
        table.seen(contact(ID_SPACE - i))
    table.seen(contact(ID_SPACE - 1))  # seen again: moves to the end
    order = [c.id for c in table.bucket_for(ID_SPACE - 1).contacts.values()]
    assert order[-1] == ID_SPACE - 1 and order[0] == ID_SPACE - 2


def test_full_far_bucket_pings_oldest_and_keeps_it_if_alive() -> None:
    own = 0
    table = RoutingTable(own, k=4, replacement_cache_size=4)
    far = [ID_SPACE - 1 - i for i in range(4)]  # all in the top half: never split (not ours)
    for node_id in far:
        assert table.seen(contact(node_id)) is None
    # Fill our own half so relaxed splitting cannot apply to the far bucket.
    for node_id in range(1, 5):
        table.seen(contact(node_id))
    newcomer = contact(ID_SPACE - 100)
    to_ping = table.seen(newcomer)
    assert to_ping is not None and to_ping.id == far[0]  # least recently seen
    assert newcomer.id not in table
    assert newcomer.id in table.bucket_for(newcomer.id).replacements
    # A second newcomer while the ping is outstanding asks for no second ping.
    assert table.seen(contact(ID_SPACE - 101)) is None
    # The old contact answers: it stays (moved to the end), the newcomers wait.
    table.seen(to_ping)
    bucket = table.bucket_for(far[0])
    assert list(bucket.contacts)[-1] == far[0] and newcomer.id not in table
    table.check_invariants()


def test_full_far_bucket_evicts_oldest_if_dead() -> None:
    table = RoutingTable(0, k=4, replacement_cache_size=4)
    for node_id in range(1, 5):
        table.seen(contact(node_id))
    far = [ID_SPACE - 1 - i for i in range(4)]
    for node_id in far:
        table.seen(contact(node_id))
    newcomer = contact(ID_SPACE - 100)
    to_ping = table.seen(newcomer)
    assert to_ping is not None
    assert table.failed(to_ping.id) is True  # a replacement waits, so one failure evicts
    assert to_ping.id not in table and newcomer.id in table
    table.check_invariants()


def test_failures_without_replacement_evict_after_stale_limit() -> None:
    table = RoutingTable(0, k=4, stale_failures=3)
    table.seen(contact(7))
    assert table.failed(7) is False and table.failed(7) is False
    assert 7 in table
    assert table.failed(7) is True and 7 not in table


def test_answer_resets_failure_count() -> None:
    table = RoutingTable(0, k=4, stale_failures=2)
    table.seen(contact(7))
    table.failed(7)
    table.seen(contact(7))
    assert table.failed(7) is False and 7 in table


def test_known_id_at_new_address_is_ignored() -> None:
    table = RoutingTable(0, k=4)
    table.seen(contact(7, port=1))
    table.seen(contact(7, port=2))
    got = table.get(7)
    assert got is not None and got.address == ("127.0.0.1", 1)


def test_table_knows_its_k_closest_exactly() -> None:
    """Relaxed splitting (section 2.4): all of our k nearest neighbours are kept."""
    rng = random.Random(5)
    own = rng.getrandbits(256)
    others = [rng.getrandbits(256) for _ in range(3000)]
    # Many ids share a long prefix with us, to crowd the buckets next to ours.
    others += [own ^ rng.getrandbits(200) for _ in range(300)]
    table = RoutingTable(own, k=20)
    for node_id in others:
        table.seen(contact(node_id))
    table.check_invariants()
    expected = sorted(others, key=lambda i: i ^ own)[:20]
    assert [c.id for c in table.closest(own, 20)] == expected


def test_closest_orders_by_xor_and_excludes() -> None:
    table = RoutingTable(0, k=20)
    for node_id in (1, 2, 3, 8, 9):
        table.seen(contact(node_id))
    assert [c.id for c in table.closest(8, 3)] == [8, 9, 1]
    assert [c.id for c in table.closest(8, 3, exclude=8)] == [9, 1, 2]


def test_stale_buckets_and_touch() -> None:
    table = RoutingTable(0, k=2, now=0.0)
    for node_id in (1, 2, 3, ID_SPACE - 1):
        table.seen(contact(node_id))
    assert len(table.buckets) > 1
    assert table.stale_buckets(3600.0, 3600.0) == table.buckets
    table.touch(ID_SPACE - 1, 3000.0)
    stale = table.stale_buckets(3600.0, 3600.0)
    assert table.bucket_for(ID_SPACE - 1) not in stale and len(stale) == len(table.buckets) - 1


@settings(max_examples=100, deadline=None)
@given(st.integers(0, ID_SPACE - 1), st.lists(st.integers(0, ID_SPACE - 1), max_size=300),
       st.lists(st.integers(0, ID_SPACE - 1), min_size=1, max_size=20))
def test_nearest_is_the_closest_contact(own: int, ids: list[int], targets: list[int]) -> None:
    table = RoutingTable(own, 20, 20, 3, 0.0)
    for node_id in ids:
        table.seen(Contact(node_id, ("127.0.0.1", 1 + node_id % 60000)))
    for target in targets:
        found = table.closest(target, 1)
        assert table.nearest(target) == (found[0] if found else None)


# ---------------------------------------------------------------- network diversity (eclipse)

NETWORKS = ["1.2.3.", "1.2.4.", "5.6.7.", "2a00:1450:4001:811::", "10.0.0.", "127.0.0."]


def on_network(node_id: int, network: str, host: int) -> Contact:
    return Contact(node_id, (f"{network}{host}", 4000))


@settings(max_examples=60, deadline=None)
@given(st.integers(0, ID_SPACE - 1),
       st.lists(st.tuples(st.sampled_from(["seen", "failed", "remove"]),
                          st.integers(0, ID_SPACE - 1), st.sampled_from(NETWORKS),
                          st.integers(1, 250)), max_size=300),
       st.integers(1, 8), st.integers(0, 3), st.integers(0, 6))
def test_diversity_limits_hold_under_random_operations(
        own: int, ops: list[tuple[str, int, str, int]], k: int, per_bucket: int,
        per_table: int) -> None:
    table = RoutingTable(own, k=k, replacement_cache_size=3, stale_failures=2,
                         max_bucket_per_prefix=per_bucket, max_table_per_prefix=per_table)
    known: list[int] = []
    for op, node_id, network, host in ops:
        if op != "seen" and known:
            node_id = known[node_id % len(known)]
        if op == "seen":
            asked = table.seen(on_network(node_id, network, host))
            if asked is not None and host % 2:  # the oldest did not answer its ping
                table.failed(asked.id)
            known.append(node_id)
        elif op == "failed":
            table.failed(node_id)
        else:
            table.remove(node_id)
        table.check_invariants()  # the limits and the per-network counts included


def test_one_public_network_gets_two_contacts_per_bucket_and_ten_in_all() -> None:
    rng = random.Random(7)
    own = rng.getrandbits(256)
    table = RoutingTable(own, k=20, max_bucket_per_prefix=2, max_table_per_prefix=10)
    # An attacker with 500 ids, all near our own id (to eclipse us), on one /24.
    for i in range(500):
        table.seen(on_network(own ^ rng.getrandbits(200), "1.2.3.", i % 250 + 1))
    assert len(table) <= 10
    for bucket in table.buckets:
        assert len(bucket.contacts) <= 2
    assert table.prefix_refused >= 490
    # Honest peers on distinct networks still get in, right where the attacker aimed.
    refused = table.prefix_refused
    honest = [on_network(own ^ rng.getrandbits(200), f"9.{i}.1.", 1) for i in range(40)]
    for peer in honest:
        table.seen(peer)
    assert table.prefix_refused == refused  # none refused for its network
    kept = sum(1 for peer in honest if peer.id in table)
    assert kept >= 30 and len(table) - kept <= 10  # the attacker holds ten slots at most
    table.check_invariants()


def test_ipv6_networks_are_limited_by_their_64() -> None:
    table = RoutingTable(0, k=20, max_bucket_per_prefix=2, max_table_per_prefix=3)
    same = [Contact(ID_SPACE - 1 - i, (f"2a00:1450:4001:811::{i + 1:x}", 1)) for i in range(5)]
    other = Contact(ID_SPACE - 100, ("2a00:1450:4001:812::1", 1))  # another /64
    for peer in [*same, other]:
        table.seen(peer)
    assert [peer.id in table for peer in same] == [True, True, False, False, False]
    assert other.id in table


def test_loopback_and_private_networks_are_not_limited() -> None:
    table = RoutingTable(0, k=20, max_bucket_per_prefix=2, max_table_per_prefix=10)
    for i in range(15):
        table.seen(on_network(ID_SPACE - 1 - i, "127.0.0.", i + 1))
        table.seen(on_network(ID_SPACE // 2 - 1 - i, "192.168.1.", i + 1))
    assert len(table) == 30 and table.prefix_refused == 0


def test_a_replacement_over_the_limit_is_not_promoted() -> None:
    table = RoutingTable(0, k=2, replacement_cache_size=4, max_bucket_per_prefix=1)
    first, second = on_network(ID_SPACE - 1, "1.2.3.", 1), on_network(ID_SPACE - 2, "5.6.7.", 1)
    for peer in (first, second):
        table.seen(peer)
    # Fill our own half so the far bucket may not split.
    table.seen(on_network(1, "8.8.1.", 1))
    table.seen(on_network(2, "8.8.2.", 1))
    queued_ok = on_network(ID_SPACE - 3, "9.9.9.", 1)
    table.seen(queued_ok)  # bucket full: queued as a replacement
    assert queued_ok.id not in table
    table.remove(first.id)  # the newest allowed replacement takes the slot
    assert queued_ok.id in table
    table.remove(queued_ok.id)
    # 5.6.7.x holds the bucket's one slot for its network: a second one from there is refused
    # outright, as a contact or as a replacement.
    assert table.seen(on_network(ID_SPACE - 4, "5.6.7.", 2)) is None
    assert ID_SPACE - 4 not in table and table.prefix_refused == 1
    assert table.has_room_for(ID_SPACE - 5) and not table.has_room_for(ID_SPACE - 5, "5.6.7.9")
    table.check_invariants()


def test_a_split_fills_the_room_it_makes_from_the_replacement_cache() -> None:
    """A full bucket that does not cover our id holds its newcomers as replacements; when it is
    split later (relaxed splitting), a half with room takes them in at once (section 4.1: the
    replacement cache is there to fill free slots), instead of running short of contacts while
    verified ones wait."""
    half = 1 << 255
    table = RoutingTable(0, k=2, replacement_cache_size=2)
    a, b, c, d = (contact(half + i) for i in (1, 2, 3, 0))
    table.seen(a)
    table.seen(b)
    to_ping = table.seen(c)  # the top half is full and not ours: c waits
    assert to_ping == a and c.id not in table
    table.seen(a)  # a answered the ping: it stays, c still waits
    # d is closer to us than a and b: the top half splits down to [half, half + 2) for it,
    # which leaves [half + 2, half + 4) with b and a free slot.
    table.seen(d)
    table.check_invariants()
    assert d.id in table and b.id in table
    assert c.id in table
    assert not table.bucket_for(c.id).replacements


def test_no_bucket_with_room_keeps_contacts_waiting() -> None:
    """Filling a table through seen() from a whole network (the simulator's fast build) never
    leaves verified contacts in a replacement cache while their bucket has room."""
    net = SimNetwork(seed=6, config=Config(k=8))
    for node in net.build(300):
        for bucket in node.table.buckets:
            assert len(bucket) == node.config.k or not bucket.replacements
