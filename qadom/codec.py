"""The CBOR codec: :class:`~qadom.messages.Envelope` <-> bytes, with every size bounded.

A datagram is one CBOR array ``[version, code, rpc_id, sender, fields]``, optionally followed (in
the array) by ``token`` and then ``padding``:

* ``version``: 1 (:data:`~qadom.messages.PROTOCOL_VERSION`);
* ``code``: the message code (requests 1-63, replies 64-127);
* ``rpc_id``: unsigned 64-bit request id, chosen at random by the requester, echoed by the reply;
* ``sender``: the sender's 32-byte node id, or null for a client that stays out of routing tables;
* ``fields``: an array of the message's fields in the order of its ``FIELDS`` table;
* ``token``: null or 1 to 32 bytes (an address-proof token, see docs/PROTOCOL.md "Amplification");
* ``padding``: a byte string the receiver ignores; written as zero bytes.

Guarantee: :meth:`Codec.decode` either returns a well-formed envelope whose every field has been
type- and range-checked, or raises :class:`~qadom.errors.ProtocolError`; no other exception escapes,
whatever the input bytes. Encoding checks only the datagram's size, so that sending stays cheap: a
message whose fields are within their kinds (what the node builds) never encodes to a datagram
the decoder would refuse, but one with a field out of its kind's range (a 300-character reason, a
port 0) is the sender's mistake and is refused by the receiver.
"""

from __future__ import annotations

from collections.abc import Callable
from operator import call
from typing import Any, NamedTuple

import cbor2

from .cbor import REFUSED, refuse
from .config import MAX_CONTACTS, Config
from .contact import Contact, is_ip_literal, make_contact
from .errors import InvalidArgument, ProtocolError
from .ids import ID_BYTES, id_to_bytes
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, Envelope, Kind, Message
from .messages import make_envelope as _envelope

MAX_RPC_ID = (1 << 64) - 1
MAX_TEXT = 256
# MAX_CONTACTS (config): a reply naming more is refused; k is at most that
MAX_HOST = 45  # the longest textual IPv6 address
MAX_TOKEN = 32
MAX_SHORT_BYTES = 64  # an ed25519 signature, the longest fixed-size field

# int.from_bytes bound once: reading it off int builds a new bound method at every call.
_from_bytes = int.from_bytes


def _id_in(raw: object) -> int:
    if type(raw) is not bytes or len(raw) != ID_BYTES:
        raise ProtocolError("id must be a 32-byte string")
    return _from_bytes(raw, "big")


def _shown(raw: object) -> str:
    """An unchecked decoded value as a few characters of text for an error message: an integer
    of at most 64 bits as its digits, anything else as its type's name. Never formats a value of
    unbounded size (the decimal digits of a huge integer cost quadratic time, and past 4300 of
    them Python refuses to write them at all)."""
    if type(raw) is int:
        return str(raw) if -MAX_RPC_ID <= raw <= MAX_RPC_ID else "beyond 64 bits"
    return f"of type {type(raw).__name__}"


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
    if not is_ip_literal(host):
        raise ProtocolError("contact host is not an IP address")
    if len(_VALID_HOSTS) >= _VALID_HOSTS_MAX:
        _VALID_HOSTS.clear()
    _VALID_HOSTS[host] = host
    return host


