"""Peers and HTTP helpers whose event loop runs in another thread, closed from this one, over real
UDP and TCP on 127.0.0.1: the close releases the socket, the store and the data dir, from any
thread, and never waits on a loop that no longer runs."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from qadom import Peer, PeerClosedError, WrongLoopError
from qadom.http import HttpHelper

from helpers import FAST, on

T = TypeVar("T")


def in_thread(main: Callable[[], T]) -> T:
    """``main()`` run in a thread of its own, joined; what it raised is raised here."""
    outcome: list[Any] = []

    def run() -> None:
        try:
            outcome.append((True, main()))
        except BaseException as exc:
            outcome.append((False, exc))

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive() and outcome
    ok, value = outcome[0]
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def listening(address: tuple[str, int]) -> bool:
    """Whether a TCP server accepts connections at ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(address) == 0


def answers(address: tuple[str, int]) -> bool:
    """Whether an HTTP server at ``address`` answers a request, on a connection it then closes
    itself: unlike a bare connect, no connection is left for the server to accept after the
    probe (and possibly after the server's own close)."""
    with socket.create_connection(address, timeout=2) as client:
        client.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: qadom\r\nConnection: close\r\n\r\n")
        reply = b""
        while chunk := client.recv(4096):
            reply += chunk
    return reply.startswith(b"HTTP/1.1 ")


def port_free(address: tuple[str, int]) -> bool:
    """Whether a UDP socket can bind ``address`` now."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        try:
            again.bind(address)
        except OSError:
            return False
        return True


async def node_id_in(data_dir: Path) -> int:
    """The id of a peer started on ``data_dir`` (DataDirInUse while another holds it)."""
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=data_dir) as peer:
        return peer.id


def test_close_after_a_worker_threads_loop_ended_keeps_the_data_dir(tmp_path: Path) -> None:
    """A durable peer started and used under ``asyncio.run()`` in a worker thread, closed from
    this thread once that thread ended: no error, the socket and the data dir are released,
    the database is closed (its WAL checkpointed into the file) with the contacts saved, and a
    new peer on the directory is the same node, holding the same value."""
    durable = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)

    async def work() -> tuple[int, tuple[str, int]]:
        async with Peer("127.0.0.1", 0, config=FAST) as seed:
            await durable.start()
            await asyncio.wait_for(durable.bootstrap([seed.address]), 5)
            return await asyncio.wait_for(durable.set(b"kept"), 5), seed.address

    key, seed_address = in_thread(lambda: asyncio.run(work()))
    assert not durable.running  # its loop ended with its thread
    asyncio.run(asyncio.wait_for(durable.close(), 5))
    assert durable.closed and port_free(durable.address)
    assert not (tmp_path / "qadom.sqlite3-wal").exists()  # the last connection closed cleanly

    async def reopen() -> tuple[int, bytes | None, list[tuple[str, int]]]:
        async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as again:
            return (again.id, again.node.store.get_value(key),
                    [contact.address for contact in again.saved_contacts()])

    node_id, value, contacts = asyncio.run(asyncio.wait_for(reopen(), 5))
    assert node_id == durable.id
    assert value == b"kept"
    assert seed_address in contacts  # saved by the close, from this thread


def test_close_while_the_peers_loop_stops_does_not_wait_on_it(tmp_path: Path) -> None:
    """The close is handed to the peer's running loop in another thread, and that loop stops
    before it runs it: the close is done here instead, at once (the socket, the store and the
    data dir released), and the loop, run again, does nothing more of it."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    entered, release = threading.Event(), threading.Event()
    try:
        peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        on(loop, peer.start())

        def hold_then_stop() -> None:
            entered.set()
            release.wait(5)
            loop.stop()  # the close queued meanwhile is left unrun

        loop.call_soon_threadsafe(hold_then_stop)
        assert entered.wait(5)

        async def close_while_it_stops() -> None:
            closing = asyncio.ensure_future(peer.close())
            await asyncio.sleep(0)  # the close is queued on the peer's loop, which is busy
            assert not closing.done()
            release.set()
            await asyncio.wait_for(closing, 2)

        asyncio.run(close_while_it_stops())
        thread.join(5)
        assert not thread.is_alive()
        assert peer.closed and not peer.running and port_free(peer.address)
        assert asyncio.run(asyncio.wait_for(node_id_in(tmp_path), 5)) == peer.id  # released
    finally:
        release.set()
        if loop.is_running():
            loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
    loop.run_until_complete(asyncio.sleep(0))  # runs the queued close: nothing left to do
    loop.close()
    assert peer.closed


