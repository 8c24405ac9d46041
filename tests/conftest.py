"""pytest configuration shared by every test; helpers live in tests/helpers.py."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator

import pytest


@pytest.fixture
def other_loop() -> Iterator[asyncio.AbstractEventLoop]:
    """An event loop running in a thread of its own; stopped and closed after the test."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield loop
    finally:
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        assert not thread.is_alive()
        # A stop ends the loop after the callbacks already due, not those they scheduled (a
        # closed transport's last step, say): run those here before the loop is closed.
        for _ in range(3):
            loop.run_until_complete(asyncio.sleep(0))
        loop.close()


@pytest.fixture
def default_sigint() -> Iterator[None]:
    """SIGINT handled by Python's default handler (KeyboardInterrupt), as at a prompt."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
