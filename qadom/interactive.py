"""qadom peers at the IPython prompt, in Jupyter and in plain scripts, serving all the time.

One design everywhere: **a peer runs on the event loop of the front end that started it**, and
that loop keeps running while the front end waits for you.

* **Jupyter** (ipykernel): the kernel's asyncio loop runs all the time, between cells too, and
  cells (top-level ``await`` included) run on it. ``peer = await start(...)`` starts the peer on
  that loop, so it answers other peers while the notebook sits idle.
* **IPython in a terminal** (``ipython -i peers/peer0.py``): IPython's autoawait runs every
  ``await`` cell on one loop for the whole session
  (:func:`IPython.core.async_helpers.get_asyncio_loop`). Starting a peer here also turns on
  IPython's asyncio event-loop integration (what ``%gui asyncio`` does), with which IPython runs
  the prompt itself as a task of that same loop. So while the prompt waits for input the loop
  runs, and the peer serves; ``await peer.get(key)`` then runs on that loop too.
* **A plain script**: a loop owned by this module (asyncio's own, as in IPython and Jupyter;
  uvloop can lose a Ctrl-C that arrives just before its loop starts running). Blocking calls run
  it until they complete, and :func:`serve_forever` runs it until Ctrl-C or SIGTERM: in a script
  the peers serve while one of those runs, which is all the time once the script is done.

The blocking form, for code without ``await``: :func:`wait` runs any awaitable to completion on
that loop, and :func:`blocking` wraps a peer so that ``sync.get(key)`` returns the value itself.
Both work at the terminal prompt and in scripts. Where the loop is already running in the calling
thread (a Jupyter cell, inside a coroutine) a blocking call cannot work without freezing that
loop: it raises :class:`~qadom.errors.LoopRunningError` and nothing is started; write ``await``.
Called from another thread while that loop runs in its own (a script's main thread in
:func:`serve_forever`, the terminal prompt waiting for input, another thread's blocking call), a
blocking call runs the operation on that loop, in that loop's thread, as a peer requires, and
waits for it; should the loop stop meanwhile (the other thread's blocking call ended), the
waiting thread runs it until the operation completes, except at the terminal prompt, which runs
it again once its cell ends (see :func:`wait`). :func:`blocking` waits on the peer's own loop,
its plain methods (``forget``...) included, so it also works from a worker thread of a notebook;
:func:`wait` runs a bare awaitable on :func:`event_loop` as the calling thread sees it, which in
such a thread is not the kernel's loop.

Ctrl-C stops what a blocking call or an ``await`` cell at the terminal prompt is waiting for: the
operation is cancelled where it waits and KeyboardInterrupt is shown, as for any other cell; it
does not run on in the background (a peer that was joining is closed again). That holds wherever
the Ctrl-C lands: while the loop runs a peer's own code, it takes effect once that code is done
(never half-way through it); and it still holds after ``%autoawait asyncio``. A second Ctrl-C
raises KeyboardInterrupt at once, wherever it lands, as by default: it stops code that never
returns to the loop (an endless loop or a ``time.sleep`` in an ``await`` cell).

Limits, stated plainly: while a *synchronous* cell runs at the terminal prompt (a long loop, a
``time.sleep``) the loop is not running and the peer does not answer until the cell ends. With
``ipython --simple-prompt`` the prompt is a plain ``input()`` that cannot run the loop; the peer
then answers only while cells run, and :func:`start` warns about it.

```python
from qadom.interactive import start_peer, blocking

peer = start_peer(port=0, bootstrap=["127.0.0.1:9999"])  # blocking: prompt or script
sync = blocking(peer)
key = sync.set(b"sudo python")
sync.get(key)                     # b'sudo python'
# at the IPython prompt or in Jupyter:  await peer.get(key)
```
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import contextlib
import errno
import inspect
import os
import re
import signal
import sys
import threading
import time
import warnings
from collections.abc import (
    Awaitable,
    Callable,
    Coroutine,
    Generator,
    Iterable,
    Iterator,
    Sequence,
)
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from .config import Config
from .contact import (
    Address,
    check_bind_host,
    format_address,
    parse_host_port,
    unreachable_from,
)
from .errors import (
    InvalidArgument,
    InvalidType,
    LoopRunningError,
    NoPeersError,
    NotFoundError,
    QadomError,
    WrongLoopError,
)
from .peer import Peer
from .transport import running_loop

T = TypeVar("T")

_script_loop: asyncio.AbstractEventLoop | None = None
_started: list[Peer] = []
_exit_hook_registered = False  # _close_at_exit is registered with atexit
EXIT_TIMEOUT = 5.0
"""Seconds the peers still open when the interpreter exits may take to close (see
:func:`serve_at_prompt`)."""
THREAD_POLL = 0.1
"""Seconds between two looks, by a blocking call that waits in another thread for the loop
running its operation, at whether that loop was stopped or closed meanwhile: the operation would
then not complete (the call runs a stopped loop itself; a closed one is an error), and the call
would wait forever (see :func:`wait`)."""


# ---------------------------------------------------------------------- where we run

def front_end() -> str:
    """``"jupyter"`` in an IPython kernel, ``"ipython"`` in terminal IPython, else ``"script"``."""
    shell = _ipython_shell()
    if shell is None:
        return "script"
    from IPython.terminal.interactiveshell import TerminalInteractiveShell

    return "ipython" if isinstance(shell, TerminalInteractiveShell) else "jupyter"


def event_loop() -> asyncio.AbstractEventLoop:
    """The loop peers started here run on: the running loop if there is one (Jupyter, a
    coroutine), IPython's autoawait loop in terminal IPython, else this module's own loop."""
    with contextlib.suppress(RuntimeError):
        return asyncio.get_running_loop()
    if _ipython_shell() is not None:
        from IPython.core.async_helpers import get_asyncio_loop

        loop: asyncio.AbstractEventLoop = get_asyncio_loop()  # type: ignore[no-untyped-call]
        return loop
    global _script_loop
    if _script_loop is None or _script_loop.is_closed():
        _script_loop = asyncio.new_event_loop()
    return _script_loop


def will_prompt() -> bool:
    """True when a prompt follows that keeps the loop running: in Jupyter, and in terminal IPython
    when an interactive prompt comes after the script (``ipython -i``). A script uses it to decide
    whether to hand over to the prompt or to :func:`serve_forever`."""
    where = front_end()
    if where == "jupyter":
        return True
    if where == "script":
        return False
    from IPython.terminal.ipapp import TerminalIPythonApp

    if not TerminalIPythonApp.initialized():  # an embedded shell: its prompt is running already
        return True
    return bool(TerminalIPythonApp.instance().interact)


def serve_at_prompt(peer: Peer | None = None) -> bool:
    """Make terminal IPython run its prompt on the peers' loop (``%gui asyncio``), so peers keep
    serving while the prompt waits. Returns True when the prompt will keep the loop running (always
    so in Jupyter); warns and returns False when it cannot. :meth:`Peer.start` calls it with the
    peer it started.

    When it returns True, ``peer`` counts among the peers started here (:func:`started`), and
    those still open when the interpreter exits (``exit`` at the prompt, a kernel shut down) are
    closed then, each on the loop it runs on (whichever loops earlier peers ran on, a cell's
    ``asyncio.run()`` included) unless that loop is running or closed, within
    :data:`EXIT_TIMEOUT` seconds in all: their subscriptions are ended at their relays
    (UNSUBSCRIBE), the contacts of a peer with a data directory are saved, and their sockets are
    closed."""
    where = front_end()
    if where != "ipython":
        if where == "jupyter":
            _close_peers_at_exit(peer)
        return where == "jupyter"
    if not will_prompt():  # `ipython script.py`: no prompt follows; serve_forever will serve
        return False
    shell = _ipython_shell()
    _interrupt_cells(shell)
    if shell.simple_prompt:
        warnings.warn("IPython's --simple-prompt cannot run the event loop while it waits: the "
                      "peer answers only while a cell runs", RuntimeWarning, stacklevel=2)
        return False
    if shell.active_eventloop is not None and shell.active_eventloop != "asyncio":
        warnings.warn(f"IPython already integrates the {shell.active_eventloop!r} event loop: the "
                      "peer answers only while a cell runs", RuntimeWarning, stacklevel=2)
        return False
    if shell.active_eventloop is None:
        shell.enable_gui("asyncio")
    _close_peers_at_exit(peer)
    return True


def _close_peers_at_exit(peer: Peer | None) -> None:
    """Register :func:`_close_at_exit` once; ``peer`` is closed then too."""
    global _exit_hook_registered
    if peer is not None and peer not in _started:
        started()  # forgets the closed ones: none is kept alive here
        _started.append(peer)
    if not _exit_hook_registered:
        _exit_hook_registered = True
        atexit.register(_close_at_exit)


def _close_at_exit() -> None:
    """Close the peers started here that are still open (the atexit hook of
    :func:`serve_at_prompt`), each on the loop it runs on, bounded by :data:`EXIT_TIMEOUT` in
    all. The loop is the peer's own, not one recorded earlier: a first peer may have run on a
    cell's ``asyncio.run()``, whose loop has ended since. Nothing runs on a loop that is running
    (in another thread) or closed: its peers are left as they are. A failure is one line on
    stderr, not a traceback; after a Ctrl-C no other loop is run."""
    by_loop: dict[asyncio.AbstractEventLoop, list[Peer]] = {}
    for peer in started():
        loop = _loop_of(peer)
        if loop is not None and not loop.is_running() and not loop.is_closed():
            by_loop.setdefault(loop, []).append(peer)
    deadline = time.monotonic() + EXIT_TIMEOUT
    for loop, peers in by_loop.items():
        task = loop.create_task(asyncio.wait_for(_close_each(peers),
                                                 max(0.0, deadline - time.monotonic())))
        try:
            loop.run_until_complete(task)
        except BaseException as exc:  # Ctrl-C or a failure while exiting: say so and go on exiting
            task.cancel()
            with contextlib.suppress(BaseException):  # let the cancelled task end, quietly
                loop.run_until_complete(asyncio.gather(task, return_exceptions=True))
            print(f"qadom: could not close the peers at exit: {exc!r}", file=sys.stderr)
            if isinstance(exc, KeyboardInterrupt):
                return


def _loop_of(peer: Peer) -> asyncio.AbstractEventLoop | None:
    """The loop ``peer`` was started on, None if it has no socket (never started, or closed)."""
    protocol = peer._protocol
    return None if protocol is None else protocol.loop


async def _close_each(peers: list[Peer]) -> None:
    for peer in peers:
        await close(peer)


def _interrupt_cells(shell: Any) -> None:
    """Make Ctrl-C stop an ``await`` cell where it waits, as it stops any other cell: IPython's
    own runner lets the interrupted cell run on in the loop, which the prompt keeps running. It
    stays so when ``%autoawait asyncio`` (or anything else) sets IPython's runner again."""
    from IPython.core import async_helpers

    if shell.loop_runner is getattr(async_helpers, "_asyncio_runner", None):
        shell.loop_runner = _run_cell
    shell.observe(_keep_interrupting_cells, names="loop_runner")  # once: traitlets dedupes


