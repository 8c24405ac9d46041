"""A :class:`Call` is the core's handle on an operation in progress: no asyncio, just a result slot
and callbacks. The asyncio adapter turns it into a future; the simulator polls it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class Call(Generic[T]):
    """Completes exactly once, with a result or an exception; later completions are ignored."""

    __slots__ = ("_callbacks", "_done", "_error", "_result", "name", "started_by")

    def __init__(self, name: str = "") -> None:
        self.name = name
        # An opaque mark of what started the call, None when unmarked: the simulator marks the
        # calls its network starts, so that another network refuses to run them.
        self.started_by: object = None
        self._done = False
        self._result: T | None = None
        self._error: BaseException | None = None
        self._callbacks: list[Callable[[Call[T]], None]] = []

    @property
    def done(self) -> bool:
        return self._done

    def result(self) -> T:
        """The result; raises the operation's exception, or RuntimeError if not done yet."""
        if not self._done:
            raise RuntimeError(f"{self.name or 'call'} is not done")
        if self._error is not None:
            raise self._error
        return self._result  # type: ignore[return-value]

    def exception(self) -> BaseException | None:
        return self._error

    def add_done_callback(self, fn: Callable[[Call[T]], None]) -> None:
        """Run ``fn(self)`` on completion (at once if already done)."""
        if self._done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def resolve(self, value: T) -> None:
        if not self._done:
            self._done = True
            self._result = value
            self._run_callbacks()

    def fail(self, error: BaseException) -> None:
        if not self._done:
            self._done = True
            self._error = error
            self._run_callbacks()

    def _run_callbacks(self) -> None:
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)

    def __repr__(self) -> str:
        state = "pending" if not self._done else ("failed" if self._error else "done")
        return f"<Call {self.name} {state}>"
