"""qadom against bmuller's kademlia 2.2.3: the same workload, in one process, on 127.0.0.1.

For each event loop (asyncio, uvloop) and each network size N, both implementations get:

1. a network of N peers on 127.0.0.1, each joining through a random earlier peer;
2. ``--sets`` sets of fresh 100-byte values from random peers, one at a time, then ``--gets`` gets
   of those values from random peers that do not hold them, one at a time (a value whose set
   failed or never ran is not read; the report says how many were skipped);
3. the same again with new values and ``--in-flight`` operations in flight.

The workload is drawn from ``--seed`` separately from the peers' ids: both implementations join
their peers in the same order through the same earlier peers, set the same values from the same
peers (by join order), and in the churn run close the same peers. Only the choice of non-holders
for gets differs, as each implementation places the values on its own peers. When every live peer
holds a value, its get is a local read; the report says how many gets were.

Reported per phase: operations/s, p50 and p95 latency (over every operation run, failed ones
included), datagrams received per operation, and the qadom/kademlia ratio of each (each ratio
column says whether higher or lower is better). Memory per peer is measured in a separate pass
under tracemalloc (a network of N peers holding ``--sets`` values), so tracing does not slow the
timed phases.

The churn run: ``--churn-values`` values stored in ``--churn-peers`` peers, ``--churn-fraction``
of the peers closed (rounded to the nearest peer), then every value read back from surviving peers
that do not hold it (``--in-flight`` at a time): success rate (over every value, reads the phase
deadline left unstarted included) and p50/p95 latency. The latency target is judged only when
every read of both succeeded.

Every phase is bounded by a count, a per-operation timeout and a wall-clock deadline. Garbage is
collected before each timed phase and between implementations, so neither pays for the other's.

    pipenv run python bench/vs_kademlia.py                       # N = 100 and 300, both loops
    pipenv run python bench/vs_kademlia.py --peers 30 --sets 50 --gets 50 --churn-values 20
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import hashlib
import logging
import random
import sys
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Collection
from pathlib import Path
from typing import Any, Protocol

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    HIGHER_BETTER,
    LATENCY_NOTE,
    LOOPS,
    LOWER_BETTER,
    Phase,
    collect,
    fraction,
    latency_unjudged,
    load,
    machine,
    percentile,
    positive_float,
    positive_int,
    ratio,
    run_on,
    run_phase,
    share_of,
    shortfall,
    table,
    targets,
)
from qadom import Peer
from qadom.ids import key_for

VALUE_SIZE = 100


class Cluster(Protocol):
    """One implementation's network of peers, as the workload sees it."""

    name: str

    async def start(self, count: int, rng: random.Random) -> None: ...
    def size(self) -> int: ...
    def live(self) -> list[int]: ...
    async def set(self, index: int, value: bytes) -> bool: ...
    async def get(self, index: int, value: bytes) -> bool: ...
    def holds(self, index: int, value: bytes) -> bool: ...
    def datagrams(self) -> int: ...
    async def close_peer(self, index: int) -> None: ...
    async def close(self) -> None: ...


class QadomCluster:
    name = "qadom"

    def __init__(self) -> None:
        self.peers: list[Peer] = []
        self.closed: set[int] = set()

    async def start(self, count: int, rng: random.Random) -> None:
        ids = random.Random(rng.getrandbits(64))  # one draw, as kademlia's seed below
        for _ in range(count):
            peer = Peer("127.0.0.1", 0, rng=random.Random(ids.getrandbits(64)))
            await peer.start()
            if self.peers:
                via = self.peers[rng.randrange(len(self.peers))]
                await asyncio.wait_for(peer.bootstrap([via.address]), 60)
            self.peers.append(peer)

    def size(self) -> int:
        return len(self.peers)

    def live(self) -> list[int]:
        return [i for i in range(len(self.peers)) if i not in self.closed]

    async def set(self, index: int, value: bytes) -> bool:
        return await self.peers[index].set(value) == key_for(value)

    async def get(self, index: int, value: bytes) -> bool:
        return await self.peers[index].get(key_for(value)) == value

    def holds(self, index: int, value: bytes) -> bool:
        return self.peers[index].node.store.get_value(key_for(value)) is not None

    def datagrams(self) -> int:
        return sum(p.node.stats["datagrams_in"] for p in self.peers)

    def refused(self) -> int:
        """Requests refused by the per-address rate limit (should stay 0 in this workload)."""
        return sum(p.node.stats["rate_limited"] for p in self.peers)

    async def close_peer(self, index: int) -> None:
        self.closed.add(index)
        await self.peers[index].close()

    async def close(self) -> None:
        for i in self.live():
            await self.close_peer(i)


