"""The simulator's churn schedule, clock and wire parameters: what a measured lookup meets and
what the virtual clock allows."""

from __future__ import annotations

import pytest

from qadom.errors import InvalidArgument
from qadom.sim import SimNetwork


def test_churn_never_takes_away_the_origin_of_a_measured_lookup() -> None:
    # Two thirds of the network leaves during the lookups: the schedule draws its victims among
    # the live nodes, but never the node whose lookup is being measured, so every report is of a
    # lookup that ran to its end (not of an origin that vanished halfway and waited out the
    # operation's deadline).
    net = SimNetwork(3)
    net.build(60)
    net.churn(leave=40, duration=20.0)
    reports = net.lookups(40, gap=0.2)
    assert len(reports) == 40
    assert all(r.ok for r in reports)
    assert max(r.latency for r in reports) < net.config.operation_timeout
    assert all(r.rounds >= 1 for r in reports)
    # origins did leave, between lookups: the schedule still reaches them
    assert sum(r.origin in net.down for r in reports) >= 3
    assert [kind for _, kind, _ in net.churn_log].count("leave") == 40


def test_run_for_cannot_move_the_clock_back() -> None:
    net = SimNetwork(5)
    net.build(10)
    net.run_for(3.0)
    with pytest.raises(InvalidArgument):
        net.run_for(-1.0)
    assert net.now == 3.0


@pytest.mark.parametrize("kwargs", [
    {"latency": (-0.01, 0.02)},
    {"latency": (0.05, 0.01)},
    {"reorder_delay": -0.1},
])
def test_negative_or_inverted_delays_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(InvalidArgument):
        SimNetwork(6, **kwargs)  # type: ignore[arg-type]


def test_a_node_whose_churn_join_fails_leaves_again_and_one_that_joins_stays() -> None:
    net = SimNetwork(5)
    net.build(20)
    net.loss = 1.0  # every datagram lost: the joins' bootstrap pings go unanswered
    net.churn(join=2, duration=1.0)
    net.run_for(60.0)
    assert len(net.joins) == 2 and all(c.done and c.exception() for c in net.joins)
    assert len(net.live_nodes()) == 20  # they left: no node stays on knowing nobody
    net.loss = 0.0
    net.churn(join=1, duration=1.0)
    net.run_for(60.0)
    assert net.joins[-1].exception() is None and len(net.live_nodes()) == 21


def test_churn_spares_the_nodes_kept() -> None:
    net = SimNetwork(6)
    nodes = net.build(12)
    kept = nodes[:4]
    net.churn(leave=8, duration=10.0, keep=kept)
    net.run_for(20.0)
    assert net.live_nodes() == sorted(kept, key=lambda n: n.id)
    net.churn(leave=1, duration=1.0, keep=kept)  # only kept nodes are live: none leaves
    net.run_for(5.0)
    assert len(net.live_nodes()) == 4
