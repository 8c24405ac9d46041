"""The simulator's churn schedule, clock and wire parameters: what a measured lookup meets and
what the virtual clock allows."""

from __future__ import annotations

import functools
import math
import random
import re
from collections.abc import Callable

import pytest

from qadom.errors import InvalidArgument, InvalidType
from qadom.node import Node
from qadom.sim import SimNetwork, lognormal_latency

from helpers import bounded_sim


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


@pytest.mark.parametrize(("built", "run"), [
    (True, lambda net: net.run_for(math.inf)),
    (False, lambda net: net.build(3, spread=math.inf)),
    (True, lambda net: net.churn(leave=1, duration=math.nan)),
    (True, lambda net: net.churn(leave=1, duration=math.inf)),
    (True, lambda net: net.churn(leave=1, start=math.nan)),
    (True, lambda net: net.churn(leave=1, start=math.inf)),
    (True, lambda net: net.leave(-1)),
], ids=["run_for-inf", "spread-inf", "churn-duration-nan", "churn-duration-inf",
        "churn-start-nan", "churn-start-inf", "leave-negative"])
def test_times_and_counts_that_would_hang_or_never_fire_are_refused(
        built: bool, run: Callable[[SimNetwork], object]) -> None:
    # run_for(inf) and build(spread=inf) would run the periodic timers forever; a churn event at
    # a NaN or infinite time never fires (NaN also breaks the order of the event heap).
    net = bounded_sim(SimNetwork(7))
    if built:
        net.build(5)
    events = list(net._events)
    with pytest.raises(InvalidArgument):
        run(net)
    assert net._events == events and net.now == 0.0
    assert len(net.live_nodes()) == (5 if built else 0)


@pytest.mark.parametrize(("built", "error", "run"), [
    (True, InvalidType, lambda net: net.churn(join=2.5)),
    (True, InvalidType, lambda net: net.churn(leave=2.0)),
    (True, InvalidType, lambda net: net.leave(1.5)),
    (True, InvalidType, lambda net: net.add_nodes(2.5)),
    (True, InvalidType, lambda net: net.lookups("3")),
    (True, InvalidType, lambda net: net.true_closest(1, 2.5)),
    (False, InvalidType, lambda net: net.build(3.0)),
    (False, InvalidType, lambda net: net.build(3, joins=1.5)),
    (True, InvalidArgument, lambda net: net.add_nodes(-1)),
    (True, InvalidArgument, lambda net: net.lookups(-1)),
    (True, InvalidArgument, lambda net: net.churn(join=-1)),
    (False, InvalidArgument, lambda net: net.build(0)),
], ids=["churn-join-float", "churn-leave-float", "leave-float", "add_nodes-float",
        "lookups-str", "true_closest-float", "build-float", "build-joins-float",
        "add_nodes-negative", "lookups-negative", "churn-join-negative", "build-zero"])
def test_counts_must_be_whole_numbers_and_nothing_happens_otherwise(
        built: bool, error: type[Exception], run: Callable[[SimNetwork], object]) -> None:
    # A count of nodes or lookups is never rounded for the caller; a negative one was a silent
    # no-op for add_nodes() and lookups(), and a float a bare TypeError from deep inside.
    net = bounded_sim(SimNetwork(7))
    if built:
        net.build(5)
    events, stats = list(net._events), net.delivered
    with pytest.raises(error):
        run(net)
    assert net._events == events and net.now == 0.0 and net.delivered == stats
    assert len(net.live_nodes()) == (5 if built else 0)


@pytest.mark.parametrize("args", [(math.nan,), (0.05, math.nan), (0.05, 0.5, math.nan),
                                  (0.05, math.inf), (0.05, 0.5, math.inf)])
def test_a_lognormal_latency_needs_finite_parameters(args: tuple[float, ...]) -> None:
    with pytest.raises(InvalidArgument):
        lognormal_latency(*args)


@pytest.mark.parametrize("latency", [0.05, None, (0.01,), (0.01, 0.02, 0.03), ("0", "1"),
                                     (0.0, math.inf), (True, True)])
def test_a_latency_neither_a_function_nor_a_pair_of_finite_seconds_is_refused(
        latency: object) -> None:
    with pytest.raises(InvalidArgument):
        SimNetwork(8, latency=latency)  # type: ignore[arg-type]
    net = SimNetwork(8)
    with pytest.raises(InvalidArgument):
        net.latency = latency  # type: ignore[assignment]
    assert net.latency == (0.01, 0.05)


@pytest.mark.parametrize("drawn", [-0.5, math.nan, math.inf, "0.1", None, True])
def test_a_latency_function_drawing_a_bad_delay_is_named(drawn: object) -> None:
    # A negative delay would deliver in the past, NaN or inf never: the send that drew it fails
    # at once, naming the delay, instead of a lookup reporting nonsense or a bare TypeError.
    net = bounded_sim(SimNetwork(9, latency=lambda rng: drawn))  # type: ignore[arg-type, return-value]
    net.build(10)
    origin = net.live_nodes()[0]
    with pytest.raises(InvalidArgument, match=re.escape(repr(drawn))):
        net.lookup(origin, 12345)
    assert all(when >= 0.0 and math.isfinite(when) for when, *_ in net._events)


