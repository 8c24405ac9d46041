"""Per-address round-trip estimates: a live peer slower than the timeout measured from faster
peers earns a timeout of its own (from a reply that came after its request had failed), while
unknown and dead addresses keep the node-wide timeout. Sans-IO, on a virtual clock."""

from __future__ import annotations

import heapq
import itertools

import pytest

from qadom import Config
from qadom.contact import Address
from qadom.ids import ID_SPACE
from qadom.messages import Envelope, Ping, Pong
from qadom.node import Node

FAST = [(i, (f"10.0.0.{i}", 1)) for i in range(1, 5)]  # round trip 10 ms
SLOW_ID, SLOW = ID_SPACE // 2 + 1, ("10.0.9.9", 1)  # round trip 0.6 s, in a bucket of its own


class Wire:
    """Peers that answer every request with a PONG after their round trip (None: dead)."""

    def __init__(self, config: Config) -> None:
        self.node = Node(config=config, node_id=0, now=0.0)
        self.peers: dict[Address, tuple[int, float | None]] = {}
        self.events: list[tuple[float, int, bytes, Address]] = []
        self.seq = itertools.count()
        self.now = 0.0
        self.asked: dict[Address, int] = {}

    def pump(self) -> None:
        for data, address in self.node.datagrams_to_send():
            envelope = self.node.codec.decode(data)
            if not envelope.message.IS_REQUEST or address not in self.peers:
                continue
            self.asked[address] = self.asked.get(address, 0) + 1
            node_id, rtt = self.peers[address]
            if rtt is not None:
                reply = self.node.codec.encode(Envelope(envelope.rpc_id, node_id, Pong()))
                heapq.heappush(self.events, (self.now + rtt, next(self.seq), reply, address))

    def run_for(self, seconds: float) -> None:
        end = self.now + seconds
        self.pump()
        for _ in range(100_000):  # bounded: each turn delivers a reply or fires a timer
            timer = self.node.get_timer()
            event = self.events[0][0] if self.events else None
            due = [t for t in (timer, event) if t is not None and t <= end]
            if not due:
                break
            self.now = min(due)
            if event is not None and event <= self.now:
                _, _, data, address = heapq.heappop(self.events)
                self.node.datagram_received(data, address, self.now)
            else:
                self.node.handle_timer(self.now)
            self.pump()
        else:
            raise AssertionError("the node never went quiet")
        self.now = end

    def ping(self, address: Address, expect_id: int | None = None) -> list[bool]:
        """Send one PING and run until it is over; [True] if it was answered."""
        outcome: list[bool] = []
        self.node.request(address, Ping(), self.now, expect_id=expect_id,
                          on_reply=lambda envelope, now: outcome.append(envelope is not None))
        self.run_for(10.0)
        return outcome


def wire_with_slow_contact(config: Config | None = None) -> Wire:
    """A node with four fast contacts and the slow one, its node-wide timeout down to the floor
    after the fast peers' traffic."""
    wire = Wire(config or Config(k=4))
    for node_id, address in FAST:
        wire.peers[address] = (node_id, 0.01)
    wire.peers[SLOW] = (SLOW_ID, 0.6)
    wire.node.ping(SLOW, wire.now)  # measured by the first timeout (1 s): it enters the table
    wire.run_for(3.0)
    assert SLOW_ID in wire.node.table
    for _ in range(30):
        for _, address in FAST:
            wire.node.ping(address, wire.now)
        wire.run_for(1.0)
    assert wire.node.rpc_timeout == wire.node.config.rpc_timeout_min < 0.6
    return wire


def test_a_live_contact_slower_than_the_others_timeout_stays_and_is_answered() -> None:
    wire = wire_with_slow_contact()
    node = wire.node
    outcomes = [wire.ping(SLOW, SLOW_ID) for _ in range(4)]
    # The first request fails (its timeout was the fast peers'), its late reply measures the
    # address, and every request after it is answered at its first attempt.
    assert outcomes == [[False], [True], [True], [True]]
    assert wire.asked[SLOW] == 1 + 2 + 3  # the first ping, two attempts, then one each
    assert SLOW_ID in node.table and SLOW_ID not in node._given_up
    assert 0.6 < node.rpc_timeout_to(SLOW) <= node.config.rpc_timeout_max
    # Its round trips are its own: the node-wide timeout, that of every other address, stays.
    assert node.rpc_timeout == node.config.rpc_timeout_min
    assert node.rpc_timeout_to(FAST[0][1]) == node.rpc_timeout


def test_dead_and_unknown_addresses_are_given_up_as_fast_as_before() -> None:
    wire = wire_with_slow_contact()
    node = wire.node
    assert wire.ping(SLOW, SLOW_ID) == [False]
    assert wire.ping(SLOW, SLOW_ID) == [True]
    dead = ("10.0.7.7", 1)
    wire.peers[dead] = (77, None)
    start = wire.now
    failed_at: list[float] = []
    node.request(dead, Ping(), start, on_reply=lambda envelope, now: failed_at.append(now))
    wire.run_for(10.0)
    assert failed_at == [pytest.approx(
        start + (1 + node.config.rpc_retries) * node.config.rpc_timeout_min, abs=1e-9)]
    # The slow contact going silent is given up in its own (longer) time, no longer than the cap.
    wire.peers[SLOW] = (SLOW_ID, None)
    start = wire.now
    own = node.rpc_timeout_to(SLOW)
    node.request(SLOW, Ping(), start, on_reply=lambda envelope, now: failed_at.append(now))
    wire.run_for(10.0)
    assert failed_at[1] == pytest.approx(start + (1 + node.config.rpc_retries) * own, abs=1e-9)


