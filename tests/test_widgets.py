"""The ipywidgets views, driven by real lookups on small simulated networks (seeded, virtual time).

Each test records the core's lookup events with its own listener and checks that the view showed
exactly those peers in exactly those rounds, and that its widgets hold what its model says.
"""

from __future__ import annotations

import asyncio
import random
import re
import xml.etree.ElementTree as ET
from typing import Any

import comm
import pytest
from ipywidgets import Widget
from ipywidgets.widgets.widget import _instances  # every open widget, by id

from qadom import Config
from qadom.events import LookupEvent, LookupFinished, LookupReply, LookupRequest, LookupStarted
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.widgets import (
    ANSWERED,
    COLOURS,
    FAILED,
    STALLED,
    LookupView,
    NetworkView,
    RoutingTableView,
    play,
    short,
)

from helpers import udp_network

SMALL = Config(k=4, alpha=2, replacement_cache_size=4)


def small_network(seed: int = 2, size: int = 120) -> tuple[SimNetwork, list[Node], int]:
    """A seeded network, its nodes, and a target (whose lookup from nodes[0] takes 3 rounds
    with seed 7)."""
    net = SimNetwork(seed, config=SMALL)
    nodes = net.build(size)
    return net, nodes, random.Random(seed).getrandbits(256)


def by_round(events: list[LookupEvent], lookup_id: int) -> dict[int, list[int]]:
    rounds: dict[int, list[LookupRequest]] = {}
    for e in events:
        if isinstance(e, LookupRequest) and e.lookup_id == lookup_id:
            rounds.setdefault(e.round, []).append(e)
    return {r: [e.contact.id for e in sorted(rounds[r], key=lambda e: e.distance)]
            for r in sorted(rounds)}


def test_lookup_view_shows_each_round_as_it_happens() -> None:
    net, nodes, target = small_network(7)
    origin = nodes[0]
    events: list[LookupEvent] = []
    origin.add_listener(events.append)
    view = LookupView(origin, target=target)
    assert view.status == "waiting for a lookup"

    call = net.call(origin, origin.find_nodes, target)
    # Live: the first request shows in round 1 before the lookup is over.
    assert view.lookup_id is not None and 1 in view.rounds
    first = view.rounds[1][0].contact.id
    assert short(first) in view.row_widgets[1].value and view.status == "running"
    net.run_call(call)

    started = next(e for e in events if isinstance(e, LookupStarted) and e.target == target)
    finished = next(e for e in events if isinstance(e, LookupFinished))
    expected = by_round(events, started.lookup_id)
    assert len(expected) == 3  # this seed's lookup takes three rounds
    assert view.shown() == expected
    assert view.status == "converged" and view.finished == finished
    assert max(view.rounds) == finished.rounds and len(view.peers) == finished.requests

    # The widgets hold the model: one row per round, ids in distance order, coloured by state.
    assert [view.row_widgets[r] for r in sorted(view.row_widgets)] == list(
        view._rows.children)
    for r, ids in expected.items():
        text = view.row_widgets[r].value
        positions = [text.index(short(i)) for i in ids]
        assert positions == sorted(positions)
        assert text.count(COLOURS[ANSWERED]) == len(ids)  # no loss: every peer answered
    assert f"{len(expected)} rounds" in view._header.value
    chart = ET.fromstring(view._chart.value)  # well-formed SVG: one dot per peer asked
    assert len(chart.findall("{http://www.w3.org/2000/svg}circle")) == finished.requests

    # Round by round: round 1 comes from the origin's table, each later peer was named by a peer
    # of the round before, and the lookup ends on the true closest node.
    assert set(expected[1]) <= {c.id for c in started.initial}
    named: dict[int, set[int]] = {}
    for e in events:
        if isinstance(e, LookupReply):
            named.setdefault(view.peers[e.contact.id].round, set()).update(
                c.id for c in e.closer)
    for r in list(expected)[1:]:
        assert set(expected[r]) <= named[r - 1]
    true_closest = min((n.id for n in nodes if n is not origin), key=target.__xor__)
    assert finished.closest[0].id == true_closest
    assert view.best_bits()[max(expected)] >= view.best_bits()[1]

    # once=True: the view stopped following; a later lookup leaves it as it was.
    assert not view.following
    net.run_call(net.call(origin, origin.find_nodes, target ^ 1))
    assert view.shown() == expected and view.errors == 0


def test_lookup_view_marks_departed_peers_failed() -> None:
    net, nodes, target = small_network()
    origin = nodes[0]
    # The lookup's first round: ask it once, then take those peers off the network.
    probe = LookupView(origin, target=target)
    net.run_call(net.call(origin, origin.find_nodes, target))
    gone = [p.contact.id for p in probe.rounds[1]]
    for node in nodes:
        if node.id in gone:
            net.remove(node)
    net.run_for(1.0)

    view = LookupView(origin, target=target, kind="node")
    net.run_call(net.call(origin, origin.find_nodes, target))
    # A departed peer's first attempt times out (stalled: its slot goes to the next candidate);
    # it has failed for good if its retry also timed out before the lookup converged.
    silent = {i: p.state for i, p in view.peers.items() if p.state in (STALLED, FAILED)}
    assert silent.keys() == {i for i in gone if i in view.peers} and silent
    for i, state in silent.items():
        row = view.row_widgets[view.peers[i].round].value
        assert re.search(f"background:{COLOURS[state]};[^>]*>{short(i)}", row)
    assert view.finished is not None
    assert view.finished.failures == sum(s == FAILED for s in silent.values())
    assert all(p.state == ANSWERED for i, p in view.peers.items() if i not in silent)


