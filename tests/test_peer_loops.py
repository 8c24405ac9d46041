"""A peer is used on the event loop it was started on, over real UDP on 127.0.0.1: from any other
loop (another thread's, a later ``asyncio.run()``) an operation raises WrongLoopError before
anything starts in the node."""

from __future__ import annotations

import asyncio

import pytest

from qadom import Peer, UsageError, WrongLoopError

from helpers import FAST, on


async def test_operations_from_another_threads_loop_raise_wrong_loop(
        other_loop: asyncio.AbstractEventLoop) -> None:
    """A peer running on another thread's loop, awaited from this one: WrongLoopError (a
    UsageError), and nothing is started in its node; close() from here closes it on its own
    loop."""
    seed, peer = Peer("127.0.0.1", 0, config=FAST), Peer("127.0.0.1", 0, config=FAST)
    try:
        on(other_loop, seed.start())
        on(other_loop, peer.start())
        on(other_loop, asyncio.wait_for(peer.bootstrap([seed.address]), 5))
        asked = peer.node.stats["requests_out"]
        for operation in (peer.get(12345), peer.set(b"x"), peer.publish(5, b"m"),
                          peer.refresh(), peer.start()):
            with pytest.raises(WrongLoopError) as raised:
                await asyncio.wait_for(operation, 5)
            assert isinstance(raised.value, UsageError)
        with pytest.raises(WrongLoopError):
            peer.subscribe(5)
        with pytest.raises(WrongLoopError):
            peer.forget(12345)
        assert not on(other_loop, _deadlines(peer))  # nothing was started in the node
        assert peer.node.stats["requests_out"] == asked
        assert peer.running
        await asyncio.wait_for(peer.close(), 5)
        assert not peer.running
        assert peer.closed
    finally:
        on(other_loop, peer.close())
        on(other_loop, seed.close())


async def _deadlines(peer: Peer) -> int:
    return len(peer.node._deadlines)


def test_operations_under_a_later_asyncio_run_raise_wrong_loop() -> None:
    """A peer started under one ``asyncio.run()`` is not running under the next one: its
    operations raise WrongLoopError at once, not a builtin RuntimeError."""
    peer = Peer("127.0.0.1", 0, config=FAST)
    asyncio.run(peer.start())
    try:
        assert not peer.running

        async def subscribe() -> None:
            async with peer.subscribe(5):
                pass

        for operation in (lambda: peer.get(12345), lambda: peer.set(b"x"), subscribe):
            with pytest.raises(WrongLoopError):
                asyncio.run(asyncio.wait_for(operation(), 5))
    finally:
        asyncio.run(asyncio.wait_for(peer.close(), 5))
    assert not peer.running
