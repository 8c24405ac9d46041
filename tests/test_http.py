"""The HTTP helper through aiohttp's test client: every route, and every error status it gives.

Peers are real (UDP on 127.0.0.1, port 0); each helper is an aiohttp TestServer on the peer's loop.
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import hashlib
import json
import logging
import random
import socket
import time
import zlib
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from unittest import mock

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer, make_mocked_request
from nacl.signing import SigningKey
from yarl import URL

from qadom import Config, Peer
from qadom.dhtrecords import (
    CONTROLLED,
    SECURED,
    Entry,
    compress,
    make_entry,
    verify,
)
from qadom.errors import InvalidArgument, InvalidField, InvalidType
from qadom.http import PEER, ROUTES, HttpHelper, Route, key_text, make_app, openapi_document
from qadom.http import _body as read_body
from qadom.namespace import signing_bytes

from helpers import EXAMPLE, FAST, udp_network, wait_until

ALICE = (11).to_bytes(32, "big")
BOB = (12).to_bytes(32, "big")

Client = TestClient[aiohttp.web.Request, aiohttp.web.Application]
Clients = tuple[Client, ...]


def body(secret: bytes, key: str, data: str, mode: str = SECURED,
         exp_time: int | float | None = None) -> dict[str, object]:
    return make_entry(secret, key, data, mode, exp_time, compressed=False).to_json(mode)


@pytest.fixture
async def clients() -> AsyncIterator[Clients]:
    """HTTP helpers on three peers of a five-peer network."""
    async with udp_network(5) as peers:
        made = [TestClient(TestServer(make_app(peer))) for peer in peers[1:4]]
        for client in made:
            await client.start_server()
        try:
            yield tuple(made)
        finally:
            for client in made:
                await client.close()


@pytest.fixture
async def lone() -> AsyncIterator[Client]:
    """An HTTP helper on a peer that knows no other."""
    async with Peer(config=FAST) as peer, TestClient(TestServer(make_app(peer))) as client:
        yield client


def no_error_logged(caplog: pytest.LogCaptureFixture) -> None:
    """Nothing was logged at ERROR or above, and no traceback at any level above DEBUG."""
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.exc_info and r.levelno > logging.DEBUG] == []


async def error_of(response: aiohttp.ClientResponse, status: int,
                   field: str | None = None) -> str:
    assert response.status == status, await response.text()
    assert response.content_type == "application/json"
    answer = await response.json()
    assert isinstance(answer["error"], str) and answer["error"]
    assert answer.get("field") == field
    return str(answer["error"])


# ---------------------------------------------------------------------------- /dht/{key}


async def test_dht_example_post_then_get_through_another_node(clients: Clients) -> None:
    a, b, _ = clients
    response = await a.post("/dht/test_id", json=EXAMPLE)
    assert response.status == 200, await response.text()
    assert (await response.json())["stored"] >= 1
    response = await b.get("/dht/test_id")
    assert response.status == 200
    answer = await response.json()
    assert json.loads(answer["data"]) == EXAMPLE
    assert answer["persist_mode"] == SECURED
    auth = answer["authorization"]
    assert auth["pub_key"]["exp_time"] is None
    node_key = bytes.fromhex(auth["pub_key"]["key"])
    info = await (await b.get("/node")).json()
    assert info["public_key"] == node_key.hex()
    # A client checks the answering node with the very code it signs with.
    entry = Entry(answer["data"], node_key, None, bytes.fromhex(auth["sign"]), compress(node_key))
    assert verify(entry, "test_id", SECURED)
    assert not verify(entry, "other_key", SECURED)


async def test_dht_ownership(clients: Clients) -> None:
    a, b, c = clients
    assert (await a.post("/dht/name", json=body(ALICE, "name", "mine"))).status == 200
    # A forged overwrite through a node that never saw the write: 401, nothing changes.
    await error_of(await c.post("/dht/name", json=body(BOB, "name", "forged")), 401)
    await error_of(await b.post("/dht/name", json=body(ALICE, "name", "x", CONTROLLED)), 401)
    assert json.loads((await (await b.get("/dht/name")).json())["data"])["data"] == "mine"
    # The owner replaces it through any node.
    assert (await c.post("/dht/name", json=body(ALICE, "name", "again"))).status == 200
    assert json.loads((await (await a.get("/dht/name")).json())["data"])["data"] == "again"


async def test_dht_controlled_lists_one_entry_per_key(clients: Clients) -> None:
    a, b, c = clients
    for client, secret, data in ((a, ALICE, "a1"), (b, BOB, "b1"), (c, ALICE, "a2")):
        response = await client.post("/dht/shared", json=body(secret, "shared", data, CONTROLLED))
        assert response.status == 200, await response.text()
    answer = await (await b.get("/dht/shared")).json()
    assert [e["data"] for e in json.loads(answer["data"])] == ["a2", "b1"]
    await error_of(await a.post("/dht/shared", json=body(BOB, "shared", "s")), 401)


async def test_dht_signature_and_expiry(clients: Clients) -> None:
    a, b, _ = clients
    forged = body(ALICE, "k", "v")
    forged["data"] = "changed"
    await error_of(await a.post("/dht/k", json=forged), 401)
    await error_of(await a.post("/dht/k", json=body(ALICE, "k", "v", exp_time=1000)), 401)
    await error_of(await b.get("/dht/k"), 404)
    # Peers' clocks are Unix time: a record with a distant expiry is served, one that expires
    # in a few seconds stops being served (the exact boundary is tested on a virtual clock).
    later = round(time.time() + 3600, 3)
    assert (await a.post("/dht/k", json=body(ALICE, "k", "v", exp_time=later))).status == 200
    served = json.loads((await (await b.get("/dht/k")).json())["data"])
    assert served["authorization"]["pub_key"]["exp_time"] == later
    soon = round(time.time() + 4.0, 3)
    assert (await a.post("/dht/k", json=body(ALICE, "k", "w", exp_time=soon))).status == 200

    async def gone() -> None:
        while (await b.get("/dht/k")).status != 404:
            await asyncio.sleep(0.1)

    await asyncio.wait_for(gone(), 20)
    assert time.time() >= soon - 0.5  # not before its expiry (clocks agree within ms)


@pytest.mark.parametrize(("raw", "field"), [
    (b"not json", "body"),
    (b"[1, 2]", "body"),
    (b'{"data": NaN}', "body"),
    (b"\xff\xfe", "body"),
    (b"[" * 5000, "body"),
    (json.dumps({**EXAMPLE, "data": ""}).encode(), "data"),
    (json.dumps({**EXAMPLE, "data": None}).encode(), "data"),
    (json.dumps({**EXAMPLE, "data": ["x"]}).encode(), "data"),
    (json.dumps({"data": "d", "authorization": EXAMPLE["authorization"]}).encode(),
     "persist_mode"),
    (json.dumps({**EXAMPLE, "persist_mode": "secured"}).encode(), "persist_mode"),
    (json.dumps({"data": "d", "persist_mode": "SECURED"}).encode(), "authorization"),
    (json.dumps({**EXAMPLE, "authorization": {"sign": "00"}}).encode(), "authorization.pub_key"),
    (json.dumps({**EXAMPLE, "authorization": {
        "pub_key": {"key": "xyz", "exp_time": None}, "sign": "00" * 64}}).encode(),
     "authorization.pub_key.key"),
    (json.dumps({**EXAMPLE, "authorization": {
        "pub_key": {"key": "0224" * 2, "exp_time": None}, "sign": "00" * 64}}).encode(),
     "authorization.pub_key.key"),
    (json.dumps({**EXAMPLE, "authorization": {
        **EXAMPLE["authorization"], "sign": "zz" * 64}}).encode(), "authorization.sign"),
    (json.dumps({**EXAMPLE, "authorization": {**EXAMPLE["authorization"], "pub_key": {
        "key": EXAMPLE["authorization"]["pub_key"]["key"], "exp_time": "tomorrow"}}}).encode(),
     "authorization.pub_key.exp_time"),
])
async def test_dht_400_names_the_field(clients: Clients, raw: bytes, field: str) -> None:
    await error_of(await clients[0].post("/dht/test_id", data=raw), 400, field)


async def test_dht_413_and_bad_keys(clients: Clients) -> None:
    a = clients[0]
    limit = FAST.http_max_body_size
    await error_of(await a.post("/dht/k", data=b" " * (limit + 1)), 413)
    big = {**EXAMPLE, "data": "x" * FAST.dht_max_record_size}
    await error_of(await a.post("/dht/k", json=big), 413)
    long_key = "k" * (FAST.dht_max_key_size + 1)
    await error_of(await a.post(f"/dht/{long_key}", json=EXAMPLE), 400, "key")
    await error_of(await a.get(f"/dht/{long_key}"), 400, "key")


# ---------------------------------------------------------------------------- values, entries


async def test_values(clients: Clients) -> None:
    a, b, _ = clients
    value = bytes(range(256)) * 4
    response = await a.post("/values", data=value)
    key = (await response.json())["key"]
    assert key == key_text(int.from_bytes(hashlib.sha256(value).digest(), "big"))
    response = await b.get(f"/values/{key.upper()}")
    assert response.status == 200 and response.content_type == "application/octet-stream"
    assert await response.read() == value
    await error_of(await b.get(f"/values/{'0' * 64}"), 404)
    await error_of(await b.get("/values/123"), 400, "key")
    await error_of(await b.get(f"/values/0x{'0' * 62}"), 400, "key")
    await error_of(await a.post("/values", data=b"x" * (FAST.max_value_size + 1)), 413)


async def test_entries(clients: Clients) -> None:
    a, b, _ = clients
    key = key_text(7)
    for value in (3, 1, 2**255):
        response = await a.post(f"/entries/{key}", json={"value": key_text(value)})
        assert await response.json() == {"key": key, "value": key_text(value)}
    answer = await (await b.get(f"/entries/{key}")).json()
    assert answer == {"key": key, "values": [key_text(v) for v in (1, 3, 2**255)]}
    assert (await (await b.get(f"/entries/{key_text(8)}")).json())["values"] == []
    await error_of(await a.post(f"/entries/{key}", json={"value": 5}), 400, "value")
    await error_of(await a.post(f"/entries/{key}", json=[1]), 400, "body")
    await error_of(await a.post(f"/entries/{key}", data=b"{"), 400, "body")
    await error_of(await a.get("/entries/zz"), 400, "key")


# ---------------------------------------------------------------------------- namespaces


async def test_namespaces(clients: Clients) -> None:
    a, b, _ = clients
    signer = SigningKey((21).to_bytes(32, "big"))
    public = bytes(signer.verify_key)
    key = 99
    url = f"/namespaces/{public.hex()}/{key_text(key)}"

    def write(value: bytes, seq: int) -> dict[str, object]:
        signature = signer.sign(signing_bytes(public, key, seq, value)).signature
        return {"value": base64.b64encode(value).decode(), "signature": signature.hex(),
                "seq": seq}

    await error_of(await b.get(url), 404)
    response = await a.put(url, json=write(b"first", 1))
    assert response.status == 200, await response.text()
    assert (await response.json())["seq"] == 1
    answer = await (await b.get(url)).json()
    assert base64.b64decode(answer["value"]) == b"first" and answer["seq"] == 1
    assert bytes.fromhex(answer["signature"]) == bytes.fromhex(str(write(b"first", 1)["signature"]))
    assert (await a.put(url, json=write(b"second", 2))).status == 200
    await error_of(await b.put(url, json=write(b"old", 1)), 409)
    bad = write(b"third", 3)
    bad["value"] = base64.b64encode(b"other").decode()
    await error_of(await a.put(url, json=bad), 401)
    answer = await (await a.get(url)).json()
    assert base64.b64decode(answer["value"]) == b"second" and answer["seq"] == 2
    await error_of(await a.put(url, json={**write(b"x", 4), "value": "***"}), 400, "value")
    await error_of(await a.put(url, json={**write(b"x", 4), "seq": -1}), 400, "seq")
    await error_of(await a.put(url, json={**write(b"x", 4), "signature": "00"}), 400,
                   "signature")
    await error_of(await a.get(f"/namespaces/{public.hex()[:-2]}/{key_text(key)}"), 400,
                   "public_key")
    too_big = base64.b64encode(b"x" * (FAST.max_value_size + 1)).decode()
    await error_of(await a.put(url, json={**write(b"x", 4), "value": too_big}), 413)


# ---------------------------------------------------------------------------- publish/subscribe


async def read_event(stream: aiohttp.StreamReader) -> dict[str, str]:
    """The next Server-Sent Event (comment lines skipped)."""
    fields: dict[str, str] = {}
    while True:
        line = (await stream.readline()).decode()
        assert line, "the stream ended"
        line = line.rstrip("\n")
        if not line:
            if fields:
                return fields
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(": ")
        fields[name] = value


async def test_publish_and_subscribe_as_server_sent_events(clients: Clients) -> None:
    a, b, _ = clients
    topic = key_text(random.Random(3).getrandbits(256))
    response = await a.get(f"/subscribe/{topic}")
    assert response.status == 200
    assert response.headers["Content-Type"] == "text/event-stream"
    assert await asyncio.wait_for(response.content.readline(), 10) == b": subscribed\n"
    published = await b.post(f"/publish/{topic}", data=b"hello \x00 world")
    assert published.status == 200 and (await published.json())["relays"] >= 1
    event = await asyncio.wait_for(read_event(response.content), 10)
    assert event["event"] == "message" and event["id"] == "1"
    assert base64.b64decode(event["data"]) == b"hello \x00 world"
    response.close()
    await error_of(await a.get("/subscribe/nope"), 400, "key")
    await error_of(await b.post("/publish/nope", data=b"x"), 400, "key")
    await error_of(await b.post(f"/publish/{topic}", data=b"x" * (FAST.max_value_size + 1)), 413)


async def test_a_stream_that_fell_behind_tells_its_client_how_many_messages_it_lost() -> None:
    # Subscriptions keep one message for a slow client; the relays and the subscriber's node let
    # a fast publisher through.
    config = replace(FAST, pubsub_queue_size=1, pubsub_rate=1e6, pubsub_burst=100_000,
                     request_rate=1e6, request_burst=100_000)
    topic = random.Random(8).getrandbits(256)
    async with udp_network(2, config=config) as peers, HttpHelper(peers[0]) as helper:
        assert helper.address is not None
        loop = asyncio.get_running_loop()
        with socket.socket() as sock:
            # A receive window the kernel may not grow, and nobody reading it: the stream's
            # writes soon wait, and the subscription drops what comes meanwhile.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            await asyncio.wait_for(loop.sock_connect(sock, helper.address), 10)
            # HTTP/1.0: the body is the event stream itself, without chunked framing.
            request = f"GET /subscribe/{key_text(topic)} HTTP/1.0\r\n\r\n".encode()
            await loop.sock_sendall(sock, request)
            received = b""
            while b": subscribed\n\n" not in received:
                chunk = await asyncio.wait_for(loop.sock_recv(sock, 4096), 10)
                assert chunk, received
                received += chunk
            head, _, stream = received.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == b"200" and stream == b": subscribed\n\n", received
            published: list[bytes] = []
            stalled = None  # how many had been published when the first was dropped
            while stalled is None or len(published) < stalled + 5:  # and a few more
                assert len(published) < 2000, "the stream never stalled"
                value = len(published).to_bytes(4, "big") * 2048  # 8192 bytes, each its own
                assert await asyncio.wait_for(peers[1].publish(topic, value), 10) >= 1
                published.append(value)
                if stalled is None and peers[0].node.stats["pubsub_dropped"]:
                    stalled = len(published)
            # Each message has reached the subscription (to be queued or dropped) before this.
            await wait_until(lambda: peers[0].node.stats["pubsub_received"] == len(published))
            dropped = peers[0].node.stats["pubsub_dropped"]
            # Now read every message that was not dropped.
            events: list[dict[str, str]] = []
            stream = b""

            async def read_all() -> None:
                nonlocal stream
                while sum(e["event"] == "message" for e in events) < len(published) - dropped:
                    chunk = await loop.sock_recv(sock, 65536)
                    assert chunk, "the stream ended"
                    stream += chunk
                    *blocks, stream = stream.split(b"\n\n")
                    events.extend(dict(line.split(": ", 1) for line in block.decode().split("\n"))
                                  for block in blocks if not block.startswith(b":"))

            await asyncio.wait_for(read_all(), 30)
    assert stream == b"" and peers[0].node.stats["pubsub_dropped"] == dropped
    messages = [e for e in events if e["event"] == "message"]
    assert sum(int(e["data"]) for e in events if e["event"] == "dropped") == dropped >= 5
    assert {e["event"] for e in events} == {"message", "dropped"}
    # The ids number the messages sent; a dropped event has none, and a message follows it.
    assert [e["id"] for e in messages] == [str(i) for i in range(1, len(messages) + 1)]
    assert all(set(e) == {"event", "data"} for e in events if e["event"] == "dropped")
    assert events[-1]["event"] == "message"
    # Sent in order; the lost ones, in the order they were lost, are newer than every message
    # sent before the event that counts them.
    sent = [base64.b64decode(e["data"]) for e in messages]
    lost = [value for value in published if value not in sent]
    assert [value for value in published if value in sent] == sent
    before: list[bytes] = []
    for event in events:
        if event["event"] == "message":
            before.append(base64.b64decode(event["data"]))
            continue
        counted, lost = lost[:int(event["data"])], lost[int(event["data"]):]
        assert max((published.index(v) for v in before), default=-1) < min(
            published.index(v) for v in counted)
    assert lost == []


async def test_stream_limit_gives_503() -> None:
    async with Peer(config=replace(FAST, http_max_subscriptions=0)) as peer, TestClient(
            TestServer(make_app(peer))) as client:
        await error_of(await client.get(f"/subscribe/{key_text(1)}"), 503)


# ---------------------------------------------------------------------------- node and network


async def test_node_table_stats_and_closest(clients: Clients) -> None:
    a = clients[0]
    info = await (await a.get("/node")).json()
    assert set(info) == {"id", "host", "port", "version", "contacts", "public_key", "running"}
    assert len(info["id"]) == 64 and info["contacts"] == 4
    table = await (await a.get("/routing-table")).json()
    assert table["id"] == info["id"] and table["size"] == 4
    assert sum(len(b["contacts"]) for b in table["buckets"]) == 4
    stats = await (await a.get("/stats")).json()
    assert stats["node"]["datagrams_in"] > 0 and "records" in stats["store"]
    closest = await (await a.get(f"/closest/{info['id']}")).json()
    assert len(closest["contacts"]) == 4 and info["id"] not in [c["id"] for c in
                                                                  closest["contacts"]]
    await error_of(await a.get("/closest/g"), 400, "key")


async def test_ping_bootstrap_refresh(clients: Clients) -> None:
    a, b, _ = clients
    other = await (await b.get("/node")).json()
    contact = await (await a.post("/ping", json={"host": "127.0.0.1",
                                                 "port": other["port"]})).json()
    assert contact == {"id": other["id"], "host": "127.0.0.1", "port": other["port"]}
    joined = await a.post("/bootstrap", json={"addresses": [{"host": "127.0.0.1",
                                                             "port": other["port"]}]})
    assert (await joined.json())["contacts"] >= 1
    assert (await (await a.post("/refresh")).json())["contacts"] >= 1
    assert (await a.post("/refresh", json={"all_buckets": True})).status == 200
    await error_of(await a.post("/refresh", json={"all_buckets": "yes"}), 400, "all_buckets")
    await error_of(await a.post("/ping", json={"host": "localhost", "port": 1}), 400,
                   "host")
    await error_of(await a.post("/ping", json={"host": "127.0.0.1", "port": 0}), 400,
                   "port")
    await error_of(await a.post("/bootstrap", json={"addresses": []}), 400, "addresses")
    await error_of(await a.post("/bootstrap", json={"addresses": [{"host": "::1"}]}), 400,
                   "addresses[0].port")


async def test_bootstrap_address_limit_comes_from_config() -> None:
    config = replace(FAST, http_max_bootstrap_addresses=2)
    async with Peer(config=config) as peer, TestClient(TestServer(make_app(peer))) as client:
        three = [{"host": "127.0.0.1", "port": port} for port in (1, 2, 3)]
        message = await error_of(await client.post("/bootstrap", json={"addresses": three}),
                                 400, "addresses")
        assert "at most 2" in message
        schema = (await (await client.get("/openapi.json")).json())["components"]["schemas"]
        assert schema["Bootstrap"]["properties"]["addresses"]["maxItems"] == 2
        assert peer.stats.get("requests_out", 0) == 0  # the refused request sent nothing


async def test_unanswered_network_operations_give_502_and_504() -> None:
    async with Peer(config=FAST) as peer, TestClient(TestServer(make_app(peer))) as client:
        silent = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
        try:
            port = silent[0].get_extra_info("sockname")[1]
            await error_of(await client.post("/ping", json={"host": "127.0.0.1", "port": port}),
                           504)
            await error_of(await client.post("/bootstrap", json={
                "addresses": [{"host": "127.0.0.1", "port": port}]}), 502)
            # Alone, a subscription finds no relay.
            await error_of(await client.get(f"/subscribe/{key_text(5)}"), 502)
        finally:
            silent[0].close()


async def test_closed_peer_gives_503() -> None:
    peer = Peer(config=FAST)
    await peer.start()
    async with TestClient(TestServer(make_app(peer))) as client:
        await peer.close()
        await error_of(await client.get(f"/values/{key_text(1)}"), 503)
        await error_of(await client.post("/values", data=b"x"), 503)
        assert (await (await client.get("/node")).json())["running"] is False


async def test_unknown_routes_and_methods_answer_json(clients: Clients) -> None:
    a = clients[0]
    await error_of(await a.get("/nowhere"), 404)
    response = await a.delete("/values")
    await error_of(response, 405)
    assert "POST" in response.headers["Allow"]


async def test_openapi_lists_every_route(clients: Clients) -> None:
    document = await (await clients[0].get("/openapi.json")).json()
    assert document["openapi"].startswith("3.")
    routes = {(method.upper(), path) for path, item in document["paths"].items()
              for method in item}
    app_routes = {(r.method, r.resource.canonical) for r in clients[0].app.router.routes()
                  if r.method != "HEAD" and r.resource is not None}
    assert routes == app_routes


# ---------------------------------------------------------------------------- the helper itself


async def test_helper_on_a_real_port_closes_with_open_streams() -> None:
    async with udp_network(2, config=Config(rpc_timeout=0.5, rpc_timeout_min=0.25,
                                            rpc_timeout_max=1.0)) as peers:
        helper = HttpHelper(peers[0], "127.0.0.1", 0)
        await helper.start()
        assert helper.address is not None
        host, port = helper.address
        try:
            async with aiohttp.ClientSession() as session:
                async with session.get(f"http://{host}:{port}/node") as response:
                    assert (await response.json())["id"] == key_text(peers[0].id)
                stream = await session.get(f"http://{host}:{port}/subscribe/{key_text(9)}")
                assert await asyncio.wait_for(stream.content.readline(), 10) == b": subscribed\n"
                # Closing ends the open stream rather than waiting on it.
                await asyncio.wait_for(helper.close(), 5)
                # read() returns at the end of the stream: only the blank line after the comment.
                assert await asyncio.wait_for(stream.content.read(), 5) == b"\n"
                stream.close()
        finally:
            await helper.close()


@pytest.mark.parametrize(("host", "port", "error"), [
    ("127.0.0.1", "0", InvalidType),  # a str port used to be bound ("80": port 80)
    ("127.0.0.1", False, InvalidType),  # a bool too (True: port 1)
    ("127.0.0.1", 0.0, InvalidType),
    ("127.0.0.1", -1, InvalidArgument),  # OverflowError from bind()
    ("127.0.0.1", 65536, InvalidArgument),
    (5, 0, InvalidType),  # TypeError from aiohttp
    ("127.0.0.1\x00", 0, InvalidArgument),  # ValueError from the resolver
    ("fe80::1%no such interface", 0, InvalidArgument),
])
async def test_the_helper_s_host_and_port_are_checked_before_anything_is_bound(
        host: object, port: object, error: type[Exception]) -> None:
    async with Peer(config=FAST) as peer:
        with pytest.raises(error):
            helper = HttpHelper(peer, host, port)  # type: ignore[arg-type]
            try:
                await asyncio.wait_for(helper.start(), 10)
            finally:
                await helper.close()


async def test_the_helper_serves_a_peer_and_nothing_else() -> None:
    with pytest.raises(InvalidType, match="Peer"):
        HttpHelper("127.0.0.1:9999")  # type: ignore[arg-type]


async def test_a_client_hanging_up_ends_its_stream() -> None:
    async with udp_network(2) as peers, HttpHelper(peers[0]) as helper:
        assert helper.address is not None
        url = f"http://{helper.address[0]}:{helper.address[1]}/subscribe/{key_text(4)}"
        async with aiohttp.ClientSession() as session:
            for _ in range(3):
                stream = await session.get(url)
                assert await asyncio.wait_for(stream.content.readline(), 10) == b": subscribed\n"
                assert helper.open_streams == 1
                stream.close()  # drops the connection
                await wait_until(lambda: helper.open_streams == 0, 10)
        assert peers[0].node.stats["internal_errors"] == 0


async def test_publishing_too_fast_gives_429() -> None:
    config = replace(FAST, pubsub_rate=0.01, pubsub_burst=1)
    async with udp_network(2, config=config) as peers, TestClient(
            TestServer(make_app(peers[0]))) as client:
        url = f"/publish/{key_text(6)}"
        assert (await client.post(url, data=b"first")).status == 200
        await error_of(await client.post(url, data=b"second"), 429)


async def test_a_subscription_every_relay_refused_for_our_rate_gives_429() -> None:
    async with Peer(config=FAST) as peer, Peer(config=replace(
            FAST, request_burst=2, request_rate=0.01)) as relay, TestClient(
            TestServer(make_app(peer))) as client:
        # The relay's burst is spent here: the first ping, unproven, brings its token; the
        # second spends the budget of the proven requests that follow (counted apart).
        await asyncio.wait_for(peer.ping(relay.address), 10)
        await asyncio.wait_for(peer.ping(relay.address), 10)
        response = await client.get(f"/subscribe/{key_text(6)}")
        assert "slow down" in await error_of(response, 429)
        documented = openapi_document(FAST)["paths"]["/subscribe/{key}"]["get"]["responses"]
        assert "429" in documented


async def test_forget(clients: Clients) -> None:
    a, b, _ = clients
    key = (await (await a.post("/values", data=b"published here")).json())["key"]
    assert await (await a.post(f"/forget/{key}")).json() == {"key": key, "forgotten": True}
    assert (await (await a.post(f"/forget/{key}")).json())["forgotten"] is False
    assert (await (await b.post(f"/forget/{key}")).json())["forgotten"] is False  # not b's
    await error_of(await a.post("/forget/1"), 400, "key")


async def test_forget_namespace_and_dht_records(clients: Clients) -> None:
    a, b, _ = clients
    signer = SigningKey((23).to_bytes(32, "big"))
    public = bytes(signer.verify_key)
    value, seq = b"renewed by a", 1
    signature = signer.sign(signing_bytes(public, 7, seq, value)).signature
    url = f"/namespaces/{public.hex()}/{key_text(7)}"
    assert (await a.put(url, json={"value": base64.b64encode(value).decode(),
                                   "signature": signature.hex(), "seq": seq})).status == 200
    forgotten = await (await a.post(f"{url}/forget")).json()
    assert forgotten == {"public_key": public.hex(), "key": key_text(7), "forgotten": True}
    assert (await (await a.post(f"{url}/forget")).json())["forgotten"] is False
    assert (await (await b.post(f"{url}/forget")).json())["forgotten"] is False  # not b's
    await error_of(await a.post(f"/namespaces/00/{key_text(7)}/forget"), 400, "public_key")
    # The record is still served: forgetting only stops this node's renewals.
    assert (await b.get(url)).status == 200
    assert (await a.post("/dht/forget_me", json=body(ALICE, "forget_me", "v"))).status == 200
    assert await (await a.post("/dht/forget_me/forget")).json() == {
        "key": "forget_me", "forgotten": True}
    assert (await (await a.post("/dht/forget_me/forget")).json())["forgotten"] is False
    assert (await (await b.post("/dht/never_written/forget")).json())["forgotten"] is False


async def test_bootstrap_without_addresses_rejoins_through_saved_contacts(
        tmp_path: Path) -> None:
    async with udp_network(2) as peers:
        durable = Peer(config=FAST, data_dir=tmp_path / "node")
        await durable.start()
        try:
            async with TestClient(TestServer(make_app(durable))) as client:
                # Nothing saved yet: a usage error.
                await error_of(await client.post("/bootstrap"), 400)
                await durable.bootstrap([peers[0].address])
                await durable.close()
                again = Peer(config=FAST, data_dir=tmp_path / "node")
                await again.start()
                try:
                    async with TestClient(TestServer(make_app(again))) as rejoined:
                        assert again.saved_contacts()
                        response = await rejoined.post("/bootstrap", json={})
                        assert response.status == 200, await response.text()
                        assert (await response.json())["contacts"] >= 1
                finally:
                    await again.close()
        finally:
            await durable.close()


# ---------------------------------------------------------------------------- request bodies

# Every route that reads a body, with a valid body for it (64 hex digits where a key goes).
NS_PUBLIC = bytes(SigningKey((31).to_bytes(32, "big")).verify_key).hex()
BODY_ROUTES = [
    ("POST", "/values", b"some value"),
    ("POST", f"/entries/{key_text(1)}", json.dumps({"value": key_text(2)}).encode()),
    ("POST", "/dht/test_id", json.dumps(EXAMPLE).encode()),
    ("POST", "/ping", b'{"host": "127.0.0.1", "port": 9}'),
    ("POST", f"/publish/{key_text(3)}", b"a message"),
    ("PUT", f"/namespaces/{NS_PUBLIC}/{key_text(4)}",
     b'{"value": "aGVsbG8=", "signature": "' + b"00" * 64 + b'"}'),
    ("POST", "/bootstrap", b"{}"),
    ("POST", "/refresh", b"{}"),
]


@pytest.mark.parametrize(("method", "path", "valid"), BODY_ROUTES)
@pytest.mark.parametrize("coding", ["gzip", "x-gzip", "deflate"])
async def test_a_body_that_does_not_decode_is_a_json_400_and_stores_nothing(
        lone: Client, caplog: pytest.LogCaptureFixture, method: str, path: str, valid: bytes,
        coding: str) -> None:
    peer = lone.app[PEER]
    before = peer.node.store.stats()
    for sent in (b"abc", gzip.compress(valid)[:-5], zlib.compress(valid) + b"x"):
        if coding == "deflate" and sent[:2] == b"\x1f\x8b":
            continue  # a truncated gzip stream may read as the start of raw deflate data
        response = await lone.request(method, path, data=sent,
                                      headers={"Content-Encoding": coding})
        message = await error_of(response, 400, "body")
        assert coding in message or "could not" in message
    assert peer.node.store.stats() == before
    assert peer.stats.get("requests_out", 0) == 0  # nothing was sent either
    no_error_logged(caplog)


@pytest.mark.parametrize(("method", "path", "valid"), BODY_ROUTES)
@pytest.mark.parametrize("coding", ["br", "zstd", "compress", "gzip, gzip, gzip"])
async def test_a_content_encoding_not_decoded_here_is_a_json_400(
        lone: Client, caplog: pytest.LogCaptureFixture, method: str, path: str, valid: bytes,
        coding: str) -> None:
    response = await lone.request(method, path, data=valid, headers={"Content-Encoding": coding})
    message = await error_of(response, 400, "Content-Encoding")
    assert "not supported" in message or "at most" in message
    no_error_logged(caplog)


async def test_gzip_and_deflate_bodies_are_decoded(lone: Client) -> None:
    value = b"compressed \x00 value " * 50
    key = key_text(int.from_bytes(hashlib.sha256(value).digest(), "big"))
    raw_deflate = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    for coding, sent in [
            ("gzip", gzip.compress(value)),
            ("x-gzip", gzip.compress(value[:10]) + gzip.compress(value[10:])),  # two members
            ("deflate", zlib.compress(value)),
            ("deflate", raw_deflate.compress(value) + raw_deflate.flush()),
            ("identity, gzip", gzip.compress(value)),
            ("gzip, deflate", zlib.compress(gzip.compress(value))),
            ("GZIP", gzip.compress(value))]:
        response = await lone.post("/values", data=sent, headers={"Content-Encoding": coding})
        assert response.status == 200, (coding, await response.text())
        assert await response.json() == {"key": key}
    assert await (await lone.get(f"/values/{key}")).read() == value
    entry = gzip.compress(json.dumps({"value": key_text(9)}).encode())
    response = await lone.post(f"/entries/{key_text(8)}", data=entry,
                               headers={"Content-Encoding": "gzip"})
    assert response.status == 200, await response.text()


async def test_a_compression_bomb_is_413_after_inflating_at_most_the_limit(
        lone: Client, caplog: pytest.LogCaptureFixture) -> None:
    limit = FAST.http_max_body_size
    bomb = gzip.compress(b"\x00" * 50_000_000)  # 50 MB in about 50 KB: over the raw limit too
    await error_of(await lone.post("/values", data=bomb, headers={"Content-Encoding": "gzip"}),
                   413)
    small_bomb = gzip.compress(b"{" + b" " * limit + b"}")  # a few dozen bytes sent
    assert len(small_bomb) < 100
    for path in ("/refresh", "/bootstrap", "/ping"):
        await error_of(await lone.post(path, data=small_bomb,
                                       headers={"Content-Encoding": "gzip"}), 413)
    # Exactly at the limit once decoded: read (and then refused as JSON for what it says).
    at_limit = gzip.compress(b"{" + b" " * (limit - 2) + b"}")
    assert (await lone.post("/refresh", data=at_limit,
                            headers={"Content-Encoding": "gzip"})).status == 200
    no_error_logged(caplog)


async def raw_exchange(client: Client, *parts: bytes, wait_for: bytes | None = None) -> bytes:
    """Send ``parts`` on a fresh connection to the helper and read until it closes (bounded).
    With ``wait_for``, the parts after the first go only once the helper sent that line (an
    interim ``100 Continue``): the body then reaches a handler already reading it."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(parts[0])
        if wait_for is not None:
            line = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            assert line.startswith(wait_for), line
        for part in parts[1:]:
            writer.write(part)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def request_head(method: str, path: str, *headers: str) -> bytes:
    return "\r\n".join([f"{method} {path} HTTP/1.1", "Host: x", "Connection: close", *headers,
                        "", ""]).encode()


