"""Signed /dht records: the record format, its signature and ownership rules, and the Node service
that stores records at the k closest peers.

The format is the one the ``/dht/{key}`` HTTP API speaks (docs/HTTP.md). A client writes one
*entry* under a text key: a text ``data``, a secp256k1 public key (SEC1, compressed or not), an
optional expiry ``exp_time`` (Unix seconds or None) and a 64-byte compact ECDSA signature r||s over
the 20-byte digest::

    sha1((sha1(key.encode()).hexdigest() + data + str(exp_time) + persist_mode).encode()).digest()

which ECDSA signs as its SHA-256 (coincurve's default hasher); ``exp_time`` None is the text
``None``. The record under a key has a mode:

* ``SECURED``: one entry. Only a write signed by the same public key replaces it.
* ``CONTROLLED``: one entry per public key. Any key may add its own entry and replace only its own.

Rules every holder applies to every write (:func:`apply_write`), so that a peer refuses a forged
overwrite on its own, whoever forwards it:

* the signature must verify and ``exp_time`` (when set) must lie in the future, else
  :class:`~qadom.errors.Unauthorized`;
* a write in the other mode than the live record's is refused (Unauthorized); so is a SECURED write
  under another key than the owner's;
* an expired entry counts as absent: it is never served, and a key whose entries have all expired
  is free again;
* the encoded record stays within ``Config.dht_max_record_size``, else
  :class:`~qadom.errors.ValueTooLarge`;
* a refused write changes nothing stored.

Public keys are compared by their compressed form, so both spellings of one key are one owner
(:func:`owner_of` finds it without decompressing a point: a key off the curve owns nothing, as no
signature verifies with it).
High-S signatures are accepted (normalised to low S before libsecp256k1, which only accepts low S):
clients sign with libraries that produce either.

The signed text covers neither the spelling of the public key nor whether S is low or high, so
one write has several valid spellings (compressed, uncompressed or hybrid key; (r, s) or
(r, N - s)), which anyone who read it can make. They are one write (:func:`same_write`): a
spelling of an entry held never replaces it (the entry stays as it was first written), and it
changes nothing an identical replay of that entry would not (who renews the record, how long
holders keep it).

The signed text puts ``str(exp_time)`` right after ``data`` with nothing between them, so one
signature covers every other split of that text into the two fields: a write of ``"price=25"``
until 1800000000 is also a valid signature of ``"price="`` until 251800000000. A numeric
``exp_time`` must therefore lie below :data:`EXP_TIME_LIMIT` (10**10, in the year 2286). Every
live write then has an ``exp_time`` of exactly ten digits before any fraction (it is later than
now, which is past 10**9), and no two such numbers' texts end one another: the split of a signed
text into a live ``data`` and ``exp_time`` is unique, and a signature vouches for one write only.

A record is kept in the node's store as ``store.put_record("dht", storage_key(key), encoded, now,
meta=...)`` (CBOR, see :func:`encode_record`), so a durable store persists it unchanged.

Lifecycle (as values, paper section 2.5): a TTL travels with every :class:`DhtPut`; a holder drops
the record ``ttl`` seconds (at most ``expire_time``) after receiving it, or once every entry's
``exp_time`` has passed if that comes first (a client's write landing on a live record never
shortens the lifetime held: the TTL is not signed, so a replayed write, or a CONTROLLED write of
another key, must not end the record early); storers republish it hourly to the k closest with
what is left of its lifetime, and the node that ran :meth:`DhtRecordService.put` republishes it
every 24 hours with a fresh one until :meth:`DhtRecordService.forget`. The format carries no
version, so a republish is *fill-only*: a holder with a live record for the key keeps its own
(adding, to a CONTROLLED record, the entries of owners it has none of; see
:meth:`DhtRecordService._handle_put`), and an older copy republished by a lagging storer never
rolls a newer one back. Wire messages:
requests 16 (:class:`DhtPut`) and 17 (:class:`DhtFind`), replies 80 (:class:`DhtRecord`) and 81
(:class:`DhtRefused`). This module is pure: time comes in as ``now``, key material as bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from enum import IntEnum
from functools import partial
from typing import TYPE_CHECKING, Any

import cbor2
from coincurve import PrivateKey, PublicKey
from coincurve.ecdsa import cdata_to_der, der_to_cdata, deserialize_compact, serialize_compact

from .call import Call
from .cbor import loads as cbor_loads
from .config import Config
from .contact import Address, Contact, host_key
from .errors import (
    InvalidField,
    NotFoundError,
    ProtocolError,
    QadomError,
    RateLimited,
    RemoteError,
    StorageFull,
    StorageUnavailable,
    Unauthorized,
    ValueTooLarge,
    printable,
)
from .held import CheckedRecords
from .info import is_loopback
from .lookup import Lookup
from .messages import Error, ErrorCode, Kind, Message, Nodes, Stored, register
from .ratelimit import RateLimiter
from .storage import (
    NEVER,
    DueRecord,
    Meta,
    Store,
    published_meta,
    received_meta,
    republish_schedule,
)

if TYPE_CHECKING:
    from .node import Node

SECURED = "SECURED"
CONTROLLED = "CONTROLLED"
MODES = (SECURED, CONTROLLED)
RECORD_KIND = "dht"
"""The ``kind`` of /dht records in the node's store."""

IDENTITY_KIND = "identity"
IDENTITY_KEY = int.from_bytes(hashlib.sha256(b"qadom secp256k1 signing key").digest(), "big")
"""Where a node keeps its own secp256k1 signing key (a record of its store)."""

FORMAT_VERSION = 1
MAX_EXP_TIME = 2**53
"""exp_time bound of the format: every JSON implementation reads integers below 2**53 exactly, so
the text the signature covers is the same for the client and for us."""

EXP_TIME_LIMIT = 10**10
"""A write's ``exp_time`` must be below this (the year 2286): the bound that makes a signature
cover one write only (see the module docstring). A signed ``exp_time`` at or past it is refused
as if its signature did not verify."""

# A contact in a DHT_RECORD costs at most ~90 bytes (32-byte id, an IPv6 literal, a port, CBOR
# heads); the rest of the reply besides the record (envelope with the longest request id, sender
# and token; the heads of the fields) stays under 128 bytes.
_CONTACT_BYTES = 90
_REPLY_OVERHEAD = 128

# The order of the secp256k1 group: signature scalars must lie in [1, N).
_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
# The prime of the secp256k1 field: coordinates of public keys lie in [0, P).
_P = 2**256 - 2**32 - 977
_P_BYTES = _P.to_bytes(32, "big")
_HEX = re.compile(r"[0-9a-fA-F]*")

ExpTime = int | float | None


# ============================================================================ the format


@dataclass(frozen=True, slots=True)
class Entry:
    """One signed write: ``data`` under ``pub_key`` (SEC1 as the client gave it)."""

    data: str
    pub_key: bytes
    exp_time: ExpTime
    sign: bytes
    owner: bytes
    """``pub_key`` in compressed form: what ownership compares."""

    def live(self, now: float) -> bool:
        return self.exp_time is None or self.exp_time > now

    def to_json(self, mode: str) -> dict[str, Any]:
        """The entry as the JSON body that wrote it."""
        return {"data": self.data, "persist_mode": mode,
                "authorization": {"pub_key": {"key": self.pub_key.hex(),
                                              "exp_time": self.exp_time},
                                  "sign": self.sign.hex()}}


