"""The CBOR codec: :class:`~qadom.messages.Envelope` <-> bytes, with every size bounded.

A datagram is one CBOR array ``[version, code, rpc_id, sender, fields]``:

* ``version``: 1 (:data:`~qadom.messages.PROTOCOL_VERSION`);
* ``code``: the message code (requests 1-63, replies 64-127);
* ``rpc_id``: unsigned 64-bit request id, chosen at random by the requester, echoed by the reply;
* ``sender``: the sender's 32-byte node id, or null for a client that stays out of routing tables;
* ``fields``: an array of the message's fields in the order of its ``FIELDS`` table.

Guarantee: :meth:`Codec.decode` either returns a well-formed envelope whose every field has been
type- and range-checked, or raises :class:`~qadom.errors.ProtocolError`; no other exception escapes,
whatever the input bytes. Encoding never produces a datagram the decoder would refuse.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from typing import Any

import cbor2

from .config import Config
from .contact import Contact
from .errors import InvalidArgument, ProtocolError
from .ids import ID_BYTES, id_from_bytes, id_to_bytes
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, Envelope, Kind, Message

MAX_RPC_ID = (1 << 64) - 1
MAX_TEXT = 256
MAX_CONTACTS = 64  # more than any k in use; a reply naming more is refused
MAX_HOST = 45  # the longest textual IPv6 address
MAX_TOKEN = 32
MAX_SHORT_BYTES = 64  # an ed25519 signature, the longest fixed-size field


def _id_in(raw: object) -> int:
    if type(raw) is not bytes or len(raw) != ID_BYTES:
        raise ProtocolError("id must be a 32-byte string")
    return id_from_bytes(raw)


# Hosts that passed the full check, each mapped to one shared string. Parsing an IP literal costs
# several microseconds, and a Nodes reply names up to k hosts, mostly the same few; the memo makes
# the common case one dict lookup. Bounded: it is emptied when full, so a flood of distinct hosts
# costs only the full check it would have cost anyway.
_VALID_HOSTS: dict[str, str] = {}
_VALID_HOSTS_MAX = 4096


def _check_host(host: object) -> str:
    if type(host) is not str or not 0 < len(host) <= MAX_HOST:
        raise ProtocolError("contact host must be an IP address string")
    known = _VALID_HOSTS.get(host)
    if known is not None:
        return known
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ProtocolError("contact host is not an IP address") from None
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS[host] = host
    return host


class Codec:
    """Encodes and decodes envelopes under the size limits of one :class:`Config`."""

    def __init__(self, config: Config) -> None:
        self.max_datagram = config.max_datagram_size
        self.max_value = config.max_value_size
        self.max_ids = config.max_datagram_size // (ID_BYTES + 2)
        self._decoders: dict[Kind, Callable[[object], object]] = {
            Kind.ID: _id_in,
            Kind.OPT_ID: lambda raw: None if raw is None else _id_in(raw),
            Kind.VALUE: self._value_in,
            Kind.BOOL: self._bool_in,
            Kind.UINT16: self._uint16_in,
            Kind.TEXT: self._text_in,
            Kind.CONTACTS: self._contacts_in,
            Kind.IDS: self._ids_in,
            Kind.UINT64: self._uint64_in,
            Kind.SHORT_BYTES: self._short_bytes_in,
        }

    # ------------------------------------------------------------------ encoding

    def encode(self, envelope: Envelope) -> bytes:
        """The datagram for ``envelope``. Raises InvalidArgument if it would exceed the limit."""
        message = envelope.message
        fields = [_encode_field(kind, getattr(message, name)) for name, kind in message.FIELDS]
        sender = None if envelope.sender is None else id_to_bytes(envelope.sender)
        token, pad_to = envelope.token, envelope.pad_to
        data = _dump_envelope(message.CODE, envelope.rpc_id, sender, fields, token)
        if len(data) < pad_to:
            # A 6th (null token) and 7th item of zero bytes; with their heads the datagram ends
            # up to 4 bytes longer than pad_to, never shorter.
            data = _dump_envelope(message.CODE, envelope.rpc_id, sender, fields, token,
                                  bytes(pad_to - len(data)))
        if len(data) > self.max_datagram:
            raise InvalidArgument(
                f"{type(message).__name__} of {len(data)} bytes exceeds the "
                f"{self.max_datagram}-byte datagram limit"
            )
        return data

    # ------------------------------------------------------------------ decoding

    def decode(self, data: bytes) -> Envelope:
        """Parse and check one datagram; raises :class:`ProtocolError` and nothing else."""
        if len(data) > self.max_datagram:
            raise ProtocolError(f"datagram of {len(data)} bytes exceeds the limit")
        try:
            raw = cbor2.loads(data)
        except Exception as exc:  # cbor2 raises several classes (and RecursionError) on bad input
            raise ProtocolError(f"not CBOR: {type(exc).__name__}") from None
        if type(raw) is not list or not 5 <= len(raw) <= 7:
            raise ProtocolError("envelope must be an array of 5 to 7 items")
        version, code, rpc_id, sender, fields = raw[:5]
        token = raw[5] if len(raw) > 5 else None
        if token is not None and (type(token) is not bytes or not 0 < len(token) <= MAX_TOKEN):
            raise ProtocolError(f"token must be null or 1 to {MAX_TOKEN} bytes")
        if len(raw) > 6 and type(raw[6]) is not bytes:
            raise ProtocolError("padding must be a byte string")
        if version != PROTOCOL_VERSION or type(version) is not int:
            raise ProtocolError(f"unsupported protocol version {version!r}")
        if type(code) is not int or code not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message code {code!r}")
        if type(rpc_id) is not int or not 0 <= rpc_id <= MAX_RPC_ID:
            raise ProtocolError("rpc id must be an unsigned 64-bit integer")
        sender_id = None if sender is None else _id_in(sender)
        cls = MESSAGE_TYPES[code]
        if type(fields) is not list or len(fields) != len(cls.FIELDS):
            raise ProtocolError(f"{cls.__name__} takes {len(cls.FIELDS)} fields")
        values = [self._decoders[kind](item)
                  for (_, kind), item in zip(cls.FIELDS, fields, strict=True)]
        try:
            message: Message = cls(*values)
        except Exception as exc:  # a message class may check cross-field rules in __post_init__
            raise ProtocolError(f"invalid {cls.__name__}: {exc}") from None
        return Envelope(rpc_id, sender_id, message, token)

    def _value_in(self, raw: object) -> bytes:
        if type(raw) is not bytes or len(raw) > self.max_value:
            raise ProtocolError("value must be a byte string within the size limit")
        return raw

    @staticmethod
    def _bool_in(raw: object) -> bool:
        if type(raw) is not bool:
            raise ProtocolError("expected a boolean")
        return raw

    @staticmethod
    def _uint16_in(raw: object) -> int:
        if type(raw) is not int or not 0 <= raw < 65536:
            raise ProtocolError("expected an unsigned 16-bit integer")
        return raw

    @staticmethod
    def _text_in(raw: object) -> str:
        if type(raw) is not str or len(raw) > MAX_TEXT:
            raise ProtocolError("expected text of at most 256 characters")
        return raw

    @staticmethod
    def _contacts_in(raw: object) -> tuple[Contact, ...]:
        if type(raw) is not list or len(raw) > MAX_CONTACTS:
            raise ProtocolError(f"expected an array of at most {MAX_CONTACTS} contacts")
        # One loop, no helper calls per contact: a Nodes reply carries up to k contacts and
        # decoding them is most of the work of a lookup reply. A contact is [id, host, port].
        contacts = []
        hosts = _VALID_HOSTS
        for item in raw:
            if type(item) is not list or len(item) != 3:
                raise ProtocolError("contact must be [id, host, port]")
            node_id, host, port = item
            if type(port) is not int or not 0 < port < 65536:
                raise ProtocolError("contact port out of range")
            if type(node_id) is not bytes or len(node_id) != ID_BYTES:
                raise ProtocolError("id must be a 32-byte string")
            known = hosts.get(host) if type(host) is str else None
            contacts.append(Contact(int.from_bytes(node_id, "big"),
                                    (known if known is not None else _check_host(host), port)))
        return tuple(contacts)

    @staticmethod
    def _uint64_in(raw: object) -> int:
        if type(raw) is not int or not 0 <= raw <= MAX_RPC_ID:
            raise ProtocolError("expected an unsigned 64-bit integer")
        return raw

    @staticmethod
    def _short_bytes_in(raw: object) -> bytes:
        if type(raw) is not bytes or len(raw) > MAX_SHORT_BYTES:
            raise ProtocolError(f"expected a byte string of at most {MAX_SHORT_BYTES} bytes")
        return raw

    def _ids_in(self, raw: object) -> tuple[int, ...]:
        if type(raw) is not list or len(raw) > self.max_ids:
            raise ProtocolError("expected an array of ids")
        return tuple(_id_in(item) for item in raw)


# ---------------------------------------------------------------------------- CBOR writing
# cbor2.dumps costs several microseconds per call whatever the size, more than the rest of a small
# RPC's encoding. The envelope's fixed shape and the flat field lists of most messages are
# written here directly; nested lists (contacts, ids) and anything unusual still go through
# cbor2. The bytes are exactly cbor2.dumps([PROTOCOL_VERSION, code, rpc_id, sender, fields]):
# RFC 8949 preferred serialization (shortest argument, definite lengths), as cbor2 writes it.

_UINT64_END = 1 << 64
_HEADS = [[bytes((major << 5 | n,)) if n < 24 else bytes((major << 5 | 24, n)) for n in range(256)]
          for major in range(8)]  # _HEADS[major type][argument] for arguments below 256
_ID_HEAD = _HEADS[2][ID_BYTES]


def _head(major: int, n: int) -> bytes:
    """The head of a CBOR item of ``major`` type with argument ``0 <= n < 2**64``."""
    if n < 256:
        return _HEADS[major][n]
    if n < 65536:
        return bytes((major << 5 | 25,)) + n.to_bytes(2, "big")
    if n < 4294967296:
        return bytes((major << 5 | 26,)) + n.to_bytes(4, "big")
    return bytes((major << 5 | 27,)) + n.to_bytes(8, "big")


def _dump_flat(fields: list[Any]) -> bytes | None:
    """A list of byte strings, unsigned 64-bit ints, None and bools; None for anything else."""
    if len(fields) >= 24:
        return None
    parts = [_HEADS[4][len(fields)]]
    for item in fields:
        kind = type(item)
        if kind is bytes:
            if len(item) >= 4294967296:
                return None
            parts.append(_head(2, len(item)))
            parts.append(item)
        elif kind is int:
            if not 0 <= item < _UINT64_END:
                return None
            parts.append(_head(0, item))
        elif item is None:
            parts.append(b"\xf6")
        elif kind is bool:
            parts.append(b"\xf5" if item else b"\xf4")
        else:
            return None
    return b"".join(parts)


def _dump_envelope(code: int, rpc_id: int, sender: bytes | None, fields: list[Any],
                   token: bytes | None = None, padding: bytes | None = None) -> bytes:
    """``cbor2.dumps(items)``, byte for byte, where ``items`` is ``[PROTOCOL_VERSION, code,
    rpc_id, sender, fields]`` followed by ``token`` when there is a token or padding, and by
    ``padding`` when there is padding."""
    items: list[Any] = [PROTOCOL_VERSION, code, rpc_id, sender, fields]
    if token is not None or padding is not None:
        items.append(token)
    if padding is not None:
        items.append(padding)
    if (type(code) is not int or not 0 <= code < 256 or type(rpc_id) is not int
            or not 0 <= rpc_id < _UINT64_END or PROTOCOL_VERSION >= 24):
        return bytes(cbor2.dumps(items))
    if sender is None:
        sender_part = b"\xf6"
    elif type(sender) is bytes and len(sender) == ID_BYTES:
        sender_part = _ID_HEAD + sender
    else:
        return bytes(cbor2.dumps(items))
    if not fields:
        fields_part = _HEADS[4][0]
    else:
        flat = _dump_flat(fields)
        fields_part = flat if flat is not None else bytes(cbor2.dumps(fields))
    parts = [_HEADS[4][len(items)], _HEADS[0][PROTOCOL_VERSION], _HEADS[0][code],
             _head(0, rpc_id), sender_part, fields_part]
    for extra in items[5:]:
        parts.append(b"\xf6" if extra is None else _head(2, len(extra)) + extra)
    return b"".join(parts)


def _encode_field(kind: Kind, value: Any) -> Any:
    if kind is Kind.ID:
        return id_to_bytes(value)
    if kind is Kind.OPT_ID:
        return None if value is None else id_to_bytes(value)
    if kind is Kind.CONTACTS:
        return [[c.id.to_bytes(ID_BYTES, "big"), c.address[0], c.address[1]] for c in value]
    if kind is Kind.IDS:
        return [id_to_bytes(item) for item in value]
    return value
