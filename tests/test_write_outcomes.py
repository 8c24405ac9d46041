"""What set and append tell their caller: the key (or None) once a peer among the k closest
stored the item, an error when there were peers to ask and none stored it. A failed write stores
nothing here either, so the caller's retry is the only copy that will exist."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from qadom import Config, Peer
from qadom.errors import OperationTimeout, RateLimited, RemoteError, StorageFull
from qadom.http import key_text, make_app, openapi_document
from qadom.ids import key_for
from qadom.messages import Error, ErrorCode, FindNodeStore, Message, NodesStored, Pong, Store
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import NEVER

from helpers import FAST


@asynccontextmanager
async def writer_and_replicas(replica_config: Config, count: int = 3,
                              ) -> AsyncIterator[tuple[Peer, list[Peer]]]:
    """A writer with the default limits joined to ``count`` peers configured otherwise."""
    async with AsyncExitStack() as stack:
        writer = await stack.enter_async_context(Peer(config=FAST))
        replicas = [await stack.enter_async_context(Peer(config=replica_config))
                    for _ in range(count)]
        for replica in replicas:
            await asyncio.wait_for(replica.bootstrap([writer.address]), 10)
        await asyncio.wait_for(writer.bootstrap([replicas[0].address]), 10)
        assert len(writer.node.table) == count
        yield writer, replicas


async def test_a_set_every_replica_refused_as_full_fails_and_stores_nothing_here() -> None:
    async with writer_and_replicas(replace(FAST, max_bytes_per_source=16)) as (writer, replicas):
        value = b"v" * 100
        with pytest.raises(StorageFull, match="3 of the 3 closest peers asked refused it"):
            await asyncio.wait_for(writer.set(value), 20)
        for peer in (writer, *replicas):
            assert peer.node.store.get_value(key_for(value)) is None
        assert writer.node.store.stats()["values"] == 0


async def test_an_append_every_replica_refused_as_full_fails_and_stores_nothing_here() -> None:
    async with writer_and_replicas(replace(FAST, max_bytes_per_source=16)) as (writer, replicas):
        with pytest.raises(StorageFull):
            await asyncio.wait_for(writer.append(7, 8), 20)
        for peer in (writer, *replicas):
            assert peer.node.store.entry_meta(7, 8) is None


async def test_a_write_one_replica_took_succeeds_and_is_stored_here_too() -> None:
    async with AsyncExitStack() as stack:  # one replica has room, two are full
        writer = await stack.enter_async_context(Peer(config=FAST))
        full = replace(FAST, max_bytes_per_source=16)
        replicas = [await stack.enter_async_context(Peer(config=c)) for c in (full, full, FAST)]
        for replica in replicas:
            await asyncio.wait_for(replica.bootstrap([writer.address]), 10)
        value = b"w" * 100
        assert await asyncio.wait_for(writer.set(value), 20) == key_for(value)
        await asyncio.wait_for(writer.append(7, 8), 20)
        assert writer.node.store.get_value(key_for(value)) == value
        assert writer.node.store.entry_meta(7, 8) is not None
        assert replicas[2].node.store.get_value(key_for(value)) == value


async def test_a_set_with_no_peer_known_is_stored_here_alone() -> None:
    async with Peer(config=FAST) as lone:
        key = await asyncio.wait_for(lone.set(b"first node"), 10)
        assert lone.node.store.get_value(key) == b"first node"
        await asyncio.wait_for(lone.append(1, 2), 10)
        assert await asyncio.wait_for(lone.search(1), 10) == {2}


async def test_a_set_no_replica_answered_fails_with_a_timeout() -> None:
    async with writer_and_replicas(FAST, count=2) as (writer, replicas):
        for replica in replicas:
            replica.node.datagram_received = lambda *args: None  # type: ignore[method-assign]
        with pytest.raises(OperationTimeout):
            await asyncio.wait_for(writer.set(b"nobody listens"), 30)
        assert writer.node.store.get_value(key_for(b"nobody listens")) is None


def test_sim_three_hundred_appends_started_at_once_reach_every_replica() -> None:
    # Each append asks each of the k closest about twice (a lookup step and the APPEND): a
    # burst of writes to one key from one peer stays within the default request burst.
    net = SimNetwork(21)
    nodes = net.build(30)
    writer, key = nodes[0], 1 << 200
    calls = [net.call(writer, writer.append, key, value) for value in range(300)]
    for call in calls:
        net.run_call(call)
    replicas = set(net.true_closest(key, writer.config.k, exclude=writer.id))
    for node in nodes:
        if node.id in replicas:
            held = node.store.entries_after(key, None, 1000, net.now)[0]
            assert len(held) == 300, len(held)
    assert sum(node.stats["rate_limited"] for node in nodes) == 0


async def test_over_http_a_write_every_replica_refused_as_full_is_a_503_and_documented() -> None:
    async with writer_and_replicas(replace(FAST, max_bytes_per_source=16)) as (writer, _), \
            TestClient(TestServer(make_app(writer))) as client:
        response = await client.post("/values", data=b"v" * 100)
        assert response.status == 503, await response.text()
        assert "refused it" in (await response.json())["error"]
        response = await client.post(f"/entries/{key_text(7)}", json={"value": key_text(8)})
        assert response.status == 503, await response.text()
        document = openapi_document(FAST)["paths"]
        for path in ("/values", "/entries/{key}"):
            assert {"429", "502", "503", "504"} <= set(document[path]["post"]["responses"])


def _refusing_network(find_node_store: object, store: object) -> tuple[SimNetwork, Node]:
    """A simulated network whose peers other than the writer answer FIND_NODE_STORE and STORE
    with the given replies (messages, or None: served as usual)."""
    net = SimNetwork(31)
    nodes = net.build(25)
    writer = nodes[0]
    for node in nodes[1:]:
        for kind, reply in ((FindNodeStore, find_node_store), (Store, store)):
            if reply is not None:
                node.register_handler(kind, _answer(node, reply))
        if find_node_store is not None:  # from an unproven writer too, which it serves apart
            node.require_proof(FindNodeStore, unproven=_answer(node, find_node_store))
    return net, writer


def _answer(node: Node, reply: object) -> Callable[..., Message]:
    def handler(message: Message, sender: int | None, address: object, now: float) -> Message:
        if reply == "not held":  # the contacts, as usual, but the value not kept
            key = key_for(message.value)  # type: ignore[attr-defined]
            return NodesStored(tuple(node.table.closest(key, node.config.k)), False)
        assert isinstance(reply, Message)
        return reply
    return handler


@pytest.mark.parametrize(("find_node_store", "store", "error", "text"), [
    (Error(ErrorCode.RATE_LIMITED, "slow down"), None, RateLimited, "slow down"),
    ("not held", Error(ErrorCode.RATE_LIMITED, "slow down"), RateLimited, "refused it"),
    ("not held", Error(ErrorCode.STORAGE_FULL, "full"), StorageFull, "refused it"),
    ("not held", Error(ErrorCode.BAD_REQUEST, "no"), RemoteError, "BAD_REQUEST"),
    ("not held", Pong(), OperationTimeout, "asked to store it answered"),
])
def test_sim_a_set_no_peer_stored_says_why_and_stores_nothing_here(
        find_node_store: object, store: object, error: type[Exception], text: str) -> None:
    net, writer = _refusing_network(find_node_store, store)
    value = b"refused"
    with pytest.raises(error, match=text):
        net.run_call(net.call(writer, writer.set, value))
    assert writer.store.get_value(key_for(value)) is None


def test_a_set_our_own_store_has_no_room_for_is_refused_before_anything_is_sent() -> None:
    net = SimNetwork(32)
    nodes = net.build(10)
    writer = nodes[0]
    writer.store.quotas.config = replace(writer.config, max_store_bytes=50)
    sent = writer.stats["requests_out"]
    with pytest.raises(StorageFull):
        net.call(writer, writer.set, b"y" * 100)
    with pytest.raises(StorageFull):
        writer.store.quotas.config = replace(writer.config, max_store_items=0)
        net.call(writer, writer.append, 1, 2)
    assert writer.stats["requests_out"] == sent
    assert all(node.store.stats()["values"] == 0 for node in nodes)


def test_sim_a_key_forgotten_while_its_set_is_on_its_way_is_not_republished() -> None:
    net = SimNetwork(33)
    nodes = net.build(20)
    writer = nodes[0]
    call = net.call(writer, writer.set, b"changed my mind")
    assert writer.forget(key_for(b"changed my mind"))
    key = net.run_call(call)
    assert writer.store.value_meta(key) is None  # neither kept here nor published
    assert not writer.forget(key)  # nothing left to forget


@pytest.mark.skipif(not Path("/proc/sys/net/core/rmem_max").exists(), reason="Linux sysctl")
async def test_the_socket_can_queue_a_burst_of_answers() -> None:
    # The kernel's default receive buffer holds about a hundred datagrams: a burst of writes
    # gets more answers than that at once, and what overflows is lost.
    cap = int(Path("/proc/sys/net/core/rmem_max").read_text())
    async with Peer(config=FAST) as peer, Peer(config=replace(
            FAST, socket_receive_buffer=0)) as default:
        def size(p: Peer) -> int:
            sock = p._protocol.transport.get_extra_info("socket")  # type: ignore[union-attr]
            return int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))

        wanted = min(FAST.socket_receive_buffer, cap)
        assert size(peer) >= wanted  # Linux reports twice what it was given
        if wanted > size(default):
            assert size(peer) > size(default)


def test_sim_a_set_started_after_a_forget_is_published_though_an_earlier_one_is_on_its_way(
        ) -> None:
    net = SimNetwork(34)
    writer = net.build(20)[0]
    value = b"forgotten, then set again"
    first = net.call(writer, writer.set, value)
    assert writer.forget(key_for(value))
    again = net.call(writer, writer.set, value)  # asked for after the forget: published
    net.run_call(first)
    net.run_call(again)
    meta = writer.store.value_meta(key_for(value))
    assert meta is not None and meta.original and meta.republish_at != NEVER
    assert writer._writing == {}
