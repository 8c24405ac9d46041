"""A remote peer's text (the reason of its ERROR or refusal reply) reaches exception messages and
the ``qadom`` command's stderr with every character that is not printable replaced, and
shortened: a hostile peer cannot write terminal escape sequences to the operator's screen.

The hostile peer is a plain UDP socket on 127.0.0.1 (port 0), served by a thread, that answers
every request as a relay or holder that refuses everything would."""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import qadom.node  # noqa: F401  (registers every message type, its services' too)
from qadom import Config, Peer, cli
from qadom.codec import Codec
from qadom.dhtrecords import SECURED, DhtPut, DhtRefused, Record, RefusedCode, make_entry
from qadom.errors import (
    QadomError,
    RemoteError,
    StorageFull,
    Unauthorized,
    ValueTooLarge,
    printable,
)
from qadom.info import InfoRequest
from qadom.messages import Envelope, Error, ErrorCode, Message, Nodes, Ping, Pong
from qadom.pubsub import Publish, Subscribe

from helpers import FAST

ROOT = Path(__file__).resolve().parents[1]
# A window title, a cleared screen, red text, a bell, a line feed and a right-to-left override.
EVIL = "\x1b]0;owned\x07\x1b[2J\x1b[31mfake\r\nline\u202e" + "x" * 200
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
FAKE_ID = 0x5A << 248


def refusal_of(message: Message) -> Message:
    """What the hostile peer answers to ``message`` (Nodes naming nobody to a lookup)."""
    if isinstance(message, Ping):
        return Pong()
    if isinstance(message, DhtPut):
        return DhtRefused(RefusedCode.UNAUTHORIZED, EVIL[:256])
    if isinstance(message, (Publish, Subscribe, InfoRequest)):
        return Error(ErrorCode.BAD_REQUEST, EVIL[:256])
    return Nodes(())


@contextmanager
def hostile_peer(answer: Callable[[Message], Message] = refusal_of,
                 ) -> Iterator[tuple[str, int]]:
    """The address of a UDP socket that answers each request with ``answer(request)``, from a
    thread that ends with the block."""
    codec = Codec(Config())
    stop = threading.Event()
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(0.05)

    def serve() -> None:
        while not stop.is_set():
            try:
                data, address = sock.recvfrom(65536)
            except TimeoutError:
                continue
            try:
                request = codec.decode(data)
            except QadomError:
                continue
            if request.message.IS_REQUEST:
                reply = Envelope(request.rpc_id, FAKE_ID, answer(request.message))
                sock.sendto(codec.encode(reply), address)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield sock.getsockname()
    finally:
        stop.set()
        thread.join(timeout=10)
        sock.close()


def assert_shown_safely(text: str) -> None:
    assert CONTROL.search(text) is None, repr(text)
    assert "owned" in text and "fake" in text  # the reason is there, made harmless
    assert len(text) < 300, text  # and shortened


def test_printable_replaces_what_a_terminal_would_act_on() -> None:
    assert printable("a\x1b[2Jb\x07\u202ec d") == "a?[2Jb??c d"
    assert printable("x" * 500) == "x" * 120
    assert printable("x" * 500, None) == "x" * 500


async def test_a_refused_publish_and_subscription_say_the_reason_safely() -> None:
    with hostile_peer() as address:
        async with Peer("127.0.0.1", 0, config=FAST) as peer:
            await asyncio.wait_for(peer.bootstrap([address]), 20)
            with pytest.raises(RemoteError) as publish:
                await asyncio.wait_for(peer.publish(7, b"hello"), 20)
            assert_shown_safely(str(publish.value))
            assert_shown_safely(publish.value.reason)
            with pytest.raises(RemoteError) as subscribe:
                async with peer.subscribe(7):
                    pass
            assert_shown_safely(str(subscribe.value))


@pytest.mark.parametrize(("refusal", "error"), [
    (DhtRefused(RefusedCode.UNAUTHORIZED, EVIL[:256]), Unauthorized),
    (DhtRefused(RefusedCode.TOO_LARGE, EVIL[:256]), ValueTooLarge),
    (DhtRefused(99, EVIL[:256]), RemoteError),
    (Error(ErrorCode.STORAGE_FULL, EVIL[:256]), StorageFull),
    (Error(ErrorCode.BAD_REQUEST, EVIL[:256]), RemoteError),
], ids=["unauthorized", "too-large", "other-refusal", "storage-full", "error"])
async def test_a_refused_record_write_says_the_reason_safely(
        refusal: Message, error: type[QadomError]) -> None:
    key = "name"
    write = Record(key, SECURED, (make_entry((1).to_bytes(32, "big"), key, "v", SECURED, None),))
    with hostile_peer(lambda m: refusal if isinstance(m, DhtPut) else refusal_of(m)) as address:
        async with Peer("127.0.0.1", 0, config=FAST) as peer:
            await asyncio.wait_for(peer.bootstrap([address]), 20)
            with pytest.raises(error) as raised:
                await asyncio.wait_for(
                    peer.run_service(lambda node, now: node.dht_records.put(write, now)), 20)
    assert_shown_safely(str(raised.value))


async def test_a_refused_info_query_says_the_reason_safely() -> None:
    with hostile_peer() as address:
        async with Peer("127.0.0.1", 0, config=FAST, client_only=True) as peer:
            with pytest.raises(RemoteError) as raised:
                await asyncio.wait_for(
                    peer.run_service(lambda node, now: node.info.query(address, now)), 20)
    assert_shown_safely(str(raised.value))
    assert_shown_safely(raised.value.reason)


@pytest.mark.parametrize("command", [
    ["publish", "7", "-", "--bootstrap", "{address}"],
    ["info", "--node", "{address}"],
], ids=lambda args: args[0])
def test_the_command_prints_a_refusal_without_control_characters(command: list[str]) -> None:
    with hostile_peer() as address:
        where = f"{address[0]}:{address[1]}"
        result = subprocess.run(
            [sys.executable, "-m", "qadom", *(arg.replace("{address}", where) for arg in command)],
            input=b"hello", capture_output=True, timeout=45, cwd=ROOT, check=False)
    err = result.stderr.decode()
    assert result.returncode == 1, err
    assert err.startswith("qadom: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert_shown_safely(err[:-1])


def test_a_failure_line_of_the_command_holds_no_control_character(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert cli._fail(1, "refused:\t\x1b]0;owned\x07\x1b[2J\r\nfake\u202e end") == 1
    assert capsys.readouterr().err == "qadom: refused: ?]0;owned??[2J fake? end\n"
