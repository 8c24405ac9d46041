"""Hostile envelopes: integers of thousands of digits (CBOR bignums) in any slot, and checks
that fail in a way they did not foresee, decode to ProtocolError and nothing else; over real UDP
such datagrams are counted as malformed and log nothing."""

from __future__ import annotations

import email.parser
import logging
import socket
import uuid
from collections.abc import Callable

import cbor2
import pytest

import qadom.node  # noqa: F401  (registers every message type, its services' too)
from qadom import Config
from qadom.cbor import REFUSED
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.dhtrecords import decode_record
from qadom.errors import ProtocolError
from qadom.messages import MESSAGE_TYPES, PROTOCOL_VERSION, FindNode, Kind, NodesStored
from qadom.namespace import NamespaceRecord

from helpers import udp_network, wait_until

# More decimal digits than Python writes by default (sys.get_int_max_str_digits(): 4300), and
# still a datagram of about 2 KB.
HUGE = 10**5000
CODEC = Codec(Config())
ID = bytes(32)

# A valid wire value of each field kind: an envelope of these decodes, or is refused by its
# message class's own rules; one slot replaced by a huge integer must be refused all the same.
SAMPLE: dict[Kind, object] = {
    Kind.ID: ID, Kind.OPT_ID: None, Kind.VALUE: b"", Kind.BOOL: False, Kind.UINT16: 0,
    Kind.TEXT: "", Kind.CONTACTS: [], Kind.IDS: [], Kind.UINT64: 1, Kind.SHORT_BYTES: b"",
}


def negated(item: object) -> object:
    """``item`` with every HUGE in it, at any depth, replaced by -HUGE."""
    if isinstance(item, list):
        return [negated(x) for x in item]
    return -HUGE if item is HUGE else item


def envelopes() -> list[tuple[str, bytes]]:
    """(name, datagram) for a huge integer, positive and negative, in every slot of the
    envelope, every field of every registered message, and every item of a contact or id list."""
    cases: list[tuple[str, list[object]]] = [
        ("version", [HUGE, 1, 1, None, []]),
        ("code", [PROTOCOL_VERSION, HUGE, 1, None, []]),
        ("rpc_id", [PROTOCOL_VERSION, 1, HUGE, None, []]),
        ("sender", [PROTOCOL_VERSION, 1, 1, HUGE, []]),
        ("fields", [PROTOCOL_VERSION, 1, 1, None, HUGE]),
        ("token", [PROTOCOL_VERSION, 1, 1, None, [], HUGE]),
        ("padding", [PROTOCOL_VERSION, 1, 1, None, [], None, HUGE]),
        ("contact id", [PROTOCOL_VERSION, 65, 1, ID, [[[HUGE, "127.0.0.1", 1]]]]),
        ("contact host", [PROTOCOL_VERSION, 65, 1, ID, [[[ID, HUGE, 1]]]]),
        ("contact port", [PROTOCOL_VERSION, 65, 1, ID, [[[ID, "127.0.0.1", HUGE]]]]),
        ("contact", [PROTOCOL_VERSION, 65, 1, ID, [[HUGE]]]),
        ("listed id", [PROTOCOL_VERSION, 68, 1, ID, [[HUGE], False, []]]),
    ]
    for code, cls in sorted(MESSAGE_TYPES.items()):
        for index, (name, _) in enumerate(cls.FIELDS):
            fields = [SAMPLE[kind] for _, kind in cls.FIELDS]
            fields[index] = HUGE
            cases.append((f"{cls.__name__}.{name}", [PROTOCOL_VERSION, code, 1, ID, fields]))
    out = []
    for name, items in cases:
        out.append((name, cbor2.dumps(items)))
        out.append((f"{name} (negative)", cbor2.dumps(negated(items))))
    return out


CASES = envelopes()


@pytest.mark.parametrize(("name", "data"), CASES, ids=[name for name, _ in CASES])
def test_a_huge_integer_in_any_slot_is_a_protocol_error(name: str, data: bytes) -> None:
    assert b"\xc2" in data or b"\xc3" in data  # the integer is there, as a bignum
    assert len(data) <= CODEC.max_datagram
    with pytest.raises(ProtocolError) as raised:
        CODEC.decode(data)
    assert len(str(raised.value)) < 200  # says what is wrong, without the value's digits


def test_an_unforeseen_failure_of_a_check_is_a_protocol_error() -> None:
    codec = Codec(Config())

    def broken(raw: object) -> int:
        raise OverflowError("a check that met what it did not foresee")

    codec._decoders[Kind.ID] = broken  # before the first FindNode builds its plan
    data = codec.encode_parts(1, None, FindNode(5))
    with pytest.raises(ProtocolError):
        codec.decode(data)


