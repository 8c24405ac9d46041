"""A search of a multimap key larger than one page (Node.search): under loss it returns the whole
set or raises IncompleteSearch, never a part of the set as if it were the whole; a page one holder
does not serve is read from another; a long read whose pages keep coming completes however long
it takes; and once the search is over (failed or abandoned) no page is asked for."""

from __future__ import annotations

import random
from typing import Any

import pytest

from qadom import Config
from qadom.call import Call
from qadom.contact import Address
from qadom.errors import IncompleteSearch, OperationAbandoned, OperationTimeout
from qadom.messages import Error, ErrorCode, Message, Search
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import Meta

PAGES_OF_10 = Config(k=8, search_page_size=10)  # many pages from few values


def _keyed(seed: int, values: int, config: Config, *, count: int = 40,
           latency: tuple[float, float] = (0.01, 0.05),
           ) -> tuple[SimNetwork, list[Node], int, list[Node]]:
    """A network of ``count`` nodes whose k closest to a key hold the values 0..values-1 under
    it, as if appended and replicated: the network, its nodes, the key and its holders."""
    net = SimNetwork(seed, config=config, latency=latency)
    nodes = net.build(count)
    key = random.Random(seed).getrandbits(256)
    closest = set(net.true_closest(key, config.k))
    holders = [n for n in nodes if n.id in closest]
    meta = Meta(net.now + 86400, net.now + 3600)
    for holder in holders:
        for value in range(values):
            holder.store.add_entry(key, value, meta)
    return net, nodes, key, holders


def _readers(nodes: list[Node], holders: list[Node], count: int, seed: int) -> list[Node]:
    return random.Random(seed).sample([n for n in nodes if n not in holders], count)


def _page_requests(monkeypatch: pytest.MonkeyPatch, node: Node) -> list[Search]:
    """The SEARCH requests ``node`` sends for a page after the first (``after`` set), as sent."""
    sent: list[Search] = []
    request = node.request

    def counting(address: Address, message: Message, now: float, **kwargs: Any) -> int:
        if isinstance(message, Search) and message.after is not None:
            sent.append(message)
        return request(address, message, now, **kwargs)

    monkeypatch.setattr(node, "request", counting)
    return sent


def _refuse_pages(holder: Node, refused: set[int]) -> None:
    """Make ``holder`` answer ERROR to a request for the page after any value of ``refused``."""
    serve = holder._handle_search

    def handler(message: Search, sender: int | None, address: Address, now: float) -> Message:
        if message.after in refused:
            return Error(ErrorCode.INTERNAL, "page refused")
        return serve(message, sender, address, now)

    holder.register_handler(Search, handler)


def _paging_started(net: SimNetwork, call: Call[set[int]], sent: list[Search]) -> None:
    """Run the network until the search of ``call`` has asked for a page after the first."""
    deadline = net.now + 30
    while not sent and not call.done and net.now < deadline:
        net.run_for(0.01)
    assert sent and not call.done


def _holders_vanish_while_paging(monkeypatch: pytest.MonkeyPatch, net: SimNetwork,
                                 nodes: list[Node], key: int, holders: list[Node], seed: int,
                                 ) -> tuple[Call[set[int]], list[Search]]:
    """Start a search of ``key`` by a reader that holds none of it, and once it is paging, take
    every holder off the network: its call, and the page requests it sends."""
    reader = _readers(nodes, holders, 1, seed=seed)[0]
    sent = _page_requests(monkeypatch, reader)
    call = net.call(reader, reader.search, key)
    _paging_started(net, call, sent)
    for holder in holders:
        net.remove(holder)
    return call, sent


def test_search_under_moderate_loss_returns_the_whole_set() -> None:
    # 300 values, 30 pages of 10 on each of the 8 holders: at 20% loss a page request fails
    # (both attempts lost) about one time in eight, so most holders' reads break on the way.
    net, nodes, key, holders = _keyed(6, 300, PAGES_OF_10)
    net.loss = 0.2
    for reader in _readers(nodes, holders, 8, seed=6):
        assert net.run_call(net.call(reader, reader.search, key)) == set(range(300))


