"""The ``qadom`` command line: run a node, or talk to the network from a shell.

``qadom serve`` runs a long-lived node on qadom's own event loop (uvloop when installed) and shuts
down cleanly on SIGINT and SIGTERM. The one-shot commands (``set``, ``get``, ``append``, ``search``,
``namespace-set``, ``namespace-get``, ``publish``) join the network through ``--bootstrap`` with a
short-lived client peer that stays out of other nodes' routing tables, do one thing and leave;
``subscribe`` joins the same way and writes the topic's messages as they arrive until it has
``--count`` of them, is stopped or its stdout's reader goes away (relays push messages to the
address a subscriber registered from, so a client peer receives them without being in anyone's
routing table). ``--timeout`` is the deadline of a one-shot command as a whole (of ``subscribe``'s
joining and subscribing): each network step gets what is left of it. ``keygen`` makes
the ed25519 identity that owns a namespace (:class:`qadom.identity.Identity`); ``info`` asks a
running node on this machine for its summary (:mod:`qadom.info`).

Exit status: 0 on success, and for ``serve`` and ``subscribe`` stopped by SIGINT or SIGTERM at
any time (even while they join) once :func:`main` runs them, whatever signals follow while they
stop (before, while the command loads qadom and parses its arguments, a SIGINT kills it by the
signal, without a traceback); 2 for a bad argument (argparse's convention: a malformed key,
public key or address, a host name that does not resolve, an unreadable file or closed stdin, a
value over the size limit, an identity file that is not one, a ``keygen`` FILE that exists
without ``--force``); 1 for any other failure (not found, no node answered, timed out, a write
no node took, a newer seq in the network, a port in use, closed or full stdout, a file that
cannot be written). On failure stderr holds exactly one line, ``qadom: <reason>``
(``subscribe`` may have warned before it that messages were dropped, see
:class:`_DroppedWarnings`); never a traceback (``--log-level debug`` logs one for an unexpected
error). A command whose stdout's reader goes away
(``qadom subscribe 99 | head -n 1``, ``qadom get KEY | true``, ``qadom --help | true``) stops,
unsubscribing first, and dies of SIGPIPE silently, as Unix filters do (status 141 in the
shell); except ``serve``, a server, which keeps serving and logs to stderr what it could not
write (:func:`_announce`).
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def _sigint_kills() -> Iterator[None]:
    """Within the block, SIGINT ends the process as its default action does: killed by the
    signal (status 130 in the shell), without a word. Python's handler would raise
    KeyboardInterrupt from wherever the program is, an import say, and print its traceback.
    Python's handler is back when the block ends, unless the block installed a handler of its
    own (``serve`` and ``subscribe`` do: :class:`_StopSignals`), which stays. Only in the main
    thread and only in place of Python's handler: a SIGINT that is ignored (a background job of a
    shell script) stays ignored, and a program's own handler stays."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        yield
    finally:
        if signal.getsignal(signal.SIGINT) is signal.SIG_DFL:
            signal.signal(signal.SIGINT, signal.default_int_handler)


# A Ctrl-C while the command starts, before main() turns it into an exit status, kills it
# without a traceback. Most of that time goes to these imports, of the node and the libraries it
# uses (a tenth of a second or more); importing the package ``qadom`` first imports nothing.
with _sigint_kills():
    import argparse
    import asyncio
    import errno
    import json
    import logging
    import os
    import re
    import select
    import socket
    import sqlite3
    import stat
    import sys
    from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
    from contextlib import asynccontextmanager, suppress
    from pathlib import Path
    from types import FrameType
    from typing import TYPE_CHECKING, Any, NoReturn

    from . import runner
    from .config import Config
    from .contact import (
        Address,
        Contact,
        check_host_name,
        ip_of,
        parse_host_port,
        port_number,
        unreachable_from,
    )
    from .errors import (
        DataDirInUse,
        InvalidArgument,
        NoPeersError,
        NotFoundError,
        OperationTimeout,
        QadomError,
        StorageFull,
        StorageUnavailable,
        UsageError,
        printable,
    )
    from .identity import Identity
    from .ids import ID_SPACE
    from .info import format_address, is_loopback
    from .peer import Peer

if TYPE_CHECKING:
    from _typeshed import SupportsWrite

    from .http import HttpHelper
    from .subscription import Subscription

log = logging.getLogger("qadom")

EXAMPLES = {
    "serve": """examples:
  qadom serve --port 9999                    # data in the per-user data directory
  qadom serve --port 9998 --bootstrap 127.0.0.1:9999 --data-dir ~/qadom-9998
  qadom serve --port 9997 --bootstrap 127.0.0.1:9999 --memory --log-level debug
  qadom serve --port 9998 --data-dir ~/qadom-9998   # restarted: same id and data; rejoins

Stopped by Ctrl-C or SIGTERM it exits with status 0, even when signalled again as it stops.
With --bootstrap, it joins through those addresses; when none answers, it rejoins through the
other contacts saved in its data dir (a warning names the addresses) and exits with status 1
only if none of those answers either, or none is left.
stdout gets one line, "qadom serving on HOST:PORT id ID" (and "qadom http on HOST:PORT" with
--http-port) once it listens; the log goes to stderr. When the reader of stdout goes away
(qadom serve | head -n 1), the node keeps serving and logs the lines it could not write; a
stdout that cannot be written otherwise (a full disk) stops it with status 1.""",
    "set": """examples:
  qadom set photo.jpg                        # prints the key (the value's SHA-256) in decimal
  printf 'sudo python' | qadom set -         # the value from stdin
  qadom set notes.txt --bootstrap 192.0.2.7:9999 --bootstrap 192.0.2.8:9999

The value is at most 8192 bytes; it is stored at the k nodes closest to its key.""",
    "get": """examples:
  qadom get 44523492095186523269265158000087001266127815262863473237438729878159874507476
  qadom get 0x626f674b4ba4fed89391a3390a68e8fdc9ccfff9d77b16c25a62d4c550dac2d4 -o value.bin
  KEY=$(qadom set photo.jpg) && qadom get "$KEY" | cmp - photo.jpg

Exit status 1 with "not found" when no node reached holds the key. When the reader of stdout
has gone (qadom get KEY | true), it dies of SIGPIPE without a word, as cat does (141 in the
shell).""",
    "append": """examples:
  qadom append 1234 5678                     # add 5678 to the set under key 1234
  qadom append 0x4d2 0xff --bootstrap 127.0.0.1:9998""",
    "search": """examples:
  qadom search 1234                          # every value under 1234, one a line, ascending
  qadom search 0x4d2 | wc -l""",
    "info": """examples:
  qadom info                                 # the node serving on 127.0.0.1:9999
  qadom info --node 127.0.0.1:9998 --json

A node answers INFO only to requests from its own machine (a loopback address).""",
    "keygen": """examples:
  qadom keygen me.key                        # prints the public key: your namespace
  qadom keygen me.key --force                # replace the key in me.key (its namespace is lost)

FILE holds the secret seed as hex, readable by its owner only; keep it safe.""",
    "namespace-set": """examples:
  qadom namespace-set --identity me.key 42 profile.json    # prints the seq it signed: 0, 1...
  printf 'v2' | qadom namespace-set --identity me.key 0x2a -

The value is at most 8192 bytes; the seq is one more than the newest the network holds.""",
    "namespace-get": """examples:
  qadom namespace-get 3d4017c3e843895a92b70aa74d1b7ebc9c982ccf2ec4968cc0cd55f12af4660c 42
  PK=$(qadom keygen me.key) && qadom namespace-set --identity me.key 7 notes.txt &&
    qadom namespace-get "$PK" 7 -o notes.bin

Writes the newest value's exact bytes; exit status 1 with "not found" when there is none.""",
    "publish": """examples:
  qadom publish 99 message.bin               # prints how many relays took the message
  printf 'hello' | qadom publish 0x63 - --bootstrap 127.0.0.1:9998""",
    "subscribe": """examples:
  qadom subscribe 99                         # each message, then a newline, until Ctrl-C
  qadom subscribe 99 --count 1 --hex         # the next message as one line of hex, then exit
  qadom subscribe 99 --json | jq -r '.text // .hex'  # a JSON line a message, newlines and all
  qadom subscribe 99 | head -n 1             # the first line, then stop
  qadom --log-level info subscribe 99        # also logs when the subscription is in place

By default each message is written as it is, then a newline: a message that holds newlines
reads as several lines, so tell messages apart with --json or --hex. --timeout bounds joining
and subscribing, not the wait for messages. Stopped by Ctrl-C or SIGTERM it unsubscribes and
exits with status 0, even when signalled again as it stops; when the reader of its stdout goes
away (head has read enough) it unsubscribes at once and dies of SIGPIPE, as Unix filters do
(status 141 in the shell).
A reader that falls behind by 10 000 messages or 4 MiB loses the newer ones; stderr (never
stdout) then says how many: "qadom: 18 messages dropped: the reader of stdout fell behind",
at most one line every 10 seconds, and one for the rest when it stops.""",
}