async def test_huge_integers_over_udp_are_counted_as_malformed_and_log_nothing(
        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    datagrams = [data for _, data in CASES]
    async with udp_network(2) as (a, b):
        def counted(count: int) -> Callable[[], bool]:
            return lambda: a.stats.get("malformed", 0) >= count

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            sender.bind(("127.0.0.1", 0))
            for count, data in enumerate(datagrams, 1):  # one at a time: none overflows a buffer
                sender.sendto(data, a.address)
                await wait_until(counted(count), timeout=5)
        assert a.stats.get("malformed", 0) == len(datagrams)
        key = await b.set(b"still fine")
        assert await a.get(key) == b"still fine"
        assert a.stats.get("internal_errors", 0) == 0
    assert [r for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert [r for r in caplog.records if r.exc_info and r.levelno > logging.DEBUG] == []


def test_a_known_contact_id_with_a_bad_host_or_port_is_checked_again() -> None:
    """A contact whose id was decoded before is reused only for the same host and port: the
    same id with a port that is a boolean, out of range, or a host that is not text is refused
    as it would be for an id never seen."""
    codec = Codec(Config())
    node_id = bytes(range(32))
    good = [node_id, "127.0.0.1", 1]

    def reply(contact: list[object]) -> bytes:
        return cbor2.dumps([PROTOCOL_VERSION, 69, 7, None, [[contact], True]])

    def nodes(data: bytes) -> tuple[Contact, ...]:
        message = codec.decode(data).message
        assert isinstance(message, NodesStored)
        return message.nodes

    (decoded,) = nodes(reply(good))
    assert decoded.address == ("127.0.0.1", 1)
    for bad in ([node_id, "127.0.0.1", True], [node_id, "127.0.0.1", 0],
                [node_id, "127.0.0.1", 65536], [node_id, b"127.0.0.1", 1],
                [node_id, "127.0.0.1", 1.0], [node_id[:31], "127.0.0.1", 1]):
        with pytest.raises(ProtocolError):
            codec.decode(reply(bad))
    assert nodes(reply(good)) == (decoded,)


# Every tag that cbor2 decodes to a type of its own (dates, decimals, regular expressions, MIME
# messages, UUIDs, IP addresses, sets...), and one it does not know.
BUILT_IN_TAGS = (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004,
                 43000, 55799, 12345)
MIME = "Content-Type: multipart/mixed; boundary=a\n\n" + "--a\n\n" * 1300


def tagged(tag: int) -> bytes:
    """A FindNode whose rpc id is written as ``tag`` wrapping a payload of its usual kind."""
    payload: object = {36: MIME, 37: bytes(16), 35: "a+", 5: [3, 10**2000], 4: [3, 10**2000],
                       0: "2020-01-01T00:00:00Z", 260: bytes(4), 261: [24, bytes(4)]}.get(tag, 1)
    return cbor2.dumps([PROTOCOL_VERSION, FindNode.CODE, cbor2.CBORTag(tag, payload), ID, [ID]])


@pytest.mark.parametrize("tag", BUILT_IN_TAGS)
def test_a_tag_of_no_qadom_type_is_refused_without_running_its_decoder(
        tag: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """cbor2 would parse a MIME message (tag 36) with the email parser, a bigfloat (tag 5) with
    decimal arithmetic: milliseconds for one datagram. The tag is refused, its decoder not run."""
    parsed: list[str] = []

    def parse(what: str) -> Callable[..., None]:
        return lambda *args, **kwargs: parsed.append(what)

    monkeypatch.setattr(email.parser.Parser, "parsestr", parse("mime"))
    monkeypatch.setattr(uuid.UUID, "__init__", parse("uuid"))
    data = tagged(tag)
    assert len(data) <= CODEC.max_datagram
    with pytest.raises(ProtocolError, match="not CBOR"):
        CODEC.decode(data)
    assert parsed == []
    for decode in (lambda d: decode_record(d, Config()), NamespaceRecord.from_bytes):
        with pytest.raises(ProtocolError):
            decode(cbor2.dumps([1, cbor2.CBORTag(tag, 1), 0, b""]))


def test_every_tag_the_installed_cbor2_decodes_is_refused_but_bignums() -> None:
    """qadom.cbor lists the tags cbor2 gives a type of its own: a cbor2 that knows more (an
    upgrade) must not decode them behind its back. Tags up to 70 000 (the registry's common
    ones, and every one cbor2 has decoded so far)."""
    known = []
    for tag in range(70_000):
        try:
            decoded = cbor2.loads(cbor2.dumps(cbor2.CBORTag(tag, 0)))
        except Exception:  # a decoder that refused the payload 0: one of cbor2's own
            known.append(tag)
            continue
        if not isinstance(decoded, cbor2.CBORTag):
            known.append(tag)
    assert sorted(set(known) - {2, 3}) == sorted(REFUSED)


def test_bignums_still_decode() -> None:
    plain = CODEC.encode_parts(7, None, FindNode(5))
    written = cbor2.dumps([PROTOCOL_VERSION, FindNode.CODE, cbor2.CBORTag(2, b"\x07"), None,
                           [(5).to_bytes(32, "big")]])
    assert CODEC.decode(written) == CODEC.decode(plain)