def test_lookup_view_filters_and_follows() -> None:
    net, nodes, target = small_network()
    origin = nodes[0]
    view = LookupView(origin, kind="value", once=False)
    net.run_call(net.call(origin, origin.find_nodes, target))
    assert view.lookup_id is None  # a node lookup is not a value lookup
    key = net.run_call(net.call(nodes[5], nodes[5].set, b"watch me"))
    assert net.run_call(net.call(origin, origin.get, key)) == b"watch me"
    first = view.lookup_id
    assert view.target == key and view.status == "found the value"
    assert any(p.state == "value" for p in view.peers.values())
    other = net.run_call(net.call(nodes[6], nodes[6].set, b"and me"))
    net.run_call(net.call(origin, origin.get, other))
    assert view.lookup_id != first and view.target == other and view.following
    view.detach()
    assert not view.following


def test_a_failing_view_does_not_break_the_lookup(monkeypatch: pytest.MonkeyPatch) -> None:
    net, nodes, target = small_network()
    view = LookupView(nodes[0], target=target)

    def broken() -> None:
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(view, "_render_chart", broken)
    closest = net.run_call(net.call(nodes[0], nodes[0].find_nodes, target))
    assert closest and view.errors > 0
    assert nodes[0].stats["internal_errors"] == 0


def test_routing_table_view_shows_every_bucket() -> None:
    net, nodes, _ = small_network()
    node = nodes[3]
    view = RoutingTableView(node)
    table = node.table
    rows = view.shown()
    assert len(rows) == len(table.buckets) == len(view._table.children)
    assert sum(r.size for r in rows) == len(table)
    assert [r for r in rows if r.own] == [rows[[b.covers(node.id) for b in table.buckets]
                                               .index(True)]]
    for row, bucket, box in zip(rows, table.buckets, view._table.children, strict=True):
        assert row.ids == tuple(bucket.contacts) and row.size == len(bucket) <= row.capacity
        assert all(format(i, "0256b").startswith(row.prefix) for i in row.ids)
        assert len(row.prefix) == bucket.depth
        _label, bar, names = box.children
        assert bar.value == row.size and bar.max == SMALL.k
        assert all(short(i) in names.value for i in row.ids)
    assert f"{len(table)} contacts" in view._summary.value

    # It follows the table: a contact dropped shows at the next lookup event (a lookup's start,
    # emitted as the call begins, before any datagram moves).
    dropped = rows[0].ids[0]
    table.remove(dropped)
    assert dropped in view.shown()[0].ids
    net.call(node, node.find_nodes, random.Random(9).getrandbits(256))
    assert [r.ids for r in view.shown()] == [tuple(b.contacts) for b in table.buckets]
    assert dropped not in view.shown()[0].ids
    view.detach()


def test_network_view_draws_the_lookup_on_the_ring() -> None:
    net, nodes, target = small_network()
    origin = nodes[0]
    view = NetworkView(net, watch=origin, target=target)
    assert len(view.members) == len(nodes) and all(m.up for m in view.members)
    (dots,) = ET.fromstring(view._ring.value).findall("{http://www.w3.org/2000/svg}path")
    assert dots.get("d", "").count("M") == len(nodes)  # one dot per node

    net.run_call(net.call(origin, origin.find_nodes, target))
    lookup = LookupView(origin, target=target)  # the same lookup again, for comparison
    net.run_call(net.call(origin, origin.find_nodes, target))
    assert lookup.finished is not None
    assert view.lookup.target == target and view.asked.keys() == lookup.peers.keys()
    assert all(state == ANSWERED for state in view.asked.values())
    asked = set(view.asked)
    for source, to in view.edges:
        assert to in asked and (source == origin.id or source in asked)
    assert {to for _, to in view.edges} == asked
    ring = ET.fromstring(view._ring.value)
    lines = ring.findall("{http://www.w3.org/2000/svg}line")
    assert len(lines) == len(view.edges) + 1  # the edges and the target's mark
    assert lines[-1].get("stroke") == "red"

    net.remove(nodes[7])
    view.refresh()
    assert sum(not m.up for m in view.members) == 1
    up, down = ET.fromstring(view._ring.value).findall("{http://www.w3.org/2000/svg}path")
    assert (up.get("d", "").count("M"), down.get("d", "").count("M")) == (len(nodes) - 1, 1)
    assert f"{len(nodes) - 1} up, 1 down" in view._summary.value