def _keep_interrupting_cells(change: Any) -> None:
    """Put :func:`_run_cell` back when IPython's asyncio runner replaces it (``%autoawait
    asyncio`` sets the runner each time); another runner (trio, curio) is left alone."""
    from IPython.core import async_helpers

    if change.new is getattr(async_helpers, "_asyncio_runner", None):
        change.owner.loop_runner = _run_cell


def _run_cell(coroutine: Coroutine[Any, Any, T]) -> T:
    """IPython's asyncio runner, except that a Ctrl-C which arrives while the cell awaits is
    raised in the cell, at its ``await``: IPython shows it there and the cell ends. It never
    lands inside a callback the loop runs (see :class:`_CtrlC`)."""
    from IPython.core.async_helpers import get_asyncio_loop

    loop: asyncio.AbstractEventLoop = get_asyncio_loop()  # type: ignore[no-untyped-call]
    cell = _Interruptible(coroutine)
    task = loop.create_task(cell)
    with _CtrlC(loop, task, cell):
        while True:
            try:
                return loop.run_until_complete(task)
            except KeyboardInterrupt as interrupt:  # raised in the loop all the same (_CtrlC)
                if task.done():
                    _read_outcome(task, interrupt)
                    raise
                cell.interrupted = True
                task.cancel()


