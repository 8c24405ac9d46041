"""A peer's data dir across restarts: the contacts it rejoins through, what expired while it was
down, a database it cannot use, and a close that cannot save (real UDP on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from qadom import Peer
from qadom.errors import QadomError, StorageFull
from qadom.messages import Entries, Search
from qadom.storage import Meta

from helpers import FAST, udp_network

LIMIT = 30.0


async def test_a_restart_that_does_not_rejoin_keeps_the_saved_contacts(tmp_path: Path) -> None:
    async with udp_network(3) as peers:
        first = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await first.start()
        try:
            await asyncio.wait_for(first.bootstrap([peers[0].address]), LIMIT)
        finally:
            await first.close()

        # Restarted while the network is unreachable, say: it never rejoins, and stops.
        offline = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await offline.start()
        try:
            assert len(offline.routing_table) == 0
            assert len(offline.saved_contacts()) == 3
        finally:
            await offline.close()

        again = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await again.start()
        try:
            assert len(again.saved_contacts()) == 3
            assert await asyncio.wait_for(again.bootstrap(), LIMIT) == 3
        finally:
            await again.close()


async def test_a_restart_drops_what_expired_while_the_peer_was_down(tmp_path: Path) -> None:
    first = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    await first.start()
    try:
        # An entry a peer stored here with an hour to live, and one that has a day left.
        store = first.node.store
        store.add_entry(5, 1, Meta(time.time() + 3600, source="10.0.0.1"))
        store.add_entry(5, 2, Meta(time.time() + 86400, source="10.0.0.1"))
    finally:
        await first.close()
    # Two hours later (the file's clock moved back instead): the first has expired meanwhile.
    db = sqlite3.connect(tmp_path / "qadom.sqlite3")
    db.execute("UPDATE entries SET expires = expires - 7200")
    db.commit()
    db.close()

    async with udp_network(1) as (asker,):
        again = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await again.start()
        try:
            reply = await asker.request(again.address, Search(5, None))
            assert isinstance(reply, Entries) and reply.values == (2,)
            assert again.node.store.quotas.total_items == 1
        finally:
            await again.close()


async def test_a_corrupt_database_is_refused_and_the_data_dir_released(tmp_path: Path) -> None:
    db_path = tmp_path / "qadom.sqlite3"
    garbage = b"no database here " * 100
    db_path.write_bytes(garbage)
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    with pytest.raises(QadomError) as info:
        await peer.start()
    assert isinstance(info.value, OSError) and str(db_path) in str(info.value)
    assert db_path.read_bytes() == garbage
    db_path.rename(tmp_path / "kept-aside")
    async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as fresh:  # not locked
        assert fresh.running


async def test_close_releases_the_data_dir_even_when_saving_contacts_fails(
        tmp_path: Path) -> None:
    async with udp_network(2) as peers:
        peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await peer.start()
        await asyncio.wait_for(peer.bootstrap([peers[0].address]), LIMIT)
        store = peer.node.store

        def disk_full(contacts: object) -> None:
            raise StorageFull("the disk holding this node's store is full")

        store.save_contacts = disk_full  # type: ignore[method-assign]
        pending = asyncio.ensure_future(peer.get(12345))
        await asyncio.sleep(0)
        await peer.close()
        assert peer.closed and not peer.running
        with pytest.raises(QadomError):  # failed as closed, not left hanging
            await asyncio.wait_for(pending, LIMIT)
        async with Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path) as again:
            assert again.id == peer.id
            assert len(again.saved_contacts()) == 2  # what the bootstrap saved