async def test_helper_closed_from_another_thread_closes_on_its_loop(
        other_loop: asyncio.AbstractEventLoop) -> None:
    """An HTTP helper serving on another thread's loop, closed from this loop: the close runs
    on the helper's loop and this waits for it; the listening socket and the connection a
    client keeps alive are closed when it returns."""
    peer = Peer("127.0.0.1", 0, config=FAST)
    helper = HttpHelper(peer)
    try:
        on(other_loop, peer.start())
        on(other_loop, helper.start())
        assert helper.address is not None
        with socket.create_connection(helper.address, timeout=2) as client:
            client.sendall(b"GET /nothing-here HTTP/1.1\r\nHost: qadom\r\n\r\n")
            assert client.recv(12).startswith(b"HTTP/1.1")
            await asyncio.wait_for(helper.close(), 5)
            assert not listening(helper.address)
            client.settimeout(2)
            while client.recv(4096):  # the rest of the reply, then the end of the connection
                pass
        await asyncio.wait_for(helper.close(), 5)  # a second close has nothing left to do
    finally:
        on(other_loop, helper.close())
        on(other_loop, peer.close())


async def test_helper_started_from_another_loop_raises_wrong_loop(
        other_loop: asyncio.AbstractEventLoop) -> None:
    """A helper serves on its peer's loop: started from another loop, for a peer of another
    thread or for a helper serving there already, WrongLoopError, and nothing more is bound."""
    peer = Peer("127.0.0.1", 0, config=FAST)
    on(other_loop, peer.start())
    try:
        stray = HttpHelper(peer)
        with pytest.raises(WrongLoopError):
            await asyncio.wait_for(stray.start(), 5)
        assert stray.address is None
        helper = HttpHelper(peer)
        on(other_loop, helper.start())
        assert helper.address is not None
        with pytest.raises(WrongLoopError):
            await asyncio.wait_for(helper.start(), 5)
        assert answers(helper.address)  # still serving, on its own loop
        await asyncio.wait_for(helper.close(), 5)
        assert not listening(helper.address)
    finally:
        on(other_loop, peer.close())


def _start_held_in_bind(loop: asyncio.AbstractEventLoop, data_dir: Path
                        ) -> tuple[Peer, Any, Any]:
    """A durable peer whose start, on ``loop`` (running in another thread), is held inside the
    socket's bind (data dir locked, store open) until the returned gate is released there.
    Returns the peer, the gate's release and the start's concurrent future."""
    real = loop.create_datagram_endpoint
    entered = threading.Event()
    gate: asyncio.Future[None] = on(loop, _new_future())

    async def held(*args: Any, **kwargs: Any) -> Any:
        entered.set()
        await gate
        return await real(*args, **kwargs)

    loop.create_datagram_endpoint = held  # type: ignore[method-assign]
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=data_dir)
    starting = asyncio.run_coroutine_threadsafe(peer.start(), loop)
    assert entered.wait(5)

    def release() -> None:
        loop.call_soon_threadsafe(_settle, gate)

    return peer, release, starting


async def _new_future() -> asyncio.Future[None]:
    return asyncio.get_running_loop().create_future()


def _settle(future: asyncio.Future[None]) -> None:
    """Resolve ``future`` unless it is done already (run on its loop)."""
    if not future.done():
        future.set_result(None)


async def _node_id_in(data_dir: Path) -> int:
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=data_dir) as again:
        return again.id


