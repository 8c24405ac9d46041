"""Where a lookup may be sent: never to a multicast or broadcast address, nor through an IPv6
address to an IPv4 one narrower in scope than the peer that named it; and at most two requests
per lookup to one address, however many ids peers name at it (docs/SECURITY.md)."""

from __future__ import annotations

import random
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from qadom import Config
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import GLOBAL, LOCAL, LOOPBACK, Address, Contact, address_scope
from qadom.lookup import Lookup, State
from qadom.messages import Envelope, Message, Nodes
from qadom.node import Node
from qadom.routing import network_prefix

CODEC = Codec(Config())


NOWHERE = LOOPBACK - 1
"""No peer's address (qadom.contact.NOWHERE): narrower than every scope a peer stands at."""


@pytest.mark.parametrize(("host", "scope"), [
    ("224.0.0.1", NOWHERE),  # every host of our LAN, this one included
    ("239.255.255.250", NOWHERE),  # SSDP
    ("ff02::1", NOWHERE),  # every node of the link
    ("ff02::1%eth0", NOWHERE),
    ("ff0e::1", NOWHERE),
    ("::ffff:224.0.0.1", NOWHERE),
    ("255.255.255.255", NOWHERE),
    ("240.0.0.1", LOCAL),  # reserved
    ("4000::1", LOCAL),  # reserved
    ("fec0::1", LOCAL),  # site-local
    ("0.0.0.0", LOOPBACK),
    ("::", LOOPBACK),
    # NAT64's well-known prefix: what the translator sends it on to.
    ("64:ff9b::7f00:1", LOOPBACK),
    ("64:ff9b::c0a8:101", LOCAL),
    ("64:ff9b::e000:1", NOWHERE),
    ("64:ff9b::808:808", GLOBAL),
    ("64:ff9b:1::808:808", LOCAL),  # the local-use NAT64 prefix
    # 6to4: the IPv4 address that tunnels it.
    ("2002:7f00:1::1", LOOPBACK),
    ("2002:c0a8:101::1", LOCAL),
    ("2002:808:808::1", GLOBAL),
    # Teredo: its client's IPv4 address (stored inverted), at most LOCAL.
    ("2001:0:4136:e378:8000:63bf:80ff:fffe", LOOPBACK),
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", LOCAL),
    # IPv4-compatible (deprecated): at most LOCAL.
    ("::127.0.0.1", LOOPBACK),
    ("::8.8.8.8", LOCAL),
    ("8.8.8.8", GLOBAL),
    ("2a00:1450::1", GLOBAL),
    ("192.168.1.1", LOCAL),
    ("127.0.0.1", LOOPBACK),
])
def test_an_address_is_rated_by_what_a_datagram_sent_to_it_reaches(host: str,
                                                                 scope: int) -> None:
    assert address_scope(host) == scope


def test_an_address_that_embeds_a_public_ipv4_address_is_of_that_ones_network() -> None:
    # One IPv4 address holds a whole 6to4 /48, and every NAT64 address is in one /64: their
    # network, for the diversity limits, is their IPv4 address's /24.
    assert network_prefix("2002:808:808::1") == "8.8.8.0/24"
    assert network_prefix("2002:808:808:ffff::1") == "8.8.8.0/24"
    assert network_prefix("64:ff9b::808:909") == "8.8.9.0/24"
    assert network_prefix("8.8.8.9") == "8.8.8.0/24"
    assert network_prefix("2a00:1450::1") == "2a00:1450::/64"
    for host in ("224.0.0.1", "ff02::1", "255.255.255.255", "2002:c0a8:101::1",
                 "64:ff9b::7f00:1", "::8.8.8.8", "fec0::1"):
        assert network_prefix(host) is None, host


# What each namer may send a lookup to, of the addresses _NAMED holds: multicast and broadcast
# for nobody; an IPv6 address that reaches a narrower IPv4 one only for a peer of that scope.
_NAMED = ["224.0.0.1", "ff02::1", "239.255.255.250", "::ffff:224.0.0.251", "255.255.255.255",
          "64:ff9b::7f00:1", "2002:c0a8:101::1", "5.6.7.8"]
_FOLLOWED = {
    "1.1.1.1": ["5.6.7.8"],
    "10.0.0.1": ["2002:c0a8:101::1", "5.6.7.8"],
    "127.0.0.1": ["64:ff9b::7f00:1", "2002:c0a8:101::1", "5.6.7.8"],
}


