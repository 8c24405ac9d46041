"""An ``exp_time`` too large for a float (JSON carries integers of thousands of digits, CBOR
bignums) is refused as out of the format, like any other beyond 2**53; and a reply a lookup's
rule raises on fails that reply instead of freezing the lookup."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace

import cbor2
import pytest
from aiohttp.test_utils import TestClient, TestServer

from qadom import Config
from qadom.contact import Address, Contact
from qadom.dhtrecords import (
    SECURED,
    DhtFind,
    DhtPut,
    DhtRecord,
    DhtRefused,
    RefusedCode,
    decode_record,
    make_entry,
    parse_write,
)
from qadom.errors import InvalidField, ProtocolError, StorageUnavailable
from qadom.http import make_app
from qadom.lookup import Lookup
from qadom.messages import FindNode, Message, Nodes

from helpers import FAST, answer_requests, node_near, udp_network

ALICE = (11).to_bytes(32, "big")
HUGE = 10**400  # past what a float holds: float(HUGE) raises OverflowError
FIELD = "authorization.pub_key.exp_time"
# Short enough that a lookup waiting for its deadline shows at once; far above what a lookup of
# six peers on loopback takes.
SHORT = replace(FAST, operation_timeout=5.0)


def bad_record(key: str, exp_time: object) -> bytes:
    """A SECURED record of ``key`` encoded as encode_record would, with ``exp_time`` as given."""
    entry = make_entry(ALICE, key, "v", SECURED)
    return cbor2.dumps([1, key, SECURED, [[entry.data, entry.pub_key, exp_time, entry.sign]]])


@pytest.mark.parametrize("exp_time", [HUGE, -HUGE, 2**53, math.inf, -math.inf, math.nan],
                         ids=["huge", "-huge", "2**53", "inf", "-inf", "nan"])
def test_decode_record_refuses_an_exp_time_out_of_the_format(exp_time: object) -> None:
    with pytest.raises(ProtocolError, match="exp_time"):
        decode_record(bad_record("k", exp_time), Config())


@pytest.mark.parametrize("exp_time", [HUGE, -HUGE, 2**53, math.inf, math.nan],
                         ids=["huge", "-huge", "2**53", "inf", "nan"])
def test_parse_write_names_the_field_of_an_exp_time_out_of_the_format(exp_time: object) -> None:
    body = make_entry(ALICE, "k", "v", SECURED).to_json(SECURED)
    body["authorization"]["pub_key"]["exp_time"] = exp_time
    with pytest.raises(InvalidField) as caught:
        parse_write("k", body, Config())
    assert caught.value.field == FIELD


def test_an_exp_time_within_the_format_still_decodes() -> None:
    for exp_time in (2**53 - 1, -(2**53 - 1), 1.5e9):
        (entry,) = decode_record(bad_record("k", exp_time), Config()).entries
        assert entry.exp_time == exp_time


async def test_post_dht_with_a_400_digit_exp_time_is_a_400_naming_the_field() -> None:
    async with udp_network(1, config=SHORT) as (peer,), \
            TestClient(TestServer(make_app(peer))) as client:
        text = json.dumps(make_entry(ALICE, "k", "v", SECURED).to_json(SECURED))
        text = text.replace('"exp_time": null', '"exp_time": 1' + "0" * 400)
        response = await client.post("/dht/k", data=text.encode(),
                                     headers={"Content-Type": "application/json"})
        assert response.status == 400, await response.text()
        assert (await response.json())["field"] == FIELD
        assert peer.node.stats["internal_errors"] == 0


async def test_a_dht_put_with_a_huge_exp_time_is_refused_as_malformed() -> None:
    async with udp_network(2, config=SHORT) as (victim, sender):
        reply = await sender.request(victim.address, DhtPut(bad_record("k", HUGE), 3600))
        assert isinstance(reply, DhtRefused)
        assert reply.code == RefusedCode.MALFORMED
        assert victim.node.stats["internal_errors"] == 0


async def test_a_peer_answering_a_huge_exp_time_is_a_liar_and_stalls_no_dht_read() -> None:
    """One peer of six answers every DHT_FIND with a record whose exp_time is a bignum: its
    answer is a lie (punished), and the GET (and a POST) of the key are served by the honest
    holders without waiting for the operation's deadline."""
    async with udp_network(6, config=SHORT) as peers, \
            TestClient(TestServer(make_app(peers[1]))) as client:
        victim, liar = peers[1], peers[2]
        written = make_entry(ALICE, "gk", "honest", SECURED).to_json(SECURED)
        assert (await client.post("/dht/gk", json=written)).status == 200
        node = liar.node

        def lie(message: DhtFind, sender: int | None, address: Address,
                now: float) -> Message:
            nodes = node.table.closest(message.target, node.config.k, exclude=sender)
            return DhtRecord(bad_record("gk", HUGE), tuple(nodes))

        node.register_handler(DhtFind, lie)
        response = await client.get("/dht/gk")
        assert response.status == 200, await response.text()
        assert json.loads((await response.json())["data"])["data"] == "honest"
        stats = victim.node.stats
        assert stats["liars"] == 1
        assert liar.address not in {c.address for c in victim.routing_table}
        assert stats["internal_errors"] == 0
        rewritten = make_entry(ALICE, "gk", "honest2", SECURED).to_json(SECURED)
        assert (await client.post("/dht/gk", json=rewritten)).status == 200
        assert stats["internal_errors"] == 0


@pytest.mark.parametrize(("error", "stat", "logged"), [
    (OverflowError("a rule's bug"), "internal_errors", [OverflowError]),
    (StorageUnavailable("the disk is away"), "storage_errors", []),
], ids=["bug", "store"])
def test_a_reply_the_rule_raises_on_fails_that_contact_and_the_lookup_finishes(
        caplog: pytest.LogCaptureFixture, error: Exception, stat: str,
        logged: list[type[Exception]]) -> None:
    """A bug in a lookup's on_message that a reply triggers is counted and logged as one (a
    store that cannot be read is counted as such, and is no bug), and the reply counts as
    failed: the lookup goes on without it and finishes."""
    target = 1 << 200
    node, codec, contacts = node_near(target)
    broken = contacts[0]
    ids = {c.address: c.id for c in contacts}

    def on_message(contact: Contact, message: Message, lookup: Lookup,
                   now: float) -> tuple[Contact, ...] | None:
        if contact == broken:
            raise error
        return message.nodes if isinstance(message, Nodes) else None

    finished: list[list[Contact]] = []
    node.run_lookup(target, "node", FindNode(target), 0.0, on_message,
                    lambda lookup, now: finished.append(lookup.closest()))
    with caplog.at_level(logging.ERROR, logger="qadom"):
        asked = answer_requests(node, codec, lambda address, _: (ids[address], Nodes(())), 0.1)
    assert sorted(asked) == sorted(c.address for c in contacts)
    assert finished == [[c for c in contacts if c != broken]]
    assert node.stats[stat] == 1
    assert sum(node.stats[name] for name in ("internal_errors", "storage_errors")) == 1
    assert [r.exc_info[0] for r in caplog.records
            if r.exc_info and r.levelno >= logging.ERROR] == logged
