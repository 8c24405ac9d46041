"""Wire test vectors: for every message of docs/PROTOCOL.md, the exact datagram it is, written out
by hand from the document (CBOR heads byte by byte) and held against the codec both ways; then
the envelope's edges, the encodings a receiver must accept, the datagrams it must refuse, and the
document's message and error tables held against the code's."""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path

import pytest

import qadom.dhtrecords  # registers the /dht messages
import qadom.errors
import qadom.info  # registers INFO
import qadom.namespace  # registers the namespace messages
import qadom.pubsub  # registers the publish/subscribe messages
from qadom.codec import Codec
from qadom.config import Config
from qadom.contact import Contact
from qadom.dhtrecords import DhtFind, DhtPut, DhtRecord, DhtRefused
from qadom.errors import ProtocolError
from qadom.info import InfoReply, InfoRequest
from qadom.messages import (
    MESSAGE_TYPES,
    Append,
    Challenge,
    Entries,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    FindNodeStore,
    FindValue,
    Kind,
    Message,
    Nodes,
    NodesStored,
    Ping,
    Pong,
    Search,
    Store,
    Stored,
    Value,
)
from qadom.namespace import NamespaceFind, NamespaceFound, NamespaceStore, NamespaceStored
from qadom.pubsub import (
    Deliver,
    Delivered,
    Publish,
    Published,
    Subscribe,
    Subscribed,
    Unsubscribe,
    Unsubscribed,
)

PROTOCOL = Path(__file__).resolve().parent.parent / "docs" / "PROTOCOL.md"
CODEC = Codec(Config())

# Three node ids, a public key, a signature and a token, as their wire bytes (hex).
A, B, C = "11" * 32, "22" * 32, "33" * 32
PK, SIG, TOKEN = "44" * 32, "55" * 64, "66" * 16
ID_A, ID_B, ID_C = (int(x, 16) for x in (A, B, C))
ID = "5820"  # the head of a 32-byte string: major type 2, argument 32 in one following byte


def text(s: str) -> str:
    """A short text string (under 24 bytes of UTF-8): head 0x60 + length, then the bytes."""
    raw = s.encode()
    assert len(raw) < 24
    return f"{0x60 + len(raw):02x}{raw.hex()}"


def hexed(*parts: str) -> bytes:
    return bytes.fromhex("".join(parts).replace(" ", ""))


