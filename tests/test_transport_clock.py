"""The adapter's clock (qadom.transport.NodeProtocol.now): monotonic, shifted to Unix time, and
caught up with Unix time when that runs ahead by more than CLOCK_STEP, as after a suspend (the
loop's monotonic clock stands still while the machine sleeps). Real peers on 127.0.0.1, port 0;
Unix time is moved by hand."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator

import pytest

from qadom import NoPeersError, Peer
from qadom.transport import CLOCK_STEP, NodeProtocol

from helpers import FAST

HOURS = 3600.0


class WallClock:
    """time.time, ahead of the real one by ``ahead`` seconds."""

    def __init__(self) -> None:
        self.real = time.time
        self.ahead = 0.0

    def __call__(self) -> float:
        return self.real() + self.ahead


@pytest.fixture
def wall(monkeypatch: pytest.MonkeyPatch) -> Iterator[WallClock]:
    clock = WallClock()
    monkeypatch.setattr(time, "time", clock)
    yield clock


def _protocol(peer: Peer) -> NodeProtocol:
    protocol = peer._protocol
    assert protocol is not None
    return protocol


async def test_the_clock_catches_up_after_a_suspend_and_never_goes_back(wall: WallClock) -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        protocol = _protocol(peer)
        assert abs(protocol.now() - wall()) < CLOCK_STEP
        wall.ahead = CLOCK_STEP / 2  # within the step: the monotonic clock is left alone
        before = protocol.now()
        assert wall() - before > CLOCK_STEP / 4 and peer.stats["clock_steps"] == 0
        wall.ahead = 8 * HOURS  # the machine slept eight hours
        after = protocol.now()
        assert abs(after - wall()) < 0.5 and peer.stats["clock_steps"] == 1
        # The armed timer is at the node's next deadline on the new clock.
        timer = protocol._timer
        assert timer is not None
        assert timer.when() == pytest.approx(protocol._timer_at - protocol._offset)
        assert protocol._timer_at - protocol.now() < FAST.maintenance_interval + 1
        wall.ahead = 0.0  # set back: the node's clock goes on from where it was
        assert protocol.now() >= after and peer.stats["clock_steps"] == 1


async def test_a_datagram_after_a_suspend_is_handled_on_the_caught_up_clock(
        wall: WallClock) -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as a, Peer("127.0.0.1", 0, config=FAST) as b:
        wall.ahead = 5 * HOURS
        await asyncio.wait_for(a.ping(b.address), 10)
        # b heard only the ping: its clock caught up on that datagram.
        assert b.stats["clock_steps"] == 1 and a.stats["clock_steps"] == 1
        assert abs(_protocol(b).now() - wall()) < 0.5


async def test_an_item_past_its_lifetime_after_a_suspend_is_not_served(wall: WallClock) -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        key = await asyncio.wait_for(peer.set(b"written before the machine slept"), 10)
        assert peer.forget(key)  # kept now only until its lifetime ends (not renewed)
        assert await asyncio.wait_for(peer.get(key), 10) == b"written before the machine slept"
        wall.ahead = FAST.expire_time + HOURS  # slept past the item's lifetime
        with pytest.raises(NoPeersError):  # expired here, and no peer to ask
            await asyncio.wait_for(peer.get(key), 10)


def test_a_clock_step_after_the_peers_loop_ended_raises_nothing(wall: WallClock) -> None:
    # A peer left open when its loop ended (a script's asyncio.run returned): reading its clock
    # after a suspend (Subscription.close does, say) catches up without arming a timer there.
    held: list[Peer] = []

    async def start() -> None:
        peer = Peer("127.0.0.1", 0, config=FAST)
        await peer.start()
        held.append(peer)

    asyncio.run(start())
    protocol = _protocol(held[0])
    assert protocol.loop.is_closed() and protocol._timer is not None
    wall.ahead = 2 * HOURS
    assert abs(protocol.now() - wall()) < 0.5
    assert held[0].stats["clock_steps"] == 1 and protocol._timer is None
    protocol.flush()  # as after any input: no timer is armed on the closed loop either
    assert protocol._timer is None
    asyncio.run(held[0].close())
