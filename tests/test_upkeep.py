"""A node's periodic upkeep on a virtual clock: it rejoins on its own when its routing table is
empty, a republish that reached nobody is made again once it can, and a store that refuses a
step (a full disk) costs that step only."""

from __future__ import annotations

import logging
import random
from collections.abc import Iterable
from dataclasses import replace

import pytest

from qadom import Config, Identity, StorageFull
from qadom.call import Call
from qadom.contact import Contact
from qadom.events import LookupRequest, LookupStarted
from qadom.ids import key_for
from qadom.messages import Store
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import MemoryStore, Meta

CONFIG = Config(k=8)
MINUTE = CONFIG.maintenance_interval
HOUR = 3600.0


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


def holders(nodes: Iterable[Node], key: int, now: float) -> list[Node]:
    return [n for n in nodes if n.store.get_value(key, now) is not None]


def far_publisher(net: SimNetwork, nodes: list[Node], value: bytes) -> tuple[Node, float]:
    """The node farthest from ``value``'s key publishes it: only the copies it sends answer a
    get. Returns it and when it published."""
    key = key_for(value)
    publisher = max(nodes, key=lambda n: n.id ^ key)
    assert net.run_call(net.call(publisher, publisher.set, value)) == key
    return publisher, net.now


def test_a_publisher_cut_off_at_its_renewal_renews_once_it_reaches_peers_again() -> None:
    net = SimNetwork(seed=21, config=CONFIG)
    nodes = net.add_nodes(24)
    value = b"renewed by a publisher that was away"
    key = key_for(value)
    publisher, published = far_publisher(net, nodes, value)
    others = [n for n in nodes if n is not publisher]
    lookups: list[float] = []
    publisher.add_listener(
        lambda e: lookups.append(e.now) if isinstance(e, LookupStarted) else None)
    # Its network goes down a little before the renewal, and comes back once the copies of the
    # first publication have expired.
    net.run_for(published + CONFIG.publisher_renew_after - 10 * MINUTE - net.now)
    net.partition([publisher], others)
    lookups.clear()
    net.run_for(published + CONFIG.expire_time + 10 * MINUTE - net.now)
    assert holders(others, key, net.now) == []
    # The renewals that reached nobody were made again, but no more than a few lookups an
    # upkeep, and none once its routing table had emptied.
    assert 0 < len(lookups) <= 20 * CONFIG.alpha, len(lookups)
    assert len(publisher.table) == 0
    net.heal()
    back = net.now
    while not len(publisher.table) and net.now < back + HOUR:
        net.run_for(10.0)
    rejoined = net.now
    assert rejoined - back <= 16 * MINUTE  # its next rejoin: the delay doubles up to here
    # Sent to the k closest at its first upkeep with contacts, not a day later.
    net.run_for(2 * MINUTE + CONFIG.operation_timeout)
    assert len(holders(others, key, net.now)) >= CONFIG.k
    # Found after the first copies' lifetime would have ended, and until the next renewal.
    reader = others[0]
    for _ in range(4):
        net.run_for(6 * HOUR)
        assert net.run_call(net.call(reader, reader.get, key)) == value


def restart(net: SimNetwork, node: Node, store: MemoryStore) -> Node:
    """``node`` started again on ``store`` (its id, its items, its saved contacts): a new node
    at the same address, with an empty routing table."""
    again = Node(config=node.config, rng=random.Random(node.id), node_id=node.id, store=store,
                 now=net.now)
    again.address = node.address
    net.nodes[net.address_of(node)] = again
    net.call(again, lambda now: None)  # its first timer armed
    return again


def test_a_publisher_restarted_after_a_day_away_sends_its_items_at_its_first_upkeep() -> None:
    net = SimNetwork(seed=22, config=CONFIG)
    nodes = net.add_nodes(24)
    value = b"published before a day away"
    key = key_for(value)
    publisher, _ = far_publisher(net, nodes, value)
    net.run_call(net.call(publisher, publisher.append, 77, 5))
    me = Identity.from_seed(bytes(32))
    record = me.record(32, b"a namespace record", 0)
    net.run_call(net.call(publisher, publisher.namespace.set, record))
    net.run_for(MINUTE)  # an upkeep saved its contacts
    others = [n for n in nodes if n is not publisher]
    # It stops: what it keeps is its store, which nothing touches while it is down.
    store = publisher.store
    assert isinstance(store, MemoryStore)
    publisher.store = MemoryStore(CONFIG)
    net.partition([publisher], others)
    net.run_for(30 * HOUR)
    assert holders(others, key, net.now) == []
    net.heal()
    again = restart(net, publisher, store)
    assert len(again.table) == 0  # its saved contacts have not answered yet
    net.run_for(2 * MINUTE + CONFIG.operation_timeout)
    assert len(again.table) >= CONFIG.k
    assert len(holders(others, key, net.now)) >= CONFIG.k
    reader = others[0]
    assert net.run_call(net.call(reader, reader.get, key)) == value
    assert net.run_call(net.call(reader, reader.search, 77)) == {5}
    assert net.run_call(net.call(reader, reader.namespace.get, me.public_key, 32)) == record
    # Each was sent once: the republishes reached peers and are next due in a day.
    assert again.stats["republish_missed"] == 0
    assert again.stats["republished"] == 3


