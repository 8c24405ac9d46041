"""Signed namespaces: mutable records owned by an ed25519 key, like BitTorrent's BEP 44 mutable
items with values of up to 8192 bytes.

A record is ``(public_key, key, seq, value, signature)``. Its owner signs, with the ed25519 key
whose 32-byte public half is ``public_key``, exactly the bytes :func:`signing_bytes` builds::

    cbor2.dumps(["qadom/namespace/v1", public_key, key.to_bytes(32, "big"), seq, value])

and the record lives at the k closest peers to :func:`storage_key`,
``sha256(public_key + key.to_bytes(32, "big"))`` read as a big-endian integer. Anybody can sign
with plain PyNaCl from these two definitions (docs/PROTOCOL.md, "Namespaces").

Guarantees:

* Nothing is stored, locally or by any replica, unless its signature verifies over exactly those
  bytes; a local caller gets :class:`~qadom.errors.BadSignature` before anything is sent, a remote
  sender an ``Error(BAD_SIGNATURE)`` reply (it keeps its place in our routing table: a request's
  sender proves nothing, so punishing it would let anyone evict any contact by naming it; a peer
  that answers our own request with a forged record is punished).
* Versions only move forward (:func:`supersedes`): a record replaces the stored one only with a
  higher ``seq``; a lower ``seq``, or the same ``seq`` with another value, is refused
  (:class:`~qadom.errors.StaleSequence`, ``Error(STALE_SEQUENCE)``) and the stored record kept. The
  same record again is accepted and changes nothing but, at most, how long it is kept. So
  replaying an old signed record can never roll a key back.
* A get returns the valid record with the highest ``seq`` among our own store and every replica the
  lookup reached, then writes it back to the replicas that answered with an older one and to the
  k closest that had none (read repair), with what is left of its lifetime. A peer that answers
  with a forged record is dropped from the routing table (:meth:`~qadom.node.Node.punish`) and
  its answer ignored.
* Records live as values do (paper section 2.5): a TTL travels with every NAMESPACE_STORE, a
  replica drops the record ``ttl`` seconds (at most ``expire_time``) after receiving it, storers
  republish it hourly to the k closest with what is left of it, and the peer that published it
  with :meth:`NamespaceService.set` republishes it as is every 24 hours with a fresh TTL until
  :meth:`NamespaceService.forget`. A republish is a NAMESPACE_STORE like any other, so an older
  ``seq`` republished to a replica holding a newer one is refused there.
* A publisher stops renewing its record, and a storer republishing its copy, once a newer
  ``seq`` of the same key is proven to exist: when a newer version replaces ours here (from any
  sender), we keep it only as a storer, with the lifetime it came with; when a replica refuses
  our republish as stale, we ask it for its record, and a valid one with a higher ``seq`` ends
  our republishing (we keep it as a storer, with the lifetime left of it, if we count ourselves
  among its k closest, else we drop ours) and is sent, with the lifetime left of it, to the
  peers that took ours in that republish (a peer outside the k closest that the newer version
  never reached, met when one of the k closest did not answer). A refusal proves nothing by
  itself. So the newer version lives by its own publisher's renewals, and once it expires the
  key is unset: an older ``seq`` never comes back while a newer one of its owner lived. Only a
  peer that holds the older one and hears nothing of the newer one until it expired (cut off,
  or its correction lost, for that long) can bring it back; and the older record replayed
  after the newer one expired is, to every replica, a first write.

This module is part of the sans-IO core: no asyncio, no sockets, no clock; ``now`` comes in.
Records persist through the node's :class:`~qadom.storage.Store` as generic records of kind
``"namespace"`` (see :meth:`NamespaceRecord.to_bytes` for their encoding).
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cbor2
from nacl.exceptions import CryptoError
from nacl.signing import VerifyKey

from .call import Call
from .cbor import loads as cbor_loads
from .contact import Address, Contact, host_key
from .errors import (
    BadSignature,
    InvalidArgument,
    InvalidType,
    NotFoundError,
    ProtocolError,
    QadomError,
    StaleSequence,
    StorageFull,
    StorageUnavailable,
    ValueTooLarge,
)
from .held import CheckedRecords
from .ids import ID_BYTES, check_id
from .lookup import Lookup
from .messages import Error, ErrorCode, Kind, Message, Nodes, register
from .storage import (
    DueRecord,
    published_meta,
    received_meta,
    remaining_ttl,
    republish_schedule,
)

if TYPE_CHECKING:
    from .node import Node

NAMESPACE_TAG = "qadom/namespace/v1"
"""The domain-separation tag that starts every signed namespace message."""

RECORD_KIND = "namespace"
"""The kind under which records are kept in a :class:`~qadom.storage.Store`."""

PUBLIC_KEY_BYTES = 32
SIGNATURE_BYTES = 64
SEQ_LIMIT = 1 << 63
"""``seq`` is an int in ``[0, 2**63)``: it fits a signed 64-bit integer in any language."""

# A contact in a reply costs at most ~90 bytes (32-byte id, an IPv6 literal, a port, CBOR heads);
# the rest of a record reply (envelope, key, public key, seq, signature, ttl) stays under 320
# bytes.
_CONTACT_BYTES = 90
_RECORD_OVERHEAD = 320


def signing_bytes(public_key: bytes, key: int, seq: int, value: bytes) -> bytes:
    """The exact bytes a namespace record's signature covers:
    ``cbor2.dumps(["qadom/namespace/v1", public_key, key.to_bytes(32, "big"), seq, value])``."""
    return bytes(cbor2.dumps([NAMESPACE_TAG, public_key, key.to_bytes(ID_BYTES, "big"), seq,
                              value]))


def storage_key(public_key: bytes, key: int) -> int:
    """Where a record lives in the DHT: ``sha256(public_key + key.to_bytes(32, "big"))`` as a
    big-endian integer. One owner's keys spread over the whole id space."""
    digest = hashlib.sha256(public_key + key.to_bytes(ID_BYTES, "big")).digest()
    return int.from_bytes(digest, "big")


