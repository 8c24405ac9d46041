"""A peer with a data dir keeps its id, data and contacts across restarts (real UDP)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from qadom import InvalidArgument, Peer, key_for
from qadom.messages import Error, ErrorCode, Store
from qadom.storage import Meta

from helpers import FAST, udp_network


async def test_restart_keeps_id_data_and_rejoins_without_bootstrap(tmp_path: Path) -> None:
    async with udp_network(8) as peers:
        first = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await first.start()
        node_id = first.id
        await first.bootstrap([peers[0].address])
        key = await first.set(b"kept across restarts")
        await first.append(5, 6)
        # Something a remote peer stored here is kept too.
        await peers[3].set(b"stored by another")
        await first.close()

        again = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
        await again.start()
        try:
            assert again.id == node_id
            assert len(again.saved_contacts()) >= 7
            assert await again.get(key) == b"kept across restarts"
            # 9 peers, k = 20: every peer is a replica of what another stored.
            assert again.node.store.get_value(key_for(b"stored by another")) is not None
            assert len(again.routing_table) == 0
            assert await again.bootstrap() > 0  # rejoined from saved contacts
            assert await again.search(5) == {6}
            assert await peers[5].get(key) == b"kept across restarts"
        finally:
            await again.close()


async def test_data_dir_conflicts_are_refused(tmp_path: Path) -> None:
    peer = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    await peer.start()
    await peer.close()
    with pytest.raises(InvalidArgument):
        await Peer("127.0.0.1", 0, data_dir=tmp_path, node_id=12345).start()
    with pytest.raises(InvalidArgument):
        Peer("127.0.0.1", 0, data_dir=tmp_path, store=object())  # type: ignore[arg-type]
    empty = Peer("127.0.0.1", 0, config=FAST)
    async with empty:
        with pytest.raises(InvalidArgument):
            await empty.bootstrap()  # nothing saved to rejoin from


async def test_full_peer_refuses_and_loses_nothing() -> None:
    tight = replace(FAST, max_bytes_per_source=3000)
    async with udp_network(2, config=tight) as (a, b):
        for i in range(3):
            b.node.store.put_value(i, bytes([i]) * 900, Meta(expires=1e12, source="127.0.0.1"))
        before = b.node.store.stats()
        reply = await a.request(b.address, Store(b"y" * 900))
        assert isinstance(reply, Error) and reply.code == ErrorCode.STORAGE_FULL
        assert b.node.store.stats() == before
        assert all(b.node.store.get_value(i) == bytes([i]) * 900 for i in range(3))
