"""INFO on the pure core (qadom.info): who is answered, what the summary holds, how a query ends.

Two Nodes are wired by hand (datagrams passed from one outbox to the other, time passed in), so
the source address of each request is whatever the test says it is.
"""

from __future__ import annotations

import json
import random

import pytest

from qadom import Config, Node
from qadom.contact import Address, Contact
from qadom.errors import InvalidArgument, OperationTimeout, ProtocolError, RemoteError
from qadom.ids import key_for
from qadom.info import InfoReply, InfoRequest, is_loopback
from qadom.messages import Envelope, Error, ErrorCode
from qadom.storage import Meta

SERVER: Address = ("127.0.0.1", 9000)


def make_node(seed: int, address: Address, now: float = 0.0) -> Node:
    node = Node(config=Config(), rng=random.Random(seed), now=now)
    node.address = address
    return node


def deliver(sender: Node, source: Address, receiver: Node, now: float) -> None:
    """Hand every datagram ``sender`` queued to ``receiver``, as coming from ``source``."""
    for data, _ in sender.datagrams_to_send():
        receiver.datagram_received(data, source, now)


def ask(server: Node, source: Address, now: float) -> dict[str, object] | BaseException:
    """Query ``server`` from a client node at ``source``; the result or the failure."""
    client = make_node(99, source, now)
    call = client.info.query(SERVER, now)
    deliver(client, source, server, now)
    deliver(server, SERVER, client, now)
    assert call.done
    return call.exception() or call.result()


@pytest.mark.parametrize("source", ["127.0.0.1", "127.1.2.3", "::1", "::ffff:127.0.0.1"])
def test_info_is_answered_to_loopback_sources(source: str) -> None:
    server = make_node(1, SERVER, now=100.0)
    server.table.seen(Contact(12345, ("127.0.0.1", 9001)))
    server.store.put_value(key_for(b"abc"), b"abc", Meta(100.0 + 86400, original=True))
    summary = ask(server, (source, 5000), now=142.5)
    assert isinstance(summary, dict)
    assert summary["id"] == str(server.id)
    assert summary["address"] == "127.0.0.1:9000"
    assert summary["uptime"] == 42.5
    assert summary["contacts"] == 1
    assert summary["buckets"] == {"count": 1, "fill": [1], "replacements": 0}
    store = summary["store"]
    assert isinstance(store, dict)
    assert (store["values"], store["value_bytes"], store["entries"]) == (1, 3, 0)


@pytest.mark.parametrize("source", ["192.0.2.1", "10.0.0.1", "2001:db8::1", "::ffff:192.0.2.1",
                                    "0.0.0.0"])
def test_info_is_refused_to_other_sources(source: str) -> None:
    server = make_node(1, SERVER)
    failure = ask(server, (source, 5000), now=1.0)
    assert isinstance(failure, RemoteError)
    assert failure.code == ErrorCode.UNSUPPORTED
    assert "loopback" in failure.reason


def test_is_loopback() -> None:
    assert is_loopback("127.255.255.254") and is_loopback("::1")
    assert not is_loopback("128.0.0.1") and not is_loopback("localhost")
    assert not is_loopback("not an address") and not is_loopback("")


def test_document_stays_within_one_value_when_counters_explode() -> None:
    node = make_node(1, SERVER)
    for i in range(2000):
        node.stats[f"counter_{i}"] = i
    data = node.info.document(1.0)
    assert len(data) <= node.config.max_value_size
    summary = json.loads(data)
    assert summary["id"] == str(node.id) and summary["stats"] == {}


def test_query_of_a_silent_address_times_out() -> None:
    client = make_node(2, ("127.0.0.1", 9100))
    call = client.info.query(SERVER, 0.0)
    client.datagrams_to_send()  # lost
    for _ in range(10):
        deadline = client.get_timer()
        assert deadline is not None
        client.handle_timer(deadline)
        if call.done:
            break
    assert isinstance(call.exception(), OperationTimeout)


@pytest.mark.parametrize("reply", [InfoReply(b"\xff\xfe"), InfoReply(b"[1, 2]"),
                                   Error(ErrorCode.INTERNAL, "broken"),
                                   # Not JSON, though Python's parser takes them (as NaN, inf):
                                   InfoReply(b'{"uptime": NaN}'), InfoReply(b'{"k": Infinity}'),
                                   InfoReply(b'{"k": -Infinity}'), InfoReply(b'{"k": 1e400}'),
                                   # Nested deeper than Python's parser recurses:
                                   InfoReply(b"[" * 8000)])
def test_query_fails_on_a_bad_answer(reply: InfoReply | Error) -> None:
    client = make_node(2, ("127.0.0.1", 9100))
    call = client.info.query(SERVER, 0.0)
    ((data, _),) = client.datagrams_to_send()
    request = client.codec.decode(data)
    assert isinstance(request.message, InfoRequest)
    answer = client.codec.encode(Envelope(request.rpc_id, 555, reply))
    client.datagram_received(answer, SERVER, 0.1)
    error = call.exception()
    assert isinstance(error, RemoteError if isinstance(reply, Error) else ProtocolError)
    assert client.stats["internal_errors"] == 0


def test_query_takes_json_numbers_of_every_kind() -> None:
    client = make_node(2, ("127.0.0.1", 9100))
    call = client.info.query(SERVER, 0.0)
    ((data, _),) = client.datagrams_to_send()
    request = client.codec.decode(data)
    document = b'{"uptime": 1.5e3, "k": 20, "big": 123456789012345678901234567890, "x": -0.0}'
    answer = client.codec.encode(Envelope(request.rpc_id, 555, InfoReply(document)))
    client.datagram_received(answer, SERVER, 0.1)
    assert call.result() == {"uptime": 1500.0, "k": 20, "big": 123456789012345678901234567890,
                             "x": -0.0}


SMALLEST = Config(max_value_size=512, dht_max_record_size=512)


def test_a_value_limit_below_the_smallest_summary_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="max_value_size"):
        Config(max_value_size=511, dht_max_record_size=511)


def test_the_smallest_value_limit_still_carries_the_longest_summary() -> None:
    """The largest id, the longest address, an uptime of decades and full counts: shed to its
    core, the summary fits the smallest accepted value and reaches the asker."""
    longest: Address = ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535)
    server = Node(config=SMALLEST, rng=random.Random(1), node_id=2**256 - 1, now=0.0)
    server.address = longest
    rng = random.Random(2)
    for _ in range(3000):
        server.table.seen(Contact(rng.getrandbits(256), ("127.0.0.1", rng.randrange(1, 65536))))
    client = Node(config=SMALLEST, rng=random.Random(3), now=0.0)
    client.address = ("::1", 65535)
    now = 2e9 + 0.123
    call = client.info.query(longest, now)
    deliver(client, ("::1", 65535), server, now)
    deliver(server, longest, client, now)
    assert call.done and call.exception() is None, call.exception()
    summary = call.result()
    assert summary["id"] == str(2**256 - 1)
    assert summary["address"] == f"[{longest[0]}]:65535"
    assert summary["uptime"] == round(now, 3)
    assert client.stats["malformed"] == 0
