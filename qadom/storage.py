"""Where a node keeps what it stores for the network: values by key, and multimap sets.

:class:`Store` is the interface the core talks to; :class:`MemoryStore` is the default
implementation. Guarantee of every implementation: a write that returns has been applied (and, for a
durable store, committed) in full; a write that raises changed nothing.
"""

from __future__ import annotations

import bisect
from typing import Protocol


class Store(Protocol):
    """What the protocol core needs from storage."""

    def get_value(self, key: int) -> bytes | None: ...

    def put_value(self, key: int, value: bytes, now: float) -> None: ...

    def add_entry(self, key: int, value: int, now: float) -> bool:
        """Add ``value`` to the set under ``key``; False if it was already there."""
        ...

    def entries_after(self, key: int, after: int | None, limit: int) -> tuple[list[int], bool]:
        """Up to ``limit`` values of the set under ``key`` greater than ``after``, ascending, and
        whether more follow."""
        ...

    def get_record(self, kind: str, key: int) -> bytes | None:
        """The record of ``kind`` (a service's name, e.g. ``"namespace"``) stored under ``key``."""
        ...

    def put_record(self, kind: str, key: int, data: bytes, now: float) -> None:
        """Store (or replace) one service record. Services check their own rules first."""
        ...

    def delete_record(self, kind: str, key: int) -> None: ...

    def stats(self) -> dict[str, int]: ...


class MemoryStore:
    """A :class:`Store` in process memory; everything is lost when the process ends."""

    def __init__(self) -> None:
        self._values: dict[int, bytes] = {}
        self._entries: dict[int, list[int]] = {}
        self._records: dict[tuple[str, int], bytes] = {}
        self._value_bytes = 0
        self._entry_count = 0

    def get_value(self, key: int) -> bytes | None:
        return self._values.get(key)

    def put_value(self, key: int, value: bytes, now: float) -> None:
        old = self._values.get(key)
        if old is None:
            self._value_bytes += len(value)
        self._values[key] = value

    def add_entry(self, key: int, value: int, now: float) -> bool:
        values = self._entries.setdefault(key, [])
        index = bisect.bisect_left(values, value)
        if index < len(values) and values[index] == value:
            return False
        values.insert(index, value)
        self._entry_count += 1
        return True

    def entries_after(self, key: int, after: int | None, limit: int) -> tuple[list[int], bool]:
        values = self._entries.get(key, [])
        start = 0 if after is None else bisect.bisect_right(values, after)
        page = values[start:start + limit]
        return page, start + limit < len(values)

    def get_record(self, kind: str, key: int) -> bytes | None:
        return self._records.get((kind, key))

    def put_record(self, kind: str, key: int, data: bytes, now: float) -> None:
        self._records[(kind, key)] = data

    def delete_record(self, kind: str, key: int) -> None:
        self._records.pop((kind, key), None)

    def stats(self) -> dict[str, int]:
        return {
            "records": len(self._records),
            "values": len(self._values),
            "value_bytes": self._value_bytes,
            "entry_keys": len(self._entries),
            "entries": self._entry_count,
        }
