"""Replies that arrived while the event loop was held up are read before the timers of their
requests, which fell due meanwhile, run: on asyncio's own loop, whose datagram transport reads
one datagram per loop iteration, because the adapter reads what is waiting in batches
(qadom.transport._READ_BATCH); uvloop reads in batches itself. Real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import random
import socket
import time

import pytest

from qadom import Config, Peer
from qadom.codec import Codec
from qadom.faults import FaultRule, inject_faults
from qadom.messages import Ping, Pong

from helpers import FAST, wait_until

REQUESTS = 20  # under max_requests_in_flight: all go out at once
TIMEOUT = 0.05
CONFIG = dataclasses.replace(FAST, rpc_timeout=TIMEOUT, rpc_timeout_min=TIMEOUT,
                             rpc_timeout_max=TIMEOUT)


async def test_replies_waiting_in_the_socket_are_read_before_overdue_timers() -> None:
    codec = Codec(Config())
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as remote:
        remote.bind(("127.0.0.1", 0))
        remote.settimeout(5)
        async with Peer("127.0.0.1", 0, config=CONFIG) as peer:
            asked = [asyncio.ensure_future(peer.request(remote.getsockname(), Ping()))
                     for _ in range(REQUESTS)]
            await wait_until(lambda: peer.stats["requests_out"] >= REQUESTS, timeout=5)
            for _ in range(REQUESTS):  # all sent already: each read finds one at once
                data, _ = remote.recvfrom(65536)
                request = codec.decode(data)
                assert isinstance(request.message, Ping)
                # On loopback the reply is in the peer's socket when sendto returns.
                remote.sendto(codec.encode_parts(request.rpc_id, None, Pong()), peer.address)
            # Hold the loop up (as a long computation in a notebook cell would) until every
            # request's timer is overdue: the loop then finds both the socket readable and the
            # timer due in the same iteration.
            time.sleep(4 * TIMEOUT)
            replies = await asyncio.wait_for(asyncio.gather(*asked), 5)
            assert replies == [Pong()] * REQUESTS
            assert peer.stats["retries"] == 0  # no reply was left waiting behind a timer
            assert peer.stats["unexpected"] == 0


def test_on_uvloop_too() -> None:
    uvloop = pytest.importorskip("uvloop")
    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(
            test_replies_waiting_in_the_socket_are_read_before_overdue_timers())
    finally:
        loop.close()


async def test_each_datagram_of_a_batch_meets_the_injected_faults() -> None:
    """Faults put in front of the peer (qadom.faults) see every datagram read in a batch, as
    they see each one the transport hands over: an incoming rule that duplicates every datagram
    doubles all of those that waited in the socket, and counts each."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        link = inject_faults(peer, random.Random(1), incoming=FaultRule(duplicate=1.0))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(REQUESTS):  # no await in between: all of them wait in the socket
                sender.sendto(b"not a datagram of ours %d" % i, peer.address)
        await wait_until(lambda: peer.stats["datagrams_in"] >= 2 * REQUESTS, timeout=5)
        assert link.counts["in_duplicated"] == REQUESTS
        assert link.counts["in_sent"] == peer.stats["datagrams_in"] == 2 * REQUESTS
        assert peer.stats["malformed"] == 2 * REQUESTS


@pytest.mark.skipif(not os.path.isdir("/proc/self/fd"), reason="counts descriptors in /proc")
async def test_a_peer_holds_one_descriptor() -> None:
    """The batch reads use the transport's own socket: a peer costs a process one descriptor,
    so a process runs as many peers as its descriptor limit allows."""
    before = len(os.listdir("/proc/self/fd"))
    async with Peer("127.0.0.1", 0, config=FAST):
        assert len(os.listdir("/proc/self/fd")) == before + 1
    assert len(os.listdir("/proc/self/fd")) == before


async def test_a_backlog_is_read_a_full_batch_per_loop_iteration_until_it_is_gone() -> None:
    """After a full batch the next wakeup reads a batch again, however soon it comes: 100
    datagrams waiting in the socket are all read in four batches, within five turns of the loop
    (the first turn may resume this test before it reads the socket; asyncio's transport alone
    reads one datagram a turn)."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for i in range(100):  # no await in between: all of them wait in the socket
                sender.sendto(b"not a datagram of ours %d" % i, peer.address)
        for _ in range(5):
            await asyncio.sleep(0)  # one turn of the loop
        assert peer.stats["datagrams_in"] == 100