@pytest.mark.parametrize(("parts", "wait_for"), [
    ((b"GARBAGE / HTTP/1.1\r\n\r\n",), None),  # a bad method in the first request line
    ((request_head("GET", "/node").replace(b"Connection: close", b"Connection: keep-alive"),
      b"GARBAGE / HTTP/1.1\r\n\r\n"), b"HTTP/1.1 200 OK"),  # ... in the second
    ((request_head("GET", "/node").replace(b"HTTP/1.1", b"HTTP/9.9", 1),), None),
    ((request_head("GET", "/" + "a" * 9000),), None),  # a URL over 8190 bytes
    ((request_head("GET", "/node", "X-Long: " + "a" * 9000),), None),  # a header line too
    ((request_head("POST", "/values", "Content-Length: -1"),), None),
    ((request_head("POST", "/values", "Content-Length: 1", "Content-Length: 2") + b"ab",), None),
    ((request_head("POST", "/values", "Transfer-Encoding: chunked, gzip"),), None),
], ids=["method", "second-request-line", "version", "url", "header", "negative-length",
        "two-lengths", "chunked-not-last"])
async def test_a_request_aiohttp_cannot_parse_is_a_400_without_an_error_traceback(
        lone: Client, caplog: pytest.LogCaptureFixture, parts: tuple[bytes, ...],
        wait_for: bytes | None) -> None:
    caplog.set_level(logging.DEBUG, logger="qadom.http.server")
    answer = await raw_exchange(lone, *parts, wait_for=wait_for)
    # aiohttp answers these itself, in plain text (no hook lets an application change that
    # answer); what the helper guarantees is a 400 and a log free of ERROR tracebacks.
    assert b"HTTP/1.0 400 " in answer or b"HTTP/1.1 400 " in answer, answer[:200]
    no_error_logged(caplog)
    assert [r for r in caplog.records if r.name == "qadom.http.server"], caplog.records
    # The helper goes on serving.
    assert (await lone.get("/node")).status == 200


