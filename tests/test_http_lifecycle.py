"""Starting and closing the HTTP helper, over real TCP and UDP on 127.0.0.1: one server per
helper whatever the order of the calls, and none for a peer that is not running."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import ClassVar

import aiohttp
import pytest
from aiohttp import web

from qadom import Config, Peer, PeerClosedError
from qadom.http import HttpHelper, key_text, make_app

from helpers import FAST, wait_until


class CountingSite(web.TCPSite):
    """A TCPSite that records the address of every site it starts: what a helper bound."""

    started: ClassVar[list[tuple[str, int]]] = []

    async def start(self) -> None:
        await super().start()
        server = self._server
        assert isinstance(server, asyncio.base_events.Server)
        host, port = server.sockets[0].getsockname()[:2]
        CountingSite.started.append((str(host), int(port)))


@pytest.fixture
def sites(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The addresses the helpers bind during the test."""
    CountingSite.started = []
    monkeypatch.setattr(web, "TCPSite", CountingSite)
    return CountingSite.started


def listening(address: tuple[str, int]) -> bool:
    """Whether a TCP server accepts connections at ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(address) == 0


async def test_concurrent_starts_bind_one_server(sites: list[tuple[str, int]]) -> None:
    """Two starts at once bind one server, and close() leaves none listening."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        helper = HttpHelper(peer)
        await asyncio.wait_for(asyncio.gather(helper.start(), helper.start()), 5)
        assert len(sites) == 1
        assert helper.address is not None and listening(helper.address)
        await asyncio.wait_for(helper.close(), 5)
        assert not any(listening(address) for address in sites)


