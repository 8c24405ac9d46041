"""Clients that hang up or dawdle: the HTTP helper logs no error for a client's fault, and a body
that does not arrive in time is a JSON 408 that closes the connection (Config.http_body_timeout).
Real sockets on 127.0.0.1, port 0."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket

import aiohttp
import pytest

from qadom import Peer
from qadom.http import HttpHelper, openapi_document

from helpers import FAST, wait_until


async def test_a_client_that_asks_for_100_continue_and_hangs_up_logs_no_error(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with Peer("127.0.0.1", 0, config=FAST) as peer, \
            HttpHelper(peer, "127.0.0.1", 0) as http:
        assert http.address is not None
        head = (b"POST /values HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n"
                b"Expect: 100-continue\r\n\r\n")
        for _ in range(20):
            with socket.create_connection(http.address) as sock:
                sock.sendall(head)
                sock.shutdown(socket.SHUT_WR)
        host, port = http.address
        async with aiohttp.ClientSession() as session, \
                session.get(f"http://{host}:{port}/node") as response:
            assert response.status == 200  # the helper goes on serving
        # Every hang-up handled: the server holds none of their connections any more.
        runner = http._runner
        assert runner is not None and runner.server is not None
        server = runner.server
        await wait_until(lambda: not server.connections, 10)
    errors = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [], [r.getMessage() for r in errors]


async def test_a_body_that_does_not_arrive_in_time_is_a_json_408_and_the_connection_closes(
        ) -> None:
    config = dataclasses.replace(FAST, http_body_timeout=0.3)
    async with Peer("127.0.0.1", 0, config=config) as peer, \
            HttpHelper(peer, "127.0.0.1", 0) as http:
        stored = peer.node.store.quotas.total_items
        assert http.address is not None
        reader, writer = await asyncio.open_connection(*http.address)
        writer.write(b"POST /values HTTP/1.1\r\nHost: x\r\nContent-Type: application/octet-stream"
                     b"\r\nContent-Length: 100\r\n\r\n0123456789")  # 10 of the 100 bytes
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        assert head.startswith(b"HTTP/1.1 408 ")
        headers = head.decode().lower()
        assert "connection: close" in headers  # the rest of the body may still come
        length = int(headers.split("content-length: ")[1].split("\r\n")[0])
        body = await asyncio.wait_for(reader.readexactly(length), 10)
        writer.close()
        assert "did not arrive within 0.3 s" in json.loads(body)["error"]
        assert peer.node.store.quotas.total_items == stored  # nothing stored


def test_the_openapi_document_lists_the_408_of_every_route_that_reads_a_body() -> None:
    document = openapi_document()
    with_body = [(path, method) for path, item in document["paths"].items()
                 for method, operation in item.items() if "requestBody" in operation]
    assert with_body  # writes, publish, bootstrap, ping, refresh
    for path, method in with_body:
        assert "408" in document["paths"][path][method]["responses"], (method, path)
    without = [(path, method) for path, item in document["paths"].items()
               for method, operation in item.items() if "requestBody" not in operation]
    assert all("408" not in document["paths"][p][m]["responses"] for p, m in without)
