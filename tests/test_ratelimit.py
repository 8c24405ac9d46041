"""Request rate limits per address and per host, with one clear refusal and no flood replies."""

from __future__ import annotations

import random
from dataclasses import replace

from qadom import Config
from qadom.codec import Codec
from qadom.messages import Envelope, Error, ErrorCode, Ping, Pong
from qadom.node import Node
from qadom.ratelimit import RateLimiter
from qadom.sim import SimNetwork

CONFIG = Config(request_rate=10.0, request_burst=20, host_request_rate=30.0,
                host_request_burst=50)
CODEC = Codec(CONFIG)


def replies(node: Node) -> list[object]:
    return [CODEC.decode(data).message for data, _ in node.datagrams_to_send()]


def flood(node: Node, address: tuple[str, int], count: int, now: float) -> list[object]:
    """``count`` pings as a client sends them to a peer that gave it no token (padded)."""
    for i in range(count):
        ping = Envelope(i, None, Ping(), pad_to=CONFIG.min_small_request_size)
        node.datagram_received(CODEC.encode(ping), address, now)
    return replies(node)


def test_limiter_refills_and_forgets_the_least_recent() -> None:
    bucket: RateLimiter[str] = RateLimiter(rate=1.0, burst=2, max_senders=1)
    assert bucket.allow("x", 0.0) and bucket.allow("x", 0.0)
    assert not bucket.allow("x", 0.0)
    assert bucket.allow("x", 1.0)  # refilled at one token a second
    limiter: RateLimiter[str] = RateLimiter(rate=1.0, burst=1, max_senders=2)
    assert limiter.allow("a", 0.0) and not limiter.allow("a", 0.0)
    assert limiter.allow("b", 0.0) and limiter.allow("c", 0.0)
    assert len(limiter) == 2  # bounded: "a" was forgotten


def test_one_address_gets_its_burst_then_one_refusal_then_silence() -> None:
    node = Node(config=CONFIG, rng=random.Random(1))
    out = flood(node, ("127.0.0.1", 5000), 100, now=0.0)
    assert sum(isinstance(m, Pong) for m in out) == CONFIG.request_burst
    refusals = [m for m in out if isinstance(m, Error)]
    assert len(refusals) == 1 and refusals[0].code == ErrorCode.RATE_LIMITED
    assert node.stats["rate_limited"] == 100 - CONFIG.request_burst
    # Another address is not affected; the first recovers at request_rate.
    assert all(isinstance(m, Pong) for m in flood(node, ("127.0.0.1", 5001), 5, now=0.0))
    out = flood(node, ("127.0.0.1", 5000), 100, now=1.0)
    assert sum(isinstance(m, Pong) for m in out) == int(CONFIG.request_rate)


def test_many_ports_of_one_remote_host_share_a_budget_but_loopback_does_not() -> None:
    node = Node(config=CONFIG, rng=random.Random(2))
    answered = sum(isinstance(m, Pong)
                   for port in range(1000, 1010)
                   for m in flood(node, ("2001:db8::7", port), 10, now=0.0))
    assert answered == CONFIG.host_request_burst
    local = sum(isinstance(m, Pong)
                for port in range(1000, 1010)
                for m in flood(node, ("127.0.0.1", port), 10, now=0.0))
    assert local == 100


def test_sim_a_peer_that_refuses_us_for_our_rate_stays_in_our_table() -> None:
    # Over its limit a peer answers one RATE_LIMITED a second and drops the rest: the requests it
    # drops time out, and counted as failures they would make us drop a live contact (here our
    # only one, leaving us no peer at all).
    net = SimNetwork(5)
    strict = net.add_node(config=replace(net.config, request_rate=1.0, request_burst=5))
    eager = net.add_node()
    net.run_call(net.call(eager, eager.bootstrap, [net.address_of(strict)]))
    assert strict.id in eager.table
    calls = [net.call(eager, eager.ping, net.address_of(strict)) for _ in range(60)]
    net.run_for(30.0)
    assert all(call.done for call in calls)
    assert strict.stats["rate_limited"] > 0 and eager.stats["timeouts_rate_limited"] > 0
    assert strict.id in eager.table  # though its silence backs our lookups off it for a while
    assert net.run_call(net.call(eager, eager.ping, net.address_of(strict))).id == strict.id