async def test_close_while_starting_leaves_nothing_serving(sites: list[tuple[str, int]]) -> None:
    """close() while start() is binding waits for it and closes what it bound: once close()
    returns, nothing serves the peer."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        helper = HttpHelper(peer)
        starting = asyncio.ensure_future(helper.start())
        await asyncio.sleep(0)  # start() is under way
        assert not starting.done()
        await asyncio.wait_for(helper.close(), 5)
        await asyncio.wait_for(starting, 5)
        assert len(sites) == 1
        assert not listening(sites[0])
        assert helper.open_streams == 0
        await asyncio.wait_for(helper.start(), 5)  # a helper closed can start again
        assert helper.address is not None and listening(helper.address)
        await asyncio.wait_for(helper.close(), 5)


async def test_start_on_a_peer_not_running_raises_peer_closed(
        tmp_path: Path, sites: list[tuple[str, int]]) -> None:
    """A closed peer (with or without a data dir) or one never started: PeerClosedError from
    start() and make_app(), and nothing is bound."""
    durable = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    await durable.start()
    await durable.close()
    memory = Peer("127.0.0.1", 0, config=FAST)
    await memory.start()
    await memory.close()
    for peer in (durable, memory, Peer("127.0.0.1", 0, config=FAST)):
        helper = HttpHelper(peer)
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(helper.start(), 5)
        with pytest.raises(PeerClosedError):
            make_app(peer)
        await helper.close()
    assert not sites


async def _serve_one_request(peer: Peer, helper: HttpHelper, client: socket.socket) -> None:
    """Start ``peer`` and ``helper`` on the running loop; ``client`` connects and gets one reply
    on a connection it keeps alive."""
    await peer.start()
    await helper.start()
    assert helper.address is not None
    client.settimeout(2)
    client.connect(helper.address)
    client.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: qadom\r\n\r\n")
    reply = await asyncio.get_running_loop().run_in_executor(None, client.recv, 12)
    assert reply.startswith(b"HTTP/1.1")


def test_close_after_the_loop_ended_frees_the_port() -> None:
    """A helper started under one ``asyncio.run()``, a client connection still open, closed
    under a later one: no builtin RuntimeError, and its port is free again."""
    peer = Peer("127.0.0.1", 0, config=FAST)
    helper = HttpHelper(peer)
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
        asyncio.run(asyncio.wait_for(_serve_one_request(peer, helper, client), 5))
        assert helper.address is not None
        asyncio.run(asyncio.wait_for(helper.close(), 5))
        assert not listening(helper.address)
        asyncio.run(asyncio.wait_for(helper.close(), 5))  # a second close has nothing to do
    asyncio.run(asyncio.wait_for(peer.close(), 5))


def test_close_from_another_loop_while_the_helpers_loop_stands_idle_frees_the_port() -> None:
    """The helper's loop is open but not running, and the close comes from another loop: the
    listening socket is closed at once, here; the loop can still run and close cleanly after."""
    loop = asyncio.new_event_loop()
    peer = Peer("127.0.0.1", 0, config=FAST)
    helper = HttpHelper(peer)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as client:
            loop.run_until_complete(
                asyncio.wait_for(_serve_one_request(peer, helper, client), 5))
            assert helper.address is not None
            asyncio.run(asyncio.wait_for(helper.close(), 5))
            assert not listening(helper.address)
        loop.run_until_complete(asyncio.wait_for(helper.close(), 5))
        loop.run_until_complete(asyncio.wait_for(peer.close(), 5))
    finally:
        loop.close()


@contextlib.asynccontextmanager
async def _stalled_stream(config: Config) -> AsyncIterator[tuple[HttpHelper, Peer]]:
    """An HTTP helper on a relay of topic 7 and a peer that publishes to it; one client holds an
    event stream of the topic open, read up to ``: subscribed`` and never again (a receive
    buffer of 4 KiB, so the stream's writes soon wait for room)."""
    async with Peer("127.0.0.1", 0, config=config) as relay, \
            Peer("127.0.0.1", 0, config=config) as publisher:
        await asyncio.wait_for(publisher.bootstrap([relay.address]), 10)
        helper = HttpHelper(relay, "127.0.0.1", 0)
        await asyncio.wait_for(helper.start(), 10)
        loop = asyncio.get_running_loop()
        client = socket.socket()
        client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        client.setblocking(False)
        try:
            assert helper.address is not None
            await asyncio.wait_for(loop.sock_connect(client, helper.address), 10)
            await loop.sock_sendall(client, f"GET /subscribe/{key_text(7)} HTTP/1.1\r\n"
                                            "Host: qadom\r\n\r\n".encode())
            got = b""
            while b": subscribed" not in got:
                got += await asyncio.wait_for(loop.sock_recv(client, 4096), 10)
            yield helper, publisher
        finally:
            client.close()
            await asyncio.wait_for(helper.close(), 10)


async def test_close_cuts_a_stream_whose_client_stopped_reading_at_once() -> None:
    """An event stream whose client reads nothing more waits in a write for room; closing the
    helper cuts that connection at once rather than waiting the shutdown timeout (twice: once
    for the handler, once for the end of its response)."""
    config = replace(FAST, pubsub_rate=1e6, pubsub_burst=100_000, http_shutdown_timeout=5.0)
    async with _stalled_stream(config) as (helper, publisher):
        (handler,) = helper._runner.server.connections  # type: ignore[union-attr]
        transport = handler.transport
        assert transport is not None
        # Until the stream's connection holds more than it lets a write add to (aiohttp's
        # high-water mark, 64 KiB): the stream's next write then waits for room.
        for n in range(400):
            await asyncio.wait_for(publisher.publish(7, n.to_bytes(4, "big") * 2048), 10)
            if transport.get_write_buffer_size() > 2**16:
                break
        assert transport.get_write_buffer_size() > 2**16
        await asyncio.wait_for(publisher.publish(7, b"one more"), 10)
        await asyncio.wait_for(helper.close(), config.http_shutdown_timeout - 1)
        assert helper.open_streams == 0


async def test_a_stream_whose_client_reads_nothing_is_cut_after_the_write_timeout() -> None:
    """A client that stops reading would hold its stream, one of http_max_subscriptions, for as
    long as it stays connected: once a write has waited http_sse_write_timeout for it, the
    stream is cut and its place freed, while the helper serves on."""
    config = replace(FAST, pubsub_rate=1e6, pubsub_burst=100_000, http_sse_write_timeout=0.2)
    async with _stalled_stream(config) as (helper, publisher):
        assert helper.open_streams == 1 and helper.address is not None
        for n in range(400):  # until a write waits: the stream is cut soon after
            await asyncio.wait_for(publisher.publish(7, n.to_bytes(4, "big") * 2048), 10)
            if helper.open_streams == 0:
                break
        await wait_until(lambda: helper.open_streams == 0, timeout=10)
        async with aiohttp.ClientSession() as session:  # the helper serves on
            answer = await asyncio.wait_for(session.get(
                f"http://127.0.0.1:{helper.address[1]}/node"), 10)
            assert answer.status == 200
