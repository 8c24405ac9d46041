"""Cancelled operations and operations cut short by close, over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import pytest

from qadom import Config, OperationTimeout, PeerClosedError
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Address
from qadom.errors import OperationAbandoned
from qadom.lookup import Lookup
from qadom.messages import Envelope, FindNode, Message
from qadom.sim import SimNetwork

from helpers import FAST, far_topic, udp_network, wait_until

# Short request timeouts: a lookup among silent peers moves on quickly, and the operation
# deadline (operation_timeout) stays far beyond the test.
QUICK = dataclasses.replace(FAST, rpc_timeout=0.1, rpc_timeout_min=0.05, rpc_timeout_max=0.2,
                            operation_timeout=20.0)


async def test_a_cancelled_operation_ends_in_the_node() -> None:
    """``asyncio.wait_for`` giving up on a get among silent peers ends the get in the node too:
    its deadline goes at once and its lookup stops asking, instead of running on for
    ``operation_timeout`` with nobody waiting."""
    async with udp_network(8, config=QUICK) as peers:
        peer = peers[0]
        for other in peers[1:]:
            await other.close()  # in peer's table, and silent now
        node = peer.node
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(peer.get(12345), 0.05)
        asked = node.stats["requests_out"]
        assert not peer._futures
        assert not node._deadlines
        await wait_until(lambda: not node._pending, 2)  # those sent already run out
        assert node.stats["requests_out"] == asked  # and nobody more is asked for it


async def test_many_cancelled_operations_leave_no_deadlines() -> None:
    async with udp_network(4, config=QUICK) as peers:
        peer = peers[1]
        tasks = [asyncio.ensure_future(operation)
                 for i in range(40)
                 for operation in (peer.get(i), peer.search(i), peer.set(bytes([i])),
                                   peer.append(i, i), peer.publish(i, b"m"))]
        await asyncio.sleep(0)
        for task in tasks:
            task.cancel()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert all(isinstance(r, asyncio.CancelledError) for r in results)
        assert not peer._futures
        assert not peer.node._deadlines
        assert all(p.stats.get("internal_errors", 0) == 0 for p in peers)


async def test_closing_the_peer_while_subscribing_raises_peer_closed() -> None:
    """A subscribe still registering when its peer closes fails as every operation in progress
    does then: PeerClosedError, not a network error."""
    async with udp_network(4, config=QUICK) as peers:
        peer = peers[1]
        subscription = peer.subscribe(77)
        entering = asyncio.ensure_future(subscription.__aenter__())
        await asyncio.sleep(0)  # the registration round is under way
        assert not entering.done()
        await peer.close()
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(entering, 1)
        assert subscription.closed


@pytest.mark.parametrize("operation", ["publish", "subscribe", "refresh"])
async def test_a_cancelled_lookup_of_publish_subscribe_refresh_asks_nobody_more(
        operation: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Cancelling a publish, a subscribe while it registers or a refresh among silent peers
    stops their lookups as a cancelled get's: once the requests already out have run out, no
    FIND_NODE was sent after the cancel (each lookup had peers left to ask)."""
    async with udp_network(12, config=QUICK) as peers:
        peer = peers[0]
        for other in peers[1:]:
            await other.close()  # in peer's table, and silent now
        node = peer.node
        asked: list[str] = []
        request = node.request

        def counting(address: Address, message: Message, now: float, **options: Any) -> int:
            asked.append(type(message).__name__)
            return request(address, message, now, **options)

        monkeypatch.setattr(node, "request", counting)

        async def subscribe() -> None:
            async with peer.subscribe(5):
                pass

        starts: dict[str, Callable[[], Awaitable[Any]]] = {
            "publish": lambda: peer.publish(12345, b"m"), "subscribe": subscribe,
            "refresh": lambda: peer.refresh(all_buckets=True)}
        task = asyncio.ensure_future(starts[operation]())
        await asyncio.sleep(0)  # the first requests of the lookup are out
        assert "FindNode" in asked
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 2)
        before = asked.count("FindNode")
        await wait_until(lambda: not node._pending, 5)  # those sent already run out
        assert asked.count("FindNode") == before
        assert not node._deadlines


def test_sim_a_publish_after_one_given_up_gets_a_lookup_of_its_own() -> None:
    # The given-up publish stopped its lookup; the next one to the topic must not join it and
    # go to the few relays it had found by then.
    net = SimNetwork(40)
    node = net.build(40)[0]
    alone = net.run_call(net.call(node, node.pubsub.publish, 12346, b"alone"))
    given_up = net.call(node, node.pubsub.publish, 12345, b"first")
    given_up.fail(OperationAbandoned("the caller stopped waiting"))
    second = net.call(node, node.pubsub.publish, 12345, b"second")
    assert net.run_call(second) == alone == node.config.k


