"""The benchmark harness (bench/): its bounded runner, its percentiles, success rates and
verdicts, and the rejection of flags that would crash a run or measure nothing.

No network benchmark runs here: the load runner drives in-process operations, and the workload
of bench/vs_kademlia.py runs against a fake cluster that answers at once (or holds the loop for
a set time, where a phase's wall-clock deadline must cut it off)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import random
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, ClassVar

import pytest

import bench.common as common
import bench.core_costs as core_costs
import bench.sim_scale as sim_scale
import bench.store_scale as store_scale
import bench.udp_ceiling as udp_ceiling
import bench.vs_kademlia as vs_kademlia
from bench.common import Phase, run_phase
from bench.vs_kademlia import Cluster


def _constant(ok: bool) -> Callable[[], Awaitable[bool]]:
    async def operation() -> bool:
        return ok
    return operation


async def _raises() -> bool:
    raise RuntimeError("this operation fails")


async def _hangs() -> bool:
    await asyncio.get_running_loop().create_future()  # never resolved: the timeout ends it
    return True


def _phase(operations: list[Callable[[], Awaitable[bool]]], *, in_flight: int = 4,
           op_timeout: float = 0.05, deadline: float = 30.0) -> Phase:
    async def main() -> Phase:
        return await asyncio.wait_for(
            run_phase("test", operations, in_flight=in_flight, op_timeout=op_timeout,
                      deadline=deadline, datagrams=lambda: 0), 30)
    return asyncio.run(main())


# ---------------------------------------------------------------------------- bench/common.py


def test_failed_operations_count_in_the_latency_percentiles() -> None:
    phase = _phase([_constant(True), _constant(False), _raises, _hangs])
    assert (phase.attempted, phase.succeeded, phase.failed) == (4, 1, 3)
    # Every operation that ran has a latency, the failed ones too ...
    assert len(phase.latencies) == 4
    # ... and the one the timeout cut off counts exactly as long as the timeout.
    assert max(phase.latencies) == 0.05
    assert phase.p95_ms == 50.0
    assert phase.ok == [0]


def test_ok_lists_the_positions_of_the_operations_that_succeeded() -> None:
    phase = _phase([_constant(True), _constant(False), _constant(True), _raises],
                   in_flight=1)
    assert phase.ok == [0, 2]


def test_success_rate_counts_the_operations_the_deadline_left_unstarted() -> None:
    # kademlia found 9 of 60 values before the phase deadline: that is not a success rate of 1.
    phase = Phase("read back", attempted=9, succeeded=9, unfinished=51)
    assert phase.success_rate == 9 / 60
    # A deadline already passed starts nothing: every operation is unfinished, none succeeded.
    cut = _phase([_constant(True)] * 5, deadline=1e-300)
    assert (cut.attempted, cut.unfinished, cut.success_rate) == (0, 5, 0.0)


def test_run_phase_collects_garbage_before_its_timed_region() -> None:
    # Garbage left by an earlier run (a reference cycle) must not be collected on this phase's
    # clock: with the automatic collector off, only the phase's own collection can free it.
    class Cycle:
        me: object = None

    was_enabled = gc.isenabled()
    gc.disable()
    try:
        garbage = Cycle()
        garbage.me = garbage
        freed = weakref.finalize(garbage, lambda: None)
        del garbage

        async def sees_it_freed() -> bool:
            return not freed.alive

        phase = _phase([sees_it_freed], in_flight=1)
    finally:
        if was_enabled:
            gc.enable()
    assert phase.succeeded == 1, "the earlier run's garbage was still there when the phase began"


def test_share_of_rounds_to_the_nearest() -> None:
    assert common.share_of(100, 0.29) == 29  # int() truncated 28.999999999999996 to 28
    assert common.share_of(100, 0.3) == 30
    assert common.share_of(10, 0.0) == 0


# ---------------------------------------------------------------------------- bench/vs_kademlia


class FakeCluster:
    """A cluster with no network: a set stores the value unless ``fails_set`` says otherwise, a
    get finds it when it was stored and ``fails_get`` does not refuse it. Each operation holds
    the loop ``spin`` seconds (a busy wait, so a phase deadline shorter than that passes during
    the first operation, whatever the machine's speed). ``made`` keeps every instance."""

    name = "fake"
    spin: ClassVar[float] = 0.0
    made: ClassVar[list[FakeCluster]] = []
    freed: ClassVar[list[weakref.finalize[Any, Any]]] = []

    def __init__(self) -> None:
        self.peers = 0
        self.closed: set[int] = set()
        self.stored: set[bytes] = set()
        self.setters: list[tuple[int, bytes]] = []
        self.gets = 0
        self.garbage_left_on_start = any(f.alive for f in FakeCluster.freed)
        FakeCluster.made.append(self)

    def fails_set(self, value: bytes) -> bool:
        return False

    def fails_get(self, count: int) -> bool:
        return False

    def _hold(self) -> None:
        until = time.perf_counter() + self.spin
        while time.perf_counter() < until:
            pass

    async def start(self, count: int, rng: random.Random) -> None:
        self.peers = count

    def size(self) -> int:
        return self.peers

    def live(self) -> list[int]:
        return [i for i in range(self.peers) if i not in self.closed]

    async def set(self, index: int, value: bytes) -> bool:
        self._hold()
        self.setters.append((index, value))
        if self.fails_set(value):
            return False
        self.stored.add(value)
        return True

    async def get(self, index: int, value: bytes) -> bool:
        self._hold()
        self.gets += 1
        return value in self.stored and not self.fails_get(self.gets)

    def holds(self, index: int, value: bytes) -> bool:
        return False

    def datagrams(self) -> int:
        return 0

    async def close_peer(self, index: int) -> None:
        self.closed.add(index)

    async def close(self) -> None:
        # What a real network leaves behind when it closes: a reference cycle for the collector.
        class Cycle:
            me: object = None

        garbage = Cycle()
        garbage.me = garbage
        FakeCluster.freed.append(weakref.finalize(garbage, lambda: None))


class HalfSetsFail(FakeCluster):
    def fails_set(self, value: bytes) -> bool:
        return len(self.setters) % 2 == 0  # the 2nd, 4th, ... set fails


class SlowCluster(FakeCluster):
    spin = 0.02  # longer than the 0.01 s phase limit the tests give it


class HalfGetsFail(FakeCluster):
    def fails_get(self, count: int) -> bool:
        return count % 2 == 0


@pytest.fixture(autouse=True)
def fresh_fakes() -> Iterator[None]:
    FakeCluster.made.clear()
    FakeCluster.freed.clear()
    yield
    FakeCluster.made.clear()
    FakeCluster.freed.clear()


def _use(monkeypatch: pytest.MonkeyPatch, **impls: Callable[[], Cluster]) -> None:
    for name, factory in impls.items():
        monkeypatch.setitem(vs_kademlia.IMPLS, name, factory)


def _args(**overrides: Any) -> argparse.Namespace:
    values: dict[str, Any] = dict(sets=8, gets=8, in_flight=3, op_timeout=5.0, phase_limit=30.0,
                                  gc_freeze=False, churn_peers=100, churn_values=10,
                                  churn_fraction=0.3)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_gets_read_only_the_values_whose_set_succeeded(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, fake=FakeCluster, halves=HalfSetsFail)
    _, every = asyncio.run(vs_kademlia.throughput("fake", 5, _args(), 1))
    _, half = asyncio.run(vs_kademlia.throughput("halves", 5, _args(), 1))
    for sets, gets in ((half[0], half[1]), (half[2], half[3])):
        assert sets.succeeded == 4 and sets.failed == 4
        # A value never stored is not read: no get fails for want of it.
        assert (gets.attempted, gets.succeeded, gets.failed) == (4, 4, 0)
    assert all(p.failed == 0 and p.succeeded == 8 for p in every)
    # Skipped values still draw from the workload's generator: the next phase sets the same
    # values from the same peers as when every set succeeds.
    full, halved = FakeCluster.made
    assert full.setters[8:] == halved.setters[8:]


def test_single_implementation_table_counts_unfinished_operations(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, slow=SlowCluster)
    code = vs_kademlia.main(["--impls", "slow", "--peers", "3", "--sets", "4", "--gets", "4",
                             "--in-flight", "1", "--phase-limit", "0.01", "--no-memory",
                             "--no-churn", "--loops", "asyncio"])
    assert code == 0
    out = capsys.readouterr().out
    set_rows = [line for line in out.splitlines() if line.startswith("| set,")]
    assert len(set_rows) == 2
    for row in set_rows:  # the deadline passed during the first set: 1 of the 4 succeeded
        assert row.endswith("| 1/4 |"), row


def test_churn_success_counts_unfinished_reads(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, slow=SlowCluster)
    vs_kademlia.main(["--impls", "slow", "--no-throughput", "--no-memory", "--churn-peers", "10",
                      "--churn-values", "4", "--in-flight", "1", "--phase-limit", "0.01",
                      "--loops", "asyncio"])
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("| slow |"))
    found, success = [cell.strip() for cell in row.split("|")[2:4]]
    assert found == "1/4"
    assert success == "0.25"


