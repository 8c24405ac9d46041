"""Bursts of operations from one peer: thousands of sets, gets and searches started at once
(a caller gathering them) all complete, instead of overflowing the few nearest peers' socket
buffers and cutting the peer off for its own excess (Config.max_requests_in_flight); identical
reads asked together share one lookup (qadom.node._SharedRead). Real UDP on 127.0.0.1."""

from __future__ import annotations

import asyncio
import dataclasses
from collections import Counter

from qadom import Config, NotFoundError

from helpers import FAST, udp_network

BURST = 2000
# k = 4: fewer requests per write keeps the burst's set-up short. The default ceiling of the
# request timeout (2 s, against FAST's 1 s): starting thousands of operations holds the loop up
# for a second on a loaded machine, and the peers' replies wait behind it.
CONFIG = dataclasses.replace(FAST, k=4, rpc_timeout_max=Config().rpc_timeout_max)


async def test_thousands_of_concurrent_writes_and_reads_from_one_peer_all_complete() -> None:
    async with udp_network(16, config=CONFIG, seed=3) as peers:
        writer, reader = peers[1], peers[-1]
        values = [b"burst %d" % i for i in range(BURST)]
        keys = await asyncio.wait_for(
            asyncio.gather(*(writer.set(value) for value in values)), 120)
        before = Counter(reader.stats)
        got = await asyncio.wait_for(asyncio.gather(
            *(reader.get(key) for key in keys), return_exceptions=True), 120)
        assert Counter(type(g).__name__ for g in got) == {"bytes": BURST}
        assert got == values
        spent = Counter(reader.stats)
        spent.subtract(before)
        assert spent["requests_queued"] > 0  # the burst did go over the bound, and waited
        # The peer is still in the network at once: nothing was put into backoff for it.
        assert await asyncio.wait_for(reader.get(keys[0]), 10) == values[0]


async def test_identical_reads_asked_together_share_one_lookup() -> None:
    async with udp_network(12, config=CONFIG, seed=4) as peers:
        writer = peers[1]
        key = await writer.set(b"one value, many readers")
        await writer.append(77, 5)
        reader = next(p for p in peers[2:] if p.node.store.value_meta(key) is None
                      and not p.node.store.entry_meta(77, 5))  # holds neither: asks the network
        before = Counter(reader.stats)
        gets = [reader.get(key) for _ in range(BURST)]
        searches = [reader.search(77) for _ in range(BURST)]
        got = await asyncio.wait_for(asyncio.gather(*gets, *searches), 60)
        spent = Counter(reader.stats)
        spent.subtract(before)
        assert got[:BURST] == [b"one value, many readers"] * BURST
        sets = got[BURST:]
        assert all(s == {5} for s in sets)
        assert len({id(s) for s in sets}) == BURST  # each caller's set is its own
        assert spent["requests_out"] <= 2 * CONFIG.k * 2  # one lookup of each, not thousands
        with_missing = [reader.get(2**255 + i % 2) for i in range(200)]
        outcomes = await asyncio.wait_for(
            asyncio.gather(*with_missing, return_exceptions=True), 60)
        assert all(isinstance(o, NotFoundError) for o in outcomes)
