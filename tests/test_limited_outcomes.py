"""What a writer over its peers' request rate is told: RateLimited, whether the peers said so
or, over their limit, answered one refusal a second and dropped the rest; OperationTimeout when
the silence is not explained by our rate; RateLimited too when k live peers, one of which failed
us for our rate, are closer to the key than each peer that stored the item: readers end among
them and do not reach it. Reads are told OperationTimeout, saying why."""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from qadom import Config
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.errors import OperationTimeout, RateLimited
from qadom.ids import key_for
from qadom.messages import (
    Error,
    ErrorCode,
    FindNode,
    FindNodeStore,
    Message,
    Nodes,
    NodesStored,
    Stored,
)
from qadom.node import Node
from qadom.pubsub import Publish
from qadom.sim import SimNetwork

from helpers import answer_requests

Reply = Callable[[Address, Message], "tuple[int, Message] | None"]


def _node_and_peers(count: int = 4, k: int | None = None,
                    ) -> tuple[Node, Codec, list[Contact]]:
    """A sans-IO node (k = ``k``, else ``count``) whose table holds ``count`` peers, none of
    them answering yet."""
    node = Node(node_id=0, now=0.0, config=replace(Config(), k=count if k is None else k))
    peers = [Contact((i + 1) << 240, (f"10.0.0.{i + 1}", 4000)) for i in range(count)]
    for peer in peers:
        node.table.seen(peer)
    return node, Codec(node.config), peers


def _run(node: Node, codec: Codec, call: Call[Any], reply: Reply, now: float) -> float:
    """Answer what ``node`` sends with ``reply`` and run its timers until ``call`` is done."""
    for _ in range(200):
        answer_requests(node, codec, reply, now)
        if call.done:
            return now
        timer = node.get_timer()
        assert timer is not None
        now = max(now, timer)
        node.handle_timer(now)
    raise AssertionError(f"{call!r} did not complete")


def _refuse_for_rate(node: Node, codec: Codec, peers: list[Contact], now: float) -> None:
    """Each of ``peers`` refuses a ping of ours for our rate, as a peer over its limit does."""
    ids = {p.address: p.id for p in peers}
    for peer in peers:
        node.ping(peer.address, now)
    answer_requests(node, codec, lambda address, message: (
        ids[address], Error(ErrorCode.RATE_LIMITED, "slow down")), now)


@pytest.mark.parametrize("operation", ["set", "append"])
def test_a_write_whose_lookup_was_refused_for_our_rate_after_another_refusal_is_rate_limited(
        operation: str) -> None:
    """Every refusal the lookup got counts, not only the first: the first peer asked could not
    read its store, the others refused us for our rate."""
    node, codec, peers = _node_and_peers()
    ids = {p.address: p.id for p in peers}
    asked: list[Address] = []

    def reply(address: Address, message: Message) -> tuple[int, Message]:
        asked.append(address)
        if len(asked) == 1:
            return ids[address], Error(ErrorCode.STORAGE_UNAVAILABLE, "disk failing")
        return ids[address], Error(ErrorCode.RATE_LIMITED, "slow down")

    call = (node.set(b"value", 0.0) if operation == "set" else node.append(7, 8, 0.0))
    _run(node, codec, call, reply, 0.0)
    assert len(set(asked)) == len(peers)
    with pytest.raises(RateLimited, match="refused for our request rate"):
        call.result()
    assert node.store.get_value(key_for(b"value")) is None
    assert node.store.entry_meta(7, 8) is None


