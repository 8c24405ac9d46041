"""The wire messages: typed, immutable objects, one class per request and reply.

Every message travels in an :class:`Envelope` (version, message code, request id, sender id). The
byte layout lives in :mod:`qadom.codec`; docs/PROTOCOL.md describes both for other implementers.
Request codes are 1-63, reply codes 64-127; a reply carries the request id of the request it
answers.

Each class lists its wire fields in ``FIELDS`` as ``(attribute, kind)`` pairs, in wire order; the
codec encodes and checks every field from that table, so adding an RPC means adding one class here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

from .contact import Contact

PROTOCOL_VERSION = 1


class Kind(IntEnum):
    """Field kinds understood by the codec (see docs/PROTOCOL.md, 'Field kinds')."""

    ID = 1  # 32-byte big-endian byte string <-> int in [0, 2**256)
    OPT_ID = 2  # ID or null
    VALUE = 3  # byte string of at most max_value_size bytes
    BOOL = 4
    UINT16 = 5
    TEXT = 6  # UTF-8 text of at most 256 characters (code points)
    CONTACTS = 7  # array of at most 64 [id, host, port] triples
    IDS = 8  # array of at most max_datagram_size // 34 (256) IDs
    UINT64 = 9  # unsigned integer below 2**64 (sequence numbers, stream ids, milliseconds)
    SHORT_BYTES = 10  # byte string of at most 64 bytes (public keys, signatures)


class ErrorCode(IntEnum):
    """Why a request was refused (the ``code`` of an :class:`Error` reply)."""

    BAD_REQUEST = 1  # the request was understood but its contents are invalid
    KEY_MISMATCH = 2  # a value whose hash is not the key (reserved: never sent)
    STORAGE_FULL = 3  # a quota is exhausted or the store cannot be written; nothing was stored
    RATE_LIMITED = 4  # the sender asks too often
    UNSUPPORTED = 5  # a request this node does not serve
    INTERNAL = 6  # the node failed to handle a valid request
    BAD_SIGNATURE = 7  # a signed record whose signature does not verify; nothing was stored
    STALE_SEQUENCE = 8  # a record older than, or conflicting with, the stored one; kept that
    TOO_MANY_SUBSCRIBERS = 9  # the topic has the maximum number of subscribers at this peer
    NOT_SUBSCRIBED = 10  # a delivery for a topic the receiver does not subscribe to
    STORAGE_UNAVAILABLE = 11  # the receiver's store cannot be read now; nothing was changed
    TOO_MANY_STREAMS = 12  # a PUBLISH opening a stream beyond its sender's share at the relay
    STREAM_TAKEN = 13  # a PUBLISH on a stream the relay keeps for another address


@dataclass(frozen=True, slots=True)
class Message:
    """Base class of every request and reply."""

    CODE: ClassVar[int]
    FIELDS: ClassVar[tuple[tuple[str, Kind], ...]] = ()
    IS_REQUEST: ClassVar[bool]
    LARGE_REPLY: ClassVar[bool] = False
    """A request whose answer may be large: sent padded to a peer that gave us no token yet."""
    RATE_OF_ITS_OWN: ClassVar[bool] = False
    """A request that its handler limits at a rate of its own (a PUBLISH, by the publisher's
    message rate), so that a RATE_LIMITED answer to it may speak of that rate, not of the rate of
    our requests to that peer."""


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True, slots=True)
class Ping(Message):
    """Are you alive? Answered by :class:`Pong`. Also how a node learns an address's id."""

    CODE = 1
    IS_REQUEST = True


@dataclass(frozen=True, slots=True)
class FindNode(Message):
    """The k contacts closest to ``target`` that the receiver knows. Answered by :class:`Nodes`."""

    CODE = 2
    IS_REQUEST = True
    LARGE_REPLY = True
    FIELDS = (("target", Kind.ID),)
    target: int


@dataclass(frozen=True, slots=True)
class FindValue(Message):
    """The value stored under ``key``, else the k closest contacts (:class:`Value` or
    :class:`Nodes`)."""

    CODE = 3
    IS_REQUEST = True
    LARGE_REPLY = True
    FIELDS = (("key", Kind.ID),)
    key: int


@dataclass(frozen=True, slots=True)
class Store(Message):
    """Store ``value`` under its SHA-256 key for ``ttl`` seconds; ``cache`` marks a copy cached
    along a lookup path (kept, never republished). Answered by :class:`Stored` or
    :class:`Error`."""

    CODE = 4
    IS_REQUEST = True
    FIELDS = (("value", Kind.VALUE), ("ttl", Kind.UINT64), ("cache", Kind.BOOL))
    value: bytes
    ttl: int = 86400
    cache: bool = False


@dataclass(frozen=True, slots=True)
class Append(Message):
    """Add ``value`` to the multimap set under ``key`` for ``ttl`` seconds. Answered by
    :class:`Stored` or :class:`Error`."""

    CODE = 5
    IS_REQUEST = True
    FIELDS = (("key", Kind.ID), ("value", Kind.ID), ("ttl", Kind.UINT64))
    key: int
    value: int
    ttl: int = 86400


@dataclass(frozen=True, slots=True)
class Search(Message):
    """One page of the multimap set under ``key``: the values greater than ``after`` (all when
    null), in increasing order. Answered by :class:`Entries`."""

    CODE = 6
    IS_REQUEST = True
    LARGE_REPLY = True
    FIELDS = (("key", Kind.ID), ("after", Kind.OPT_ID))
    key: int
    after: int | None = None


