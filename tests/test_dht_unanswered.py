"""A /dht write no peer took fails as every other write does, and stores nothing here: only a
node with nobody to ask keeps it alone. Over HTTP such a write answers a status its OpenAPI
operation lists, 429 included when the peers refused us for our rate."""

from __future__ import annotations

import base64
from collections.abc import Callable

import pytest
from aiohttp.test_utils import TestClient, TestServer
from nacl.signing import SigningKey

from qadom import Config
from qadom.dhtrecords import RECORD_KIND, SECURED, DhtPut, Record, make_entry, storage_key
from qadom.errors import OperationTimeout, RateLimited, RemoteError, StorageFull
from qadom.http import key_text, make_app, openapi_document
from qadom.messages import (
    Append,
    Error,
    ErrorCode,
    FindNodeStore,
    Message,
    Pong,
    Store,
)
from qadom.namespace import NamespaceStore, signing_bytes
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import FAST, udp_network

ALICE = (21).to_bytes(32, "big")
KEY = "unanswered"


def write(key: str = KEY) -> Record:
    """A valid SECURED write of ``key``."""
    return Record(key, SECURED, (make_entry(ALICE, key, "v", SECURED, None),))


def held(node: Node, key: str = KEY) -> bytes | None:
    return node.store.get_record(RECORD_KIND, storage_key(key))


def answering(reply: Message) -> Callable[..., Message]:
    def handler(message: Message, sender: int | None, address: object, now: float) -> Message:
        return reply
    return handler


def refusing_network(reply: Message) -> tuple[SimNetwork, Node, list[Node]]:
    """Twelve nodes (k=5) that answer every DHT_PUT with ``reply``, and a writer among them."""
    network = SimNetwork(seed=41, config=Config(k=5))
    others = network.add_nodes(12)
    writer = network.add_node()
    network.run_call(network.call(writer, writer.bootstrap, [network.address_of(others[0])]))
    for node in others:
        node.register_handler(DhtPut, answering(reply))
        node.require_proof(DhtPut, unproven=answering(reply))
    return network, writer, others


@pytest.mark.parametrize(("reply", "error", "text"), [
    (Error(ErrorCode.RATE_LIMITED, "slow down"), RateLimited, "refused it: slow down"),
    (Error(ErrorCode.STORAGE_FULL, "full"), StorageFull, "refused it"),
    (Error(ErrorCode.BAD_REQUEST, "no"), RemoteError, "BAD_REQUEST"),
    (Pong(), OperationTimeout, "asked to store it answered"),
], ids=["rate-limited", "full", "other-error", "no-store-answer"])
def test_sim_a_put_no_holder_stored_fails_as_a_set_does_and_stores_nothing_here(
        reply: Message, error: type[Exception], text: str) -> None:
    network, writer, others = refusing_network(reply)
    with pytest.raises(error, match=text):
        network.run_call(network.call(writer, writer.dht_records.put, write()))
    assert held(writer) is None
    assert all(held(node) is None for node in others)
    assert not writer.dht_records.forget(KEY)  # nothing of ours to renew either


def test_sim_a_put_whose_lookup_no_peer_answered_times_out_and_stores_nothing_here() -> None:
    network = SimNetwork(seed=42, config=Config(k=5))
    others = network.add_nodes(6)
    writer = network.add_node()
    network.run_call(network.call(writer, writer.bootstrap, [network.address_of(others[0])]))
    for node in others:
        network.remove(node)  # gone, while the writer's table still holds them
    assert len(writer.table) == len(others)
    with pytest.raises(OperationTimeout, match="no peer answered"):
        network.run_call(network.call(writer, writer.dht_records.put, write()))
    assert held(writer) is None


def test_sim_a_put_on_a_node_that_knows_no_other_is_kept_here_alone() -> None:
    network = SimNetwork(seed=43, config=Config(k=5))
    lone = network.add_node()
    result = network.run_call(network.call(lone, lone.dht_records.put, write()))
    assert (result.stored, result.refused) == (0, 0)
    assert held(lone) is not None


# ---------------------------------------------------------------------------- over HTTP


async def test_over_http_a_dht_write_to_peers_that_went_silent_is_a_documented_504() -> None:
    async with udp_network(3) as peers:
        writer = peers[0]
        for peer in peers[1:]:
            await peer.close()  # silent, while the writer's table still holds them
        assert len(writer.node.table) == 2
        async with TestClient(TestServer(make_app(writer))) as client:
            entry = make_entry(ALICE, KEY, "v", SECURED, None, compressed=False)
            response = await client.post(f"/dht/{KEY}", json=entry.to_json(SECURED))
            assert response.status == 504, await response.text()
            assert "no peer answered" in (await response.json())["error"]
        assert held(writer.node) is None
        documented = openapi_document(FAST)["paths"]["/dht/{key}"]["post"]["responses"]
        assert "504" in documented


NS_SIGNER = SigningKey((22).to_bytes(32, "big"))
NS_PUBLIC = bytes(NS_SIGNER.verify_key)


def _namespace_body() -> dict[str, object]:
    value = b"limited"
    signature = NS_SIGNER.sign(signing_bytes(NS_PUBLIC, 4, 1, value)).signature
    return {"value": base64.b64encode(value).decode(), "signature": signature.hex(), "seq": 1}


# Each write route, what it sends, and the requests through which the peers take such a write.
WRITES: list[tuple[str, str, str, Callable[[], object], tuple[type[Message], ...]]] = [
    ("POST", "/values", "/values", lambda: b"limited", (FindNodeStore, Store)),
    ("POST", f"/entries/{key_text(4)}", "/entries/{key}", lambda: {"value": key_text(5)},
     (Append,)),
    ("PUT", f"/namespaces/{NS_PUBLIC.hex()}/{key_text(4)}", "/namespaces/{public_key}/{key}",
     _namespace_body, (NamespaceStore,)),
    ("POST", f"/dht/{KEY}", "/dht/{key}",
     lambda: make_entry(ALICE, KEY, "v", SECURED, None, compressed=False).to_json(SECURED),
     (DhtPut,)),
]


@pytest.mark.parametrize(("method", "path", "route", "body", "kinds"), WRITES,
                         ids=[w[2] for w in WRITES])
async def test_over_http_a_write_every_peer_refused_for_our_rate_is_a_documented_429(
        method: str, path: str, route: str, body: Callable[[], object],
        kinds: tuple[type[Message], ...]) -> None:
    refusal = answering(Error(ErrorCode.RATE_LIMITED, "slow down"))
    async with udp_network(3) as peers:
        writer = peers[0]
        for peer in peers[1:]:
            for kind in kinds:
                peer.node.register_handler(kind, refusal)
                peer.node.require_proof(kind, unproven=refusal)
        async with TestClient(TestServer(make_app(writer))) as client:
            before = writer.node.store.stats()  # the helper's signing key is stored by now
            sent = body()
            response = await client.request(
                method, path, **({"data": sent} if isinstance(sent, bytes) else {"json": sent}))
            assert response.status == 429, await response.text()
        assert writer.node.store.stats() == before  # a refused write changes nothing stored
    documented = openapi_document(FAST)["paths"][route][method.lower()]["responses"]
    assert "429" in documented, sorted(documented)


def test_every_write_route_lists_429() -> None:
    # Every route whose operation can fail with RateLimited: the writes, publish and subscribe.
    paths = openapi_document(FAST)["paths"]
    for method, _, route, _, _ in WRITES:
        assert "429" in paths[route][method.lower()]["responses"], route
    assert "429" in paths["/publish/{key}"]["post"]["responses"]
    assert "429" in paths["/subscribe/{key}"]["get"]["responses"]