def chunked(body: bytes) -> bytes:
    return b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


@pytest.mark.parametrize(("method", "path", "valid"), BODY_ROUTES)
@pytest.mark.parametrize("coding", ["gzip, chunked", "x-gzip,chunked", "compress, chunked",
                                    "deflate, identity, chunked"])
async def test_a_transfer_coding_other_than_chunked_is_a_json_400_and_stores_nothing(
        lone: Client, caplog: pytest.LogCaptureFixture, method: str, path: str, valid: bytes,
        coding: str) -> None:
    """aiohttp reads the chunks and leaves a transfer coding before them undone: ``POST
    /values`` used to store the still-compressed bytes under their own hash."""
    peer = lone.app[PEER]
    before = peer.node.store.stats()
    answer = await raw_exchange(lone, request_head(method, path, f"Transfer-Encoding: {coding}")
                                + chunked(gzip.compress(valid)))
    head, _, sent = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400 ") and b"application/json" in head, answer[:300]
    refusal = json.loads(sent)
    assert refusal["field"] == "Transfer-Encoding" and "not supported" in refusal["error"]
    assert peer.node.store.stats() == before
    assert peer.stats.get("requests_out", 0) == 0
    no_error_logged(caplog)


async def test_a_chunked_body_is_read_as_sent(lone: Client) -> None:
    for coding in ("chunked", "identity, chunked", "Chunked"):
        answer = await raw_exchange(lone, request_head("POST", "/values",
                                                       f"Transfer-Encoding: {coding}")
                                    + chunked(b"hello"))
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        assert key_text(int.from_bytes(hashlib.sha256(b"hello").digest(), "big")).encode() \
            in answer