@dataclass(frozen=True, slots=True)
class Record:
    """The record under one text ``key``: a mode and its entries (exactly one when SECURED)."""

    key: str
    mode: str
    entries: tuple[Entry, ...]

    def live(self, now: float) -> Record | None:
        """This record without its expired entries; None when none is left."""
        entries = tuple(e for e in self.entries if e.live(now))
        if not entries:
            return None
        return self if len(entries) == len(self.entries) else replace(self, entries=entries)

    def end(self) -> float:
        """When the last of its entries expires: NEVER when one has no ``exp_time``."""
        if any(e.exp_time is None for e in self.entries):
            return NEVER
        return max(float(e.exp_time) for e in self.entries if e.exp_time is not None)

    def to_json_text(self) -> str:
        """The record as the ``data`` of a GET answer: the JSON body of its write when SECURED, a
        JSON array of one such body per key when CONTROLLED."""
        bodies = [entry.to_json(self.mode) for entry in self.entries]
        return json.dumps(bodies[0] if self.mode == SECURED else bodies, separators=(",", ":"))


def storage_key(key: str) -> int:
    """Where the record of the text ``key`` lives in the id space (domain-separated SHA-256, so it
    never coincides with the content key of a value holding the same bytes)."""
    return int.from_bytes(hashlib.sha256(b"qadom/dht\x00" + key.encode()).digest(), "big")


def signed_message(key: str, data: str, exp_time: ExpTime, mode: str) -> bytes:
    """The 20-byte digest a write's signature covers (ECDSA then signs its SHA-256)."""
    text = hashlib.sha1(key.encode()).hexdigest() + data + str(exp_time) + mode
    return hashlib.sha1(text.encode()).digest()


def compress(pub_key: bytes) -> bytes:
    """The compressed SEC1 form of a public key; ValueError if it is not a curve point."""
    return PublicKey(pub_key).format(compressed=True)


def owner_of(pub_key: bytes) -> bytes:
    """The compressed SEC1 form of ``pub_key`` (what ownership compares), as :func:`compress`
    gives it for every key libsecp256k1 takes, without decompressing a point (which costs a
    square root modulo p: about 7 us a key, paid for every entry of every record decoded).

    ValueError unless ``pub_key`` is a SEC1 form: compressed (02/03, x below p), uncompressed
    (04) or hybrid (06/07, of y's parity) with (x, y) a point of the curve. A compressed key's x
    is not checked to lie on the curve: such a key is no point, so no signature verifies with it
    and every write it makes is refused (:func:`verify`), and its bytes are those of no other
    key's compressed form, so it owns nothing another key owns."""
    size = len(pub_key)
    prefix = pub_key[0] if size else -1
    if size == 33 and prefix in (2, 3):
        if pub_key[1:] >= _P_BYTES:  # big-endian: bytes compare as the numbers do
            raise ValueError("x is not below the field prime")
        return bytes(pub_key)
    if size == 65 and prefix in (4, 6, 7):
        x = int.from_bytes(pub_key[1:33], "big")
        y = int.from_bytes(pub_key[33:], "big")
        if x >= _P or y >= _P or (y * y - x * x * x - 7) % _P:
            raise ValueError("not a point of secp256k1")
        if prefix != 4 and prefix & 1 != y & 1:
            raise ValueError("a hybrid key of the other parity")
        return bytes((2 | (y & 1),)) + pub_key[1:33]
    raise ValueError("not a SEC1 public key")


def canonical(entry: Entry) -> tuple[bytes, str, str, bytes]:
    """What ``entry`` writes, whatever its spelling: its owner (the compressed public key),
    ``data``, ``exp_time`` as signed (its text) and the signature with S low. The spellings of
    one write (see the module docstring) have one canonical form; two different writes never
    share one."""
    sign = entry.sign
    s = int.from_bytes(sign[32:], "big")
    if len(sign) == 64 and _N // 2 < s < _N:
        sign = sign[:32] + (_N - s).to_bytes(32, "big")
    return entry.owner, entry.data, str(entry.exp_time), bytes(sign)


def same_write(one: Entry, other: Entry) -> bool:
    """Whether two entries are one write, spelled alike or not (:func:`canonical`)."""
    return one == other or canonical(one) == canonical(other)


def verify(entry: Entry, key: str, mode: str) -> bool:
    """Whether ``entry``'s signature is valid for ``key`` and ``mode``. Never for an
    ``exp_time`` at or past :data:`EXP_TIME_LIMIT`, whose signature may be another write's."""
    return _pinned(entry.exp_time) and _signed(entry, key, mode)


def _signed(entry: Entry, key: str, mode: str) -> bool:
    """Whether ``entry``'s signature is valid over its text, whatever its ``exp_time``."""
    if len(entry.sign) != 64:
        return False
    r = int.from_bytes(entry.sign[:32], "big")
    s = int.from_bytes(entry.sign[32:], "big")
    if not (0 < r < _N and 0 < s < _N):
        return False
    if s > _N // 2:  # libsecp256k1 verifies low-S only; (r, N - s) is the same signature
        s = _N - s
    der = cdata_to_der(deserialize_compact(r.to_bytes(32, "big") + s.to_bytes(32, "big")))
    message = signed_message(key, entry.data, entry.exp_time, mode)
    try:
        return bool(PublicKey(entry.pub_key).verify(der, message))
    except ValueError:
        return False


def _pinned(exp_time: ExpTime) -> bool:
    return exp_time is None or exp_time < EXP_TIME_LIMIT


def sign(secret: bytes, key: str, data: str, exp_time: ExpTime, mode: str) -> bytes:
    """The 64-byte compact signature r||s of ``secret`` over the write's digest."""
    der = PrivateKey(secret).sign(signed_message(key, data, exp_time, mode))
    return bytes(serialize_compact(der_to_cdata(der)))


def make_entry(secret: bytes, key: str, data: str, mode: str, exp_time: ExpTime = None, *,
               compressed: bool = True) -> Entry:
    """A signed entry (for clients and tests)."""
    public = PrivateKey(secret).public_key
    return Entry(data, public.format(compressed=compressed), exp_time,
                 sign(secret, key, data, exp_time, mode), public.format(compressed=True))


def public_key(secret: bytes) -> bytes:
    """The compressed public key of ``secret``."""
    return bytes(PrivateKey(secret).public_key.format(compressed=True))


# ============================================================================ JSON writes


def check_key(key: object, config: Config) -> str:
    """``key`` if it is a usable record key, else InvalidField("key")."""
    if not isinstance(key, str) or not key:
        raise InvalidField("key", "must be a non-empty string")
    size = _utf8_size(key, "key")
    if size > config.dht_max_key_size:
        raise InvalidField("key", f"is {size} bytes; the limit is {config.dht_max_key_size}")
    return key


