"""Structured lookup events, emitted by the core (on real sockets and in the simulator alike).

Subscribe with :meth:`qadom.node.Node.add_listener`. Every event carries the lookup's id, unique per
node, and the core's time ``now``. For one lookup the order is: one :class:`LookupStarted`, then
:class:`LookupRequest`, :class:`LookupReply` and :class:`LookupTimeout` events as they happen, then
one :class:`LookupFinished`. Each request ends in a :class:`LookupReply` or a final
:class:`LookupTimeout` (a :class:`LookupRefused` when the contact answered with nothing of use),
unless the lookup finished first. ``LookupFinished.failures`` also counts the candidates left out
without a request (an address banned for lying, of the IP family our socket cannot reach, or
a multicast or broadcast address, which is never asked); its ``requests`` and ``rounds`` count
only the requests sent, one :class:`LookupRequest` each.
"""

from __future__ import annotations

from dataclasses import dataclass

from .contact import Contact


@dataclass(frozen=True, slots=True)
class LookupEvent:
    lookup_id: int
    now: float


@dataclass(frozen=True, slots=True)
class LookupStarted(LookupEvent):
    target: int
    kind: str  # "node", "value", "search", "namespace" or "dht" (qadom.widgets.LOOKUP_KINDS)
    initial: tuple[Contact, ...]


@dataclass(frozen=True, slots=True)
class LookupRequest(LookupEvent):
    contact: Contact
    distance: int  # XOR distance from contact to the target
    round: int


@dataclass(frozen=True, slots=True)
class LookupReply(LookupEvent):
    contact: Contact
    closer: tuple[Contact, ...]  # the contacts it named that the lookup had not seen
    found_value: bool


@dataclass(frozen=True, slots=True)
class LookupTimeout(LookupEvent):
    contact: Contact
    final: bool  # False: first attempt stalled, slot freed; True: the request failed for good


@dataclass(frozen=True, slots=True)
class LookupRefused(LookupTimeout):
    """The contact answered, but not with what the lookup asked: an ERROR (its ``code``, e.g.
    RATE_LIMITED) or a reply of no use here (``code`` None: the wrong kind, a value that does not
    hash to its key). The request failed for good, as with a final :class:`LookupTimeout`, of
    which this is a kind (``final`` is True)."""

    code: int | None


@dataclass(frozen=True, slots=True)
class LookupFinished(LookupEvent):
    target: int
    kind: str
    found_value: bool
    closest: tuple[Contact, ...]
    rounds: int
    requests: int
    replies: int
    failures: int
    duration: float
    # The operation ended before the lookup did (cancelled, past its deadline, or failed on a
    # reply, as a namespace set that a replica's newer record refutes): it was stopped there,
    # and ``found_value`` is False.
    given_up: bool = False