def _read_outcome(task: asyncio.Future[Any], interrupt: KeyboardInterrupt) -> None:
    """``task`` is done as a KeyboardInterrupt is raised: read its outcome, so that asyncio
    does not report it later as never retrieved (a second Ctrl-C raised inside the task ends it
    with that very KeyboardInterrupt). Another exception it ended with becomes the interrupt's
    cause, shown with it rather than lost."""
    if not task.cancelled():
        error = task.exception()
        if error is not None and error is not interrupt:
            interrupt.__cause__ = error


class _CtrlC:
    """Within ``with``, Ctrl-C cancels ``task`` from the loop, between two callbacks, as
    :class:`asyncio.Runner` does, instead of raising KeyboardInterrupt wherever the loop happens
    to be: inside a peer's own code (a datagram half sent, the node's timer not re-armed, an
    operation that goes on in the background) the operation could not be abandoned.
    ``interrupted`` then says the cancellation was Ctrl-C's, and ``cell`` (if given) is told
    before it is cancelled.

    Installed only in the main thread and where SIGINT has Python's default handler (a handler
    of the program's own is left alone), and the default handler is back afterwards. Only the
    first Ctrl-C is deferred so: a Ctrl-C when ``task`` is done, and any later one, raises
    KeyboardInterrupt at once, wherever it lands, as by default, whether the cancellation was
    delivered or not. A second Ctrl-C thus still stops a task that ignores the first, or that
    runs synchronous code (a long loop, a ``time.sleep``) and never lets the loop deliver it."""

    def __init__(self, loop: asyncio.AbstractEventLoop, task: asyncio.Future[Any],
                 cell: _Interruptible[Any] | None = None) -> None:
        self._loop = loop
        self._task = task
        self._cell = cell
        self._count = 0  # the Ctrl-Cs that came
        self.interrupted = False  # the cancellation was delivered
        self._handler = self._on_sigint  # one bound method, to find it again in __exit__
        self._installed = False

    def __enter__(self) -> _CtrlC:
        if (threading.current_thread() is threading.main_thread()
                and signal.getsignal(signal.SIGINT) is signal.default_int_handler):
            with contextlib.suppress(ValueError):  # an interpreter without signal support
                signal.signal(signal.SIGINT, self._handler)
                self._installed = True
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._installed and signal.getsignal(signal.SIGINT) is self._handler:
            signal.signal(signal.SIGINT, signal.default_int_handler)

    def _on_sigint(self, signum: int, frame: object) -> None:
        self._count += 1
        if self._count == 1 and not self._task.done():
            # Thread-safe: it also wakes a loop blocked in select(), which a signal does not.
            self._loop.call_soon_threadsafe(self._cancel)
            return
        # A later one may come while the task runs code that does not return to the loop, the
        # cancellation still queued behind it: only raising here stops that code.
        raise KeyboardInterrupt

    def _cancel(self) -> None:
        if self._task.done():
            return  # it completed first: its outcome stands
        self.interrupted = True
        if self._cell is not None:
            self._cell.interrupted = True
        self._task.cancel()


class _Interruptible(Coroutine[Any, Any, T]):
    """``coroutine`` as a task runs it, except that once ``interrupted`` is set the cancellation
    the task passes in arrives in the coroutine as KeyboardInterrupt."""

    def __init__(self, coroutine: Coroutine[Any, Any, T]) -> None:
        self._coroutine = coroutine
        self.interrupted = False

    def send(self, value: Any) -> Any:
        return self._coroutine.send(value)

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> Any:
        error = typ if val is None and isinstance(typ, BaseException) else val
        if self.interrupted and isinstance(error, asyncio.CancelledError):
            self.interrupted = False
            return self._coroutine.throw(KeyboardInterrupt())
        if val is None and tb is None:
            return self._coroutine.throw(typ)
        return self._coroutine.throw(typ, val, tb)

    def close(self) -> None:
        self._coroutine.close()

    def __await__(self) -> Generator[Any, None, T]:
        return self._coroutine.__await__()