def test_a_close_from_another_thread_waits_for_the_start_binding_there(
        other_loop: asyncio.AbstractEventLoop, tmp_path: Path) -> None:
    """close() from this thread while the peer's start binds on its loop in another: once the
    bind is over the start releases what it bound, and close returns only then."""
    peer, release, starting = _start_held_in_bind(other_loop, tmp_path)

    async def close_then_release() -> None:
        closing = asyncio.ensure_future(peer.close())
        await asyncio.sleep(0.05)  # close is waiting on the bind; no outcome depends on this
        assert not closing.done()
        release()
        await asyncio.wait_for(closing, 5)

    asyncio.run(close_then_release())
    with pytest.raises(Exception, match="closed while it was starting"):
        starting.result(5)
    assert asyncio.run(asyncio.wait_for(_node_id_in(tmp_path), 5)) == peer.id


@pytest.mark.parametrize("close_first", [True, False], ids=["close-then-stop", "stop-then-close"])
def test_a_start_whose_loop_stopped_halfway_is_released_by_the_close(
        close_first: bool, tmp_path: Path) -> None:
    """The peer's loop, in another thread, stops (and is closed) while the start is inside its
    bind: a close, whether it was waiting then or comes after, releases the data dir."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    peer, _release, _starting = _start_held_in_bind(loop, tmp_path)

    async def close() -> None:
        closing = asyncio.ensure_future(peer.close())
        if close_first:
            await asyncio.sleep(0.05)  # close is waiting on the bind
            assert not closing.done()
        loop.call_soon_threadsafe(loop.stop)
        await asyncio.wait_for(closing, 5)

    try:
        asyncio.run(close())
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        assert not thread.is_alive()
        for task in asyncio.all_tasks(loop):  # the start, left halfway on purpose: not a leak
            task._log_destroy_pending = False  # type: ignore[attr-defined]
        loop.close()
    asyncio.run(asyncio.wait_for(peer.close(), 5))  # again, the loop closed: nothing left
    assert peer.closed
    assert asyncio.run(asyncio.wait_for(_node_id_in(tmp_path), 5)) == peer.id


def test_a_close_racing_a_start_that_passed_its_check_closes_it_on_its_loop(
        tmp_path: Path) -> None:
    """close() from this thread while a start binds on a loop in another: the close reads that
    no socket is bound yet, and the start passes its check for a close just before the close
    marks the peer closed. The close must then close the peer the start bound, on its loop."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    a_in, b_past, entered = threading.Event(), threading.Event(), threading.Event()
    closer: list[int] = []
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    gate: asyncio.Future[None] = asyncio.run_coroutine_threadsafe(
        _new_future(), loop).result(5)

    class Binding(asyncio.Future):  # type: ignore[type-arg]
        def get_loop(self) -> Any:
            if threading.current_thread() is threading.main_thread() and not a_in.is_set():
                a_in.set()  # the close read _protocol (None) and _binding: let the bind go on
                loop.call_soon_threadsafe(_settle, gate)
                assert b_past.wait(5)
            return super().get_loop()

    real_future, real_endpoint = loop.create_future, loop.create_datagram_endpoint
    loop.create_future = lambda: Binding(loop=loop)  # type: ignore[method-assign]

    async def held(*args: Any, **kwargs: Any) -> Any:
        loop.create_future = real_future  # type: ignore[method-assign]
        entered.set()
        await gate
        transport, protocol = await real_endpoint(*args, **kwargs)
        flush, close = protocol.flush, protocol.close

        def flush_hook() -> None:  # runs after the start's _closed check
            b_past.set()
            deadline = time.monotonic() + 5
            while not peer._closed and time.monotonic() < deadline:
                time.sleep(0.001)  # bounded: until the close marked the peer closed
            flush()

        def close_hook() -> bool:
            closer.append(threading.get_ident())
            closed: bool = close()
            return closed

        protocol.flush, protocol.close = flush_hook, close_hook
        return transport, protocol

    loop.create_datagram_endpoint = held  # type: ignore[method-assign]
    starting = asyncio.run_coroutine_threadsafe(peer.start(), loop)
    assert entered.wait(5)  # the start is binding
    try:
        asyncio.run(asyncio.wait_for(peer.close(), 5))
        error = starting.exception(5)
        # The start ended before it saw the close (or lost to it): either way the close closed
        # the socket on the peer's loop, as it does for a peer whose loop runs in another
        # thread, and the peer holds nothing once the close returned.
        assert error is None or isinstance(error, PeerClosedError)
        assert closer == [thread.ident]
        assert peer.closed and peer._store is None
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
