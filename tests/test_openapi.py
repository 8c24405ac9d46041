"""A property test over the OpenAPI document: whatever schemathesis sends to any route, valid or
not, the helper never answers 500 and never answers outside the document (status, content type,
body schema).

The helper runs on a real peer (joined to a second one, which answers pings and bootstraps) on its
own event loop in a thread, because schemathesis calls it synchronously over real HTTP.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from qadom import Peer
from qadom.http import HttpHelper, openapi_document

from helpers import FAST

# Per operation: enough variety for every route while the file runs in seconds. Set
# QADOM_OPENAPI_EXAMPLES=500 for a deeper search.
EXAMPLES = int(os.environ.get("QADOM_OPENAPI_EXAMPLES", "12"))
STREAM = "/subscribe/{key}"  # never ends by itself, so it is checked on its own below

schema = schemathesis.openapi.from_dict(openapi_document())
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]


@dataclass
class Live:
    base_url: str
    target_port: int  # the second peer's UDP port: where pings and bootstraps are sent
    loop: asyncio.AbstractEventLoop
    stop: asyncio.Event


@pytest.fixture(scope="module")
def live() -> Iterator[Live]:
    started = threading.Event()
    box: list[Live] = []
    failure: list[BaseException] = []

    async def main() -> None:
        async with Peer(config=FAST) as peer, Peer(config=FAST) as other:
            await asyncio.wait_for(peer.bootstrap([other.address]), 20)
            async with HttpHelper(peer, "127.0.0.1", 0) as helper:
                assert helper.address is not None
                host, port = helper.address
                box.append(Live(f"http://{host}:{port}", other.address[1],
                                asyncio.get_running_loop(), asyncio.Event()))
                started.set()
                await box[0].stop.wait()

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the fixture, not lost in the thread
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=run, name="qadom-http", daemon=True)
    thread.start()
    assert started.wait(30), "the helper did not start"
    assert not failure, failure
    try:
        yield box[0]
    finally:
        box[0].loop.call_soon_threadsafe(box[0].stop.set)
        thread.join(30)
        assert not thread.is_alive() and not failure, failure


def loopback_only(body: Any, port: int) -> Any:
    """Point every well-formed address in a generated body at the second peer: the property
    covers the whole input space, the network stays on 127.0.0.1."""

    def fix(item: Any) -> Any:
        if not isinstance(item, dict) or not isinstance(item.get("host"), str):
            return item
        try:
            ipaddress.ip_address(item["host"])
        except ValueError:
            return item
        return {**item, "host": "127.0.0.1",
                "port": port if isinstance(item.get("port"), int)
                and 0 < item["port"] < 65536 else item.get("port")}

    if isinstance(body, dict) and isinstance(body.get("addresses"), list):
        return {**body, "addresses": [fix(item) for item in body["addresses"]]}
    return fix(body)


def test_the_served_document_is_the_one_tested(live: Live) -> None:
    served = requests.get(f"{live.base_url}/openapi.json", timeout=10)
    assert served.status_code == 200 and served.json() == openapi_document()
    schema.validate()  # a valid OpenAPI 3 document


def _no_500_test(path: str, method: str) -> Any:
    """The property for one operation: schemathesis's every phase (the document's examples, its
    coverage cases, then generated ones) against the live helper."""

    @schema.include(path=path, method=method).parametrize()
    @settings(max_examples=EXAMPLES, deadline=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                     HealthCheck.function_scoped_fixture])
    def test(case: schemathesis.Case[Any], live: Live) -> None:
        if case.path in ("/ping", "/bootstrap"):
            case.body = loopback_only(case.body, live.target_port)
        response = case.call(base_url=live.base_url, timeout=30)
        case.validate_response(response, checks=CHECKS)

    return test


# No 500 and no answer outside the document, whatever is sent: one test function per operation
# but the stream (tested below), each under a name of its own, so that a run spread over
# processes (pytest-xdist, which tells tests apart by name) runs every one of them.
OPERATIONS = sorted((path, method) for path, item in openapi_document()["paths"].items()
                    for method in item if method in ("get", "post", "put", "delete", "patch")
                    and path != STREAM)
for _path, _method in OPERATIONS:
    _name = re.sub(r"[^a-z0-9]+", "_", f"{_method} {_path}".lower()).strip("_")
    globals()[f"test_no_500_and_no_answer_outside_the_document_{_name}"] = _no_500_test(
        _path, _method.upper())


@given(case=schema[STREAM]["GET"].as_strategy())
@settings(max_examples=EXAMPLES, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_event_stream_route(case: schemathesis.Case[Any], live: Live) -> None:
    kwargs = case.as_transport_kwargs(base_url=live.base_url)
    with requests.request(**kwargs, stream=True, timeout=30) as response:
        if response.status_code == 200:
            assert response.headers["Content-Type"] == "text/event-stream"
            first = next(response.iter_lines())
            assert first == b": subscribed"
        else:
            # An error is an ordinary JSON answer: check it against the document like the rest.
            case.validate_response(response, checks=CHECKS)


def concrete(path: str) -> str:
    """``path`` with valid values in place of its parameters."""
    return (path.replace("/dht/{key}", "/dht/some_key").replace("{key}", "0" * 64)
            .replace("{public_key}", "0" * 64))


def test_a_method_a_path_lacks_answers_405_as_the_document_says(live: Live) -> None:
    document = openapi_document()
    assert "Allow" in document["components"]["responses"]["MethodNotAllowed"]["headers"]
    for path, item in document["paths"].items():
        declared = {method.upper() for method in item}
        allowed = declared | ({"HEAD"} if "GET" in declared else set())
        for method in ("GET", "POST", "PUT", "DELETE", "PATCH"):
            if method in allowed:
                continue
            response = requests.request(method, live.base_url + concrete(path), timeout=30)
            assert response.status_code == 405, (method, path)
            assert {m.strip() for m in response.headers["Allow"].split(",")} == allowed
            assert response.headers["Content-Type"].startswith("application/json")
            body = response.json()
            assert isinstance(body["error"], str) and set(body) <= {"error", "field"}


def test_every_get_route_answers_head_without_a_body(live: Live) -> None:
    for path, item in openapi_document()["paths"].items():
        if "get" not in item:
            continue
        response = requests.head(live.base_url + concrete(path), timeout=30)
        assert response.status_code != 405, path
        assert str(response.status_code) in item["get"]["responses"], path
        assert response.content == b"", path


@pytest.mark.parametrize(("sent", "key"), [("a%2Fb", "a/b"), ("%2E", "."), ("%2E%2E", ".."),
                                           ("%25", "%")])
def test_dht_keys_are_any_text_in_one_percent_encoded_segment(live: Live, sent: str,
                                                              key: str) -> None:
    parameter = openapi_document()["paths"]["/dht/{key}"]["get"]["parameters"][0]
    assert "pattern" not in parameter["schema"] and "%2F" in parameter["description"]
    response = requests.get(f"{live.base_url}/dht/{sent}", timeout=30)
    assert response.status_code == 404  # no record: the key reached the route, decoded
    assert response.json()["error"] == f"no record under key {key!r}"