@pytest.mark.parametrize("namer", sorted(_FOLLOWED))
def test_no_peer_sends_a_lookup_to_a_multicast_or_broadcast_address(namer: str) -> None:
    """A peer on the Internet, on a private network or on this machine names multicast and
    broadcast addresses, and IPv6 ones that carry datagrams to loopback or private IPv4
    addresses: none is asked but what the peer's own scope allows, and each left out is
    counted."""
    node = Node(node_id=0, now=0.0)
    target = 1 << 200
    peer = Contact(target ^ (1 << 100), (namer, 4000))
    node.table.seen(peer)
    named = tuple(Contact(target ^ (i + 1), (host, 4000)) for i, host in enumerate(_NAMED))
    ids = {c.address: c.id for c in (peer, *named)}
    call = node.find_nodes(target, 0.0)
    asked = _play(node, call, lambda address: (ids[address], Nodes(
        named if address == peer.address else ())))
    assert call.done
    assert sorted(host for host, _ in asked) == sorted([namer, *_FOLLOWED[namer]])
    assert node.stats["contacts_out_of_scope"] == len(_NAMED) - len(_FOLLOWED[namer])


def _play(node: Node, call: Call[Any],
          reply: Callable[[Address], tuple[int, Message] | None]) -> Counter[Address]:
    """Answer what ``node`` asks with ``reply(address)`` (None: silence) on a virtual clock that
    jumps to the node's timers when nobody answers, until ``call`` is done. Returns the number
    of requests (not datagrams: a resend is the same request) each address was sent."""
    now = 0.0
    requests: dict[Address, set[int]] = defaultdict(set)
    for _ in range(500):
        if call.done:
            return Counter({address: len(ids) for address, ids in requests.items()})
        out = node.datagrams_to_send()
        if not out:
            timer = node.get_timer()
            assert timer is not None
            now = max(now, timer)
            node.handle_timer(now)
            continue
        now += 0.01
        for data, address in out:
            request = CODEC.decode(data)
            if not request.message.IS_REQUEST:
                continue
            requests[address].add(request.rpc_id)
            answer = reply(address)
            if answer is not None:
                sender, message = answer
                node.datagram_received(CODEC.encode(Envelope(request.rpc_id, sender, message)),
                                       address, now)
    raise AssertionError("the call did not end")


_VICTIM = ("5.5.5.5", 4000)


@pytest.mark.parametrize("victim_answers", [False, True])
def test_ids_named_at_one_address_cost_it_one_request_and_are_asked_where_they_are(
        victim_answers: bool) -> None:
    """A hostile peer, asked first, names the 20 ids closest to the target all at one address
    (silent, or an honest node answering with its own id); an honest peer names them at their
    real addresses. The address gets one request in the lookup, and the lookup still finds
    the 20 where they are."""
    node = Node(node_id=0, now=0.0)
    target = 1 << 200
    attacker = Contact(target ^ (1 << 190), ("1.2.3.1", 4000))  # the closest we know
    honest = Contact(target ^ (1 << 196), ("8.8.8.1", 4000))
    truths = [Contact(target ^ (1 << 100) ^ i, (f"9.9.{i}.1", 4000)) for i in range(1, 21)]
    fakes = tuple(Contact(t.id, _VICTIM) for t in truths)
    node.table.seen(attacker)
    node.table.seen(honest)
    ids = {c.address: c.id for c in (attacker, honest, *truths)}
    named = {attacker.address: fakes, honest.address: tuple(truths)}
    answered = set()

    def reply(address: Address) -> tuple[int, Message] | None:
        if address == _VICTIM:
            return (12345, Nodes(())) if victim_answers else None
        if address == honest.address and attacker.address not in answered:
            return None  # its answer comes after the attacker's: the resend is answered
        answered.add(address)
        return ids[address], Nodes(named.get(address, ()))

    call = node.find_nodes(target, 0.0)
    asked = _play(node, call, reply)
    assert asked[_VICTIM] == 1
    assert sorted(call.result(), key=lambda c: c.id) == truths


@pytest.mark.parametrize("victim_first", [False, True])
def test_an_honest_node_at_an_address_named_for_many_ids_gets_two_requests(
        victim_first: bool) -> None:
    """A hostile peer names 19 fake ids at an honest node's address, and that node's own id
    there too. Farther from the target than the fakes, the node gets the request for the
    closest fake, answers it with its own id, and gets one more, for that id; closer, it gets
    the request for its id and one for the closest fake, which it answers with its own id. The
    lookup finds it either way, and asks nothing more there."""
    node = Node(node_id=0, now=0.0, config=replace(Config(), alpha=1))
    target = 1 << 200
    attacker = Contact(target ^ (1 << 190), ("1.2.3.1", 4000))
    victim = Contact(target ^ (0 if victim_first else 1 << 120), _VICTIM)
    fakes = tuple(Contact(target ^ i, _VICTIM) for i in range(1, 20))
    node.table.seen(attacker)

    def reply(address: Address) -> tuple[int, Message] | None:
        if address == attacker.address:
            return attacker.id, Nodes((*fakes, victim))
        return victim.id, Nodes(())

    call = node.find_nodes(target, 0.0)
    asked = _play(node, call, reply)
    assert asked == {attacker.address: 1, _VICTIM: 2}
    assert call.result() == [victim, attacker]
    assert node.stats["wrong_id"] == 1


