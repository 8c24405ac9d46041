"""The simulator's inputs: wire parameters checked whenever they are set, bad arguments refused
with qadom's own errors before anything happens, and a node that left coming back under its
old id."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from typing import Any

import pytest

from qadom.config import Config
from qadom.errors import InvalidArgument, InvalidType
from qadom.events import LookupEvent, LookupFinished
from qadom.node import Node
from qadom.sim import LookupReport, SimNetwork, lognormal_latency, percentile, summarize

from helpers import bounded_sim


def _state(net: SimNetwork) -> tuple[Any, ...]:
    """Everything a refused call must leave as it was."""
    return (net.now, list(net._events), net.sent, net.delivered, net.dropped,
            list(net.churn_log), net.rng.getstate(), net.live_nodes(), dict(net.nodes),
            set(net.down), net._sides, (net.loss, net.duplicate, net.reorder,
                                        net.reorder_delay, net.latency))


# ---------------------------------------------------------------------------- wire parameters


_HUGE = 10**400  # an int no float holds

WIRE = {"loss": 0.0, "duplicate": 0.0, "reorder": 0.0, "reorder_delay": 0.1}


@pytest.mark.parametrize(("name", "value", "error"), [
    *((name, value, error) for name in ("loss", "duplicate", "reorder")
      for value, error in ((math.nan, InvalidArgument), (-0.1, InvalidArgument),
                           (1.5, InvalidArgument), (math.inf, InvalidArgument),
                           ("0.1", InvalidType), (None, InvalidType), (True, InvalidType))),
    *(("reorder_delay", value, error)
      for value, error in ((math.nan, InvalidArgument), (-0.5, InvalidArgument),
                           (math.inf, InvalidArgument), (_HUGE, InvalidArgument),
                           ("0.1", InvalidType), (None, InvalidType), (False, InvalidType))),
], ids=lambda value: "huge-int" if value is _HUGE else None)
def test_a_wire_parameter_is_checked_whenever_it_is_set(name: str, value: object,
                                                       error: type[Exception]) -> None:
    # The class says they may be changed between steps; a negative reorder_delay delivered
    # datagrams before they were sent, a NaN loss read as no loss, a NaN delay broke the order
    # of the event heap.
    with pytest.raises(error, match=name):
        SimNetwork(1, **{name: value})  # type: ignore[arg-type]
    net = SimNetwork(1)
    net.build(10)
    before = _state(net)
    with pytest.raises(error, match=name):
        setattr(net, name, value)
    assert getattr(net, name) == WIRE[name]
    assert _state(net) == before


def test_wire_parameters_set_after_building_are_the_ones_the_wire_uses() -> None:
    net = bounded_sim(SimNetwork(2, trace=True, latency=(0.01, 0.02)))
    net.build(20)
    net.reorder, net.reorder_delay = 1, 0.5  # an int probability is a number too
    assert (net.reorder, net.reorder_delay) == (1.0, 0.5)
    origin = net.live_nodes()[0]
    start = len(net.trace or ())
    report = net.lookup(origin, 12345)
    assert report.ok
    deliveries = [event for event in (net.trace or ())[start:] if event[1] == "deliver"]
    times = [event[0] for event in deliveries]
    assert times == sorted(times)  # never before an earlier one: no delay was negative
    assert max(times) - min(times) > 0.02  # some were held back past the latency's maximum
    net.loss = 1.0
    sent, dropped = net.sent, net.dropped
    net.lookup(origin, 54321)
    assert net.sent > sent and net.dropped - dropped == net.sent - sent  # every one lost


# ---------------------------------------------------------------------------- bad arguments


def _other_node() -> Node:
    other = SimNetwork(99)
    return other.add_node()


Prepare = Callable[[SimNetwork, Node], Callable[[], object]]


def _run_call(timeout: object) -> Prepare:
    """A ping started first (outside the check), then run with ``timeout``."""
    def prepare(net: SimNetwork, node: Node) -> Callable[[], object]:
        call = net.call(node, node.ping, net.live_addresses()[1])
        return lambda: net.run_call(call, timeout=timeout)  # type: ignore[arg-type]
    return prepare


def _empty(run: Callable[[SimNetwork], object]) -> Prepare:
    """``run`` on a new, empty network."""
    return lambda net, node: lambda: run(SimNetwork(3))


CASES: dict[str, tuple[type[Exception], Prepare]] = {
    "seed-none": (InvalidType, lambda net, n: lambda: SimNetwork(None)),  # type: ignore[arg-type]
    "seed-str": (InvalidType, lambda net, n: lambda: SimNetwork("1")),  # type: ignore[arg-type]
    "config": (InvalidType, lambda net, n: lambda: SimNetwork(1, config=5)),  # type: ignore[arg-type]
    "churn-keep-int": (InvalidType, lambda net, n: lambda: net.churn(leave=1, keep=[5])),  # type: ignore[list-item]
    "churn-keep-foreign": (InvalidArgument,
                           lambda net, n: lambda: net.churn(leave=1, keep=[_other_node()])),
    "churn-start-str": (InvalidType, lambda net, n: lambda: net.churn(leave=1, start="1")),  # type: ignore[arg-type]
    "churn-start-bool": (InvalidType, lambda net, n: lambda: net.churn(leave=1, start=True)),
    "churn-duration-none": (InvalidType,
                            lambda net, n: lambda: net.churn(leave=1, duration=None)),  # type: ignore[arg-type]
    "leave-keep-int": (InvalidType, lambda net, n: lambda: net.leave(1, keep=5)),  # type: ignore[arg-type]
    "leave-keep-str": (InvalidType, lambda net, n: lambda: net.leave(1, keep=["x"])),  # type: ignore[list-item]
    "leave-keep-node": (InvalidType, lambda net, n: lambda: net.leave(1, keep=n)),  # type: ignore[arg-type]
    "leave-keep-foreign": (InvalidArgument,
                           lambda net, n: lambda: net.leave(1, keep=[_other_node()])),
    "partition-int": (InvalidType, lambda net, n: lambda: net.partition([1])),  # type: ignore[list-item]
    "partition-not-iterable": (InvalidType, lambda net, n: lambda: net.partition(5)),  # type: ignore[arg-type]
    "partition-foreign": (InvalidArgument,
                          lambda net, n: lambda: net.partition([n], [_other_node()])),
    "partition-two-groups": (InvalidArgument, lambda net, n: lambda: net.partition(
        [n], net.live_nodes())),
    "true_closest-str": (InvalidType, lambda net, n: lambda: net.true_closest("x", 3)),  # type: ignore[arg-type]
    "true_closest-negative": (InvalidArgument, lambda net, n: lambda: net.true_closest(-1, 3)),
    "true_closest-exclude": (InvalidType,
                             lambda net, n: lambda: net.true_closest(1, 3, exclude="x")),  # type: ignore[arg-type]
    "run_for-str": (InvalidType, lambda net, n: lambda: net.run_for("5")),  # type: ignore[arg-type]
    "run_for-none": (InvalidType, lambda net, n: lambda: net.run_for(None)),  # type: ignore[arg-type]
    "run_for-bool": (InvalidType, lambda net, n: lambda: net.run_for(True)),
    "run_call-timeout-str": (InvalidType, _run_call("x")),
    "run_call-timeout-negative": (InvalidArgument, _run_call(-1)),
    "run_call-timeout-nan": (InvalidArgument, _run_call(math.nan)),
    "run_call-timeout-inf": (InvalidArgument, _run_call(math.inf)),
    "check_ours-int": (InvalidType, lambda net, n: lambda: net.check_ours(5)),  # type: ignore[arg-type]
    "lookups-gap-negative": (InvalidArgument, lambda net, n: lambda: net.lookups(2, gap=-1)),
    "lookups-gap-str": (InvalidType, lambda net, n: lambda: net.lookups(2, gap="x")),  # type: ignore[arg-type]
    "lookups-gap-inf": (InvalidArgument, lambda net, n: lambda: net.lookups(2, gap=math.inf)),
    "build-spread-str": (InvalidType, _empty(lambda net: net.build(5, spread="x"))),  # type: ignore[arg-type]
    "build-spread-nan": (InvalidArgument, _empty(lambda net: net.build(5, spread=math.nan))),
    "add_node-config": (InvalidType, lambda net, n: lambda: net.add_node(config=5)),  # type: ignore[arg-type]
    "add_node-live-id": (InvalidArgument, lambda net, n: lambda: net.add_node(node_id=n.id)),
    "add_nodes-bootstrap": (InvalidType,
                            lambda net, n: lambda: net.add_nodes(1, bootstrap="no")),  # type: ignore[arg-type]
    "call-not-callable": (InvalidType, lambda net, n: lambda: net.call(n, 5)),  # type: ignore[arg-type]
    "address_of-foreign": (InvalidArgument, lambda net, n: lambda: net.address_of(_other_node())),
    "summarize-int": (InvalidType, lambda net, n: lambda: summarize([1])),  # type: ignore[list-item]
    "summarize-not-iterable": (InvalidType, lambda net, n: lambda: summarize(5)),  # type: ignore[arg-type]
    "percentile-str": (InvalidType, lambda net, n: lambda: percentile([1.0], "x")),  # type: ignore[arg-type]
    "percentile-above-100": (InvalidArgument, lambda net, n: lambda: percentile([1.0], 150)),
    "percentile-not-a-sequence": (InvalidType, lambda net, n: lambda: percentile(5, 50)),  # type: ignore[arg-type]
    "lognormal-str": (InvalidType, lambda net, n: lambda: lognormal_latency("a")),  # type: ignore[arg-type]
    "lognormal-bool": (InvalidType, lambda net, n: lambda: lognormal_latency(0.03, True)),
}


@pytest.mark.parametrize("case", CASES)
def test_a_bad_argument_is_refused_with_a_qadom_error_before_anything_happens(case: str) -> None:
    # These raised a bare TypeError or AttributeError from deep inside, ran a lookup before
    # refusing the gap after it, or waited out a negative timeout as an OperationTimeout.
    error, prepare = CASES[case]
    net = bounded_sim(SimNetwork(5))
    net.build(12)
    node = net.live_nodes()[0]
    run = prepare(net, node)
    before = _state(net)
    with pytest.raises(error):
        run()
    assert _state(net) == before


def test_good_arguments_of_the_new_checks_still_work() -> None:
    net = bounded_sim(SimNetwork(6))
    nodes = net.build(12, spread=2)
    kept = nodes[:3]
    assert all(net.address_of(n) not in net.down for n in kept)
    gone = net.leave(4, keep=iter(kept))  # any iterable of nodes
    assert not set(gone) & set(kept)
    net.partition(kept, (n for n in nodes[3:]))
    net.heal()
    assert net.true_closest(nodes[0].id, 2, exclude=nodes[0].id)[0] != nodes[0].id
    reports = net.lookups(2, gap=1)
    assert len(reports) == 2 and all(isinstance(r, LookupReport) for r in reports)
    assert summarize(iter(reports))["lookups"] == 2
    assert percentile([1.0, 2.0, 3.0], 0) == 1.0 and percentile([1.0, 2.0, 3.0], 100) == 3.0
    origin = net.live_nodes()[0]
    assert net.run_call(net.call(origin, origin.ping, net.live_addresses()[1]), timeout=30) \
        is not None
    net.churn(leave=1, start=net.now + 1, duration=1, keep=kept)
    net.run_for(5)
    assert sum(kind == "leave" for _, kind, _ in net.churn_log) == 5


# ---------------------------------------------------------------------------- rejoining


def _rejoin(seed: int) -> tuple[SimNetwork, Node, Node, list[LookupReport], list[tuple[Any, ...]]]:
    """A node leaves and comes back under its id on a new address; after a refresh interval,
    lookups of that id from every other live node."""
    net = bounded_sim(SimNetwork(seed, trace=True), events=2_000_000)
    nodes = net.build(40)
    old = nodes[5]
    net.remove(old)
    net.run_for(5.0)
    new = net.add_node(node_id=old.id)
    net.run_call(net.call(new, new.bootstrap, [net.address_of(nodes[0])]))
    # The other tables hold the id at its old address: a table keeps a known contact until it
    # fails, so the new address spreads as the old one fails and the tables are refreshed.
    net.run_for(net.config.refresh_interval + 60.0)
    reports, found = [], []
    for origin in net.live_nodes():
        if origin is new:
            continue
        events: list[LookupEvent] = []
        unsubscribe = origin.add_listener(events.append)
        reports.append(net.lookup(origin, old.id))
        unsubscribe()
        finished = [e for e in events if isinstance(e, LookupFinished)]
        found.append(tuple((c.id, c.address) for c in finished[-1].closest if c.id == old.id))
    return net, old, new, reports, found


def test_a_node_that_left_rejoins_under_its_old_id_and_lookups_find_it() -> None:
    # A peer keeps its id in its data directory: a restart comes back under the same id. The
    # simulator refused it ("already on the network") because it still indexed the node gone.
    net, old, new, reports, found = _rejoin(3)
    assert new is not old and new.id == old.id
    assert net.address_of(new) != net.address_of(old)
    assert net.address_of(old) in net.down and net.nodes[net.address_of(old)] is old
    assert [n for n in net.live_nodes() if n.id == old.id] == [new]
    assert net.true_closest(old.id, 1) == [old.id]
    assert net.stats()["live"] == 40 and net.stats()["left"] == 1
    assert all(r.ok and r.true_closest for r in reports)
    assert all(f == ((new.id, net.address_of(new)),) for f in found)
    # per-node reports still tell the two apart
    assert net.table_fill(old).address == net.address_of(old)
    assert net.table_fill(new).address == net.address_of(new)
    # the live one's id is refused, and nothing is made
    before = _state(net)
    with pytest.raises(InvalidArgument, match="already on the network"):
        net.add_node(node_id=old.id)
    assert _state(net) == before


def test_a_rejoined_node_is_not_spared_by_a_keep_that_named_the_node_gone() -> None:
    net = bounded_sim(SimNetwork(4))
    nodes = net.build(10)
    old = nodes[2]
    net.remove(old)
    new = net.add_node(node_id=old.id)
    gone = net.leave(len(net.live_nodes()), keep=[old])  # every live node: ``new`` too
    assert new in gone and not net.live_nodes()
    net2 = bounded_sim(SimNetwork(4))
    nodes2 = net2.build(10)
    net2.remove(nodes2[2])
    new2 = net2.add_node(node_id=nodes2[2].id)
    net2.churn(leave=10, duration=1.0, keep=[nodes2[2]])
    net2.run_for(2.0)
    assert net2.address_of(new2) in net2.down and not net2.live_nodes()


def test_a_run_with_a_rejoined_node_is_the_same_for_the_same_seed() -> None:
    def digest(seed: int) -> str:
        net, _, _, reports, found = _rejoin(seed)
        return hashlib.sha256(repr((net.trace, reports, found, net.stats(),
                                    net.churn_log)).encode()).hexdigest()

    assert digest(3) == digest(3)
    assert digest(3) != digest(4)


def test_a_node_made_with_another_config_gets_it() -> None:
    net = SimNetwork(8)
    config = Config(k=8)
    node = net.add_node(config=config)
    assert node.config is config