# ---------------------------------------------------------------------- blocking form

def wait(awaitable: Awaitable[T], timeout: float | None = None) -> T:
    """Run ``awaitable`` to completion on :func:`event_loop` and return its result (blocking).

    Raises :class:`~qadom.errors.LoopRunningError` where a loop is already running in this
    thread (a Jupyter cell, a coroutine), and nothing is started: write ``await`` there.
    ``timeout`` (seconds) bounds the wait with :class:`TimeoutError`. Where that loop is idle,
    this thread runs it until ``awaitable`` completes.

    Where that loop is running in another thread (the main thread of a script in
    :func:`serve_forever`, the terminal prompt waiting for input, another thread's blocking
    call, while this runs in a thread of its own), ``awaitable`` runs on that loop, in that
    loop's thread (as :func:`asyncio.run_coroutine_threadsafe` runs it), and this thread waits
    for its outcome. Should that loop stop with the operation pending (the other thread's
    blocking call has ended), this thread runs the loop itself until the operation completes,
    as it runs an idle loop (a thread that starts the loop again first completes it instead),
    except at the terminal IPython prompt: its loop stops while a synchronous cell runs, and the
    prompt runs it again once the cell ends (it could not, were the loop running here), so the
    operation completes then, unless ``timeout`` passes first. If the loop is closed first, the
    operation can never complete: :class:`~qadom.errors.WrongLoopError`, within
    :data:`THREAD_POLL` seconds. An exception raised here (Ctrl-C in the main thread, a
    timeout) cancels the operation on its loop.

    From another thread the awaitable runs on :func:`event_loop` as that thread sees it, not on
    a peer's loop: in a script the module's own loop, at the terminal prompt IPython's autoawait
    loop, and in Jupyter IPython's autoawait loop too (a worker thread has no running loop),
    which is *not* the kernel's loop that runs the cells and the peers started in them; a
    peer's operation handed to ``wait`` from a worker thread of a notebook then raises
    WrongLoopError. :func:`blocking` waits on the peer's own loop instead: use
    ``blocking(peer).get(key)`` there."""
    return _wait(awaitable, timeout, None)


def _wait(awaitable: Awaitable[T], timeout: float | None,
          loop: asyncio.AbstractEventLoop | None) -> T:
    """:func:`wait` on ``loop``, or on :func:`event_loop` when ``loop`` is None."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        _discard(awaitable)
        raise LoopRunningError("the event loop is running in this thread (Jupyter or a "
                               "coroutine): write `await ...` instead of a blocking call")
    if not inspect.isawaitable(awaitable):
        raise InvalidType(f"wait() needs an awaitable, not {type(awaitable).__name__}")
    if loop is None:
        loop = event_loop()
    coroutine: Coroutine[Any, Any, T] = _await(awaitable)
    if timeout is not None:
        coroutine = asyncio.wait_for(coroutine, timeout)
    if loop.is_running():  # in another thread: none runs in this one
        return _wait_from_another_thread(loop, coroutine, timeout)
    return _run_task(loop, loop.create_task(coroutine))


def _run_task(loop: asyncio.AbstractEventLoop, task: asyncio.Task[T]) -> T:
    """Run the idle ``loop`` in this thread until ``task`` is done; its outcome. Ctrl-C cancels
    the operation (a peer being started is closed again) rather than leave it pending, to run on
    whenever the loop runs next, lets it end, then raises KeyboardInterrupt."""
    with _CtrlC(loop, task) as ctrl_c:
        try:
            return loop.run_until_complete(task)
        except asyncio.CancelledError:
            if not ctrl_c.interrupted:
                raise
        except KeyboardInterrupt as interrupt:  # raised in the loop all the same (see _CtrlC)
            if task.done():
                _read_outcome(task, interrupt)
                raise
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                loop.run_until_complete(task)
    raise KeyboardInterrupt


def _discard(awaitable: object) -> None:
    """Close ``awaitable`` if it is a coroutine not started yet: it will never run, and closing
    it avoids a "never awaited" warning."""
    if inspect.iscoroutine(awaitable) and (
            inspect.getcoroutinestate(awaitable) == inspect.CORO_CREATED):
        awaitable.close()


class _Submitted(Generic[T]):
    """``coroutine`` handed to ``loop`` by a thread that does not run it: the loop makes it a
    task when it runs next, in whichever thread runs it. :class:`asyncio.Future` and
    :func:`asyncio.run_coroutine_threadsafe` keep that task to themselves; here the waiting
    thread needs it, to run the loop itself until that task is done (see :func:`_run_here`).
    RuntimeError if ``loop`` is closed."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 coroutine: Coroutine[Any, Any, T]) -> None:
        self.loop = loop
        self._coroutine = coroutine
        self._task: asyncio.Task[T] | None = None
        self._lock = threading.Lock()  # the loop's thread and the waiting one may both start it
        self._finished = threading.Event()
        loop.call_soon_threadsafe(self.start)

    def start(self) -> asyncio.Task[T]:
        """The operation's task, made now if it was not yet. Called on the loop's thread, or by
        the waiting thread while the loop runs in none."""
        with self._lock:
            if self._task is None:
                self._task = self.loop.create_task(self._coroutine)
                self._task.add_done_callback(lambda _: self._finished.set())
            return self._task

    def wait_done(self, timeout: float) -> bool:
        """True once the operation is done, waiting at most ``timeout`` seconds for that."""
        task = self._task
        return self._finished.wait(timeout) or (task is not None and task.done())

    def result(self) -> T:
        """The operation's outcome: its result, or its exception raised. Once it is done."""
        assert self._task is not None
        return self._task.result()

    def discard(self) -> None:
        """The loop was closed: close the coroutine if it never started."""
        if self._task is None:
            _discard(self._coroutine)

    def cancel(self) -> None:
        """Cancel the operation on its loop, in the thread running it, unless it is done or the
        loop closed."""
        if self._finished.is_set():
            return
        with contextlib.suppress(RuntimeError):  # closed since: nothing will run it
            self.loop.call_soon_threadsafe(lambda: self.start().cancel())