# (name, envelope, datagram). Every envelope: 0x85 (array of 5), version 01, the code (< 24: one
# byte; 24-255: 0x18 then the byte), the rpc id, the sender (ID or f6 null), the fields array.
VECTORS: list[tuple[str, Envelope, bytes]] = [
    # ------------------------------------------------------------------ requests
    ("PING, rpc id 0, no sender", Envelope(0, None, Ping()),
     hexed("85 01 01 00 f6 80")),
    ("PING, rpc id 23 (the largest in the initial byte)", Envelope(23, ID_A, Ping()),
     hexed("85 01 01 17", ID, A, "80")),
    ("FIND_NODE, rpc id 24 (one following byte)", Envelope(24, ID_A, FindNode(ID_B)),
     hexed("85 01 02 1818", ID, A, "81", ID, B)),
    ("FIND_VALUE, rpc id 255", Envelope(255, None, FindValue(ID_B)),
     hexed("85 01 03 18ff f6 81", ID, B)),
    ("STORE, rpc id 256 (two following bytes), ttl 86400 (four)",
     Envelope(256, None, Store(b"hello", 86400, False)),
     hexed("85 01 04 190100 f6 83 45", b"hello".hex(), "1a00015180 f4")),
    ("STORE of a cached copy", Envelope(1, None, Store(b"", 60, True)),
     hexed("85 01 04 01 f6 83 40 183c f5")),
    ("APPEND, rpc id 65535", Envelope(65535, None, Append(ID_B, ID_C, 3600)),
     hexed("85 01 05 19ffff f6 83", ID, B, ID, C, "190e10")),
    ("SEARCH, first page, rpc id 65536 (four following bytes)",
     Envelope(65536, None, Search(ID_B, None)),
     hexed("85 01 06 1a00010000 f6 82", ID, B, "f6")),
    ("SEARCH, next page, rpc id 2^32 (eight following bytes)",
     Envelope(2**32, None, Search(ID_B, ID_C)),
     hexed("85 01 06 1b0000000100000000 f6 82", ID, B, ID, C)),
    ("FIND_NODE_STORE, rpc id 2^64 - 1", Envelope(2**64 - 1, None, FindNodeStore(b"", 1)),
     hexed("85 01 07 1bffffffffffffffff f6 82 40 01")),
    ("NAMESPACE_STORE",
     Envelope(1, None, NamespaceStore(bytes.fromhex(PK), ID_B, 0, b"v", bytes.fromhex(SIG), 60)),
     hexed("85 01 08 01 f6 86", ID, PK, ID, B, "00 41 76 5840", SIG, "183c")),
    ("NAMESPACE_FIND", Envelope(1, None, NamespaceFind(ID_B)),
     hexed("85 01 09 01 f6 81", ID, B)),
    ("SUBSCRIBE", Envelope(1, None, Subscribe(ID_B, 60000)),
     hexed("85 01 0c 01 f6 82", ID, B, "19ea60")),
    ("UNSUBSCRIBE", Envelope(1, None, Unsubscribe(ID_B)),
     hexed("85 01 0d 01 f6 81", ID, B)),
    ("PUBLISH", Envelope(1, None, Publish(ID_B, 2**64 - 1, 0, b"m")),
     hexed("85 01 0e 01 f6 84", ID, B, "1bffffffffffffffff 00 41 6d")),
    ("DELIVER", Envelope(1, None, Deliver(ID_B, 7, 1000, b"m")),
     hexed("85 01 0f 01 f6 84", ID, B, "07 1903e8 41 6d")),
    ("DHT_PUT", Envelope(1, None, DhtPut(b"\x01\x02", 86400, True)),
     hexed("85 01 10 01 f6 83 42 0102 1a00015180 f5")),
    ("DHT_FIND", Envelope(1, None, DhtFind(ID_B)),
     hexed("85 01 11 01 f6 81", ID, B)),
    ("INFO", Envelope(1, None, InfoRequest()),
     hexed("85 01 14 01 f6 80")),
    # ------------------------------------------------------------------ replies (codes >= 24)
    ("PONG", Envelope(1, ID_A, Pong()),
     hexed("85 01 1840 01", ID, A, "80")),
    ("NODES, an IPv4 and an IPv6 contact",
     Envelope(1, ID_A, Nodes((Contact(ID_B, ("127.0.0.1", 4000)), Contact(ID_C, ("::1", 23))))),
     hexed("85 01 1841 01", ID, A, "81 82",
           "83", ID, B, text("127.0.0.1"), "190fa0",
           "83", ID, C, text("::1"), "17")),
    ("NODES, none", Envelope(1, None, Nodes(())),
     hexed("85 01 1841 01 f6 81 80")),
    ("VALUE", Envelope(1, None, Value(b"hello", 600)),
     hexed("85 01 1842 01 f6 82 45", b"hello".hex(), "190258")),
    ("STORED", Envelope(1, None, Stored()),
     hexed("85 01 1843 01 f6 80")),
    ("ENTRIES", Envelope(1, None, Entries((ID_B, ID_C), True, ())),
     hexed("85 01 1844 01 f6 83 82", ID, B, ID, C, "f5 80")),
    ("NODES_STORED",
     Envelope(1, None, NodesStored((Contact(ID_B, ("10.0.0.1", 65535)),), False)),
     hexed("85 01 1845 01 f6 82 81 83", ID, B, text("10.0.0.1"), "19ffff f4")),
    ("NAMESPACE_STORED", Envelope(1, None, NamespaceStored()),
     hexed("85 01 1848 01 f6 80")),
    ("NAMESPACE_FOUND, seq 2^63 - 1",
     Envelope(1, None, NamespaceFound(bytes.fromhex(PK), ID_B, 2**63 - 1, b"",
                                      bytes.fromhex(SIG), (), 1)),
     hexed("85 01 1849 01 f6 87", ID, PK, ID, B, "1b7fffffffffffffff 40 5840", SIG, "80 01")),
    ("SUBSCRIBED", Envelope(1, None, Subscribed(600000)),
     hexed("85 01 184c 01 f6 81 1a000927c0")),
    ("UNSUBSCRIBED", Envelope(1, None, Unsubscribed()),
     hexed("85 01 184d 01 f6 80")),
    ("PUBLISHED", Envelope(1, None, Published(3)),
     hexed("85 01 184e 01 f6 81 03")),
    ("DELIVERED", Envelope(1, None, Delivered()),
     hexed("85 01 184f 01 f6 80")),
    ("DHT_RECORD", Envelope(1, None, DhtRecord(b"\x84")),
     hexed("85 01 1850 01 f6 82 41 84 80")),
    ("DHT_REFUSED", Envelope(1, None, DhtRefused(2, "unauthorized")),
     hexed("85 01 1851 01 f6 82 02", text("unauthorized"))),
    ("INFO_REPLY", Envelope(1, None, InfoReply(b"{}")),
     hexed("85 01 1854 01 f6 81 42 7b7d")),
    ("CHALLENGE: no fields, a token in item 5",
     Envelope(1, ID_A, Challenge(), bytes.fromhex(TOKEN)),
     hexed("86 01 1858 01", ID, A, "80 50", TOKEN)),
    ("ERROR, a reason of 23 bytes", Envelope(1, None, Error(5, "request not served here")),
     hexed("85 01 187f 01 f6 82 05", text("request not served here"))),
    ("ERROR, a reason of 24 bytes (one length byte)", Envelope(1, None, Error(65535, "é" * 12)),
     hexed("85 01 187f 01 f6 82 19ffff 7818", "c3a9" * 12)),
    # ------------------------------------------------------------------ envelope items 5 and 6
    ("a request with a one-byte token", Envelope(9, None, FindNode(ID_B), b"\xaa"),
     hexed("86 01 02 09 f6 81", ID, B, "41 aa")),
    ("a small request padded to 48 bytes: a null token, then 42 zero bytes",
     Envelope(1, None, Ping(), None, 48),
     hexed("87 01 01 01 f6 80 f6 582a", "00" * 42)),
    ("a FIND_NODE padded to 600 bytes: 560 zero bytes after its 40",
     Envelope(1, None, FindNode(ID_B), None, 600),
     hexed("87 01 02 01 f6 81", ID, B, "f6 590230", "00" * 560)),
]