_KADEMLIA_DATAGRAMS = [0]


def _count_kademlia_datagrams() -> None:
    """Count every datagram kademlia's protocol receives (rpcudp has no counter of its own)."""
    from rpcudp.protocol import RPCProtocol

    if getattr(RPCProtocol, "_bench_counted", False):
        return
    original = RPCProtocol.datagram_received

    def counted(self: Any, data: bytes, addr: Any) -> None:
        _KADEMLIA_DATAGRAMS[0] += 1
        original(self, data, addr)

    RPCProtocol.datagram_received = counted
    RPCProtocol._bench_counted = True


class KademliaCluster:
    name = "kademlia"

    def __init__(self) -> None:
        from kademlia.network import Server

        _count_kademlia_datagrams()
        for name in ("kademlia", "rpcudp"):  # it logs every timeout at ERROR level
            logging.getLogger(name).setLevel(logging.CRITICAL)
        self._server_class = Server
        self.servers: list[Any] = []
        self.addresses: list[tuple[str, int]] = []
        self.closed: set[int] = set()

    async def start(self, count: int, rng: random.Random) -> None:
        # kademlia draws node ids from the global generator. Like QadomCluster, one draw for the
        # ids, then one choice of bootstrap peer per join: both networks join in the same order.
        random.seed(rng.getrandbits(64))
        for _ in range(count):
            server = self._server_class(ksize=20, alpha=3)
            await server.listen(0, interface="127.0.0.1")
            address = server.transport.get_extra_info("sockname")[:2]
            if self.servers:
                via = self.addresses[rng.randrange(len(self.addresses))]
                await asyncio.wait_for(server.bootstrap([via]), 60)
            self.servers.append(server)
            self.addresses.append((address[0], address[1]))

    def size(self) -> int:
        return len(self.servers)

    def live(self) -> list[int]:
        return [i for i in range(len(self.servers)) if i not in self.closed]

    async def set(self, index: int, value: bytes) -> bool:
        return bool(await self.servers[index].set(_kad_key(value), value))

    async def get(self, index: int, value: bytes) -> bool:
        return bool(await self.servers[index].get(_kad_key(value)) == value)

    def holds(self, index: int, value: bytes) -> bool:
        from kademlia.utils import digest

        return self.servers[index].storage.get(digest(_kad_key(value))) is not None

    def datagrams(self) -> int:
        return _KADEMLIA_DATAGRAMS[0]

    async def close_peer(self, index: int) -> None:
        self.closed.add(index)
        self.servers[index].stop()

    async def close(self) -> None:
        for i in self.live():
            await self.close_peer(i)
        await asyncio.sleep(0)  # let the transports' connection_lost run


def _kad_key(value: bytes) -> str:
    return hashlib.sha256(value).hexdigest()


IMPLS: dict[str, Callable[[], Cluster]] = {"qadom": QadomCluster, "kademlia": KademliaCluster}


# ---------------------------------------------------------------------------- workload


def _values(rng: random.Random, count: int) -> list[bytes]:
    return [rng.randbytes(VALUE_SIZE) for _ in range(count)]


def _set_ops(cluster: Cluster, rng: random.Random,
             values: list[bytes]) -> list[Callable[[], Awaitable[bool]]]:
    live = cluster.live()
    return [_bind(cluster.set, live[rng.randrange(len(live))], v) for v in values]


def _get_ops(cluster: Cluster, rng: random.Random, values: list[bytes],
             stored: Collection[int] | None = None) -> list[Callable[[], Awaitable[bool]]]:
    """One get per value, each from a random live peer that does not hold it (any live peer when
    every live peer holds it, which is then reported: such a get is a local read).

    With ``stored`` (the positions in ``values`` of the values whose set succeeded), the other
    values are not read, and how many were skipped is reported: a get of a value never stored
    would count as a get failure.

    Exactly one draw of ``rng`` per value, skipped or not, whatever the number of holders, so the
    workload drawn after it (the next phase's values and setters) is the same for both
    implementations."""
    live = cluster.live()
    ops = []
    local = 0
    skipped = 0
    for position, value in enumerate(values):
        draw = rng.random()
        if stored is not None and position not in stored:
            skipped += 1
            continue
        others = [i for i in live if not cluster.holds(i, value)]
        if not others:
            others = live
            local += 1
        ops.append(_bind(cluster.get, others[int(draw * len(others))], value))
    if skipped:
        print(f"  ({cluster.name}: {skipped} of {len(values)} gets skipped: their value's set "
              f"failed or never ran)")
    if local:
        print(f"  ({cluster.name}: {local} of {len(ops)} gets are local reads: every live "
              f"peer holds the value)")
    return ops