def _wait_from_another_thread(loop: asyncio.AbstractEventLoop,
                              coroutine: Coroutine[Any, Any, T], timeout: float | None) -> T:
    """:func:`wait` for a ``loop`` that runs in another thread: run ``coroutine`` there, in
    that thread (a loop, and a peer's node, are driven by their own thread alone), and wait
    here for its outcome, running the loop here should it stop meanwhile, as :func:`wait`
    documents."""
    try:
        submitted = _Submitted(loop, coroutine)
    except RuntimeError:  # closed since it was seen running
        _discard(coroutine)
        raise WrongLoopError("the event loop ended before the operation could start") from None
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        # Waited for in slices: nothing tells this thread that the loop was stopped or closed
        # with the operation pending, and then it would never complete.
        while not submitted.wait_done(THREAD_POLL):
            if loop.is_closed():
                submitted.discard()  # never started: the loop was closed before it ran it
                raise WrongLoopError("the event loop ended before the operation completed (a "
                                     "peer serves only while its loop runs)")
            if not loop.is_running() and not _prompt_runs(loop):
                # The thread that ran the loop stopped it (its own blocking call ended), and
                # may never run it again: run it here, as wait() runs an idle loop.
                _run_here(submitted)
                continue
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"the operation did not complete within {timeout} s")
    except BaseException:
        submitted.cancel()
        raise
    return submitted.result()


def _run_here(submitted: _Submitted[Any]) -> None:
    """Run ``submitted``'s loop, idle, in this thread until its operation is done, with Ctrl-C
    handled as :func:`wait` handles it on an idle loop (the operation cancelled and ended, then
    KeyboardInterrupt). Returns at once, having run nothing, when another thread started the
    loop, or closed it, since it was seen idle: the caller looks again."""
    loop = submitted.loop
    try:
        task = submitted.start()
    except RuntimeError:  # closed since it was seen idle
        return
    try:
        _run_task(loop, task)
    except KeyboardInterrupt:
        raise
    except BaseException:
        # The operation's own outcome, which the caller reads from the task, or the
        # RuntimeError of a loop started or closed elsewhere meanwhile (the task not done).
        return


def _prompt_runs(loop: asyncio.AbstractEventLoop) -> bool:
    """True when ``loop`` is the terminal IPython prompt's, with the prompt still to come: the
    prompt runs it again once the synchronous cell now running ends, and could not if another
    thread were running it then."""
    if front_end() != "ipython" or not will_prompt():
        return False
    from IPython.core.async_helpers import get_asyncio_loop

    prompt_loop: asyncio.AbstractEventLoop = get_asyncio_loop()  # type: ignore[no-untyped-call]
    return loop is prompt_loop


async def _called(function: Callable[..., Any], args: tuple[Any, ...],
                  kwargs: dict[str, Any]) -> Any:
    """``function(*args, **kwargs)``, awaited if it returns an awaitable, as a coroutine that a
    peer's loop runs in its own thread (see :class:`Blocking`)."""
    result = function(*args, **kwargs)
    return await result if inspect.isawaitable(result) else result


def _own_loop(target: Any) -> asyncio.AbstractEventLoop | None:
    """The loop ``target`` runs on if it is a started peer and that loop is not closed."""
    if not isinstance(target, Peer):
        return None
    loop = _loop_of(target)
    return None if loop is None or loop.is_closed() else loop


class Blocking:
    """A peer whose coroutine methods block and return their result: ``blocking(peer).get(key)``
    is ``await peer.get(key)`` for code without ``await``. Other attributes pass through.

    A started peer's operations wait on that peer's own loop (as :func:`wait` does on
    :func:`event_loop`), whichever loop :func:`event_loop` is in the calling thread: from a
    worker thread of a notebook, ``blocking(peer).get(key)`` runs on the kernel's loop where the
    peer runs. Where that loop is running in another thread (and none in this one), every
    method called here runs there, in that loop's thread, plain ones (``forget``,
    ``dht_forget``...) included, and returns its result or raises its exception here, with the
    waiting rules of :func:`wait` (a loop that stops meanwhile is run here, a closed one is
    WrongLoopError). Otherwise a plain method runs in the calling thread."""

    __slots__ = ("_target",)

    def __init__(self, target: Any) -> None:
        self._target = target

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._target, name)
        if not callable(attribute):
            return attribute

        def call(*args: Any, **kwargs: Any) -> Any:
            loop = _own_loop(self._target)
            if loop is not None and loop.is_running() and running_loop() is None:
                # In another thread: the peer's node is driven by that thread alone.
                return _wait_from_another_thread(loop, _called(attribute, args, kwargs), None)
            result = attribute(*args, **kwargs)
            return _wait(result, None, loop) if inspect.isawaitable(result) else result

        call.__name__ = name
        call.__doc__ = getattr(attribute, "__doc__", None)
        return call

    def __dir__(self) -> list[str]:  # tab completion shows the peer's API
        return [n for n in dir(self._target) if not n.startswith("_")]

    def __repr__(self) -> str:
        return f"blocking({self._target!r})"


