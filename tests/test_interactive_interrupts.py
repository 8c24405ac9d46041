"""Ctrl-C at the prompt and in scripts, wherever it lands; and what a peer script and
``peer.stats`` take and give.

A Ctrl-C is a real SIGINT here, raised (``signal.raise_signal``) from inside the transport's
``sendto``: it lands while the event loop runs the peer's own code (``NodeProtocol.flush``), as
a Ctrl-C at the prompt sometimes does. Every test runs with Python's default SIGINT handler, as
an interactive session has it, and puts back the one it found.
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import gc
import signal
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from qadom import Peer
from qadom.call import Call
from qadom.contact import Address
from qadom.errors import OperationAbandoned
from qadom.interactive import (
    _interrupt_cells,
    _run_cell,
    blocking,
    event_loop,
    front_end,
    script_options,
    shutdown,
    start_peer,
    started,
    wait,
    will_prompt,
)

from helpers import FAST


@pytest.fixture
def ipython_shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """An IPython shell in this process, not IPython's global one (``get_ipython()`` stays
    None), its cells run on IPython's asyncio loop; what making it changes outside it is put
    back, and that loop closed, afterwards."""
    from IPython.core.async_helpers import get_asyncio_loop
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets.config import Config as IPythonConfig

    monkeypatch.setenv("IPYTHONDIR", str(tmp_path))
    monkeypatch.setitem(sys.modules, "__main__", sys.modules["__main__"])  # it takes __main__
    names = set(vars(builtins))  # it adds __IPYTHON__ and display
    no_history = IPythonConfig({"HistoryManager": {"enabled": False}})
    shell = InteractiveShell(config=no_history)  # type: ignore[no-untyped-call]
    try:
        yield shell
    finally:
        atexit.unregister(shell.atexit_operations)
        for name in set(vars(builtins)) - names:
            delattr(builtins, name)
        get_asyncio_loop().close()  # type: ignore[no-untyped-call]


@pytest.fixture
def script_loop(default_sigint: None) -> Iterator[None]:
    """Blocking helpers on qadom.interactive's own loop; everything closed afterwards."""
    assert front_end() == "script" and not will_prompt()
    try:
        yield
    finally:
        shutdown()
    assert started() == []


class CtrlC:
    """What :func:`ctrl_c_at_first_datagram` saw."""

    def __init__(self) -> None:
        self.silent: list[Address] = []  # the addresses to join through
        self.calls: list[Call[Any]] = []  # the calls peer.node.bootstrap started
        self.sent_to: list[Address] = []  # where the peer sent datagrams
        self.reported: list[object] = []  # what the loop's exception handler was given

    def assert_abandoned(self, peer: Peer) -> None:
        """The interrupted join ended in the node, nothing of it left pending, and the node's
        timer armed for what remains: nothing of it runs on, or is reported later."""
        assert len(self.calls) == 1
        assert isinstance(self.calls[0].exception(), OperationAbandoned)
        assert peer._futures == set()
        protocol = peer._protocol
        assert protocol is not None
        assert not peer.node.timer_changed and protocol._timer is not None
        gc.collect()  # a failure left unread in a future is reported as it goes
        assert self.reported == []

    def assert_flushed(self) -> None:
        """The Ctrl-C did come, and did not cut the flush under way short: both addresses were
        asked (KeyboardInterrupt comes where the caller waits, not inside the peer's code)."""
        assert set(self.sent_to) == set(self.silent)


@contextmanager
def ctrl_c_at_first_datagram(peer: Peer) -> Iterator[CtrlC]:
    """Two addresses of peers that never answer, for ``peer`` to join through: the first
    datagram it sends raises SIGINT from inside ``sendto``, before the flush under way has sent
    the datagram to the other."""
    node = peer.node
    protocol = peer._protocol
    assert protocol is not None and protocol.transport is not None
    transport = protocol.transport
    seen = CtrlC()
    real_bootstrap = node.bootstrap

    def bootstrap(*args: Any) -> Call[int]:
        call = real_bootstrap(*args)
        seen.calls.append(call)
        return call

    real_sendto = transport.sendto

    def sendto(data: bytes, address: Any = None) -> None:
        real_sendto(data, address)
        seen.sent_to.append(address)
        if len(seen.sent_to) == 1:
            signal.raise_signal(signal.SIGINT)  # Ctrl-C, while the flush is still sending

    with pytest.MonkeyPatch.context() as patch, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as one, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other:
        patch.setattr(node, "bootstrap", bootstrap)
        patch.setattr(transport, "sendto", sendto)
        protocol.loop.set_exception_handler(lambda loop, context: seen.reported.append(context))
        one.bind(("127.0.0.1", 0))
        other.bind(("127.0.0.1", 0))
        seen.silent = [one.getsockname(), other.getsockname()]
        try:
            yield seen
        finally:
            protocol.loop.set_exception_handler(None)