@pytest.mark.parametrize(("envelope", "datagram"), [(e, d) for _, e, d in VECTORS],
                         ids=[name for name, _, _ in VECTORS])
def test_vector_encodes_and_decodes(envelope: Envelope, datagram: bytes) -> None:
    assert CODEC.encode(envelope) == datagram
    assert CODEC.decode(datagram) == envelope


def test_every_message_has_a_vector() -> None:
    covered = {type(envelope.message) for _, envelope, _ in VECTORS}
    assert covered == set(MESSAGE_TYPES.values())


def test_padding_is_two_to_four_bytes_over_the_minimum() -> None:
    for pad_to in (48, 600):
        for message in (Ping(), FindNode(ID_B), Store(b"x" * 30)):
            for sender in (None, ID_A):
                size = len(CODEC.encode(Envelope(2**64 - 1, sender, message, None, pad_to)))
                plain = len(CODEC.encode(Envelope(2**64 - 1, sender, message)))
                assert size == plain if plain >= pad_to else pad_to + 2 <= size <= pad_to + 4


def test_largest_nodes_reply_fits_the_bound_of_a_padded_find_node() -> None:
    """docs/PROTOCOL.md, "Amplification": a first FIND_NODE is answered in full, even with k
    contacts of 45-character hosts and a token."""
    config = Config()
    request = CODEC.encode(Envelope(2**64 - 1, None, FindNode(0), None, config.min_request_size))
    host = "1111:2222:3333:4444:5555:6666:255.255.255.255"
    assert len(host) == 45
    nodes = tuple(Contact(i, (host, 65535)) for i in range(config.k))
    reply = CODEC.encode(Envelope(2**64 - 1, ID_A, Nodes(nodes), bytes(16)))
    assert len(reply) <= config.amplification_factor * len(request)
    assert len(reply) <= 1800