def test_a_fake_id_named_at_an_honest_peers_address_does_not_hide_it() -> None:
    """A hostile peer names an id closer to the target than the true closest peer, at that
    peer's address; an honest peer names the true one there too. The address answers the fake
    with its own id, and the lookup then asks it as itself, and finds it."""
    node = Node(node_id=0, now=0.0, config=replace(Config(), alpha=1))
    target = 1 << 200
    attacker = Contact(target ^ (1 << 190), ("1.2.3.1", 4000))
    honest = Contact(target ^ (1 << 196), ("8.8.8.1", 4000))
    truth = Contact(target ^ (1 << 100), ("9.9.9.1", 4000))
    fake = Contact(target ^ 1, truth.address)
    node.table.seen(attacker)
    node.table.seen(honest)
    ids = {c.address: c.id for c in (attacker, honest, truth)}
    named = {attacker.address: (fake,), honest.address: (truth,)}
    call = node.find_nodes(target, 0.0)
    asked = _play(node, call, lambda address: (ids[address], Nodes(named.get(address, ()))))
    assert asked[truth.address] == 2
    assert call.result() == [truth, attacker, honest]


def test_a_lookup_asks_one_address_once_at_a_time_and_twice_at_most() -> None:
    """Ids named at random addresses, many ids at each; outcomes (the address answering as
    another id among them, late ones of addresses left too) in random order. At every step: no
    two requests are out to one address; an address is asked at most twice, the second time
    only if the first was answered, by the id asked or by the second's; each network's share
    counts the candidates of it that have not failed; and the lookup ends."""
    rng = random.Random(2025)
    for _ in range(300):
        k, alpha = rng.randint(1, 6), rng.randint(1, 4)
        hosts = [f"10.{rng.randrange(3)}.0.{rng.randrange(3)}" for _ in range(4)]
        seen: list[Contact] = []  # every contact named

        def named(hosts: list[str] = hosts, seen: list[Contact] = seen) -> Contact:
            seen.append(Contact(rng.randrange(1, 30), (rng.choice(hosts), 9000)))
            return seen[-1]

        lookup = Lookup(0, k=k, alpha=alpha, initial=[named() for _ in range(4)],
                        network=lambda c: c.address[0].rsplit(".", 1)[0], max_per_network=2,
                        max_requests=80)
        asked: dict[Address, list[int]] = defaultdict(list)
        answered_as: dict[Address, int] = {}  # the first request's answer, from its address
        outcomes: list[Contact] = []
        for _ in range(200):
            for cand in lookup.next_requests():
                asked[cand.contact.address].append(cand.contact.id)
                outcomes.append(cand.contact)
            out = Counter(c.contact.address for c in lookup.candidates()
                          if c.state in (State.IN_FLIGHT, State.STALLED))
            assert max(out.values(), default=0) <= 1
            for address, ids in asked.items():
                assert len(ids) <= 2
                if len(ids) == 2:
                    assert answered_as.get(address) in (ids[0], ids[1])
            shares = Counter(c.contact.address[0].rsplit(".", 1)[0] for c in lookup.candidates()
                             if c.state is not State.FAILED)
            assert shares == lookup._per_network
            if lookup.finished:
                break
            contact = rng.choice(outcomes)
            known = lookup._by_id.get(contact.id)
            pending = (known is not None and known.contact.address == contact.address
                       and known.state in (State.IN_FLIGHT, State.STALLED))
            first = pending and len(asked[contact.address]) == 1
            roll = rng.random()
            if roll < 0.4:
                if first:
                    answered_as[contact.address] = contact.id
                lookup.on_reply(contact, [named() for _ in range(rng.randint(0, 6))])
            elif roll < 0.55:
                lookup.on_stall(contact)
            elif roll < 0.75 or len(asked[contact.address]) > 1:
                lookup.on_failure(contact)
            else:  # the address answers as another id, one named there most often
                other = rng.choice([c.id for c in seen if c.address == contact.address
                                    and c.id != contact.id] or [rng.randrange(30, 40)])
                if first:
                    answered_as[contact.address] = other
                lookup.on_failure(contact, other)
        assert lookup.finished
