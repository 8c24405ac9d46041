"""Helpers shared by qadom's benchmarks: event loops, bounded load runners, percentiles, tables.

Every load loop here is bounded twice: by a count of operations and by a wall-clock deadline, and
each operation by its own timeout; what did not finish is reported, never waited for.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import math
import os
import platform
import resource
import subprocess
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
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
    """The outcome of one bounded batch of operations.

    ``latencies`` holds one entry per operation that ran, failed ones included (one cut off by
    the per-operation timeout counts as exactly that timeout), so the percentiles describe what
    every caller waited, not only the lucky ones. Operations that never started (``unfinished``)
    have none. ``ok`` lists the positions, in the order given, of the operations that
    succeeded."""

    name: str
    attempted: int = 0
    succeeded: int = 0
    failed: int = 0
    unfinished: int = 0  # not started or cut off by the phase deadline
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)  # of every operation run, seconds
    datagrams: int = 0
    gc_seconds: float = 0.0  # time the garbage collector held the process during the phase
    ok: list[int] = field(default_factory=list)  # positions of the operations that succeeded

    @property
    def total(self) -> int:
        """Every operation the phase was given: attempted or not."""
        return self.attempted + self.unfinished

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
        """Succeeded over every operation given, those the deadline left unstarted included."""
        return self.succeeded / self.total if self.total else float("nan")

    @property
    def incomplete(self) -> int:
        """Operations that failed or never ran."""
        return self.failed + self.unfinished


LATENCY_NOTE = ("latency percentiles are over every operation run, failed ones included (one cut "
                "off by --op-timeout counts as that long); operations --phase-limit left "
                "unstarted have none")


async def run_phase(name: str, operations: Sequence[Callable[[], Awaitable[bool]]], *,
                    in_flight: int, op_timeout: float, deadline: float,
                    datagrams: Callable[[], int]) -> Phase:
    """Run ``operations`` with at most ``in_flight`` at a time.

    Each operation returns True on success; an exception or a False counts as a failure, and an
    operation still running after ``op_timeout`` seconds is cancelled and counted failed. No new
    operation starts after ``deadline`` seconds of wall time; those are counted unfinished.
    Every operation that ran has its latency recorded, capped at ``op_timeout``.

    Garbage is collected before the timed region starts, so what an earlier phase (or another
    implementation's run) left behind is not collected on this phase's clock.
    """
    if in_flight < 1:
        raise ValueError(f"in_flight must be at least 1, not {in_flight}")
    phase = Phase(name)
    queue = list(reversed(list(enumerate(operations))))
    gc.collect()
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
            position, operation = queue.pop()
            phase.attempted += 1
            began = time.perf_counter()
            try:
                ok = await asyncio.wait_for(operation(), op_timeout)
            except Exception:  # includes the timeout
                ok = False
            phase.latencies.append(min(time.perf_counter() - began, op_timeout))
            if ok:
                phase.succeeded += 1
                phase.ok.append(position)
            else:
                phase.failed += 1

    gc.callbacks.append(gc_timer)
    try:
        await asyncio.gather(*(worker() for _ in range(in_flight)))
    finally:
        gc.callbacks.remove(gc_timer)
    phase.elapsed = time.perf_counter() - start
    phase.unfinished = len(queue)
    phase.datagrams = datagrams() - before
    phase.ok.sort()
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


HIGHER_BETTER = "ratio (higher is better)"
LOWER_BETTER = "ratio (lower is better)"


def shortfall(got: float, want: float) -> str:
    """The verdict on a "at least ``want``" target measured at ``got``: "met", "MISSED by Nx",
    or, when nothing was measured (``got`` zero or NaN), "MISSED" with the reason."""
    if got != got:
        return "MISSED (not measured: no operation completed on one side)"
    if got >= want:
        return "met"
    if got <= 0:
        return "MISSED (no operation completed)"
    return f"MISSED by {want / got:.1f}x"


def latency_unjudged(phases: Mapping[str, Phase]) -> str:
    """Why the latencies of ``phases`` (by implementation) cannot be compared, or "" when they
    can: a latency target is judged only when every operation of every side succeeded, as a
    side whose failures or unstarted operations are left out would look faster than it is."""
    reasons = [f"{impl}: {p.incomplete} of {p.total} failed or unfinished" if p.total
               else f"{impl}: no operation" for impl, p in phases.items()
               if p.incomplete or not p.total]
    return "; ".join(reasons)


# --------------------------------------------------------------------------- argument types


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    value = _parse(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {text}")
    return value


def non_negative_int(text: str) -> int:
    """An argparse type: an integer of at least 0."""
    value = _parse(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, not {text}")
    return value


def positive_float(text: str) -> float:
    """An argparse type: a finite number above 0."""
    value = _parse(float, text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"must be a finite number above 0, not {text}")
    return value


def fraction(text: str) -> float:
    """An argparse type: a share in [0, 1) (1 would leave nothing to measure)."""
    value = _parse(float, text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, not {text}")
    return value


def _parse(kind: Callable[[str], T], text: str) -> T:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def share_of(count: int, share: float) -> int:
    """``share`` of ``count`` items, rounded to the nearest (30% of 100 is 30, 29% is 29)."""
    return round(count * share)