# ----------------------------------------------------------------------------- argument checks


def check_public_key(public_key: object) -> bytes:
    """``public_key`` if it is 32 bytes, else InvalidType / InvalidArgument."""
    return _check_fixed(public_key, PUBLIC_KEY_BYTES, "public_key")


def check_signature(signature: object) -> bytes:
    """``signature`` if it is 64 bytes, else InvalidType / InvalidArgument."""
    return _check_fixed(signature, SIGNATURE_BYTES, "signature")


def check_seq(seq: object) -> int:
    """``seq`` if it is an int in ``[0, 2**63)`` (``bool`` refused), else InvalidType /
    InvalidArgument."""
    if not isinstance(seq, int) or isinstance(seq, bool):
        raise InvalidType(f"seq must be an int in [0, 2**63), not {type(seq).__name__}")
    if not 0 <= seq < SEQ_LIMIT:
        raise InvalidArgument(f"seq must be in [0, 2**63), got {seq}")
    return seq


def check_record_value(value: object, max_size: int) -> bytes:
    if not isinstance(value, bytes):
        raise InvalidType(f"value must be bytes, not {type(value).__name__}")
    if len(value) > max_size:
        raise ValueTooLarge(f"value of {len(value)} bytes exceeds the {max_size}-byte limit")
    return value


def _check_fixed(data: object, size: int, name: str) -> bytes:
    if not isinstance(data, bytes):
        raise InvalidType(f"{name} must be {size} bytes, not {type(data).__name__}")
    if len(data) != size:
        raise InvalidArgument(f"{name} must be exactly {size} bytes, got {len(data)}")
    return data


# ----------------------------------------------------------------------------- records


@dataclass(frozen=True, slots=True)
class NamespaceRecord:
    """One signed version of ``key`` in the namespace of ``public_key``.

    Constructing one checks nothing; use :meth:`checked` for arguments from a caller and
    :meth:`verify` for the signature.
    """

    public_key: bytes
    key: int
    seq: int
    value: bytes
    signature: bytes

    @classmethod
    def checked(cls, public_key: object, key: object, seq: object, value: object,
                signature: object, *, max_value_size: int = 8192) -> NamespaceRecord:
        """A record from caller arguments, each checked (InvalidType / InvalidArgument /
        ValueTooLarge); the signature is not verified here."""
        return cls(check_public_key(public_key), check_id(key), check_seq(seq),
                   check_record_value(value, max_value_size), check_signature(signature))

    @property
    def storage_key(self) -> int:
        return storage_key(self.public_key, self.key)

    def signed_bytes(self) -> bytes:
        return signing_bytes(self.public_key, self.key, self.seq, self.value)

    def verify(self) -> None:
        """Raise :class:`~qadom.errors.BadSignature` unless the signature verifies."""
        if not self.is_valid():
            raise BadSignature(
                f"the signature of seq {self.seq} of key 0x{self.key:064x} does not verify with "
                f"public key {self.public_key.hex()} over the documented signed bytes")

    def is_valid(self) -> bool:
        """Whether the signature verifies (and the fields have their sizes)."""
        if len(self.public_key) != PUBLIC_KEY_BYTES or len(self.signature) != SIGNATURE_BYTES:
            return False
        if not 0 <= self.seq < SEQ_LIMIT or not 0 <= self.key < 1 << 256:
            return False
        try:
            VerifyKey(self.public_key).verify(self.signed_bytes(), self.signature)
        except (CryptoError, ValueError, TypeError):
            return False
        return True

    def to_bytes(self) -> bytes:
        """The stored form: ``cbor2.dumps([public_key, key (32 bytes), seq, value, signature])``."""
        return bytes(cbor2.dumps([self.public_key, self.key.to_bytes(ID_BYTES, "big"), self.seq,
                                  self.value, self.signature]))

    @classmethod
    def from_bytes(cls, data: bytes) -> NamespaceRecord:
        """Inverse of :meth:`to_bytes`; raises :class:`~qadom.errors.ProtocolError` on anything
        malformed (the signature is not verified here)."""
        try:
            raw = cbor_loads(data)
        except Exception as exc:  # cbor2 raises several classes on bad input
            raise ProtocolError(f"stored namespace record is not CBOR: {type(exc).__name__}"
                                ) from None
        if type(raw) is not list or len(raw) != 5:
            raise ProtocolError("stored namespace record must be an array of 5 items")
        public_key, key, seq, value, signature = raw
        if (type(public_key) is not bytes or len(public_key) != PUBLIC_KEY_BYTES
                or type(key) is not bytes or len(key) != ID_BYTES
                or type(seq) is not int or not 0 <= seq < SEQ_LIMIT
                or type(value) is not bytes
                or type(signature) is not bytes or len(signature) != SIGNATURE_BYTES):
            raise ProtocolError("stored namespace record has a malformed field")
        return cls(public_key, int.from_bytes(key, "big"), seq, value, signature)

    def __repr__(self) -> str:
        return (f"NamespaceRecord(public_key={self.public_key.hex()[:16]}…, key={self.key:064x}, "
                f"seq={self.seq}, value=<{len(self.value)} bytes>)")


