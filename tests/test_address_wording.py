"""How addresses are named to the user: an IP address of the other family than a peer's socket is
said to be one (not a name that failed to resolve), a bootstrap list skips such addresses when it
holds others, IPv6 addresses are written in brackets ([::1]:9999) wherever one is shown, and a
node lookup that nobody answered fails as a read does instead of finding "nobody"."""

from __future__ import annotations

import asyncio
import random
from dataclasses import replace
from typing import Any

import pytest

from qadom import Config, Peer
from qadom.call import Call
from qadom.contact import Contact, format_address
from qadom.errors import InvalidArgument, NoPeersError, OperationTimeout
from qadom.info import format_address as info_format_address
from qadom.messages import Ping
from qadom.node import Node

from helpers import FAST

WAIT = 10.0


def run_unanswered(node: Node, call: Call[Any], limit: float = 600.0) -> None:
    """Drive the sans-IO ``node`` on a virtual clock, every datagram it sends lost, until
    ``call`` completes (bounded: ``limit`` virtual seconds)."""
    while not call.done:
        node.datagrams_to_send()
        at = node.get_timer()
        assert at is not None and at <= limit, "the call never completed"
        node.handle_timer(at)


# --------------------------------------------------------------- the other IP family, by Peer


@pytest.mark.parametrize(("host", "other", "version", "ours"), [
    ("127.0.0.1", "::1", 6, 4), ("::1", "127.0.0.1", 4, 6)])
def test_ping_of_an_address_of_the_other_family_names_it_and_both_families(
        host: str, other: str, version: int, ours: int) -> None:
    async def main() -> None:
        async with Peer(host, 0, config=FAST) as peer:
            with pytest.raises(InvalidArgument) as raised:
                await asyncio.wait_for(peer.ping((other, 9)), WAIT)
            reason = str(raised.value)
            assert "cannot resolve" not in reason
            assert format_address((other, 9)) in reason
            assert f"is an IPv{version} address" in reason and f"is IPv{ours}" in reason
            assert "cannot reach it" in reason
            assert peer.stats.get("datagrams_out", 0) == 0  # nothing was sent

    asyncio.run(main())


def test_a_bootstrap_skips_addresses_of_the_other_family_when_it_has_one_of_ours() -> None:
    async def main() -> None:
        async with Peer("127.0.0.1", 0, config=FAST) as seed, \
                Peer("127.0.0.1", 0, config=FAST) as first, \
                Peer("127.0.0.1", 0, config=FAST) as second:
            # Wherever it stands in the list, the IPv6 address is passed over, as the node
            # itself passes over an address it cannot reach.
            assert await asyncio.wait_for(first.bootstrap([seed.address, ("::1", 9)]), WAIT) >= 1
            assert await asyncio.wait_for(second.bootstrap([("::1", 9), seed.address]), WAIT) >= 1
            assert seed.id in {c.id for c in first.routing_table}
            assert seed.id in {c.id for c in second.routing_table}

    asyncio.run(main())


def test_a_bootstrap_through_only_addresses_of_the_other_family_names_the_first() -> None:
    async def main() -> None:
        async with Peer("127.0.0.1", 0, config=FAST) as peer:
            with pytest.raises(InvalidArgument) as raised:
                await asyncio.wait_for(peer.bootstrap([("::1", 9), ("fe80::1", 10)]), WAIT)
            reason = str(raised.value)
            assert "cannot resolve" not in reason
            assert "[::1]:9 is an IPv6 address" in reason and "is IPv4" in reason

    asyncio.run(main())


# ------------------------------------------------------------- IPv6 addresses in brackets


def test_format_address_lives_with_the_contact_and_is_still_read_from_info() -> None:
    assert info_format_address is format_address
    assert format_address(("::1", 9999)) == "[::1]:9999"
    assert format_address(("127.0.0.1", 9999)) == "127.0.0.1:9999"


def test_a_contacts_repr_brackets_an_ipv6_host() -> None:
    assert repr(Contact(1, ("::1", 9999))).endswith(", [::1]:9999)")
    assert repr(Contact(1, ("127.0.0.1", 9999))).endswith(", 127.0.0.1:9999)")


def test_a_peers_repr_brackets_an_ipv6_host() -> None:
    async def main() -> None:
        async with Peer("::1", 0, config=FAST) as peer:
            assert repr(peer).endswith(f" [::1]:{peer.address[1]}>")

    asyncio.run(main())


def test_an_unanswered_ping_or_request_names_an_ipv6_address_in_brackets() -> None:
    node = Node(node_id=1, now=0.0, rng=random.Random(1))
    node.ipv6 = True
    ping = node.ping(("::ffff:7f00:1", 41239), 0.0)
    asked = node.ask(("::1", 9), Ping(), 0.0)
    run_unanswered(node, ping)
    run_unanswered(node, asked)
    assert str(ping.exception()) == "no answer from [::ffff:7f00:1]:41239"
    assert str(asked.exception()) == "no answer from [::1]:9"


# ------------------------------------------------------- a lookup that nobody answered


def test_find_nodes_on_a_node_that_knows_nobody_fails_with_no_peers() -> None:
    node = Node(node_id=1, now=0.0, rng=random.Random(2))
    call = node.find_nodes(5, 0.0)
    run_unanswered(node, call)
    assert isinstance(call.exception(), NoPeersError)


def test_find_nodes_on_a_node_cut_off_from_every_contact_fails_with_a_timeout() -> None:
    """Every contact it knows stays silent: the lookup got no answer at all, which says nothing
    about who is near the target; an empty list would say there is nobody."""
    config = replace(Config(), k=4, alpha=2)
    node = Node(node_id=0, now=0.0, config=config, rng=random.Random(3))
    node.ipv6 = False
    for i in range(6):
        node.table.seen(Contact((1 << 200) + i, (f"10.0.0.{i + 1}", 4000)))
    call = node.find_nodes(1 << 200, 0.0)
    run_unanswered(node, call)
    error = call.exception()
    assert isinstance(error, OperationTimeout), error
    assert "no peer answered" in str(error)


def test_a_lone_peers_find_nodes_fails_with_no_peers() -> None:
    async def main() -> None:
        async with Peer("127.0.0.1", 0, config=FAST) as peer:
            with pytest.raises(NoPeersError):
                await asyncio.wait_for(peer.find_nodes(12345), WAIT)

    asyncio.run(main())


@pytest.mark.parametrize("spelling", ["::ffff:127.0.0.1", "::ffff:7f00:1", "::FFFF:127.0.0.1"])
async def test_a_dual_stack_peer_reaches_an_ipv4_peer_through_its_mapped_address(
        spelling: str) -> None:
    """A peer on "::" (both families on Linux) pinging an IPv4 peer at its IPv4-mapped address,
    however it is written: the reply comes from the address as the socket spells it, and is
    taken as the answer (it timed out as unexpected when "::ffff:7f00:1" was asked)."""
    async with Peer("127.0.0.1", 0, config=FAST) as v4, Peer("::", 0, config=FAST) as dual:
        contact = await asyncio.wait_for(dual.ping((spelling, v4.address[1])), WAIT)
        assert contact.id == v4.id
        assert contact.address == ("::ffff:127.0.0.1", v4.address[1])