def blocking(peer: Any) -> Blocking:
    """``peer`` with blocking methods; see :class:`Blocking`."""
    return Blocking(peer)


# ---------------------------------------------------------------------- starting peers

async def start(host: str = "127.0.0.1", port: int = 0, *,
                bootstrap: str | tuple[str, int] | Iterable[str | tuple[str, int]] | None = None,
                config: Config | None = None, **options: Any) -> Peer:
    """Start a :class:`~qadom.peer.Peer` on the running loop, join it through ``bootstrap``
    (a ``"host:port"`` string, a (host, port) pair, or a list of either) if given, and keep it
    serving at the prompt (see :func:`serve_at_prompt`). ``port=0`` picks a free port: read
    ``peer.address``."""
    addresses = [parse_address(a) for a in _address_list(bootstrap)]
    peer = Peer(host, port, config=config, **options)
    await peer.start()  # which keeps it serving at the prompt, and may have listed it
    if peer not in _started:
        _started.append(peer)
    if addresses:
        try:
            await peer.bootstrap(addresses)
        except BaseException:
            await close(peer)
            raise
    return peer


def start_peer(host: str = "127.0.0.1", port: int = 0, *,
               bootstrap: str | tuple[str, int] | Iterable[str | tuple[str, int]] | None = None,
               config: Config | None = None, **options: Any) -> Peer:
    """The blocking form of :func:`start`, for scripts and the terminal prompt."""
    return wait(start(host, port, bootstrap=bootstrap, config=config, **options))


async def close(peer: Peer | None = None) -> None:
    """Close ``peer``, or every peer started here when ``peer`` is None."""
    for each in [peer] if peer is not None else list(_started):
        if each in _started:
            _started.remove(each)
        await each.close()


def started() -> list[Peer]:
    """The peers started here and not closed yet (by :func:`close` or their own ``close``),
    oldest first."""
    _started[:] = [peer for peer in _started if not peer.closed]
    return list(_started)


def _address_list(bootstrap: Any) -> list[Any]:
    """``bootstrap`` as a list of addresses: one ``"host:port"`` or one (host, port) pair is a
    list of one."""
    if bootstrap is None:
        return []
    if isinstance(bootstrap, str) or (isinstance(bootstrap, tuple) and len(bootstrap) == 2
                                      and isinstance(bootstrap[1], int)):
        return [bootstrap]
    if not isinstance(bootstrap, Iterable):
        raise InvalidType("bootstrap must be 'host:port', a (host, port) pair, or a list of them")
    return list(bootstrap)


def serve_forever(announce: str | None = "serving until Ctrl-C") -> None:
    """Serve every peer started here until Ctrl-C or SIGTERM, then close them (blocking).

    ``announce`` is printed to stderr once Ctrl-C is handled (None: nothing printed). A Ctrl-C
    that comes before then, while the handlers are being put in place, stops it as well: it
    returns once the peers are closed, without KeyboardInterrupt. In Jupyter there is nothing to
    do: the kernel's loop serves already, so this raises :class:`~qadom.errors.LoopRunningError`
    like any blocking call there."""
    loop = event_loop()
    if loop.is_running():
        raise LoopRunningError("the loop is running already and serves the peers; nothing to do")
    stop = loop.create_future()

    def on_signal() -> None:
        if not stop.done():
            stop.set_result(None)

    signums = (signal.SIGINT, signal.SIGTERM)
    # Not the main thread, or no signal support on this loop: adding (and so removing) a
    # handler fails, and Ctrl-C stays a KeyboardInterrupt, which stops serving all the same.
    unsupported = (NotImplementedError, RuntimeError, ValueError)
    try:
        # Until SIGINT's handler is in place, a Ctrl-C is a KeyboardInterrupt: it stops serving
        # as the handler would, rather than escaping with the peers left open.
        with contextlib.suppress(KeyboardInterrupt):
            for signum in signums:
                with contextlib.suppress(*unsupported):
                    loop.add_signal_handler(signum, on_signal)
            if announce:
                print(announce, file=sys.stderr, flush=True)
            loop.run_until_complete(stop)
    finally:
        # Each one, also one added just as a Ctrl-C landed; removing one never added does
        # nothing.
        for signum in signums:
            with contextlib.suppress(*unsupported):
                loop.remove_signal_handler(signum)
        shutdown()


def shutdown() -> None:
    """Close every peer started here (blocking), then this module's own loop if it made one (a
    loop that IPython or Jupyter owns is left to them)."""
    global _script_loop
    if _started:
        wait(close())
    loop, _script_loop = _script_loop, None
    if loop is not None and not loop.is_closed():
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def keep_serving() -> None:
    """End of a peer script: hand over to the prompt when one follows (``ipython -i``, Jupyter),
    else :func:`serve_forever` (``python peers/peer0.py`` serves until Ctrl-C, then exits with
    status 0)."""
    if not will_prompt():
        serve_forever()


# ---------------------------------------------------------------------- scripts

