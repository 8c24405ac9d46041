"""Lookups at sizes no laptop can run as processes: 1 000 and 10 000 simulated qadom nodes.

Each scenario builds a fresh network with :meth:`qadom.sim.SimNetwork.build` (tables filled
through the real routing rules, see its docstring), optionally takes a share of the nodes off the
network at once without notice (churn: they simply stop answering, and nobody's table has had
time to notice), optionally drops a share of all datagrams, then runs random lookups one after
the other from random live nodes. Every node is the real protocol core; every datagram is
encoded and decoded.

Reported per scenario: build time and memory, lookup wall time, and per lookup: rounds,
requests, messages at the origin, virtual latency, whether the true closest live node and the
true k closest were found; plus datagrams per lookup over the whole network (including the
verification and ping-before-evict traffic the lookups set off between other nodes).

    pipenv run python bench/sim_scale.py                          # 1 000 and 10 000 nodes
    pipenv run python bench/sim_scale.py --sizes 1000 --lookups 200
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    collect,
    current_rss_mb,
    fraction,
    load,
    machine,
    non_negative_int,
    positive_float,
    positive_int,
    share_of,
    table,
    targets,
)
from qadom import Config
from qadom.sim import SimNetwork, summarize

RPC_RETRIES = Config().rpc_retries

# What a scenario's row and verdict read from summarize(), which returns only {"lookups": 0}
# when there was no lookup to summarize.
SUMMARY_KEYS = ("rounds_p50", "rounds_p95", "rounds_max", "requests_p50", "messages_p50",
                "latency_p50", "latency_p95", "true_closest", "exact_k", "ok")


def complete(summary: dict[str, float]) -> dict[str, float]:
    """``summary`` with every figure a row reads, NaN for those it lacks (no lookup ran)."""
    return {key: float("nan") for key in SUMMARY_KEYS} | summary


def _share(value: float) -> str:
    return "-" if value != value else f"{value:.1%}"


def scenario(size: int, lookups: int, churn: float, loss: float, seed: int,
             rpc_retries: int = RPC_RETRIES) -> tuple[list[object], dict[str, float]]:
    collect()
    base = current_rss_mb()  # the interpreter and the imported modules
    started = time.perf_counter()
    net = SimNetwork(seed, config=Config(rpc_retries=rpc_retries))
    net.build(size)
    built = time.perf_counter() - started
    collect()
    memory = current_rss_mb() - base
    fill = net.fill_summary()
    if churn:
        net.leave(share_of(size, churn))
    net.loss = loss
    sent = net.sent
    started = time.perf_counter()
    reports = net.lookups(lookups)
    elapsed = time.perf_counter() - started
    summary = complete(summarize(reports))
    row: list[object] = [
        f"{size:,}", f"{churn:.0%}", f"{loss:.0%}", built, memory, memory * 1024 / size,
        elapsed, summary["rounds_p50"], summary["rounds_p95"], summary["rounds_max"],
        summary["requests_p50"], summary["messages_p50"], (net.sent - sent) / max(1, lookups),
        summary["latency_p50"] * 1000, summary["latency_p95"] * 1000,
        _share(summary["true_closest"]), _share(summary["exact_k"]), _share(summary["ok"]),
    ]
    summary.update(built=built, memory_mb=memory, elapsed=elapsed,
                   contacts_p50=fill["contacts_p50"], buckets_p50=fill["buckets_p50"])
    return row, summary


HEADERS = ["nodes", "churn", "loss", "build s", "memory MiB", "KiB/node", "lookups s",
           "rounds p50", "p95", "max", "requests p50", "msgs at origin p50",
           "network dgrams/lookup", "latency p50 ms", "p95 ms", "true closest found",
           "exact k found", "ok"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=positive_int, nargs="+", default=[1000, 10_000])
    parser.add_argument("--lookups", type=positive_int, default=1000)
    parser.add_argument("--churn", type=fraction, default=0.3,
                        help="share of the nodes taken off, in [0, 1), rounded to the nearest "
                        "node (at least one must stay)")
    parser.add_argument("--loss", type=fraction, default=0.1,
                        help="share of all datagrams dropped, in [0, 1)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--rpc-retries", type=non_negative_int, default=RPC_RETRIES,
                        help="resends of an unanswered request (Config.rpc_retries)")
    parser.add_argument("--timeout", type=positive_float, default=900.0,
                        help="seconds one scenario may take before the run is abandoned")
    args = parser.parse_args(argv)
    for size in args.sizes:
        if share_of(size, args.churn) >= size:
            parser.error(f"--churn {args.churn} takes off every one of {size} nodes: no lookup "
                         f"could run")
    print(f"# qadom simulated at scale\n\nmachine: {machine()}, {load()}\n")
    print(f"{args.lookups} random lookups per scenario, one after the other; seed {args.seed}; "
          f"rpc_retries {args.rpc_retries}\n")
    rows = []
    verdicts = []
    for size in args.sizes:
        for churn, loss in ((0.0, 0.0), (args.churn, 0.0), (0.0, args.loss),
                            (args.churn, args.loss)):
            # A fresh process per scenario, so its memory figure is not blurred by memory an
            # earlier scenario freed (the allocator keeps it) and each starts at virtual time 0.
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                row, summary = pool.submit(scenario, size, args.lookups, churn, loss, args.seed,
                                           args.rpc_retries).result(timeout=args.timeout)
            rows.append(row)
            print(f"  {size} nodes, churn {churn:.0%}, loss {loss:.0%}: lookups "
                  f"{summary['elapsed']:.1f} s, build {summary['built']:.1f} s, "
                  f"{summary['memory_mb']:.0f} MiB, table p50 {summary['contacts_p50']:.0f} "
                  f"contacts in {summary['buckets_p50']:.0f} buckets", flush=True)
            if size == 10_000 and not churn and not loss:
                verdicts.append(
                    f"10 000 nodes: every lookup finds the true closest node: "
                    f"{'met' if summary['true_closest'] == 1.0 else 'MISSED'} "
                    f"({summary['true_closest']:.1%}); median rounds <= 4: "
                    f"{'met' if summary['rounds_p50'] <= 4 else 'MISSED'} "
                    f"({summary['rounds_p50']:.0f}); {args.lookups} lookups in under a minute: "
                    f"{'met' if summary['elapsed'] < 60 else 'MISSED'} "
                    f"({summary['elapsed']:.1f} s); memory {summary['memory_mb']:.0f} MiB")
    print()
    print(table(HEADERS, rows))
    if verdicts:
        print("\n" + targets(verdicts))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