def parse_write(key: str, body: object, config: Config) -> Record:
    """The one-entry record a JSON write body asks for, its fields checked (not its signature).

    Raises :class:`InvalidField` naming the first bad field, or ValueTooLarge when the write alone
    exceeds ``dht_max_record_size``.
    """
    check_key(key, config)
    if not isinstance(body, dict):
        raise InvalidField("body", "must be a JSON object")
    data = body.get("data")
    if data is None or data == "":
        raise InvalidField("data", "is required and must not be empty")
    if not isinstance(data, str):
        raise InvalidField("data", "must be a string")
    _utf8_size(data, "data")
    mode = body.get("persist_mode")
    if mode is None or mode == "":
        raise InvalidField("persist_mode", "is required")
    if mode not in MODES:
        raise InvalidField("persist_mode", "must be SECURED or CONTROLLED")
    auth = body.get("authorization")
    if auth is None or auth == {}:
        raise InvalidField("authorization", "is required")
    if not isinstance(auth, dict):
        raise InvalidField("authorization", "must be an object")
    pub = auth.get("pub_key")
    if not isinstance(pub, dict):
        raise InvalidField("authorization.pub_key", "must be an object")
    pub_key = _hex_field(pub.get("key"), "authorization.pub_key.key", (33, 65))
    try:
        owner = compress(pub_key)
    except ValueError:
        raise InvalidField("authorization.pub_key.key", "is not a secp256k1 public key") from None
    exp_time = pub.get("exp_time")
    if exp_time is not None and (
            isinstance(exp_time, bool) or not isinstance(exp_time, int | float)
            or not _in_format(exp_time)):
        raise InvalidField("authorization.pub_key.exp_time",
                           "must be null or a number of Unix seconds below 2**53")
    if not _pinned(exp_time):
        raise InvalidField("authorization.pub_key.exp_time",
                           "must be below 10000000000 (the year 2286): past it, the signed text "
                           "does not tell data from exp_time")
    signature = _hex_field(auth.get("sign"), "authorization.sign", (64,))
    record = Record(key, mode, (Entry(data, pub_key, exp_time, signature, bytes(owner)),))
    size = len(encode_record(record))
    if size > config.dht_max_record_size:
        raise ValueTooLarge(f"data: the record would be {size} bytes; the limit is "
                            f"{config.dht_max_record_size}")
    return record


def _in_format(exp_time: int | float) -> bool:
    """Whether ``exp_time`` lies within :data:`MAX_EXP_TIME` (so is neither NaN nor infinite).

    Compared exactly, never through float(): JSON and CBOR (bignums) both carry integers too
    large for a float, which math.isfinite() and float() refuse with OverflowError."""
    return abs(exp_time) < MAX_EXP_TIME  # False for NaN: every comparison with it is


def _utf8_size(text: str, field: str) -> int:
    try:
        return len(text.encode())
    except UnicodeEncodeError:  # lone surrogates, which JSON's \ud800 escapes can carry
        raise InvalidField(field, "is not valid Unicode text") from None


def _hex_field(value: object, field: str, sizes: tuple[int, ...]) -> bytes:
    if not isinstance(value, str) or not value:
        raise InvalidField(field, "must be a hex string")
    if _HEX.fullmatch(value) is None or len(value) % 2:
        raise InvalidField(field, "is not valid hex")
    raw = bytes.fromhex(value)
    if len(raw) not in sizes:
        raise InvalidField(field, f"must be {' or '.join(map(str, sizes))} bytes")
    return raw


# ============================================================================ the rules


def check_entry(record: Record, now: float) -> None:
    """Raise Unauthorized unless every entry of ``record`` is signed and unexpired."""
    for entry in record.entries:
        _check(entry, record.key, record.mode, now, verified=False)


def _check(entry: Entry, key: str, mode: str, now: float, *, verified: bool,
           spend: Callable[[], bool] | None = None) -> None:
    """Raise Unauthorized unless ``entry`` is unexpired and its signature verifies for ``key``
    and ``mode``; with ``verified``, the signature is taken as verified already (the entry
    repeats one of a record we hold, see :func:`signed_fields`). ``spend()`` is asked before a
    signature is verified: False raises RateLimited, with nothing verified."""
    if not entry.live(now):
        raise Unauthorized("exp_time is already past")
    if not _pinned(entry.exp_time):
        raise Unauthorized("exp_time is not below 10000000000 (the year 2286)")
    if verified:
        return
    if spend is not None and not spend():
        raise RateLimited(ErrorCode.RATE_LIMITED,
                          "too many signatures to verify from this host: slow down")
    if not verify(entry, key, mode):
        raise Unauthorized("the signature does not verify")


def signed_fields(entry: Entry) -> tuple[str, bytes, str, bytes]:
    """What decides whether ``entry``'s signature verifies, besides the record's key and mode:
    two entries with the same fields under one key and mode verify alike. ``exp_time`` counts by
    its text (the one signed), so 1800000000 and 1800000000.0 differ here as they do there."""
    return entry.data, entry.pub_key, str(entry.exp_time), entry.sign


def held_fields(current: Record | None, record: Record) -> frozenset[tuple[str, bytes, str, bytes]]:
    """The :func:`signed_fields` of the entries of ``current`` (a record we hold, whose every
    signature was verified when it was stored) that count as verified in ``record``: all of them
    when both have one key and one mode, else none."""
    if current is None or current.key != record.key or current.mode != record.mode:
        return frozenset()
    return frozenset(signed_fields(entry) for entry in current.entries)


def apply_write(existing: Record | None, write: Record, now: float, config: Config) -> Record:
    """The record after ``write`` (a one-entry record) lands on ``existing``.

    Raises Unauthorized (bad signature, expired, not the owner, other mode) or ValueTooLarge (the
    record would exceed its size limit); see the module docstring. ``existing`` is a record whose
    signatures were verified (a record we hold, or one a peer showed that
    :meth:`DhtRecordService._verified` took): a write that repeats a live entry of it byte for
    byte (:func:`signed_fields`) is checked for its expiry, not verified again. A write that
    is a live entry of it spelled otherwise (:func:`same_write`) gives ``existing``'s live
    record back as it is: a re-spelling never replaces what the owner wrote.
    """
    if len(write.entries) != 1:
        raise Unauthorized("a write carries exactly one entry")
    (entry,) = write.entries
    current = existing.live(now) if existing is not None else None
    _check(entry, write.key, write.mode, now,
           verified=signed_fields(entry) in held_fields(current, write))
    if current is None:
        return write
    if current.key != write.key:
        raise Unauthorized("the stored record has another key")  # a storage-key collision
    if current.mode != write.mode:
        raise Unauthorized(f"the key is held in {current.mode} mode")
    if write.mode == SECURED and current.entries[0].owner != entry.owner:
        raise Unauthorized("the key is held by another public key")
    if any(same_write(held, entry) for held in current.entries):
        # The entry held, written again (perhaps spelled otherwise: anyone who read it can
        # re-spell it): what the owner wrote stays as it was written.
        result = current
    elif write.mode == SECURED:
        result = write
    else:
        others = tuple(e for e in current.entries if e.owner != entry.owner)
        mine = [i for i, e in enumerate(current.entries) if e.owner == entry.owner]
        entries = list(others)
        entries.insert(mine[0] if mine else len(entries), entry)  # keep each key's place
        result = replace(current, entries=tuple(entries))
    _check_size(len(encode_record(result)), config)
    return result