def supersedes(new: NamespaceRecord, old: NamespaceRecord | None) -> bool:
    """The versioning rule. True: ``new`` replaces ``old`` (none stored, or a higher ``seq``).
    False: ``new`` is the record already stored (same ``seq``, same value), nothing to do.
    Raises :class:`~qadom.errors.StaleSequence` when ``new`` would roll the key back (a lower
    ``seq``) or conflict with it (same ``seq``, another value)."""
    if old is None or new.seq > old.seq:
        return True
    if new.seq == old.seq and new.value == old.value:
        return False
    if new.seq == old.seq:
        raise StaleSequence(f"seq {new.seq} of key 0x{new.key:064x} is already stored with "
                            "another value; a change needs a higher seq", old.seq)
    raise StaleSequence(f"seq {new.seq} of key 0x{new.key:064x} is older than the stored seq "
                        f"{old.seq}", old.seq)


def newest(records: Iterable[NamespaceRecord]) -> NamespaceRecord | None:
    """The record with the highest ``seq``; between two different records signed with the same
    ``seq`` (only their owner can make those), the one with the greater signature bytes, so every
    reader picks the same one."""
    return max(records, key=lambda r: (r.seq, r.signature), default=None)


def _decode_held(data: bytes) -> NamespaceRecord | None:
    """The record ``data``, read from the store, holds (None for bytes that are not one)."""
    try:
        return NamespaceRecord.from_bytes(data)
    except ProtocolError:
        return None


def _valid_held(skey: int, record: NamespaceRecord) -> bool:
    """Whether ``record``, read under the storage key ``skey``, is a record of that key whose
    signature verifies."""
    return record.storage_key == skey and record.is_valid()


# ----------------------------------------------------------------------------- wire messages


def _check_shape(public_key: bytes, signature: bytes, seq: int) -> None:
    # Called from __post_init__: the codec turns the InvalidArgument (a ValueError) into a
    # ProtocolError.
    if len(public_key) != PUBLIC_KEY_BYTES or len(signature) != SIGNATURE_BYTES:
        raise InvalidArgument("a public key is 32 bytes and a signature 64")
    if seq >= SEQ_LIMIT:
        raise InvalidArgument("seq must be below 2**63")


_RECORD_FIELDS = (("public_key", Kind.SHORT_BYTES), ("key", Kind.ID), ("seq", Kind.UINT64),
                  ("value", Kind.VALUE), ("signature", Kind.SHORT_BYTES))


@dataclass(frozen=True, slots=True)
class NamespaceStore(Message):
    """Store a signed record at its storage key for ``ttl`` seconds (positive, capped at
    ``expire_time``; a replica never shortens the lifetime it holds for the same record).
    Answered by :class:`NamespaceStored`, or by ``Error(BAD_SIGNATURE)`` /
    ``Error(STALE_SEQUENCE)`` / ``Error(BAD_REQUEST)`` (a ttl of 0) with nothing stored."""

    CODE = 8
    IS_REQUEST = True
    FIELDS = (*_RECORD_FIELDS, ("ttl", Kind.UINT64))
    public_key: bytes
    key: int
    seq: int
    value: bytes
    signature: bytes
    ttl: int = 86400

    def __post_init__(self) -> None:
        _check_shape(self.public_key, self.signature, self.seq)

    @classmethod
    def of(cls, record: NamespaceRecord, ttl: int = 86400) -> NamespaceStore:
        return cls(record.public_key, record.key, record.seq, record.value, record.signature,
                   ttl)

    def record(self) -> NamespaceRecord:
        return NamespaceRecord(self.public_key, self.key, self.seq, self.value, self.signature)


