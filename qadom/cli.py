"""The ``qadom`` command line: run a node, or talk to the network from a shell.

``qadom serve`` runs a long-lived node on qadom's own event loop (uvloop when installed) and shuts
down cleanly on SIGINT and SIGTERM. Every command exits 0 on success and non-zero with a one-line
reason on stderr otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence

from . import runner
from .contact import Address
from .errors import QadomError
from .peer import Peer

log = logging.getLogger("qadom")

EXAMPLES = {
    "serve": """examples:
  qadom serve --port 9999
  qadom serve --port 9998 --bootstrap 127.0.0.1:9999 --log-level debug""",
}


def parse_address(text: str) -> Address:
    """``HOST:PORT`` (IPv6 as ``[::1]:PORT``) -> (host, port); argparse-friendly errors."""
    host, sep, port = text.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qadom", description="qadom: a Kademlia distributed hash table.")
    parser.add_argument("--log-level", default="info",
                        choices=["debug", "info", "warning", "error"],
                        help="verbosity of the 'qadom' logger (default: info)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run a node until interrupted", epilog=EXAMPLES["serve"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a qadom node: serve the DHT over UDP until SIGINT or SIGTERM.")
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=9999,
                       help="UDP port (default 9999; 0 picks a free one)")
    serve.add_argument("--bootstrap", type=parse_address, action="append", default=[],
                       metavar="HOST:PORT", help="a known node to join through (repeatable)")
    serve.set_defaults(handler=_serve)
    return parser


async def _serve(args: argparse.Namespace) -> int:
    peer = Peer(args.host, args.port)
    await peer.start()
    host, port = peer.address
    # One machine-readable line first: scripts and tests read the bound address from it.
    print(f"qadom serving on {host}:{port} id {peer.id}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        if args.bootstrap:
            size = await peer.bootstrap(args.bootstrap)
            log.info("joined through %d address(es); %d contacts", len(args.bootstrap), size)
        await stop.wait()
        log.info("shutting down")
    finally:
        await peer.close()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qadom`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        code: int = runner.run(args.handler(args))
    except QadomError as exc:
        print(f"qadom: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"qadom: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return code


if __name__ == "__main__":
    sys.exit(main())