def test_churn_closes_the_rounded_share_of_peers(monkeypatch: pytest.MonkeyPatch) -> None:
    _use(monkeypatch, fake=FakeCluster)
    asyncio.run(vs_kademlia.churn("fake", _args(churn_fraction=0.29), 1))
    assert len(FakeCluster.made[0].closed) == 29


def test_churn_latency_target_is_not_judged_when_reads_failed(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, qadom=FakeCluster, kademlia=HalfGetsFail)
    vs_kademlia.main(["--no-throughput", "--no-memory", "--churn-peers", "10",
                      "--churn-values", "4", "--loops", "asyncio"])
    out = capsys.readouterr().out
    verdict = next(line for line in out.splitlines() if line.startswith("- churn"))
    assert "every value found: met (4/4)" in verdict
    assert "p95 <= kademlia/10: not judged" in verdict
    assert "kademlia: 2 of 4 failed or unfinished" in verdict
    assert "over every operation run, failed ones included" in out


def test_garbage_is_collected_between_implementations(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, qadom=FakeCluster, kademlia=FakeCluster)
    was_enabled = gc.isenabled()
    gc.disable()  # only the harness's own collections run
    try:
        vs_kademlia.main(["--peers", "3", "--sets", "2", "--gets", "2", "--no-memory",
                          "--no-churn", "--loops", "asyncio"])
    finally:
        if was_enabled:
            gc.enable()
    _, second = FakeCluster.made
    assert not second.garbage_left_on_start
    capsys.readouterr()