def test_a_reply_to_a_request_still_open_is_not_a_sample() -> None:
    # Karn's rule: a reply after a resend is ambiguous. Between one and two timeouts the request
    # is still open and succeeds; no estimate of its own is made for the address from it.
    wire = wire_with_slow_contact()
    wire.peers[SLOW] = (SLOW_ID, 0.4)
    assert wire.ping(SLOW, SLOW_ID) == [True]
    assert wire.node.rpc_timeout_to(SLOW) == wire.node.rpc_timeout
    assert not wire.node._peer_rtt


def test_a_late_reply_from_another_address_or_after_the_window_measures_nothing() -> None:
    wire = wire_with_slow_contact()
    node = wire.node
    # Replies come only after rpc_timeout_max past the failure: too late to be remembered.
    wire.peers[SLOW] = (SLOW_ID, 3 * node.config.rpc_timeout_min + node.config.rpc_timeout_max)
    assert wire.ping(SLOW, SLOW_ID) == [False]
    assert node.rpc_timeout_to(SLOW) == node.rpc_timeout and not node._peer_rtt
    # A reply with the id of a failed request, from another address, measures neither address.
    wire.peers[SLOW] = (SLOW_ID, None)
    node.request(SLOW, Ping(), wire.now)
    rpc_id = node.codec.decode(node.datagrams_to_send()[0][0]).rpc_id
    wire.run_for(1.0)
    other = FAST[0][1]
    node.datagram_received(node.codec.encode(Envelope(rpc_id, SLOW_ID, Pong())), other, wire.now)
    assert not node._peer_rtt
    assert node.rpc_timeout_to(other) == node.rpc_timeout_to(SLOW) == node.rpc_timeout


def test_the_estimates_and_the_failed_requests_kept_are_bounded_and_forgotten() -> None:
    config = Config(k=4, max_peer_rtts=2, max_failed_rpcs=3)
    wire = wire_with_slow_contact(config)
    node = wire.node
    slow = [(ID_SPACE // 2 + 10 + i, (f"10.0.8.{i}", 1)) for i in range(3)]
    for node_id, address in slow:
        wire.peers[address] = (node_id, 0.6)
    for node_id, address in slow:
        assert wire.ping(address, node_id) == [False]
    # The least recently measured is forgotten first.
    assert list(node._peer_rtt) == [slow[1][1], slow[2][1]]
    assert node.rpc_timeout_to(slow[0][1]) == node.rpc_timeout
    # Requests failing together: at most max_failed_rpcs remembered.
    for _, address in FAST:
        wire.peers[address] = (wire.peers[address][0], None)
        node.request(address, Ping(), wire.now)
    wire.run_for(1.0)
    assert len(node._failed_rpcs) == 3
    # An estimate not sampled for refresh_interval is forgotten, and so are failed requests
    # once no reply to them can count.
    wire.now += config.refresh_interval
    node._forget_old_bookkeeping(wire.now)
    assert not node._peer_rtt and not node._failed_rpcs


def test_zero_keeps_no_estimate_of_its_own() -> None:
    for config in (Config(k=4, max_peer_rtts=0), Config(k=4, max_failed_rpcs=0)):
        wire = wire_with_slow_contact(config)
        assert wire.ping(SLOW, SLOW_ID) == [False]
        assert wire.ping(SLOW, SLOW_ID) == [False]
        assert not wire.node._peer_rtt
        assert wire.node.rpc_timeout_to(SLOW) == wire.node.rpc_timeout


def test_a_lossy_network_of_peers_within_the_timeout_gives_no_address_its_own() -> None:
    # Every round trip is far below the timeout floor: loss makes requests fail, never late, so
    # every address keeps the node-wide timeout and the simulator's timings are unchanged.
    from qadom.sim import SimNetwork

    net = SimNetwork(seed=11, loss=0.3, config=Config(k=8))
    nodes = net.build(60)
    reports = net.lookups(20, gap=0.3)
    assert sum(n.stats["timeouts"] for n in nodes) > 0  # requests did fail
    assert all(r.ok for r in reports)
    for node in nodes:
        assert not node._peer_rtt


def test_a_timeout_of_its_own_ends_with_a_request_that_fails() -> None:
    """A slow contact that then goes silent is given up in its own time once, and from then on
    as fast as any address: the timeout it earned by answering late ends with a failure (it
    earns it again with its next late reply)."""
    wire = wire_with_slow_contact()
    node = wire.node
    assert wire.ping(SLOW, SLOW_ID) == [False]
    assert node.rpc_timeout_to(SLOW) > node.rpc_timeout
    wire.peers[SLOW] = (SLOW_ID, None)
    assert wire.ping(SLOW, SLOW_ID) == [False]
    assert SLOW not in node._peer_rtt and node.rpc_timeout_to(SLOW) == node.rpc_timeout


def test_a_late_reply_under_another_id_measures_nothing() -> None:
    """The contact asked is gone from the address when another id answers there: its late
    answer says nothing of the round trip to the contact we asked."""
    wire = wire_with_slow_contact()
    wire.peers[SLOW] = (SLOW_ID + 1, 0.6)  # the process there restarted under another id
    assert wire.ping(SLOW, SLOW_ID) == [False]
    assert SLOW not in wire.node._peer_rtt
    assert wire.node.rpc_timeout_to(SLOW) == wire.node.rpc_timeout
