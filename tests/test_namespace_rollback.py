"""A namespace key never rolls back to an older ``seq`` once a newer one expires, even when a
peer outside the k closest, which the newer version never reached, took the older one with a
fresh lifetime: a renewal that met one of the k closest unreachable, or a replay. The superseded
publisher sends that peer the newer record, and a peer whose own republish is refused as stale
learns of the newer record from the refusers and stops republishing the older one, so the older
one never outlives the newer (sans-IO, simulated)."""

from __future__ import annotations

from nacl.signing import SigningKey

from qadom import Config
from qadom.namespace import RECORD_KIND, NamespaceRecord, NamespaceStore
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import read_seq, signed_record

OWNER = SigningKey(bytes(range(1, 33)))
PUBLIC = bytes(OWNER.verify_key)
HOUR = 3600.0
DAY = 4 * HOUR
# Lifetimes of 4 hours instead of 24, and k = 3 on 10 nodes, so that a run takes about a second.
CONFIG = Config(k=3, expire_time=DAY, publisher_republish_interval=DAY)
K = CONFIG.k
TICK = CONFIG.maintenance_interval
KEY = 7


def signed(seq: int, value: bytes) -> NamespaceRecord:
    return signed_record(OWNER, KEY, seq, value)


V1, V2 = signed(1, b"one"), signed(2, b"two")
SKEY = V1.storage_key


def network(seed: int) -> tuple[SimNetwork, list[Node]]:
    net = SimNetwork(seed, config=CONFIG)
    nodes = net.add_nodes(10)
    return net, sorted(nodes, key=lambda n: n.id ^ SKEY)  # the closest to the key first


def read(net: SimNetwork, reader: Node) -> int | None:
    return read_seq(net, reader, PUBLIC, KEY)


def publish_both(net: SimNetwork, publisher: Node, writer: Node) -> float:
    """``publisher`` sets seq 1, then ``writer`` (another device of the same owner) seq 2 ten
    minutes later and leaves for good, so that seq 2 expires a lifetime after; when it was
    set."""
    net.run_call(net.call(publisher, publisher.namespace.set, V1))
    net.run_for(600)
    assert net.run_call(net.call(writer, writer.namespace.set, V2)) == K
    net.remove(writer)
    return net.now


def unset_after(net: SimNetwork, reader: Node, expiry: float) -> list[tuple[float, int | None]]:
    """What a get by ``reader`` returns every quarter of an hour from a little after ``expiry``
    for the rest of a lifetime, each with the hours since ``expiry``."""
    net.run_for(max(0.0, expiry + 2 * TICK - net.now))
    seen = []
    while net.now < expiry + DAY:
        seen.append(((net.now - expiry) / HOUR, read(net, reader)))
        net.run_for(HOUR / 4)
    return seen


def test_sim_a_renewal_taken_outside_the_k_closest_does_not_bring_the_older_seq_back() -> None:
    net, nodes = network(seed=3)
    # The k closest, and the next closest: each replica's hourly republish sends seq 2 to the k
    # closest but itself, so the k + 1 closest hold it, and no other peer does.
    replicas, next_closest = nodes[:K], nodes[K]
    publisher, writer, reader = nodes[-1], nodes[-2], nodes[-3]
    written = publish_both(net, publisher, writer)
    meta = publisher.store.record_meta(RECORD_KIND, SKEY)
    assert meta is not None and meta.original
    net.run_for(meta.republish_at - 1 - net.now)
    holders = {n.id for n in nodes if n.namespace.local(SKEY, net.now) == V2}
    assert holders == {n.id for n in nodes[:K + 1]} | {writer.id}

    # The publisher's renewal of seq 1 comes while two of the k + 1 closest cannot be reached:
    # its lookup ends at a peer seq 2 never reached, which takes seq 1 with a fresh lifetime;
    # the replicas reached refuse it, show seq 2, and the publisher stops.
    net.partition([n for n in net.live_nodes() if n not in (replicas[0], next_closest)])
    net.run_for(TICK + 2 * CONFIG.operation_timeout)
    net.heal()
    assert publisher.stats["republished"] == 1
    assert publisher.stats["namespace_superseded"] == 1
    assert publisher.namespace.local(SKEY, net.now) is None  # not one of the k closest
    taken = [n for n in net.live_nodes()
             if n.id not in holders and n.namespace.local(SKEY, net.now) is not None]
    assert taken
    # Each was shown seq 2 in place of the seq 1 it took, with seq 2's own lifetime.
    for outsider in taken:
        assert outsider.namespace.local(SKEY, net.now) == V2
        held = outsider.store.record_meta(RECORD_KIND, SKEY)
        assert held is not None and not held.original and held.expires <= written + DAY + 1

    seen = unset_after(net, reader, written + DAY)
    assert {seq for _, seq in seen} == {None}, seen
    assert all(n.namespace.local(SKEY, net.now) is None for n in net.live_nodes())


def test_sim_a_storer_refused_as_stale_stops_republishing_its_older_seq() -> None:
    net, nodes = network(seed=4)
    replicas, outsider = nodes[:K], nodes[K + 1]  # seq 2 never reaches it (see above)
    publisher, writer, reader, replayer = nodes[-1], nodes[-2], nodes[-3], nodes[-4]
    written = publish_both(net, publisher, writer)

    # Anyone may replay the signed seq 1 with a full lifetime to a peer that holds nothing: the
    # outsider, not one of the k closest, keeps it as a storer and republishes it hourly. Half
    # a lifetime after seq 2 was set, so that seq 1 would outlive it by as much.
    net.run_for(DAY / 2)
    net.call(replayer, replayer.request, outsider.address, NamespaceStore.of(V1, int(DAY)))
    net.run_for(TICK)
    assert outsider.namespace.local(SKEY, net.now) == V1
    # Its first republish is refused by the k closest, which show seq 2: it drops its seq 1 (it
    # is not one of the k closest) and republishes it no more.
    net.run_for(CONFIG.republish_interval + 2 * TICK)
    assert outsider.stats["namespace_superseded"] == 1
    assert outsider.store.get_record(RECORD_KIND, SKEY) is None
    assert all(r.namespace.local(SKEY, net.now) == V2 for r in replicas)

    seen = unset_after(net, reader, written + DAY)
    assert {seq for _, seq in seen} == {None}, seen
    assert all(n.namespace.local(SKEY, net.now) is None for n in net.live_nodes())