def apply_record(record: Record, now: float, config: Config,
                 held: frozenset[tuple[str, bytes, str, bytes]] = frozenset(),
                 spend: Callable[[], bool] | None = None) -> Record:
    """``record`` (any number of entries, as a republish carries it) rebuilt from nothing as
    :func:`apply_write` would make it entry by entry (an owner's later entry takes its earlier
    one's place; a SECURED record has one owner): what a holder without a record stores. Raises
    Unauthorized for the first entry :func:`apply_write` would refuse, or ValueTooLarge when the
    record exceeds its size limit.

    Each entry is checked once and the record encoded once, so the cost is linear in its
    entries. An entry whose :func:`signed_fields` are in ``held`` (see :func:`held_fields`) is
    not verified again; ``spend()`` is asked before each signature that is, and False raises
    RateLimited (the entries before it were verified, nothing is applied)."""
    entries: list[Entry] = []
    places: dict[bytes, int] = {}
    for entry in record.entries:
        _check(entry, record.key, record.mode, now, verified=signed_fields(entry) in held,
               spend=spend)
        place = places.get(entry.owner)
        if place is not None:
            entries[place] = entry
        elif entries and record.mode == SECURED:
            raise Unauthorized("the key is held by another public key")
        else:
            places[entry.owner] = len(entries)
            entries.append(entry)
    if not entries:
        raise Unauthorized("a record has at least one entry")
    result = record if len(entries) == len(record.entries) else replace(
        record, entries=tuple(entries))
    _check_size(len(encode_record(result)), config)
    return result


def fill_owners(current: Record, sent: Record, config: Config) -> Record:
    """``current`` (a live CONTROLLED record) with the entries of ``sent`` (already checked, as
    :func:`apply_record` checks them) whose owners it has no entry of, appended in their order
    as far as they fit within ``dht_max_record_size`` (an entry that does not fit is left out,
    a later smaller one may still be added); ``current`` itself when none is added. A republish
    so fills in the owners a holder missed, and never replaces the entry an owner has there,
    which may be newer than the one sent. The record is
    encoded once, whatever the number of entries: each entry's share of the encoding is added
    to the total (a CBOR array is its head and its items one after the other)."""
    owners = {entry.owner for entry in current.entries}
    missing = [entry for entry in sent.entries if entry.owner not in owners]
    if not missing:
        return current
    added: list[Entry] = []
    size = len(encode_record(current))
    count = len(current.entries)
    for entry in missing:
        if entry.owner in owners:
            continue  # two entries of one owner in ``sent``: the first is taken
        grown = (size + len(_encode_entry(entry))
                 + _array_head(count + 1) - _array_head(count))
        if grown > config.dht_max_record_size:
            continue  # the record is full for this one: keep what fits
        owners.add(entry.owner)
        added.append(entry)
        size, count = grown, count + 1
    return replace(current, entries=current.entries + tuple(added)) if added else current


def _check_size(size: int, config: Config) -> None:
    if size > config.dht_max_record_size:
        raise ValueTooLarge(f"data: the record would be {size} bytes; the limit is "
                            f"{config.dht_max_record_size}")


def _array_head(count: int) -> int:
    """The bytes of the head of a CBOR array of ``count`` items."""
    return 1 if count < 24 else 2 if count < 2**8 else 3 if count < 2**16 else 5


def bounded(meta: Meta, record: Record) -> Meta:
    """``meta`` for ``record`` no longer than its entries live: a copy expires once every
    entry's ``exp_time`` has passed, and the original publisher's next republish comes no later
    (it then finds nothing live and drops its copy)."""
    end = record.end()
    if meta.original:
        return replace(meta, republish_at=min(meta.republish_at, end))
    return replace(meta, expires=min(meta.expires, end))


# ============================================================================ encoding


def encode_record(record: Record) -> bytes:
    """CBOR ``[1, key, mode, [[data, pub_key, exp_time, sign], ...]]``; a write is a record of one
    entry."""
    entries = [[e.data, e.pub_key, e.exp_time, e.sign] for e in record.entries]
    data: bytes = cbor2.dumps([FORMAT_VERSION, record.key, record.mode, entries])
    return data


def _encode_entry(entry: Entry) -> bytes:
    """One entry as :func:`encode_record` encodes it within the record."""
    data: bytes = cbor2.dumps([entry.data, entry.pub_key, entry.exp_time, entry.sign])
    return data


def decode_record(data: bytes, config: Config) -> Record:
    """Inverse of :func:`encode_record` with every field checked (not the signatures, nor
    whether a compressed public key lies on the curve: see :func:`owner_of`); raises
    :class:`ProtocolError` and nothing else."""
    try:
        raw = cbor_loads(data)
    except Exception as exc:  # cbor2 raises several classes on bad input
        raise ProtocolError(f"record is not CBOR: {type(exc).__name__}") from None
    if type(raw) is not list or len(raw) != 4 or type(raw[0]) is not int or (
            raw[0] != FORMAT_VERSION):
        raise ProtocolError("record must be [1, key, mode, entries]")
    _, key, mode, raw_entries = raw
    if mode not in MODES or type(mode) is not str:
        raise ProtocolError("unknown record mode")
    try:
        check_key(key, config)
    except InvalidField as exc:
        raise ProtocolError(f"record {exc}") from None
    if type(raw_entries) is not list or not raw_entries or (
            mode == SECURED and len(raw_entries) != 1):
        raise ProtocolError("bad record entries")
    entries = []
    owners = set()
    for item in raw_entries:
        if type(item) is not list or len(item) != 4:
            raise ProtocolError("entry must be [data, pub_key, exp_time, sign]")
        text, pub_key, exp_time, signature = item
        if type(text) is not str or not text or type(pub_key) is not bytes or (
                type(signature) is not bytes or len(signature) != 64):
            raise ProtocolError("bad entry fields")
        if exp_time is not None and (type(exp_time) not in (int, float) or
                                     not _in_format(exp_time)):
            raise ProtocolError("bad entry exp_time")
        try:
            text.encode()
            owner = owner_of(pub_key)
        except (ValueError, UnicodeEncodeError):
            raise ProtocolError("bad entry public key or text") from None
        if owner in owners:
            raise ProtocolError("two entries of one public key")
        owners.add(owner)
        entries.append(Entry(text, pub_key, exp_time, signature, owner))
    return Record(key, mode, tuple(entries))


def load(store: Store, key: int, config: Config, now: float | None = None) -> Record | None:
    """The record stored under ``key`` (with ``now``: unless its lifetime has ended), or None
    (also for a corrupt one, which is unusable). Its signatures are not verified: a node reads
    its own records through :class:`~qadom.held.CheckedRecords`
    (:meth:`DhtRecordService.local`)."""
    return _decoded(store.get_record(RECORD_KIND, key, now), config)


def _decoded(data: bytes | None, config: Config) -> Record | None:
    """The record ``data`` holds, None for none or a corrupt one."""
    if data is None:
        return None
    try:
        return decode_record(data, config)
    except ProtocolError:
        return None