# ---------------------------------------------------------------------------- accepted forms

ACCEPTED: list[tuple[str, bytes, Envelope]] = [
    ("rpc id as a tag 2 bignum", hexed("85 01 01 c2 41 05 f6 80"), Envelope(5, None, Ping())),
    ("rpc id not in its shortest form", hexed("85 01 01 1b0000000000000005 f6 80"),
     Envelope(5, None, Ping())),
    ("code not in its shortest form", hexed("85 01 1801 05 f6 80"), Envelope(5, None, Ping())),
    ("an indefinite-length envelope array", hexed("9f 01 01 05 f6 80 ff"),
     Envelope(5, None, Ping())),
    ("an indefinite-length byte string", hexed("85 01 02 05 f6 81 5f 50", "22" * 16, "50",
                                               "22" * 16, "ff"),
     Envelope(5, None, FindNode(ID_B))),
    ("an indefinite-length text string", hexed("85 01 187f 05 f6 82 01 7f 626161 626162 ff"),
     Envelope(5, None, Error(1, "aaab"))),
    ("bytes after the array", hexed("85 01 01 05 f6 80 00 ff"), Envelope(5, None, Ping())),
    ("a null token", hexed("86 01 01 05 f6 80 f6"), Envelope(5, None, Ping())),
    ("a 32-byte token", hexed("86 01 01 05 f6 80 5820", "77" * 32),
     Envelope(5, None, Ping(), b"\x77" * 32)),
    ("a token and padding", hexed("87 01 01 05 f6 80 41 aa 43 000102"),
     Envelope(5, None, Ping(), b"\xaa")),
    ("empty padding", hexed("87 01 01 05 f6 80 f6 40"), Envelope(5, None, Ping())),
    ("an IPv6 host with a zone",
     hexed("85 01 1841 05 f6 81 81 83", ID, B, text("fe80::1%eth0"), "01"),
     Envelope(5, None, Nodes((Contact(ID_B, ("fe80::1%eth0", 1)),)))),
    ("an IPv4-mapped IPv6 host", hexed("85 01 1841 05 f6 81 81 83", ID, B,
                                       text("::ffff:1.2.3.4"), "01"),
     Envelope(5, None, Nodes((Contact(ID_B, ("::ffff:1.2.3.4", 1)),)))),
]


@pytest.mark.parametrize(("datagram", "envelope"), [(d, e) for _, d, e in ACCEPTED],
                         ids=[name for name, _, _ in ACCEPTED])
def test_any_well_formed_encoding_is_accepted(datagram: bytes, envelope: Envelope) -> None:
    assert CODEC.decode(datagram) == envelope


# ---------------------------------------------------------------------------- refused forms