def test_a_write_nobody_answered_is_blamed_on_our_rate_only_when_most_silent_peers_refused_us(
        ) -> None:
    """The rule for silence: RateLimited when more than half of the peers that stayed silent
    (the lookup's, or those asked to store the value) had refused us for our rate within the
    time a request to them may take; OperationTimeout otherwise, and once that time is over (a
    peer silent long after it refused us may be gone)."""
    window = (1 + Config().rpc_retries) * Config().rpc_timeout_max
    outcomes: dict[tuple[str, int, float], str] = {}
    for phase, limited, start in [(phase, limited, 0.0) for phase in ("lookup", "store")
                                  for limited in (0, 2, 3, 4)] + [("lookup", 4, window)]:
        node, codec, peers = _node_and_peers()
        ids = {p.address: p.id for p in peers}
        _refuse_for_rate(node, codec, peers[:limited], 0.0)

        def reply(address: Address, message: Message, phase: str = phase,
                  ids: dict[Address, int] = ids) -> tuple[int, Message] | None:
            if phase == "store" and isinstance(message, FindNodeStore):
                return ids[address], NodesStored((), False)  # named nobody, kept nothing
            return None  # silent

        call = node.set(b"value", start)
        _run(node, codec, call, reply, start)
        error = call.exception()
        assert error is not None
        outcomes[phase, limited, start] = type(error).__name__
        assert ("store it" in str(error)) is (phase == "store"), error  # the phase it failed in
        assert node.store.get_value(key_for(b"value")) is None
    assert outcomes == {
        ("lookup", 0, 0.0): "OperationTimeout", ("lookup", 2, 0.0): "OperationTimeout",
        ("lookup", 3, 0.0): "RateLimited", ("lookup", 4, 0.0): "RateLimited",
        ("store", 0, 0.0): "OperationTimeout", ("store", 2, 0.0): "OperationTimeout",
        ("store", 3, 0.0): "RateLimited", ("store", 4, 0.0): "RateLimited",
        ("lookup", 4, window): "OperationTimeout"}


def test_a_read_among_peers_silent_for_our_rate_says_so_and_is_a_timeout() -> None:
    node, codec, peers = _node_and_peers()
    _refuse_for_rate(node, codec, peers[:3], 0.0)
    call = node.get(12345, 0.0)
    _run(node, codec, call, lambda address, message: None, 0.0)
    with pytest.raises(OperationTimeout, match="3 of the 4 that stayed silent had just "
                       "refused us for our request rate"):
        call.result()


@pytest.mark.parametrize("operation", ["set", "append"])
def test_sim_a_writer_far_over_its_peers_rate_limit_is_told_rate_limited_not_timeout(
        operation: str) -> None:
    """Sixty writes started at once to peers that take one request a second (bursts of two):
    each peer answers one RATE_LIMITED a second and drops the rest, so most writes meet only
    silence, from peers that just refused us for our rate. Each write that fails says so."""
    net = SimNetwork(1, config=Config(request_rate=1.0, request_burst=2))
    writer = net.build(8)[0]
    calls: list[Call[Any]] = (
        [net.call(writer, writer.set, b"v%d" % i) for i in range(60)] if operation == "set"
        else [net.call(writer, writer.append, 1 << 200, i) for i in range(60)])
    net.run_for(writer.config.operation_timeout + 1)
    assert all(call.done for call in calls)
    outcomes = collections.Counter(
        type(call.exception()).__name__ if call.exception() else "stored" for call in calls)
    assert outcomes["RateLimited"] >= 30, outcomes
    assert set(outcomes) <= {"RateLimited", "stored"}, outcomes


def _by_distance(peers: list[Contact], key: int) -> list[Contact]:
    return sorted(peers, key=lambda p: p.id ^ key)


@pytest.mark.parametrize("failure", ["refused", "silent"])
@pytest.mark.parametrize("phase", ["lookup", "store"])
@pytest.mark.parametrize("operation", ["set", "append"])
def test_a_write_stored_only_farther_than_peers_that_failed_us_for_our_rate_is_rate_limited(
        operation: str, phase: str, failure: str) -> None:
    """Six peers, k = 4, each with a role by its rank in distance to the key, closest first:
    R fails us for our rate (refuses RATE_LIMITED, or, over its limit, stays silent after such
    a refusal), S is silent for no reason of ours, in the lookup or when asked to store; A
    answers without storing (it is full); K stores. A reader's lookup ends at the k closest
    that answer it, so a write is not where readers look, and fails with RateLimited with
    nothing stored here, when k live peers (R and A: R answers others) are closer than each
    peer that stored it and one of them failed us for our rate. With fewer than k such peers,
    a closer peer that stored it, or closer peers silent for no reason of ours (they may be
    gone: churn, which republishing heals), the same write succeeds."""
    key = key_for(b"value") if operation == "set" else 7
    cases = {"RRRRKK": "RateLimited", "RAAAKK": "RateLimited", "RRKKKK": "stored",
             "RAAKKK": "stored", "KRRRRK": "stored", "SSKKKK": "stored"}
    outcomes: dict[str, str] = {}
    for roles in cases:
        node, codec, peers = _node_and_peers(6, k=4)
        ids = {p.address: p.id for p in peers}
        role = {p.address: r for p, r in zip(_by_distance(peers, key), roles, strict=True)}
        if failure == "silent":
            _refuse_for_rate(node, codec, [p for p in peers if role[p.address] == "R"], 0.0)

        def reply(address: Address, message: Message, role: dict[Address, str] = role,
                  ids: dict[Address, int] = ids) -> tuple[int, Message] | None:
            lookup = isinstance(message, (FindNode, FindNodeStore))
            mine = role[address]
            if mine in "RS" and (phase == "lookup" or not lookup):
                if mine == "R" and failure == "refused":
                    return ids[address], Error(ErrorCode.RATE_LIMITED, "slow down")
                return None  # silent
            if isinstance(message, FindNodeStore):
                return ids[address], NodesStored((), mine == "K")
            if isinstance(message, FindNode):
                return ids[address], Nodes(())
            if mine == "A":
                return ids[address], Error(ErrorCode.STORAGE_FULL, "full")
            return ids[address], Stored()

        call = node.set(b"value", 0.0) if operation == "set" else node.append(key, 8, 0.0)
        _run(node, codec, call, reply, 0.0)
        error = call.exception()
        outcomes[roles] = "stored" if error is None else type(error).__name__
        held = (node.store.get_value(key) if operation == "set"
                else node.store.entry_meta(key, 8)) is not None
        assert held is (error is None)
        if error is not None and node.stats["replicas_acked"]:
            assert "refused us for our request rate" in str(error), error
    assert outcomes == cases


