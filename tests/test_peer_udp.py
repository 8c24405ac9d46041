"""The Peer API over real UDP sockets on 127.0.0.1 (port 0), 30 peers."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import pytest

from qadom import (
    Config,
    DataDirInUse,
    InvalidArgument,
    InvalidType,
    Peer,
    PeerClosedError,
    SubscriptionMisuse,
    ValueTooLarge,
    key_for,
)
from qadom.events import LookupEvent
from qadom.messages import Ping, Pong
from qadom.storage import MemoryStore

from helpers import FAST, udp_network, wait_until

SIZE = 30


async def test_api_end_to_end_across_30_peers() -> None:
    async with udp_network(SIZE) as peers:
        assert all(p.address[0] == "127.0.0.1" and p.address[1] > 0 for p in peers)
        assert min(len(p.routing_table) for p in peers) >= 10

        key = await peers[3].set(b"sudo python")
        assert key == key_for(b"sudo python")
        assert key == 44523492095186523269265158000087001266127815262863473237438729878159874507476
        for reader in (peers[17], peers[29], peers[0]):
            assert await reader.get(key) == b"sudo python"

        exact = bytes(range(256)) * 32
        assert len(exact) == 8192
        big_key = await peers[5].set(exact)
        assert await peers[22].get(big_key) == exact

        await peers[1].append(1000, 1)
        await peers[2].key(1000, 2)  # the original README's spelling
        await peers[8].append(1000, 2**256 - 1)
        assert await peers[27].search(1000) == {1, 2, 2**256 - 1}
        assert await peers[26].key(1000) == {1, 2, 2**256 - 1}
        assert await peers[25].search(1001) == set()

        for peer in peers:
            assert peer.stats.get("internal_errors", 0) == 0
            peer.routing_table.check_invariants()


async def test_refusals_store_nothing() -> None:
    async with udp_network(3) as peers:
        peer = peers[1]
        before = peer.node.store.stats()
        with pytest.raises(ValueTooLarge) as too_big:
            await peer.set(b"x" * 8193)
        assert isinstance(too_big.value, ValueError)
        with pytest.raises(InvalidType) as wrong_type:
            await peer.set("text")  # type: ignore[arg-type]
        assert isinstance(wrong_type.value, TypeError)
        for bad_key in (-1, 2**256):
            with pytest.raises(InvalidArgument):
                await peer.get(bad_key)
            with pytest.raises(InvalidArgument):
                await peer.append(bad_key, 1)
            with pytest.raises(InvalidArgument):
                await peer.append(1, bad_key)
            with pytest.raises(InvalidArgument):
                await peer.search(bad_key)
        with pytest.raises(InvalidType):
            await peer.get("1")  # type: ignore[arg-type]
        with pytest.raises(InvalidType):
            await peer.append(1, True)
        assert peer.node.store.stats() == before
        assert (await peers[2].search(1)) == set()


async def test_missing_key_raises_key_error_in_bounded_time() -> None:
    async with udp_network(12) as peers:
        started = time.monotonic()
        with pytest.raises(KeyError):
            await asyncio.wait_for(peers[4].get(12345), 25)
        assert time.monotonic() - started < FAST.operation_timeout


async def test_gets_succeed_with_five_peers_closed() -> None:
    async with udp_network(SIZE, seed=3) as peers:
        writers, others = peers[:10], peers[10:]
        keys = [await w.set(f"value {i}".encode()) for i, w in enumerate(writers)]
        # Close the five peers closest to the first key: the ones every lookup for it asks
        # first, so the gets below must route around dead peers.
        dead = sorted(others, key=lambda p: p.id ^ keys[0])[:5]
        for peer in dead:
            await peer.close()
        readers = [p for p in others if p not in dead]
        started = time.monotonic()
        for i, key in enumerate(keys):
            for reader in readers[i % 3::7]:
                assert await asyncio.wait_for(reader.get(key), 20) == f"value {i}".encode()
        elapsed = time.monotonic() - started
        # Waiting out each dead peer in turn would cost 5 x 2 attempts x 0.5 s per lookup;
        # lookups that skip stalled peers finish all these gets far sooner.
        assert elapsed < 10


async def test_life_cycle_and_bootstrap_errors() -> None:
    peer = Peer("127.0.0.1", 0, config=FAST)
    with pytest.raises(PeerClosedError):
        await peer.get(1)
    async with peer:
        assert peer.running and peer.address[1] != 0
        with pytest.raises(InvalidType):
            await peer.bootstrap("127.0.0.1:1")  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await peer.bootstrap([("127.0.0.1", 70000)])
        with pytest.raises(InvalidArgument):
            await peer.bootstrap([])
    with pytest.raises(PeerClosedError):
        await peer.set(b"x")
    with pytest.raises(InvalidArgument):
        Peer("127.0.0.1", -1)
    with pytest.raises(InvalidType):
        Peer(123)  # type: ignore[arg-type]


async def test_malformed_datagrams_over_udp_are_counted_and_harmless() -> None:
    async with udp_network(2) as (a, b):
        junk = (b"", b"\x00", b"\xa1\x01\x02", b"\x9f" * 500, b"\xff" * 9000)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for data in junk:
                sender.sendto(data, a.address)
        key = await b.set(b"still fine")
        assert await a.get(key) == b"still fine"
        await wait_until(lambda: a.stats.get("malformed", 0) == len(junk), timeout=5)
        assert a.stats.get("internal_errors", 0) == 0


async def test_raw_requests_resolve_host_names() -> None:
    async with udp_network(2) as (a, b):
        reply = await a.request(("localhost", b.address[1]), Ping())
        assert reply == Pong()


async def test_a_failed_start_leaves_the_data_dir_free(tmp_path: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as taken:
        taken.bind(("127.0.0.1", 0))
        peer = Peer("127.0.0.1", taken.getsockname()[1], config=FAST, data_dir=tmp_path)
        with pytest.raises(OSError):
            await peer.start()
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as again:
        assert again.id == peer.id  # the same node, and its store opened cleanly


async def test_wrong_argument_types_are_refused_before_anything_starts() -> None:
    for options in ({"config": 5}, {"store": 5}, {"data_dir": 5}, {"rng": 5},
                    {"client_only": "yes"}):
        with pytest.raises(InvalidType):
            Peer("127.0.0.1", 0, **options)
    with pytest.raises(InvalidType):
        Config(k="20")  # type: ignore[arg-type]
    with pytest.raises(InvalidType):
        Config(probe_gets=1)  # type: ignore[arg-type]
    assert Config(rpc_timeout=1).rpc_timeout == 1  # an int is a fine float
    Peer("127.0.0.1", 0, store=MemoryStore())  # a Store is accepted
    peer = Peer("127.0.0.1", 0, config=FAST)
    with pytest.raises(PeerClosedError):
        peer.address  # noqa: B018 (the property is what is tested)
    with pytest.raises(PeerClosedError):
        peer.contact()
    async with peer:
        before = peer.node.store.stats()
        with pytest.raises(InvalidType):
            await peer.bootstrap(5)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument):
            await peer.bootstrap([("127.0.0.1", 0)])
        with pytest.raises(InvalidArgument):
            await peer.ping(("127.0.0.1", 0))
        with pytest.raises(InvalidArgument):
            await peer.ping(("a..b", 5))  # not a valid host name: no resolver error leaks
        with pytest.raises(InvalidArgument):
            await peer.ping(("fe80::1%\x00", 5))  # a zone that names no interface
        assert peer.running  # nothing reached the socket that could close it
        with pytest.raises(InvalidType):
            await peer.request(("127.0.0.1", 9), "x")  # type: ignore[arg-type]
        with pytest.raises(InvalidType):
            await peer.request(("127.0.0.1", 9), Pong())  # a reply is not a request
        with pytest.raises(InvalidType):
            await peer.run_service(5)  # type: ignore[arg-type]
        with pytest.raises(InvalidType):
            peer.add_listener(5)
        assert peer.node.store.stats() == before
    assert peer.address[1] > 0  # still known after close
    with pytest.raises(PeerClosedError):
        peer.saved_contacts()


async def test_a_raising_listener_does_not_stall_the_lookup() -> None:
    async with udp_network(5) as peers:
        seen: list[LookupEvent] = []

        def faulty(event: LookupEvent) -> None:
            seen.append(event)
            raise RuntimeError("a display that fails")

        unsubscribe = peers[0].add_listener(faulty)
        found = await asyncio.wait_for(peers[0].find_nodes(12345), 10)
        unsubscribe()
        assert found and seen
        assert peers[0].stats["listener_errors"] == len(seen)
        assert peers[0].stats.get("internal_errors", 0) == 0


async def test_close_while_starting_wins_and_concurrent_starts_bind_once() -> None:
    peer = Peer("127.0.0.1", 0, config=FAST)
    starting = asyncio.create_task(peer.start())
    await asyncio.sleep(0)
    await peer.close()
    with pytest.raises(PeerClosedError):
        await starting
    assert not peer.running
    with pytest.raises(PeerClosedError):
        await peer.set(b"x")

    twice = Peer("127.0.0.1", 0, config=FAST)
    await asyncio.gather(twice.start(), twice.start())
    port = twice.address[1]
    await twice.close()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as again:
        again.bind(("127.0.0.1", port))  # the one socket is closed: nothing leaked


async def test_one_peer_per_data_dir(tmp_path: Path) -> None:
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as first:
        second = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        with pytest.raises(DataDirInUse):
            await second.start()
        assert not second.running
        assert first.saved_contacts() == []
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as third:
        assert third.id == first.id  # released by close, and the same node


async def test_a_subscription_is_used_inside_its_block() -> None:
    async with udp_network(3) as peers:
        subscription = peers[0].subscribe(7)
        with pytest.raises(SubscriptionMisuse):
            await asyncio.wait_for(subscription.__anext__(), 5)
        async with subscription:
            pass
        with pytest.raises(SubscriptionMisuse):
            await subscription.__aenter__()