LOG_LEVELS = ["debug", "info", "warning", "error"]

DEFAULT_NODE: Address = ("127.0.0.1", 9999)
"""Where the one-shot commands and ``info`` look for a node when not told."""

DROPPED_CHECK = 1.0
"""Seconds between two looks of ``subscribe`` at its subscription's count of dropped messages:
a reader that falls behind hears of it within a second."""

DROPPED_WARNING_GAP = 10.0
"""Least seconds between two of ``subscribe``'s warnings that messages were dropped: a reader
stuck for an hour costs at most 360 lines of stderr, not one per message lost."""

_DECIMAL = re.compile(r"[0-9]+", re.ASCII)
_HEX = re.compile(r"0[xX][0-9a-fA-F]+", re.ASCII)
_MAX_ID_TEXT = 200  # far more digits than any id has, even with leading zeros; bounds int()
_PUBLIC_KEY = re.compile(r"[0-9a-fA-F]{64}", re.ASCII)
_MAX_IDENTITY_FILE = 1024  # a saved identity is 65 bytes; bounds what is read from --identity


class CommandLineError(UsageError, ValueError):
    """An argument the parser could not check (an unreadable file, a value too large): exit 2."""


class _Parser(argparse.ArgumentParser):
    """argparse with qadom's error format: one line ``qadom: <reason>`` on stderr, exit 2; and
    help that fails to reach stdout is a failure, as any command's output is (argparse ignores
    the error and exits 0): ``qadom --help > /dev/full`` exits 1 saying it cannot write stdout,
    ``qadom --help >&-`` exits 1 saying stdout is closed, and ``qadom --help | true`` dies of
    SIGPIPE (:func:`main`)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"qadom: {message} (see '{self.prog} --help')\n")

    def _print_message(self, message: str, file: SupportsWrite[str] | None = None) -> None:
        if not message:
            return
        # argparse passes stderr itself for its errors; help and usage come with sys.stdout,
        # None when stdout is closed (argparse would then write them to stderr).
        if file is None or file is sys.stdout:
            _require_stdout()
            with _writing_stdout():
                sys.stdout.write(message)
                sys.stdout.flush()  # here, not at exit, where a failure is not reported
            return
        with suppress(AttributeError, OSError):  # a closed or broken stderr: nowhere to say so
            file.write(message)


def parse_host(text: str) -> str:
    """A host to bind or to reach, as given: an IP address or a name the resolver can be asked
    about (:func:`qadom.contact.check_host_name`); argparse-friendly errors."""
    try:
        return check_host_name(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_address(text: str) -> Address:
    """``HOST:PORT`` -> (host, port), an IPv6 host in brackets (``[::1]:9999``), checked as
    :func:`qadom.contact.parse_host_port` says; argparse-friendly errors."""
    try:
        return parse_host_port(text)
    except InvalidArgument as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_port(text: str) -> int:
    """A port to listen on, in ASCII digits, in [0, 65535] (0 picks a free one);
    argparse-friendly errors."""
    port = port_number(text)
    if port is None:
        raise argparse.ArgumentTypeError(f"port must be an integer in [0, 65535], not {text!r}")
    return port


def parse_id(text: str) -> int:
    """A key or multimap value: decimal, or hexadecimal with a ``0x`` prefix, in [0, 2**256)."""
    if len(text) > _MAX_ID_TEXT:
        raise argparse.ArgumentTypeError(f"{text[:20]}... is too long for a 256-bit integer")
    if _DECIMAL.fullmatch(text):
        number = int(text)
    elif _HEX.fullmatch(text):
        number = int(text[2:], 16)
    else:
        raise argparse.ArgumentTypeError(
            f"expected a decimal or 0x-prefixed hex integer, got {text!r}")
    if number >= ID_SPACE:
        raise argparse.ArgumentTypeError(f"{text} is out of range: it must be below 2**256")
    return number


def parse_public_key(text: str) -> bytes:
    """A namespace's ed25519 public key: exactly 64 hex digits, as ``keygen`` prints it."""
    if not _PUBLIC_KEY.fullmatch(text):
        shown = repr(text) if len(text) <= 70 else repr(text[:20] + "...")
        raise argparse.ArgumentTypeError(
            f"expected an ed25519 public key as 64 hex digits, got {shown}")
    return bytes.fromhex(text)


