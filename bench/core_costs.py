"""What one protocol step costs in qadom's core, without sockets or event loops.

Each figure is the best (minimum) over ``--repeat`` timings of ``--number`` calls, which filters out
interference from other work on a shared machine. The RPC round trips drive two real nodes through
their sans-IO interface (request, encode, decode, handle, reply, match).

    pipenv run python bench/core_costs.py
"""

from __future__ import annotations

import argparse
import random
import sys
import timeit
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import load, machine, positive_int, table
from qadom.codec import Codec
from qadom.config import Config
from qadom.contact import Contact
from qadom.messages import Envelope, FindNode, Message, Nodes, Ping
from qadom.node import Node
from qadom.routing import RoutingTable


def best_us(fn: Callable[[], object], number: int, repeat: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=repeat)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--number", type=positive_int, default=2000,
                        help="calls per timing (at least 64: the routing figures time a 64th "
                        "of them, 64 calls each)")
    parser.add_argument("--repeat", type=positive_int, default=15)
    args = parser.parse_args(argv)
    if args.number < 64:
        parser.error(f"--number must be at least 64, not {args.number}")
    rng = random.Random(1)
    codec = Codec(Config())
    contacts = tuple(Contact(rng.getrandbits(256), ("127.0.0.1", 40000 + i)) for i in range(20))
    ping = Envelope(rng.getrandbits(64), rng.getrandbits(256), Ping())
    nodes = Envelope(rng.getrandbits(64), rng.getrandbits(256), Nodes(contacts))
    ping_data, nodes_data = codec.encode(ping), codec.encode(nodes)

    table_ = RoutingTable(rng.getrandbits(256), 20, 20, 3, 0.0)
    for _ in range(5000):
        asked = table_.seen(Contact(rng.getrandbits(256), ("127.0.0.1", 1)))
        if asked is not None:
            table_.seen(asked)
    targets = [rng.getrandbits(256) for _ in range(64)]
    newcomers = [Contact(rng.getrandbits(256), ("127.0.0.1", 2)) for _ in range(64)]

    def closest() -> None:
        for target in targets:
            table_.closest(target, 20)

    def seen_full() -> None:  # mostly full far buckets: replacement cache and the split rule
        for contact in newcomers:
            table_.seen(contact)

    # The per-address request limit would refuse most of these back-to-back requests: lifted.
    unlimited = Config(request_rate=1e9, request_burst=10**9)
    client = Node(config=unlimited, rng=random.Random(2))
    server = Node(config=unlimited, rng=random.Random(3))
    for _ in range(300):
        asked = server.table.seen(Contact(rng.getrandbits(256), ("127.0.0.1", 3)))
        if asked is not None:
            server.table.seen(asked)
    a, b = ("127.0.0.1", 1), ("127.0.0.1", 2)
    clock = [0.0]

    def rpc(message: Message) -> Callable[[], None]:
        def once() -> None:
            clock[0] += 1e-4
            now = clock[0]
            client.request(b, message, now)
            for data, _ in client.datagrams_to_send():
                server.datagram_received(data, a, now)
            for data, _ in server.datagrams_to_send():
                client.datagram_received(data, b, now)
            client.handle_timer(now)
        return once

    n, r = args.number, args.repeat
    rows: list[list[object]] = [
        ["encode Ping envelope", best_us(lambda: codec.encode(ping), n, r)],
        ["decode Ping envelope", best_us(lambda: codec.decode(ping_data), n, r)],
        ["encode Nodes (20 contacts)", best_us(lambda: codec.encode(nodes), n // 4, r)],
        ["decode Nodes (20 contacts)", best_us(lambda: codec.decode(nodes_data), n // 4, r)],
        [f"routing closest(k=20), table of {len(table_)}",
         best_us(closest, n // 64, r) / len(targets)],
        ["routing seen(), full far bucket", best_us(seen_full, n // 64, r) / len(newcomers)],
        ["core RPC: Ping -> Pong, two nodes", best_us(rpc(Ping()), n // 2, r)],
        [f"core RPC: FindNode -> Nodes (20), server table of {len(server.table)}",
         best_us(rpc(FindNode(rng.getrandbits(256))), n // 4, r)],
    ]
    print(f"# qadom core costs\n\nmachine: {machine()}, {load()}\n")
    print(table(["step", "µs (best of repeats)"], rows))
    refused = server.stats["rate_limited"]
    assert refused == 0, f"{refused} requests were refused: the figures would be wrong"
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
