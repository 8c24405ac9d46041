"""The codec's fast paths give exactly what the plain ones would: contacts written by hand and
kept on the contact, field values of unexpected types, decoded contacts shared from a memo."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from cbor_reference import plain_field
from hypothesis import given, settings
from hypothesis import strategies as st

from qadom import codec as codec_module
from qadom.codec import Codec
from qadom.config import Config
from qadom.contact import Contact
from qadom.errors import ProtocolError
from qadom.messages import MESSAGE_TYPES, Envelope, Error, ErrorCode, Message, Nodes, Store, Value

CODEC = Codec(Config())


def plain(envelope: Envelope) -> bytes:
    """What cbor2 writes for ``envelope`` (no token, no padding)."""
    message = envelope.message
    fields = [plain_field(kind, getattr(message, name)) for name, kind in message.FIELDS]
    sender = None if envelope.sender is None else envelope.sender.to_bytes(32, "big")
    return bytes(cbor2.dumps([1, message.CODE, envelope.rpc_id, sender, fields]))


hosts: st.SearchStrategy[Any] = (
    st.sampled_from(["127.0.0.1", "::1", "é", "x" * 23, "x" * 24, "x" * 300, ""])
    | st.text(max_size=30) | st.binary(max_size=4) | st.integers() | st.none())
ports: st.SearchStrategy[Any] = (
    st.sampled_from([0, 1, 23, 24, 255, 256, 65535, 65536, -1, 2**64, True, False])
    | st.integers(-(2**70), 2**70) | st.floats(allow_nan=False) | st.text(max_size=3) | st.none())
odd_contacts = st.builds(Contact, st.integers(0, 2**256 - 1),
                         st.tuples(hosts, ports) | st.lists(hosts | ports, min_size=2,
                                                            max_size=3))


@settings(max_examples=300, deadline=None)
@given(st.lists(odd_contacts, max_size=8))
def test_contacts_of_any_shape_are_written_as_cbor2_would(contacts: list[Contact]) -> None:
    envelope = Envelope(7, None, Nodes(tuple(contacts)))
    expected = plain(envelope)
    assert CODEC.encode(envelope) == expected
    assert CODEC.encode(envelope) == expected  # the second time from the kept bytes


def test_kept_bytes_are_by_object_not_by_equality() -> None:
    # Equal contacts (True == 1) that cbor2 writes differently: each keeps its own bytes.
    one, true = Contact(5, ("127.0.0.1", 1)), Contact(5, ("127.0.0.1", True))
    assert one == true
    for contact in (one, true, one, true):
        envelope = Envelope(1, None, Nodes((contact,)))
        assert CODEC.encode(envelope) == plain(envelope)


def test_a_mutable_address_is_not_kept() -> None:
    address: Any = ["127.0.0.1", 4000]
    envelope = Envelope(1, None, Nodes((Contact(5, address),)))
    assert CODEC.encode(envelope) == plain(envelope)
    address[1] = 4001
    assert CODEC.encode(envelope) == plain(envelope)


def test_out_of_range_ids_fail_as_before() -> None:
    for contact in (Contact(-1, ("127.0.0.1", 1)), Contact(2**256, ("127.0.0.1", 1))):
        with pytest.raises(OverflowError):
            plain_field(Nodes.FIELDS[0][1], (contact,))
        with pytest.raises(OverflowError):
            CODEC.encode(Envelope(1, None, Nodes((contact,))))


def test_written_bytes_stay_with_the_contact_and_out_of_its_equality() -> None:
    contact = Contact(9, ("10.0.0.1", 1009))
    envelope = Envelope(1, None, Nodes((contact,)))
    assert CODEC.encode(envelope) == plain(envelope)
    assert contact.wire is not None and contact.wire in CODEC.encode(envelope)
    assert contact == Contact(9, ("10.0.0.1", 1009)) and hash(contact) == hash(
        Contact(9, ("10.0.0.1", 1009)))
    assert "wire" not in repr(contact)


@pytest.mark.parametrize("message", [
    Store(b"v", 2**70, True),  # a bignum ttl: cbor2's tag
    Store("text", -5, False),  # type: ignore[arg-type]
    Value(bytearray(b"abc")),  # type: ignore[arg-type]
    Error(ErrorCode.INTERNAL, "é" * 30),  # an IntEnum code, non-ASCII text
])
def test_unexpected_field_values_are_written_as_cbor2_would(message: Message) -> None:
    for rpc_id in (0, 2**64 - 1, 2**64, -1):
        envelope = Envelope(rpc_id, 3, message)
        assert CODEC.encode(envelope) == plain(envelope)


def nodes_reply(*contacts: list[Any]) -> bytes:
    return bytes(cbor2.dumps([1, Nodes.CODE, 9, None, [list(contacts)]]))


def test_decoded_contacts_are_shared_only_when_equal() -> None:
    node_id = bytes(range(32))
    first = CODEC.decode(nodes_reply([node_id, "127.0.0.1", 4000])).message
    again = CODEC.decode(nodes_reply([node_id, "127.0.0.1", 4000])).message
    assert isinstance(first, Nodes) and isinstance(again, Nodes)
    assert again.nodes[0] is first.nodes[0]
    for host, port in (("127.0.0.2", 4000), ("127.0.0.1", 4001), ("::1", 1)):
        moved = CODEC.decode(nodes_reply([node_id, host, port])).message
        assert isinstance(moved, Nodes)
        assert moved.nodes == (Contact(int.from_bytes(node_id, "big"), (host, port)),)


@pytest.mark.parametrize("host, port", [
    ("not-an-ip", 4000), (b"127.0.0.1", 4000), (["127.0.0.1"], 4000), (None, 4000),
    ("127.0.0.1", 0), ("127.0.0.1", True), ("127.0.0.1", 65536),
])
def test_a_known_id_does_not_excuse_a_bad_address(host: object, port: object) -> None:
    node_id = bytes(32)
    CODEC.decode(nodes_reply([node_id, "127.0.0.1", 4000]))
    with pytest.raises(ProtocolError):
        CODEC.decode(nodes_reply([node_id, host, port]))


def test_decoded_contact_memo_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(codec_module, "_DECODED_CONTACTS_MAX", 8)
    contacts = [[i.to_bytes(32, "big"), "10.0.0.1", 1000 + i] for i in range(30)]
    decoded = CODEC.decode(nodes_reply(*contacts)).message
    assert isinstance(decoded, Nodes) and len(decoded.nodes) == 30
    assert len(codec_module._DECODED_CONTACTS) <= 8


def test_a_class_registered_after_the_codec_is_decoded(monkeypatch: pytest.MonkeyPatch) -> None:
    codec = Codec(Config())
    with pytest.raises(ProtocolError):
        codec.decode(bytes(cbor2.dumps([1, 120, 9, None, [b"x"]])))

    class Late(Value):
        CODE = 120

    monkeypatch.setitem(MESSAGE_TYPES, 120, Late)
    assert codec.decode(codec.encode(Envelope(9, None, Late(b"x")))).message == Late(b"x")