def test_throughput_verdict_when_qadom_completed_nothing() -> None:
    ours = Phase("set, sequential", attempted=10, failed=10, elapsed=1.0)
    theirs = Phase("set, sequential", attempted=10, succeeded=10, elapsed=1.0)
    nothing = Phase("set, sequential", attempted=10, failed=10, elapsed=1.0)
    [verdict] = vs_kademlia._throughput_verdicts("uvloop", 30, {"qadom": [ours],
                                                                "kademlia": [theirs]})
    assert verdict.endswith("MISSED (no operation completed)")
    [verdict] = vs_kademlia._throughput_verdicts("uvloop", 30, {"qadom": [theirs],
                                                                "kademlia": [nothing]})
    assert "MISSED (not measured" in verdict


def test_ratio_columns_say_which_way_is_better(monkeypatch: pytest.MonkeyPatch,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, qadom=FakeCluster, kademlia=FakeCluster)
    vs_kademlia.main(["--peers", "3", "--sets", "2", "--gets", "2", "--no-memory", "--no-churn",
                      "--loops", "asyncio"])
    header = next(line for line in capsys.readouterr().out.splitlines()
                  if line.startswith("| phase |"))
    cells = [cell.strip() for cell in header.split("|")[1:-1]]
    assert [cells[i] for i in (3, 6, 9, 12)] == [
        "ratio (higher is better)", "ratio (lower is better)", "ratio (lower is better)",
        "ratio (lower is better)"]