REFUSED: list[tuple[str, bytes]] = [
    ("not CBOR", hexed("ff")),
    ("not an array", hexed("a0")),
    ("four items", hexed("84 01 01 05 f6")),
    ("eight items", hexed("88 01 01 05 f6 80 f6 40 00")),
    ("version 2", hexed("85 02 01 05 f6 80")),
    ("version as a float", hexed("85 f93c00 01 05 f6 80")),
    ("code 0", hexed("85 01 00 05 f6 80")),
    ("unknown code 99", hexed("85 01 1863 05 f6 80")),
    ("code as a boolean", hexed("85 01 f5 05 f6 80")),
    ("negative rpc id", hexed("85 01 01 20 f6 80")),
    ("rpc id 2^64", hexed("85 01 01 c2 49 01 0000000000000000 f6 80")),
    ("rpc id as a boolean", hexed("85 01 01 f5 f6 80")),
    ("a 31-byte sender", hexed("85 01 01 05 581f", "11" * 31, "80")),
    ("sender as text", hexed("85 01 01 05 61 61 80")),
    ("sender undefined, not null", hexed("85 01 01 05 f7 80")),
    ("fields not an array", hexed("85 01 01 05 f6 f6")),
    ("a field too many", hexed("85 01 01 05 f6 81 00")),
    ("a field too few", hexed("85 01 02 05 f6 80")),
    ("an empty token", hexed("86 01 01 05 f6 80 40")),
    ("a 33-byte token", hexed("86 01 01 05 f6 80 5821", "77" * 33)),
    ("a text token", hexed("86 01 01 05 f6 80 61 61")),
    ("text padding", hexed("87 01 01 05 f6 80 f6 61 61")),
    ("STORE cache as an integer", hexed("85 01 04 05 f6 83 40 01 00")),
    ("STORE ttl negative", hexed("85 01 04 05 f6 83 40 20 f4")),
    ("STORE value of 8193 bytes", hexed("85 01 04 05 f6 83 592001", "00" * 8193, "01 f4")),
    ("SEARCH after as an integer", hexed("85 01 06 05 f6 82", ID, B, "00")),
    ("contact port 0", hexed("85 01 1841 05 f6 81 81 83", ID, B, text("1.2.3.4"), "00")),
    ("contact port 65536",
     hexed("85 01 1841 05 f6 81 81 83", ID, B, text("1.2.3.4"), "1a00010000")),
    ("contact host a name", hexed("85 01 1841 05 f6 81 81 83", ID, B, text("localhost"), "01")),
    ("contact host with leading zeros",
     hexed("85 01 1841 05 f6 81 81 83", ID, B, text("01.2.3.4"), "01")),
    ("contact host in brackets", hexed("85 01 1841 05 f6 81 81 83", ID, B, text("[::1]"), "01")),
    ("contact host as bytes", hexed("85 01 1841 05 f6 81 81 83", ID, B, "47", b"1.2.3.4".hex(),
                                    "01")),
    ("contact of two items", hexed("85 01 1841 05 f6 81 81 82", ID, B, text("1.2.3.4"))),
    ("ERROR code 65536", hexed("85 01 187f 05 f6 82 1a00010000 60")),
    ("ERROR reason as bytes", hexed("85 01 187f 05 f6 82 01 41 61")),
    ("ERROR reason of invalid UTF-8", hexed("85 01 187f 05 f6 82 01 61 ff")),
    ("ENTRIES more as an integer", hexed("85 01 1844 05 f6 83 80 00 80")),
    ("SUBSCRIBE lease 0", hexed("85 01 0c 05 f6 82", ID, B, "00")),
    ("NAMESPACE_STORE public key of 31 bytes",
     hexed("85 01 08 05 f6 86 581f", "44" * 31, ID, B, "00 40 5840", SIG, "01")),
    ("NAMESPACE_STORE signature of 63 bytes",
     hexed("85 01 08 05 f6 86", ID, PK, ID, B, "00 40 583f", "55" * 63, "01")),
    ("NAMESPACE_STORE seq 2^63",
     hexed("85 01 08 05 f6 86", ID, PK, ID, B, "1b8000000000000000 40 5840", SIG, "01")),
    ("NAMESPACE_STORE without ttl",
     hexed("85 01 08 05 f6 85", ID, PK, ID, B, "00 40 5840", SIG)),
    ("DHT_PUT without republish", hexed("85 01 10 05 f6 82 40 01")),
]


@pytest.mark.parametrize("datagram", [d for _, d in REFUSED], ids=[name for name, _ in REFUSED])
def test_malformed_datagram_is_refused(datagram: bytes) -> None:
    with pytest.raises(ProtocolError):
        CODEC.decode(datagram)


def contacts_field(count: int, host: str = "1.2.3.4") -> bytes:
    contact = hexed("83", ID, B) + bytes([0x60 + len(host)] if len(host) < 24
                                         else [0x78, len(host)]) + host.encode() + b"\x01"
    head = bytes([0x80 + count]) if count < 24 else bytes([0x98, count])
    return head + contact * count


