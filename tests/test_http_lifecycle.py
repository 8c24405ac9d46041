"""Starting and closing the HTTP helper, over real TCP and UDP on 127.0.0.1: one server per
helper whatever the order of the calls, and none for a peer that is not running."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path
from typing import ClassVar

import pytest
from aiohttp import web

from qadom import Peer, PeerClosedError
from qadom.http import HttpHelper, make_app

from helpers import FAST


class CountingSite(web.TCPSite):
    """A TCPSite that records the address of every site it starts: what a helper bound."""

    started: ClassVar[list[tuple[str, int]]] = []

    async def start(self) -> None:
        await super().start()
        server = self._server
        assert isinstance(server, asyncio.base_events.Server)
        host, port = server.sockets[0].getsockname()[:2]
        CountingSite.started.append((str(host), int(port)))


@pytest.fixture
def sites(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The addresses the helpers bind during the test."""
    CountingSite.started = []
    monkeypatch.setattr(web, "TCPSite", CountingSite)
    return CountingSite.started


def listening(address: tuple[str, int]) -> bool:
    """Whether a TCP server accepts connections at ``address``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(2)
        return probe.connect_ex(address) == 0


async def test_concurrent_starts_bind_one_server(sites: list[tuple[str, int]]) -> None:
    """Two starts at once bind one server, and close() leaves none listening."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        helper = HttpHelper(peer)
        await asyncio.wait_for(asyncio.gather(helper.start(), helper.start()), 5)
        assert len(sites) == 1
        assert helper.address is not None and listening(helper.address)
        await asyncio.wait_for(helper.close(), 5)
        assert not any(listening(address) for address in sites)


async def test_close_while_starting_leaves_nothing_serving(sites: list[tuple[str, int]]) -> None:
    """close() while start() is binding waits for it and closes what it bound: once close()
    returns, nothing serves the peer."""
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        helper = HttpHelper(peer)
        starting = asyncio.ensure_future(helper.start())
        await asyncio.sleep(0)  # start() is under way
        assert not starting.done()
        await asyncio.wait_for(helper.close(), 5)
        await asyncio.wait_for(starting, 5)
        assert len(sites) == 1
        assert not listening(sites[0])
        assert helper.open_streams == 0
        await asyncio.wait_for(helper.start(), 5)  # a helper closed can start again
        assert helper.address is not None and listening(helper.address)
        await asyncio.wait_for(helper.close(), 5)


async def test_start_on_a_peer_not_running_raises_peer_closed(
        tmp_path: Path, sites: list[tuple[str, int]]) -> None:
    """A closed peer (with or without a data dir) or one never started: PeerClosedError from
    start() and make_app(), and nothing is bound."""
    durable = Peer("127.0.0.1", 0, config=FAST, data_dir=tmp_path)
    await durable.start()
    await durable.close()
    memory = Peer("127.0.0.1", 0, config=FAST)
    await memory.start()
    await memory.close()
    for peer in (durable, memory, Peer("127.0.0.1", 0, config=FAST)):
        helper = HttpHelper(peer)
        with pytest.raises(PeerClosedError):
            await asyncio.wait_for(helper.start(), 5)
        with pytest.raises(PeerClosedError):
            make_app(peer)
        await helper.close()
    assert not sites