@pytest.mark.parametrize("flags", [
    ["--peers", "0"], ["--peers", "10", "-1"], ["--sets", "0", "--gets", "0"], ["--gets", "0"],
    ["--in-flight", "0"], ["--repeat", "0"], ["--churn-peers", "0"], ["--churn-values", "0"],
    ["--churn-fraction", "1"], ["--churn-fraction", "-0.1"], ["--churn-fraction", "nan"],
    ["--op-timeout", "0"], ["--phase-limit", "-1"], ["--phase-limit", "inf"],
])
def test_vs_kademlia_rejects_flags_that_measure_nothing(
        flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        vs_kademlia.main([*flags, "--no-throughput", "--no-memory", "--no-churn"])
    assert raised.value.code == 2
    assert flags[0] in capsys.readouterr().err


def test_vs_kademlia_rejects_a_churn_that_closes_every_peer(
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    _use(monkeypatch, qadom=FakeCluster, kademlia=FakeCluster)
    with pytest.raises(SystemExit) as raised:  # 95% of 5 rounds to 5
        vs_kademlia.main(["--no-throughput", "--no-memory", "--churn-peers", "5",
                          "--churn-values", "2", "--churn-fraction", "0.95",
                          "--loops", "asyncio"])
    assert raised.value.code == 2
    assert "--churn-fraction" in capsys.readouterr().err


# ---------------------------------------------------------------------------- bench/udp_ceiling


def _no_network(monkeypatch: pytest.MonkeyPatch, echo: float, rpc: float) -> None:
    """The measurements replaced by figures: no socket is opened."""
    async def echo_rate(*args: Any) -> tuple[float, int]:
        return echo, 0

    async def qadom_rate(*args: Any) -> tuple[float, int]:
        return rpc, 0

    monkeypatch.setattr(udp_ceiling, "echo_rate", echo_rate)
    monkeypatch.setattr(udp_ceiling, "qadom_rate", qadom_rate)


@pytest.mark.parametrize(("echo", "rpc", "verdict"), [
    (1000.0, 0.0, "MISSED (no operation completed)"),
    (0.0, 0.0, "MISSED (not measured: no operation completed on one side)"),
    (1000.0, 250.0, "MISSED by 2.0x"),
    (1000.0, 500.0, "met"),
])
def test_udp_ceiling_verdicts(echo: float, rpc: float, verdict: str,
                              monkeypatch: pytest.MonkeyPatch,
                              capsys: pytest.CaptureFixture[str]) -> None:
    _no_network(monkeypatch, echo, rpc)
    assert udp_ceiling.main(["--count", "10", "--loops", "asyncio"]) == 0
    out = capsys.readouterr().out
    verdicts = [line for line in out.splitlines() if line.startswith("- asyncio")]
    assert len(verdicts) == 2
    assert all(line.endswith(f"(target 50%): {verdict}") for line in verdicts), verdicts
    assert "RPC / echo (higher is better)" in out


@pytest.mark.parametrize("flags", [["--in-flight", "0"], ["--count", "0"], ["--seconds", "0"]])
def test_udp_ceiling_rejects_flags_that_measure_nothing(
        flags: list[str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    _no_network(monkeypatch, 1000.0, 1000.0)
    with pytest.raises(SystemExit) as raised:
        udp_ceiling.main([*flags, "--loops", "asyncio"])
    assert raised.value.code == 2
    assert flags[0] in capsys.readouterr().err


# ---------------------------------------------------------------------------- bench/sim_scale


def test_sim_scale_row_of_a_scenario_without_lookups() -> None:
    # summarize([]) has no percentiles: the row shows them as missing instead of raising.
    row, summary = sim_scale.scenario(20, 0, 0.0, 0.0, 1)
    assert summary["lookups"] == 0
    assert summary["rounds_p50"] != summary["rounds_p50"]  # NaN
    assert row[-3:] == ["-", "-", "-"]


@pytest.mark.parametrize("flags", [
    ["--lookups", "0"], ["--churn", "1"], ["--churn", "0.99", "--sizes", "20"],
    ["--sizes", "0"], ["--loss", "1"], ["--rpc-retries", "-1"], ["--timeout", "0"],
])
def test_sim_scale_rejects_flags_that_measure_nothing(
        flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        sim_scale.main([*flags, "--sizes", "20"] if "--sizes" not in flags else flags)
    assert raised.value.code == 2
    assert flags[0] in capsys.readouterr().err


# ---------------------------------------------------------------------------- the others


@pytest.mark.parametrize("flags", [["--number", "10"], ["--number", "0"], ["--repeat", "0"]])
def test_core_costs_rejects_flags_that_time_nothing(
        flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        core_costs.main(flags)
    assert raised.value.code == 2
    assert flags[0] in capsys.readouterr().err


@pytest.mark.parametrize("flags", [["--items", "0"], ["--repeat", "0"],
                                   ["--items", "1000", "--repeat", "5"]])
def test_store_scale_rejects_flags_that_time_nothing(
        flags: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as raised:
        store_scale.main(flags)
    assert raised.value.code == 2
    assert "--" in capsys.readouterr().err
