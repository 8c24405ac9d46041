"""What remote peers can make a node hold, and what it costs per datagram: every structure that
grows with remote input stays within a bound, and the work per reply does not grow with it.

Driven sans-IO with made-up addresses and a virtual clock; every loop is bounded."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import pytest

import qadom.lookup as lookup_module
from qadom.codec import Codec
from qadom.config import Config
from qadom.contact import Address, Contact
from qadom.lookup import Lookup, State
from qadom.messages import Envelope, FindNode, Message, Nodes, Ping, Pong
from qadom.node import Node
from qadom.routing import network_prefix

from helpers import answer_requests


def _ids_closing_in(start: int) -> Iterator[int]:
    """Ids ever closer to target 0: each new one closer than every one before."""
    node_id = start
    while True:
        node_id -= 1
        yield node_id


def _v6(n: int) -> str:
    """A public IPv6 address in its own /64 (2001:db8::/32 is documentation space, which
    Python counts as not global; 2a00::/12 is global)."""
    return f"2a00:{n >> 16 & 0xffff:x}:{n & 0xffff:x}:1::1"


@pytest.fixture
def distance_calls(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Counts how many candidates a lookup's sorts visit (one key call per candidate)."""
    calls: Counter[str] = Counter()
    real = lookup_module._DISTANCE

    def counting(cand: Any) -> int:
        calls["visited"] += 1
        return int(real(cand))

    monkeypatch.setattr(lookup_module, "_DISTANCE", counting)
    return calls


def _answer_with_new(lookup: Lookup, fresh: Iterator[int], named: int, replies: int,
                     contact: Callable[[int], Contact]) -> int:
    """Answer every request of ``lookup`` with ``named`` contacts never named before, for at
    most ``replies`` replies; returns how many replies were given."""
    given = 0
    while given < replies:
        asked = lookup.next_requests()
        if not asked:
            break
        for cand in asked:
            lookup.on_reply(cand.contact, [contact(next(fresh)) for _ in range(named)])
            given += 1
    return given


def _loopback(node_id: int) -> Contact:
    return Contact(node_id, ("127.0.0.1", 1 + node_id % 60000))


def test_a_lookup_keeps_a_bounded_number_of_candidates_and_each_reply_costs_the_same(
        distance_calls: Counter[str]) -> None:
    fresh = _ids_closing_in(1 << 200)
    lookup = Lookup(0, k=20, alpha=3, initial=[_loopback(next(fresh)) for _ in range(20)])
    _answer_with_new(lookup, fresh, 64, 100, _loopback)
    early = distance_calls["visited"]
    _answer_with_new(lookup, fresh, 64, 100, _loopback)
    late = distance_calls["visited"] - early
    # 200 replies named 12 800 contacts: a lookup keeps a fixed number of them...
    assert len(lookup.candidates()) <= 1024
    # ...so the next 100 replies cost what the first 100 did (a generous factor, no timing).
    assert late <= 2 * max(early, 100 * 1100)


def test_a_lookup_fed_ever_closer_contacts_that_answer_stops_asking() -> None:
    fresh = _ids_closing_in(1 << 200)
    lookup = Lookup(0, k=20, alpha=3, initial=[_loopback(next(fresh)) for _ in range(20)])
    given = _answer_with_new(lookup, fresh, 1, 3000, _loopback)
    assert given < 3000 and lookup.requests <= 512
    assert lookup.finished
    # It still reports the closest that answered, closest first.
    closest = lookup.closest()
    assert len(closest) == 20 and closest == sorted(closest, key=lambda c: c.id)