def test_an_exception_inside_the_first_flush_abandons_the_operation(
        default_sigint: None) -> None:
    """On a loop that lets Ctrl-C raise wherever it lands (run_until_complete, no
    qadom.interactive), a KeyboardInterrupt while an operation's first datagrams go out still
    abandons the operation in the node and re-arms the node's timer."""
    loop = asyncio.new_event_loop()
    peer = Peer("127.0.0.1", 0, config=FAST)
    try:
        loop.run_until_complete(peer.start())
        with ctrl_c_at_first_datagram(peer) as seen:
            task = loop.create_task(peer.bootstrap(seen.silent))
            with pytest.raises(KeyboardInterrupt):
                loop.run_until_complete(task)
            assert isinstance(task.exception(), KeyboardInterrupt)
            seen.assert_abandoned(peer)
    finally:
        loop.run_until_complete(peer.close())
        loop.close()


def test_ctrl_c_inside_the_peers_code_abandons_a_blocking_call(script_loop: None) -> None:
    """`sync.bootstrap([...])` at the prompt or in a script, Ctrl-C while the loop sends its
    first datagrams: KeyboardInterrupt reaches the caller and the join is abandoned in the node,
    not left running in the background to fail later with nobody to hear it."""
    peer = start_peer(port=0, config=FAST)
    with ctrl_c_at_first_datagram(peer) as seen:
        with pytest.raises(KeyboardInterrupt):
            blocking(peer).bootstrap(seen.silent)
        assert asyncio.all_tasks(event_loop()) == set()
        seen.assert_flushed()
        seen.assert_abandoned(peer)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    blocking(peer).append(1, 2)  # the peer works as before
    assert blocking(peer).search(1) == {2}


@pytest.mark.parametrize("magic", [None, ("autoawait", "asyncio")], ids=["default", "autoawait"])
def test_ctrl_c_inside_the_peers_code_stops_an_await_cell(
        default_sigint: None, ipython_shell: Any, magic: tuple[str, str] | None) -> None:
    """`await peer.bootstrap([...])` in an IPython cell, Ctrl-C while the loop sends its first
    datagrams: the cell ends with KeyboardInterrupt and the join is abandoned. So too after
    `%autoawait asyncio`, which sets IPython's own runner again (with which the cell ran on in
    the background)."""
    shell = ipython_shell
    _interrupt_cells(shell)  # as starting a peer at the terminal prompt does
    if magic is not None:
        shell.run_line_magic(*magic)
    peer = Peer("127.0.0.1", 0, config=FAST)
    _run_cell(peer.start())  # on the loop IPython runs its cells on
    try:
        with ctrl_c_at_first_datagram(peer) as seen:
            shell.user_ns["peer"] = peer
            result = shell.run_cell(f"await peer.bootstrap({seen.silent!r})")
            assert isinstance(result.error_in_exec, KeyboardInterrupt)
            assert asyncio.all_tasks(peer._protocol.loop) == set()  # type: ignore[union-attr]
            seen.assert_flushed()
            seen.assert_abandoned(peer)
    finally:
        _run_cell(peer.close())