async def test_a_json_object_with_a_member_twice_is_a_400_naming_the_body_and_stores_nothing(
        lone: Client, caplog: pytest.LogCaptureFixture) -> None:
    """JSON leaves a repeated member name undefined: ``json`` kept the last, where a proxy or a
    logging layer may show the first, so one request meant two things."""
    peer = lone.app[PEER]
    signed = json.dumps(body(ALICE, "twice", "signed"))
    public = SigningKey(ALICE)
    value = b"v"
    signature = public.sign(signing_bytes(bytes(public.verify_key), 4, 1, value)).signature.hex()
    namespace = f"/namespaces/{bytes(public.verify_key).hex()}/{key_text(4)}"
    sent = [
        ("POST", f"/entries/{key_text(1)}",
         f'{{"value": "{key_text(2)}", "value": "{key_text(3)}"}}'),
        ("POST", "/dht/twice", '{"data": "shown", ' + signed[1:]),  # the last data is signed
        ("POST", "/dht/twice", signed.replace('"exp_time": null', '"exp_time": 1, '
                                              '"exp_time": null')),
        ("PUT", namespace, f'{{"value": "aGk=", "signature": "{signature}", "seq": 9, '
                           f'"seq": 1, "value": "{base64.b64encode(value).decode()}"}}'),
        ("POST", "/ping", '{"host": "127.0.0.1", "port": 9, "port": 10}'),
        ("POST", "/refresh", '{"all_buckets": true, "all_buckets": false}'),
        ("POST", "/bootstrap", '{"addresses": [{"host": "127.0.0.1", "host": "127.0.0.2", '
                               '"port": 9}]}'),
    ]
    before = peer.node.store.stats()
    for method, path, text in sent:
        assert json.loads(text)  # valid for json.loads, which keeps the last
        response = await lone.request(method, path, data=text.encode())
        assert "twice" in await error_of(response, 400, "body"), (method, path)
    assert peer.node.store.stats() == before
    assert peer.stats.get("requests_out", 0) == 0
    no_error_logged(caplog)
    # The same bodies, each name once, are taken.
    assert (await lone.post("/dht/twice", data=signed.encode())).status == 200
    response = await lone.put(namespace, json={"value": base64.b64encode(value).decode(),
                                               "signature": signature, "seq": 1})
    assert response.status == 200, await response.text()