# Contacts decoded from replies, by their 32-byte id. Replies name the same nodes over and over
# (the peers near a target all answer with much the same k contacts), and building a Contact is
# most of the cost of decoding one. An entry serves only a contact whose host and port are equal
# too, so it is the very Contact the full check would build. Bounded: emptied when full.
_DECODED_CONTACTS: dict[bytes, Contact] = {}
_DECODED_CONTACTS_MAX = 4096


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
        # Message code -> (class, its field decoders in wire order), built on first use: classes
        # may be registered after this codec is made, and register() never replaces a code.
        # At most one entry per registered code.
        self._plans: dict[int, tuple[type[Message], tuple[Callable[[object], object], ...]]] = {}
        # The last sender id written, and its item: a node writes its own id into almost every
        # datagram it sends (the same int object each time, so an identity check finds it).
        self._sender: int | None = None
        self._sender_item = b""

    # ------------------------------------------------------------------ encoding

    def encode(self, envelope: Envelope) -> bytes:
        """The datagram for ``envelope``. Raises InvalidArgument if it would exceed the limit."""
        return self.encode_parts(envelope.rpc_id, envelope.sender, envelope.message,
                                 envelope.token, envelope.pad_to)

    def encode_parts(self, rpc_id: int, sender: int | None, message: Message,
                     token: bytes | None = None, pad_to: int = 0) -> bytes:
        """``encode(Envelope(rpc_id, sender, message, token, pad_to))``, the same bytes, without
        building the envelope (the node's every send: a frozen dataclass costs a microsecond)."""
        cls = type(message)
        prefix, fields_head, writers = _ENCODE_PLANS.get(cls) or _encode_plan(cls)
        # The items, written directly (see "CBOR writing" below), into one join. The common cases
        # are written inline, without a helper call each (a few tenths of a microsecond per
        # call, several calls per datagram): a random request id (8 bytes from 2**32), an id,
        # a message of at most one field, a token of under 256 bytes.
        if type(rpc_id) is int and 4294967296 <= rpc_id < _UINT64_END:
            rpc_id_item = (_UINT64_HEAD | rpc_id).to_bytes(9, "big")
        else:
            rpc_id_item = _dump_item(rpc_id)
        if sender is None:
            sender_item = b"\xf6"
        elif sender is self._sender:  # the node's own id, in almost every datagram it sends
            sender_item = self._sender_item
        else:
            sender_item = _ID_HEAD + sender.to_bytes(ID_BYTES, "big")
            self._sender, self._sender_item = sender, sender_item
        # The array's head, and its 6th item when there is a token (what _close writes).
        if token is None:
            head, tail = _ARRAY_5, b""
        elif type(token) is bytes and len(token) < 256:
            head, tail = _ARRAY_6, _HEADS[2][len(token)] + token
        else:
            head, tail = _ARRAY_6, _dump_item(token)
        if not writers:
            data = b"".join([head, prefix, rpc_id_item, sender_item, fields_head, tail])
        elif len(writers) == 1:
            name, write = writers[0]
            data = b"".join([head, prefix, rpc_id_item, sender_item, fields_head,
                             write(getattr(message, name)), tail])
        else:
            data = b"".join([head, prefix, rpc_id_item, sender_item, fields_head,
                             *[write(getattr(message, name)) for name, write in writers], tail])
        if len(data) < pad_to:
            # A 6th (null token) and 7th item of zero bytes; with their heads the datagram ends
            # up to 4 bytes longer than pad_to, never shorter. The first five items are what
            # lies between the one-byte head and the token.
            data = _close(data[1:len(data) - len(tail)], token, bytes(pad_to - len(data)))
        if len(data) > self.max_datagram:
            raise InvalidArgument(
                f"{cls.__name__} of {len(data)} bytes exceeds the "
                f"{self.max_datagram}-byte datagram limit"
            )
        return data

    # ------------------------------------------------------------------ decoding

    def decode(self, data: bytes) -> Envelope:
        """Parse and check one datagram; raises :class:`ProtocolError` and nothing else."""
        if len(data) > self.max_datagram:
            raise ProtocolError(f"datagram of {len(data)} bytes exceeds the limit")
        try:
            # Tags refused, no tag's decoder run (qadom.cbor): a MIME message or a bigfloat
            # would cost milliseconds.
            raw = cbor2.loads(data, semantic_decoders=REFUSED, tag_hook=refuse)
        except Exception as exc:  # cbor2 raises several classes (and RecursionError) on bad input
            raise ProtocolError(f"not CBOR: {type(exc).__name__}") from None
        # Every check below raises ProtocolError itself; the handler after them is the last line
        # of defence that keeps the guarantee should one of them meet a value it did not foresee.
        # (A try block costs nothing until something is raised.)
        try:
            if type(raw) is not list:
                raise ProtocolError("envelope must be an array of 5 to 7 items")
            size = len(raw)
            if size == 5:
                version, code, rpc_id, sender, fields = raw
                token = None
            elif size == 6:  # with a token: most requests, and replies granting one
                version, code, rpc_id, sender, fields, token = raw
                if token is not None and (type(token) is not bytes
                                          or not 0 < len(token) <= MAX_TOKEN):
                    raise ProtocolError(f"token must be null or 1 to {MAX_TOKEN} bytes")
            elif size == 7:
                version, code, rpc_id, sender, fields, token, padding = raw
                if token is not None and (type(token) is not bytes
                                          or not 0 < len(token) <= MAX_TOKEN):
                    raise ProtocolError(f"token must be null or 1 to {MAX_TOKEN} bytes")
                if type(padding) is not bytes:
                    raise ProtocolError("padding must be a byte string")
            else:
                raise ProtocolError("envelope must be an array of 5 to 7 items")
            if type(version) is not int or version != PROTOCOL_VERSION:
                raise ProtocolError(f"unsupported protocol version {_shown(version)}")
            plan = self._plans.get(code) if type(code) is int else None
            cls, decoders = plan if plan is not None else self._plan(code)
            if type(rpc_id) is not int or not 0 <= rpc_id <= MAX_RPC_ID:
                raise ProtocolError("rpc id must be an unsigned 64-bit integer")
            if sender is not None:  # _id_in(sender), inline
                if type(sender) is not bytes or len(sender) != ID_BYTES:
                    raise ProtocolError("id must be a 32-byte string")
                sender = _from_bytes(sender, "big")
            if type(fields) is not list or len(fields) != len(decoders):
                raise ProtocolError(f"{cls.__name__} takes {len(decoders)} fields")
            # Equal lengths: each field meets its decoder. No field or one, the common cases, skip
            # map (a few tenths of a microsecond).
            if not fields:
                values: tuple[object, ...] = ()
            elif len(fields) == 1:
                values = (decoders[0](fields[0]),)
            else:
                values = tuple(map(call, decoders, fields))
            try:
                message: Message = cls(*values)
            except Exception as exc:  # a message class may check cross-field rules in
                # __post_init__, with text of its own (never the values it was given)
                raise ProtocolError(f"invalid {cls.__name__}: {exc}") from None
            return _envelope(rpc_id, sender, message, token)
        except ProtocolError:
            raise
        except Exception as exc:
            raise ProtocolError(f"malformed envelope: {type(exc).__name__}") from None

    def _plan(self, code: object) -> tuple[type[Message], tuple[Callable[[object], object], ...]]:
        """The class and field decoders of a registered ``code``, kept for the next datagram."""
        if type(code) is not int or code not in MESSAGE_TYPES:
            raise ProtocolError(f"unknown message code {_shown(code)}")
        cls = MESSAGE_TYPES[code]
        plan = self._plans[code] = (cls, tuple(self._decoders[kind] for _, kind in cls.FIELDS))
        return plan

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
        memo, hosts = _DECODED_CONTACTS, _VALID_HOSTS
        for item in raw:
            if type(item) is not list or len(item) != 3:
                raise ProtocolError("contact must be [id, host, port]")
            node_id, host, port = item
            if type(node_id) is bytes and type(port) is int:
                # A contact decoded before at the same address (most contacts of a reply):
                # equal to a checked id, host and port, so it passes every check below.
                contact = memo.get(node_id)
                if contact is not None and contact.address == (host, port):
                    contacts.append(contact)
                    continue
            if type(port) is not int or not 0 < port < 65536:
                raise ProtocolError("contact port out of range")
            if type(node_id) is not bytes or len(node_id) != ID_BYTES:
                raise ProtocolError("id must be a 32-byte string")
            if type(host) is not str:
                raise ProtocolError("contact host must be an IP address string")
            contact = memo.get(node_id)
            if contact is None or contact.address != (host, port):
                known = hosts.get(host)
                contact = make_contact(_from_bytes(node_id, "big"),
                                       (known if known is not None else _check_host(host), port))
                if len(memo) >= _DECODED_CONTACTS_MAX:
                    memo.clear()
                memo[node_id] = contact
            contacts.append(contact)
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
# RPC's encoding, and over half a microsecond per contact of a Nodes reply. The codec writes its
# datagrams directly: every byte is exactly what cbor2.dumps([PROTOCOL_VERSION, code, rpc_id,
# sender, fields, ...]) writes, RFC 8949 preferred serialization (shortest argument, definite
# lengths). CBOR items concatenate: an array is its head followed by its items, each written as
# cbor2 would write it alone, so any value outside the shapes written here (a mistyped field, a
# non-ASCII host) is handed to cbor2.dumps on its own and still gives the same bytes.