async def test_stats_reads_zero_for_a_counter_not_counted_yet() -> None:
    """README's own example, peer.stats["pubsub_dropped"], on a peer that dropped nothing."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        stats = peer.stats
        assert stats["pubsub_dropped"] == 0 and stats["requests_in"] == 0
        stats["requests_in"] += 5  # a copy: the node's own counters are not touched
        assert peer.stats["requests_in"] == 0


@pytest.mark.parametrize(("argv", "environ", "named"), [
    ([], {"QADOM_PORT": "\u00b2"}, "QADOM_PORT"),  # str.isdigit() takes it, int() does not
    ([], {"QADOM_PORT": "\u0663"}, "QADOM_PORT"),  # int() reads an Arabic-Indic 3 as 3
    ([], {"QADOM_PORT": "1" * 5000}, "QADOM_PORT"),  # more digits than int() converts
    (["--port", "\u0663"], {}, "--port"),
    (["--port", "1_0"], {}, "--port"),  # int() reads it as 10
    (["--port", "\u00b2"], {}, "--port"),
])
def test_a_port_not_in_ascii_digits_is_a_usage_error(
        argv: list[str], environ: dict[str, str], named: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    """As README says of a bad option: status 2 and one line naming it, not a traceback or a
    port nobody typed."""
    with pytest.raises(SystemExit) as info:
        script_options("t", port=9999, argv=argv, environ=environ)
    assert info.value.code == 2
    assert f"error: {named} must be a port number" in capsys.readouterr().err.splitlines()[-1]


def test_a_port_in_ascii_digits_is_taken() -> None:
    assert script_options("t", port=9999, argv=["--port", " 80 "], environ={}).port == 80
    assert script_options("t", port=9999, argv=[], environ={"QADOM_PORT": "0"}).port == 0
    assert script_options("t", port=9999, argv=[], environ={}).port == 9999



async def ctrl_c_twice_in_synchronous_code(steps: list[str]) -> str:
    """After its first ``await``, synchronous code that does not return to the loop for up to
    two seconds (a long loop, a ``time.sleep``, as in a cell), with a Ctrl-C in each of its
    first two steps. ``steps`` lists each step as it starts: "Ctrl-C" or "went on"."""
    await asyncio.sleep(0)
    deadline = time.monotonic() + 2.0  # bounded, should the Ctrl-Cs not stop it
    while time.monotonic() < deadline:
        ctrl_c = len(steps) < 2
        steps.append("Ctrl-C" if ctrl_c else "went on")
        if ctrl_c:
            signal.raise_signal(signal.SIGINT)
        time.sleep(0.01)
    return "ran to the end"


def test_a_second_ctrl_c_stops_a_blocking_call_in_synchronous_code(script_loop: None) -> None:
    """The first Ctrl-C is left for the loop to deliver, which it cannot while the task runs
    synchronous code; the second raises KeyboardInterrupt where it lands, as by default."""
    steps: list[str] = []
    loop = event_loop()
    tasks: list[asyncio.Task[Any]] = []
    create_task = loop.create_task

    def keep(coroutine: Any, **kwargs: Any) -> asyncio.Task[Any]:
        tasks.append(create_task(coroutine, **kwargs))
        return tasks[-1]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loop, "create_task", keep)
        with pytest.raises(KeyboardInterrupt) as raised:
            wait(ctrl_c_twice_in_synchronous_code(steps))
    assert steps == ["Ctrl-C", "Ctrl-C"]  # at the second, not before, and nothing after
    # The task ended with the very KeyboardInterrupt raised, and its outcome was read: asyncio
    # will not report it as never retrieved once the task is gone.
    (task,) = tasks
    assert task.done() and not task._log_traceback  # asyncio's "never retrieved" mark
    assert task.exception() is raised.value
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # put back
    assert asyncio.all_tasks(event_loop()) == set()
    assert wait(asyncio.sleep(0, "next")) == "next"  # the first Ctrl-C does not stop the next


@pytest.mark.parametrize("magic", [None, ("autoawait", "asyncio")], ids=["default", "autoawait"])
def test_a_second_ctrl_c_stops_an_await_cell_in_synchronous_code(
        default_sigint: None, ipython_shell: Any, magic: tuple[str, str] | None) -> None:
    """An ``await`` cell that goes on in synchronous code (an endless loop, say) ends at the
    second Ctrl-C with KeyboardInterrupt: the kernel is not left unable to interrupt it."""
    from IPython.core.async_helpers import get_asyncio_loop

    shell = ipython_shell
    _interrupt_cells(shell)  # as starting a peer at the terminal prompt does
    if magic is not None:
        shell.run_line_magic(*magic)
    steps: list[str] = []
    shell.user_ns.update(asyncio=asyncio, spin=ctrl_c_twice_in_synchronous_code, steps=steps)
    result = shell.run_cell("await spin(steps)")
    assert isinstance(result.error_in_exec, KeyboardInterrupt)
    assert steps == ["Ctrl-C", "Ctrl-C"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    assert asyncio.all_tasks(get_asyncio_loop()) == set()  # type: ignore[no-untyped-call]
    assert shell.run_cell("await asyncio.sleep(0, 'next')").result == "next"