@pytest.mark.parametrize(("method", "path", "valid"), [*BODY_ROUTES, ("GET", "/node", b"")])
async def test_an_expectation_other_than_100_continue_is_a_json_400_naming_expect(
        lone: Client, caplog: pytest.LogCaptureFixture, method: str, path: str,
        valid: bytes) -> None:
    peer = lone.app[PEER]
    before = peer.node.store.stats()
    response = await lone.request(method, path, data=valid, headers={"Expect": "200-ok"})
    assert "200-ok" in await error_of(response, 400, "Expect")
    assert peer.node.store.stats() == before
    assert peer.stats.get("requests_out", 0) == 0
    no_error_logged(caplog)


def _concrete(path: str) -> str:
    """A path of :data:`ROUTES` with its parameters filled in."""
    return (path.replace("{public_key}", NS_PUBLIC).replace("/dht/{key}", "/dht/x")
            .replace("{key}", key_text(5)))


@pytest.mark.parametrize("route", ROUTES, ids=lambda r: f"{r.method} {r.path}")
async def test_what_an_expect_header_answers_on_any_route_is_in_its_document(
        lone: Client, route: Route) -> None:
    documented = openapi_document(FAST)["paths"][route.path][route.method.lower()]["responses"]
    path = _concrete(route.path)
    answer = await raw_exchange(lone, request_head(route.method, path, "Expect: 200-ok",
                                                   "Content-Length: 0"))
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]
    assert b'"field": "Expect"' in answer
    over = FAST.http_max_body_size + 1
    head = request_head(route.method, path, f"Content-Length: {over}", "Expect: 100-continue")
    reader, writer = await asyncio.open_connection(lone.server.host, lone.server.port)
    try:
        writer.write(head)  # the body is never sent: the client waits for 100 Continue
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert status.startswith(b"HTTP/1.1 413 "), status
    finally:
        writer.close()
    assert {"400", "413"} <= set(documented), sorted(documented)


