"""qadom.interactive's blocking form called from a thread other than the one running its loop
(the main thread in ``serve_forever``, or the terminal prompt, while a thread of the program's
own calls ``blocking(peer).get(key)``): the operation runs on that loop, in that loop's thread,
and the call returns its outcome. Called on the loop's own thread, it is refused with nothing
started.

The loop runs in a thread of its own (the ``other_loop`` fixture), or is run by another thread's
blocking call that ends while this thread's waits (:class:`Handover`); threads are ordered by
events, and every wait is bounded.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Callable, Iterator

import pytest

from qadom import Peer, interactive
from qadom.contact import Contact
from qadom.errors import InvalidType, LoopRunningError, WrongLoopError
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


# ---------------------------------------------------------------------- a loop that stops


@pytest.fixture
def idle_loop(monkeypatch: pytest.MonkeyPatch) -> Iterator[asyncio.AbstractEventLoop]:
    """The blocking helpers' loop (a script's own), run by no thread yet; afterwards nothing is
    left pending on it, and it is closed."""
    assert interactive.front_end() == "script"
    loop = asyncio.new_event_loop()
    monkeypatch.setattr(interactive, "_script_loop", loop)
    try:
        yield loop
        assert not loop.is_running()
        assert asyncio.all_tasks(loop) == set()
    finally:
        loop.close()


class Handover:
    """A blocking call, in a thread of its own, that runs the idle loop until the operation of
    another blocking call (:meth:`second`, made while the first runs) has started there; then
    the first call ends, which stops the loop with that operation pending, waiting for
    :attr:`gate`. The first thread then calls ``then`` (if given)."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 then: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self.then = then
        self.first_running = threading.Event()
        self.second_started: asyncio.Event | None = None  # made on the loop
        self.gate: asyncio.Future[str] | None = None  # made on the loop
        self.first_outcome: object = None
        self.thread = threading.Thread(target=self._first, daemon=True)

    def start(self) -> None:
        self.thread.start()
        assert self.first_running.wait(WAIT)
        assert self.loop.is_running()  # in the first thread

    def join(self) -> None:
        self.thread.join(WAIT)
        assert not self.thread.is_alive()
        assert self.first_outcome == "first done"

    def open_gate(self) -> None:
        """Open the gate from another thread: the second operation completes as soon as
        something runs the loop again."""
        assert self.gate is not None
        self.loop.call_soon_threadsafe(self.gate.set_result, "second done")

    def _first(self) -> None:
        async def first() -> str:
            self.second_started = asyncio.Event()
            self.first_running.set()
            await asyncio.wait_for(self.second_started.wait(), WAIT)
            return "first done"

        try:
            self.first_outcome = wait(first(), timeout=WAIT)
        except BaseException as exc:
            self.first_outcome = exc
        if self.then is not None:
            self.then()

    async def second(self) -> str:
        self.gate = asyncio.get_running_loop().create_future()
        assert self.second_started is not None
        self.second_started.set()
        return await self.gate


def test_a_loop_stopped_by_the_blocking_call_that_ran_it_is_run_by_the_waiting_one(
        idle_loop: asyncio.AbstractEventLoop) -> None:
    """The first call's run ends with the second's operation pending: nobody else would run
    the loop again, so the second call runs it, and completes."""
    handover = Handover(idle_loop)
    handover.then = handover.open_gate
    handover.start()
    assert wait(handover.second(), timeout=WAIT) == "second done"
    handover.join()


def test_a_timeout_while_the_loop_is_stopped_ends_the_operation_there(
        idle_loop: asyncio.AbstractEventLoop) -> None:
    handover = Handover(idle_loop)  # the gate stays shut: the operation never completes
    handover.start()
    with pytest.raises(TimeoutError):
        wait(handover.second(), timeout=0.3)
    handover.join()
    # Ended on the loop as the timeout came (or, had this thread timed out before the first
    # stopped the loop, cancelled there to end when the loop runs next): the fixture checks that
    # nothing is left pending once the loop has run once more.
    idle_loop.run_until_complete(asyncio.sleep(0))


def test_ctrl_c_while_this_thread_runs_the_stopped_loop_ends_the_operation(
        idle_loop: asyncio.AbstractEventLoop, default_sigint: None) -> None:
    """As where a blocking call finds the loop idle: Ctrl-C cancels the operation and lets it
    end, then KeyboardInterrupt is raised (the fixture checks that nothing is left pending)."""
    assert threading.current_thread() is threading.main_thread()  # where Ctrl-C lands
    handover = Handover(idle_loop)
    handover.then = handover.open_gate
    handover.start()
    ended: list[str] = []

    async def interrupted() -> None:
        await handover.second()  # the loop now runs in this thread (see Handover)
        signal.raise_signal(signal.SIGINT)
        try:
            await asyncio.Event().wait()  # never set: only the Ctrl-C ends it
        except asyncio.CancelledError:
            ended.append("cancelled")
            raise

    with pytest.raises(KeyboardInterrupt):
        wait(interrupted(), timeout=WAIT)
    handover.join()
    assert ended == ["cancelled"]


