"""The soak of tests/test_soak.py on a smaller, rougher network: its checks hold when datagrams
are also duplicated and reordered, on top of a higher loss.

24 nodes (k = 8) run two virtual days with the same churn and workload as the soak, over a
network that loses 5% of the datagrams, delivers 5% twice (the copy with its own delay) and holds
20% back by up to half a second, so that later ones overtake them. Every request may then be
answered twice, a STORE or an APPEND arrive twice, a published message reach a relay twice and
a resend overtake its first attempt. What the soak requires still holds: what is published is
found while it lives and gone after, every subscriber gets every message once and in order,
what the network stores stays level, and no node meets an internal error.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import test_soak as soak_checks
from test_soak import ErrorLog, Soak, run_logged

SEED = 3
HOURS = 48


@pytest.fixture(scope="module")
def rough() -> Iterator[tuple[Soak, ErrorLog]]:
    scenario = Soak(SEED, nodes=24, loss=0.05)
    net = scenario.net
    net.duplicate, net.reorder, net.reorder_delay = 0.05, 0.2, 0.5
    yield from run_logged(scenario, HOURS)


def test_the_network_duplicated_and_reordered_datagrams(rough: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = rough
    net = scenario.net
    stats = net.stats()
    assert stats["duplicated"] > 0.04 * stats["sent"]
    assert stats["dropped"] > 0.04 * stats["sent"]
    assert len(net.down) >= 60 and len(scenario.checkpoints) == HOURS // 6
    assert scenario.errors == []
    assert all(p.live >= 20 for p in scenario.checkpoints)


def test_what_is_published_is_found_while_it_lives_and_then_is_gone(
        rough: tuple[Soak, ErrorLog]) -> None:
    soak_checks.test_what_is_published_is_found_while_it_lives_and_then_is_gone(rough)


def test_every_subscriber_gets_every_message_once(rough: tuple[Soak, ErrorLog]) -> None:
    scenario, _ = rough
    assert len(scenario.published) == HOURS and len(scenario.received) == 3
    for received in scenario.received.values():
        assert received == scenario.published


def test_what_the_network_stores_stays_level(rough: tuple[Soak, ErrorLog]) -> None:
    soak_checks.test_what_the_network_stores_stays_level(rough)


def test_no_node_met_an_internal_error(rough: tuple[Soak, ErrorLog]) -> None:
    soak_checks.test_no_node_met_an_internal_error(rough)