def _held(key: int, record: Record) -> bool:
    """Whether ``record``, read from our store under the storage key ``key``, is a record of that
    key whose every entry's signature verifies (:func:`_signed`: one stored before
    :data:`EXP_TIME_LIMIT` counts too)."""
    return storage_key(record.key) == key and all(
        _signed(entry, record.key, record.mode) for entry in record.entries)


def node_signing_key(store: Store, now: float, new_secret: Callable[[], bytes]) -> bytes:
    """This node's secp256k1 secret, kept in its store (so a durable store keeps the identity
    across restarts); made with ``new_secret()`` the first time."""
    data = store.get_record(IDENTITY_KIND, IDENTITY_KEY)
    if data is not None:
        try:
            raw = cbor_loads(data)
            secret = raw.get("secp256k1") if isinstance(raw, dict) else None
            if isinstance(secret, bytes):
                PrivateKey(secret)  # raises ValueError if not a valid scalar
                return secret
        except Exception:  # a corrupt identity record is replaced, never fatal
            pass
    while True:
        secret = new_secret()
        try:
            PrivateKey(secret)
        except ValueError:  # 0 or >= N: one chance in 2**128; draw again
            continue
        store.put_record(IDENTITY_KIND, IDENTITY_KEY, cbor2.dumps({"secp256k1": secret}), now)
        return secret


# ============================================================================ wire messages


class RefusedCode(IntEnum):
    """Why a holder refused a :class:`DhtPut`."""

    MALFORMED = 1  # the write does not decode, or its key does not match
    UNAUTHORIZED = 2  # signature, expiry or ownership rules (HTTP 401)
    TOO_LARGE = 3  # the record would exceed dht_max_record_size (HTTP 413)


@dataclass(frozen=True, slots=True)
class DhtPut(Message):
    """Apply a write (an encoded one-entry record) to the record under its key, kept ``ttl``
    seconds (positive, capped at ``expire_time``; landing on a live record it never shortens
    the lifetime the receiver holds). With ``republish``, ``write`` is a whole
    record a holder republishes and only fills: a receiver that holds a live record for the key
    keeps its own (renewing its lifetime when it holds every entry sent, and adding to a
    CONTROLLED record the entries of owners it has none of). Answered by
    :class:`~qadom.messages.Stored` or :class:`DhtRefused`, ``Error(BAD_REQUEST)`` for a ttl
    of 0, or ``Error(RATE_LIMITED)`` for a republish whose signatures would exceed its host's
    verification budget (``Config.dht_verify_rate``); nothing is stored on an error."""

    CODE = 16
    IS_REQUEST = True
    # A RATE_LIMITED answer speaks of the verification budget, not of our request rate: the
    # peer still answers our other requests.
    RATE_OF_ITS_OWN = True
    FIELDS = (("write", Kind.VALUE), ("ttl", Kind.UINT64), ("republish", Kind.BOOL))
    write: bytes
    ttl: int = 86400
    republish: bool = False


@dataclass(frozen=True, slots=True)
class DhtFind(Message):
    """The record stored under ``target`` (a storage key), else the k closest contacts
    (:class:`DhtRecord` or :class:`~qadom.messages.Nodes`)."""

    CODE = 17
    IS_REQUEST = True
    LARGE_REPLY = True
    FIELDS = (("target", Kind.ID),)
    target: int


@dataclass(frozen=True, slots=True)
class DhtRecord(Message):
    """The live record held under the requested storage key, encoded, and as many of the k
    closest contacts to it as fit in the datagram: a get or a put runs its lookup on to the k
    closest, and holders on the way must name them as other peers do."""

    CODE = 80
    IS_REQUEST = False
    FIELDS = (("record", Kind.VALUE), ("nodes", Kind.CONTACTS))
    record: bytes
    nodes: tuple[Contact, ...] = ()


@dataclass(frozen=True, slots=True)
class DhtRefused(Message):
    """A :class:`DhtPut` was refused; ``code`` is a :class:`RefusedCode`."""

    CODE = 81
    IS_REQUEST = False
    FIELDS = (("code", Kind.UINT16), ("reason", Kind.TEXT))
    code: int
    reason: str


for _cls in (DhtPut, DhtFind, DhtRecord, DhtRefused):
    register(_cls)


# ============================================================================ the service


@dataclass(frozen=True, slots=True)
class PutResult:
    """How a write went: the holders that stored it and those that refused it."""

    stored: int
    refused: int