async def test_network_view_of_local_peers() -> None:
    async with udp_network(3) as peers:
        view = NetworkView(peers, watch=peers[2])
        assert {m.id for m in view.members} == {p.id for p in peers}
        target = random.Random(4).getrandbits(256)
        await asyncio.wait_for(peers[2].find_nodes(target), 20)
        assert view.lookup.finished is not None and view.lookup.target == target
        assert set(view.asked) <= {p.id for p in peers[:2]}
        await peers[1].close()
        view.refresh()
        assert [m.up for m in view.members] == [True, False, True]
        view.detach()


async def test_play_runs_a_simulated_call_with_views_updating() -> None:
    net, nodes, target = small_network()
    origin = nodes[0]
    view = LookupView(origin, target=target)
    closest = await play(net, net.call(origin, origin.find_nodes, target), watch=origin,
                         delay=0)
    assert closest and view.finished is not None
    assert [c.id for c in closest] == [c.id for c in view.finished.closest]
    with pytest.raises(TimeoutError):
        await play(net, net.call(origin, origin.find_nodes, target ^ 7), watch=origin,
                   delay=0, max_events=2)


def _front_end_closes(widget: Any) -> None:
    """What the kernel does when the front end closes a widget: a comm_close message, handled by
    the comm manager."""
    comm_id = widget.comm.comm_id
    message = {"content": {"comm_id": comm_id, "data": {}}}
    comm.get_comm_manager().comm_close(None, "", message)  # type: ignore[arg-type]  # no stream


@pytest.mark.parametrize("how", ["view.close()", "view.widget.close()", "front end"])
def test_a_closed_view_no_longer_listens_to_the_node(how: str) -> None:
    # A notebook cell run again leaves its old views behind: each must cost the node nothing
    # once closed, however it was closed.
    net, nodes, target = small_network()
    origin = nodes[0]
    before = list(origin._listeners)
    lookup, ring, table = (LookupView(origin, once=False), NetworkView(net, watch=origin),
                           RoutingTableView(origin))
    views: list[Any] = [lookup, ring, table]
    assert len(origin._listeners) == len(before) + 3
    inner = [w for view in views for w in _tree(view.widget)] + list(_tree(ring.lookup.widget))
    for view in views:
        if how == "view.close()":
            view.close()
        elif how == "view.widget.close()":
            view.widget.close()
        else:
            _front_end_closes(view.widget)
    assert origin._listeners == before
    assert all(view.closed for view in views) and ring.lookup.closed
    assert all(w.comm is None for w in inner)  # every widget of every view closed too
    shown_ring = ring._ring.value
    dropped = table.shown()[0].ids[0]
    origin.table.remove(dropped)
    report = net.lookup(origin, target)
    assert report.ok
    assert lookup.lookup_id is None and lookup.status == "waiting for a lookup"
    assert ring.lookup.lookup_id is None and ring._ring.value == shown_ring
    assert dropped in table.shown()[0].ids  # not re-read
    assert [view.errors for view in views] == [0, 0, 0]
    for view in views:
        view.close()  # again: nothing happens
    with pytest.raises(RuntimeError):
        lookup.attach(origin)
    with pytest.raises(RuntimeError):
        ring.watch(origin)
    assert origin._listeners == before


def _tree(widget: Any) -> list[Any]:
    """``widget`` and every widget it holds: children, layouts and styles."""
    parts = [getattr(widget, "layout", None), getattr(widget, "style", None)]
    return [widget, *(p for p in parts if isinstance(p, Widget)),
            *(w for child in getattr(widget, "children", ()) for w in _tree(child))]


def test_redrawn_rows_are_closed_not_left_open_in_the_kernel() -> None:
    # ipywidgets keeps every open widget in the kernel until it is closed: rows replaced by a
    # redraw (a table that changed, a new lookup shown) must be closed, or a live view leaks
    # widgets for as long as it runs.
    net, nodes, _ = small_network()
    origin = nodes[0]
    table, lookup = RoutingTableView(origin), LookupView(origin, once=False)
    rng = random.Random(5)
    net.run_call(net.call(origin, origin.find_nodes, rng.getrandbits(256)))
    old_rows = [w for row in table._table.children for w in _tree(row)]
    old_rounds = [w for row in lookup._rows.children for w in _tree(row)]
    assert old_rows and old_rounds
    open_counts: dict[tuple[int, int], set[int]] = {}  # rows shown -> widgets open
    for _ in range(6):
        origin.table.remove(table.shown()[0].ids[0])  # the table changes: its rows are redrawn
        net.run_call(net.call(origin, origin.find_nodes, rng.getrandbits(256)))
        rows = (len(table._table.children), len(lookup._rows.children))
        open_counts.setdefault(rows, set()).add(len(_instances))
    assert all(w.comm is None for w in old_rows + old_rounds)
    shown = [w for box in (table._table, lookup._rows) for row in box.children for w in _tree(row)]
    assert shown and all(w.comm is not None for w in shown)
    assert len(table._table.children) == len(origin.table.buckets)
    # As many widgets open after each redraw of as many rows: a row's layout and style are
    # widgets too, closed with it.
    assert max(len(counts) for counts in open_counts.values()) == 1, open_counts
    assert len(open_counts) < 6, open_counts  # some redraws showed as many rows
    table.close()
    lookup.close()