def test_at_the_terminal_prompt_a_stopped_loop_is_left_to_the_prompt(
        idle_loop: asyncio.AbstractEventLoop, monkeypatch: pytest.MonkeyPatch) -> None:
    """The prompt's loop stops while a synchronous cell runs, and the prompt runs it again once
    the cell ends: a blocking call waiting in another thread leaves it to the prompt, which
    could not run it were it running in that thread."""
    from IPython.core import async_helpers

    monkeypatch.setattr(interactive, "front_end", lambda: "ipython")
    monkeypatch.setattr(interactive, "will_prompt", lambda: True)
    monkeypatch.setattr(async_helpers, "get_asyncio_loop", lambda: idle_loop)
    looks: list[bool] = []
    looked_twice = threading.Event()
    prompt_runs = interactive._prompt_runs

    def counted(loop: asyncio.AbstractEventLoop) -> bool:  # each look at the stopped loop
        looks.append(prompt_runs(loop))
        if len(looks) >= 2:
            looked_twice.set()
        return looks[-1]

    monkeypatch.setattr(interactive, "_prompt_runs", counted)
    finished = asyncio.Event()
    prompt_outcome: list[object] = []

    def prompt_again() -> None:  # the first thread: the prompt, once the cell has ended
        if not looked_twice.wait(WAIT):  # the waiting thread looked at the stopped loop twice
            prompt_outcome.append("the stopped loop was not looked at")
            return

        async def prompt() -> None:
            handover.open_gate()
            await asyncio.wait_for(finished.wait(), WAIT)

        try:
            idle_loop.run_until_complete(prompt())
            prompt_outcome.append("ran")
        except BaseException as exc:  # the loop running in the waiting thread, say
            prompt_outcome.append(exc)

    handover = Handover(idle_loop, then=prompt_again)
    handover.start()
    ran_in: list[int] = []

    async def second() -> str:
        result = await handover.second()
        ran_in.append(threading.get_ident())
        finished.set()
        return result

    assert wait(second(), timeout=WAIT) == "second done"
    handover.join()
    assert prompt_outcome == ["ran"]
    assert looks[:2] == [True, True]
    assert ran_in == [handover.thread.ident]


# ---------------------------------------------------------------------- the peer's own loop


def _in_a_thread(call: Callable[[], object]) -> object:
    """``call()``'s result (or what it raised) in a thread of its own."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(call())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(WAIT)
    assert not thread.is_alive() and len(outcome) == 1
    return outcome[0]


def test_blocking_waits_on_the_peers_own_loop(other_loop: asyncio.AbstractEventLoop,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """As in a worker thread of a notebook: the peers run on the kernel's loop, in the main
    thread, while event_loop() in the worker is another loop, idle (IPython's own)."""
    ipython_loop = asyncio.new_event_loop()
    monkeypatch.setattr(interactive, "_script_loop", ipython_loop)
    first, second = Peer("127.0.0.1", 0, config=FAST), Peer("127.0.0.1", 0, config=FAST)
    try:
        on(other_loop, first.start())
        on(other_loop, second.start())
        assert _in_a_thread(interactive.event_loop) is ipython_loop
        answer = _in_a_thread(lambda: blocking(first).ping(second.address))
        assert isinstance(answer, Contact), answer
        assert answer.id == second.id
    finally:
        on(other_loop, first.close())
        on(other_loop, second.close())
        ipython_loop.close()


def test_blocking_plain_methods_run_on_the_loops_thread(
        loop_elsewhere: asyncio.AbstractEventLoop) -> None:
    first, second = Peer("127.0.0.1", 0, config=FAST), Peer("127.0.0.1", 0, config=FAST)
    try:
        on(loop_elsewhere, first.start())
        on(loop_elsewhere, second.start())
        on(loop_elsewhere, second.bootstrap([first.address]))
        key = blocking(second).set(b"sudo python")
        assert blocking(second).forget(key) is True
        assert blocking(second).forget(key) is False
        # What the plain method raises is raised here.
        with pytest.raises(InvalidType):
            blocking(second).dht_forget(7)
    finally:
        on(loop_elsewhere, first.close())
        on(loop_elsewhere, second.close())
