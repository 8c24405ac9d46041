"""Searches of one key that share a lookup, which fails with IncompleteSearch: each caller gets
what was read as its own, as a result would be (qadom.node._SharedRead)."""

from __future__ import annotations

from qadom.config import Config
from qadom.errors import IncompleteSearch
from qadom.sim import SimNetwork


def test_each_caller_of_a_shared_search_that_fails_owns_the_values_read() -> None:
    net = SimNetwork(seed=9, latency=(0.01, 0.02), config=Config(k=3, search_page_size=3))
    nodes = net.build(8)
    writer = nodes[0]
    for value in range(12):
        net.run_call(net.call(writer, writer.append, 555, value))
    # A reader that holds none of the set: its own store would stand in for a failed page.
    reader = next(node for node in nodes[1:] if not node.store.entries_after(555, None, 1)[0])
    calls = [net.call(reader, reader.search, 555) for _ in range(2)]
    net.run_for(0.05)  # the first pages read; then every other node is gone
    for node in nodes:
        if node is not reader:
            net.remove(node)
    failures = []
    for call in calls:
        try:
            net.run_call(call, timeout=100)
        except IncompleteSearch as exc:
            failures.append(exc)
    first, second = failures  # both failed, each with what was read
    assert first is not second and first.values is not second.values
    assert first.values == second.values and first.values
    read = set(second.values)
    first.values.clear()  # one caller changes what it got
    assert second.values == read