class DhtRecordService:
    """Stores signed records at the k closest peers; attached to a :class:`~qadom.node.Node` as
    ``node.dht_records``. Every holder applies :func:`apply_write` itself.

    A record read from our own store is used only once its every entry's signature verifies for
    its key, and that key is the one its storage key names: one damaged on the disk is deleted,
    counted in ``node.stats["dht_corrupt"]`` and taken as none (never served, republished,
    handed over or held against a write: see :class:`~qadom.held.CheckedRecords`)."""

    KIND = RECORD_KIND
    """The kind of the records this service keeps (and republishes) in the node's store."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.config = node.config
        node.register_handler(DhtPut, self._handle_put)
        node.require_proof(DhtPut)  # a write, charged to its source's host quota
        node.register_handler(DhtFind, self._handle_find)
        # The signatures each host's republishes may make us verify (_handle_put), a token
        # bucket per host: loopback is exempt, as from the request rates.
        self._verify_budget: RateLimiter[str] = RateLimiter(
            self.config.dht_verify_rate, self.config.dht_verify_burst,
            self.config.rate_limit_senders)
        self._held: CheckedRecords[Record] = CheckedRecords(
            node, RECORD_KIND, "dht_corrupt", partial(_decoded, config=self.config), _held)

    def _load(self, key: int, now: float | None = None) -> Record | None:
        """The record we hold under the storage key ``key`` (see :func:`load`), checked."""
        return self._held.read(key, now)

    def _put(self, key: int, data: bytes, now: float, meta: Meta | None) -> None:
        """Store the record ``data`` encodes, checked (or made of checked entries) already."""
        self.node.store.put_record(RECORD_KIND, key, data, now, meta=meta)
        self._held.remember(key, data)

    # ------------------------------------------------------------------ operations

    def local(self, key: str, now: float) -> Record | None:
        """The live record this node holds for ``key`` (damaged on the disk: none, see the
        class docstring)."""
        record = self._load(storage_key(check_key(key, self.config)), now)
        return record.live(now) if record is not None else None

    def forget(self, key: str) -> bool:
        """Stop republishing the record of ``key`` as the node that put it; it then expires
        everywhere ``expire_time`` after our last republish. True if we had put it, or if a
        :meth:`put` of it is on its way: that write is then neither kept here as ours nor
        renewed (a put asked for after the forget is kept and renewed as usual)."""
        return self.node.forget(storage_key(check_key(key, self.config)))

    def republish(self, due: DueRecord, now: float,
                  missed: Callable[[float], None] | None = None) -> None:
        """Republish one record whose time has come (section 2.5): its live entries, in a
        fill-only DHT_PUT to the k closest, with a fresh lifetime from the node that put it and
        what is left of it from a storer (``missed(now)`` if that reached nobody). A record none of
        whose entries is live is dropped."""
        node = self.node
        held = self._held.checked(due.key, due.data)
        if held is None:  # damaged on the disk: deleted, never republished
            return
        live = held.live(now)
        if live is None:
            node.store.delete_record(due.kind, due.key)
            node.stats["expired"] += 1
            return
        meta, ttl = republish_schedule(due.meta, now, self.config)
        data = encode_record(live)
        self._put(due.key, data, now, bounded(meta, live))
        if ttl >= 1:
            node.stats["republished"] += 1
            node.replicate(due.key, DhtPut(data, ttl, republish=True), now, missed=missed)

    def copy_message(self, due: DueRecord, ttl: int, now: float) -> Message | None:
        """The fill-only DHT_PUT that gives a new neighbour the live entries of our copy of a
        record with ``ttl`` to live (None when nothing of it is live, or it was damaged on the
        disk)."""
        held = self._held.checked(due.key, due.data)
        live = None if held is None else held.live(now)
        return None if live is None else DhtPut(encode_record(live), ttl, republish=True)

    def put(self, write: Record, now: float) -> Call[PutResult]:
        """Store ``write`` (from :func:`parse_write`) at the k closest peers to its key.

        The write is checked here first on its own (signature, expiry, size), then, once the
        lookup has found the k closest, against the records they hold and against our copy when
        we are one of the k closest to the key (so a forged overwrite fails even through a node
        that never held the record), then sent to the k closest, which check it again. Only the
        k closest decide, as they do for a get: a copy held further out (a stale one, or one
        planted there by anyone, since a peer that holds nothing takes any valid write) refuses
        nothing, and when our own copy is such a one and the write cannot land on it, the write
        lands here as it does at the closest of them that holds the key. Fails with Unauthorized
        or ValueTooLarge when refused so, or by a holder while none of them stored it. When
        there were peers to ask and none stored it nor refused it by the rules, it fails as a
        value's set does (:meth:`Node.unstored <qadom.node.Node.unstored>`: RateLimited,
        StorageFull, RemoteError, or OperationTimeout when none answered), and when no peer
        answered the lookup, as :meth:`Node.unreached <qadom.node.Node.unreached>` says; a
        failed put stores nothing here. A node that knows no other peer (or whose contacts all
        failed of late and were given up) keeps it alone, resolving to ``stored`` 0, until peers
        come. Once one of the k closest stored it, it is stored here too, as the record's
        original publisher (renewed every 24 hours until :meth:`forget`, or until a client's
        write through another node replaces here the entry of an owner we put, by this put or an
        earlier one, with another write (that entry sent again, however spelled, replaces
        nothing): that node renews it then, see :meth:`_handle_put`; a CONTROLLED write that
        adds or replaces the entry of any other owner leaves it ours, and we renew that entry
        with ours).

        Raises Unauthorized at once for a write that is refused on its own, and StorageFull at
        once, with nothing sent, when our own store has no room for the record the write makes
        of our copy (:meth:`_landing`; of nothing when it cannot land on our copy); an overwrite
        of a record we hold needs room only for what it adds. Checked again when the lookup
        ends: if our copy or our store changed meanwhile so that the write no longer lands or
        fits here, the put fails so, still with nothing sent. A store that fills up (or a disk
        that fails) while the write is on its way to the k closest fails it with StorageFull
        after they stored it.

        A :meth:`forget` of the key while the put is on its way holds as for a value's set
        (:meth:`Node.forget <qadom.node.Node.forget>`): the put resolves as it would have, but
        the write is neither stored here as ours nor renewed.
        """
        node = self.node
        key = storage_key(check_key(write.key, self.config))
        # Whether our copy decides is known once the lookup has found the k closest: until then,
        # the write itself and our room.
        self._landing(key, write, now, decides=False)
        call: Call[PutResult] = node.new_call("dht_put", now)
        # A Node.forget of the key while the put is on its way means it must not become ours
        # at the end, else it would be renewed past the forget.
        forgotten = node._register_write(key, call)
        seen: dict[int, Record] = {}  # the records met, by their holder's id

        def on_message(contact: Contact, message: Message, lookup: Lookup,
                       now: float) -> Iterable[Contact] | None:
            if isinstance(message, DhtRecord):
                record = self._verified(contact, message, write.key, now)
                if record is None:
                    return None
                seen[contact.id] = record
                return message.nodes
            return message.nodes if isinstance(message, Nodes) else None

        def on_finish(lookup: Lookup, now: float) -> None:
            if call.done:
                return
            # Only the k closest decide (each checks the write again), as they answer a get:
            # a copy further out is stale, or planted by anyone where nothing was held, and
            # must not veto the owner's write.
            closest = lookup.closest()
            decides = len(closest) < lookup.k or node.id ^ key < closest[-1].id ^ key
            if decides:  # we are one of the k closest: the farthest peer found is not
                closest = closest[:lookup.k - 1]
            held = [(contact.id ^ key, seen[contact.id]) for contact in closest
                    if contact.id in seen]
            base = min(held, key=lambda found: found[0])[1] if held else None
            try:
                for _, record in held:
                    apply_write(record, write, now, self.config)
                # Our copy, and our room, as they are now.
                self._landing(key, write, now, decides=decides, base=base)
            except QadomError as exc:
                call.fail(exc)
                return
            self._send_to(lookup, key, write, now, call, forgotten, decides, base)

        node.run_lookup(key, "dht", DhtFind(key), now, on_message, on_finish, call)
        return call

    def get(self, key: str, now: float) -> Call[Record]:
        """The live record of ``key`` held by the peer closest to its storage key among those
        the lookup reached (ourselves included) that hold a validly signed one; fails with
        NotFoundError, as :meth:`Node.unanswered` says when no peer answered and we hold none,
        or as :meth:`Node.unheard` says when more of the peers nearest it failed us than
        answered.

        Records carry no version, so the lookup runs on to the k closest rather than stop at
        the first copy: an overwrite reaches the k closest, while a peer that was one of them
        before and still holds an older version (it republishes it hourly, and a republish
        only fills holders that have none) may be met first on the path."""
        node = self.node
        skey = storage_key(check_key(key, self.config))
        call: Call[Record] = node.new_call("dht_get", now)
        found: list[tuple[int, Record]] = []  # (the holder's distance to the key, its record)

        def on_message(contact: Contact, message: Message, lookup: Lookup,
                       now: float) -> Iterable[Contact] | None:
            if isinstance(message, DhtRecord):
                record = self._verified(contact, message, key, now)
                if record is None:
                    return None
                live = record.live(now)
                if live is not None:
                    found.append((contact.id ^ skey, live))
                return message.nodes
            return message.nodes if isinstance(message, Nodes) else None

        def on_finish(lookup: Lookup, now: float) -> None:
            try:
                own = self.local(key, now)
            except StorageUnavailable:
                if not found:
                    raise  # fails the get with the store's error (and is counted there)
                node.stats["storage_errors"] += 1
                own = None  # peers answered: our copy cannot be read, theirs serve
            if own is not None:
                found.append((node.id ^ skey, own))
            if not found:
                missing = f"no record under key {key!r}"
                # Not "not found" when more of those nearest the key failed us than answered.
                call.fail((node.unheard(lookup, missing) or NotFoundError(missing))
                          if lookup.closest() else node.unanswered(lookup))
            else:
                call.resolve(min(found, key=lambda held: held[0])[1])

        node.run_lookup(skey, "dht", DhtFind(skey), now, on_message, on_finish, call)
        return call

    # ------------------------------------------------------------------ internals

    def _verified(self, contact: Contact, message: DhtRecord, key: str,
                  now: float) -> Record | None:
        """The record in ``message`` if it is well formed, for ``key`` and validly signed; a peer
        answering anything else is punished as a liar."""
        try:
            record = decode_record(message.record, self.config)
        except ProtocolError:
            record = None
        if record is None or record.key != key or not all(
                _signed(entry, key, record.mode) for entry in record.entries):
            self.node.punish(contact, now)
            return None
        if not all(_pinned(entry.exp_time) for entry in record.entries):
            return None  # a copy a holder took before EXP_TIME_LIMIT: not used, no lie either
        return record

    def _landing(self, key: int, write: Record, now: float, *, decides: bool = True,
                 base: Record | None = None) -> Record:
        """The record ``write`` makes of our copy of ``key``, which our store has room for:
        Unauthorized or ValueTooLarge as :func:`apply_write` says, StorageFull past our quotas
        (counted as :meth:`Store.put_record` counts them, with cached copies, which it evicts
        for us, as room). A record held under ``key``, expired or not, is replaced in place:
        it costs no new item, and its bytes count as free; a new one is one more item of ours.
        A write refused here is never sent: the k closest would keep a record we report as
        not written (and a SECURED key would be claimed for a day).

        Unless our copy ``decides`` (we are one of the k closest to the key), a write it
        refuses is landed on ``base`` instead (the record of the closest of the k closest that
        holds one, None for none): what we then store in place of our stale copy."""
        store = self.node.store
        record, _ = _landed(self._load(key, now), write, now, self.config, decides, base)
        size = len(encode_record(record))
        held = store.get_record(RECORD_KIND, key)  # without now: what put_record would replace
        store.quotas.check_own(size, None if held is None else len(held))
        return record

    def _send_to(self, lookup: Lookup, key: int, write: Record, now: float,
                 call: Call[PutResult], forgotten: Callable[[], bool], decides: bool,
                 base: Record | None) -> None:
        """Send ``write`` to the k closest ``lookup`` found; once they answered, store it here
        too if one of them stored it, or if there was nobody to ask (a lone node keeps it
        alone until peers come, as a set does). Else fail ``call`` with nothing stored here: a
        rule refusal (DHT_REFUSED) speaks for the write, and otherwise as :meth:`Node.unstored
        <qadom.node.Node.unstored>` says, as for a value's set (RateLimited, StorageFull,
        RemoteError, or OperationTimeout when none of them answered). ``decides`` and ``base``
        say how it lands here (:meth:`_landing`)."""
        encoded = encode_record(write)
        message = DhtPut(encoded, int(self.config.expire_time))
        silenced: set[int] = set()

        def done(replies: list[tuple[Contact, Message | None]], now: float) -> None:
            stored = sum(1 for _, reply in replies if isinstance(reply, Stored))
            # Rule refusals, and errors such as a full store.
            refusals = [reply for _, reply in replies if isinstance(reply, (DhtRefused, Error))]
            error: QadomError | None = None
            if not stored:
                ruled = [reply for reply in refusals if isinstance(reply, DhtRefused)]
                # A rule refusal is the write's own fault, whatever the others said; without
                # one, none took it, for a reason the store of a value would fail for too
                # (None when there was nobody to ask).
                error = (_refusal_error(ruled[0]) if ruled
                         else self.node.unstored(lookup, replies, len(silenced)))
                if isinstance(error, StorageFull) and refusals:  # with what the holder said
                    error = StorageFull(f"{error}: {printable(refusals[0].reason)}")
            if error is not None:
                call.fail(error)
                return
            result = PutResult(stored, len(refusals))
            if forgotten():  # forgotten since this put started: not ours to keep
                call.resolve(result)
            else:
                self._store_local(key, write, now, call, result, decides, base)

        self.node.ask_each(lookup.closest(), message, now, done, silenced=silenced)

    def _store_local(self, key: int, write: Record, now: float, call: Call[PutResult],
                     result: PutResult, decides: bool, base: Record | None) -> None:
        if call.done:
            return
        store = self.node.store
        try:
            existing = self._load(key, now)
            record, on_ours = _landed(existing, write, now, self.config, decides, base)
            if not on_ours:
                existing = None  # our stale copy is replaced: none of its owners stays ours
            held = store.record_meta(RECORD_KIND, key)
        except QadomError as exc:  # expired meanwhile, or a concurrent write took the key
            call.fail(exc)
            return
        # We put it: ours to renew. The owners we put are this write's and those we put before
        # that still have their entry in the record (see _handle_put).
        kept = {entry.owner for entry in record.entries}
        owners = frozenset(owner for owner in _our_owners(
            held, existing.live(now) if existing is not None else None) if owner in kept)
        meta = bounded(published_meta(now, self.config,
                                      owners=owners | {entry.owner for entry in write.entries}),
                       record)
        try:
            self._put(key, encode_record(record), now, meta)
        except StorageFull as exc:
            call.fail(exc)
            return
        call.resolve(result)

    # ------------------------------------------------------------------ request handlers

    def _handle_put(self, message: DhtPut, sender: int | None, address: Address,
                    now: float) -> Message:
        """A client's write lands on our record by :func:`apply_write`, with the lifetime its
        TTL gives or the one we held, whichever ends later. A republished record fills only: its
        live entries are checked one by one (:func:`apply_record`; an entry that expired on the
        way is left out) and stored only if we hold no live record for the key; holding one, we
        keep it and its lifecycle, add to a CONTROLLED one the entries of owners it has none of
        (:func:`fill_owners`), and otherwise merely count the republish as this hour's when our
        record holds every entry sent, however spelled (:func:`same_write`: the same record,
        whose lifetime the TTL may then extend, kept as we hold it).
        The format has no version, so this is what keeps a lagging storer's older copy from
        replacing a newer one. A client's write that replaces, in a record we put ourselves,
        the entry of an owner we put (:attr:`Meta.owners`: a SECURED overwrite, a CONTROLLED
        owner's newer entry) ends our publishing of it: we keep the result as a storer's copy
        (its lifetime as above, counting the one ours had), renewed by the node that ran the
        write until it forgets it. One that adds or replaces the entry of another owner of a
        CONTROLLED record we put leaves it ours, renewed by us with the new entry in it (else
        the entries we put would leave the network with that write, or with that owner's next
        one). What it stores is charged to the sending host (:func:`~qadom.contact.host_key`); a
        record we publish stays charged to us.

        CPU: a signature is verified only for an entry we do not hold byte for byte (under the
        same key and mode), and a record is encoded a bounded number of times whatever its
        entries; the record we hold sent again, byte for byte, costs a decode and a compare
        (nothing verified, nothing encoded). A republish spends one unit of its host's
        ``dht_verify_rate`` budget per signature verified (loopback is exempt); over it, it is
        answered RATE_LIMITED with nothing stored (counted in ``stats["dht_verify_limited"]``).
        A client's write carries one entry: one signature at most, as any signed request."""
        source = host_key(address[0])
        if message.ttl <= 0:
            return Error(ErrorCode.BAD_REQUEST, "ttl must be positive")
        try:
            write = decode_record(message.write, self.config)
        except ProtocolError as exc:
            return DhtRefused(RefusedCode.MALFORMED, str(exc)[:200])
        key = storage_key(write.key)
        store = self.node.store
        data = store.get_record(RECORD_KIND, key, now)
        existing = self._held.checked(key, data)
        if existing is not None and data == message.write:
            existing = write  # the record we hold sent again (a republish, a replay)
        current = existing.live(now) if existing is not None else None
        old = store.record_meta(RECORD_KIND, key) if current is not None else None
        try:
            if (message.republish and existing is write and current is not None
                    and len(message.write) <= self.config.dht_max_record_size
                    and all(_pinned(entry.exp_time) for entry in current.entries)):
                # The record we hold, byte for byte: its live entries were checked when we
                # stored it, and apply_record would give it back as it is.
                record = current
            elif message.republish:
                # The sender sent the entries live at its clock; one that has expired since (on
                # the way, or during the sender's lookup) is left out, not held against the rest.
                # Entries we hold byte for byte are not verified again; the others spend the
                # sending host's budget.
                sent = write.live(now) or write
                budget = self._verify_budget
                budget.sweep(now)  # forgets the refilled buckets, so it follows recent traffic
                spend = None if is_loopback(address[0]) else partial(budget.allow, source, now)
                record = apply_record(sent, now, self.config, held_fields(current, sent), spend)
            else:
                record = apply_write(existing, write, now, self.config)
        except Unauthorized as exc:
            return DhtRefused(RefusedCode.UNAUTHORIZED, str(exc)[:200])
        except ValueTooLarge as exc:
            return DhtRefused(RefusedCode.TOO_LARGE, str(exc)[:200])
        except RateLimited as exc:
            self.node.stats["dht_verify_limited"] += 1
            return Error(ErrorCode.RATE_LIMITED, exc.reason)
        same = False
        if message.republish and current is not None:
            if current.mode != record.mode:
                return Stored()  # fill-only: our record stays as it is
            if current.mode == CONTROLLED:
                merged = fill_owners(current, record, self.config)
                if merged is not current:
                    # Our record, our lifecycle: only the missing owners were added. The record
                    # grew by what the sender sent: charged to its host, as a write would be.
                    # Our own (original) record stays charged to us.
                    grown = None if old is None else (
                        old if old.original else replace(old, source=source))
                    try:
                        self._put(key, encode_record(merged), now, grown)
                    except StorageFull as exc:
                        return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
                    return Stored()
            if record is not current and not _writes(record) <= _writes(current):
                # fill-only: our record stays as it is. The entries sent, however spelled, are
                # ours (the same record): counted below as this hour's republish.
                return Stored()
            record, same = current, True
        # A client's write that replaces the entry of an owner we put, in a record we put, ends
        # our publishing of it, as a newer namespace record does: the node that ran this write
        # publishes it, and renewing it here too would keep it alive past that node's forget. We
        # keep it as a storer's copy, charged to the sender. A write that adds or replaces the
        # entry of another owner of a CONTROLLED record leaves ours as ours: we still publish
        # the entries we put (and renew that owner's with them), or they would leave the network
        # once the node that ran that write forgets it or goes away. The same entry written
        # again leaves ours as it is.
        replaced = (old is not None and old.original and not same and current is not None
                    and not message.republish
                    and _replaces_entry(current, write, _our_owners(old, current)))
        meta = received_meta(None if replaced else old, message.ttl, now, self.config, source,
                             same=same)
        if old is not None and not same and not meta.original:
            # A client's write lands on a live record: it may lengthen the lifetime held, never
            # shorten it. The TTL is not signed and a write may be replayed (GET serves it) or,
            # CONTROLLED, come from any key: with its own short TTL it would otherwise end the
            # record here, every other owner's entry included.
            held = min(old.expires, now + self.config.expire_time)
            meta = replace(meta, expires=max(meta.expires, held))
        meta = bounded(meta, record)
        if same and meta == old:
            return Stored()
        try:
            # What we hold, unchanged, is stored as it is (not encoded again).
            encoded = data if data is not None and record is existing else encode_record(record)
            self._put(key, encoded, now, meta)
        except StorageFull as exc:
            return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
        return Stored()

    def _handle_find(self, message: DhtFind, sender: int | None, address: Address,
                     now: float) -> Message:
        record = self._load(message.target, now)
        live = record.live(now) if record is not None else None
        nodes = self.node.table.closest(message.target, self.config.k, exclude=sender)
        if live is None:
            return Nodes(tuple(nodes))
        encoded = encode_record(live)
        room = (self.config.max_datagram_size - _REPLY_OVERHEAD - len(encoded)) // _CONTACT_BYTES
        return DhtRecord(encoded, tuple(nodes[:max(0, room)]))


def _landed(own: Record | None, write: Record, now: float, config: Config, decides: bool,
            base: Record | None) -> tuple[Record, bool]:
    """The record ``write`` makes of ``own`` (our copy) and True; unless ``own`` ``decides``,
    when it refuses the write, the record ``write`` makes of ``base`` and False (see
    :meth:`DhtRecordService._landing`). Raises as :func:`apply_write` does."""
    try:
        return apply_write(own, write, now, config), True
    except (Unauthorized, ValueTooLarge):
        if decides:
            raise
    return apply_write(base, write, now, config), False


def _replaces_entry(current: Record, write: Record, ours: frozenset[bytes]) -> bool:
    """Whether ``write`` (a one-entry record) changes the entry its owner has in ``current``,
    that owner being one of ``ours``: a SECURED overwrite, or a CONTROLLED owner's newer write;
    False for an owner not in ``ours`` or that ``current`` has no entry of, and for an entry
    written again, however spelled (:func:`same_write`: a re-spelling is no newer write, and
    anyone can make one)."""
    return any(held.owner == entry.owner and not same_write(held, entry) and held.owner in ours
               for entry in write.entries for held in current.entries)


def _writes(record: Record) -> set[tuple[bytes, str, str, bytes]]:
    """The :func:`canonical` forms of ``record``'s entries."""
    return {canonical(entry) for entry in record.entries}


def _our_owners(meta: Meta | None, current: Record | None) -> frozenset[bytes]:
    """The owners we put of ``current``, the live record we hold with ``meta`` (None: we hold
    none): none unless the record is ours, else :attr:`Meta.owners`, or every owner it holds
    when they were not kept (a record of ours stored before they were)."""
    if meta is None or not meta.original or current is None:
        return frozenset()
    if meta.owners is not None:
        return meta.owners
    return frozenset(entry.owner for entry in current.entries)


def _refusal_error(refused: DhtRefused) -> QadomError:
    """The error of a put no holder stored and one refused by its rules, ``refused`` the first
    such refusal: its reason (the holder's text) shortened and with any character that is not
    printable replaced."""
    reason = printable(refused.reason)
    if refused.code == RefusedCode.UNAUTHORIZED:
        return Unauthorized(reason)
    if refused.code == RefusedCode.TOO_LARGE:
        return ValueTooLarge(reason)
    return RemoteError(refused.code, reason)