def parse_address(text: str | tuple[str, int] | list[Any]) -> Address:
    """The address of a peer to reach: ``"host:port"`` (``"[::1]:9999"`` for IPv6) or a
    ``(host, port)`` pair, checked. Port 0 names no peer, so it is refused here, as by the
    ``qadom`` command's ``--bootstrap`` (a listening port of 0 is checked by :func:`parse_port`)."""
    if isinstance(text, (tuple, list)):
        if len(text) != 2:
            raise InvalidType(f"address must be a (host, port) pair, not {text!r}")
        host, port = text
    elif isinstance(text, str):
        return parse_host_port(text.strip())  # as the qadom command's --bootstrap
    else:
        raise InvalidType(f"address must be 'host:port' or a pair, not {type(text).__name__}")
    if not isinstance(host, str) or not host:
        raise InvalidType("host must be a non-empty str")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise InvalidArgument(f"port must be an int in [1, 65535], got {port!r}")
    return (host, port)


def parse_port(port: object) -> int:
    """A port to listen on: an int in [0, 65535], 0 picking any free one."""
    if not isinstance(port, int) or isinstance(port, bool) or not 0 <= port < 65536:
        raise InvalidArgument(f"port must be an int in [0, 65535], got {port!r}")
    return port


_PORT_DIGITS = re.compile(r"[0-9]{1,10}")  # a port number as script_options takes it


@dataclass(frozen=True)
class ScriptOptions:
    """Where a peer script listens and whom it joins through."""

    host: str
    port: int
    bootstrap: tuple[Address, ...]


def script_options(description: str, *, port: int, bootstrap: Sequence[str] = (),
                   argv: Sequence[str] | None = None,
                   environ: dict[str, str] | None = None) -> ScriptOptions:
    """A peer script's options: ``--host``, ``--port`` and ``--bootstrap HOST:PORT`` (repeatable),
    each defaulting to ``QADOM_HOST``, ``QADOM_PORT`` and ``QADOM_BOOTSTRAP`` (comma-separated)
    from the environment, then to the script's own defaults. A bad value, given as an argument
    or in the environment, is a usage error naming it (SystemExit, status 2), as argparse's own
    are; a default that does not fit the rest (the default bootstrap, IPv4, with an IPv6
    ``--host``) is named as the default, not as an environment variable that is not set.

    ``QADOM_BOOTSTRAP`` set but naming no peer (empty, or only commas: what
    ``QADOM_BOOTSTRAP=$ADDR`` gives with ``ADDR`` unset) means no bootstrap peer for a script
    whose default is none, and is a usage error for one whose default is a peer to join through:
    that script would run alone, its set stored in itself only."""
    env = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--host", default=None,
                        help="address to bind (env QADOM_HOST; default "
                             f"{env.get('QADOM_HOST', '127.0.0.1')})")
    parser.add_argument("--port", default=None,  # checked below, as QADOM_PORT is
                        help=f"UDP port, 0 for any free one (env QADOM_PORT; default {port})")
    parser.add_argument("--bootstrap", action="append", default=None, metavar="HOST:PORT",
                        help="peer to join through (env QADOM_BOOTSTRAP; default "
                             f"{','.join(bootstrap) or 'none'})")
    args = parser.parse_args(sys.argv[1:] if argv is None else list(argv))
    # A message names where a bad value came from: an option, an environment variable that is
    # set, or else the default (naming a variable that is not set would send the user looking
    # for it).
    host, host_name = args.host, "--host"
    if host is None:
        host, host_name = env.get("QADOM_HOST", "127.0.0.1"), _from_env("QADOM_HOST", env, "host")
    try:
        check_bind_host(host)
    except InvalidArgument as exc:
        parser.error(f"{host_name}: {exc}")
    port_text, port_name = args.port, "--port"
    if port_text is None:
        port_text, port_name = env.get("QADOM_PORT", str(port)), _from_env("QADOM_PORT", env,
                                                                           "port")
    # ASCII digits only: int() also takes other scripts' digits ('٣' is 3) and underscores, and
    # str.isdigit() takes '²', which int() refuses. Ten digits are more than any port needs, and
    # keep int() below its limit on the length of what it converts.
    if _PORT_DIGITS.fullmatch(port_text.strip()) is None:
        parser.error(f"{port_name} must be a port number, not {port_text!r}")
    chosen_port = int(port_text)
    joined = args.bootstrap
    bootstrap_name = "--bootstrap"
    if joined is None:
        bootstrap_name = _from_env("QADOM_BOOTSTRAP", env, "bootstrap")
        raw = env.get("QADOM_BOOTSTRAP")
        joined = [a for a in raw.split(",") if a.strip()] if raw is not None else list(bootstrap)
        if not joined and bootstrap:
            parser.error(f"QADOM_BOOTSTRAP is set but names no peer ({raw!r}): give HOST:PORT, "
                         f"or unset it to join through {','.join(bootstrap)}")
    try:
        checked_port = parse_port(chosen_port)
    except InvalidArgument as exc:
        parser.error(f"{port_name}: {exc}")
    try:
        addresses = tuple(parse_address(a) for a in joined)
    except InvalidArgument as exc:
        parser.error(f"{bootstrap_name}: {exc}")
    mismatch = unreachable_from(host, addresses)
    if mismatch is not None:
        (other_host, other_port), other, version = mismatch
        where = format_address((other_host, other_port))
        # "QADOM_BOOTSTRAP: 127.0.0.1:9 is...", but "the default bootstrap 127.0.0.1:9 is..."
        named = bootstrap_name if bootstrap_name.startswith("the ") else f"{bootstrap_name}:"
        parser.error(f"{named} {where} is an IPv{other} address and {host_name} "
                     f"{host} is IPv{version}: a peer cannot reach it; give addresses of one IP "
                     "family")
    return ScriptOptions(host, checked_port, addresses)


