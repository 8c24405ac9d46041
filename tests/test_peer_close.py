"""Closing a peer always releases what it holds, over real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import socket
import warnings
from pathlib import Path

import pytest

from qadom import Peer, PeerClosedError
from qadom.pubsub import SubscriptionHandle

from helpers import FAST


async def test_close_releases_everything_when_unsubscribing_fails(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """An open subscription whose unsubscribing raises (a bug) is logged; the close still closes
    the socket, frees the data dir, fails what waits on the peer and ends the iteration."""
    config = dataclasses.replace(FAST, k=4)
    async with Peer("127.0.0.1", 0, config=config) as relay:
        peer = Peer("127.0.0.1", 0, config=config, data_dir=tmp_path)
        await peer.start()
        await asyncio.wait_for(peer.bootstrap([relay.address]), 2)
        subscription = peer.subscribe(7)
        await asyncio.wait_for(subscription.__aenter__(), 2)
        reading = asyncio.ensure_future(anext(subscription))
        silent = relay.address[0], relay.address[1]
        await relay.close()  # nobody answers now: the ping below waits on the peer
        pending = asyncio.ensure_future(peer.ping(silent))
        await asyncio.sleep(0.01)

        def broken(self: SubscriptionHandle, now: float) -> None:
            raise RuntimeError("unsubscribing failed")

        monkeypatch.setattr(SubscriptionHandle, "close", broken)
        with caplog.at_level(logging.ERROR, logger="qadom"):
            await asyncio.wait_for(peer.close(), 1)
        assert "could not unsubscribe" in caplog.text
        assert not peer.running
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(pending, 1)
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(reading, 1)
        async with Peer("127.0.0.1", 0, config=config, data_dir=tmp_path) as again:
            assert again.id == peer.id  # the data dir was released


def test_close_after_the_loop_ended_releases_everything(tmp_path: Path) -> None:
    """A peer started under one ``asyncio.run()`` and closed under a later one: its loop has
    ended, so it no longer runs, and close() still closes its socket, its store and the data
    dir lock, without a builtin RuntimeError; the directory and the port serve again."""
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    asyncio.run(peer.start())
    assert not peer.running  # its loop is closed: nothing serves it
    asyncio.run(asyncio.wait_for(peer.close(), 5))
    assert peer.closed and not peer.running
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(peer.address)  # the socket was closed: its port is free
    asyncio.run(asyncio.wait_for(peer.close(), 5))  # a second close has nothing left to do

    async def restart() -> int:
        async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as other:
            return other.id

    assert asyncio.run(asyncio.wait_for(restart(), 5)) == peer.id  # the data dir was released


def test_close_from_another_loop_while_the_peers_loop_stands_idle_frees_its_port() -> None:
    """The peer's loop is open but not running (run_until_complete between two steps), and the
    close comes from another loop: that loop may never run again, so its socket is closed at
    once, here, and taken off its watch; the loop can still run and close cleanly after."""
    loop = asyncio.new_event_loop()
    try:
        peer = Peer("127.0.0.1", 0, config=FAST)
        loop.run_until_complete(peer.start())
        asyncio.run(asyncio.wait_for(peer.close(), 5))
        assert peer.closed and not peer.running
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
            again.bind(peer.address)  # the socket was closed: its port is free
        loop.run_until_complete(asyncio.sleep(0.01))  # nothing of the peer's left to run
    finally:
        loop.close()


async def test_close_while_starting_releases_the_data_dir_before_it_returns(
        tmp_path: Path) -> None:
    """close() while start() is binding the socket waits for the start to be over: once it
    returns, the socket is closed and the data dir free for a new peer, and the start raised
    PeerClosedError. The host is a name (resolving to 127.0.0.1 in the resolver's thread), so
    the bind spans several turns of the loop."""
    peer = Peer("localhost", 0, config=FAST, data_dir=tmp_path)
    starting = asyncio.ensure_future(peer.start())
    await asyncio.sleep(0)  # the data dir is taken and the name being resolved
    assert not starting.done()
    await asyncio.wait_for(peer.close(), 5)
    assert starting.done()
    with pytest.raises(PeerClosedError):
        starting.result()
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as again:
        assert again.id == peer.id  # the data dir was released


def test_a_peer_whose_uvloop_loop_ended_closes_without_error(tmp_path: Path) -> None:
    """uvloop closes the sockets of a loop as the loop is closed: a close afterwards, from a
    later asyncio.run(), finds nothing open and says so by returning, not by WrongLoopError;
    the data dir is free again."""
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    try:
        loop.run_until_complete(asyncio.wait_for(peer.start(), 5))
    finally:
        with warnings.catch_warnings():  # uvloop warns of the transport it closes itself
            warnings.simplefilter("ignore", ResourceWarning)
            loop.close()
    asyncio.run(asyncio.wait_for(peer.close(), 5))
    assert not peer.running

    async def reopen() -> int:
        async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as again:
            return again.id

    assert asyncio.run(asyncio.wait_for(reopen(), 5)) == peer.id


def test_what_a_closing_peer_still_sends_is_dropped_without_warnings(
        caplog: pytest.LogCaptureFixture) -> None:
    """Callbacks that run as a peer closes may still hand datagrams to its socket, after the
    transport closed and before connection_lost: they are dropped quietly, not handed to the
    closed transport, which drops them too but (uvloop's) logs a warning for each after the
    fifth."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> None:
        peer = Peer("127.0.0.1", 0, config=FAST)
        await peer.start()
        protocol = peer._protocol
        assert protocol is not None and protocol.transport is not None
        protocol.transport.close()  # as close() does; connection_lost comes at the next turn
        for port in range(40000, 40010):  # ten pings, to ten addresses
            protocol.node.ping(("127.0.0.1", port), protocol.now())
            protocol.flush()
        assert protocol.node.stats["requests_out"] == 10
        await peer.close()

    caplog.set_level(logging.WARNING, logger="asyncio")
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(asyncio.wait_for(main(), 5))
    finally:
        loop.close()
    assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == []


async def test_a_node_timer_due_as_its_peer_closes_never_runs(tmp_path: Path) -> None:
    """The node's armed timer goes with close() itself, not at connection_lost, which the loop
    runs later: a timer due in between would run node code (a write's end, storing here) on the
    store the peer has just closed. One already queued by the loop does nothing once closed."""
    peer = Peer("127.0.0.1", 0, data_dir=tmp_path / "d")
    await peer.start()
    protocol = peer._protocol
    assert protocol is not None
    ran: list[float] = []
    peer.node.schedule(protocol.now(), ran.append)  # due at once: the loop's next turn
    protocol.flush()
    assert protocol._timer is not None
    protocol.close()
    assert protocol._timer is None  # cancelled at once
    protocol._on_timer()  # as a loop that had queued it already would
    await peer.close()
    protocol._on_timer()
    assert ran == [] and peer.node.stats["internal_errors"] == 0
