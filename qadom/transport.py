"""The asyncio adapter: the only code between the sans-IO :class:`~qadom.node.Node` and a socket.

:class:`NodeProtocol` feeds received datagrams and the loop's clock into the node, sends what the
node queues, keeps one timer armed at the node's next deadline, and turns the node's
:class:`~qadom.call.Call` objects into asyncio futures. It holds no protocol rule of its own.

The node's clock is the loop's monotonic clock shifted to Unix time at start, so intervals are
immune to the wall clock being set back while stored timestamps stay meaningful across restarts.
When Unix time runs ahead of it by more than :data:`CLOCK_STEP` (the machine was suspended, which
stops the monotonic clock, or the wall clock was set forward), the node's clock catches up at the
next input: one step forward, never back.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import math
import socket
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .call import Call
from .node import Node

T = TypeVar("T")
log = logging.getLogger("qadom")


def running_loop() -> asyncio.AbstractEventLoop | None:
    """The event loop running in this thread, or None."""
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


CLOCK_STEP = 1.0
"""How far Unix time may run ahead of a node's clock before that clock catches up (seconds). The
loop's monotonic clock stands still while the machine is suspended: without catching up, a node
that slept for hours would stamp and judge every expiry, renewal and token that many hours
behind, for as long as it runs (its own items renewed after their copies expired elsewhere,
expired records served, a storer's republish granting hours too many). A second is far above the
drift of the two clocks (the same rate corrections apply to both) and far below every interval of
the protocol."""

_POLL = 0.02
"""How often :func:`run_in_loop` looks whether the loop it waits on still runs (seconds)."""

_READ_BATCH = 32
"""Datagrams read in one go when a selector loop reports the socket readable. asyncio's own
datagram transport reads one per loop iteration, so under a burst the replies that are already
in the socket wait an iteration each, and a timer that falls due meanwhile times their requests
out though they were answered (uvloop reads up to 32 at a time itself). Bounded, so that one busy
socket cannot keep the loop from its other sockets and its timers."""

_BATCH_AFTER = 0.001
"""A batch is read only when the loop comes back to the socket this long (seconds) or more after
it last did (a loop held up, or busy with many callbacks an iteration, in which datagrams can
pile up), or after a full batch (more may wait). A steady exchange, one datagram at a time,
skips the read that would find nothing (a system call and an exception: 7 to 12% of a round
trip on loopback, measured)."""

_READ_SIZE = 65536
"""The receive buffer of those reads: larger than any UDP payload, so a datagram is never cut
short (the codec refuses one over its limit by its length)."""


async def run_in_loop(loop: asyncio.AbstractEventLoop,
                      step: Callable[[], asyncio.Future[Any] | None]) -> bool:
    """Run ``step()`` on ``loop``, which runs in another thread, and wait here until it is over:
    True then, with what ``step`` raised raised here. ``step`` runs there synchronously and may
    return a future of that loop, waited for too; without one, the wait ends once the callbacks
    ``step`` scheduled there have run.

    False, ``step`` never run there, when ``loop`` stops or closes before it ran (a thread's
    ``asyncio.run()`` ending meanwhile): the caller does the work here instead. Once ``step``
    has run, a loop that stops before the rest is over ends the wait too, with True: what
    remained is that loop's. So this never waits on a loop that no longer runs."""
    claim = threading.Lock()  # taken by whichever runs step: that loop, or this give-up
    done: concurrent.futures.Future[None] = concurrent.futures.Future()

    def settle(error: BaseException | None) -> None:
        with contextlib.suppress(concurrent.futures.InvalidStateError):  # nobody waits now
            if error is not None:
                done.set_exception(error)
            else:
                done.set_result(None)

    def finish(result: asyncio.Future[Any] | None = None) -> None:
        settle(None if result is None or result.cancelled() else result.exception())

    def run() -> None:
        if not claim.acquire(blocking=False):  # given up on from here: the caller did it
            return
        try:
            waited = step()
        except Exception as exc:  # the caller's to see, not that loop's
            settle(exc)
            return
        except BaseException as exc:  # KeyboardInterrupt...: that loop's too
            settle(exc)
            raise
        if waited is None:
            loop.call_soon(finish)  # after the callbacks step scheduled (connection_lost...)
        else:
            waited.add_done_callback(finish)

    try:
        loop.call_soon_threadsafe(run)
    except RuntimeError:  # the loop closed since the caller looked
        if loop.is_closed():
            return False
        raise
    waiting = asyncio.wrap_future(done)
    try:
        while not waiting.done():
            await asyncio.wait({waiting}, timeout=_POLL)
            if not waiting.done() and not loop.is_running():  # it may never run again
                if claim.acquire(blocking=False):
                    return False
                if done.done():  # step raised there
                    done.result()
                return True
        waiting.result()
        return True
    finally:
        if not waiting.done():
            waiting.cancel()


class NodeProtocol(asyncio.DatagramProtocol):
    """Runs one :class:`Node` on one UDP socket. ``make_node(now)`` builds the node on this
    adapter's clock; ``on_lost()`` runs once the socket is closed, by whoever closed it (the
    node's timers go with it, so nothing it runs can end after that). It counts in the node's
    ``stats``: ``socket_errors`` (sends the socket refused, errors it reported), ``socket_lost``
    and ``clock_steps`` (the node's clock caught up with Unix time, see :data:`CLOCK_STEP`)."""

    def __init__(self, make_node: Callable[[float], Node],
                 loop: asyncio.AbstractEventLoop,
                 on_lost: Callable[[], None] | None = None) -> None:
        self.loop = loop
        self._on_lost = on_lost
        self.transport: asyncio.DatagramTransport | None = None
        self._offset = time.time() - loop.time()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self.node = make_node(self.now())
        # The socket under asyncio's selector transport, to read what is waiting after each
        # datagram the transport hands over (see _READ_BATCH), and that transport; None on
        # loops that read in batches themselves (uvloop) or expose no socket.
        self._reader: socket.socket | None = None
        self._socket: asyncio.DatagramTransport | None = None
        self._batching = False
        self._last_input = -math.inf  # loop time of the last datagram the transport handed over

    def now(self) -> float:
        """The node's clock, in Unix seconds: monotonic, and caught up with Unix time when that
        runs ahead by more than :data:`CLOCK_STEP`."""
        loop_time = self.loop.time()
        now = loop_time + self._offset
        if time.time() - now > CLOCK_STEP:
            return self._catch_up(loop_time)
        return now

    def _catch_up(self, loop_time: float) -> float:
        """Move the node's clock forward to Unix time (see :data:`CLOCK_STEP`); the node's time
        at ``loop_time``. The armed timer is moved to the node's deadline on the new clock, which
        comes sooner by the step."""
        step = time.time() - loop_time - self._offset
        self._offset += step
        self.node.stats["clock_steps"] += 1
        log.info("the node's clock caught up with Unix time by %.1f s (the machine was "
                 "suspended, or its clock set forward)", step)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            if not self.loop.is_closed():  # a closed loop runs no timer: the node runs no more
                self._timer = self.loop.call_at(self._timer_at - self._offset, self._on_timer)
        return loop_time + self._offset

    # ------------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)
        if isinstance(self.loop, asyncio.selector_events.BaseSelectorEventLoop):
            # asyncio's TransportSocket wraps the socket, and offers no reads: the transport
            # owns it (and closes it); we only read from it, on the loop, as the transport does.
            sock = getattr(transport.get_extra_info("socket"), "_sock", None)
            if isinstance(sock, socket.socket):
                self._reader, self._socket = sock, self.transport

    def datagram_received(self, data: bytes, addr: tuple[str | Any, ...]) -> None:
        # IPv6 sockets report (host, port, flowinfo, scope_id); the node keys peers by (host, port).
        if len(addr) != 2:
            addr = (str(addr[0]), int(addr[1]))
        now = self.loop.time()
        node_now = now + self._offset
        if time.time() - node_now > CLOCK_STEP:
            node_now = self._catch_up(now)
        self.node.datagram_received(data, addr,  # type: ignore[arg-type]  # (host, port) now
                                    node_now)
        if self._batching:
            return  # one of a batch: the batch's first datagram flushes once it is over
        if self._reader is not None:
            last, self._last_input = self._last_input, now
            if now - last >= _BATCH_AFTER and self._read_waiting(self._reader):
                self._last_input = -math.inf  # a full batch: more may wait, read one next time
        self.flush()

    def _read_waiting(self, reader: socket.socket) -> bool:
        """Hand on what else is waiting in the socket, up to a batch (see _READ_BATCH), so that
        replies already here are read before the timers of their requests run. Each goes where
        the transport would deliver it (through :mod:`qadom.faults`' rules when they are put in
        front of us), and none starts a batch of its own. True when the batch was full: more
        may be waiting."""
        self._batching = True
        try:
            for _ in range(_READ_BATCH - 1):
                transport = self._socket
                if transport is None or transport.is_closing() or self.transport is None:
                    return False
                try:
                    data, addr = reader.recvfrom(_READ_SIZE)
                except (BlockingIOError, InterruptedError):
                    return False  # nothing more: the common case, one datagram per wakeup
                except OSError as exc:
                    self.error_received(exc)
                    return False
                cast(asyncio.DatagramProtocol, transport.get_protocol()).datagram_received(
                    data, addr)
            return True
        finally:
            self._batching = False

    def _close_reader(self) -> None:
        self._reader = self._socket = None  # the transport closes the socket

    def error_received(self, exc: Exception) -> None:
        # ICMP errors (port unreachable...) surface here; the request's timeout handles them.
        self.node.stats["socket_errors"] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        self._close_reader()
        if exc is not None:  # the loop closed the socket on an error: say so where users look
            self.node.stats["socket_lost"] += 1
            log.error("the UDP socket was closed by an error: %r", exc)
        self.transport = None
        if self._timer is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop's timer has nothing to stop
                self._timer.cancel()
            self._timer = None
        if self._on_lost is not None:
            self._on_lost()

    def close(self) -> bool:
        """Close the socket. From a callback of its loop, or while that loop runs, through the
        transport (``connection_lost`` follows on the loop). Once the loop is closed, or while
        it stands idle and another runs (it may never run again), what the transport would
        have run there runs here, at once: the socket leaves the loop's watch, is closed, then
        ``connection_lost``. False when such a socket cannot be reached (a loop that exposes
        neither) and stays open."""
        transport = self.transport
        if transport is None:
            return True
        self._close_reader()  # nothing is read once closing; the socket goes with the transport
        loop = self.loop
        if not loop.is_closed() and (loop.is_running() or loop is running_loop()):
            # The node's timer goes now, not at connection_lost, which the loop runs later: a
            # timer due meanwhile would run the node on a store its peer closes at once.
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            transport.close()
            return True
        if not loop.is_closed():
            sock = transport.get_extra_info("socket")
            with contextlib.suppress(Exception):  # a loop that does not watch it so
                loop.remove_reader(sock.fileno())
        lost: Any = getattr(transport, "_call_connection_lost", None)
        if callable(lost):  # asyncio's transports: closes the socket, calls connection_lost
            lost(None)
            return True
        sock = transport.get_extra_info("socket")
        sock = getattr(sock, "_sock", sock)  # asyncio's TransportSocket wraps the socket
        if isinstance(sock, socket.socket):
            sock.close()
            self.connection_lost(None)
            return True
        fileno = getattr(sock, "fileno", None)
        if loop.is_closed() and callable(fileno) and fileno() == -1:
            # A loop that closed its sockets as it was closed (uvloop's): nothing is left open,
            # only connection_lost never ran.
            self.connection_lost(None)
            return True
        return False

    # ------------------------------------------------------------------ driving the node

    def flush(self) -> None:
        """Send every queued datagram and re-arm the timer; call after every input to the node."""
        node = self.node
        out = node.datagrams_to_send()
        if not out and self._timer is not None and not node.timer_changed:
            return  # nothing to send, and the armed timer is no later than the node's next one
        transport = self.transport
        if transport is None:
            return
        if transport.is_closing():
            # Closed, connection_lost not run yet (the node's callbacks may still send as the
            # peer closes): the transport would drop them, warning after a few, and the node
            # gets no timer again.
            return
        for data, address in out:
            try:
                transport.sendto(data, address)
            except (OSError, ValueError):  # uvloop raises for an address of the other family
                node.stats["socket_errors"] += 1
        if self._timer is not None and not node.timer_changed:
            return  # the armed timer is no later than the node's next deadline
        deadline = node.get_timer()
        if deadline is None:
            return
        if self._timer is not None:
            if self._timer_at <= deadline:
                return
            self._timer.cancel()
            self._timer = None
        if self.loop.is_closed():  # it runs no timer: the node runs no more
            return
        self._timer_at = deadline
        self._timer = self.loop.call_at(deadline - self._offset, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        transport = self.transport
        if transport is None or transport.is_closing():  # closed: the node runs no more
            return
        # The loop may run a timer a clock tick early; never hand the node a time before it.
        self.node.handle_timer(max(self.now(), self._timer_at))
        self.flush()

    def future_of(self, call: Call[T]) -> asyncio.Future[T]:
        """An asyncio future that completes with ``call``. Nothing is flushed here: the caller
        flushes what starting the call queued (see :meth:`flush`) once it holds the future, so
        that an exception raised while sending (a KeyboardInterrupt from a signal) still finds
        the future in its hands."""
        future: asyncio.Future[T] = self.loop.create_future()

        def done(call: Call[T]) -> None:
            if future.done():
                return
            error = call.exception()
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(call.result())

        call.add_done_callback(done)
        return future