def parse_count(text: str) -> int:
    """A positive number of messages, in ASCII digits, of at most 18 of them."""
    if _DECIMAL.fullmatch(text) and len(text) > 18:
        raise argparse.ArgumentTypeError(f"{text} is too many: at most 18 digits")
    if not _DECIMAL.fullmatch(text) or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def parse_timeout(text: str) -> float:
    """A positive number of seconds."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 0 < seconds < 86400:
        raise argparse.ArgumentTypeError(f"expected seconds in (0, 86400), got {text!r}")
    return seconds


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="qadom", description="qadom: a Kademlia distributed hash table.")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                        help="verbosity of the 'qadom' logger on stderr (default: info for "
                             "serve, warning for the other commands)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser(
        "serve", help="run a node until interrupted", epilog=EXAMPLES["serve"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run a qadom node: serve the DHT over UDP until SIGINT or SIGTERM.")
    serve.add_argument("--host", type=parse_host, default="127.0.0.1",
                       help="address to bind (default 127.0.0.1; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=parse_port, default=9999,
                       help="UDP port (default 9999; 0 picks a free one)")
    serve.add_argument("--bootstrap", type=parse_address, action="append", default=[],
                       metavar="HOST:PORT",
                       help="a known node to join through (repeatable; an IP address must be "
                            "of the --host family); if none answers, the node rejoins through "
                            "the contacts its data dir saved, if any")
    storage = serve.add_mutually_exclusive_group()
    storage.add_argument("--data-dir", default=None, metavar="DIR",
                         help="keep the node's id, contacts and data in DIR (SQLite), so a "
                              "restart is the same node; without --bootstrap it rejoins through "
                              "its saved contacts (default: the per-user data directory, "
                              "e.g. ~/.local/share/qadom; '' keeps everything in memory)")
    storage.add_argument("--memory", action="store_true",
                         help="keep everything in memory: the node forgets all when it stops")
    serve.add_argument("--http-port", type=parse_port, default=None, metavar="N",
                       help="also serve the HTTP helper on TCP port N (0 picks a free "
                            "one); off by default. Its routes: GET /openapi.json, or "
                            "docs/HTTP.md in qadom's source distribution")
    serve.add_argument("--http-host", type=parse_host, default=None, metavar="HOST",
                       help="address the HTTP helper binds (default: the --host value); "
                            "only with --http-port")
    serve.set_defaults(handler=_serve)

    joining = _Parser(add_help=False)
    joining.add_argument("--bootstrap", type=parse_address, action="append", default=None,
                         metavar="HOST:PORT",
                         help="a node to join through (repeatable, IP addresses of one "
                              "family; default 127.0.0.1:9999)")
    joining.add_argument("--timeout", type=parse_timeout, default=30.0, metavar="SECONDS",
                         help="deadline of the whole command: joining and the operation, "
                              "each step getting what is left (default 30; for subscribe, of "
                              "joining and subscribing)")

    def one_shot(name: str, summary: str, description: str) -> argparse.ArgumentParser:
        return commands.add_parser(
            name, help=summary, description=description, epilog=EXAMPLES[name],
            parents=[joining], formatter_class=argparse.RawDescriptionHelpFormatter)

    store = one_shot("set", "store a value; print its key",
                     "Store the bytes of FILE (- for stdin) in the DHT and print their key, "
                     "the SHA-256 of the value as a decimal integer.")
    store.add_argument("file", metavar="FILE", help="the value's file, or - for stdin")
    store.set_defaults(handler=_set)

    fetch = one_shot("get", "write the value stored under a key",
                     "Find the value stored under KEY and write its exact bytes to stdout "
                     "(or to FILE with -o).")
    fetch.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    fetch.add_argument("-o", "--output", metavar="FILE", default="-",
                       help="write the value to FILE instead of stdout")
    fetch.set_defaults(handler=_get)

    add = one_shot("append", "add an integer to the set under a key",
                   "Add VALUE to the multimap set stored under KEY (both 256-bit integers).")
    add.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    add.add_argument("value", type=parse_id, metavar="VALUE", help="decimal, or hex with 0x")
    add.set_defaults(handler=_append)

    find = one_shot("search", "list the set under a key",
                    "Print every value of the multimap set under KEY, one decimal integer a "
                    "line, in increasing order (nothing when the set is empty).")
    find.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    find.set_defaults(handler=_search)

    keygen = commands.add_parser(
        "keygen", help="make an ed25519 identity; print its public key",
        epilog=EXAMPLES["keygen"], formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Make a new ed25519 identity, the owner of a namespace, save it in FILE "
                    "and print its public key (the namespace's name) as 64 hex digits.")
    keygen.add_argument("file", metavar="FILE", help="where to save the secret key")
    keygen.add_argument("--force", action="store_true", help="replace FILE if it exists")
    keygen.set_defaults(handler=_keygen)

    sign = one_shot("namespace-set", "sign and store a value in your namespace",
                    "Sign the bytes of FILE (- for stdin) as the next version of KEY in the "
                    "namespace of the identity in --identity, store them and print the "
                    "version's seq.")
    sign.add_argument("--identity", required=True, metavar="FILE",
                      help="the identity file 'qadom keygen' made")
    sign.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    sign.add_argument("file", metavar="FILE", help="the value's file, or - for stdin")
    sign.set_defaults(handler=_namespace_set)

    read = one_shot("namespace-get", "write the newest value of a key in a namespace",
                    "Find the newest value of KEY in the namespace of PUBLIC_KEY and write its "
                    "exact bytes to stdout (or to FILE with -o).")
    read.add_argument("public_key", type=parse_public_key, metavar="PUBLIC_KEY",
                      help="the namespace: an ed25519 public key, 64 hex digits")
    read.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    read.add_argument("-o", "--output", metavar="FILE", default="-",
                      help="write the value to FILE instead of stdout")
    read.set_defaults(handler=_namespace_get)

    send = one_shot("publish", "send a message to a topic's subscribers",
                    "Send the bytes of FILE (- for stdin) to the subscribers of topic KEY and "
                    "print how many relays accepted the message.")
    send.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    send.add_argument("file", metavar="FILE", help="the message's file, or - for stdin")
    send.set_defaults(handler=_publish)

    listen = one_shot("subscribe", "write a topic's messages as they arrive",
                      "Subscribe to topic KEY and write each message to stdout as it arrives "
                      "(its bytes, then a newline), until --count messages, SIGINT, SIGTERM "
                      "or the reader of stdout goes away.")
    listen.add_argument("key", type=parse_id, metavar="KEY", help="decimal, or hex with 0x")
    listen.add_argument("--count", type=parse_count, default=None, metavar="N",
                        help="exit after N messages (default: run until stopped)")
    framing = listen.add_mutually_exclusive_group()
    framing.add_argument("--hex", action="store_true",
                         help="write each message as one line of hex digits")
    framing.add_argument("--json", action="store_true",
                         help='write each message as one line of JSON: {"text": ...} for UTF-8 '
                              'text, {"hex": ...} for other bytes. Unlike NUL-terminated '
                              "output it frames any message, even one holding NUL bytes, and "
                              "one line a message suits head, wc -l, read and jq")
    listen.set_defaults(handler=_subscribe)

    info = commands.add_parser(
        "info", help="summary of a running node", epilog=EXAMPLES["info"],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Ask a node running on this machine for its id, address, routing table "
                    "and storage.")
    info.add_argument("--node", type=parse_address, default=DEFAULT_NODE, metavar="HOST:PORT",
                      help="the node to ask (default 127.0.0.1:9999)")
    info.add_argument("--json", action="store_true",
                      help="print the node's JSON document instead of a table")
    info.add_argument("--timeout", type=parse_timeout, default=5.0, metavar="SECONDS",
                      help="deadline of the whole command (default 5)")
    info.set_defaults(handler=_info)
    for command in commands.choices.values():
        # Also accepted after the command (``qadom serve --log-level debug``); SUPPRESS keeps
        # the value given before it when it is absent here.
        command.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS,
                             help="verbosity of the 'qadom' logger on stderr")
        command.set_defaults(command_parser=command)  # for parse_args' errors
    return parser


def parse_args(parser: argparse.ArgumentParser,
               argv: Sequence[str] | None = None) -> argparse.Namespace:
    """``parser.parse_args(argv)`` for :func:`build_parser`'s parser, except that an argument no
    parser knows is reported by the command's parser, so the error points to that command's help
    (``see 'qadom append --help'``), not to ``qadom --help``; and ``--http-host`` without
    ``--http-port`` (which would do nothing) is such an error too."""
    args, extra = parser.parse_known_args(argv)
    if extra:
        args.command_parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if getattr(args, "http_host", None) is not None and args.http_port is None:
        # Without --http-port no HTTP helper runs: the option would be silently ignored.
        args.command_parser.error("--http-host needs --http-port: the HTTP helper is off "
                                  "without it")
    return args


def _data_dir(args: argparse.Namespace) -> str | None:
    """The data directory ``serve`` uses; None for a node in memory."""
    if args.memory or args.data_dir == "":
        return None
    if args.data_dir is not None:
        return str(args.data_dir)
    import platformdirs  # only here: the other commands never touch the disk

    return platformdirs.user_data_dir("qadom")


class _CannotBind(QadomError):
    """A socket ``serve`` needs could not be bound (the port is in use, say): exit 1."""


def _os_reason(exc: BaseException) -> str:
    """Why ``exc`` happened, as the C library says it ("Address already in use") when ``exc`` or
    the error it wraps (uvloop's "could not bind" carries none itself) has an errno."""
    for error in (exc, exc.__cause__):
        if isinstance(error, OSError) and error.errno is not None and error.errno > 0:
            return os.strerror(error.errno)
    return str(exc)


def _socket_error(exc: OSError, what: str, address: Address) -> QadomError:
    """The error to report when binding ``what`` on ``address`` raised ``exc``: naming the host
    when it does not resolve (a bad argument, exit 2), else the address and the reason."""
    if isinstance(exc, socket.gaierror):
        return CommandLineError(f"cannot resolve {address[0]!r}: {exc.strerror or exc}")
    return _CannotBind(f"cannot bind {what} on {format_address(address)}: {_os_reason(exc)}")


def _not_a_directory(path: str) -> Path | None:
    """The first of ``path`` and its parents that exists, when it is not a directory."""
    for candidate in (Path(path), *Path(path).parents):
        if candidate.exists():
            return None if candidate.is_dir() else candidate
    return None


def _data_dir_error(data_dir: str, exc: OSError | sqlite3.Error) -> CommandLineError:
    """The error to report when ``data_dir`` cannot hold a node's data: naming the file at fault
    (a lock file that is a directory, a database that cannot be written) when it is not the
    data dir itself and the reason does not name it already."""
    blocker = _not_a_directory(data_dir)
    if blocker is not None:
        what = "it" if str(blocker) == str(Path(data_dir)) else repr(str(blocker))
        return CommandLineError(f"cannot use data dir {data_dir!r}: {what} is not a directory")
    if not isinstance(exc, OSError):
        return CommandLineError(f"cannot use data dir {data_dir!r}: {exc}")
    reason = str(exc.strerror or exc)
    if isinstance(exc.filename, (str, bytes, os.PathLike)):
        filename = os.fsdecode(exc.filename)
        if (os.path.abspath(filename) != os.path.abspath(data_dir)
                and filename not in reason):
            reason = f"{filename!r}: {reason}"
    return CommandLineError(f"cannot use data dir {data_dir!r}: {reason}")


async def _start_peer(peer: Peer, data_dir: str | None) -> None:
    """Start ``serve``'s peer; every failure as a one-line QadomError naming what failed."""
    try:
        await peer.start()
    except DataDirInUse as exc:
        raise CommandLineError(f"{exc}; give another --data-dir, or --memory") from None
    except StorageUnavailable as exc:
        # The store, not the socket, though it is an OSError too: a damaged file, a lock another
        # program holds. Exit 2, as for a data dir that is not a qadom store.
        if data_dir is None:
            raise
        raise CommandLineError(f"cannot use data dir {data_dir!r}: {exc}") from None
    except OSError as exc:
        if data_dir is None or exc.filename is None:  # the socket, not the data dir
            raise _socket_error(exc, "UDP", (peer.host, peer.port)) from None
        raise _data_dir_error(data_dir, exc) from None
    except sqlite3.Error as exc:
        if data_dir is None:
            raise
        raise _data_dir_error(data_dir, exc) from None


_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class _StopSignals:
    """SIGINT and SIGTERM as a request to stop ``serve`` or ``subscribe``, which then exits 0.

    The first of them makes both ignored (SIG_IGN) until the process exits, first thing, so
    that a second one cannot end the stop early: GNU ``timeout`` signals the
    command and then its process group, so the command gets its signal twice, and an impatient
    user presses Ctrl-C again. The handler is Python's ``signal.signal`` one, not the event
    loop's ``add_signal_handler``: closing a loop removes the handlers it added and puts back the
    default ones (SIGINT raising KeyboardInterrupt, SIGTERM killing the process), and Python puts
    back the default action of every signal its own handlers catch as it exits, while SIG_IGN is
    left alone by both. A request that comes before the loop runs is kept for :meth:`event`.
    When the command ends, :meth:`restore` puts back the handlers ``before`` it was installed,
    unless a stop was requested: then both stay ignored until the process exits (as the command
    line's process then does), even for a program that called :func:`main` itself."""

    def __init__(self, before: dict[int, Any]) -> None:
        self.requested = False
        self._wake: Callable[[], None] | None = None
        self._before = before  # the handlers to put back (restore), by signal
        self._installed: list[int] = []

    def install(self) -> None:
        """Handle SIGINT and SIGTERM from now on; only in the main thread (as Python requires:
        elsewhere the command stops as the event loop's runner stops it), and a SIGINT that was
        ignored when the command started (a background job of a script) stays ignored."""
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in _STOP_SIGNALS:
            if signum == signal.SIGINT and self._before.get(signum) is signal.SIG_IGN:
                continue
            signal.signal(signum, self._on_signal)
            self._installed.append(signum)

    def restore(self) -> None:
        """Put back the handlers :meth:`install` replaced, unless a stop was requested."""
        if not self.requested:
            for signum in self._installed:
                signal.signal(signum, self._before[signum])
        self._installed.clear()

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        for each in _STOP_SIGNALS:
            signal.signal(each, signal.SIG_IGN)
        self.requested = True
        if self._wake is not None:
            self._wake()

    def event(self) -> asyncio.Event:
        """An event set on the running loop once a stop is requested (at once if it was)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def wake() -> None:
            # Thread-safe: the handler runs between any two bytecodes of the main thread, in
            # the midst of the loop's own code.
            with suppress(RuntimeError):  # the loop has closed: the command has ended anyway
                loop.call_soon_threadsafe(stop.set)

        self._wake = wake
        if self.requested:
            stop.set()
        return stop


def _stop_event(args: argparse.Namespace) -> asyncio.Event:
    """An event that SIGINT and SIGTERM set, instead of ending the process (the handlers
    :func:`main` installed for the command, else installed now)."""
    stop_signals: _StopSignals | None = getattr(args, "stop_signals", None)
    if stop_signals is None:
        stop_signals = args.stop_signals = _StopSignals(_handlers())
        stop_signals.install()
    return stop_signals.event()


def _handlers() -> dict[int, Any]:
    """The handlers of the stop signals now (none outside the main thread: no signal handling
    there to put back)."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {signum: signal.getsignal(signum) for signum in _STOP_SIGNALS}


async def _start_http(peer: Peer, args: argparse.Namespace) -> HttpHelper | None:
    """The HTTP helper serving ``peer`` as ``--http-port`` asks (None without it), started:
    listening on ``http.address``."""
    if args.http_port is None:
        return None
    from .http import HttpHelper  # imported only here: aiohttp is slow to import

    host = args.http_host or args.host
    http = HttpHelper(peer, host, args.http_port)
    try:
        await http.start()
    except StorageFull as exc:  # the data dir, not the socket: the helper keeps its key there
        raise type(exc)(f"cannot start the HTTP helper: {exc}") from None
    except OSError as exc:
        raise _socket_error(exc, "HTTP", (host, args.http_port)) from None
    return http


async def _join(peer: Peer, args: argparse.Namespace, data_dir: str | None) -> None:
    """``serve``'s first join: through ``--bootstrap``, else through the contacts saved in the
    data dir (a failure is only logged: the node still serves, and others may join through it),
    else none. When no ``--bootstrap`` address answers, the saved contacts other than those
    addresses are tried next (a restart whose fixed seed is down, two nodes that name each
    other): an address that just failed to answer is not asked again, nor its timeout waited for
    twice. NoPeersError names what was tried when neither answers, and says so when the data dir
    saved no other contact."""
    if args.bootstrap:
        where = _where(args.bootstrap)
        try:
            size = await peer.bootstrap(args.bootstrap)
        except NoPeersError:
            saved = peer.node.store.load_contacts() if data_dir is not None else []
            others = await _other_contacts(peer, saved, args.bootstrap)
            if not others:
                unless = (f", and {data_dir!r} saved no other contact to rejoin through"
                          if saved else "")
                raise NoPeersError(f"could not join: no node answered at {where}{unless}"
                                   ) from None
            log.warning("no node answered at %s: rejoining through the %s saved in %s", where,
                        _contacts(len(others), "other contact"), data_dir)
            try:
                size = await peer.bootstrap(others)
            except NoPeersError:
                every = "the" if len(others) == 1 else "any of the"
                raise NoPeersError(
                    f"could not join: no node answered at {where} nor at {every} "
                    f"{_contacts(len(others), 'contact')} saved in {data_dir!r}") from None
            except QadomError as exc:  # some answered, but not enough to join (a timeout)
                raise type(exc)(
                    f"could not join: no node answered at {where}, and rejoining through the "
                    f"{_contacts(len(others), 'contact')} saved in {data_dir!r} failed: {exc}"
                ) from None
            log.info("rejoined through saved contacts; %s", _contacts(size, "contact"))
            return
        log.info("joined through %s; %s", where, _contacts(size, "contact"))
    elif data_dir is not None and peer.node.store.load_contacts():
        try:
            size = await peer.bootstrap()  # rejoin through the contacts saved last time
            log.info("rejoined through saved contacts; %s", _contacts(size, "contact"))
        except QadomError as exc:
            # Every old neighbour is gone: still a working node others can join through.
            log.warning("none of the contacts saved in %s answered (%s): serving; peers can "
                        "join through this node, and it tries its saved contacts again",
                        data_dir, exc)


async def _other_contacts(peer: Peer, saved: Sequence[Contact], tried: Sequence[Address]
                          ) -> list[Address]:
    """The addresses of the ``saved`` contacts that ``peer``'s socket can reach (IP literals of
    its family) and that are none of the ``tried`` addresses, once host names among these are
    resolved as the join resolved them (``localhost:9999`` is the saved ``127.0.0.1:9999``)."""
    ipv6 = ":" in peer.host  # the family Peer resolves names in, and its socket's
    tried_keys: set[tuple[str, int]] = set()
    loop = asyncio.get_running_loop()
    for host, port in tried:
        tried_keys.add(_address_key(host, port))
        if ip_of(host) is None:
            family = socket.AF_INET6 if ipv6 else socket.AF_INET
            with suppress(OSError, UnicodeError):  # a name that does not resolve: none to skip
                for *_, sockaddr in await loop.getaddrinfo(host, port, family=family,
                                                           type=socket.SOCK_DGRAM):
                    tried_keys.add(_address_key(str(sockaddr[0]), int(sockaddr[1])))
    others: list[Address] = []
    for contact in saved:
        host, port = contact.address
        if (":" in host) != ipv6 or _address_key(host, port) in tried_keys:
            continue
        if contact.address not in others:
            others.append(contact.address)
    return others


def _address_key(host: str, port: int) -> tuple[str, int]:
    """``(host, port)`` as one address is spelt whatever its spelling: an IP literal in its
    canonical form (IPv4-mapped as the IPv4 address), a host name in lower case."""
    address = ip_of(host)
    return (host.lower() if address is None else str(address), port)


async def _unless_stopped(stop: asyncio.Event, work: Coroutine[Any, Any, None]) -> None:
    """Run ``work`` until it ends or ``stop`` is set, whichever comes first. A stop cancels
    ``work`` and returns normally, even if ``work`` failed meanwhile; otherwise ``work``'s
    exception propagates. Guarantee: ``work`` is finished when this returns or raises."""
    task = asyncio.ensure_future(work)
    stopped = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait((task, stopped), return_when=asyncio.FIRST_COMPLETED)
    finally:
        task.cancel()
        stopped.cancel()
        await asyncio.gather(task, stopped, return_exceptions=True)
    if not stop.is_set():
        task.result()


async def _serve(args: argparse.Namespace) -> int:
    """Run a node until SIGINT or SIGTERM (exit 0, even while it starts or makes its first
    join). Fails, with the node closed, when it cannot start, or when no ``--bootstrap`` address
    answers, nor any other contact its data dir saved. A reader of stdout that goes away does
    not stop it (:func:`_announce`); a stdout closed when it starts does: exit 1, before it
    opens or binds anything, as for every command that writes stdout."""
    _require_stdout()  # the addresses it prints are how a script learns where it serves
    # From here on SIGINT and SIGTERM stop the node, while it checks its arguments, opens its
    # store and binds its sockets as well as while it joins or serves.
    stop = _stop_event(args)
    _check_family(args.bootstrap, args.host, f"--host {args.host}")
    data_dir = _data_dir(args)
    peer = Peer(args.host, args.port, data_dir=data_dir)  # locks data_dir while it runs
    helpers: list[HttpHelper] = []
    try:
        await _unless_stopped(stop, _start(peer, args, data_dir, helpers))
        await stop.wait()
        log.info("shutting down")
    finally:
        for http in helpers:
            await http.close()
        await peer.close()
    return 0


async def _start(peer: Peer, args: argparse.Namespace, data_dir: str | None,
                 helpers: list[HttpHelper]) -> None:
    """Everything ``serve`` does before it waits for a signal: start ``peer`` and the HTTP helper
    (appended to ``helpers``, for closing), print their addresses, and join."""
    await _start_peer(peer, data_dir)
    log.info("data in %s", data_dir or "memory only")
    http = await _start_http(peer, args)
    if http is not None:
        helpers.append(http)
    # The machine-readable lines: scripts and tests read the bound addresses from them. They
    # come once every socket the node serves on is bound, so a script that has read them knows
    # the node is up (a port in use fails before them); and after the signal handlers, so it may
    # stop the node cleanly as soon as it has read them. An IPv6 host is in brackets, as in a URL.
    lines = [f"qadom serving on {format_address(peer.address)} id {peer.id}"]
    if http is not None:
        assert http.address is not None
        lines.append(f"qadom http on {format_address(http.address)}")  # the next line
    _announce(lines)
    await _join(peer, args, data_dir)


def _announce(lines: Sequence[str]) -> None:
    """Print ``serve``'s ``lines`` on stdout, each flushed.

    A reader of stdout that went away (``qadom serve | head -n 1``, or a supervisor that stopped
    reading) does not stop the node: a server's work is serving, and stdout only tells its
    addresses. The node keeps serving, stdout is dropped from then on (onto os.devnull, so no
    later write fails), and each line not written is logged to stderr instead, with the
    warning that stdout is gone. Any other failure to write stdout (a full disk) raises, as for
    every command: the node then stops before it joins, exit 1, saying it cannot write
    stdout."""
    for index, line in enumerate(lines):
        try:
            _print(line)
        except BrokenPipeError:
            _drop_stdout()
            for unwritten in lines[index:]:
                log.warning("the reader of stdout went away; serving on without it: %s",
                            unwritten)
            return


# ------------------------------------------------------------------------- one-shot commands


class _Unacknowledged(QadomError):
    """A write that no node acknowledged: nothing is stored in the network."""


class _StdoutClosed(QadomError):
    """The command's output goes to stdout, and stdout is closed: exit 1, before doing anything."""


def _require_stdout() -> None:
    """Fail before any work when stdout was closed when the process started (Python then sets
    ``sys.stdout`` to None): the output would be lost."""
    if sys.stdout is None:
        raise _StdoutClosed("cannot write stdout: it is closed")


def _is_local(host: str) -> bool:
    return host == "localhost" or is_loopback(host)


def _client_host(addresses: Sequence[Address]) -> str:
    """Where the short-lived client binds: loopback when every node named is on this machine
    (nothing is exposed), the wildcard otherwise (a loopback socket cannot reach another
    machine). The family is the first address's."""
    local = all(_is_local(host) for host, _ in addresses)
    if ":" in addresses[0][0]:
        return "::1" if local else "::"
    return "127.0.0.1" if local else "0.0.0.0"


class _ClientPeer(Peer):
    """The one-shot commands' peer. It keeps how many replicas stored its last namespace
    record, which :meth:`Identity.set` does not return, and the command's deadline."""

    namespace_acks = 0
    deadline: asyncio.Timeout | None = None  # set by _joined

    async def namespace_set(self, public_key: bytes, signature: bytes, key: int, value: bytes,
                            seq: int = 0) -> int:
        self.namespace_acks = await super().namespace_set(public_key, signature, key, value, seq)
        return self.namespace_acks


@asynccontextmanager
async def _joined(args: argparse.Namespace, late: str | None = None
                  ) -> AsyncIterator[_ClientPeer]:
    """A started client peer that joined through ``--bootstrap``; closed on exit.

    ``--timeout`` is the deadline of everything from the join to the end of the block, the
    block's operations included (closing the peer comes after and takes no network step, so a
    command that succeeded within it reports its result): a command of several network steps
    (a join, then a namespace-set's reads and writes, up to three of each) gives each what is
    left, not ``--timeout`` apiece. When it runs out, the step in progress is cancelled (which
    ends it in the node: its lookup asks nobody more) and OperationTimeout says so: "could not
    join..." during the join, ``late`` (default "COMMAND did not complete") after it.
    ``peer.deadline`` is that deadline, for a command that lifts it (``subscribe``, once
    subscribed)."""
    addresses: list[Address] = args.bootstrap or [DEFAULT_NODE]
    _check_family(addresses, _client_host(addresses),
                  "the client's socket (of the first --bootstrap's family)")
    # client_only: requests carry a null sender id, so no node adds this fleeting peer to its
    # routing table and hands it out to others after it has gone. Each operation's own deadline
    # is --timeout too, so the one of the whole command always comes first.
    peer = _ClientPeer(_client_host(addresses), 0, config=Config(operation_timeout=args.timeout),
                       client_only=True)
    deadline = peer.deadline = asyncio.timeout(args.timeout)
    joining = f"could not join through {_where(addresses)} within {args.timeout:g} s"
    joined = False
    try:
        async with peer, deadline:
            try:
                await peer.bootstrap(addresses)
            except NoPeersError:
                raise NoPeersError(f"no node answered at {_where(addresses)}") from None
            except OperationTimeout:
                raise OperationTimeout(joining) from None
            joined = True
            yield peer
    except TimeoutError:
        if not deadline.expired():  # an OperationTimeout of the node's, already worded
            raise
        if not joined:
            raise OperationTimeout(joining) from None
        raise OperationTimeout(f"{late or args.command + ' did not complete'} within "
                               f"{args.timeout:g} s") from None


def _check_family(addresses: Sequence[Address], host: str, socket_name: str) -> None:
    """CommandLineError naming the first of ``addresses`` that is an IP address of the other
    family than a socket bound on ``host`` (one UDP socket reaches one IP family); host names
    are resolved in the socket's family when used."""
    mismatch = unreachable_from(host, addresses)
    if mismatch is not None:
        address, other, version = mismatch
        raise CommandLineError(
            f"--bootstrap {format_address(address)} is an IPv{other} address and "
            f"{socket_name} is IPv{version}: it cannot reach it; give addresses of one IP family")


def _contacts(count: int, noun: str) -> str:
    """``count`` and ``noun``, plural unless one: "1 other contact", "3 other contacts"."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _where(addresses: Sequence[Address]) -> str:
    return ", ".join(format_address(address) for address in addresses)


def _acks(peer: Peer) -> int:
    return peer.stats.get("replicas_acked", 0)


def _read_value(name: str, limit: int) -> bytes:
    """The bytes of file ``name`` (stdin for ``-``), refusing more than ``limit`` of them."""
    where = "stdin" if name == "-" else repr(name)
    if name == "-" and sys.stdin is None:  # closed when the process started
        raise CommandLineError("cannot read stdin: it is closed")
    try:
        if name == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(name, "rb") as file:
                data = file.read(limit + 1)
    except OSError as exc:
        raise CommandLineError(f"cannot read {where}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise CommandLineError(
            f"value too large: {where} holds more than {limit} bytes, the most one value holds")
    return data


def _stdout_error(exc: OSError) -> OSError:
    """The error to report for ``exc``, a failed write to stdout: one that says what failed
    ("cannot write stdout: No space left on device"), as a file's names the file."""
    return OSError(exc.errno, f"cannot write stdout: {exc.strerror or exc}")


@contextmanager
def _writing_stdout() -> Iterator[None]:
    """Within the block, a failed write to stdout raises :func:`_stdout_error`'s error; but a
    reader that went away stays BrokenPipeError, of which :func:`main` dies silently."""
    try:
        yield
    except BrokenPipeError:
        raise
    except OSError as exc:
        raise _stdout_error(exc) from None


def _print(text: object) -> None:
    """Print ``text`` and a newline on stdout, flushed (a failure as :func:`_writing_stdout`
    says). One write, even when stdout is unbuffered (``PYTHONUNBUFFERED``): a reader that stops
    after the first byte (``qadom info | head -c 1``) has had it all, rather than leaving the
    newline to a pipe without a reader."""
    with _writing_stdout():
        sys.stdout.write(f"{text}\n")
        sys.stdout.flush()


def _write_output(name: str, data: bytes) -> None:
    """Write ``data`` exactly to file ``name`` (stdout for ``-``)."""
    if name == "-":
        with _writing_stdout():
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()
        return
    try:
        with open(name, "wb") as file:
            file.write(data)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {name!r}: {exc.strerror or exc}") from None


async def _set(args: argparse.Namespace) -> int:
    _require_stdout()
    value = _read_value(args.file, Config().max_value_size)
    async with _joined(args) as peer:
        before = _acks(peer)
        key = await peer.set(value)
        if _acks(peer) == before:
            raise _Unacknowledged("no node stored the value")
    _print(key)
    return 0


async def _get(args: argparse.Namespace) -> int:
    if args.output == "-":
        _require_stdout()
    async with _joined(args) as peer:
        try:
            value = await peer.get(args.key)
        except NotFoundError:
            raise NotFoundError(f"not found: no node reached holds key {args.key}") from None
    _write_output(args.output, value)
    return 0


async def _append(args: argparse.Namespace) -> int:
    async with _joined(args) as peer:
        before = _acks(peer)
        await peer.append(args.key, args.value)
        if _acks(peer) == before:
            raise _Unacknowledged("no node stored the entry")
    return 0


async def _search(args: argparse.Namespace) -> int:
    _require_stdout()
    async with _joined(args) as peer:
        values = await peer.search(args.key)
    with _writing_stdout():
        sys.stdout.write("".join(f"{value}\n" for value in sorted(values)))
        sys.stdout.flush()
    return 0


async def _keygen(args: argparse.Namespace) -> int:
    """Save a new identity in FILE (never over an existing one without ``--force``) and print
    its public key."""
    _require_stdout()
    path: str = args.file
    if not path:
        raise CommandLineError("FILE must name a file")
    # What --force cannot replace is refused first: telling to give --force would only lead
    # to a second refusal.
    if os.path.isdir(path):  # '.', '/': no file name to write next to, and never replaceable
        raise CommandLineError(f"{path!r} is a directory: keygen writes only a file")
    if os.path.lexists(path) and not stat.S_ISREG(os.lstat(path).st_mode):
        # --force replaces a file keygen could have made, never a device, a pipe or a link
        # (the file is replaced by a rename, which would put a plain file in their place).
        raise CommandLineError(f"{path!r} is not a regular file: keygen replaces only a file")
    if not args.force and os.path.lexists(path):
        raise CommandLineError(f"{path!r} exists: give --force to replace it")
    identity = Identity.generate()
    try:
        identity.save(path)
    except OSError as exc:
        raise OSError(exc.errno, f"cannot write {path!r}: {exc.strerror or exc}") from None
    _print(identity.public_key.hex())
    return 0


def _load_identity(path: str) -> Identity:
    """The identity saved in file ``path``; CommandLineError (exit 2) when it cannot be read or
    is not an identity file. Only a small regular file is read: never a device or a pipe."""
    where = repr(path)
    not_one = CommandLineError(f"{where} is not a qadom identity file (64 hex digits; "
                               "'qadom keygen FILE' makes one)")
    try:
        status = os.stat(path)
        if not stat.S_ISREG(status.st_mode) or status.st_size > _MAX_IDENTITY_FILE:
            raise not_one
        return Identity.load(path)
    except InvalidArgument:
        raise not_one from None
    except OSError as exc:
        raise CommandLineError(f"cannot read identity file {where}: {exc.strerror or exc}"
                               ) from None


async def _namespace_set(args: argparse.Namespace) -> int:
    _require_stdout()
    identity = _load_identity(args.identity)
    value = _read_value(args.file, Config().max_value_size)
    async with _joined(args) as peer:
        # At the last seq there is (2**63 - 1), StaleSequence: a state of the network.
        seq = await identity.set(peer, args.key, value)
        if not peer.namespace_acks:
            raise _Unacknowledged("no node stored the record")
    _print(seq)
    return 0


async def _namespace_get(args: argparse.Namespace) -> int:
    if args.output == "-":
        _require_stdout()
    async with _joined(args) as peer:
        try:
            value = await peer.namespace_get(args.public_key, args.key)
        except NotFoundError:
            raise NotFoundError(f"not found: no node reached holds key {args.key} in namespace "
                                f"{args.public_key.hex()}") from None
    _write_output(args.output, value)
    return 0


async def _publish(args: argparse.Namespace) -> int:
    _require_stdout()
    value = _read_value(args.file, Config().max_value_size)
    async with _joined(args) as peer:
        relays = await peer.publish(args.key, value)
    if not relays:
        raise _Unacknowledged("no relay accepted the message")
    _print(relays)
    return 0


class _SubscriptionEnded(QadomError):
    """The subscription ended while ``subscribe`` still waited for messages."""


async def _subscribe(args: argparse.Namespace) -> int:
    """Write the topic's messages until ``--count`` of them, or SIGINT or SIGTERM: a stop at any
    time (even while joining) unsubscribes, leaves and exits 0. When the reader of stdout goes
    away, it stops the same way at once, without waiting for a message to fail to write, and
    raises BrokenPipeError (the process then dies of SIGPIPE: :func:`main`)."""
    _require_stdout()
    stop = _stop_event(args)
    reader_gone = asyncio.Event()

    def on_reader_gone() -> None:
        reader_gone.set()
        stop.set()

    _watch_stdout_reader(on_reader_gone)
    dropped = _DroppedWarnings()
    await _unless_stopped(stop, _receive(args, dropped))
    if reader_gone.is_set():
        raise BrokenPipeError(errno.EPIPE, "the reader of stdout went away")
    dropped.warn()  # what was dropped since the last warning, before a stop
    return 0


async def _receive(args: argparse.Namespace, dropped: _DroppedWarnings) -> None:
    """Join and subscribe (together within ``--timeout``), then write each message as it
    arrives, flushed, until ``--count`` messages; ``dropped`` warns meanwhile of the messages
    the subscription dropped."""
    late = f"could not subscribe to topic {args.key}"
    async with _joined(args, late) as peer, peer.subscribe(args.key) as messages:
        assert peer.deadline is not None
        peer.deadline.reschedule(None)  # the wait for messages has no deadline
        # The one sign that publishing now reaches us (scripts wait for it: --log-level info).
        log.info("subscribed to topic %d through %d relays", args.key, messages.relays)
        watching = asyncio.ensure_future(dropped.watch(messages))
        try:
            received = 0
            async for message in messages:
                await _write_stdout(_framed(message, args))
                received += 1
                if received == args.count:
                    return
        finally:
            watching.cancel()
    raise _SubscriptionEnded("the subscription ended")


class _DroppedWarnings:
    """Tells stderr, one line ``qadom: N messages dropped: ...`` at a time, when ``subscribe``'s
    subscription dropped messages because stdout fell behind them (:func:`_write_stdout`).

    Not on stdout: it carries the messages, one line each for ``head -n``, ``wc -l`` and
    ``jq`` (a line of another kind would be read as a message), and it is the stream that is
    stuck. The first warning comes within ``DROPPED_CHECK`` seconds of a drop, the next ones
    ``DROPPED_WARNING_GAP`` seconds apart at least, each with the count since the one before
    and the total; a stop or ``--count`` tells what is left untold."""

    def __init__(self, check: float = DROPPED_CHECK, gap: float = DROPPED_WARNING_GAP) -> None:
        self.check = check
        self.gap = gap
        self.told = 0  # messages dropped as last told
        self._messages: Subscription | None = None

    async def watch(self, messages: Subscription) -> None:
        """Warn of ``messages``' drops until cancelled."""
        self._messages = messages
        while True:
            await asyncio.sleep(self.check)
            if messages.dropped > self.told:
                self.warn()
                await asyncio.sleep(self.gap)

    def warn(self) -> None:
        """One line on stderr if messages were dropped since the last one (none if stderr is
        closed)."""
        total = self._messages.dropped if self._messages is not None else 0
        if total <= self.told:
            return
        lost, self.told = total - self.told, total
        noun = "message" if lost == 1 else "messages"
        what = (f"{lost} {noun} dropped" if lost == total
                else f"{lost} more {noun} dropped ({total} in all)")
        if sys.stderr is not None:
            with suppress(OSError):  # a stderr that cannot be written (full, its reader gone)
                print(f"qadom: {what}: the reader of stdout fell behind", file=sys.stderr,
                      flush=True)


def _framed(message: bytes, args: argparse.Namespace) -> bytes:
    """``message`` as ``subscribe`` writes it: one line of hex (``--hex``), one line of JSON
    (``--json``: control characters, newlines and NUL bytes escaped, so a message is exactly
    one line), or its bytes and a newline (a message holding a newline reads as more lines)."""
    if args.hex:
        return message.hex().encode() + b"\n"
    if args.json:
        try:
            fields = {"text": message.decode("utf-8")}
        except UnicodeDecodeError:
            fields = {"hex": message.hex()}
        return json.dumps(fields, ensure_ascii=False).encode() + b"\n"
    return message + b"\n"


def _watch_stdout_reader(on_gone: Callable[[], None]) -> None:
    """Call ``on_gone`` on the running loop once stdout (fd 1) is a pipe or socket whose reader
    has gone away (``qadom subscribe 99 | head -n 1``, after head has read its line).

    A daemon thread waits in poll(2) asking for no event, so only POLLERR and POLLHUP wake it:
    the state of a pipe with no reader left, never a pipe that can take more bytes. A regular
    file, /dev/null or a terminal never wakes it. A subscriber between messages then stops at
    once rather than at its next write, which may never come."""
    if not hasattr(select, "poll"):
        return  # the next write fails with EPIPE all the same
    loop = asyncio.get_running_loop()

    def watch() -> None:
        poller = select.poll()
        poller.register(1, 0)
        try:
            poller.poll()
        except OSError:
            return
        with suppress(RuntimeError):  # the loop has closed: the command ended meanwhile
            loop.call_soon_threadsafe(on_gone)

    threading.Thread(target=watch, name="qadom-stdout-reader", daemon=True).start()


async def _write_stdout(data: bytes) -> None:
    """Write ``data`` to stdout (fd 1, unbuffered) from a thread of its own, and wait for it.

    A reader that lags (``qadom subscribe 99 | slow-program``) fills the pipe and blocks the
    write: off the event loop, the peer meanwhile goes on answering its relays' DELIVERs and
    renewing its leases (blocked, it looked dead to its relays, which dropped it), the
    subscription queues what arrives (at most ``Config.pubsub_queue_size`` messages and
    ``Config.pubsub_queue_bytes`` bytes), and SIGINT and SIGTERM still stop the command. The
    thread is a daemon writing to the fd itself, so a stop leaves it blocked without holding up
    the exit. A write error is raised here: BrokenPipeError when the reader went away, else
    :func:`_stdout_error`'s."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[None] = loop.create_future()

    def report(error: OSError | None) -> None:
        if not done.done():
            if error is None:
                done.set_result(None)
            else:
                done.set_exception(error)

    def write() -> None:
        error: OSError | None = None
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(1, view):]
        except BrokenPipeError as exc:
            error = exc
        except OSError as exc:
            error = _stdout_error(exc)
        with suppress(RuntimeError):  # the loop has closed: the command was stopped meanwhile
            loop.call_soon_threadsafe(report, error)

    threading.Thread(target=write, name="qadom-stdout", daemon=True).start()
    await done


async def _info(args: argparse.Namespace) -> int:
    if not _is_local(args.node[0]):
        raise CommandLineError(f"--node must be a loopback address, not {args.node[0]}: a node "
                               "answers INFO only to its own machine")
    _require_stdout()
    where = format_address(args.node)
    peer = Peer(_client_host([args.node]), 0, config=Config(operation_timeout=args.timeout),
                client_only=True)
    deadline = asyncio.timeout(args.timeout)  # of the ping and the query together
    contact = None
    try:
        async with peer, deadline:
            try:
                contact = await peer.ping(args.node)
            except OperationTimeout:
                raise OperationTimeout(f"no node answered at {where}") from None
            address = contact.address
            summary = await peer.run_service(lambda node, now: node.info.query(address, now))
    except TimeoutError:
        if not deadline.expired():
            raise
        if contact is None:
            raise OperationTimeout(f"no node answered at {where}") from None
        raise OperationTimeout(f"{where} did not send its summary within {args.timeout:g} s"
                               ) from None
    # ensure_ascii (the default): every character of the node's strings past "~", and every
    # control character, is written as a \uXXXX escape, so the JSON is ASCII text that holds no
    # terminal escape sequence; allow_nan=False: never NaN or Infinity, which are not JSON.
    _print(json.dumps(summary, indent=2, ensure_ascii=True, allow_nan=False) if args.json
           else format_info(summary))
    return 0


def format_info(summary: dict[str, Any]) -> str:
    """A node's INFO summary (:meth:`qadom.info.InfoService.summary`) as aligned text lines.

    The summary is the node's word, whatever it holds: every name and value it gives is shown
    through :func:`qadom.errors.printable`, so a control character (ESC starting a terminal
    escape sequence, BEL, a newline making up a line of its own) or a bidirectional override
    shows as ``?``; and a field of an unexpected type is shown as it is rather than failing."""
    buckets = _object(summary.get("buckets"))
    store = dict(_object(summary.get("store")))
    fill = buckets.get("fill") or []
    shown_fill = " ".join(map(str, fill)) if isinstance(fill, list) else fill
    rows = [
        ("id", summary.get("id")),
        ("address", summary.get("address")),
        ("uptime", f"{summary.get('uptime', 0)} s"),
        ("contacts", f"{summary.get('contacts')} (k = {summary.get('k')}, "
                     f"{buckets.get('replacements', 0)} waiting as replacements)"),
        ("buckets", f"{buckets.get('count')}, contacts in each: {shown_fill}"),
        ("values", f"{store.pop('values', 0)} ({store.pop('value_bytes', 0)} bytes)"),
        ("multimap", f"{store.pop('entries', 0)} entries in {store.pop('entry_keys', 0)} sets"),
    ]
    rows += [(name.replace("_", " "), value) for name, value in store.items()]
    return "\n".join(printable(f"{name:<13}{value}", None) for name, value in rows)


def _object(value: object) -> dict[str, Any]:
    """``value`` if it is a JSON object (a dict), else an empty one."""
    return value if isinstance(value, dict) else {}


# ------------------------------------------------------------------------------ entry point


class _QuietFormatter(logging.Formatter):
    """Log records without tracebacks, so a one-shot command's stderr stays one line per event;
    ``--log-level debug`` shows them."""

    def formatException(self, ei: Any) -> str:
        return ""


def _fail(code: int, reason: object) -> int:
    """Print ``qadom: <reason>`` on one line of stderr (nowhere if stderr is closed): runs of
    white space become one space, and any other character that is not printable (a terminal
    escape sequence's ESC, a BEL) becomes ``?``, whoever wrote the text."""
    if sys.stderr is not None:
        text = " ".join(str(reason).split())
        print("qadom: " + printable(text, None), file=sys.stderr, flush=True)
    return code


def _open_standard_fds() -> None:
    """Open os.devnull onto each of fds 0, 1 and 2 that is closed (``qadom ... <&-``).

    Guarantee: afterwards no socket or file of this process gets one of those numbers; uvloop
    aborts the process when it closes a handle numbered 0, 1 or 2. Python has already set the
    matching ``sys.stdin``, ``sys.stdout`` or ``sys.stderr`` to None, and they stay None: the
    commands tell a closed stream from an empty one by that."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDONLY if fd == 0 else os.O_WRONLY)
            if null != fd:  # not expected: every lower fd is open now and open() takes the lowest
                os.dup2(null, fd)
                os.close(null)
            os.set_inheritable(fd, True)


def _write_failed(exc: OSError | QadomError) -> int:
    """The exit status of a command whose output could not be written (``exc``): it dies of
    SIGPIPE silently when the reader went away (BrokenPipeError), as Unix filters do; any other
    failure (a closed or full stdout, a file that cannot be written) is said in one line, exit
    1."""
    if isinstance(exc, BrokenPipeError):
        return _die_of_sigpipe()
    if isinstance(exc, OSError):
        return _fail(1, exc.strerror or exc)
    return _fail(1, exc)


def _drop_stdout() -> None:
    """Point fd 1 at os.devnull: what is left in ``sys.stdout``'s buffer, and whatever is
    written from now on, goes nowhere, rather than failing again (at exit too, where Python
    would report it as an "Exception ignored" and exit 120)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)
    os.close(devnull)


def _die_of_sigpipe() -> int:
    """End the process killed by SIGPIPE, as ``cat`` or ``yes`` whose reader went away: no
    message, status 141 in the shell, which ``set -o pipefail`` scripts know (Python ignores
    SIGPIPE, so a write to a pipe without a reader raised BrokenPipeError instead). Returns
    128 + SIGPIPE only where there is no SIGPIPE to die of."""
    _drop_stdout()  # what is left in sys.stdout's buffer must not go to the pipe: nothing reads
    sigpipe = getattr(signal, "SIGPIPE", None)
    if sigpipe is None:
        return 141
    signal.signal(sigpipe, signal.SIG_DFL)
    signal.raise_signal(sigpipe)  # delivered to this thread before raise_signal returns
    return 128 + int(sigpipe)


_STOPPABLE = ("serve", "subscribe")
"""The commands that SIGINT and SIGTERM stop with exit status 0 (:class:`_StopSignals`)."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``qadom`` console script."""
    # Until the try below turns it into an exit status, a Ctrl-C kills the process by SIGINT,
    # without a traceback, as it does while this module imports. asyncio's runner then handles
    # it as it does for any asyncio program. Serve and subscribe handle SIGINT and SIGTERM
    # themselves from the end of this block (no moment between where Python's handler would
    # raise KeyboardInterrupt), so asyncio's runner leaves SIGINT to them.
    before = _handlers()  # what a program calling main() gets back (_StopSignals.restore)
    with _sigint_kills():
        _open_standard_fds()  # first: before any socket exists
        parser = build_parser()
        try:
            args = parse_args(parser, argv)  # exits 0 once --help is written
        except (_StdoutClosed, OSError) as exc:  # --help could not be written
            return _write_failed(exc)
        level = args.log_level or ("info" if args.command == "serve" else "warning")
        handler: logging.Handler = (logging.StreamHandler(sys.stderr) if sys.stderr is not None
                                    else logging.NullHandler())
        formatter_class = (logging.Formatter if args.command == "serve" or level == "debug"
                           else _QuietFormatter)
        handler.setFormatter(formatter_class("%(asctime)s %(name)s %(levelname)s %(message)s"))
        # The handler on the root logger, so that the warnings of the libraries qadom uses
        # (asyncio, aiohttp) reach stderr too; the level on 'qadom' only, as --log-level says:
        # the others keep their own (--log-level debug would have asyncio's and aiohttp's debug
        # records written). A program that set up logging before it calls main() keeps it.
        if not logging.getLogger().handlers:
            logging.basicConfig(handlers=[handler])
            log.setLevel(level.upper())
        stop_signals = None
        if args.command in _STOPPABLE:
            stop_signals = args.stop_signals = _StopSignals(before)
            stop_signals.install()
    try:
        return _run(args)
    finally:
        if stop_signals is not None:
            stop_signals.restore()


def _run(args: argparse.Namespace) -> int:
    """Run the command ``args`` names; its exit status (a failure said in one line)."""
    try:
        code: int = runner.run(args.handler(args))
    except UsageError as exc:
        return _fail(2, exc)
    except QadomError as exc:
        return _fail(1, exc)
    except OSError as exc:
        # BrokenPipeError: the reader went away (``qadom get KEY | head -c 10``), the command's
        # work is undone (a subscription unsubscribed, the peer closed).
        return _write_failed(exc)
    except KeyboardInterrupt:
        if args.command in _STOPPABLE:  # not expected: their handler is in place before
            return 0
        return _fail(130, "interrupted")
    except Exception as exc:  # a bug: one line for the user, the traceback at debug level
        log.debug("unexpected error", exc_info=True)
        return _fail(1, f"unexpected error: {type(exc).__name__}: {exc}")
    return code


if __name__ == "__main__":
    sys.exit(main())