@dataclass(frozen=True, slots=True)
class NamespaceFind(Message):
    """The record stored under the storage key ``target`` (:class:`NamespaceFound`), else the k
    closest contacts (:class:`~qadom.messages.Nodes`)."""

    CODE = 9
    IS_REQUEST = True
    LARGE_REPLY = True
    FIELDS = (("target", Kind.ID),)
    target: int


@dataclass(frozen=True, slots=True)
class NamespaceStored(Message):
    """The record is stored (or was already)."""

    CODE = 72
    IS_REQUEST = False


@dataclass(frozen=True, slots=True)
class NamespaceFound(Message):
    """The record held under the requested storage key, as many of the k closest contacts to it
    as fit in the datagram (so a namespace get is also a lookup), and what is left of the
    record's lifetime there in seconds (``ttl``, what read repair writes it back with)."""

    CODE = 73
    IS_REQUEST = False
    FIELDS = (*_RECORD_FIELDS, ("nodes", Kind.CONTACTS), ("ttl", Kind.UINT64))
    public_key: bytes
    key: int
    seq: int
    value: bytes
    signature: bytes
    nodes: tuple[Contact, ...]
    ttl: int = 86400

    def __post_init__(self) -> None:
        _check_shape(self.public_key, self.signature, self.seq)

    def record(self) -> NamespaceRecord:
        return NamespaceRecord(self.public_key, self.key, self.seq, self.value, self.signature)


for _cls in (NamespaceStore, NamespaceFind, NamespaceStored, NamespaceFound):
    register(_cls)


# ----------------------------------------------------------------------------- the service