async def test_100_continue_is_refused_with_a_json_413_before_an_oversized_body_is_sent(
        lone: Client) -> None:
    limit = FAST.http_max_body_size
    head = request_head("POST", "/values", f"Content-Length: {limit + 1}",
                        "Expect: 100-continue")
    reader, writer = await asyncio.open_connection(lone.server.host, lone.server.port)
    try:
        writer.write(head)  # the body is never sent: the client waits for 100 Continue
        status = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert status.startswith(b"HTTP/1.1 413 "), status
        assert b"application/json" in status and b"Connection: close" in status
        length = int(status.split(b"Content-Length: ")[1].split(b"\r\n")[0])
        body = json.loads(await asyncio.wait_for(reader.readexactly(length), 10))
        assert f"{limit}-byte limit" in body["error"]
    finally:
        writer.close()
    # Within the limit, the client is asked for its body, and the value is stored.
    head = request_head("POST", "/values", "Content-Length: 5", "Expect: 100-continue")
    answer = await raw_exchange(lone, head, b"hello", wait_for=b"HTTP/1.1 100 Continue")
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
    assert key_text(int.from_bytes(hashlib.sha256(b"hello").digest(), "big")).encode() in answer


async def test_a_body_that_cannot_be_read_is_a_400_naming_the_body(lone: Client) -> None:
    # aiohttp's pure-Python parser reports a malformed chunk as an error of the body being read
    # (its C parser drops the body instead: the handler then waits until the client hangs up).
    payload = aiohttp.StreamReader(mock.Mock(), 2**16, loop=asyncio.get_running_loop())
    payload.set_exception(aiohttp.web.RequestPayloadError("malformed chunk"))
    request = make_mocked_request("POST", "/values", payload=payload, app=lone.app)
    with pytest.raises(InvalidField) as refused:
        await read_body(request)
    assert refused.value.field == "body"


