"""Long-run fuzz target: random, mutated and malformed datagrams into a loaded node, checking
every invariant as it goes. Bounded by count and by time; exits 1 on the first violation.

    pipenv run python tests/fuzz/run_node_fuzz.py --seconds 60 --seed 1
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from fuzzing import check_invariants, feed, loaded_node, random_datagram


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=30.0, help="time budget (default 30)")
    parser.add_argument("--count", type=int, default=1_000_000,
                        help="datagram budget (default 1 000 000)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    deadline = time.monotonic() + args.seconds
    sent = rounds = 0
    now = 0.0
    while sent < args.count and time.monotonic() < deadline:
        node = loaded_node(rng.getrandbits(32))
        batch = [random_datagram(rng) for _ in range(min(500, args.count - sent))]
        now = feed(node, batch, rng, now)
        check_invariants(node, now)
        sent += len(batch)
        rounds += 1
    print(f"{sent} datagrams into {rounds} nodes, no invariant broken "
          f"(seed {args.seed}, {args.seconds:g} s budget)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