_UINT64_END = 1 << 64
_HEADS = [[bytes((major << 5 | n,)) if n < 24 else bytes((major << 5 | 24, n)) for n in range(256)]
          for major in range(8)]  # _HEADS[major type][argument] for arguments below 256
_ID_HEAD = _HEADS[2][ID_BYTES]
_UINT64_HEAD = 27 << 64  # _head(0, n) for 2**32 <= n < 2**64 is (_UINT64_HEAD | n), 9 bytes


def _head(major: int, n: int) -> bytes:
    """The head of a CBOR item of ``major`` type with argument ``0 <= n < 2**64``."""
    if n < 256:
        return _HEADS[major][n]
    # The initial byte (major type, then 25, 26 or 27: a 2-, 4- or 8-byte argument follows) and
    # the argument, big-endian, written as one integer.
    if n < 65536:
        return ((major << 5 | 25) << 16 | n).to_bytes(3, "big")
    if n < 4294967296:
        return ((major << 5 | 26) << 32 | n).to_bytes(5, "big")
    return ((major << 5 | 27) << 64 | n).to_bytes(9, "big")


def _dump_item(item: Any) -> bytes:
    """``cbor2.dumps(item)``: written here for byte strings, unsigned 64-bit ints, None and bools,
    by cbor2 for anything else."""
    kind = type(item)
    if kind is bytes:
        data: bytes = _head(2, len(item)) + item
        return data
    if kind is int and 0 <= item < _UINT64_END:
        return _head(0, item)
    if item is None:
        return b"\xf6"
    if kind is bool:
        return b"\xf5" if item else b"\xf4"
    return bytes(cbor2.dumps(item))


