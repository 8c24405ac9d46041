"""The simulator's churn joins and its lookup measurements: a node whose churn join fails leaves
again, but not while :meth:`SimNetwork.lookup` is measuring a lookup from it."""

from __future__ import annotations

import random
from itertools import pairwise

import pytest

from qadom import Config, OperationTimeout
from qadom.call import Call
from qadom.contact import Contact
from qadom.events import LookupFinished
from qadom.node import _REFRESH_RANGES, Node
from qadom.sim import SimNetwork

from helpers import clustered_network

CONFIG = Config(k=8, replacement_cache_size=8, maintenance_interval=300.0)


def test_a_failed_churn_join_does_not_take_the_measured_origin_away_halfway() -> None:
    net = SimNetwork(3, trace=True)
    nodes = net.build(20)
    net.loss = 1.0  # the join's first ping is lost
    net.churn(join=1, duration=0.0)
    while not net.joins:
        assert net.step()
    joiner = net.nodes[net.churn_log[-1][2]]
    assert net.trace is not None
    [(_, _, _, via, _)] = [e for e in net.trace if e[1] == "drop" and e[2] == joiner.address]
    net.loss = 0.0
    net.remove(net.nodes[via])  # and its resend too: the join fails within seconds
    other = next(n for n in nodes if n.address != via)
    net.run_call(net.call(joiner, joiner.ping, other.address))  # a contact of its own
    assert not net.joins[0].done
    net.latency = (0.2, 0.2)  # a lookup long enough for the join to fail while it runs
    report = net.lookup(joiner, 12345)
    join = net.joins[0]
    assert join.done and join.exception() is not None
    # The lookup ran to its end from a live origin; its origin left once it was over.
    assert report.ok and report.rounds > 0, report
    assert joiner not in net.live_nodes()
    assert net.churn_log[-1][1:] == ("leave", joiner.address)


def cut_off_after_the_pong(until_lookups: int, seed: int = 3,
                           ) -> tuple[SimNetwork, Node, Call[int], list[LookupFinished]]:
    """A newcomer joining a network of 20 through one node; right after that node's PONG, every
    datagram to or from the newcomer is lost until ``until_lookups`` lookups of its own id have
    ended (or the join has)."""
    net = SimNetwork(seed, config=CONFIG)
    nodes = net.build(20)
    newcomer = net.add_node()
    own: list[LookupFinished] = []
    newcomer.add_listener(
        lambda e: own.append(e) if isinstance(e, LookupFinished) and e.target == newcomer.id
        else None)
    joining = net.call(newcomer, newcomer.bootstrap, [net.address_of(nodes[0])])
    while len(newcomer.table) == 0:
        assert net.step()
    net.partition(nodes)
    while len(own) < until_lookups and not joining.done:
        assert net.step()
    net.heal()
    return net, newcomer, joining, own


def test_a_join_whose_own_lookup_nobody_answered_fails_rather_than_leave_a_node_cut_off() -> None:
    net, _, joining, own = cut_off_after_the_pong(3)
    net.run_for(60.0)
    assert joining.done
    error = joining.exception()
    assert isinstance(error, OperationTimeout), joining
    assert "lookup of our own id" in str(error)
    assert len(own) == 3 and all(e.replies == 0 for e in own)
    # Spaced out, so as not to meet the same burst of loss: rpc_timeout_max, then twice that.
    gaps = [later.now - later.duration - earlier.now for earlier, later in pairwise(own)]
    wait = CONFIG.rpc_timeout_max
    assert gaps == [pytest.approx(wait), pytest.approx(2 * wait)]
    # Before, the join resolved with the bootstrap node alone in the table: once that node left,
    # the newcomer was cut off for good while it counted as joined.


def test_a_join_looks_up_its_own_id_again_when_nobody_answered_the_first_lookup() -> None:
    net, newcomer, joining, own = cut_off_after_the_pong(1)
    assert not joining.done and [e.replies for e in own] == [0]
    contacts = net.run_call(joining)
    assert contacts > 1 and len(newcomer.table) == contacts
    assert own[1].replies > 0


