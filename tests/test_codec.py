"""The CBOR codec: every message round-trips; any bytes decode or raise ProtocolError only."""

from __future__ import annotations

import contextlib

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import qadom.node  # noqa: F401  (registers every message type, its services' too)
from qadom import Config
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.errors import InvalidArgument, ProtocolError
from qadom.ids import ID_SPACE
from qadom.messages import (
    MESSAGE_TYPES,
    Append,
    Entries,
    Envelope,
    Error,
    FindNode,
    FindValue,
    Nodes,
    Ping,
    Pong,
    Search,
    Store,
    Stored,
    Value,
)

CONFIG = Config()
CODEC = Codec(CONFIG)
ids = st.integers(min_value=0, max_value=ID_SPACE - 1)
hosts = st.one_of(
    st.tuples(*[st.integers(0, 255)] * 4).map(lambda t: ".".join(map(str, t))),
    st.just("::1"), st.just("fe80::1"), st.just("fe80::1%eth0"), st.just("fe80::2%3"))
contacts = st.builds(Contact, ids, st.tuples(hosts, st.integers(1, 65535)))
contact_lists = st.lists(contacts, max_size=20).map(tuple)
values = st.binary(max_size=CONFIG.max_value_size)
messages = st.one_of(
    st.just(Ping()), st.just(Pong()), st.just(Stored()),
    st.builds(FindNode, ids), st.builds(FindValue, ids), st.builds(Store, values),
    st.builds(Append, ids, ids), st.builds(Search, ids, st.none() | ids),
    st.builds(Nodes, contact_lists), st.builds(Value, values),
    st.builds(Entries, st.lists(ids, max_size=CONFIG.search_page_size).map(tuple),
              st.booleans(), contact_lists),
    st.builds(Error, st.integers(0, 65535), st.text(max_size=256)),
)
tokens = st.none() | st.binary(min_size=1, max_size=32)
envelopes = st.builds(Envelope, st.integers(0, 2**64 - 1), st.none() | ids, messages, tokens)


@settings(max_examples=300)
@given(envelopes)
def test_round_trip(envelope: Envelope) -> None:
    data = CODEC.encode(envelope)
    assert len(data) <= CONFIG.max_datagram_size
    assert CODEC.decode(data) == envelope


@settings(max_examples=1000)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_protocol_error(data: bytes) -> None:
    with contextlib.suppress(ProtocolError):
        CODEC.decode(data)


cbor_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.binary(max_size=40)
    | st.text(max_size=40) | st.floats(allow_nan=False),
    lambda inner: st.lists(inner, max_size=6) | st.dictionaries(st.text(max_size=5), inner,
                                                                 max_size=4),
    max_leaves=30)


@settings(max_examples=500)
@given(st.integers(0, 130), cbor_values, cbor_values, cbor_values)
def test_well_formed_cbor_with_wrong_shapes(code: int, rpc_id: object, sender: object,
                                            fields: object) -> None:
    """Valid CBOR that is not a valid envelope: decoded or refused, never anything else."""
    for candidate in ([1, code, rpc_id, sender, fields], [1, code, 5, None, fields],
                      [1, code, 5, sender, [fields]], fields):
        with contextlib.suppress(ProtocolError):
            CODEC.decode(cbor2.dumps(candidate))


@settings(max_examples=200)
@given(envelopes, st.integers(0, 3000))
def test_padding_reaches_its_size_and_changes_nothing_else(envelope: Envelope, pad_to: int) -> None:
    padded = Envelope(envelope.rpc_id, envelope.sender, envelope.message, envelope.token, pad_to)
    try:
        data = CODEC.encode(padded)
    except InvalidArgument:  # padding a near-full datagram past the limit is refused
        assert pad_to > CONFIG.max_datagram_size - 3
        return
    assert len(data) >= pad_to
    assert CODEC.decode(data) == envelope


