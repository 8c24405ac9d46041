"""256-bit identifiers, keys and the XOR metric (Kademlia paper, section 2.1).

Node ids and keys share one space: integers in ``[0, 2**256)``. A value's key is the SHA-256 of its
bytes read as a big-endian integer, so a key names exactly one value and any holder's answer can be
checked. Distance is XOR, which is symmetric, satisfies the triangle inequality and is
unidirectional: for any point and distance there is exactly one point at that distance."""

from __future__ import annotations

import hashlib
import random

from .errors import InvalidArgument, InvalidType

ID_BITS = 256
ID_BYTES = ID_BITS // 8
ID_SPACE = 1 << ID_BITS


def key_for(value: bytes) -> int:
    """The content address of ``value``: SHA-256 as a big-endian integer below 2**256, the key
    :meth:`~qadom.peer.Peer.set` stores ``value`` under. ``value`` is ``bytes`` (or a subclass),
    the type ``set`` takes; anything else raises InvalidType: a ``str`` (``text.encode()`` is
    what to hash) and the buffers SHA-256 could read as they are (``bytearray``, ``memoryview``,
    an array: ``bytes(buffer)`` is what to hash) too."""
    if not isinstance(value, bytes):
        raise InvalidType(f"value must be bytes, not {type(value).__name__}")
    return int.from_bytes(hashlib.sha256(value).digest(), "big")


def random_id(rng: random.Random) -> int:
    """A uniformly random id drawn from ``rng`` (node ids, refresh targets)."""
    return rng.getrandbits(ID_BITS)


def random_id_in(rng: random.Random, lo: int, hi: int) -> int:
    """A uniformly random id in ``[lo, hi)``; used to refresh one bucket's range."""
    return lo + rng.randrange(hi - lo)


def distance(a: int, b: int) -> int:
    """The XOR distance between two ids."""
    return a ^ b


def check_id(value: object, name: str = "key") -> int:
    """Return ``value`` if it is an id, else raise InvalidType / InvalidArgument naming ``name``.

    ``bool`` is refused although it is an ``int`` subclass: ``True`` as a key is always a mistake.
    """
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidType(f"{name} must be an int in [0, 2**256), not {type(value).__name__}")
    if not 0 <= value < ID_SPACE:
        raise InvalidArgument(f"{name} must be in [0, 2**256), got {value}")
    return value


def id_to_bytes(value: int) -> bytes:
    """Fixed 32-byte big-endian encoding used on the wire."""
    return value.to_bytes(ID_BYTES, "big")


def id_from_bytes(data: bytes) -> int:
    """Inverse of :func:`id_to_bytes`; the caller checks the length."""
    return int.from_bytes(data, "big")