def _bind(fn: Callable[[int, bytes], Awaitable[bool]], index: int,
          value: bytes) -> Callable[[], Awaitable[bool]]:
    return lambda: fn(index, value)


async def throughput(impl: str, peers: int, args: argparse.Namespace,
                     seed: int) -> tuple[float, list[Phase]]:
    """Build a network, run the four timed phases; returns the build time and the phases."""
    rng = random.Random(seed)
    cluster = IMPLS[impl]()
    started = time.perf_counter()
    phases: list[Phase] = []
    try:
        await cluster.start(peers, random.Random(rng.getrandbits(64)))
        built = time.perf_counter() - started
        if args.gc_freeze:
            collect()
            gc.freeze()  # the network's objects leave the collector's view (see --gc-freeze)
        for mode, in_flight in (("sequential", 1), (f"{args.in_flight} in flight", args.in_flight)):
            values = _values(rng, args.sets)
            phase = await run_phase(f"set, {mode}", _set_ops(cluster, rng, values),
                                    in_flight=in_flight, op_timeout=args.op_timeout,
                                    deadline=args.phase_limit, datagrams=cluster.datagrams)
            phases.append(phase)
            readable = values[:args.gets]
            gets = _get_ops(cluster, rng, readable, set(phase.ok))
            phase = await run_phase(f"get, {mode}", gets,
                                    in_flight=in_flight, op_timeout=args.op_timeout,
                                    deadline=args.phase_limit, datagrams=cluster.datagrams)
            phases.append(phase)
        refused = getattr(cluster, "refused", None)
        if refused is not None and refused():
            print(f"  ({impl}: {refused()} requests refused by the rate limit)")
    finally:
        await cluster.close()
        gc.unfreeze()
    return built, phases


async def memory_per_peer(impl: str, peers: int, sets: int, seed: int,
                          args: argparse.Namespace) -> float:
    """Bytes traced by tracemalloc per peer, for a network of ``peers`` holding ``sets`` values."""
    rng = random.Random(seed)
    collect()
    tracemalloc.start()
    cluster = IMPLS[impl]()
    try:
        base = tracemalloc.get_traced_memory()[0]
        await cluster.start(peers, random.Random(rng.getrandbits(64)))
        await run_phase("memory", _set_ops(cluster, rng, _values(rng, sets)),
                        in_flight=args.in_flight, op_timeout=args.op_timeout,
                        deadline=args.phase_limit, datagrams=cluster.datagrams)
        collect()
        used = tracemalloc.get_traced_memory()[0] - base
    finally:
        await cluster.close()
        tracemalloc.stop()
    return used / peers


async def churn(impl: str, args: argparse.Namespace, seed: int) -> Phase:
    """Store values, close a fraction of the peers, read every value back."""
    rng = random.Random(seed)
    cluster = IMPLS[impl]()
    try:
        await cluster.start(args.churn_peers, random.Random(rng.getrandbits(64)))
        values = _values(rng, args.churn_values)
        stored = await run_phase("store", _set_ops(cluster, rng, values),
                                 in_flight=args.in_flight, op_timeout=args.op_timeout,
                                 deadline=args.phase_limit, datagrams=cluster.datagrams)
        if stored.succeeded < len(values):
            print(f"  ({impl}: only {stored.succeeded}/{len(values)} stores succeeded)")
        gone = rng.sample(range(cluster.size()), share_of(cluster.size(), args.churn_fraction))
        for index in gone:
            await cluster.close_peer(index)
        return await run_phase("read back", _get_ops(cluster, rng, values),
                               in_flight=args.in_flight, op_timeout=args.op_timeout,
                               deadline=args.phase_limit, datagrams=cluster.datagrams)
    finally:
        await cluster.close()


# ---------------------------------------------------------------------------- report