def test_field_kind_limits() -> None:
    """The bounds of docs/PROTOCOL.md, "Field kinds", each side of the line."""
    nodes = hexed("85 01 1841 05 f6 81")
    many = CODEC.decode(nodes + contacts_field(64)).message
    assert isinstance(many, Nodes) and len(many.nodes) == 64
    with pytest.raises(ProtocolError):
        CODEC.decode(nodes + contacts_field(65))
    longest = "1111:2222:3333:4444:5555:6666:7777:8888%abcde"
    assert len(longest) == 45 and CODEC.decode(nodes + contacts_field(1, longest))
    with pytest.raises(ProtocolError):  # a valid literal, but 46 characters
        CODEC.decode(nodes + contacts_field(1, longest + "f"))
    with pytest.raises(ProtocolError):  # a zone of 16 characters
        CODEC.decode(nodes + contacts_field(1, "fe80::1%" + "a" * 16))
    # TEXT counts characters (Unicode code points), not bytes: 256 two-byte characters pass.
    error = hexed("85 01 187f 05 f6 82 01")
    assert CODEC.decode(error + hexed("790200", "c3a9" * 256)).message == Error(1, "é" * 256)
    with pytest.raises(ProtocolError):
        CODEC.decode(error + hexed("790101", "61" * 257))
    value = hexed("85 01 1842 05 f6 82")
    assert CODEC.decode(value + hexed("592000", "00" * 8192, "00")).message == Value(
        bytes(8192), 0)
    with pytest.raises(ProtocolError):
        CODEC.decode(value + hexed("592001", "00" * 8193, "00"))


def test_datagram_size_limit() -> None:
    """8704 bytes are accepted (with anything after the array), 8705 are not."""
    ping = hexed("85 01 01 05 f6 80")
    assert CODEC.decode(ping + bytes(8704 - len(ping))) == Envelope(5, None, Ping())
    with pytest.raises(ProtocolError):
        CODEC.decode(ping + bytes(8705 - len(ping)))


# ---------------------------------------------------------------------------- the record formats


def test_namespace_signed_bytes() -> None:
    """docs/PROTOCOL.md, "Namespaces": a CBOR array of five items."""
    expected = hexed("85 72", b"qadom/namespace/v1".hex(), ID, PK, ID, B, "1903e8 43 616263")
    assert qadom.namespace.signing_bytes(bytes.fromhex(PK), ID_B, 1000, b"abc") == expected


def test_dht_record_encoding() -> None:
    """docs/PROTOCOL.md, "Signed /dht records": [1, key, mode, [[data, pub_key, exp_time,
    sign]]], an integer exp_time in its shortest form, a float one as a 64-bit float."""
    sign, pub = bytes(range(64)), bytes([2]) + bytes(range(32))
    entry = qadom.dhtrecords.Entry("d", pub, 1700000000, sign, pub)
    record = qadom.dhtrecords.Record("k", "SECURED", (entry,))
    head = hexed("84 01", text("k"), text("SECURED"), "81 84", text("d"), "5821", pub.hex())
    assert qadom.dhtrecords.encode_record(record) == head + hexed("1a6553f100 5840", sign.hex())
    floating = qadom.dhtrecords.Record("k", "SECURED", (
        qadom.dhtrecords.Entry("d", pub, 1700000000.5, sign, pub),))
    assert qadom.dhtrecords.encode_record(floating) == head + hexed(
        "fb41d954fc40200000 5840", sign.hex())


def test_dht_signed_text_of_a_float_exp_time() -> None:
    """`str(exp_time)` as docs/PROTOCOL.md spells it: an integral float keeps its ".0"."""
    key, data, mode = "k", "d", "SECURED"
    prefix = hashlib.sha1(b"k").hexdigest()
    assert qadom.dhtrecords.signed_message(key, data, 1700000000.0, mode) == (
        hashlib.sha1(f"{prefix}d1700000000.0SECURED".encode()).digest())
    assert qadom.dhtrecords.signed_message(key, data, 1700000000, mode) == (
        hashlib.sha1(f"{prefix}d1700000000SECURED".encode()).digest())
    assert qadom.dhtrecords.signed_message(key, data, None, mode) == (
        hashlib.sha1(f"{prefix}dNoneSECURED".encode()).digest())