_VERSION = _dump_item(PROTOCOL_VERSION)


def _close(core: bytes, token: bytes | None, padding: bytes | None = None) -> bytes:
    """The datagram whose first five items are written in ``core``: followed by ``token`` when
    there is a token or padding, and by ``padding`` when there is padding."""
    if padding is not None:
        return b"".join([_HEADS[4][7], core, b"\xf6" if token is None else _dump_item(token),
                         _dump_item(padding)])
    if token is not None:
        return _HEADS[4][6] + core + _dump_item(token)
    return _HEADS[4][5] + core


_ARRAY_5, _ARRAY_6 = _HEADS[4][5], _HEADS[4][6]  # the heads of a datagram without / with a token
_CONTACT_HEAD = _HEADS[4][3] + _ID_HEAD  # an array of 3 items, the first a 32-byte string


def _dump_contact(contact: Contact) -> bytes:
    """``cbor2.dumps([id bytes, host, port])``, written here when the host is ASCII text of under
    256 characters (always, for an IP literal) and the port an unsigned 16-bit int, and then kept
    on the contact (:attr:`Contact.wire`)."""
    node_id = contact.id.to_bytes(ID_BYTES, "big")
    address = contact.address
    host, port = address[0], address[1]
    if not (type(host) is str and len(host) < 256 and host.isascii()
            and type(port) is int and 0 <= port < 65536):
        return bytes(cbor2.dumps([node_id, host, port]))
    # The port's head is _head(0, port) inlined (a 2-byte argument from 256): one call less
    # per contact of a reply whose contacts have no bytes kept yet.
    port_head = _HEADS[0][port] if port < 256 else (0x19 << 16 | port).to_bytes(3, "big")
    data = b"".join([_CONTACT_HEAD, node_id, _HEADS[3][len(host)], host.encode("ascii"),
                     port_head])
    if type(contact) is Contact and type(address) is tuple:
        # Kept on the (immutable) contact itself: a routing table's contacts are sent over and
        # over, and the bytes live exactly as long as the contact. Only exact Contacts with a
        # tuple address are kept: a subclass or a list address could change or write otherwise.
        object.__setattr__(contact, "wire", data)
    return data


def _dump_contacts(contacts: tuple[Contact, ...]) -> bytes:
    """The CBOR array of ``[id bytes, host, port]`` triples, as cbor2 writes it."""
    parts = []
    for contact in contacts:
        wire = contact.wire
        parts.append(wire if wire is not None else _dump_contact(contact))
    return _head(4, len(parts)) + b"".join(parts)


def _dump_ids(ids: tuple[int, ...]) -> bytes:
    """The CBOR array of 32-byte ids, as cbor2 writes it."""
    parts = [_ID_HEAD + id_to_bytes(item) for item in ids]
    return _head(4, len(parts)) + b"".join(parts)


def _dump_id(value: int) -> bytes:
    return _ID_HEAD + id_to_bytes(value)


def _dump_opt_id(value: int | None) -> bytes:
    return b"\xf6" if value is None else _ID_HEAD + id_to_bytes(value)


# How each field kind is written, where it is not the value as it is: an id as its 32 bytes,
# contacts as [id bytes, host, port] triples (docs/PROTOCOL.md, "Field kinds").
_FIELD_WRITERS: dict[Kind, Callable[[Any], bytes]] = {
    Kind.ID: _dump_id,
    Kind.OPT_ID: _dump_opt_id,
    Kind.CONTACTS: _dump_contacts,
    Kind.IDS: _dump_ids,
}


class _EncodePlan(NamedTuple):
    """What :meth:`Codec.encode` needs of a message class, computed once."""

    prefix: bytes  # the version and the message code
    fields_head: bytes  # the head of the fields array
    writers: tuple[tuple[str, Callable[[Any], bytes]], ...]  # (attribute, writer), wire order


_Plan = tuple[bytes, bytes, tuple[tuple[str, Callable[[Any], bytes]], ...]]
"""An :class:`_EncodePlan`'s items as a plain tuple, which unpacks faster than the named one."""

# One plan per message class, built on first use: at most one entry per class.
_ENCODE_PLANS: dict[type[Message], _Plan] = {}


def _encode_plan(cls: type[Message]) -> _Plan:
    """Build and keep the plan of ``cls`` (fields without a writer of their own are written as
    they are)."""
    plan = _EncodePlan(_VERSION + _dump_item(cls.CODE), _head(4, len(cls.FIELDS)),
                       tuple((name, _FIELD_WRITERS.get(kind, _dump_item))
                             for name, kind in cls.FIELDS))
    kept = _ENCODE_PLANS[cls] = (plan.prefix, plan.fields_head, plan.writers)
    return kept
