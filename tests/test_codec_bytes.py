"""The codec's own CBOR writer produces exactly the bytes cbor2 would, for every shape."""

from __future__ import annotations

from typing import Any

import cbor2
from cbor_reference import dump_envelope, plain_field
from hypothesis import given, reject, settings
from hypothesis import strategies as st

import qadom.node  # noqa: F401  (registers every message type, its services' too)
from qadom.codec import Codec
from qadom.config import Config
from qadom.contact import Contact
from qadom.messages import MESSAGE_TYPES, Envelope, Kind, Message

EDGES = [0, 1, 23, 24, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1]
ints = st.sampled_from([*EDGES, 2**64, -1, -24, -25, 2**70]) | st.integers(-(2**70), 2**70)
byte_strings = st.sampled_from([0, 23, 24, 255, 256, 65536]).map(bytes) | st.binary(max_size=300)
scalars = ints | byte_strings | st.none() | st.booleans() | st.text(max_size=40) | st.floats(
    allow_nan=False)
items = st.recursive(scalars, lambda inner: st.lists(inner, max_size=6), max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(code=ints, rpc_id=ints, sender=st.none() | st.binary(min_size=32, max_size=32)
       | byte_strings, fields=st.lists(items, max_size=8),
       token=st.none() | byte_strings, padding=st.none() | byte_strings)
def test_envelope_bytes_equal_cbor2(code: int, rpc_id: int, sender: bytes | None,
                                    fields: list[Any], token: bytes | None,
                                    padding: bytes | None) -> None:
    assert dump_envelope(code, rpc_id, sender, fields) == cbor2.dumps(
        [1, code, rpc_id, sender, fields])
    extra: list[Any] = [] if token is None and padding is None else [token]
    if padding is not None:
        extra.append(padding)
    assert dump_envelope(code, rpc_id, sender, fields, token, padding) == cbor2.dumps(
        [1, code, rpc_id, sender, fields, *extra])


contacts = st.builds(Contact, st.integers(0, 2**256 - 1),
                     st.tuples(st.sampled_from(["127.0.0.1", "::1", "10.1.2.3"]),
                               st.integers(1, 65535)))

VALUES = {
    Kind.ID: st.integers(0, 2**256 - 1),
    Kind.OPT_ID: st.none() | st.integers(0, 2**256 - 1),
    Kind.VALUE: st.binary(max_size=600),
    Kind.BOOL: st.booleans(),
    Kind.UINT16: st.integers(0, 65535),
    Kind.TEXT: st.text(max_size=50),
    Kind.CONTACTS: st.lists(contacts, max_size=20).map(tuple),
    Kind.IDS: st.lists(st.integers(0, 2**256 - 1), max_size=40).map(tuple),
    Kind.UINT64: st.sampled_from(EDGES) | st.integers(0, 2**64 - 1),
    Kind.SHORT_BYTES: st.binary(max_size=64),
}


@st.composite
def messages(draw: st.DrawFn) -> Message:
    cls = draw(st.sampled_from(sorted(MESSAGE_TYPES.values(), key=lambda c: c.CODE)))
    values = [draw(VALUES[kind]) for _, kind in cls.FIELDS]
    try:
        return cls(*values)
    except Exception:  # a class with cross-field rules refused this draw
        reject()


@settings(max_examples=400, deadline=None)
@given(message=messages(), rpc_id=st.integers(0, 2**64 - 1),
       sender=st.none() | st.integers(0, 2**256 - 1))
def test_every_registered_message_encodes_as_cbor2_would(message: Message, rpc_id: int,
                                                         sender: int | None) -> None:
    fields = [plain_field(kind, getattr(message, name)) for name, kind in message.FIELDS]
    raw_sender = None if sender is None else sender.to_bytes(32, "big")
    expected = cbor2.dumps([1, message.CODE, rpc_id, raw_sender, fields])
    codec = Codec(Config())
    envelope = Envelope(rpc_id, sender, message)
    if len(expected) <= codec.max_datagram:
        data = codec.encode(envelope)
        assert data == expected
        assert codec.decode(data) == envelope
