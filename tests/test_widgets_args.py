"""The views refuse what they cannot show before they build a widget, say that a lookup which
asked nobody asked nobody, and a network view switched to another node draws that node's lookup
alone.

Simulated networks are seeded (virtual time); the peers refused are real ones on 127.0.0.1.
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from ipywidgets.widgets.widget import _instances  # every open widget, by id

from qadom import Config, Peer
from qadom.errors import InvalidArgument, InvalidType, NoPeersError, PeerClosedError
from qadom.events import LookupEvent, LookupReply, LookupRequest, LookupStarted
from qadom.sim import SimNetwork
from qadom.widgets import LookupView, NetworkView, RoutingTableView

from helpers import FAST

SMALL = Config(k=4, alpha=2, replacement_cache_size=4)


# ====================================================================== switching the source

def test_network_view_watching_another_node_draws_only_its_lookup() -> None:
    """Lookup ids are counted per node: the first lookup of one node has the id of the first of
    another. Who named whom in the lookup drawn before must not become edges of the next."""
    net = SimNetwork(5)
    nodes = net.build(400)
    first, second = nodes[0], nodes[1]
    target = random.Random(1).getrandbits(256)
    ring = NetworkView(net, watch=first)
    net.run_call(net.call(first, first.find_nodes, target))
    drawn_before = ring.lookup.lookup_id
    assert drawn_before is not None and ring.named_by

    ring.watch(second)
    shown_once_switched = (ring.lookup.lookup_id, ring.edges, dict(ring.named_by))
    events: list[LookupEvent] = []
    unsubscribe = second.add_listener(events.append)
    try:
        net.run_call(net.call(second, second.find_nodes, target))
    finally:
        unsubscribe()
    started = [e for e in events if isinstance(e, LookupStarted)]
    assert len(started) == 1
    lookup_id = started[0].lookup_id
    assert lookup_id == drawn_before  # the two lookups share an id: the case at hand
    named_by: dict[int, int] = {}  # who first named each peer, as the lookup's replies say
    for event in events:
        if isinstance(event, LookupReply) and event.lookup_id == lookup_id:
            for contact in event.closer:
                named_by.setdefault(contact.id, event.contact.id)
    asked = [e.contact.id for e in events
             if isinstance(e, LookupRequest) and e.lookup_id == lookup_id]
    assert asked and sorted(ring.lookup.peers) == sorted(asked)
    assert sorted(ring.edges) == sorted((named_by.get(peer, second.id), peer) for peer in asked)
    assert set(ring.named_by) <= set(named_by)
    assert shown_once_switched == (None, [], {})  # the first node's lookup was cleared
    ring.close()


# ====================================================================== a lookup that asked nobody

def test_a_lookup_with_no_peer_to_ask_is_not_shown_converged() -> None:
    net = SimNetwork(3, config=SMALL)
    (lone,) = net.build(1)  # it knows no other node
    view = LookupView(lone)
    with pytest.raises(NoPeersError):
        net.run_call(net.call(lone, lone.get, 12345))
    assert view.finished is not None and view.finished.requests == 0
    assert view.status == "no peer asked"
    assert "no peer asked · 0 rounds · 0 asked" in view._header.value
    view.close()


# ====================================================================== refused arguments

@pytest.fixture
def net_node() -> tuple[SimNetwork, Any]:
    net = SimNetwork(2, config=SMALL)
    return net, net.build(20)[0]


@pytest.mark.parametrize(("make", "error", "match"), [
    (lambda net, node: LookupView(42),  # type: ignore[arg-type]
     InvalidType, "Peer or a Node"),
    (lambda net, node: LookupView(node, target="0xabc"),  # type: ignore[arg-type]
     InvalidType, "target"),
    (lambda net, node: LookupView(node, target=True), InvalidType, "target"),
    (lambda net, node: LookupView(node, target=2**300), InvalidArgument, "target"),
    (lambda net, node: LookupView(node, target=-1), InvalidArgument, "target"),
    (lambda net, node: LookupView(node, kind="get"), InvalidArgument, "kind"),
    (lambda net, node: LookupView(node, kind=1),  # type: ignore[arg-type]
     InvalidType, "kind"),
    (lambda net, node: LookupView(target=2**256), InvalidArgument, "target"),
    (lambda net, node: NetworkView(42), InvalidType, "SimNetwork or an iterable of Peers"),
    (lambda net, node: NetworkView("peers"), InvalidType, "SimNetwork or an iterable of Peers"),
    (lambda net, node: NetworkView([1, 2]), InvalidType, "holding int"),
    (lambda net, node: NetworkView([], watch=3),  # type: ignore[arg-type]
     InvalidType, "Peer or a Node"),
    (lambda net, node: NetworkView(net, watch=node, target="x"),  # type: ignore[arg-type]
     InvalidType, "target"),
    (lambda net, node: RoutingTableView(None), InvalidType, "Peer or a Node"),
])
def test_views_refuse_bad_arguments_before_building_anything(
        net_node: tuple[SimNetwork, Any], make: Any, error: type[Exception],
        match: str) -> None:
    net, node = net_node
    listeners = list(node._listeners)
    open_widgets = len(_instances)
    with pytest.raises(error, match=match):
        make(net, node)
    assert len(_instances) == open_widgets  # no widget was made
    assert node._listeners == listeners  # nothing listens


def test_views_accept_every_kind_of_lookup_the_core_runs(
        net_node: tuple[SimNetwork, Any]) -> None:
    _, node = net_node
    for kind in ("node", "value", "search", "namespace", "dht"):
        LookupView(node, kind=kind).close()
    view = LookupView(node, kind="value", target=0)
    assert view.want_kind == "value" and view.want_target == 0
    view.close()


async def test_views_refuse_a_peer_that_is_not_running() -> None:
    unstarted = Peer("127.0.0.1", 0, config=FAST)
    closed = Peer("127.0.0.1", 0, config=FAST)
    await closed.start()
    await closed.close()
    async with Peer("127.0.0.1", 0, config=FAST) as running:
        for peer in (unstarted, closed):
            open_widgets = len(_instances)
            with pytest.raises(PeerClosedError):
                LookupView(peer)
            with pytest.raises(PeerClosedError):
                RoutingTableView(peer)
            with pytest.raises(PeerClosedError):
                NetworkView([running, peer], watch=peer)
            assert len(_instances) == open_widgets
        # A view following a running peer keeps following it when told to follow a closed one.
        view = LookupView(running, once=False)
        with pytest.raises(PeerClosedError):
            view.attach(closed)
        assert view.following and len(running.node._listeners) == 1
        ring = NetworkView(iter([running, closed, unstarted]), watch=running)
        with pytest.raises(PeerClosedError):
            ring.watch(unstarted)
        ring.refresh()  # a one-shot iterator of peers is read again: the peers not running are down
        assert [member.up for member in ring.members] == [True, False, False]
        assert len(running.node._listeners) == 2
        view.close()
        ring.close()
        table = RoutingTableView(running)
        table.close()
