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
MAX_SHORT_BYTES = 64  # an ed25519 signature, the longest fixed-size field


def _id_in(raw: object) -> int:
    if type(raw) is not bytes or len(raw) != ID_BYTES:
        raise ProtocolError("id must be a 32-byte string")
    return id_from_bytes(raw)


def _check_host(host: object) -> str:
    if type(host) is not str or not 0 < len(host) <= MAX_HOST:
        raise ProtocolError("contact host must be an IP address string")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ProtocolError("contact host is not an IP address") from None
    return host


def _contact_in(raw: object) -> Contact:
    if type(raw) is not list or len(raw) != 3:
        raise ProtocolError("contact must be [id, host, port]")
    node_id, host, port = raw
    if type(port) is not int or not 0 < port < 65536:
        raise ProtocolError("contact port out of range")
    return Contact(_id_in(node_id), (_check_host(host), port))


def _contact_out(contact: Contact) -> list[Any]:
    return [id_to_bytes(contact.id), contact.address[0], contact.address[1]]


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
        data: bytes = cbor2.dumps([PROTOCOL_VERSION, message.CODE, envelope.rpc_id, sender, fields])
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
        if type(raw) is not list or len(raw) != 5:
            raise ProtocolError("envelope must be an array of 5 items")
        version, code, rpc_id, sender, fields = raw
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
        return Envelope(rpc_id, sender_id, message)

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
        return tuple(_contact_in(item) for item in raw)

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


def _encode_field(kind: Kind, value: Any) -> Any:
    if kind is Kind.ID:
        return id_to_bytes(value)
    if kind is Kind.OPT_ID:
        return None if value is None else id_to_bytes(value)
    if kind is Kind.CONTACTS:
        return [_contact_out(contact) for contact in value]
    if kind is Kind.IDS:
        return [id_to_bytes(item) for item in value]
    return value
