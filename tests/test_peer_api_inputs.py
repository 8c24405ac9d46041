"""The Peer API's edges on real UDP sockets on loopback (port 0): settings that cannot work,
arguments of the wrong kind, and operations that meet a close."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import pytest

from qadom import Config, InvalidArgument, InvalidType, Peer, PeerClosedError
from qadom.messages import Append, FindNode, Message, Ping, Search, Store, Stored

from helpers import FAST

# (field, value): settings refused when the Config is made. Each of them used to be accepted and
# break later: an infinite lifetime made every set raise OverflowError, a negative one made every
# storer drop what it was sent, a NaN deadline never fires, no tracked sender makes every request
# an internal error, no amplification allowance or no burst leaves every request unanswered.
REFUSED: list[tuple[str, object]] = [
    ("expire_time", float("inf")),
    ("expire_time", -1.0),
    ("expire_time", 0.0),
    ("operation_timeout", float("nan")),
    ("probe_hedge_rtts", float("inf")),
    ("refresh_interval", float("inf")),
    ("republish_interval", 0.0),
    ("publisher_republish_interval", -5.0),
    ("token_lifetime", 0.0),
    ("dead_backoff", -1.0),
    ("liar_backoff", float("nan")),
    ("verify_interval", -1.0),
    ("cache_min_lifetime", -1.0),
    ("request_rate", 0.0),
    ("host_request_rate", -1.0),
    ("pubsub_rate", float("inf")),
    ("request_burst", 0),
    ("host_request_burst", -1),
    ("rate_limit_senders", 0),
    ("amplification_factor", 0),
    ("max_search_pages", 0),
    ("lookup_max_candidates", 0),
    ("lookup_max_requests", 0),
    ("republish_batch", 0),
    ("http_max_bootstrap_addresses", 0),
    ("max_verifying", -1),
    ("max_tokens", -1),
    ("min_request_size", -1),
    ("min_small_request_size", -1),
    ("max_store_bytes", -1),
    ("max_store_items", -1),
    ("max_bytes_per_source", -1),
    ("max_items_per_source", -1),
    ("sqlite_synchronous", "sometimes"),
    ("sqlite_wal_limit", -1),
]


@pytest.mark.parametrize(("field", "value"), REFUSED)
def test_config_refuses_settings_that_cannot_work(field: str, value: object) -> None:
    with pytest.raises(InvalidArgument, match=field):
        Config(**{field: value})  # type: ignore[arg-type]


def test_config_keeps_zero_where_zero_means_none_and_checks_names_at_once() -> None:
    Config(dead_backoff=0.0, liar_backoff=0.0, verify_interval=0.0, cache_min_lifetime=0.0,
           max_verifying=0, max_tokens=0, min_request_size=0, min_small_request_size=0,
           max_store_bytes=0, max_store_items=0, max_bytes_per_source=0,
           max_items_per_source=0, rpc_retries=0, replacement_cache_size=0,
           sqlite_synchronous="full")
    # A bad SQLite mode used to pass until a data dir was opened with it.
    with pytest.raises(InvalidArgument, match="sqlite_synchronous"):
        Config(sqlite_synchronous="FULL; DROP")


def test_k_is_at_most_the_contacts_a_reply_may_name() -> None:
    """A node with a larger k would answer with replies every receiver refuses."""
    assert Config(k=64, search_page_size=1).k == 64
    with pytest.raises(InvalidArgument, match="k must be at most 64"):
        Config(k=65, search_page_size=1)


async def test_refresh_takes_a_bool_and_a_refused_call_sends_nothing() -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as a, Peer("127.0.0.1", 0, config=FAST) as b:
        await asyncio.wait_for(a.bootstrap([b.address]), 5)
        sent = a.stats["datagrams_out"]
        with pytest.raises(InvalidType, match="all_buckets"):
            await asyncio.wait_for(a.refresh(all_buckets="no"), 5)  # type: ignore[arg-type]
        with pytest.raises(InvalidType, match="all_buckets"):
            await asyncio.wait_for(a.refresh(all_buckets=1), 5)  # type: ignore[arg-type]
        assert a.stats["datagrams_out"] == sent
        await asyncio.wait_for(a.refresh(all_buckets=True), 5)
        assert a.stats["datagrams_out"] > sent


async def test_run_service_refuses_a_start_that_returns_no_call() -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        with pytest.raises(InvalidType, match="Call"):
            await asyncio.wait_for(peer.run_service(lambda node, now: 5), 5)  # type: ignore
        assert peer.running


@pytest.mark.parametrize("host", ["127.0.0.1\x00", "a..b", "x" * 64 + ".example",
                                  "fe80::1%\x00", "fe80::1%no such interface"])
async def test_a_host_that_cannot_be_bound_is_refused_at_construction(host: str) -> None:
    with pytest.raises(InvalidArgument):
        Peer(host, 0)


async def test_a_host_with_a_nul_is_refused_and_nothing_is_sent() -> None:
    """getaddrinfo reads a host up to its first NUL: ``"127.0.0.1\\0junk"`` would reach
    127.0.0.1."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as target:
        target.bind(("127.0.0.1", 0))
        port = target.getsockname()[1]
        async with Peer("127.0.0.1", 0, config=FAST) as peer:
            sent = peer.stats.get("datagrams_out", 0)
            for call in (lambda: peer.ping(("127.0.0.1\x00junk", port)),
                         lambda: peer.bootstrap([("127.0.0.1\x00", port)]),
                         lambda: peer.request(("localhost\x00", port), Ping())):
                with pytest.raises(InvalidArgument, match="NUL"):
                    await asyncio.wait_for(call(), 5)
            assert peer.stats.get("datagrams_out", 0) == sent
            assert peer.running


