"""qadom.interactive's blocking form called from a thread other than the one running its loop
(the main thread in ``serve_forever``, or the terminal prompt, while a thread of the program's
own calls ``blocking(peer).get(key)``): the operation runs on that loop, in that loop's thread,
and the call returns its outcome. Called on the loop's own thread, it is refused with nothing
started.

The loop runs in a thread of its own (the ``other_loop`` fixture); every wait is bounded.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest

from qadom import Peer, interactive
from qadom.errors import LoopRunningError, WrongLoopError
from qadom.interactive import blocking, wait

from helpers import FAST, on

WAIT = 10.0  # seconds: the bound on any one blocking call here


@pytest.fixture
def loop_elsewhere(other_loop: asyncio.AbstractEventLoop,
                   monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.AbstractEventLoop]:
    """The loop the blocking helpers use (as in a script) runs in another thread, as it runs in
    the main thread while a script serves."""
    assert interactive.front_end() == "script"
    on(other_loop, asyncio.sleep(0))  # it runs now, and until the fixture stops it
    monkeypatch.setattr(interactive, "_script_loop", other_loop)
    assert interactive.event_loop() is other_loop
    yield other_loop
    assert on(other_loop, _pending()) == set()  # nothing left running there


async def _pending() -> set[asyncio.Task[object]]:
    return {task for task in asyncio.all_tasks() if task is not asyncio.current_task()}


def test_wait_from_another_thread_runs_the_operation_on_the_loops_thread(
        loop_elsewhere: asyncio.AbstractEventLoop) -> None:
    ran_in: list[int] = []

    async def operation() -> int:
        ran_in.append(threading.get_ident())
        await asyncio.sleep(0)
        return 42

    assert wait(operation(), timeout=WAIT) == 42
    assert len(ran_in) == 1 and ran_in[0] != threading.get_ident()
    assert ran_in == [on(loop_elsewhere, _thread_ident())]


async def _thread_ident() -> int:
    return threading.get_ident()


def test_blocking_peer_from_another_thread(loop_elsewhere: asyncio.AbstractEventLoop) -> None:
    first, second = Peer("127.0.0.1", 0, config=FAST), Peer("127.0.0.1", 0, config=FAST)
    try:
        on(loop_elsewhere, first.start())
        on(loop_elsewhere, second.start())
        on(loop_elsewhere, second.bootstrap([first.address]))
        key = blocking(second).set(b"sudo python")
        assert blocking(first).get(key) == b"sudo python"
        # What the operation raises is raised here.
        with pytest.raises(KeyError):
            blocking(first).get(key ^ 1)
    finally:
        on(loop_elsewhere, first.close())
        on(loop_elsewhere, second.close())


def test_a_timeout_from_another_thread_ends_the_operation_there(
        loop_elsewhere: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(TimeoutError):
        wait(asyncio.sleep(3600), timeout=0.05)
    # loop_elsewhere checks that nothing is left running on the loop


def test_on_the_loops_own_thread_nothing_is_started(
        loop_elsewhere: asyncio.AbstractEventLoop) -> None:
    ran: list[str] = []

    async def operation() -> None:
        ran.append("started")

    async def blocking_call_in_a_coroutine() -> None:
        wait(operation())

    with pytest.raises(LoopRunningError):
        on(loop_elsewhere, blocking_call_in_a_coroutine())
    assert ran == []


def test_a_loop_closed_before_the_operation_completes_ends_the_wait(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The loop's thread stops and closes it with the operation pending: it can never complete,
    so the blocking call raises instead of waiting forever."""
    loop = asyncio.new_event_loop()
    running, started = threading.Event(), threading.Event()
    loop.call_soon(running.set)

    async def operation() -> None:
        started.set()
        await asyncio.Event().wait()  # never set

    def run_then_close() -> None:
        loop.run_forever()
        loop.close()

    def stop_once_started() -> None:
        if started.wait(WAIT):
            loop.call_soon_threadsafe(loop.stop)

    thread = threading.Thread(target=run_then_close, daemon=True)
    stopper = threading.Thread(target=stop_once_started, daemon=True)
    thread.start()
    stopper.start()
    monkeypatch.setattr(interactive, "_script_loop", loop)
    try:
        assert running.wait(WAIT)
        with pytest.raises(WrongLoopError, match="ended before the operation completed"):
            wait(operation(), timeout=WAIT)
    finally:
        thread.join(WAIT)
        stopper.join(WAIT)
    assert not thread.is_alive() and loop.is_closed()
    # The operation was left pending on the closed loop, on purpose: asyncio would log it as
    # destroyed pending; it was no failure of the code under test.
    for task in asyncio.all_tasks(loop):
        task._log_destroy_pending = False  # type: ignore[attr-defined]