def test_trimming_keeps_the_k_closest_answers_in_flight_and_network_shares() -> None:
    fresh = _ids_closing_in(1 << 200)
    lookup = Lookup(0, k=4, alpha=3, initial=[_loopback(next(fresh)) for _ in range(4)],
                    network=lambda c: network_prefix(c.address[0]), max_per_network=2)
    counter = iter(range(1, 10**6))

    def public(node_id: int) -> Contact:
        return Contact(node_id, (_v6(next(counter) // 3), 4000))  # three per /64: one refused

    asked = lookup.next_requests()
    for cand in asked[1:]:
        lookup.on_reply(cand.contact, [public(next(fresh)) for _ in range(64)])
    in_flight = asked[0].contact
    for _ in range(40):
        more = lookup.next_requests()
        if not more:
            break
        for cand in more:
            lookup.on_reply(cand.contact, [public(next(fresh)) for _ in range(63)])
    cands = lookup.candidates()
    assert len(cands) <= 1024
    assert any(c.contact == in_flight and c.state is State.IN_FLIGHT for c in cands)
    shares = Counter(network_prefix(c.contact.address[0]) for c in cands
                     if c.state is not State.FAILED)
    shares.pop(None, None)
    assert dict(shares) == lookup._per_network  # the shares of forgotten candidates are free
    refused = sum(len(kept) for kept in lookup._refused.values())
    assert lookup.crowded > 1024 and refused <= 1024


def test_a_node_lookup_that_hostile_peers_keep_feeding_ends() -> None:
    rng = random.Random(7)
    node = Node(rng=rng, node_id=1 << 255, config=Config(max_lookup_contacts_per_prefix=0,
                                                         lookup_max_requests=100))
    codec = Codec(node.config)
    fresh = _ids_closing_in(1 << 200)
    port = iter(range(1, 60000))
    for _ in range(20):
        node.table.seen(Contact(next(fresh), ("10.0.0.1", next(port))))
    call = node.find_nodes(0, 0.0)

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        assert isinstance(message, FindNode)
        named = tuple(Contact(next(fresh), ("10.0.0.2", next(port))) for _ in range(8))
        return asked_ids[address], Nodes(named)

    asked_ids: dict[Address, int] = {c.address: c.id for c in node.table}
    original = Node.request

    def remember(self: Node, address: Address, message: Message, now: float,
                 **kw: Any) -> int:
        if kw.get("expect_id") is not None:
            asked_ids[address] = kw["expect_id"]
        return original(self, address, message, now, **kw)

    node.request = remember.__get__(node)  # type: ignore[method-assign]
    asked = answer_requests(node, codec, reply, 0.0, rounds=400)
    assert call.done and call.result() and len(asked) <= 100 + 20


def test_lookup_seeds_cost_does_not_follow_the_addresses_in_backoff() -> None:
    def seed_widths(dead: int) -> list[int]:
        node = Node(rng=random.Random(3), node_id=0)
        for i in range(1, 101):
            node.table.seen(Contact(i << 240, ("10.0.1.1", i)))
        node._dead.update({("10.9.9.9", 1 + i % 60000) if i < 60000 else (f"10.8.{i >> 16}.1",
                                                                          i & 0xffff): 1e9
                           for i in range(dead)})
        widths: list[int] = []
        closest = node.table.closest

        def counting(target: int, count: int, exclude: int | None = None) -> list[Contact]:
            widths.append(count)
            return closest(target, count, exclude)

        node.table.closest = counting  # type: ignore[method-assign]
        node.find_nodes(5 << 240, 0.0)
        return widths

    assert seed_widths(100_000) == seed_widths(100) == [20]


def test_seeds_skip_table_contacts_in_backoff() -> None:
    node = Node(rng=random.Random(3), node_id=0)
    for i in range(1, 101):
        node.table.seen(Contact(i, ("10.0.1.1", i)))
    for i in range(1, 31):
        node._dead[("10.0.1.1", i)] = 1e9
    node.find_nodes(0, 0.0)
    asked = {address[1] for _, address in node.datagrams_to_send()}
    assert asked == {31, 32, 33}  # alpha of the closest not in backoff


def test_a_flood_from_many_addresses_stays_within_every_bound() -> None:
    cfg = Config(rate_limit_senders=100, max_tokens=100, max_verifying=100,
                 max_failure_counts=100)
    node = Node(config=cfg, rng=random.Random(5), node_id=1 << 255)
    codec = Codec(cfg)
    rng = random.Random(6)
    now = 0.0
    for n in range(3000):
        host = _v6(n) if n % 2 else f"93.{n >> 8 & 255}.{n & 255}.7"
        ping = Envelope(rng.getrandbits(64), rng.getrandbits(256), Ping(), None, 48)
        node.datagram_received(codec.encode(ping), (host, 4000 + n % 7), now)
        # A reply to a request never made, from the same address.
        stray = Envelope(rng.getrandbits(64), rng.getrandbits(256), Pong(), b"t" * 16)
        node.datagram_received(codec.encode(stray), (host, 4000), now)
        now += 0.01
        node.handle_timer(now)
    node.datagrams_to_send()
    for step in range(200):  # let every verification ping run out
        node.handle_timer(now + step)
    assert node.stats["unexpected"] == 3000
    assert len(node._address_rate) <= 100 and len(node._host_rate) <= 100
    assert len(node._granted) <= 100 and len(node._tokens) == 0
    assert len(node._verifying) <= 100 and len(node._failures) <= 100
    assert len(node._pending) == 0 and len(node.table) == 0