async def test_an_operation_resolving_a_name_when_the_peer_closes_starts_nothing(
        tmp_path: Path) -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as other:
        peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await peer.start()
        node = peer.node
        port = other.address[1]
        calls = [asyncio.create_task(peer.bootstrap([("localhost", port)])),
                 asyncio.create_task(peer.ping(("localhost", port))),
                 asyncio.create_task(peer.request(("localhost", port), Ping()))]
        await asyncio.sleep(0)  # each is now waiting for the resolver
        sent = node.stats["datagrams_out"]
        await peer.close()
        for outcome in await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True),
                                              5):
            assert isinstance(outcome, PeerClosedError)
        assert node.stats["datagrams_out"] == sent  # nothing queued on the closed node
        assert node.datagrams_to_send() == []


@pytest.mark.parametrize(("message", "error"), [
    (FindNode(2**256), InvalidArgument),
    (FindNode(-1), InvalidArgument),
    (FindNode("abc"), InvalidType),  # type: ignore[arg-type]
    (FindNode(True), InvalidType),
    (Store("text"), InvalidType),  # type: ignore[arg-type]
    (Store(bytearray(b"x")), InvalidType),  # type: ignore[arg-type]
    (Store(b"x", ttl=2**64), InvalidArgument),
    (Append(1, 2, ttl=-5), InvalidArgument),
    (Search(1, after=-1), InvalidArgument),
    (Search(1, after=2**256), InvalidArgument),
])
async def test_a_raw_request_with_a_bad_field_is_refused_before_it_is_sent(
        message: Message, error: type[Exception]) -> None:
    """A field the wire cannot carry used to escape as OverflowError or AttributeError, or to go
    out and be dropped as malformed by the receiver, costing every attempt's timeout."""
    async with Peer("127.0.0.1", 0, config=FAST) as a, Peer("127.0.0.1", 0, config=FAST) as b:
        with pytest.raises(error):
            await asyncio.wait_for(a.request(b.address, message), 5)
        assert a.stats.get("datagrams_out", 0) == 0
        assert b.stats.get("datagrams_in", 0) == 0
        assert await asyncio.wait_for(a.request(b.address, Store(b"x", ttl=60)), 5) == Stored()


async def test_operations_pending_when_the_socket_is_lost_end_at_once() -> None:
    """The loop closes the socket on an error it treats as fatal (here: abort()); operations
    waiting on the node then end with PeerClosedError instead of hanging: the node's timers
    went with the socket, so no deadline would ever end them."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        async with Peer("127.0.0.1", 0, config=FAST) as peer, \
                Peer("127.0.0.1", 0, config=FAST) as other:
            await asyncio.wait_for(peer.bootstrap([other.address]), 5)
            pending = [asyncio.create_task(peer.ping(silent.getsockname())),
                       asyncio.create_task(peer.bootstrap([silent.getsockname()]))]
            subscription = peer.subscribe(5)
            await asyncio.wait_for(subscription.__aenter__(), 5)
            await asyncio.sleep(0)  # both requests are out, unanswered
            assert peer._protocol is not None and peer._protocol.transport is not None
            transport = peer._protocol.transport
            transport.abort()
            outcomes = await asyncio.wait_for(
                asyncio.gather(*pending, return_exceptions=True), 1.5)
            assert all(isinstance(o, PeerClosedError) for o in outcomes), outcomes
            with pytest.raises(PeerClosedError):
                await asyncio.wait_for(subscription.__anext__(), 1)
            assert not peer.running
            with pytest.raises(PeerClosedError, match="socket"):
                await peer.get(1)
