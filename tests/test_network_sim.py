"""500 real nodes on a virtual network: lookups return the true k closest; data is found."""

from __future__ import annotations

import random

import pytest

from qadom.node import Node
from qadom.sim import SimNetwork


@pytest.fixture(scope="module")
def net500() -> tuple[SimNetwork, list[Node]]:
    net = SimNetwork(seed=42)
    return net, net.add_nodes(500)


def test_500_nodes_lookups_find_the_true_k_closest(net500: tuple[SimNetwork, list[Node]]) -> None:
    net, nodes = net500
    rng = random.Random(7)
    for _ in range(100):
        target = rng.getrandbits(256)
        asker = rng.choice(nodes)
        result = net.run_call(net.call(asker, asker.find_nodes, target))
        truth = sorted((n.id for n in nodes if n is not asker), key=lambda i: i ^ target)[:20]
        assert [c.id for c in result] == truth
    for node in nodes:
        node.table.check_invariants()
        assert node.stats["internal_errors"] == 0 and node.stats["malformed"] == 0


def test_values_and_sets_across_500_nodes(net500: tuple[SimNetwork, list[Node]]) -> None:
    net, nodes = net500
    rng = random.Random(8)
    keys = []
    for i in range(30):
        writer = rng.choice(nodes)
        keys.append((net.run_call(net.call(writer, writer.set, f"value {i}".encode())), i))
    for key, i in keys:
        reader = rng.choice(nodes)
        assert net.run_call(net.call(reader, reader.get, key)) == f"value {i}".encode()
    for i in range(20):
        writer = rng.choice(nodes)
        net.run_call(net.call(writer, writer.append, 777, i))
    reader = rng.choice(nodes)
    assert net.run_call(net.call(reader, reader.search, 777)) == set(range(20))