def test_checking_each_drawn_delay_consumes_no_randomness() -> None:
    # The same seed gives the same run with a (correct) latency function as before the check:
    # the first delays drawn are exactly those of the generator alone.
    def run() -> list[tuple[object, ...]]:
        net = SimNetwork(10, latency=lognormal_latency(0.03), trace=True)
        net.build(30)
        net.lookups(3)
        assert net.trace is not None
        return net.trace

    first = run()
    assert first == run() and len(first) > 50
    net = SimNetwork(10, latency=lambda rng: rng.random() / 10)
    twin = random.Random(10)
    assert [net._delay() for _ in range(3)] == [twin.random() / 10 for _ in range(3)]


def test_a_node_that_left_or_of_another_network_cannot_run_operations_here() -> None:
    net = SimNetwork(11)
    net.build(20)
    other = SimNetwork(12)
    stranger = other.build(5)[0]
    gone = net.live_nodes()[3]
    net.remove(gone)
    for node in (gone, stranger, Node()):
        with pytest.raises(InvalidArgument, match="not live on this network"):
            net.lookup(node, 12345)
        with pytest.raises(InvalidArgument, match="not live on this network"):
            net.call(node, node.find_nodes, 12345)
    assert net.now == 0.0  # no virtual time spent waiting on them
    report = net.lookup(net.live_nodes()[0], 12345)  # a live one still runs
    assert report.ok and report.true_closest


def test_a_call_of_another_network_or_no_call_at_all_is_refused_at_once() -> None:
    # Events here would never complete another network's call: running them until its deadline
    # and then reporting a timeout would blame the wrong thing, after a minute of virtual time.
    net = bounded_sim(SimNetwork(13))
    net.build(30)
    other = SimNetwork(14)
    stranger = other.build(30)[0]
    foreign = other.call(stranger, stranger.find_nodes, 12345)
    events, delivered = list(net._events), net.delivered
    with pytest.raises(InvalidArgument, match="another network"):
        net.run_call(foreign)
    with pytest.raises(InvalidType, match="int"):
        net.run_call(12)  # type: ignore[arg-type]
    assert net.now == 0.0 and net._events == events and net.delivered == delivered
    assert len(other.run_call(foreign)) == other.config.k  # its own network runs it
    # Calls made here run: through call(), in a tuple (a subscription and its registration),
    # and directly on one of this network's nodes.
    node = net.live_nodes()[0]
    assert len(net.run_call(net.call(node, node.find_nodes, 999))) == net.config.k
    _, registered = net.call(node, node.pubsub.subscribe, 77, lambda *_: None)
    assert registered.started_by is not None
    assert net.run_call(registered) >= 1
    direct = node.find_nodes(4242, net.now)
    net.call(node, lambda now: None)  # its datagrams go out
    assert len(net.run_call(direct)) == net.config.k


def test_an_operation_of_another_node_is_refused_before_it_runs() -> None:
    # net.call(a, b.find_nodes, ...) ran b's lookup but sent only a's datagrams: b's requests
    # sat in its queue and the call waited out its deadline.
    net = bounded_sim(SimNetwork(15))
    net.build(20)
    a, b = net.live_nodes()[:2]
    for operation in (b.find_nodes, b.namespace.get, functools.partial(b.find_nodes)):
        with pytest.raises(InvalidArgument, match="another node"):
            net.call(a, operation, 12345)
    assert b.stats["requests_out"] == 0 and not b.datagrams_to_send()
    assert net.now == 0.0 and net.sent == 0
    assert net.call(a, lambda now: now) == 0.0  # a plain function is run as given
    assert len(net.run_call(net.call(a, functools.partial(a.find_nodes, 12345)))) == 19


def test_removing_or_measuring_a_node_of_another_network_is_refused() -> None:
    # A node of another network may share an address with one of ours: remove() took ours down
    # while still counting it live, and every later report expected it to answer.
    net = SimNetwork(16)
    net.build(30)
    stranger = SimNetwork(17).build(5)[0]
    ours = net.nodes[stranger.address]  # type: ignore[index]
    for misuse in (net.remove, net.table_fill):
        with pytest.raises(InvalidArgument, match="not one of this network's nodes"):
            misuse(stranger)
        with pytest.raises(InvalidArgument, match="not one of this network's nodes"):
            misuse(Node())
    assert net.stats()["live"] == 30 and net.stats()["left"] == 0 and not net.down
    assert ours in net.live_nodes() and net.lookup(ours, 12345).ok
    net.remove(ours)
    net.remove(ours)  # removing a node that already left does nothing
    assert net.stats()["live"] == 29 and net.stats()["left"] == 1
    assert net.table_fill(ours).address == stranger.address  # a node that left is still ours