def silent_neighbour(value: bytes, republish_at: float, *, original: bool = False,
                     ) -> tuple[Node, int]:
    """A node holding ``value`` (due at ``republish_at``) whose one contact never answers,
    and the value's key."""
    node = Node(config=CONFIG, rng=random.Random(3), node_id=1 << 255)
    node.table.seen(Contact(5, ("127.9.9.9", 4000)))
    key = key_for(value)
    node.store.put_value(key, value, Meta(12 * HOUR, republish_at, original, source="x"))
    return node, key


def run_timers(node: Node, until: float) -> None:
    """Run the node's timers up to ``until``; what it sends is lost."""
    while (at := node.get_timer()) is not None and at <= until:
        node.handle_timer(at)
        node.datagrams_to_send()


def test_a_republish_that_reached_nobody_is_due_again_at_the_next_upkeep() -> None:
    node, key = silent_neighbour(b"due", 10.0)
    run_timers(node, MINUTE)  # the first upkeep republishes it; every request fails
    assert node.stats["republished"] == 1
    assert node.stats["republish_missed"] == 1
    meta = node.store.value_meta(key)
    assert meta is not None and meta.republish_at < MINUTE  # due again, not in an hour
    run_timers(node, 2 * MINUTE)
    assert node.stats["republished"] == 2


def test_a_copy_received_while_a_republish_went_unanswered_keeps_it_off_for_the_hour() -> None:
    """Receiving the item from another storer counts as this hour's republish (section 2.5),
    whatever became of ours."""
    node, key = silent_neighbour(b"due", 10.0)
    at = node.get_timer()
    assert at is not None
    run_timers(node, at)  # the upkeep sends it; the answers are awaited
    assert node.stats["republished"] == 1
    node._handle_store(Store(b"due", 3600), 7, ("127.9.9.8", 4000), at + 0.5)
    run_timers(node, at + CONFIG.operation_timeout)
    assert node.stats["republish_missed"] == 1
    meta = node.store.value_meta(key)
    assert meta is not None and meta.republish_at == at + 0.5 + CONFIG.republish_interval


def test_an_item_forgotten_while_its_renewal_went_unanswered_is_not_sent_again() -> None:
    node, key = silent_neighbour(b"ours", 10.0, original=True)
    at = node.get_timer()
    assert at is not None
    run_timers(node, at)  # the renewal is sent with a fresh lifetime, and goes unanswered
    meta = node.store.value_meta(key)
    assert meta is not None and meta.expires == at + CONFIG.expire_time
    assert node.forget(key)
    run_timers(node, at + HOUR)
    assert node.stats["republish_missed"] == 1
    assert node.stats["republished"] == 1
    meta = node.store.value_meta(key)
    # Not ours any more: gone a lifetime after the last renewal sent, as forget promises.
    assert meta is not None and not meta.original and meta.expires == at + CONFIG.expire_time


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


def test_a_mass_expiry_is_dropped_a_batch_a_second_not_a_batch_an_upkeep() -> None:
    store = MemoryStore(CONFIG)
    store.expire_batch = 10
    node = Node(config=CONFIG, store=store, now=0.0)
    for value in range(35):
        store.add_entry(7, value, Meta(expires=100.0, source="192.0.2.1"))
    start = MINUTE * (100.0 // MINUTE + 1)  # the first upkeep after the entries expired
    node.handle_timer(start)
    assert node.stats["expired"] == 10
    for second in (1.0, 2.0, 3.0):
        node.handle_timer(start + second)
    assert node.stats["expired"] == 35
    assert store.stats()["entries"] == 0
    node.handle_timer(start + 10.0)  # nothing left: no more sweeps between upkeeps
    assert node.stats["expired"] == 35