def test_search_under_heavy_loss_returns_the_whole_set_or_says_it_is_incomplete() -> None:
    net, nodes, key, holders = _keyed(5, 300, PAGES_OF_10)
    net.loss = 0.4
    whole = incomplete = 0
    for reader in _readers(nodes, holders, 8, seed=5):
        try:
            found = net.run_call(net.call(reader, reader.search, key))
        except IncompleteSearch as e:
            assert e.values < set(range(300))  # a part, and said to be one
            assert f"{len(e.values)} values read" in str(e) and "incomplete" in str(e)
            incomplete += 1
        except OperationTimeout:
            continue  # the lookup itself had no answer: no part was read
        else:
            assert found == set(range(300))  # never a part as if it were the whole
            whole += 1
    assert whole >= 3  # the failover reads most of them whole even so


def test_a_page_one_holder_refuses_is_read_from_another() -> None:
    # Every holder refuses the page after a point of its own, where its own read stops: the
    # reads of all of them together stop short of the end unless each refused page is asked of
    # another holder.
    net, nodes, key, holders = _keyed(3, 400, PAGES_OF_10)
    for i, holder in enumerate(holders):
        _refuse_pages(holder, {10 * (i + 1) - 1})
    reader = _readers(nodes, holders, 1, seed=3)[0]
    assert net.run_call(net.call(reader, reader.search, key)) == set(range(400))


def test_a_page_no_holder_serves_fails_the_search_with_what_was_read(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, nodes, key, holders = _keyed(4, 400, PAGES_OF_10)
    for holder in holders:
        _refuse_pages(holder, {199})  # nobody serves the values after 199
    reader = _readers(nodes, holders, 1, seed=4)[0]
    sent = _page_requests(monkeypatch, reader)
    call = net.call(reader, reader.search, key)
    with pytest.raises(IncompleteSearch) as failed:
        net.run_call(call)
    assert failed.value.values == set(range(200))
    assert str(failed.value).startswith("search incomplete: 200 values read")
    assert isinstance(failed.value, OperationTimeout)
    asked = len(sent)
    net.run_for(60)
    assert len(sent) == asked  # the failed search asks for no more pages


def test_a_search_whose_holders_vanish_fails_and_stops_asking(
        monkeypatch: pytest.MonkeyPatch) -> None:
    net, nodes, key, holders = _keyed(5, 1000, PAGES_OF_10)
    call, sent = _holders_vanish_while_paging(monkeypatch, net, nodes, key, holders, seed=5)
    with pytest.raises(IncompleteSearch) as failed:
        net.run_call(call)
    assert 0 < len(failed.value.values) < 1000
    asked = len(sent)
    net.run_for(60)
    assert len(sent) == asked


def test_a_long_search_completes_while_its_pages_keep_coming() -> None:
    # 625 pages (2500 values, 4 a page), read one after another from each holder at 40-80 ms a
    # round trip: about 40 s, longer than operation_timeout (30 s), within max_search_pages.
    net, nodes, key, holders = _keyed(1, 2500, Config(k=2, search_page_size=4),
                                      latency=(0.02, 0.04))
    reader = _readers(nodes, holders, 1, seed=1)[0]
    start = net.now
    found = net.run_call(net.call(reader, reader.search, key), timeout=300)
    assert found == set(range(2500))
    assert net.now - start > net.config.operation_timeout


def test_a_search_no_page_reaches_for_operation_timeout_fails(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # A page request fails after 2 attempts of 2 s each, later than the operation timeout of
    # 3 s: the search fails for its pages' silence before any request to a holder gone fails.
    config = Config(k=8, search_page_size=10, operation_timeout=3.0, rpc_timeout=2.0,
                    rpc_timeout_min=2.0, rpc_timeout_max=2.0)
    net, nodes, key, holders = _keyed(2, 1000, config)
    call, sent = _holders_vanish_while_paging(monkeypatch, net, nodes, key, holders, seed=2)
    with pytest.raises(IncompleteSearch, match=r"values read, then no page came for 3 s"):
        net.run_call(call)
    asked = len(sent)
    net.run_for(60)
    assert len(sent) == asked


def test_an_abandoned_search_asks_for_no_more_pages(monkeypatch: pytest.MonkeyPatch) -> None:
    net, nodes, key, holders = _keyed(8, 2000, PAGES_OF_10, latency=(0.02, 0.04))
    reader = _readers(nodes, holders, 1, seed=8)[0]
    sent = _page_requests(monkeypatch, reader)
    call = net.call(reader, reader.search, key)
    _paging_started(net, call, sent)
    call.fail(OperationAbandoned("search was cancelled"))  # what Peer._run does on cancel
    asked = len(sent)
    net.run_for(60)
    assert len(sent) == asked
    assert not reader._deadlines  # nor is a deadline of it left