# ---------------------------------------------------------------------------- the document's tables


def _doc_tables() -> tuple[dict[int, tuple[str, str]], dict[int, str]]:
    """The message rows (code -> name, fields) and error rows (code -> name) of PROTOCOL.md."""
    messages: dict[int, tuple[str, str]] = {}
    errors: dict[int, str] = {}
    mode = None
    for line in PROTOCOL.read_text().splitlines():
        if line.startswith(("| code | name | fields", "| code | name | meaning",
                            "| error code | name | meaning")):
            mode = "fields" if "fields" in line else "errors"
            continue
        if not line.startswith("|"):
            mode = None
            continue
        row = re.match(r"\| (\d+) \| ([A-Z_]+) \| ([^|]*)\|", line)
        if row is None or mode is None:
            continue
        code, name, rest = int(row[1]), row[2], row[3]
        if mode == "fields":
            assert code not in messages, f"message code {code} listed twice"
            messages[code] = (name, rest)
        else:
            assert code not in errors, f"error code {code} listed twice"
            errors[code] = name
    return messages, errors


def _wire_name(cls: type[Message]) -> str:
    name = re.sub(r"(?<!^)(?=[A-Z])", "_", cls.__name__).upper()
    return {"INFO_REQUEST": "INFO"}.get(name, name)


def test_document_lists_every_message_with_its_fields() -> None:
    messages, _ = _doc_tables()
    assert set(messages) == set(MESSAGE_TYPES)
    for code, (name, fields) in messages.items():
        cls = MESSAGE_TYPES[code]
        assert _wire_name(cls) == name
        plain = re.sub(r"\([^)]*\)", "", fields).strip()
        listed = [] if plain.startswith("\u2014") else [f.strip() for f in plain.split(",")]
        assert [f.split(":")[0].strip() for f in listed] == [n for n, _ in cls.FIELDS], name
        for item, (_, kind) in zip(listed, cls.FIELDS, strict=True):
            if ":" in item:  # NAMESPACE_FOUND refers to NAMESPACE_STORE for its first five
                assert Kind[item.split(":")[1].split()[0]] is kind, (name, item)


def test_document_lists_every_error_code() -> None:
    _, errors = _doc_tables()
    assert errors == {code.value: code.name for code in ErrorCode}


def test_dht_refusal_classes() -> None:
    """docs/PROTOCOL.md, DHT_REFUSED codes: what fails to decode is malformed (1), a write of two
    entries unauthorized (2)."""
    dht, config = qadom.dhtrecords, Config()
    secret, other = bytes([1]) * 32, bytes([2]) * 32
    mine = dht.make_entry(secret, "k", "d", dht.CONTROLLED)
    yours = dht.make_entry(other, "k", "e", dht.CONTROLLED)
    both = dht.Record("k", dht.CONTROLLED, (mine, yours))
    assert dht.decode_record(dht.encode_record(both), config) == both
    with pytest.raises(qadom.errors.Unauthorized):  # code 2
        dht.apply_write(None, both, 0.0, config)
    malformed = [
        dht.Record("k" * 513, dht.SECURED, (mine,)),  # a key over 512 bytes
        dht.Record("", dht.SECURED, (mine,)),  # an empty key
        dht.Record("k", dht.SECURED, (mine, yours)),  # SECURED of two entries
        dht.Record("k", dht.CONTROLLED, (mine, mine)),  # two entries of one key
        dht.Record("k", dht.SECURED, (dht.Entry("d", mine.pub_key, math.inf, mine.sign,
                                                mine.owner),)),
        dht.Record("k", dht.SECURED, (dht.Entry("d", mine.pub_key, 2**53, mine.sign,
                                                mine.owner),)),
    ]
    for record in malformed:
        with pytest.raises(ProtocolError):  # code 1
            dht.decode_record(dht.encode_record(record), config)
    assert dht.decode_record(dht.encode_record(dht.Record("é" * 256, dht.SECURED, (mine,))),
                             config).key == "é" * 256
