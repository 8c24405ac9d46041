"""What a remote peer can make a node write to the operator's log: the sans-IO core on a virtual
clock, its ``qadom`` log records captured."""

from __future__ import annotations

import logging
import random

import pytest

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address
from qadom.messages import Envelope, Message, Ping
from qadom.node import BUG_LOG_INTERVAL, Node

CONFIG = Config()
CODEC = Codec(CONFIG)


def _broken_handler(message: Message, sender: int | None, address: Address,
                    now: float) -> Message:
    raise RuntimeError("a bug in a handler")


def test_a_bug_a_remote_peer_triggers_at_will_does_not_flood_the_log(
        caplog: pytest.LogCaptureFixture) -> None:
    node = Node(config=CONFIG, rng=random.Random(5), now=0.0)
    node.register_handler(Ping, _broken_handler)
    ping = CODEC.encode(Envelope(1, None, Ping(), None, 48))
    now = 0.0
    with caplog.at_level(logging.ERROR, logger="qadom"):
        for i in range(1000):  # 100 a second from ten addresses: within the request rate limits
            now = i * 0.01
            node.datagram_received(ping, (f"127.0.0.{1 + i % 10}", 4000), now)
            node.datagrams_to_send()
    # Every one is counted and answered ERROR INTERNAL ...
    assert node.stats["internal_errors"] == 1000
    # ... but the log holds one traceback, not one per datagram (before: 1000 of them).
    records = [r for r in caplog.records if r.name == "qadom"]
    assert [r.getMessage() for r in records] == ["internal error serving Ping"]
    assert records[0].exc_info is not None
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="qadom"):
        now += BUG_LOG_INTERVAL
        node.datagram_received(ping, ("127.0.0.1", 4000), now)
    assert [r.getMessage() for r in caplog.records if r.name == "qadom"] == [
        "internal error serving Ping (999 more like it not logged since the last one)"]

