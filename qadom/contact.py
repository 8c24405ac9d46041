"""A contact: what one node knows of another (its id and the UDP address it answered from)."""

from __future__ import annotations

from dataclasses import dataclass, field

Address = tuple[str, int]
"""A UDP address as ``(host, port)``; the host is an IP literal."""


@dataclass(frozen=True, slots=True)
class Contact:
    """A node id and its address. Immutable and hashable, so it can sit in sets and dict keys."""

    id: int
    address: Address
    wire: bytes | None = field(default=None, init=False, compare=False, repr=False)
    """The contact's CBOR as a NODES reply carries it, written by :mod:`qadom.codec` the first
    time it is sent (a routing table's contacts are sent over and over); not part of equality."""

    def __repr__(self) -> str:
        return f"Contact({self.id:064x}"[:17] + f"…, {self.address[0]}:{self.address[1]})"