def _throughput_table(results: dict[str, list[Phase]]) -> str:
    ours, theirs = results["qadom"], results["kademlia"]
    rows = []
    for a, b in zip(ours, theirs, strict=True):
        rows.append([a.name, a.ops_per_s, b.ops_per_s, ratio(a.ops_per_s, b.ops_per_s),
                     a.p50_ms, b.p50_ms, ratio(a.p50_ms, b.p50_ms),
                     a.p95_ms, b.p95_ms, ratio(a.p95_ms, b.p95_ms),
                     a.datagrams_per_op, b.datagrams_per_op,
                     ratio(a.datagrams_per_op, b.datagrams_per_op),
                     f"{a.succeeded}/{a.attempted + a.unfinished}",
                     f"{b.succeeded}/{b.attempted + b.unfinished}",
                     f"{a.gc_seconds * 1000:.0f} / {b.gc_seconds * 1000:.0f}"])
    return table(["phase", "qadom ops/s", "kad ops/s", HIGHER_BETTER, "qadom p50 ms",
                  "kad p50 ms", LOWER_BETTER, "qadom p95 ms", "kad p95 ms", LOWER_BETTER,
                  "qadom dgram/op", "kad dgram/op", LOWER_BETTER, "qadom ok", "kad ok",
                  "GC ms q / k"], rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--peers", type=positive_int, nargs="+", default=[100, 300])
    parser.add_argument("--sets", type=positive_int, default=500)
    parser.add_argument("--gets", type=positive_int, default=500)
    parser.add_argument("--in-flight", type=positive_int, default=50)
    parser.add_argument("--loops", nargs="+", choices=LOOPS, default=list(LOOPS))
    parser.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(IMPLS))
    parser.add_argument("--churn-peers", type=positive_int, default=100)
    parser.add_argument("--churn-values", type=positive_int, default=200)
    parser.add_argument("--churn-fraction", type=fraction, default=0.3,
                        help="share of the churn peers closed, in [0, 1), rounded to the "
                        "nearest peer (at least one must stay)")
    parser.add_argument("--no-memory", action="store_true", help="skip the tracemalloc pass")
    parser.add_argument("--no-churn", action="store_true")
    parser.add_argument("--no-throughput", action="store_true")
    parser.add_argument("--op-timeout", type=positive_float, default=60.0,
                        help="seconds before one operation counts as failed")
    parser.add_argument("--phase-limit", type=positive_float, default=240.0,
                        help="seconds after which a phase starts no new operation")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--gc-freeze", action="store_true",
                        help="after building each network, move its objects out of the "
                        "garbage collector's view (gc.freeze), for both implementations: "
                        "hundreds of peers in one process make full collections far longer "
                        "than one peer per process would see")
    parser.add_argument("--repeat", type=positive_int, default=1,
                        help="run the throughput phases this many times (alternating which "
                        "implementation goes first) and report each phase's best run")
    args = parser.parse_args(argv)
    if args.gets > args.sets:
        parser.error("--gets cannot exceed --sets (gets read the values just set)")
    if not args.no_churn and share_of(args.churn_peers, args.churn_fraction) >= args.churn_peers:
        parser.error(f"--churn-fraction {args.churn_fraction} closes every one of the "
                     f"{args.churn_peers} churn peers: none would be left to read from")

    started = time.perf_counter()
    print(f"# qadom vs kademlia 2.2.3\n\nmachine: {machine()}, {load()}\n")
    print(f"workload: {args.sets} sets, {args.gets} gets, {VALUE_SIZE}-byte values, "
          f"in flight {args.in_flight}, seed {args.seed}"
          f"{', gc.freeze() after each build' if args.gc_freeze else ''}")
    print(f"{LATENCY_NOTE}\n")
    both = set(args.impls) == set(IMPLS)
    verdicts: list[str] = []

    if not args.no_throughput:
        for loop in args.loops:
            for peers in args.peers:
                runs: dict[str, list[list[Phase]]] = {impl: [] for impl in args.impls}
                for repeat in range(args.repeat):
                    # alternate who goes first, so a burst of load elsewhere hits both alike
                    order = args.impls if repeat % 2 == 0 else list(reversed(args.impls))
                    for impl in order:
                        gc.collect()  # the previous run's garbage, off this one's clock
                        built, phases = run_on(loop, throughput(impl, peers, args,
                                                                args.seed + repeat))
                        runs[impl].append(phases)
                        print(f"{impl}: {peers} peers built in {built:.1f} s ({loop}, run "
                              f"{repeat + 1}/{args.repeat}, {load()})", flush=True)
                results = {impl: _best(phase_runs) for impl, phase_runs in runs.items()}
                best = f", best of {args.repeat} runs per phase" if args.repeat > 1 else ""
                print(f"\n## {loop}, N = {peers}{best}\n")
                if both:
                    print(_throughput_table(results))
                    verdicts += _throughput_verdicts(loop, peers, results)
                else:
                    for impl, phases in results.items():
                        print(table(["phase", f"{impl} ops/s", "p50 ms", "p95 ms", "dgram/op",
                                     "ok"],
                                    [[p.name, p.ops_per_s, p.p50_ms, p.p95_ms,
                                      p.datagrams_per_op, f"{p.succeeded}/{p.total}"]
                                     for p in phases]))
                print(flush=True)

    if not args.no_memory:
        for peers in args.peers:
            memory = {impl: run_on("asyncio",
                                   memory_per_peer(impl, peers, args.sets, args.seed, args))
                      for impl in args.impls}
            line = ", ".join(f"{impl} {value / 1024:.1f} KiB" for impl, value in memory.items())
            if both:
                line += (f", ratio {ratio(memory['qadom'], memory['kademlia']):.2f} "
                         f"(lower is better)")
            print(f"memory per peer (N = {peers}, {args.sets} values stored, tracemalloc): "
                  f"{line}")
        print()

    if not args.no_churn:
        for loop in args.loops:
            outcome: dict[str, Phase] = {}
            for impl in args.impls:
                gc.collect()  # the previous run's garbage, off this one's clock
                outcome[impl] = run_on(loop, churn(impl, args, args.seed))
            print(f"## churn ({loop}, {load()}): {args.churn_values} values in "
                  f"{args.churn_peers} peers, {args.churn_fraction:.0%} closed, "
                  f"every value read back, {args.in_flight} in flight\n")
            print(table(["impl", "found", "success", "p50 ms", "p95 ms", "max ms", "elapsed s",
                         "dgram/op"],
                        [[impl, f"{p.succeeded}/{p.total}",
                          p.success_rate, p.p50_ms, p.p95_ms,
                          percentile(p.latencies, 100) * 1000, p.elapsed, p.datagrams_per_op]
                         for impl, p in outcome.items()]))
            print()
            if both:
                verdicts.append(_churn_verdict(loop, outcome, args.churn_values))

    if verdicts:
        print(targets(verdicts))
    print(f"\nwall time {time.perf_counter() - started:.0f} s; {load()} at the end")
    return 0


