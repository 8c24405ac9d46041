"""A node's periodic upkeep on a virtual clock: it rejoins on its own when its routing table is
empty, and a store that refuses a step (a full disk) costs that step only."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import replace

import pytest

from qadom import Config, StorageFull
from qadom.call import Call
from qadom.contact import Contact
from qadom.events import LookupRequest
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import MemoryStore, Meta

CONFIG = Config(k=8)
MINUTE = CONFIG.maintenance_interval


def empty_table(node: Node) -> None:
    """Drop every contact and replacement, as if each had stopped answering."""
    while len(node.table):
        for contact in node.table.closest(node.id, len(node.table)):
            node.table.remove(contact.id)


def test_an_emptied_table_rejoins_through_the_saved_contacts_once_the_network_is_back(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="qadom")
    net = SimNetwork(seed=11, config=CONFIG)
    nodes = net.add_nodes(16)
    net.run_for(MINUTE + 1)  # one upkeep: every node saved its contacts
    loner = nodes[6]
    others = [n for n in nodes if n is not loner]
    key = net.run_call(net.call(others[0], others[0].set, b"written while it was away"))
    saved = loner.store.load_contacts()
    assert saved
    empty_table(loner)
    net.partition([loner], others)  # its network is down
    net.run_for(30 * MINUTE)
    assert len(loner.table) == 0
    assert loner.store.load_contacts() == saved  # an empty table does not erase its way back
    # It kept trying, with a doubling delay: at 1, 2, 4, 8 and 16 minutes, not every minute.
    assert 3 <= loner.stats["rejoins"] <= 6
    # Said once to the operator, not at every attempt; and said again when it is over.
    said = [r.getMessage() for r in caplog.records if "rejoin" in r.getMessage()]
    assert said == [f"no contacts left: rejoining through {len(saved)} saved contacts until "
                    "one answers"]
    net.heal()
    net.run_for(40 * MINUTE)  # the next attempt comes within the last delay doubled
    assert len(loner.table) >= CONFIG.k
    said = [r.getMessage() for r in caplog.records if "rejoin" in r.getMessage()]
    assert len(said) == 2 and said[1].startswith("rejoined the network: ")
    assert net.run_call(net.call(loner, loner.get, key)) == b"written while it was away"
    # Joined again, it stops rejoining.
    rejoins = loner.stats["rejoins"]
    net.run_for(30 * MINUTE)
    assert loner.stats["rejoins"] == rejoins


def test_a_drained_table_keeps_the_saved_contacts_until_it_holds_k_again() -> None:
    net = SimNetwork(seed=14, config=CONFIG)
    nodes = net.add_nodes(16)
    net.run_for(MINUTE + 1)
    node = nodes[3]
    saved = node.store.load_contacts()
    assert len(saved) > CONFIG.k
    net.partition([node], [n for n in nodes if n is not node])  # its network goes
    for contact in node.table.closest(node.id, len(node.table))[2:]:
        node.table.remove(contact.id)  # contacts failing one by one
    left = list(node.table)
    assert len(left) < CONFIG.k
    net.run_for(MINUTE)  # an upkeep saves the drained table
    now_saved = node.store.load_contacts()
    # Those left come first, topped up with contacts saved before to as many as before.
    assert now_saved[:len(left)] == left
    assert len(now_saved) == len(saved)
    assert len({c.id for c in now_saved}) == len(saved)
    assert all(c in saved for c in now_saved[2:])
    net.heal()
    net.run_for(2 * 3600)  # bucket refresh through the two refills the table
    assert len(node.table) >= CONFIG.k
    net.run_for(MINUTE)
    # With k contacts again, what is saved is the table and nothing else.
    assert sorted(c.id for c in node.store.load_contacts()) == sorted(c.id for c in node.table)


def test_a_first_node_with_nothing_saved_waits_to_be_found() -> None:
    net = SimNetwork(seed=12, config=CONFIG)
    (first,) = net.add_nodes(1)
    net.run_for(10 * MINUTE)
    assert first.stats["rejoins"] == 0
    assert net.sent == 0  # alone and with no contacts saved, it sends nothing


class RefusingStore(MemoryStore):
    """A MemoryStore whose disk is full for ``refused`` keys and for the upkeep's own writes."""

    def __init__(self, config: Config) -> None:
        super().__init__(config)
        self.refused: set[int] = set()
        self.full = False

    def expire(self, now: float) -> int:
        if self.full:
            raise StorageFull("the disk is full")
        return super().expire(now)

    def save_contacts(self, contacts: Iterable[Contact]) -> None:
        if self.full:
            raise StorageFull("the disk is full")
        super().save_contacts(contacts)

    def put_value(self, key: int, value: bytes, meta: Meta) -> None:
        if self.full and key in self.refused:
            raise StorageFull("the disk is full")
        super().put_value(key, value, meta)


