"""The UDP round-trip ceiling of this machine, and qadom's RPC rate as a fraction of it.

A bare asyncio echo (a client and an echo server, one process, 127.0.0.1) gives the most round
trips per second Python's event loop can do with nothing else to do: that is the ceiling. The same
measurement is then made with qadom's RPC: a Ping answered by a Pong between two qadom peers,
through the whole stack (the codec, the node's request tracking and handler, the asyncio adapter
and a future per call). Both run one at a time ("sequential") and with ``--in-flight`` requests
outstanding, under asyncio and under uvloop.

Each measurement is bounded by ``--count`` round trips and ``--seconds`` of wall time, and each
round trip by a timeout.

    pipenv run python bench/udp_ceiling.py
    pipenv run python bench/udp_ceiling.py --count 5000 --loops uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    LOOPS,
    load,
    machine,
    positive_float,
    positive_int,
    ratio,
    run_on,
    shortfall,
    table,
    targets,
)
from qadom import Config, Peer
from qadom.contact import Address
from qadom.node import Node

PAYLOAD = bytes(48)  # about the size of a qadom Ping datagram

# One client asking one server as fast as it can is exactly what the per-address request limit
# (Config.request_rate, 200/s by default) exists to stop; this measures the RPC path's capacity,
# so the limit is lifted here (its check still runs on every request).
UNLIMITED = Config(request_rate=1e9, request_burst=10**9)


class _Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class _Client(asyncio.DatagramProtocol):
    """Sends numbered datagrams and resolves the future waiting for each echo."""

    def __init__(self) -> None:
        self.waiting: dict[bytes, asyncio.Future[None]] = {}
        self.seq = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: Any = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        future = self.waiting.pop(data[:8], None)
        if future is not None and not future.done():
            future.set_result(None)

    def round_trip(self) -> asyncio.Future[None]:
        self.seq += 1
        tag = self.seq.to_bytes(8, "big")
        future = asyncio.get_running_loop().create_future()
        self.waiting[tag] = future
        self.transport.sendto(tag + PAYLOAD)
        return future


async def _rate(one: Callable[[], Awaitable[Any]], count: int, in_flight: int,
                seconds: float) -> tuple[float, int]:
    """Round trips per second of ``one`` with ``in_flight`` outstanding, and how many failed.

    No per-call timeout (an ``asyncio.wait_for`` per round trip would cost more than the round
    trip): the whole batch is bounded instead, by ``count``, by ``seconds`` for starting new
    calls, and by a hard deadline after which what is still waiting is cancelled and counted.
    The rate is over the time until the last worker whose calls all ended finished: a call that
    never ends (a lost datagram) does not stretch it to the hard deadline.
    """
    left = [count]
    failed = [0]
    done = [0]
    stop_at = time.perf_counter() + seconds
    started = time.perf_counter()
    ended = [started]  # when the last worker that was not stuck finished

    async def worker() -> None:
        while left[0] > 0 and time.perf_counter() < stop_at:
            left[0] -= 1
            try:
                await one()
                done[0] += 1
            except Exception:  # a qadom call that failed (a lost datagram)
                failed[0] += 1
        ended[0] = max(ended[0], time.perf_counter())  # once per worker, off the timed path

    workers = [asyncio.ensure_future(worker()) for _ in range(in_flight)]
    _, stuck = await asyncio.wait(workers, timeout=seconds + 10.0)
    for task in stuck:  # an echo whose datagram was lost never completes: give up on it
        task.cancel()
        failed[0] += 1
    elapsed = ended[0] - started
    return (done[0] / elapsed if elapsed > 0 else float("nan")), failed[0]


async def echo_rate(count: int, in_flight: int, seconds: float) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    server, _ = await loop.create_datagram_endpoint(_Echo, local_addr=("127.0.0.1", 0))
    address = server.get_extra_info("sockname")[:2]
    client_transport, client = await loop.create_datagram_endpoint(
        _Client, remote_addr=address)
    try:
        await _rate(client.round_trip, min(count, 500), in_flight, seconds)  # warm up
        return await _rate(client.round_trip, count, in_flight, seconds)
    finally:
        client_transport.close()
        server.close()


async def qadom_rate(count: int, in_flight: int, seconds: float,
                     api: bool) -> tuple[float, int]:
    """Pings between two qadom peers: through ``Peer.ping`` (argument checks and address
    resolution included) with ``api``, else the RPC itself via ``Peer.run_service``."""
    async with Peer("127.0.0.1", 0, config=UNLIMITED) as server, \
            Peer("127.0.0.1", 0, config=UNLIMITED) as client:
        address: Address = server.address

        def start(node: Node, now: float) -> Any:
            return node.ping(address, now)

        async def one() -> Any:
            if api:
                return await client.ping(address)
            return await client.run_service(start)

        await _rate(one, min(count, 500), in_flight, seconds)  # warm up
        return await _rate(one, count, in_flight, seconds)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=positive_int, default=30_000,
                        help="round trips per measurement")
    parser.add_argument("--seconds", type=positive_float, default=20.0,
                        help="wall-time cap per measurement")
    parser.add_argument("--in-flight", type=positive_int, default=50)
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    args = parser.parse_args(argv)
    print(f"# UDP round-trip ceiling and qadom's RPC rate\n\nmachine: {machine()}, {load()}\n")
    print(f"up to {args.count} round trips or {args.seconds:.0f} s per figure; "
          f"one process, 127.0.0.1; qadom's per-address request limit lifted\n")
    rows = []
    verdicts = []
    for loop in args.loops:
        for mode, in_flight in (("sequential", 1), (f"{args.in_flight} in flight", args.in_flight)):
            echo, echo_failed = run_on(loop, echo_rate(args.count, in_flight, args.seconds))
            rpc, rpc_failed = run_on(loop, qadom_rate(args.count, in_flight, args.seconds, False))
            api, api_failed = run_on(loop, qadom_rate(args.count, in_flight, args.seconds, True))
            rows.append([loop, mode, echo, rpc, ratio(rpc, echo), api, ratio(api, echo),
                         echo_failed + rpc_failed + api_failed])
            verdicts.append(_verdict(loop, mode, rpc, echo))
    print(table(["loop", "mode", "bare echo rt/s", "qadom RPC rt/s",
                 "RPC / echo (higher is better)", "Peer.ping rt/s",
                 "Peer.ping / echo (higher is better)", "failed"], rows))
    print("\n" + targets(verdicts))
    return 0


def _verdict(loop: str, mode: str, rpc: float, echo: float) -> str:
    """The target: qadom's RPC at least half the bare echo's round trips per second."""
    return (f"{loop}, {mode}: qadom RPC {rpc:,.0f}/s = {ratio(rpc, echo):.0%} of the bare "
            f"echo {echo:,.0f}/s (target 50%): {shortfall(ratio(rpc, echo), 0.5)}")


if __name__ == "__main__":
    raise SystemExit(main())