# ---------------------------------------------------------------------------- HEAD


async def test_head_answers_like_get_without_a_body(clients: Clients) -> None:
    a, b, _ = clients
    key = (await (await a.post("/values", data=b"headed")).json())["key"]
    for path in ("/node", "/routing-table", "/stats", "/openapi.json", f"/values/{key}",
                 f"/entries/{key}", f"/closest/{key}", f"/dht/{'x' * 3}"):
        got, head = await b.get(path), await b.head(path)
        assert head.status == got.status, path
        assert head.headers["Content-Type"] == got.headers["Content-Type"], path
        assert await head.read() == b"", path
    head = await b.head(f"/values/{key}")
    assert head.headers["Content-Length"] == str(len(b"headed"))
    for path, status in ((f"/values/{'0' * 64}", 404), ("/values/zz", 400)):
        head = await b.head(path)
        assert head.status == status and head.content_type == "application/json"
        assert await head.read() == b""
    response = await a.delete("/node")
    await error_of(response, 405)
    assert {m.strip() for m in response.headers["Allow"].split(",")} == {"GET", "HEAD"}


async def test_head_on_an_event_stream_answers_its_status_and_unsubscribes(
        clients: Clients, lone: Client) -> None:
    a = clients[0]
    topic = random.Random(8).getrandbits(256)
    head = await asyncio.wait_for(a.head(f"/subscribe/{key_text(topic)}"), 10)
    assert head.status == 200 and head.headers["Content-Type"] == "text/event-stream"
    assert await head.read() == b""
    assert a.app[PEER].node.pubsub.relays_of(topic) == []  # the subscription is gone
    head = await lone.head(f"/subscribe/{key_text(topic)}")
    assert head.status == 502 and await head.read() == b""


