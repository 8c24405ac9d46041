"""What others can make qadom write to the operator's log: remote peers through the sans-IO core
(virtual clock, seeded generators), HTTP clients through a helper on 127.0.0.1 (port 0), and a
caller's failing listeners. Every line must stay one printable line, and what can be triggered
at will must not flood the log nor hide another bug's traceback."""

from __future__ import annotations

import asyncio
import logging
import random
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from qadom import Config, Peer
from qadom import node as node_module
from qadom.codec import Codec
from qadom.contact import Address
from qadom.events import LookupEvent
from qadom.http import HttpHelper
from qadom.messages import Envelope, FindNode, Message, Ping
from qadom.node import BUG_LOG_INTERVAL, Node
from qadom.sim import SimNetwork

from helpers import FAST

CONFIG = Config()
CODEC = Codec(CONFIG)
ROOT = Path(__file__).resolve().parent.parent


def tracebacks(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "qadom" and r.exc_info]


# ------------------------------------------------------------------ Node._log_bug, sans-IO


def _ping_bug(message: Message, sender: int | None, address: Address, now: float) -> Message:
    raise RuntimeError("a bug in the Ping handler")


def _find_node_bug(message: Message, sender: int | None, address: Address,
                   now: float) -> Message:
    raise KeyError("a bug in the FindNode handler")


def test_a_bug_a_peer_triggers_every_second_does_not_hide_another_bugs_traceback(
        caplog: pytest.LogCaptureFixture) -> None:
    node = Node(config=CONFIG, rng=random.Random(1), now=0.0)
    node.register_handler(Ping, _ping_bug)
    node.register_handler(FindNode, _find_node_bug)
    with caplog.at_level(logging.ERROR, logger="qadom"):
        for i in range(180):  # three minutes: a Ping bug every second, a FindNode bug every 10 s
            now = 1.0 + i
            node.datagram_received(CODEC.encode(Envelope(2 * i + 1, None, Ping(), None, 48)),
                                   ("192.0.2.1", 4000), now)
            if i % 10 == 5:
                node.datagram_received(
                    CODEC.encode(Envelope(2 * i + 2, None, FindNode(7), None, 600)),
                    ("192.0.2.2", 4000), now + 0.5)
            node.datagrams_to_send()
    assert node.stats["internal_errors"] == 180 + 18
    logged = [(type(r.exc_info[1]), r.getMessage()) for r in tracebacks(caplog) if r.exc_info]
    # Each bug's traceback once a minute, and each count of those left out is of its own kind
    # (before: the FindNode bug's was never logged, and Ping's counts held the FindNode bugs).
    assert [m for t, m in logged if t is KeyError] == [
        "internal error serving FindNode",
        "internal error serving FindNode (5 more like it not logged since the last one)",
        "internal error serving FindNode (5 more like it not logged since the last one)"]
    assert [m for t, m in logged if t is RuntimeError] == [
        "internal error serving Ping",
        "internal error serving Ping (59 more like it not logged since the last one)",
        "internal error serving Ping (59 more like it not logged since the last one)"]


def _log_a_bug(node: Node, now: float, message: str, *args: object) -> None:
    """Have ``node`` log a bug raised at one place in the code, with ``message`` and ``args``."""
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        node._log_bug(now, message, *args)


def test_an_address_is_no_kind_and_the_kinds_held_are_bounded(
        caplog: pytest.LogCaptureFixture) -> None:
    node = Node(config=CONFIG, rng=random.Random(2), now=0.0)
    kinds_held = node_module.BUG_LOG_KINDS
    with caplog.at_level(logging.ERROR, logger="qadom"):
        for i in range(1000):  # one bug, from a thousand addresses a peer chose
            _log_a_bug(node, 1.0, "internal error handling a datagram from %s",
                       (f"10.0.{i // 250}.{i % 250}", 4000))
        assert len(tracebacks(caplog)) == 1
        caplog.clear()
        for i in range(3 * kinds_held):  # a kind of its own each: its name is text
            _log_a_bug(node, 2.0, "internal error serving %s", f"Type{i}")
            assert len(node._bugs_logged) <= kinds_held
    assert len(tracebacks(caplog)) == 3 * kinds_held  # the first of each kind is logged
    # The kinds logged last are the ones held: Type0 was forgotten, the last one was not.
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="qadom"):
        for name in ("Type0", f"Type{3 * kinds_held - 1}"):
            _log_a_bug(node, 3.0, "internal error serving %s", name)
    assert [r.getMessage() for r in tracebacks(caplog)] == ["internal error serving Type0"]


# ------------------------------------------------------------------ listeners, simulated


def test_a_failing_pubsub_listener_counts_listener_errors_and_logs_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    net = SimNetwork(3, config=Config(k=5, pubsub_lease=3.0))
    nodes = net.add_nodes(12)
    subscriber, publisher = nodes[1], nodes[7]
    got: list[bytes] = []

    def failing(value: bytes) -> None:
        value.decode("utf-8")  # a caller's listener that fails on bytes that are not UTF-8

    def start(now: float) -> object:
        _, call = subscriber.pubsub.subscribe(2**255 + 99, failing, now)
        subscriber.pubsub.subscribe(2**255 + 99, got.append, now)
        return call

    net.run_call(net.call(subscriber, start))  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="qadom"):
        for i in range(50):
            net.call(publisher, publisher.pubsub.publish, 2**255 + 99, b"\xff%d" % i)
            net.run_for(0.5)
        net.run_for(5)
    assert len(got) == 50  # the other listener had every message
    assert subscriber.stats["listener_errors"] == 50
    assert subscriber.stats.get("internal_errors", 0) == 0  # not qadom's bug
    # Within 30 virtual seconds: one traceback (before: one per message, 50).
    assert [r.getMessage() for r in tracebacks(caplog)] == ["a pubsub listener failed"]


