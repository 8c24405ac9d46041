"""Helpers shared by qadom's benchmarks: event loops, bounded load runners, percentiles, tables.

Every load loop here is bounded twice: by a count of operations and by a wall-clock deadline, and
each operation by its own timeout; what did not finish is reported, never waited for.
"""

from __future__ import annotations

import asyncio
import gc
import os
import platform
import resource
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from qadom.sim import percentile as sim_percentile

T = TypeVar("T")

LOOPS = ("asyncio", "uvloop")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """The event loop factory called ``name`` ("asyncio" or "uvloop")."""
    if name == "asyncio":
        return asyncio.new_event_loop
    if name == "uvloop":
        from qadom.runner import loop_factory as qadom_factory

        factory = qadom_factory()
        if factory is asyncio.new_event_loop:
            raise SystemExit("uvloop is not installed")
        return factory
    raise SystemExit(f"unknown loop {name!r}; choose from {', '.join(LOOPS)}")


def run_on(name: str, main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on a fresh loop of kind ``name``."""
    with asyncio.Runner(loop_factory=loop_factory(name)) as runner:
        return runner.run(main)


def percentile(values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile, as the simulator reports it (NaN for no values)."""
    return sim_percentile(sorted(values), pct) if values else float("nan")


@dataclass
class Phase:
    """The outcome of one bounded batch of operations."""

    name: str
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0  # not started or cut off by the phase deadline
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of successful operations, seconds
    datagrams: int = 0
    gc_seconds: float = 0.0  # time the garbage collector held the process during the phase

    @property
    def ops_per_s(self) -> float:
        return self.succeeded / self.elapsed if self.elapsed > 0 else float("nan")

    @property
    def p50_ms(self) -> float:
        return percentile(self.latencies, 50) * 1000

    @property
    def p95_ms(self) -> float:
        return percentile(self.latencies, 95) * 1000

    @property
    def datagrams_per_op(self) -> float:
        done = self.succeeded + self.failed
        return self.datagrams / done if done else float("nan")

    @property
    def success_rate(self) -> float:
        return self.succeeded / self.attempted if self.attempted else float("nan")


async def run_phase(name: str, operations: Sequence[Callable[[], Awaitable[bool]]], *,
                    in_flight: int, op_timeout: float, deadline: float,
                    datagrams: Callable[[], int]) -> Phase:
    """Run ``operations`` with at most ``in_flight`` at a time.

    Each operation returns True on success; an exception or a False counts as a failure, and an
    operation still running after ``op_timeout`` seconds is cancelled and counted failed. No new
    operation starts after ``deadline`` seconds of wall time; those are counted unfinished.
    """
    phase = Phase(name)
    queue = list(reversed(operations))
    start = time.perf_counter()
    stop_at = start + deadline
    before = datagrams()
    gc_started = [0.0]

    def gc_timer(stage: str, info: dict[str, int]) -> None:
        if stage == "start":
            gc_started[0] = time.perf_counter()
        else:
            phase.gc_seconds += time.perf_counter() - gc_started[0]

    async def worker() -> None:
        while queue and time.perf_counter() < stop_at:
            operation = queue.pop()
            phase.attempted += 1
            began = time.perf_counter()
            try:
                ok = await asyncio.wait_for(operation(), op_timeout)
            except Exception:  # includes the timeout
                ok = False
            if ok:
                phase.succeeded += 1
                phase.latencies.append(time.perf_counter() - began)
            else:
                phase.failed += 1

    gc.callbacks.append(gc_timer)
    try:
        await asyncio.gather(*(worker() for _ in range(max(1, in_flight))))
    finally:
        gc.callbacks.remove(gc_timer)
    phase.elapsed = time.perf_counter() - start
    phase.unfinished = len(queue)
    phase.datagrams = datagrams() - before
    return phase


def rss_mb() -> float:
    """This process's peak resident memory so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    """This process's resident memory now, in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as statm:
            pages = int(statm.read().split()[1])
        return pages * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return rss_mb()


def collect() -> None:
    """Full garbage collection, so memory measurements see only live objects."""
    for _ in range(3):
        gc.collect()


def machine() -> str:
    """One line describing where the figures were measured."""
    cpus = os.cpu_count()
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return (f"{platform.python_implementation()} {platform.python_version()} on "
            f"{platform.system()} {platform.machine()}, {cpus} CPUs {model}".strip()
            + f"; {revision()}")


def revision() -> str:
    """The qadom commit measured, marked when the working tree differs from it."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, text=True,
                              capture_output=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, text=True, capture_output=True, timeout=10,
                               check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "qadom revision unknown"
    return f"qadom {head}{' with local changes' if dirty else ''}"


def load() -> str:
    """The load averages now: how much else this shared machine was doing."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "load average unknown"
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A Markdown table (numbers formatted compactly)."""

    def fmt(value: object) -> str:
        if isinstance(value, float):
            if value != value:  # NaN
                return "-"
            if abs(value) >= 100:
                return f"{value:,.0f}"
            if abs(value) >= 10:
                return f"{value:.1f}"
            return f"{value:.2f}"
        return str(value)

    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def targets(verdicts: Sequence[str]) -> str:
    """The "targets" section of a report: one line per target, met or missed and by how much."""
    return "## targets\n\n" + "\n".join(f"- {line}" for line in verdicts)


def ratio(ours: float, theirs: float) -> float:
    """ours / theirs, NaN when undefined."""
    if theirs == 0 or theirs != theirs or ours != ours:
        return float("nan")
    return ours / theirs