@pytest.mark.parametrize("operation", ["set", "append"])
def test_sim_every_write_a_writer_over_its_peers_rate_limit_is_told_stored_is_readable(
        operation: str) -> None:
    """Forty writes started at once to peers that take two requests a second (bursts of four):
    the closest peers to the keys refuse most of them, or drop them, for the writer's rate, and
    its lookups settle on farther peers that answered. A write those alone stored behind k live
    closer peers is not where readers look: it fails with RateLimited. Each write told it was
    stored is read back by another node, one read every few seconds (within the peers'
    limits)."""
    net = SimNetwork(0, config=Config(k=4, request_rate=2.0, request_burst=4))
    nodes = net.build(16)
    writer, reader = nodes[0], nodes[-1]
    keys = ([key_for(b"v%d" % i) for i in range(40)] if operation == "set"
            else [1 << 200 | i for i in range(40)])
    calls: list[Call[Any]] = (
        [net.call(writer, writer.set, b"v%d" % i) for i in range(40)] if operation == "set"
        else [net.call(writer, writer.append, key, 5) for key in keys])
    net.run_for(writer.config.operation_timeout + 1)
    assert all(call.done for call in calls)
    outcomes = collections.Counter(
        type(call.exception()).__name__ if call.exception() else "stored" for call in calls)
    assert outcomes["stored"] and set(outcomes) <= {"RateLimited", "stored"}, outcomes
    unreadable = []
    for i, (key, call) in enumerate(zip(keys, calls, strict=True)):
        if call.exception() is not None:
            continue
        net.run_for(3.0)
        read: Call[Any] = (net.call(reader, reader.get, key) if operation == "set"
                           else net.call(reader, reader.search, key))
        try:
            found: object = net.run_call(read)
        except OperationTimeout:
            found = None
        if found != (b"v%d" % i if operation == "set" else {5}):
            unreadable.append(i)
    assert not unreadable, (unreadable, outcomes)


@pytest.mark.parametrize("refused", ["nothing", "a publish"])
def test_a_publish_refused_for_the_publishing_rate_says_nothing_of_our_request_rate(
        refused: str) -> None:
    """A relay refuses our PUBLISH for the publisher's message rate (``pubsub_rate``), not for
    the rate of our requests; when it then leaves, a write that the other closest peers stored
    succeeds as it would have without that refusal: its silence is a departure."""
    node, codec, peers = _node_and_peers()
    key = key_for(b"value")
    ids = {p.address: p.id for p in peers}
    closest = min(peers, key=lambda p: p.id ^ key)
    if refused == "a publish":
        node.request(closest.address, Publish(1 << 200, 1, 0, b"x"), 0.0)
        answer_requests(node, codec, lambda address, message: (ids[address], Error(
            ErrorCode.RATE_LIMITED, "more than 10 messages per second from this sender")), 0.0)

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        if address == closest.address:
            return None  # gone
        if isinstance(message, FindNodeStore):
            return ids[address], NodesStored((), True)
        return ids[address], Stored()

    call = node.set(b"value", 0.0)
    _run(node, codec, call, reply, 0.0)
    assert call.exception() is None
    assert node.stats["replicas_acked"] == 3