def _from_env(variable: str, env: Any, what: str) -> str:
    """How a usage error names a value :func:`script_options` did not get as an option:
    ``variable`` when it is set in ``env``, else "the default ``what``"."""
    return variable if variable in env else f"the default {what}"


@contextlib.contextmanager
def script_errors(name: str, not_found: str = "") -> Iterator[None]:
    """Around a peer script's body: a failure qadom reports on purpose
    (:class:`~qadom.errors.QadomError`) ends the script with one line, ``name: reason``
    (SystemExit, status 1), ``not_found`` added to the reason of a NotFoundError; in a plain
    script, Ctrl-C ends it quietly with status 130, as it ends the ``qadom`` command's one-shot
    operations, wherever it lands before the script serves (once :func:`keep_serving` serves,
    Ctrl-C stops it with status 0). At an IPython prompt a Ctrl-C stays a KeyboardInterrupt,
    which the prompt shows."""
    try:
        yield
    except QadomError as exc:
        hint = f"; {not_found}" if not_found and isinstance(exc, NotFoundError) else ""
        raise SystemExit(f"{name}: {exc}{hint}") from None
    except KeyboardInterrupt:
        if front_end() != "script":
            raise
        raise SystemExit(130) from None


_stdout_gone = False  # script_print found the reader of stdout gone; stdout is os.devnull now


def script_print(line: object) -> None:
    """Print ``line`` and a newline on stdout, flushed, for a peer script.

    A reader of stdout that went away (``python peers/peer1.py | head -n 1``) does not stop the
    script, as it does not stop ``qadom serve``: the script's work is its peer, which goes on
    serving. stdout is dropped from then on (onto os.devnull, so no later write fails, at exit
    neither), and each line not written goes to stderr instead, saying so. Any other failure
    to write stdout raises."""
    global _stdout_gone
    if not _stdout_gone:
        try:
            print(line, flush=True)
            return
        except BrokenPipeError:
            _stdout_gone = True
            # What is left in sys.stdout's buffer goes to os.devnull when flushed again.
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)
    print(f"{os.path.basename(sys.argv[0])}: the reader of stdout went away; serving on "
          f"without it: {line}", file=sys.stderr, flush=True)


def start_script_peer(name: str, options: ScriptOptions, **kwargs: Any) -> Peer:
    """:func:`start_peer` for a peer script called ``name``, as ``options`` say. What a user can
    fix ends the script with one line saying so (:class:`SystemExit`, status 1) instead of a
    traceback: the port is taken, the host cannot be bound, a bootstrap address cannot be
    reached from the host (a name that does not resolve, an address of the other IP family), no
    peer answers at the bootstrap addresses (the peer's own address answering is no peer), or
    the join fails otherwise (``{name}: could not join through {addresses}: {reason}``). A join
    that fails, or that Ctrl-C stops, closes the peer again; Ctrl-C during the join then ends a
    plain script quietly with status 130, as :func:`script_errors` does once it has joined (at
    an IPython prompt it stays a KeyboardInterrupt)."""
    listen = format_address((options.host, options.port))
    try:
        peer = start_peer(options.host, options.port, **kwargs)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            reason = (f"{reason.lower()} (another peer or `qadom serve`?); choose another port "
                      "with --port (0: any free one)")
        raise SystemExit(f"{name}: cannot listen on {listen}: {reason}") from None
    except InvalidArgument as exc:  # a host that does not resolve
        raise SystemExit(f"{name}: cannot listen on {listen}: {exc}") from None
    if options.bootstrap:
        where = ", ".join(format_address(address) for address in options.bootstrap)
        try:
            wait(peer.bootstrap(list(options.bootstrap)))
        except BaseException as exc:  # Ctrl-C included: as start_peer, close a failed join
            wait(close(peer))
            if isinstance(exc, NoPeersError) and exc.only_ourselves:
                raise SystemExit(f"{name}: cannot join through {where}: this peer listens there "
                                 "itself; join through another peer with --bootstrap HOST:PORT "
                                 "(the first peer joins through none)") from None
            if isinstance(exc, NoPeersError):
                raise SystemExit(f"{name}: no peer answered at {where}; start one there first "
                                 "(peers/peer0.py), or join through another with --bootstrap "
                                 "HOST:PORT") from None
            if isinstance(exc, InvalidArgument):  # a name that does not resolve, say
                raise SystemExit(f"{name}: cannot join through {where}: {exc}") from None
            if isinstance(exc, QadomError):  # peers answered, but the join did not complete
                raise SystemExit(f"{name}: could not join through {where}: {exc}") from None
            if isinstance(exc, KeyboardInterrupt) and front_end() == "script":
                raise SystemExit(130) from None  # as script_errors ends one
            raise
    return peer


# ---------------------------------------------------------------------- internals


def _ipython_shell() -> Any:
    """The running IPython shell, or None. IPython is only looked at if it is already imported:
    a plain script does not pay for importing it."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return None
    getter: Callable[[], Any] = ipython.get_ipython
    return getter()


async def _await(awaitable: Awaitable[T]) -> T:
    return await awaitable