def test_upkeep_goes_on_when_the_store_refuses_a_step() -> None:
    net = SimNetwork(seed=13, config=CONFIG)
    nodes = net.add_nodes(12)
    store = RefusingStore(CONFIG)
    node = net.add_node()
    node.store = store
    net.run_call(net.call(node, node.bootstrap, [net.address_of(nodes[0])]))
    keys = [net.run_call(net.call(node, node.set, b"item %d" % i)) for i in range(4)]
    net.run_for(MINUTE + 1)  # one upkeep saves the contacts before the disk fills
    saved = store.load_contacts()
    assert saved
    store.full = True
    store.refused = {keys[0]}
    before = node.stats["republished"]
    dead = ("127.9.9.9", 4000)
    node._contact_failed(dead, None, net.now)  # bookkeeping the upkeep must still prune
    net.run_for(25 * 3600)  # past the publisher's 24-hour renewal and an hourly refresh
    assert node.stats["internal_errors"] == 0
    assert node.stats["storage_errors"] > 0
    # The refused item did not stop the others' republish, nor the bucket refresh and pruning.
    assert node.stats["republished"] - before >= 3
    assert dead not in node._dead
    assert not node.table.stale_buckets(net.now, CONFIG.refresh_interval + 2 * MINUTE)
    holders = [n for n in nodes if n.store.get_value(keys[1], net.now) is not None]
    assert holders  # renewed by the publisher, so still alive at 25 hours
    assert store.load_contacts() == saved  # the refused saves changed nothing


def test_one_failed_request_does_not_put_a_live_peer_in_backoff_two_in_a_row_do() -> None:
    # Small buckets, so that the peer is one the routing table would drop at its first failure
    # (outside the table, or in a bucket with a replacement waiting).
    net = SimNetwork(seed=14, config=replace(CONFIG, k=4))
    nodes = net.add_nodes(24)
    asker = nodes[0]
    # A peer outside the table, whose bucket is full: answering, it can only wait as a
    # replacement.
    peer = next(n for n in nodes[1:] if asker.table.get(n.id) is None
                and len(asker.table.bucket_for(n.id).contacts) >= 4)
    target = peer.id
    asked: list[int] = []
    asker.add_listener(lambda e: asked.append(e.contact.id)
                       if isinstance(e, LookupRequest) else None)

    def lookup_asks_peer() -> bool:
        asked.clear()
        net.run_call(net.call(asker, asker.find_nodes, target))
        return peer.id in asked

    others = [n for n in nodes if n is not peer]
    assert lookup_asks_peer()
    net.partition(others, [peer])  # its replies are lost: the next lookup's request fails
    lookup_asks_peer()
    assert asker.stats["timeouts"] >= 1
    net.heal()
    assert lookup_asks_peer()  # one failure under loss is not a departure: still asked
    net.partition(others, [peer])
    lookup_asks_peer()  # fails once: counted afresh after the answer above
    net.heal()
    assert lookup_asks_peer()
    net.partition(others, [peer])
    lookup_asks_peer()
    lookup_asks_peer()  # a second failure in a row: given up for dead_backoff
    net.heal()
    assert not lookup_asks_peer()
    net.run_for(CONFIG.dead_backoff)
    assert lookup_asks_peer()


def test_publish_subscribe_under_loss_delivers_nearly_every_message() -> None:
    # Each publish looks its topic up again; under 10% loss some of those requests fail. When
    # one failure put a peer in backoff, the publisher soon skipped most of the topic's true
    # closest nodes, and a quarter of the messages missed every relay of the subscribers.
    config = replace(CONFIG, k=5, pubsub_lease=3.0)
    net = SimNetwork(seed=1, config=config)
    nodes = net.add_nodes(40)
    net.loss, net.duplicate, net.reorder = 0.1, 0.1, 0.3
    topic = net.rng.getrandbits(256)
    subscribers, publisher = nodes[1:4], nodes[10]
    got: dict[int, list[bytes]] = {n.id: [] for n in subscribers}
    for node in subscribers:
        def start(now: float, node: Node = node) -> Call[int]:
            return node.pubsub.subscribe(topic, got[node.id].append, now)[1]
        net.run_call(net.call(node, start))
    sent = 300
    for i in range(sent):
        net.call(publisher, publisher.pubsub.publish, topic, b"%d" % i)
        net.run_for(0.1)
    net.run_for(5.0)
    for node in subscribers:
        received = got[node.id]
        assert len(received) == len(set(received))  # never twice
        assert len(received) >= 0.95 * sent, len(received)