def test_a_failing_lookup_listener_logs_each_kind_once_a_minute(
        caplog: pytest.LogCaptureFixture) -> None:
    net = SimNetwork(4, config=Config(k=5))
    nodes = net.add_nodes(20)
    node = nodes[3]
    seen: list[LookupEvent] = []

    def faulty(event: LookupEvent) -> None:
        seen.append(event)
        raise RuntimeError("a display that fails")

    node.add_listener(faulty)
    rng = random.Random(5)
    with caplog.at_level(logging.ERROR, logger="qadom"):
        for _ in range(5):
            net.run_call(net.call(node, node.find_nodes, rng.getrandbits(256)))
    assert net.now < BUG_LOG_INTERVAL
    assert len(seen) > 20 and node.stats["listener_errors"] == len(seen)
    kinds = sorted({type(e).__name__ for e in seen})
    # One traceback per kind of event (before: one per event).
    assert sorted(r.getMessage() for r in tracebacks(caplog)) == [
        f"a lookup listener raised on {kind}" for kind in kinds]


# ------------------------------------------------------------------ HTTP, real sockets


@pytest.fixture
async def helper() -> AsyncIterator[HttpHelper]:
    """An HTTP helper on 127.0.0.1 (port 0) serving a peer that knows no other."""
    async with Peer(port=0, config=FAST) as peer, HttpHelper(peer, port=0) as http:
        yield http


async def raw_exchange(http: HttpHelper, request: bytes) -> bytes:
    """Send ``request`` on a new connection; what came back until the helper closed it."""
    assert http.address is not None
    reader, writer = await asyncio.open_connection(*http.address)
    try:
        writer.write(request)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


async def test_a_path_that_ends_in_a_5xx_reaches_the_log_as_one_printable_line(
        helper: HttpHelper, caplog: pytest.LogCaptureFixture) -> None:
    assert helper.address is not None
    host, port = helper.address
    forged = "%0A2026-01-01%2000:00:00,000%20qadom%20ERROR%20restore%20from%20backup%1B%5B2K"
    caplog.set_level(logging.INFO, logger="qadom.http")
    async with aiohttp.ClientSession() as session, session.get(
            f"http://{host}:{port}/dht/x{forged}",
            timeout=aiohttp.ClientTimeout(total=10)) as response:
        assert response.status == 502  # the peer knows no other
    lines = [r.getMessage() for r in caplog.records if r.name == "qadom.http"]
    assert lines, caplog.records
    for line in lines:
        assert line.isprintable(), ascii(line)  # before: a newline and an ESC
        assert line.startswith("GET /dht/x?2026-01-01 00:00:00,000 qadom ERROR"), line


async def test_client_header_text_reaches_no_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with Peer(port=0, config=FAST) as peer:
        http = HttpHelper(peer, port=0)
        await http.start()
        try:
            answer = await raw_exchange(http, (
                b"GET /node HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                b"User-Agent: a\xc2\x9b2Jb \xe2\x80\xaeevil\r\nReferer: \xc2\x9b31mred\r\n\r\n"))
            assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        finally:
            await http.close()  # every handler has finished, and logged what it logs
    # Before: aiohttp's access log line held the C1 CSI (U+009B) and the bidi override (U+202E).
    for record in caplog.records:
        assert record.getMessage().isprintable(), (record.name, ascii(record.getMessage()))
        assert "evil" not in record.getMessage(), record.name


@pytest.mark.parametrize("request_bytes", [
    b"GARBAGE\r\n\r\n",  # a bad method in a connection's first request: aiohttp logs it at DEBUG
    b"GET / HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",  # a message with newlines in it
], ids=["bad-method", "bad-header"])
async def test_a_request_the_parser_refuses_is_one_printable_line_without_traceback(
        helper: HttpHelper, caplog: pytest.LogCaptureFixture, request_bytes: bytes) -> None:
    caplog.set_level(logging.DEBUG, logger="qadom.http.server")
    answer = await raw_exchange(helper, request_bytes)
    assert b" 400 " in answer.split(b"\r\n")[0], answer[:200]
    records = [r for r in caplog.records if r.name == "qadom.http.server"]
    assert records, caplog.records
    for record in records:
        assert record.exc_info is None, record.getMessage()  # before: bad-method's traceback
        assert record.getMessage().isprintable(), ascii(record.getMessage())  # bad-header's \n
        assert record.levelno == logging.DEBUG


# ------------------------------------------------------------------ qadom's command line


def test_log_level_sets_the_qadom_logger_and_leaves_the_others_theirs(tmp_path: Path) -> None:
    script = textwrap.dedent(f"""
        import logging
        from qadom import cli
        code = cli.main(["--log-level", "debug", "keygen", {str(tmp_path / "me.key")!r}])
        print(code, logging.getLogger().level, logging.getLogger("qadom").level,
              logging.getLogger("asyncio").getEffectiveLevel())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60,
                            cwd=ROOT, check=False)
    assert result.returncode == 0, result.stderr
    code, root, qadom, other = result.stdout.decode().split("\n")[-2].split()
    # 'qadom' at DEBUG as asked; the root logger, and so asyncio's, at Python's WARNING
    # (before: the root at DEBUG, so asyncio and aiohttp wrote their debug records too).
    assert (code, qadom) == ("0", str(logging.DEBUG))
    assert (root, other) == (str(logging.WARNING), str(logging.WARNING))
