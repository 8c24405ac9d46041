"""Records a node holds, checked as they are read back from its store (see
:class:`CheckedRecords`): the namespace and /dht services keep their signed records through it.
Pure: no I/O of its own beyond the node's store."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar

from .errors import StorageFull
from .ids import ID_BYTES

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("qadom")

_T = TypeVar("_T")


class CheckedRecords(Generic[_T]):
    """The records of one kind a node holds, checked as they are read from its store.

    A store keeps no signature of its own: bytes changed on the disk would decode to a record
    whose signature no longer verifies (or to none), and a record served so would make every
    peer take this node for a liar, while a damaged owner's key would refuse its owner's
    writes. So a record read is used only once it decodes (``decode(data)``) and
    ``valid(key, record)`` accepted it: it is the one its storage key names, and its signatures
    verify. One that fails is damaged: it is counted in ``node.stats[counter]``, logged once,
    deleted (its replicas hold good copies) and never served, republished, handed over or held
    against a write. A store that cannot delete it now keeps it, still never used, and is asked
    again at its next read.

    Bytes are checked once per key they are read under, not at every read (a request for a
    record costs a datagram; its signatures cost far more: one per entry of a /dht record):
    what was found of them is remembered by a SHA-256 of the key and the bytes, and
    :meth:`remember` tells it of the records the node itself stores, checked already. What it
    remembers is forgotten at once when it exceeds twice the items the store holds: its memory
    follows the store's, and the records read again are checked again."""

    def __init__(self, node: Node, kind: str, counter: str,
                 decode: Callable[[bytes], _T | None],
                 valid: Callable[[int, _T], bool]) -> None:
        self._node = node
        self._kind = kind
        self._counter = counter
        self._decode = decode
        self._valid = valid
        self._good: set[bytes] = set()  # fingerprints of the bytes found valid under their key
        # Fingerprints of damaged bytes met (counted and logged), and whether the store still
        # holds them (its deletion failed).
        self._damaged: dict[bytes, bool] = {}

    def read(self, key: int, now: float | None = None) -> _T | None:
        """The checked record the node's store holds under ``key`` (with ``now``: unless it has
        expired); None for none or a damaged one."""
        return self.checked(key, self._node.store.get_record(self._kind, key, now))

    def checked(self, key: int, data: bytes | None) -> _T | None:
        """The record ``data`` (read under ``key``) holds, checked; None for None or damaged
        bytes (counted, logged and deleted the first time they are met)."""
        if data is None:
            return None
        mark = _fingerprint(key, data)
        if mark in self._good:
            return self._decode(data)
        kept = self._damaged.get(mark)
        if kept is not None:
            if kept and self._delete(key):  # kept by a store that could not delete it
                self._damaged[mark] = False
            return None
        record = self._decode(data)
        if record is not None and self._valid(key, record):
            self._know(mark, good=True)
            return record
        self._node.stats[self._counter] += 1
        deleted = self._delete(key)
        self._know(mark, good=False, kept=not deleted)
        log.warning("this node's store held a damaged %s record under %064x (changed on the "
                    "disk, it is no longer a validly signed record of that key); %s", self._kind,
                    key, "it was deleted" if deleted else "it is never used, and is deleted "
                    "once the store can be written")
        return None

    def remember(self, key: int, data: bytes) -> None:
        """A record checked already is now stored under ``key`` as ``data``."""
        self._know(_fingerprint(key, data), good=True)

    def _know(self, mark: bytes, *, good: bool, kept: bool = False) -> None:
        if len(self._good) + len(self._damaged) >= 2 * self._node.store.quotas.total_items:
            self._good.clear()  # most are of records no longer held: see the class docstring
            self._damaged.clear()
        if good:
            self._good.add(mark)
        else:
            self._damaged[mark] = kept

    def _delete(self, key: int) -> bool:
        try:
            self._node.store.delete_record(self._kind, key)
        except StorageFull:  # the store's own trouble (a full disk, a failing one), logged there
            return False
        return True


def _fingerprint(key: int, data: bytes) -> bytes:
    """What :class:`CheckedRecords` remembers of ``data`` read under ``key``."""
    digest = hashlib.sha256(key.to_bytes(ID_BYTES, "big"))
    digest.update(data)
    return digest.digest()