def test_a_join_through_a_neighbour_learns_the_rest_of_the_id_space() -> None:
    """Joining through its nearest node, a newcomer's lookup of its own id meets only its
    neighbourhood; the refresh after it still reaches every subtree farther than its closest
    neighbour, though no bucket of its table covers them yet (section 2.3)."""
    for seed in range(4):
        net = SimNetwork(seed)
        net.build(200)
        new = net.add_node()
        nearest = net.true_closest(new.id, 1, exclude=new.id)[0]
        net.run_call(net.call(new, new.bootstrap, [net.address_of(net._by_id[nearest])]),
                     timeout=120)
        neighbour = min(c.id ^ new.id for c in new.table)
        # Each subtree branching off our path above the neighbour's that holds nodes, half the
        # id space first, has contacts in the table now.
        populated = {(node_id ^ new.id).bit_length() for node_id in net._by_id} - {0}
        branches = [256 - depth for depth in range(256 - neighbour.bit_length())]
        assert 256 in populated and len(set(branches) & populated) >= 5
        for branch in set(branches) & populated:
            assert any((c.id ^ new.id).bit_length() == branch for c in new.table), (
                seed, 256 - branch, len(new.table), len(new.table.buckets))


def test_a_join_among_ids_that_share_a_long_prefix_refreshes_a_bounded_number_of_subtrees() -> None:
    """Ids clustered around the newcomer's (chosen, or an attacker's): the subtrees above its
    k-th closest peer are nearly all empty, and it does not look up each of up to 255."""
    net = SimNetwork(7)
    base = random.Random(1).getrandbits(256) & ~0xFFFF  # 24 ids sharing 240 leading bits
    nodes = [net.add_node(node_id=base | i) for i in range(1, 25)]
    for node in nodes[1:]:
        net.run_call(net.call(node, node.bootstrap, [net.address_of(nodes[0])]), timeout=600)
    newcomer = net.add_node(node_id=base | 0x8000)
    before = newcomer._lookup_seq
    net.run_call(net.call(newcomer, newcomer.bootstrap, [net.address_of(nodes[0])]),
                 timeout=600)
    lookups = newcomer._lookup_seq - before
    bound = _REFRESH_RANGES << (newcomer.config.split_bits - 1)  # its join's ranges at most
    assert lookups <= bound + 8, (lookups, len(newcomer.table.buckets))


def test_a_node_bootstrapping_again_among_clustered_ids_refreshes_a_bounded_number_of_ranges(
        ) -> None:
    """A node whose table has split along its id's path (ids clustered around its own) and that
    bootstraps again: beside the subtrees, its table holds a bucket per level that does not cover
    its id, and it does not look up each of them."""
    net, nodes = clustered_network(20)
    again = nodes[5]
    farther = [b for b in again.table.buckets if not b.covers(again.id)]
    assert len(farther) > 200  # the case at stake: far more than the bound
    before = again._lookup_seq
    net.run_call(net.call(again, again.bootstrap, [net.address_of(nodes[0])]), timeout=600)
    lookups = again._lookup_seq - before
    bound = _REFRESH_RANGES << (again.config.split_bits - 1)
    assert lookups <= 1 + bound, lookups  # its own id, then the farthest ranges
    ranges = again._to_refresh_after_join(list(again.table))
    # The farthest: the half of the id space across from ours, cut into the subtrees its buckets
    # split into (down to depth split_bits), the one whose leading bits all differ from ours.
    shift = 256 - again.config.split_bits
    farthest = ((again.id >> shift) ^ ((1 << again.config.split_bits) - 1)) << shift
    assert len(ranges) == bound and ranges[0] == (farthest, farthest + (1 << shift))
    nearest = [(lo ^ again.id) & -(hi - lo) for lo, hi in ranges]
    assert nearest == sorted(nearest, reverse=True)  # the farthest first


@pytest.mark.parametrize("bits", [1, 2, 5])
def test_a_join_refreshes_every_piece_of_the_subtrees_it_refreshes(bits: int) -> None:
    """With split_bits b a subtree off our id's path is kept in up to 2 ** (b - 1) buckets: a
    join refreshes each of them, for each of the ``_REFRESH_RANGES`` levels it refreshes,
    and the ranges of each level tile its subtree."""
    node = Node(config=Config(split_bits=bits), node_id=0, now=0.0)
    found = [Contact(i, ("127.0.0.1", 4000 + i)) for i in range(1, 21)]  # our neighbourhood
    ranges = node._to_refresh_after_join(found)
    expected = 0
    for depth in range(1, _REFRESH_RANGES + 1):
        lo, hi = 1 << (256 - depth), 1 << (257 - depth)  # the subtree at this depth
        pieces = sorted(r for r in ranges if lo <= r[0] < hi)
        assert len(pieces) == 1 << (-depth % bits)
        assert pieces[0][0] == lo and pieces[-1][1] == hi
        assert all(a[1] == b[0] for a, b in pairwise(pieces))
        expected += len(pieces)
    assert len(ranges) == expected