@pytest.mark.parametrize("first_ends_last", [False, True])
def test_sim_a_given_up_publish_followed_by_another_still_goes_out_first(
        first_ends_last: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write is not undone: a publish given up goes to the closest peers its stopped lookup
    had found even when another publish to the topic follows before that lookup has ended, and
    its message is numbered and sent before the next one, whichever lookup ends first (the
    next one's lookup may end first: here the stopped one's ending is held back a second)."""
    net = SimNetwork(41, config=Config(k=8))
    nodes = net.build(40)
    subscriber, publisher = nodes[0], nodes[1]
    topic = far_topic(nodes, [subscriber, publisher], net.config.k)
    got: list[bytes] = []

    def start(now: float) -> Call[int]:
        return subscriber.pubsub.subscribe(topic, got.append, now)[1]

    assert net.run_call(net.call(subscriber, start)) == net.config.k
    if first_ends_last:
        lookup = publisher.closest_lookup
        held = [True]

        def slow_first(target: int, now: float, then: Callable[[Lookup, float], None],
                       call: Call[Any] | None = None) -> None:
            def later(found: Lookup, now: float) -> None:
                publisher.schedule(now + 1.0, partial(then, found))

            first, held[0] = held[0], False
            lookup(target, now, later if first else then, call)

        monkeypatch.setattr(publisher, "closest_lookup", slow_first)
    given_up = net.call(publisher, publisher.pubsub.publish, topic, b"given up")
    given_up.fail(OperationAbandoned("the caller stopped waiting"))
    second = net.call(publisher, publisher.pubsub.publish, topic, b"next")
    assert net.run_call(second) == net.config.k  # a lookup of its own, to all k relays
    net.run_for(5.0)
    assert got == [b"given up", b"next"]


@pytest.mark.parametrize("stage", ["pings", "lookup of our own id", "bucket refreshes"])
def test_sim_a_cancelled_bootstrap_sends_no_new_request(
        stage: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bootstrap given up (as Peer.bootstrap's cancelled wait gives it up) while its pings
    are out, while it looks up our own id or while it refreshes the buckets of the join sends
    no new request from then on: only the resends of the requests already out (as a cancelled
    get's), and none once they have run out."""
    net = SimNetwork(5)
    nodes = net.build(60)
    node = net.add_node()
    codec = Codec(node.config)
    sent: list[Envelope] = []
    send = node._send

    def recording(data: bytes, address: Address) -> None:
        sent.append(codec.decode(data))
        send(data, address)

    monkeypatch.setattr(node, "_send", recording)
    call = net.call(node, node.bootstrap, [net.address_of(nodes[0])])

    def reached() -> bool:
        targets = [e.message.target for e in sent if isinstance(e.message, FindNode)]
        if stage == "pings":
            return True
        if stage == "lookup of our own id":
            return node.id in targets
        return any(t != node.id for t in targets)

    for _ in range(10_000):
        if reached():
            break
        assert net.step() and not call.done
    call.fail(OperationAbandoned("the caller stopped waiting"))
    out = set(node._pending)
    assert out  # the join had requests under way
    before = len(sent)
    net.run_for((1 + node.config.rpc_retries) * node.config.rpc_timeout_max + 1)
    assert not node._pending
    new = [e for e in sent[before:] if e.message.IS_REQUEST and e.rpc_id not in out]
    assert new == []


def test_sim_a_join_past_its_deadline_still_fills_the_buckets_it_began_to_refresh() -> None:
    """A join whose deadline passes while it refreshes its buckets (a rejoin from upkeep may,
    nobody waiting on it) lets those lookups end: each marked its bucket looked up as it began,
    and upkeep refreshes a bucket only once it has gone ``refresh_interval`` without one."""
    net = SimNetwork(3, config=Config(k=8), latency=(0.2, 0.6))
    nodes = net.build(400)
    # The lookup of our own id takes about 5 s at this latency: the deadline falls while the
    # bucket refreshes of the join are under way.
    node = net.add_node(config=Config(k=8, operation_timeout=5.5))
    call = net.call(node, node.bootstrap, [net.address_of(nodes[0])])
    net.run_for(300)  # five upkeep rounds, well inside refresh_interval
    assert call.done and isinstance(call.exception(), OperationTimeout)
    ids = [n.id for n in net.live_nodes() if n is not node]
    # Every bucket holds k contacts, or every node of its range when it spans fewer (the
    # buckets near our id that split down to a depth that is a multiple of split_bits).
    thin = [(len(b.contacts), net.now - b.last_lookup) for b in node.table.buckets
            if len(b.contacts) < min(node.config.k, sum(1 for i in ids if b.covers(i)))]
    assert thin == [], f"{len(node.table)} contacts; buckets short: {thin}"


@pytest.mark.parametrize("given_up", [False, True])
def test_sim_a_lookup_given_up_is_no_lookup_into_its_bucket(given_up: bool) -> None:
    """A bucket counts as looked up (and upkeep leaves it alone for ``refresh_interval``) once
    a lookup into it ran; one given up on the way does not count, unless another lookup
    touched the bucket meanwhile."""
    net = SimNetwork(11, latency=(0.05, 0.1))
    nodes = net.build(200)
    node = nodes[0]
    net.run_for(10)
    target = node.id ^ (1 << 255) ^ 12345  # in the farthest bucket: a full one, never split
    bucket = node.table.bucket_for(target)
    before = bucket.last_lookup
    assert before < net.now
    call = net.call(node, node.find_nodes, target)
    assert bucket.last_lookup == net.now  # touched as the lookup begins
    touched = net.now
    if given_up:
        net.step()
        call.fail(OperationAbandoned("the caller stopped waiting"))
    net.run_for(5)
    assert call.done
    assert bucket.last_lookup == (before if given_up else touched)
    # Another lookup into the bucket while one is given up keeps its own mark.
    first = net.call(node, node.find_nodes, target ^ 1)
    net.run_for(0.01)
    second = net.call(node, node.find_nodes, target ^ 2)
    first.fail(OperationAbandoned("the caller stopped waiting"))
    net.run_for(5)
    assert second.done and bucket.last_lookup > touched