def _best(runs: list[list[Phase]]) -> list[Phase]:
    """For each phase, the run with the highest throughput."""
    return [max(same, key=lambda p: p.ops_per_s) for same in zip(*runs, strict=True)]


def _throughput_verdicts(loop: str, peers: int, results: dict[str, list[Phase]]) -> list[str]:
    out = []
    for a, b in zip(results["qadom"], results["kademlia"], strict=True):
        want = 10.0 if a.name.startswith("set") else 3.0
        got = ratio(a.ops_per_s, b.ops_per_s)
        out.append(f"{loop}, N = {peers}, {a.name}: {got:.1f}x kademlia (target {want:.0f}x): "
                   f"{shortfall(got, want)}")
    return out


def _churn_verdict(loop: str, outcome: dict[str, Phase], values: int) -> str:
    """The churn targets: every value found, and qadom's p95 at most a tenth of kademlia's. The
    latency target is judged only when every read of both succeeded: percentiles of two sides
    failing differently would compare different things."""
    a, b = outcome["qadom"], outcome["kademlia"]
    all_found = a.succeeded == values
    unjudged = latency_unjudged(outcome)
    figures = (f"{a.p95_ms:.0f} ms vs {b.p95_ms:.0f} ms, "
               f"{ratio(b.p95_ms, a.p95_ms):.1f}x lower")
    if unjudged:
        fast = f"not judged ({figures}; {unjudged})"
    else:
        fast = f"{'met' if a.p95_ms <= b.p95_ms / 10 else 'MISSED'} ({figures})"
    return (f"churn ({loop}): every value found: {'met' if all_found else 'MISSED'} "
            f"({a.succeeded}/{values}); p95 <= kademlia/10: {fast}")


if __name__ == "__main__":
    raise SystemExit(main())
