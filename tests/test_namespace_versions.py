"""A namespace key's versions only move forward across lifetimes: the publisher of an older
``seq`` stops renewing it once a newer one of the same key is proven to exist, so the newer one
lives by its own publisher's lifetime and the older one never comes back (sans-IO, simulated)."""

from __future__ import annotations

from typing import Any

import pytest
from nacl.signing import SigningKey

from qadom import Config
from qadom.messages import Error, ErrorCode, Message
from qadom.namespace import RECORD_KIND, NamespaceRecord, NamespaceStore
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import read_seq, signed_record

OWNER = SigningKey(bytes(range(32)))
PUBLIC = bytes(OWNER.verify_key)
HOUR = 3600.0
DAY = 4 * HOUR
# Lifetimes of 4 hours instead of 24, so that three of them run in well under a second.
CONFIG = Config(k=8, expire_time=DAY, publisher_republish_interval=DAY)
TICK = CONFIG.maintenance_interval
KEY = 42


def signed(seq: int, value: bytes) -> NamespaceRecord:
    return signed_record(OWNER, KEY, seq, value)


V1, V2 = signed(1, b"one"), signed(2, b"two")
SKEY = V1.storage_key


def network(seed: int) -> tuple[SimNetwork, list[Node]]:
    net = SimNetwork(seed, config=CONFIG)
    nodes = net.add_nodes(20)
    return net, sorted(nodes, key=lambda n: n.id ^ SKEY)  # the closest to the key first


def read(net: SimNetwork, reader: Node) -> int | None:
    return read_seq(net, reader, PUBLIC, KEY)


def reads(net: SimNetwork, reader: Node, since: float,
          until: float) -> list[tuple[float, int | None]]:
    """What a get by ``reader`` returns every quarter of an hour until ``until``, each with the
    hours since ``since``."""
    seen: list[tuple[float, int | None]] = []
    while net.now + HOUR / 4 <= until:
        net.run_for(HOUR / 4)
        seen.append(((net.now - since) / HOUR, read(net, reader)))
    return seen


def publish_both(net: SimNetwork, publisher: Node, writer: Node) -> float:
    """``publisher`` sets seq 1, then ``writer`` (another device of the same owner) seq 2 ten
    minutes later; when that was."""
    net.run_call(net.call(publisher, publisher.namespace.set, V1))
    net.run_for(600)
    assert net.run_call(net.call(writer, writer.namespace.set, V2)) == CONFIG.k
    return net.now


def test_sim_a_far_publisher_refused_with_a_newer_seq_stops_renewing_its_older_one() -> None:
    net, nodes = network(seed=5)
    publisher, writer, reader = nodes[-1], nodes[-2], nodes[3]  # neither writer is a replica
    written = publish_both(net, publisher, writer)
    net.remove(writer)  # gone for good: nobody renews seq 2

    seen = reads(net, reader, written, written + 3 * DAY)
    # Seq 2 lives its lifetime; the publisher's renewal of seq 1 inside it is refused, seq 2
    # shown, so it stops: from then on the key is unset, never rolled back to seq 1.
    assert {seq for hours, seq in seen if hours < DAY / HOUR} == {2}
    assert {seq for hours, seq in seen if hours > (DAY + 2 * TICK) / HOUR} == {None}, seen
    assert publisher.stats["namespace_superseded"] == 1
    assert publisher.store.get_record(RECORD_KIND, SKEY) is None  # not one of the k closest
    assert publisher.namespace.forget(PUBLIC, KEY) is False


@pytest.mark.parametrize("ends", ["leave", "forget"])
def test_sim_a_near_publisher_keeps_a_newer_seq_only_for_its_own_lifetime(ends: str) -> None:
    net, nodes = network(seed=6)
    publisher, writer, reader = nodes[0], nodes[-1], nodes[5]
    written = publish_both(net, publisher, writer)
    held, meta = publisher.namespace.local(SKEY), publisher.store.record_meta(RECORD_KIND, SKEY)
    if ends == "leave":
        net.remove(writer)
        lived = DAY  # from its set
    else:
        net.run_for(1.5 * DAY)  # the writer renewed it once
        assert writer.stats["republished"] >= 1
        assert writer.namespace.forget(PUBLIC, KEY) is True
        lived = DAY + CONFIG.publisher_renew_after  # from its last renewal

    seen = reads(net, reader, written, written + lived + 2 * DAY)
    assert {seq for hours, seq in seen if hours < (lived - TICK) / HOUR} == {2}
    assert {seq for hours, seq in seen if hours > (lived + 2 * TICK) / HOUR} == {None}, seen
    assert all(n.namespace.local(SKEY, net.now) is None for n in net.live_nodes())
    # The replica that had published seq 1 kept seq 2 as a storer, with the writer's lifetime.
    assert held == V2
    assert meta is not None and not meta.original
    assert abs(meta.expires - (written + DAY)) < 5


def test_sim_a_refusal_without_a_newer_record_does_not_end_a_renewal() -> None:
    # A replica that refuses every write as stale, and shows nothing newer when asked, cannot
    # stop the publisher's renewals: a refusal costs nothing to send.
    net, nodes = network(seed=7)
    publisher, liar = nodes[-1], nodes[0]

    def refuse(message: NamespaceStore, sender: int | None, address: Any, now: float) -> Message:
        return Error(ErrorCode.STALE_SEQUENCE, "a newer seq is stored, trust me")

    net.run_call(net.call(publisher, publisher.namespace.set, V1))
    liar.register_handler(NamespaceStore, refuse)
    net.run_for(1.5 * DAY)  # past the first renewal
    assert publisher.stats["republished"] >= 1
    assert publisher.stats["namespace_unproven_refusals"] >= 1
    assert publisher.stats["namespace_superseded"] == 0
    meta = publisher.store.record_meta(RECORD_KIND, SKEY)
    assert meta is not None and meta.original
    assert read(net, nodes[4]) == 1