# ---------------------------------------------------------------------------- addresses


async def test_an_address_of_the_other_ip_family_is_a_400_naming_the_host(lone: Client) -> None:
    message = await error_of(await lone.post("/ping", json={"host": "::1", "port": 21001}), 400,
                             "host")
    assert "IPv6" in message and "IPv4" in message
    three = [{"host": "127.0.0.1", "port": 21000}, {"host": "::ffff:127.0.0.1", "port": 21001}]
    message = await error_of(await lone.post("/bootstrap", json={"addresses": three}), 400,
                             "addresses[1].host")
    assert "IPv6" in message
    # An IPv6 zone that names no interface is not an address (the codec's rule too).
    await error_of(await lone.post("/ping", json={"host": "fe80::1%\u0000", "port": 21001}),
                   400, "host")
    assert lone.app[PEER].stats.get("requests_out", 0) == 0  # nothing was sent


async def test_bootstrap_without_addresses_rejoins_a_memory_node_through_its_last_contacts(
        ) -> None:
    async with udp_network(2) as peers, TestClient(TestServer(make_app(peers[1]))) as joined, \
            Peer(config=FAST) as fresh, TestClient(TestServer(make_app(fresh))) as never:
        assert peers[1].data_dir is None
        response = await joined.post("/bootstrap")
        assert response.status == 200, await response.text()
        assert (await response.json())["contacts"] >= 1
        await error_of(await never.post("/bootstrap"), 400)


async def test_closest_answers_the_lookup_s_nodes_closest_first_never_itself(
        clients: Clients) -> None:
    a = clients[0]
    info = await (await a.get("/node")).json()
    own = int(info["id"], 16)
    answer = await (await a.get(f"/closest/{info['id']}")).json()  # this node is the closest
    ids = [int(c["id"], 16) for c in answer["contacts"]]
    assert own not in ids and ids == sorted(ids, key=lambda i: i ^ own) and len(ids) == 4


# ---------------------------------------------------------------------------- /dht keys


async def test_dht_keys_are_percent_decoded_path_segments(clients: Clients) -> None:
    a, b, _ = clients
    for key, url in (("a/b", "/dht/a%2Fb"), (".", "/dht/%2E"), ("..", "/dht/%2E%2E"),
                     ("a b%", "/dht/a%20b%25")):
        path = URL(url, encoded=True)  # as sent: no client-side normalisation
        response = await a.post(path, json=body(ALICE, key, f"data of {key}"))
        assert response.status == 200, (key, await response.text())
        assert (await response.json())["key"] == key
        answer = await (await b.get(path)).json()
        assert json.loads(answer["data"])["data"] == f"data of {key}"
        forgotten = await (await a.post(URL(f"{url}/forget", encoded=True))).json()
        assert forgotten == {"key": key, "forgotten": True}


@pytest.mark.parametrize("segment", ["%FF", "a%C3", "%ED%A0%80", "100%", "%2", "%G1", "a%%20"])
async def test_a_dht_key_that_is_not_percent_encoded_utf8_is_a_400_naming_the_key(
        lone: Client, segment: str) -> None:
    peer = lone.app[PEER]
    before = peer.node.store.stats()
    for method, url in (("POST", f"/dht/{segment}"), ("GET", f"/dht/{segment}"),
                        ("POST", f"/dht/{segment}/forget")):
        response = await lone.request(method, URL(url, encoded=True), json=EXAMPLE)
        assert "percent-encoded UTF-8" in await error_of(response, 400, "key"), (method, url)
    assert peer.node.store.stats() == before
    # Its valid spelling reaches the key it decodes to, "%FF" written %25FF among them.
    for key, url in (("%FF", "/dht/%25FF"), ("100%", "/dht/100%25"), ("é", "/dht/%c3%a9")):
        response = await lone.post(URL(url, encoded=True), json=body(ALICE, key, "data"))
        assert response.status == 200, await response.text()
        assert (await response.json())["key"] == key


# ---------------------------------------------------------------------------- publish


async def test_a_lone_node_has_no_relay_to_publish_or_subscribe_through(lone: Client) -> None:
    topic = key_text(12)
    published = await error_of(await lone.post(f"/publish/{topic}", data=b"to nobody"), 502)
    subscribed = await error_of(await lone.get(f"/subscribe/{topic}"), 502)
    assert "no peer known to relay" in published and "no peer known to relay" in subscribed


async def test_closest_that_nobody_answered_fails_as_a_read_does() -> None:
    """502 on a node that knows no other; 504 when every peer it knows is silent (one that has
    closed: its port answers nothing)."""
    async with Peer(config=FAST) as peer, TestClient(TestServer(make_app(peer))) as client:
        await error_of(await client.get(f"/closest/{key_text(7)}"), 502)
        async with Peer(config=FAST) as gone:
            await peer.ping(gone.address)
        assert len(peer.node.table) == 1
        await error_of(await client.get(f"/closest/{key_text(7)}"), 504)