def test_envelope_extras_are_checked() -> None:
    base: list[object] = [1, Ping.CODE, 7, None, []]
    assert CODEC.decode(cbor2.dumps([*base, b"t"])).token == b"t"
    assert CODEC.decode(cbor2.dumps([*base, None, b"\x00" * 100])).token is None
    for bad in ([*base, b""], [*base, b"x" * 33], [*base, "t"], [*base, None, "pad"],
                [*base, None, b"", 1]):
        with pytest.raises(ProtocolError):
            CODEC.decode(cbor2.dumps(bad))


def test_field_mutations_of_valid_messages_are_refused() -> None:
    good = cbor2.dumps([1, FindNode.CODE, 7, bytes(32), [bytes(32)]])
    assert CODEC.decode(good).message == FindNode(0)
    bad = [
        [2, FindNode.CODE, 7, bytes(32), [bytes(32)]],  # version
        [1, 99, 7, bytes(32), [bytes(32)]],  # unknown code
        [1, FindNode.CODE, -1, bytes(32), [bytes(32)]],  # rpc id
        [1, FindNode.CODE, 2**64, bytes(32), [bytes(32)]],
        [1, FindNode.CODE, 7, bytes(31), [bytes(32)]],  # sender length
        [1, FindNode.CODE, 7, bytes(32), [bytes(33)]],  # target length
        [1, FindNode.CODE, 7, bytes(32), []],  # field count
        [1, FindNode.CODE, 7, bytes(32), [bytes(32), 1]],
        [1, FindNode.CODE, True, bytes(32), [bytes(32)]],  # bool is not an int here
        [1, Store.CODE, 7, None, [b"x" * (CONFIG.max_value_size + 1)]],
        [1, Nodes.CODE, 7, None, [[[bytes(32), "not-an-ip", 1]]]],
        # An IPv6 zone must name an interface: sendto() fails on other text in a way that
        # closes the socket.
        [1, Nodes.CODE, 7, None, [[[bytes(32), "fe80::1%\x00", 1]]]],
        [1, Nodes.CODE, 7, None, [[[bytes(32), "fe80::1%\ue000", 1]]]],
        [1, Nodes.CODE, 7, None, [[[bytes(32), "fe80::1%a b", 1]]]],
        [1, Nodes.CODE, 7, None, [[[bytes(32), "127.0.0.1", 0]]]],
        [1, Nodes.CODE, 7, None, [[[bytes(32), "127.0.0.1", 70000]]]],
        [1, Nodes.CODE, 7, None, [[[bytes(32), "127.0.0.1", 1]] * 65]],
        [1, Entries.CODE, 7, None, [[bytes(32)], 1, []]],  # more must be a bool
        [1, Error.CODE, 7, None, [1, "x" * 257]],
        [1, Error.CODE, 7, None, [65536, "x"]],
    ]
    for raw in bad:
        with pytest.raises(ProtocolError):
            CODEC.decode(cbor2.dumps(raw))


def test_oversized_datagram_refused_both_ways() -> None:
    with pytest.raises(ProtocolError):
        CODEC.decode(b"\x00" * (CONFIG.max_datagram_size + 1))
    big = Entries(tuple(range(CONFIG.max_datagram_size)), False, ())
    with pytest.raises(InvalidArgument):
        CODEC.encode(Envelope(1, None, big))


def test_full_size_value_and_full_page_fit() -> None:
    value = Envelope(2**64 - 1, ID_SPACE - 1, Value(b"\xff" * CONFIG.max_value_size))
    assert len(CODEC.encode(value)) <= CONFIG.max_datagram_size
    contacts = tuple(Contact(ID_SPACE - 1 - i, ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535))
                     for i in range(CONFIG.k))
    page = Entries(tuple(ID_SPACE - 1 - i for i in range(CONFIG.search_page_size)), True,
                   contacts)
    assert len(CODEC.encode(Envelope(2**64 - 1, ID_SPACE - 1, page))) <= CONFIG.max_datagram_size


def test_codes_are_unique_and_partitioned() -> None:
    for code, cls in MESSAGE_TYPES.items():
        assert code == cls.CODE
        assert (1 <= code <= 63) == cls.IS_REQUEST