@dataclass(frozen=True, slots=True)
class FindNodeStore(Message):
    """A lookup step of a set: the k contacts closest to SHA-256(``value``) that the receiver
    knows, as :class:`FindNode`; and the receiver stores ``value`` for ``ttl`` seconds, as
    :class:`Store` would, if fewer than k of the contacts it knows are closer to that key than
    itself. Answered by :class:`NodesStored` (or :class:`Error` for a ttl of 0)."""

    CODE = 7
    IS_REQUEST = True
    LARGE_REPLY = True
    FIELDS = (("value", Kind.VALUE), ("ttl", Kind.UINT64))
    value: bytes
    ttl: int = 86400


# ----------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class Pong(Message):
    """Reply to :class:`Ping`; the envelope's sender field carries the id."""

    CODE = 64
    IS_REQUEST = False


@dataclass(frozen=True, slots=True)
class Nodes(Message):
    """Up to k contacts, closest to the requested target first."""

    CODE = 65
    IS_REQUEST = False
    FIELDS = (("nodes", Kind.CONTACTS),)
    nodes: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class Value(Message):
    """The value held under the requested key, and how many seconds the holder's copy has
    left (at most ``expire_time``): a copy cached from it never outlives it."""

    CODE = 66
    IS_REQUEST = False
    FIELDS = (("value", Kind.VALUE), ("ttl", Kind.UINT64))
    value: bytes
    ttl: int = 86400


@dataclass(frozen=True, slots=True)
class Stored(Message):
    """The write was accepted (and, for durable stores, committed)."""

    CODE = 67
    IS_REQUEST = False


@dataclass(frozen=True, slots=True)
class Entries(Message):
    """A page of multimap values in increasing order, whether more follow, and the k closest
    contacts to the key (so a search is also a lookup)."""

    CODE = 68
    IS_REQUEST = False
    FIELDS = (("values", Kind.IDS), ("more", Kind.BOOL), ("nodes", Kind.CONTACTS))
    values: tuple[int, ...]
    more: bool
    nodes: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class NodesStored(Message):
    """Reply to :class:`FindNodeStore`: up to k contacts closest to the key, closest first, and
    whether the receiver now holds the value (false: it is not among the k closest it knows, or
    its store is full)."""

    CODE = 69
    IS_REQUEST = False
    FIELDS = (("nodes", Kind.CONTACTS), ("stored", Kind.BOOL))
    nodes: tuple[Contact, ...]
    stored: bool


@dataclass(frozen=True, slots=True)
class Error(Message):
    """The request was refused; ``code`` is an :class:`ErrorCode`."""

    CODE = 127
    IS_REQUEST = False
    FIELDS = (("code", Kind.UINT16), ("reason", Kind.TEXT))
    code: int
    reason: str


@dataclass(frozen=True, slots=True)
class Envelope:
    """One datagram: a message, the request id that pairs a reply with its request, and the
    sender's node id (null for a client that does not want to enter routing tables).

    ``token`` proves, in a request, that the sender receives the responder's datagrams at its
    address; in a reply it is a token granted to the requester for its next requests.
    ``pad_to`` (encoding only) pads the datagram to at least that many bytes, so that a first
    request to a peer is large enough to be answered in full (see docs/PROTOCOL.md,
    "Amplification")."""

    rpc_id: int
    sender: int | None
    message: Message
    token: bytes | None = None
    pad_to: int = field(default=0, compare=False)


class _EnvelopeSlots:
    """The slots of :class:`Envelope`, in its order, without the frozen dataclass's
    ``__setattr__``: :func:`make_envelope` fills one with plain attribute stores and then makes it
    an Envelope (same slots, so the same layout: what ``__class__`` assignment requires)."""

    __slots__ = Envelope.__slots__
    rpc_id: int
    sender: int | None
    message: Message
    token: bytes | None
    pad_to: int


def make_envelope(rpc_id: int, sender: int | None, message: Message,
                  token: bytes | None = None) -> Envelope:
    """What ``Envelope(rpc_id, sender, message, token)`` builds (equal, of type Envelope, as
    frozen), at a fifth of the cost: the frozen dataclass's ``__init__`` sets each slot through
    ``object.__setattr__`` by name, and setting them through the slot descriptors costs a call
    each, where a class without the frozen ``__setattr__`` stores them directly. The codec builds
    one per datagram received."""
    envelope = _EnvelopeSlots()
    envelope.rpc_id = rpc_id
    envelope.sender = sender
    envelope.message = message
    envelope.token = token
    envelope.pad_to = 0
    envelope.__class__ = Envelope  # type: ignore[assignment]
    return envelope  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Challenge(Message):
    """Reply to a request whose answer would be too large to send to an address that has not
    proven it receives our datagrams: resend the request with the token in this envelope."""

    CODE = 88
    IS_REQUEST = False


MESSAGE_TYPES: dict[int, type[Message]] = {}


def register(cls: type[Message]) -> type[Message]:
    """Make ``cls`` known to the codec. Codes are unique; requests 1-63, replies 64-127."""
    code = cls.CODE
    if code in MESSAGE_TYPES or not (1 <= code <= 63 if cls.IS_REQUEST else 64 <= code <= 127):
        raise ValueError(f"bad or duplicate message code {code} for {cls.__name__}")
    MESSAGE_TYPES[code] = cls
    return cls


for _cls in (Ping, FindNode, FindValue, Store, Append, Search, FindNodeStore, Pong, Nodes, Value,
             Stored, Entries, NodesStored, Error, Challenge):
    register(_cls)