class NamespaceService:
    """The namespace rules on one :class:`~qadom.node.Node`: serves ``NamespaceStore`` and
    ``NamespaceFind``, and runs the set and get operations (``node.namespace.set/get``).

    ``node.stats`` counts ``namespace_stored`` (records accepted), ``namespace_refused`` (bad
    signatures and stale versions refused), ``namespace_forged`` (forged records met, from a
    sender or in a reply), ``namespace_repairs`` (read-repair writes sent, and newer records sent
    to the peers that took an older one we republished), ``namespace_unproven_refusals``
    (replicas that refused a set or our republish as stale but showed no record that justifies
    it), ``namespace_superseded`` (records we stopped renewing or republishing because a replica
    showed a newer ``seq``) and ``namespace_corrupt`` (stored records damaged on the disk: they
    no longer decode, or are not the record of their storage key, or their signature no longer
    verifies; each is deleted, and treated as absent, see :class:`CheckedRecords`).
    """

    KIND = RECORD_KIND
    """The kind of the records this service keeps (and republishes) in the node's store."""

    def __init__(self, node: Node) -> None:
        self.node = node
        node.register_handler(NamespaceStore, self._handle_store)
        node.require_proof(NamespaceStore)  # a write, charged to its source's host quota
        node.register_handler(NamespaceFind, self._handle_find)
        self._held: CheckedRecords[NamespaceRecord] = CheckedRecords(
            node, RECORD_KIND, "namespace_corrupt", _decode_held, _valid_held)

    # ------------------------------------------------------------------ local store

    def local(self, skey: int, now: float | None = None) -> NamespaceRecord | None:
        """The record this node stores under the storage key ``skey``, if any (with ``now``:
        unless it has expired), its signature verified: one damaged on the disk is deleted and
        taken as none (:class:`CheckedRecords`)."""
        return self._held.read(skey, now)

    def accept(self, record: NamespaceRecord, now: float, source: str = "",
               ttl: int | None = None) -> bool:
        """Verify ``record`` and store it if it is newer than ours: True when stored, False when
        it is the record we already hold. ``ttl`` is the lifetime it came with (positive
        seconds, capped at ``expire_time``; the same record again never shortens the lifetime we
        hold, see :func:`~qadom.storage.received_meta`); None: we publish it ourselves, as
        its original publisher, with a full lifetime. A newer version received replaces even a
        record we publish, and is kept as a storer's copy, never ours to renew: its own
        publisher renews it, and it expires when they stop. Raises BadSignature, StaleSequence
        or StorageFull (quotas of the sending host ``source``), storing nothing."""
        store, skey = self.node.store, record.storage_key
        try:
            record.verify()
            held = self.local(skey, now)
            newer = supersedes(record, held)
        except StorageUnavailable:
            raise  # our store's trouble, not the record's: counted where it is handled
        except QadomError:
            self.node.stats["namespace_refused"] += 1
            raise
        old = store.record_meta(RECORD_KIND, skey) if held is not None else None
        if ttl is None:
            meta = published_meta(now, self.node.config)
        else:
            # A newer version ends our publishing of the older one (old.original): renewing it
            # as ours would keep it alive past its own publisher's lifetime, and past its forget.
            meta = received_meta(None if newer else old, ttl, now, self.node.config, source,
                                 same=not newer)
        if newer or meta != old:
            data = record.to_bytes()
            store.put_record(RECORD_KIND, skey, data, now, meta=meta)
            self._held.remember(skey, data)
        if newer:
            self.node.stats["namespace_stored"] += 1
        return newer

    def forget(self, public_key: bytes, key: int) -> bool:
        """Stop republishing the record of ``key`` in the namespace of ``public_key`` as its
        original publisher; it then expires everywhere ``expire_time`` after our last
        republish. True if we had published it (with :meth:`set`) and no newer version of it
        has ended our publishing since, or if a :meth:`set` of it is on its way: that record is
        then neither stored here as ours nor renewed (a set asked for after the forget is stored
        and renewed as usual)."""
        check_public_key(public_key)
        check_id(key)
        return self.node.forget(storage_key(public_key, key))

    def republish(self, due: DueRecord, now: float,
                  missed: Callable[[float], None] | None = None) -> None:
        """Republish one record whose time has come (section 2.5): the signed record as is, in a
        NAMESPACE_STORE to the k closest, with a fresh lifetime from its original publisher and
        what is left of it from a storer; ``missed(now)`` if that reached nobody. A replica
        that refuses it as stale is asked for the record it holds (see :meth:`_send`)."""
        node = self.node
        record = self._held.checked(due.key, due.data)
        if record is None:  # damaged on the disk: deleted, never republished
            return
        meta, ttl = republish_schedule(due.meta, now, node.config)
        node.store.put_record(due.kind, due.key, due.data, now, meta=meta)
        if ttl >= 1:
            node.stats["republished"] += 1
            self._send(record, ttl, now, missed)

    def _send(self, record: NamespaceRecord, ttl: int, now: float,
              missed: Callable[[float], None] | None) -> None:
        """Send our ``record`` (ours to renew, or a storer's copy) to the k closest with ``ttl``,
        as :meth:`Node.replicate <qadom.node.Node.replicate>` does (``missed(now)`` if no peer
        answered), then ask each replica that refused it as stale for the record it holds: a
        valid one with a higher ``seq`` ends our republishing of ours, and is sent to the peers
        that stored ours (:meth:`_superseded`). A refusal alone costs nothing to send and proves
        nothing."""
        node = self.node
        message = NamespaceStore.of(record, ttl)

        def send_all(lookup: Lookup, now: float) -> None:
            closest = lookup.closest()

            def done(replies: list[tuple[Contact, Message | None]], now: float) -> None:
                if missed is not None and all(reply is None for _, reply in replies):
                    missed(now)
                refused = [c for c, r in replies
                           if isinstance(r, Error) and r.code == ErrorCode.STALE_SEQUENCE]
                if refused:
                    stored = [c for c, r in replies if isinstance(r, NamespaceStored)]
                    self._held_against(record, refused, now, lambda held, now: (
                        self._superseded(record, held, closest, stored, now)))

            node.ask_each(closest, message, now, done)

        node.closest_lookup(record.storage_key, now, send_all)

    def _held_against(self, record: NamespaceRecord, refused: list[Contact], now: float,
                      then: Callable[[list[tuple[Contact, NamespaceRecord, int]], float], None]
                      ) -> None:
        """Ask each of the replicas ``refused`` (they refused ``record`` as stale) for the record
        it holds, then ``then(held, now)`` with the valid ones ``record`` may not replace, each
        with the replica that showed it and what is left of its lifetime there. A refusal not
        backed so is counted in ``stats["namespace_unproven_refusals"]``; a forged record
        shown punishes its sender (:meth:`_check_found`)."""
        node, skey = self.node, record.storage_key

        def proven(found: list[tuple[Contact, Message | None]], now: float) -> None:
            # A refusal counts only with the record that justifies it: an ERROR costs nothing to
            # send, a valid newer record only its owner can sign.
            held: list[tuple[Contact, NamespaceRecord, int]] = []
            for contact, reply in found:
                if isinstance(reply, NamespaceFound):
                    shown = self._check_found(contact, reply, skey, now)
                    if shown is not None:
                        try:
                            supersedes(record, shown)
                        except StaleSequence:
                            held.append((contact, shown, reply.ttl))
                            continue
                node.stats["namespace_unproven_refusals"] += 1
            then(held, now)

        node.ask_each(refused, NamespaceFind(skey), now, proven)

    def _superseded(self, record: NamespaceRecord,
                    held: list[tuple[Contact, NamespaceRecord, int]], closest: list[Contact],
                    stored: list[Contact], now: float) -> None:
        """Replicas showed ``held`` against our republish of ``record``, which the peers
        ``stored`` took. If one is a valid record with a higher ``seq``, the newest shown is sent
        to each of ``stored`` with the lifetime left of it (they took ours with a lifetime that
        may outlast it, often by a day when ours was a renewal, and would bring ours back once
        it expired), and if we still hold ``record`` we stop republishing it. We keep the newest
        shown instead, as a storer with the lifetime left of it, if fewer than k of ``closest``
        (the k closest the republish's lookup found) are closer to its storage key than we are;
        else we drop ours, so that neither our republishing nor a read repair from our copy can
        bring the older version back once the newer one expired. A same ``seq`` with another
        value (only its owner can sign one) proves nothing newer: we keep republishing ours."""
        newer = [h for h in held if h[1].seq > record.seq]
        if not newer:
            return
        contact, best, ttl = max(newer, key=lambda h: (h[1].seq, h[1].signature))
        node, skey = self.node, record.storage_key
        ttl = max(1, min(ttl, int(node.config.expire_time)))  # never a fresh lifetime
        correction = NamespaceStore.of(best, ttl)
        for peer in stored:
            node.stats["namespace_repairs"] += 1
            node.request(peer.address, correction, now, expect_id=peer.id)
        try:
            if self.local(skey, now) != record:
                return  # changed meanwhile (our own newer set, a newer copy): its rules hold
            node.stats["namespace_superseded"] += 1
            distance = node.id ^ skey
            if sum(1 for c in closest if c.id ^ skey < distance) < node.config.k:
                try:
                    self.accept(best, now, host_key(contact.address[0]), ttl)
                    return
                except StorageUnavailable:
                    raise
                except QadomError:  # over the sender's quota here: ours goes all the same
                    pass
            node.store.delete_record(RECORD_KIND, skey)
        except StorageUnavailable:  # our store's trouble: the next republish is refused again
            node.stats["storage_errors"] += 1

    def copy_message(self, due: DueRecord, ttl: int, now: float) -> Message | None:
        """The NAMESPACE_STORE that gives a new neighbour our copy of a record with ``ttl`` to
        live (None for a record damaged on the disk, which is deleted)."""
        record = self._held.checked(due.key, due.data)
        return None if record is None else NamespaceStore.of(record, ttl)

    # ------------------------------------------------------------------ operations

    def set(self, record: NamespaceRecord, now: float) -> Call[int]:
        """Store ``record`` at the k closest peers to its storage key, then here; resolves to the
        number of replicas that stored it: at least 1, or 0 on a node that knows no other peer
        (the record is then ours alone until peers come, as a set's value), or when every
        replica that answered refused it as stale without backing it (see below). When there
        were peers to ask and none stored it or refused it so, the set fails as a value's does
        (:meth:`Node.unstored <qadom.node.Node.unstored>`: OperationTimeout when none answered,
        RateLimited, StorageFull, or the first refusal), nothing stored here.

        Raises at once (nothing sent) with ValueTooLarge (a value over ``max_value_size``),
        BadSignature, or StaleSequence when our own store holds a newer record. The lookup of the
        k closest asks each for its record (NAMESPACE_FIND), and if any holds a newer one the set
        fails with StaleSequence before anything is written anywhere. A replica that still
        refuses the write as stale must prove it: we ask it for its record again, and the set
        fails (StaleSequence, nothing stored here) only if it shows a valid one ours may not
        replace. A refusal it cannot back up is a lie, or a record that expired meanwhile: it is
        not counted as a store, counted in ``stats["namespace_unproven_refusals"]``, and does not
        fail the set, so a single hostile replica cannot veto every write to a key. Otherwise we
        store it too, as its original publisher: we republish it every 24 hours with a fresh
        lifetime until :meth:`forget`, or until a newer ``seq`` of the key is proven (see the
        module's guarantees). A :meth:`forget` of the key while the set is on its way holds as
        for a value's (:meth:`Node.forget <qadom.node.Node.forget>`): the set resolves as it
        would have, but the record is neither stored here as ours nor renewed.

        Raises StorageFull at once, with nothing sent, when our own store has no room for the
        record (:meth:`_check_room`); replacing a record we hold needs room only for what it
        adds. Both checks of our own store are made again when the lookup ends: if a newer
        record or another item took its place or its room meanwhile, the set fails so, still
        with nothing sent. A store that fills up (or a disk that fails) while the record is on
        its way to the k closest fails the set with StorageFull after they stored it.
        """
        check_record_value(record.value, self.node.config.max_value_size)
        record.verify()
        skey = record.storage_key
        supersedes(record, self.local(skey, now))  # StaleSequence before anything is sent
        self._check_room(record)  # StorageFull before anything is sent
        node = self.node
        call: Call[int] = node.new_call("namespace_set", now)
        message = NamespaceStore.of(record, int(node.config.expire_time))
        # A write of the storage key on its way: a Node.forget of the key meanwhile means this
        # record must not become ours at the end, else it would be renewed past the forget.
        forgotten = node._register_write(skey, call)

        def finish(acks: int, held: NamespaceRecord | None, asked: int, now: float,
                   full: int = 0, unstored: QadomError | None = None) -> None:
            if call.done:  # timed out (or the peer closed): the caller was told it failed
                return
            if held is not None:
                call.fail(StaleSequence(
                    f"a replica holds seq {held.seq} of key 0x{record.key:064x}, which seq "
                    f"{record.seq} may not replace ({asked} asked)", held.seq))
                return
            if full and not acks:
                call.fail(StorageFull(f"all {full} replicas that answered are full"))
                return
            if unstored is not None:  # peers to ask, and none took it
                call.fail(unstored)
                return
            if forgotten():  # forgotten since this set started: not ours to keep
                call.resolve(acks)
                return
            try:
                self.accept(record, now)
            except QadomError as exc:  # a newer record arrived here meanwhile
                call.fail(exc)
                return
            call.resolve(acks)

        def send_all(lookup: Lookup, now: float) -> None:
            if call.done:
                return
            closest = lookup.closest()
            silenced: set[int] = set()
            try:  # our copy, and our room, as they are now
                supersedes(record, self.local(skey, now))
                self._check_room(record)
            except QadomError as exc:
                call.fail(exc)
                return

            def done(replies: list[tuple[Contact, Message | None]], now: float) -> None:
                acks = sum(1 for _, r in replies if isinstance(r, NamespaceStored))
                full = sum(1 for _, r in replies
                           if isinstance(r, Error) and r.code == ErrorCode.STORAGE_FULL)
                refused = [c for c, r in replies
                           if isinstance(r, Error) and r.code == ErrorCode.STALE_SEQUENCE]
                # Why none took it, when there were peers to ask (None on a node that knows
                # no other: the record is ours alone until peers come). A refusal as stale
                # answers for the replica: backed, it fails the set below; unbacked, it may not
                # (one hostile replica would veto every write), so the set stands.
                unstored = (None if acks or refused
                            else node.unstored(lookup, replies, len(silenced)))
                if not refused:
                    finish(acks, None, len(closest), now, full, unstored)
                    return

                def proven(held: list[tuple[Contact, NamespaceRecord, int]],
                           now: float) -> None:
                    finish(acks, newest(r for _, r, _ in held), len(closest), now, full,
                           unstored)

                if not call.done:
                    self._held_against(record, refused, now, proven)

            node.ask_each(closest, message, now, done, silenced=silenced)

        def on_message(contact: Contact, message: Message, lookup: Lookup,
                       now: float) -> Iterable[Contact] | None:
            if isinstance(message, NamespaceFound):
                held = self._check_found(contact, message, skey, now)
                if held is None:
                    return None
                try:
                    supersedes(record, held)
                except StaleSequence as exc:
                    # The set fails here; the lookup then stops as given up (its operation
                    # ended first), not as one that found what it looked for.
                    call.fail(StaleSequence(f"a replica holds seq {held.seq}: {exc}", held.seq))
                    return ()
                return message.nodes
            return message.nodes if isinstance(message, Nodes) else None

        node.run_lookup(skey, "namespace", NamespaceFind(skey), now, on_message, send_all, call)
        return call

    def _check_room(self, record: NamespaceRecord) -> None:
        """StorageFull unless our store has room for ``record`` as ours, counted as
        :meth:`Store.put_record` counts it (cached copies, which it evicts for us, as room). A
        record held under its storage key, expired or not, is replaced in place: it costs no
        new item, and its bytes count as free; a new one is one more item of ours. A set
        refused here is never sent: the k closest would keep a record we report as not
        written."""
        store = self.node.store
        size = len(record.to_bytes())
        held = store.get_record(RECORD_KIND, record.storage_key)  # what put_record replaces
        store.quotas.check_own(size, None if held is None else len(held))

    def _check_found(self, contact: Contact, message: NamespaceFound, skey: int,
                     now: float) -> NamespaceRecord | None:
        """The record of a NAMESPACE_FOUND reply, or None (and the peer punished) if it is not a
        valid record for ``skey``."""
        record = message.record()
        if record.storage_key != skey or not record.is_valid():
            self.node.stats["namespace_forged"] += 1
            self.node.punish(contact, now)
            return None
        return record

    def get(self, public_key: bytes, key: int, now: float) -> Call[NamespaceRecord]:
        """The valid record with the highest ``seq`` held here or by any replica reached (a full
        lookup of the storage key, not stopped at the first record); fails with NotFoundError
        when there is none, as :meth:`Node.unanswered` says when no peer answered and we hold
        none, and as :meth:`Node.unheard` says when more of the peers nearest it failed us than
        answered. Then repairs the replicas that hold an older one or none."""
        check_public_key(public_key)
        check_id(key)
        skey = storage_key(public_key, key)
        node = self.node
        call: Call[NamespaceRecord] = node.new_call("namespace_get", now)
        try:
            local = self.local(skey, now)
        except StorageUnavailable:  # our copy cannot be read now: the replicas hold it too
            node.stats["storage_errors"] += 1
            local = None
        answers: dict[int, tuple[Contact, NamespaceRecord | None, int]] = {}

        def on_message(contact: Contact, message: Message, lookup: Lookup,
                       now: float) -> Iterable[Contact] | None:
            if isinstance(message, NamespaceFound):
                record = self._check_found(contact, message, skey, now)
                if record is None:
                    return None
                answers[contact.id] = (contact, record, message.ttl)
                return message.nodes
            if isinstance(message, Nodes):
                answers[contact.id] = (contact, None, 0)
                return message.nodes
            return None

        def on_finish(lookup: Lookup, now: float) -> None:
            found = [r for _, r, _ in answers.values() if r is not None]
            best = newest([*found, local] if local is not None else found)
            if best is None:
                if not answers:
                    call.fail(node.unanswered(lookup))
                    return
                missing = (f"no peer reached holds key 0x{key:064x} of public key "
                           f"{public_key.hex()}")
                # Not "not found" when more of those nearest the key failed us than answered.
                call.fail(node.unheard(lookup, missing) or NotFoundError(missing))
                return
            call.resolve(best)
            self._repair(best, lookup.closest(), answers, local, now)

        node.run_lookup(skey, "namespace", NamespaceFind(skey), now, on_message, on_finish, call)
        return call

    def _repair(self, best: NamespaceRecord, closest: list[Contact],
                answers: dict[int, tuple[Contact, NamespaceRecord | None, int]],
                local: NamespaceRecord | None, now: float) -> None:
        """Read repair: write ``best`` back to every replica that answered with an older record
        and to each of the k closest that answered with none, with what is left of its lifetime
        (the longest any holder of that very record reported), never a fresh one."""
        cfg = self.node.config
        ttls = [ttl for _, record, ttl in answers.values() if record == best]
        if local == best:
            ttls.append(remaining_ttl(self.node.store.record_meta(RECORD_KIND, best.storage_key),
                                      now, cfg))
        ttl = max(1, min(max(ttls, default=1), int(cfg.expire_time)))
        targets: dict[int, Contact] = {}
        for contact, record, _ in answers.values():
            if record is not None and record.seq < best.seq:
                targets[contact.id] = contact
        for contact in closest:
            if contact.id in answers and answers[contact.id][1] is None:
                targets[contact.id] = contact
        message = NamespaceStore.of(best, ttl)
        for contact in targets.values():
            self.node.stats["namespace_repairs"] += 1
            self.node.request(contact.address, message, now, expect_id=contact.id)
        if local is not None and local.seq < best.seq:
            # Verified already; only a concurrent newer write can refuse it.
            with contextlib.suppress(QadomError):
                self.accept(best, now, ttl=ttl)

    # ------------------------------------------------------------------ request handlers

    def _handle_store(self, message: NamespaceStore, sender: int | None, address: Address,
                      now: float) -> Message:
        if message.ttl <= 0:
            return Error(ErrorCode.BAD_REQUEST, "ttl must be positive")
        try:
            self.accept(message.record(), now, host_key(address[0]), message.ttl)
        except BadSignature:
            # Only a faulty or hostile peer sends a forged record (a local caller's mistake is
            # caught before anything is sent), but a request's sender id and source address
            # prove nothing: punishing them would let anyone evict any contact by naming it.
            # Liars are punished when they answer our own requests (see _check_found).
            self.node.stats["namespace_forged"] += 1
            return Error(ErrorCode.BAD_SIGNATURE, "the signature does not verify; not stored")
        except StaleSequence as exc:
            return Error(ErrorCode.STALE_SEQUENCE, str(exc)[:200])
        except StorageFull as exc:
            return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
        return NamespaceStored()

    def _handle_find(self, message: NamespaceFind, sender: int | None, address: Address,
                     now: float) -> Message:
        cfg = self.node.config
        nodes = self.node.table.closest(message.target, cfg.k, exclude=sender)
        record = self.local(message.target, now)
        if record is None:
            return Nodes(tuple(nodes))
        room = (cfg.max_datagram_size - _RECORD_OVERHEAD - len(record.value)) // _CONTACT_BYTES
        ttl = remaining_ttl(self.node.store.record_meta(RECORD_KIND, message.target), now, cfg)
        return NamespaceFound(record.public_key, record.key, record.seq, record.value,
                              record.signature, tuple(nodes[:max(0, room)]), ttl)
