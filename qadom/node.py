"""The sans-IO Kademlia node: every protocol rule of qadom, and no I/O at all.

A :class:`Node` is driven from outside, in the style of aioquic's ``QuicConnection``:

* inputs: :meth:`Node.datagram_received` (bytes, source address, ``now``) and
  :meth:`Node.handle_timer` (``now``), plus the operations (:meth:`Node.get`, :meth:`Node.set`, ...)
  which take ``now`` and return a :class:`~qadom.call.Call`;
* outputs: :meth:`Node.datagrams_to_send` (drain after every input) and :meth:`Node.get_timer` (the
  next time :meth:`handle_timer` must be called).

Time and randomness come in (``now`` arguments, an injected ``random.Random``), so the asyncio
adapter on real sockets and the simulator on a virtual clock drive the very same code.

Guarantees:

* :meth:`datagram_received` never raises. A datagram that does not decode is dropped and counted
  (``stats["malformed"]``); a reply that matches no request sent to that address is dropped and
  counted (``stats["unexpected"]``).
* A contact enters the routing table only after it answered one of our requests from its address.
* Every request ends: it is answered, or fails after ``1 + rpc_retries`` attempts; every operation
  completes within ``operation_timeout``.
* A value is accepted from the network only if its SHA-256 is the key asked for; a peer that
  answers with anything else leaves the routing table and is not asked again for a while.
"""

from __future__ import annotations

import builtins
import contextlib
import hashlib
import hmac
import logging
import math
import random
import sys
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator
from copy import copy
from dataclasses import replace
from functools import partial
from heapq import heappop, heappush, nsmallest
from typing import Any, Protocol, TypeVar

from .call import Call
from .codec import Codec
from .config import Config
from .contact import (
    GLOBAL,
    LOOPBACK,
    Address,
    Contact,
    address_scope,
    format_address,
    host_key,
    make_contact,
)
from .dhtrecords import DhtRecordService
from .errors import (
    IncompleteSearch,
    InvalidArgument,
    InvalidType,
    NoPeersError,
    NotFoundError,
    OperationAbandoned,
    OperationTimeout,
    ProtocolError,
    QadomError,
    RateLimited,
    RemoteError,
    StorageFull,
    StorageUnavailable,
    printable,
)
from .events import (
    LookupEvent,
    LookupFinished,
    LookupRefused,
    LookupReply,
    LookupRequest,
    LookupStarted,
    LookupTimeout,
)
from .ids import ID_BITS, ID_SPACE, check_id, key_for, random_id, random_id_in
from .info import InfoService, is_loopback
from .lookup import Lookup, State
from .messages import (
    Append,
    Challenge,
    Entries,
    Envelope,
    Error,
    ErrorCode,
    FindNode,
    FindNodeStore,
    FindValue,
    Message,
    Nodes,
    NodesStored,
    Ping,
    Pong,
    Search,
    Store,
    Stored,
    Value,
)
from .namespace import NamespaceService, check_record_value
from .pubsub import PubSubService
from .ratelimit import RateLimiter
from .routing import RoutingTable, network_prefix, range_distance, subtree_pieces
from .storage import ENTRY_SIZE, NEVER, Due, DueRecord, MemoryStore, Meta, remaining_ttl
from .storage import Store as StoreBackend

log = logging.getLogger("qadom")

T = TypeVar("T")
TOKEN_BYTES = 16
_SELF_LOOKUP_TRIES = 3  # lookups of our own id a join makes before it gives up (Node.bootstrap)
# Refresh lookups started at once at most, one per id range, by an upkeep (Node._to_refresh), the
# oldest first; a join (Node._to_refresh_after_join) refreshes the subtrees of this many levels off
# our id's path, the farthest first, up to 2^(b - 1) ranges a level with Config.split_bits b. With
# N random ids a table has about log2(N / k) + 1 levels, so this binds only past 2^32 k nodes, or
# when ids cluster around ours (chosen ids, or an attacker's) and the table has split along our id's
# path: up to 255 levels, whose buckets come stale together every hour, and a lookup for each would
# ask the same neighbours again. An upkeep's leftovers go first at the next ones: a bucket is
# refreshed at most ceil(len(buckets) / 32) upkeeps after it came stale.
_REFRESH_RANGES = 32
BUG_LOG_INTERVAL = 60.0
"""Seconds between two tracebacks of the same kind of internal error (see ``Node._log_bug``)."""
BUG_LOG_KINDS = 64
"""Kinds of error ``Node._log_bug`` remembers at most, the one logged longest ago forgotten first.
A kind is a place in the code and an exception type, so a node meets a handful; the bound keeps
the memory fixed whatever happens."""
ReplyCallback = Callable[[Envelope | None, float], None]
Handler = Callable[[Any, int | None, Address, float], Message]
# A lookup's per-reply rule: the contacts the reply names, or None when the reply is unusable.
OnMessage = Callable[[Contact, Message, Lookup, float], Iterable[Contact] | None]


class RecordService(Protocol):
    """A service that keeps records with a lifecycle in the node's store (namespaces, /dht)."""

    KIND: str

    def republish(self, due: DueRecord, now: float,
                  missed: Callable[[float], None] | None = None) -> None:
        """Send ``due`` to the k closest, rescheduled; ``missed(now)`` if that reached nobody
        (:meth:`Node.replicate`)."""

    def copy_message(self, due: DueRecord, ttl: int, now: float) -> Message | None: ...


class _Stats(Counter[str]):
    """A :class:`~collections.Counter` whose items are set as a dict's are. Counter defines
    ``__delitem__`` in Python, which sends every item assignment through Python's generic slot
    (a lookup and a wrapped call: ``stats[name] += 1`` cost several times a dict's, ten times per
    round trip); taking both from dict gives the assignment back its C slot. The one difference:
    ``del stats[name]`` of a name never counted raises KeyError, as a dict's does."""

    __slots__ = ()
    __setitem__ = dict.__setitem__
    __delitem__ = dict.__delitem__  # type: ignore[assignment]


def _named_nodes(contact: Contact, message: Message, lookup: Lookup,
                 now: float) -> Iterable[Contact] | None:
    """A FIND_NODE lookup's reading of a reply: the contacts of a NODES, else none of use."""
    return message.nodes if isinstance(message, Nodes) else None


RPC_IDS_AT_ONCE = 64
"""Request ids a node drawing them from the operating system reads at once (Node._draw_ahead)."""

_EXPIRE_AGAIN = 1.0
"""Seconds between two batches of one mass expiry (:meth:`Node._expire`)."""


def _ignore_acks(acks: int, error: QadomError | None, now: float) -> None:
    return None


def _network(contact: Contact) -> str | None:
    """The public network of a lookup candidate (Config.max_lookup_contacts_per_prefix)."""
    return network_prefix(contact.address[0])


def _hand_over_host(host: str) -> str | None:
    """What one budget of hand-overs (:meth:`Node._hand_over`) counts as one host: a public
    address's network (its /24 or /64, :func:`~qadom.routing.network_prefix`), as the routing
    table's network diversity limits count it, since the ports and addresses of one network
    take turns in the same places of our table; a private or link-local address itself
    (:func:`~qadom.contact.host_key`), as the request rates count it; None, no budget, for a
    loopback address, which every peer of one machine shares (tests, the simulator, the
    benchmarks) and from which only this machine's own processes send."""
    scope = address_scope(host)
    if scope == LOOPBACK:
        return None
    return network_prefix(host) if scope == GLOBAL else host_key(host)


class _Request:
    """One outstanding request of ours."""

    __slots__ = ("address", "attempts", "challenged", "data", "expect_id", "gen", "message",
                 "on_reply", "on_stall", "placed", "retries", "rpc_id", "sent_at")

    def __init__(self, rpc_id: int, address: Address, message: Message, data: bytes,
                 expect_id: int | None, on_reply: ReplyCallback,
                 on_stall: Callable[[float], None] | None, now: float, retries: int) -> None:
        self.rpc_id = rpc_id
        self.address = address
        self.message = message
        self.data = data
        self.gen = 0  # bumped at every (re)send; a timer of an older send is stale
        self.challenged: bytes | None = None  # the token a CHALLENGE granted, once resent with it
        self.expect_id = expect_id
        self.on_reply = on_reply
        self.on_stall = on_stall
        self.attempts = 1
        self.retries = retries  # resends after a timeout before the request fails
        self.sent_at = now
        # Whether it holds one of its address's places (Config.max_requests_in_flight): from
        # when it goes out until it ends.
        self.placed = False


_FAR = 1 << 256
"""Farther from any target than every id (XOR distances are below 2**256)."""


class _NodeLookup(Lookup):
    """A lookup run by a node: also what the peers that refused it with an ERROR said, and how
    many stayed silent, so that an operation nobody answered can tell refusals from silence,
    and a rate limit from either (:meth:`Node.unanswered`, :meth:`Node.unreached`); and how
    close to the target the k closest candidates that failed for our request rate were, so
    that a write stored only farther out can tell whether readers would reach it
    (:meth:`Node.overtaken`). Counts, the first refusal and at most k distances: its memory
    does not grow with the requests it makes."""

    # Class defaults: no __init__ call.
    refusals = 0  # requests that failed for an ERROR reply
    first_refusal: Error | None = None
    rate_refusals = 0  # of the refusals, those for our request rate (RATE_LIMITED)
    silent = 0  # requests that failed with every attempt unanswered
    silent_limited = 0  # of those, to a peer whose silence our rate explains (Node._silenced)
    # The distances to the target of the k closest candidates that failed for our rate (refused
    # RATE_LIMITED, or silent while that explains it), closest first; empty when none did. A
    # candidate may fail at more than one address (Lookup's alternates): kept once.
    limited_distances: tuple[int, ...] = ()
    # The same for the k + 1 closest candidates that failed by silence or an ERROR, whatever the
    # reason (Node.unheard, which needs to know whether more than k did): not those whose answer
    # was of no use, which answered.
    unheard_distances: tuple[int, ...] = ()

    def on_refusal(self, contact: Contact, error: Error) -> None:
        """``contact`` answered with ``error``: a failure (see :meth:`Lookup.on_failure`),
        counted as a refusal if it ended the request."""
        failures = self.failures
        self.on_failure(contact)
        if self.failures > failures:
            self.refusals += 1
            self.unheard_distances = _nearest(self.unheard_distances, contact.id ^ self.target,
                                              self.k + 1)
            if error.code == ErrorCode.RATE_LIMITED:
                self.rate_refusals += 1
                self._limited(contact)
            if self.first_refusal is None:
                self.first_refusal = error

    def on_silence(self, contact: Contact, limited: bool, answered_as: int | None = None) -> None:
        """``contact`` never answered (its address answered as ``answered_as``, another id, if
        given): a failure, counted as silence if it ended the request, and as silence our rate
        explains with ``limited``."""
        failures = self.failures
        self.on_failure(contact, answered_as)
        if self.failures > failures:
            self.silent += 1
            self.unheard_distances = _nearest(self.unheard_distances, contact.id ^ self.target,
                                              self.k + 1)
            if limited:
                self.silent_limited += 1
                self._limited(contact)

    def _limited(self, contact: Contact) -> None:
        """``contact`` failed for our request rate: keep its distance to the target if it is
        among the k closest of those that did (farther ones cannot change the outcome)."""
        self.limited_distances = _nearest(self.limited_distances, contact.id ^ self.target,
                                          self.k)


def _nearest(kept: tuple[int, ...], distance: int, k: int) -> tuple[int, ...]:
    """``kept`` (at most ``k`` distances, smallest first) with ``distance`` in it if it is
    among the ``k`` smallest and not there yet."""
    if distance in kept or (len(kept) >= k and distance >= kept[-1]):
        return kept
    return tuple(sorted((*kept, distance)))[:k]


class _Skip:
    """A lookup's rule for the contacts it does not ask (:class:`Lookup`'s ``skip``): those
    whose address is in the node's backoff (it failed of late) or banned (a liar), as of the
    lookup's start. It keeps the distances to the target of the k + 1 closest contacts it passed
    over for a backoff (:meth:`note`; at most k + 1 numbers), which a read that found nothing
    counts among the peers that did not answer it (:meth:`Node.unheard`, which needs to know
    whether more than k did)."""

    __slots__ = ("banned", "dead", "distances", "k", "now", "target")

    def __init__(self, dead: dict[Address, float], banned: dict[Address, float], now: float,
                 target: int, k: int) -> None:
        self.dead = dead
        self.banned = banned
        self.now = now
        self.target = target
        self.k = k
        self.distances: tuple[int, ...] = ()  # closest first

    def __call__(self, contact: Contact) -> bool:
        if self.dead.get(contact.address, -math.inf) > self.now:
            self.note(contact)
            return True
        return self.banned.get(contact.address, -math.inf) > self.now

    def note(self, contact: Contact) -> None:
        """``contact`` was passed over for a backoff of its address."""
        self.distances = _nearest(self.distances, contact.id ^ self.target, self.k + 1)


class _Asked:
    """The ``on_reply`` of a lookup's request to ``contact``: the reply, or None, goes to
    ``run``; :meth:`answered_as` instead when the address answered as another id, which the
    lookup may then still ask there (:meth:`Lookup.on_failure`)."""

    __slots__ = ("contact", "run")

    def __init__(self, run: _LookupRun, contact: Contact) -> None:
        self.run = run
        self.contact = contact

    def __call__(self, envelope: Envelope | None, now: float) -> None:
        self.run.on_reply(self.contact, envelope, now)

    def answered_as(self, node_id: int, now: float) -> None:
        self.run.on_reply(self.contact, None, now, node_id)


def _still_wanted(on_reply: ReplyCallback, dead: bool) -> bool | None:
    """Whether a request that waited for a place (Node.request) is still of use, by what its
    answer goes to: None when nobody listens for it (its lookup finished), False when it is to
    fail unsent (its operation ended meanwhile, or it is a lookup's or a probe's and its address
    failed meanwhile: the lookup would not ask it now), True to send it."""
    if type(on_reply) is _Asked:
        run = on_reply.run
        if run.finished:
            return None
        return not (dead or (run.call is not None and run.call.done))
    owner = getattr(on_reply, "__self__", None)
    if isinstance(owner, _Probe):
        return not (dead or owner.settled or (owner.call is not None and owner.call.done))
    if type(on_reply) is partial:
        paging = getattr(on_reply.func, "__self__", None)
        if isinstance(paging, _Paging):
            return not paging.call.done
    return True


def _describe(error: Error) -> str:
    """An ERROR reply as text for a message: its code's name and its reason, shortened, with
    any character that is not printable replaced (the reason is the remote peer's text)."""
    try:
        code = ErrorCode(error.code).name
    except ValueError:
        code = f"code {error.code}"
    reason = printable(error.reason)
    return f"{code} ({reason})" if reason else code


class _LookupRun:
    """One iterative lookup driven by a node (see :meth:`Node.run_lookup`): asks whom its
    :class:`Lookup` chooses, feeds it the replies, and ends once. Requests and timers point to
    it; it points to none of them, so a finished run is freed at once, without the collector."""

    __slots__ = ("call", "emit", "finished", "given_up", "hedge_timer", "kind", "lookup",
                 "lookup_id", "message", "node", "on_finish", "on_message", "refilled", "started",
                 "touched_before")

    def __init__(self, node: Node, lookup: _NodeLookup, lookup_id: int, kind: str,
                 message: Message, on_message: OnMessage,
                 on_finish: Callable[[Lookup, float], None], call: Call[Any] | None,
                 now: float) -> None:
        self.node = node
        self.lookup = lookup
        self.lookup_id = lookup_id
        self.kind = kind
        self.message = message
        self.on_message = on_message
        self.on_finish = on_finish
        self.call = call
        self.started = now
        self.finished = False
        self.given_up = False  # stopped because its operation ended first (see pump)
        self.refilled = False
        self.hedge_timer = 0  # the probe's hedge timer, while it may still fire
        self.emit = node._emit if node._listeners else None
        self.touched_before = -math.inf  # the bucket's lookup time before this one touched it

    def pump(self, now: float) -> None:
        """Send what the lookup asks for; finish if it is done."""
        if self.finished:
            return
        lookup, node, emit = self.lookup, self.node, self.emit
        if self.call is not None and self.call.done and not lookup.stopped:
            # The operation ended first (cancelled, past its deadline): asking more is of no use.
            self.given_up = True
            lookup.stop()
            # Not a lookup into the target's bucket after all: upkeep still refreshes it.
            node.table.untouch(lookup.target, self.started, self.touched_before)
        self._refill(now)
        banned, ipv6 = node._banned, node.ipv6
        chosen = lookup.next_requests()
        while chosen:
            skipped = False
            for cand in chosen:
                contact = cand.contact
                if banned and banned.get(contact.address, -math.inf) > now:
                    # Its address lied (to this lookup or another) since it was named: a liar
                    # is not asked while its ban lasts, whatever id it was named with.
                    lookup.unask(contact)
                    skipped = True
                    continue
                if ipv6 is not None and (":" in contact.address[0]) is not ipv6:
                    # Named by a peer of both families: our socket cannot reach it.
                    node.stats["unreachable"] += 1
                    lookup.unask(contact)
                    skipped = True
                    continue
                if address_scope(contact.address[0]) < LOOPBACK:
                    # A multicast or broadcast address, which a loopback peer may have named
                    # (_in_scope leaves out the others' at once): no peer's, and a request there
                    # would reach every host of a network, ours included.
                    node.stats["contacts_out_of_scope"] += 1
                    lookup.unask(contact)
                    skipped = True
                    continue
                if emit:
                    emit(LookupRequest(self.lookup_id, now, contact, contact.id ^ lookup.target,
                                       cand.round))
                node.request(contact.address, self.message, now, expect_id=contact.id,
                             on_reply=_Asked(self, contact),
                             on_stall=partial(self.on_stall, contact))
                if cand is lookup.probe:  # asked alone: widen if it is slow to answer
                    node.stats["probes"] += 1
                    self.hedge_timer = node._schedule(now + node.probe_hedge, self.hedge)
            if not skipped:
                break
            # The candidates left out failed here and now: the lookup may have run out of
            # candidates with them, and falls back on the table as after any failure.
            self._refill(now)
            chosen = lookup.next_requests()
        if lookup.finished:
            self.finished = True
            if lookup.crowded:
                node.stats["lookup_crowded"] += lookup.crowded
            if self.hedge_timer:
                node._cancel(self.hedge_timer)
                self.hedge_timer = 0
            if emit:
                emit(LookupFinished(self.lookup_id, now, lookup.target, self.kind,
                                    lookup.stopped and not self.given_up,
                                    tuple(lookup.closest()), lookup.rounds, lookup.requests,
                                    lookup.replies, lookup.failures, now - self.started,
                                    self.given_up))
            try:
                self.on_finish(lookup, now)
            except StorageUnavailable as exc:
                # Finishing read a store that cannot be read now (a service's own copy, looked
                # at last): the operation fails at once with that, not at its deadline.
                node.stats["storage_errors"] += 1
                if self.call is not None:
                    self.call.fail(exc)

    def _refill(self, now: float) -> None:
        """When every candidate near the target failed (a partition, a dead neighbourhood), fall
        back once on the rest of the routing table before giving up; and when the table had no
        one left to ask either (every contact failed of late: a cut, or our own overload), on
        the k closest of the contacts it gave up that are out of backoff, which would otherwise
        be pinged back only minutes later (:meth:`Node._retry_given_up`): one that answers
        comes back into the table as any contact that answers us."""
        lookup = self.lookup
        if (lookup.finished and not lookup.stopped and not self.refilled
                and len(lookup.closest()) < lookup.k):
            self.refilled = True
            node = self.node
            dead = node._dead
            lookup.add(c for c in node.table.closest(lookup.target, len(node.table))
                       if dead.get(c.address, -math.inf) <= now)
            if lookup.finished and node._given_up:
                target = lookup.target
                lookup.add(nsmallest(lookup.k, (
                    entry[0] for entry in node._given_up.values()
                    if dead.get(entry[0].address, -math.inf) <= now),
                    key=lambda c: c.id ^ target))

    def on_reply(self, contact: Contact, envelope: Envelope | None, now: float,
                 answered_as: int | None = None) -> None:
        """Feed the lookup ``contact``'s reply (None: it stayed silent, or its address answered
        as ``answered_as``, another id), then go on. A reply that ``on_message`` raises on
        counts as a failed one (and as ``internal_errors``, or as ``storage_errors`` for
        StorageUnavailable): no reply can freeze a lookup."""
        if self.finished:
            return
        lookup, emit = self.lookup, self.emit
        if envelope is not None and isinstance(envelope.message, Error):
            lookup.on_refusal(contact, envelope.message)
            if emit:
                emit(LookupRefused(self.lookup_id, now, contact, True, envelope.message.code))
        elif envelope is None:
            lookup.on_silence(contact, self.node._silenced(contact.address, now), answered_as)
            if emit:
                emit(LookupTimeout(self.lookup_id, now, contact, True))
        else:
            node = self.node
            try:
                named = self.on_message(contact, envelope.message, lookup, now)
            except StorageUnavailable:
                # A rule read a store that cannot be read now: no bug (as datagram_received).
                node.stats["storage_errors"] += 1
                log.debug("the store refused a read judging a reply from %s", contact.address,
                          exc_info=True)
                named = None
            except Exception:
                # A bug in a rule, which a peer's reply may trigger at will: the reply counts
                # as a failed one, so the lookup moves on to others instead of waiting for its
                # deadline on a request that will never be settled.
                node.stats["internal_errors"] += 1
                node._log_bug(now, "internal error judging a %s reply",
                              type(envelope.message).__name__)
                named = None
            if named is None:
                lookup.on_failure(contact)
                if emit:
                    emit(LookupRefused(self.lookup_id, now, contact, True, None))
            else:
                scope = address_scope(contact.address[0])
                if scope != LOOPBACK:  # a loopback peer's are trusted but for NOWHERE (pump)
                    named = self._in_scope(named, scope)
                new = lookup.on_reply(contact, named)
                if emit:
                    emit(LookupReply(self.lookup_id, now, contact, tuple(new), lookup.stopped))
        self.pump(now)

    def _in_scope(self, named: Iterable[Contact], scope: int) -> list[Contact]:
        """The contacts of ``named`` that a peer of ``scope`` may send us to: none narrower than
        its own. A peer out on the Internet that names a loopback or private address would have
        us send requests to services of our own machine or network; a peer on our network may
        name peers on it. A multicast or broadcast address (NOWHERE, narrower than every
        ``scope``) is no peer's, and a request sent there would reach every host of a network,
        ours included (a loopback peer's contacts are not filtered here: :meth:`pump` refuses to
        ask those). What is left out is counted (``contacts_out_of_scope``)."""
        named = list(named)
        kept = [c for c in named if address_scope(c.address[0]) >= scope]
        if len(kept) != len(named):
            self.node.stats["contacts_out_of_scope"] += len(named) - len(kept)
        return kept

    def on_stall(self, contact: Contact, now: float) -> None:
        if self.finished:
            return
        self.lookup.on_stall(contact)
        if self.emit:
            self.emit(LookupTimeout(self.lookup_id, now, contact, False))
        self.pump(now)

    def hedge(self, now: float) -> None:
        """The probe's hedge delay passed: ask alpha at a time if it is still probing."""
        self.hedge_timer = 0
        if not self.finished and self.lookup.probing:
            self.node.stats["probes_hedged"] += 1
            self.lookup.widen()
            self.pump(now)


# Whether a probe's reply ends its lookup by itself (it holds the value), and what the lookup
# then does with it in place of its on_message and on_finish (see Node.run_lookup).
ProbeHit = Callable[[Message], bool]
OnHit = Callable[[Message, float], None]


class _Probe:
    """A value lookup while its probe, a likely holder asked alone, is its only request (see
    :meth:`Node.run_lookup`). Most probes find the value, and the lookup then asks nobody else:
    that case is settled here, without a :class:`Lookup` or a :class:`_LookupRun`. Any other
    outcome (no value, an error, silence, a stall, the hedge delay passed) first builds them as
    the probe left them, then hands them that outcome and every later one, so that the lookup
    goes on exactly as if it had had them from the start."""

    __slots__ = ("call", "contact", "hedge_timer", "hit", "kind", "likely", "lookup_id",
                 "message", "node", "on_finish", "on_hit", "on_message", "run", "seeds",
                 "settled", "skip", "started", "target", "touched_before")

    def __init__(self, node: Node, lookup_id: int, target: int, kind: str, message: Message,
                 contact: Contact, on_message: OnMessage,
                 on_finish: Callable[[Lookup, float], None], hit: ProbeHit, on_hit: OnHit,
                 call: Call[Any] | None, now: float, seeds: Callable[[], list[Contact]],
                 skip: Callable[[Contact], bool], likely: Callable[[Contact], bool]) -> None:
        self.node = node
        self.lookup_id = lookup_id
        self.target = target
        self.kind = kind
        self.message = message
        self.contact = contact
        self.on_message = on_message
        self.on_finish = on_finish
        self.hit = hit
        self.on_hit = on_hit
        self.call = call
        self.started = now
        self.seeds = seeds
        self.skip = skip
        self.likely = likely
        self.hedge_timer = 0  # the hedge timer, as _LookupRun.hedge_timer
        self.touched_before = -math.inf
        self.settled = False  # the probe found the value: the lookup is over
        self.run: _LookupRun | None = None  # the whole lookup, once the probe missed

    def _lookup_run(self) -> _LookupRun:
        """The whole lookup, as :meth:`Node.run_lookup` builds it, with its probe asked."""
        run = self.run
        if run is not None:
            return run
        node = self.node
        # The probe was chosen past ``skip`` when the lookup started: it is a candidate
        # whatever befell its address since (a failure, a ban), as it was from the start.
        lookup = node._new_lookup(self.target, (self.contact,), None, self.likely, self.seeds)
        lookup._skip = self.skip
        lookup.next_requests()  # the probe, asked alone
        run = self.run = _LookupRun(node, lookup, self.lookup_id, self.kind, self.message,
                                    self.on_message, self.on_finish, self.call, self.started)
        run.emit = None  # nobody listened when the lookup started: nobody hears of it
        run.touched_before = self.touched_before
        run.hedge_timer = self.hedge_timer
        return run

    def on_reply(self, envelope: Envelope | None, now: float) -> None:
        """Settle the lookup with the probe's reply if ``hit`` says it holds the value, else
        hand the reply to the whole lookup. A reply that ``hit`` or ``on_hit`` raises on (a
        bug, which a peer's reply may trigger at will) is counted as ``internal_errors`` (as
        ``storage_errors`` for StorageUnavailable from ``hit``) and fails the probe, as
        :meth:`_LookupRun.on_reply` does: the lookup goes on with others instead of waiting for
        its deadline. StorageUnavailable from ``on_hit`` fails the operation at once, as from
        an ``on_finish``."""
        if self.settled:
            return
        if self.run is None and envelope is not None:
            message = envelope.message
            node = self.node
            try:
                hit = not isinstance(message, Error) and self.hit(message)
            except StorageUnavailable:
                self._failed(message, now, bug=False)
                return
            except Exception:
                self._failed(message, now, bug=True)
                return
            if hit:
                self.settled = True
                if self.hedge_timer:
                    node._cancel(self.hedge_timer)
                    self.hedge_timer = 0
                try:
                    self.on_hit(message, now)
                except StorageUnavailable as exc:  # as _LookupRun.pump
                    node.stats["storage_errors"] += 1
                    if self.call is not None:
                        self.call.fail(exc)
                except Exception:
                    self.settled = False  # not settled after all: the lookup goes on
                    self._failed(message, now, bug=True)
                return
        self._lookup_run().on_reply(self.contact, envelope, now)

    def _failed(self, message: Message, now: float, *, bug: bool) -> None:
        """The probe's reply ``message`` made ``hit`` or ``on_hit`` raise (the exception being
        handled): count it (and log a ``bug`` with its traceback), and go on with the whole
        lookup with the probe failed, as :meth:`_LookupRun.on_reply` does with a reply its
        ``on_message`` raises on."""
        node = self.node
        if bug:
            node.stats["internal_errors"] += 1
            node._log_bug(now, "internal error judging a %s reply", type(message).__name__)
        else:  # a store that cannot be read now: no bug (as datagram_received)
            node.stats["storage_errors"] += 1
            log.debug("the store refused a read judging a reply from %s", self.contact.address,
                      exc_info=True)
        run = self._lookup_run()
        run.lookup.on_failure(self.contact)
        run.pump(now)

    def on_stall(self, now: float) -> None:
        if not self.settled:
            self._lookup_run().on_stall(self.contact, now)

    def hedge(self, now: float) -> None:
        if not self.settled:
            self._lookup_run().hedge(now)


class Node:
    """One Kademlia node's protocol state. See the module docstring for how to drive it.

    ``stats`` counts: ``datagrams_in/out``, ``bytes_in/out``, ``malformed`` (undecodable
    datagrams), ``unexpected`` (replies to no request of ours from that address), ``requests_in``,
    ``requests_out``, ``retries``, ``timeouts`` (requests failed for good),
    ``timeouts_rate_limited`` (of those, the ones not held against the table's contact of
    a peer that had just refused us for our rate), ``wrong_id`` (replies from an id other than
    the one asked), ``liars`` (contacts dropped for a false answer),
    ``internal_errors`` (bugs caught at the boundary; always 0 in a healthy node),
    ``storage_errors`` (maintenance steps, hand-overs or republished items the store refused, a
    full disk; reads that went on without our own copy, which could not be read),
    ``storage_unavailable`` (requests answered ERROR STORAGE_UNAVAILABLE: the store could not be
    read to answer them),
    ``rejoins`` (bootstraps through the saved contacts while the routing table was empty),
    ``given_up_pings`` (pings of contacts the table gave up, to bring them back: _retry_given_up),
    ``republish_missed`` (republishes that reached nobody, made again at the next upkeep),
    ``handed_over`` (copies of items sent to newcomers among our k closest: _hand_over),
    ``hand_overs_refused`` (hand-overs refused, or cut short, because their address was handed
    items under another id within ``republish_interval``, or their host, loopback aside, was
    handed ``republish_batch`` items in it already; a contact that entered through a reply
    under another id than the one asked is handed nothing then, and not counted here),
    ``unreachable`` (lookup candidates and bootstrap addresses of the other IP family than our
    socket's, left out), ``contacts_out_of_scope`` (contacts named by a peer narrower in scope
    than itself, left out of a lookup).
    """

    def __init__(self, *, config: Config | None = None, rng: random.Random | None = None,
                 node_id: int | None = None, store: StoreBackend | None = None,
                 now: float = 0.0, client_only: bool = False) -> None:
        self.config = config or Config()
        # Token secrets and request ids come from here: unpredictable unless a seeded generator
        # is given (Peer says why one may be).
        self.rng = rng or random.SystemRandom()
        self.id = check_id(node_id, "node_id") if node_id is not None else random_id(self.rng)
        self.store: StoreBackend = store if store is not None else MemoryStore(self.config)
        self.codec = Codec(self.config)
        self.table = RoutingTable(
            self.id, self.config.k, self.config.replacement_cache_size,
            self.config.stale_failures, now,
            max_bucket_per_prefix=self.config.max_bucket_contacts_per_prefix,
            max_table_per_prefix=self.config.max_table_contacts_per_prefix,
            split_bits=self.config.split_bits)
        self.stats: Counter[str] = _Stats()
        self.client_only = client_only
        self.address: Address | None = None  # where we are reachable, set by the adapter
        self._sender = None if client_only else self.id
        self._outbox: list[tuple[bytes, Address]] = []
        self._timers: list[tuple[float, int, Callable[[float], None]]] = []
        self._timer_seq = 0
        # Operation deadlines (new_call), oldest first. All operations share one timeout, so
        # their deadlines arrive in order: a FIFO that forgets a call the moment it completes,
        # instead of a heap entry that would keep every finished call alive for the timeout.
        self._deadlines: OrderedDict[int, tuple[float, Call[Any]]] = OrderedDict()
        self._last_deadline = -math.inf
        # Retransmission timers as (deadline, rpc id, send generation): plain numbers, which the
        # garbage collector stops tracking, for the timer that outlives almost every reply.
        self._request_timers: list[tuple[float, int, int]] = []
        self._cancelled: set[int] = set()  # numbers of cancelled timers still in self._timers
        self.timer_changed = True  # a timer was added since the last get_timer() (see there)
        self._timer_told = math.inf  # the deadline the last get_timer() returned (inf: None)
        self._pending: dict[int, _Request] = {}
        # Request ids: from the operating system's generator (the default), drawn ahead in
        # batches (_draw_ahead) and kept here until used; from any other (a seeded one, for
        # repeatable runs), one at a time as they are needed, as ever.
        self._rpc_ids: list[int] = []
        self._draw_rpc_id: Callable[[], int] = (
            self._draw_ahead if type(self.rng) is random.SystemRandom
            else partial(self.rng.getrandbits, 64))
        # Reads in progress that a read of the same kind and key may still share (_SharedRead),
        # and how many writes of ours have ended (a read shares none that began before one).
        self._reads: dict[tuple[str, int], _SharedRead] = {}
        self._writes_done = 0
        # Requests out per address (max_requests_in_flight), those waiting there for a place,
        # oldest first, and how many wait in all (max_queued_requests).
        self._in_flight: dict[Address, int] = {}
        self._waiting: dict[Address, deque[_Request]] = {}
        self._queued = 0
        self._dead: dict[Address, float] = {}
        # Failed requests in a row below the backoff, and when the last one failed, oldest
        # first (see _contact_failed and _forget_old_bookkeeping).
        self._failures: OrderedDict[Address, tuple[int, float]] = OrderedDict()
        # Contacts the table gave up with no replacement waiting, by id, oldest first, as
        # (contact, when given up, when next pinged, the delay after that) (_retry_given_up).
        self._given_up: OrderedDict[int, tuple[Contact, float, float, float]] = OrderedDict()
        self._banned: dict[Address, float] = {}  # the addresses of liars
        # Address-proof tokens (docs/PROTOCOL.md, "Amplification"): secrets we mint ours with
        # (the previous one stays valid for one more rotation), and tokens peers granted us.
        self._secret = self.rng.randbytes(32)
        self._old_secret = self._secret
        self._secret_at = now
        # Granted to us, by peer, with when each came (see _token_to_send).
        self._tokens: OrderedDict[Address, tuple[bytes, float]] = OrderedDict()
        # How long a token granted to us is surely valid, and after how long surely dead
        # (_token_to_send says why), from the config, computed once.
        lasts = max(self.config.token_lifetime, self.config.maintenance_interval)
        self._token_sure_for = lasts - min(self.config.maintenance_interval, lasts / 2)
        self._token_dead_after = 2 * (self.config.token_lifetime
                                      + self.config.maintenance_interval)
        self._granted: dict[Address, bytes] = {}  # ours, minted from the current secret
        # Minted from the previous secret, which tokens granted before the last change still
        # prove: remembered too, so a flood of requests with wrong tokens costs no HMAC each.
        self._granted_old: dict[Address, bytes] = {}
        # The requests served only to proven requesters (require_proof), each with what serves
        # it to an unproven one instead of a CHALLENGE (None: nothing does).
        self._proof_required: dict[type[Message], Handler | None] = {}
        # Requesters pinged for verification (_note_requester), and when: those whose request
        # was unproven, and those whose request proved its address, in a pool of their own so
        # that spoofed requests cannot fill the room of the proven ones.
        self._verifying: dict[Address, float] = {}
        self._verifying_proven: dict[Address, float] = {}
        # Neighbours we handed items over to, and when, oldest hand-over first (_hand_over);
        # the addresses handed items over to, and when, in the same order; and per host
        # (_hand_over_host) when its budget's interval began and how many items it was
        # handed in it, oldest interval first. Ids cost nothing: without the last two, a peer
        # that answers under ever new ids would be handed a batch of copies for each.
        self._handed: OrderedDict[int, float] = OrderedDict()
        self._handed_addresses: OrderedDict[Address, float] = OrderedDict()
        self._handed_hosts: OrderedDict[str, tuple[float, int]] = OrderedDict()
        self._listeners: list[Callable[[LookupEvent], None]] = []
        cfg = self.config
        # Request budgets (_within_rate): unproven requests spend these...
        self._address_rate: RateLimiter[Address] = RateLimiter(
            cfg.request_rate, cfg.request_burst, cfg.rate_limit_senders)
        self._host_rate: RateLimiter[str] = RateLimiter(
            cfg.host_request_rate, cfg.host_request_burst, cfg.rate_limit_senders)
        # ... and requests with a valid token these, so that requests spoofed in a peer's name
        # cannot spend the budget of the peer itself.
        self._proven_address_rate: RateLimiter[Address] = RateLimiter(
            cfg.request_rate, cfg.request_burst, cfg.rate_limit_senders)
        self._proven_host_rate: RateLimiter[str] = RateLimiter(
            cfg.host_request_rate, cfg.host_request_burst, cfg.rate_limit_senders)
        # One RATE_LIMITED refusal a second per address, and per proof: (address, proven).
        self._refusals: RateLimiter[tuple[Address, bool]] = RateLimiter(
            1.0, 1, cfg.rate_limit_senders)
        self._lookup_seq = 0
        # When an empty routing table may next rejoin through the saved contacts (_rejoin).
        self._rejoin_at = now
        self._rejoin_delay = cfg.maintenance_interval
        self._rejoining = False  # rejoining through saved contacts since the table emptied
        # Address -> until when its silence is its rate limit, not a failure (_note_limited).
        self._limited_by: dict[Address, float] = {}
        # Keys with a set or append on its way: how many, and how many forgets of the key came
        # since the first of them started (a write forgotten on its way is not published).
        self._writing: dict[int, list[int]] = {}
        # Bytes and items of our own that sets and appends on their way will store here.
        self._reserved = [0, 0]
        # The IP family of our socket (True: IPv6) when the driver sets it: an address of the
        # other family cannot be reached from it, so a lookup does not ask a candidate there nor
        # a bootstrap ping it. None: any address (the simulator).
        self.ipv6: bool | None = None
        self._failing_steps: builtins.set[str] = set()  # upkeep steps the store refuses now
        # Per kind of internal error: when its traceback was last logged, how many since were not.
        self._bugs_logged: dict[str, tuple[float, int]] = {}
        # The radius of our k closest contacts (see holder_radius), recomputed when the table
        # changes size or after refresh_interval.
        self._radius = 0
        self._radius_at = -math.inf
        self._radius_size = -1
        # The node-wide round-trip estimate (RFC 6298): the timeout of every address without
        # one of its own.
        self._srtt: float | None = None
        self._rttvar = 0.0
        # Addresses that answered later than the node-wide timeout, with an estimate of their
        # own as (srtt, rttvar, when last sampled), least recently sampled first (_sample_rtt).
        self._peer_rtt: OrderedDict[Address, tuple[float, float, float]] = OrderedDict()
        # Requests that failed, by request id, as (address, first sent, forgotten at), oldest
        # first: a reply that comes after all is still a round-trip sample (_late_reply).
        self._failed_rpcs: OrderedDict[int, tuple[Address, int | None, float, float]] = (
            OrderedDict())
        self._handlers: dict[type[Message], Handler] = {
            Ping: self._handle_ping,
            FindNode: self._handle_find_node,
            FindValue: self._handle_find_value,
            Store: self._handle_store,
            Append: self._handle_append,
            Search: self._handle_search,
            FindNodeStore: self._handle_find_node_store,
        }
        # Every write is served only to a requester that proved its address: what it stores is
        # charged to that address's host (the storage quotas), which a spoofed source would
        # otherwise fill in another's name. A FIND_NODE_STORE is a lookup step too: unproven,
        # it gets its contacts and stored false (and a token), so the lookup goes on and only
        # the STORE its writer sends the final k closest after the lookup carries the value.
        self.require_proof(Store)
        self.require_proof(Append)
        self.require_proof(FindNodeStore, unproven=self._handle_find_node_unproven)
        self.dht_records = DhtRecordService(self)  # signed /dht records (qadom.dhtrecords)
        self.namespace = NamespaceService(self)  # signed namespaces (qadom.namespace)
        # The services whose records have a lifecycle, by record kind: they republish them
        # (_republish) and copy them to a new neighbour (_hand_over).
        self._record_services: dict[str, RecordService] = {
            self.namespace.KIND: self.namespace, self.dht_records.KIND: self.dht_records}
        self.pubsub = PubSubService(self)  # publish/subscribe (qadom.pubsub)
        self.info = InfoService(self, now)  # the operator's INFO summary (qadom.info)
        # The first upkeep comes after between half and one maintenance interval, at a phase
        # of this node's own (read from its id: no draw from rng), and every interval after:
        # nodes started at the same instant would otherwise tick together for ever, and every
        # storer of an item would republish it in the same tick, none of them receiving
        # another's republish first, which is what lets the others skip theirs (section 2.5).
        phase = (self.id >> (ID_BITS - 32)) / 2**32
        self._schedule(now + self.config.maintenance_interval * (1 - phase / 2), self._maintain)
        self._renew_originals(now)

    # ================================================================== I/O interface

    def datagram_received(self, data: bytes, address: Address, now: float) -> None:
        """Feed one datagram received from ``address``. Never raises."""
        self.stats["datagrams_in"] += 1
        self.stats["bytes_in"] += len(data)
        try:
            envelope = self.codec.decode(data)
        except ProtocolError:
            self.stats["malformed"] += 1
            return
        try:
            if envelope.message.IS_REQUEST:
                self._on_request(envelope, address, now, len(data))
            else:
                self._on_reply(envelope, address, now)
        except StorageUnavailable:
            # A reply's handler read a store that cannot be read now: no bug, and the store says
            # so once, not at every datagram. A lookup's operation fails with it at once (see
            # _LookupRun.pump); any other runs out at its deadline.
            self.stats["storage_errors"] += 1
            log.debug("the store refused a read handling a datagram from %s", address,
                      exc_info=True)
        except Exception:  # a bug must not take the node down; it is logged and counted
            self.stats["internal_errors"] += 1
            self._log_bug(now, "internal error handling a datagram from %s", address)

    def datagrams_to_send(self) -> list[tuple[bytes, Address]]:
        """Take the datagrams queued since the last call, oldest first."""
        out, self._outbox = self._outbox, []
        return out

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called (None: no timer pending).

        Timers that can no longer do anything (the retransmission timer of a request already
        answered, a cancelled timer) are dropped here when they come first, so a driver is not
        woken for them: without this, every answered request would still cost a wakeup at its
        retransmission deadline.

        :attr:`timer_changed` tells a driver whether it must ask again: it is True once a timer
        earlier than the deadline returned last was added since the last call, and while it is
        False the deadline returned last is no later than the next one due (timers only went
        away, or came later than it), so an armed driver timer is still early enough; it then
        fires, :meth:`handle_timer` does what is due, and the driver asks again. (A request's
        retransmission timer mostly comes after the one armed: most requests then cost the
        driver no call here.)"""
        self.timer_changed = False
        first = math.inf
        timers, cancelled = self._timers, self._cancelled
        while timers and timers[0][1] in cancelled:
            cancelled.discard(heappop(timers)[1])
        if timers:
            first = timers[0][0]
        requests, pending = self._request_timers, self._pending
        while requests:
            _, rpc_id, gen = requests[0]
            req = pending.get(rpc_id)
            if req is not None and req.gen == gen:
                first = min(first, requests[0][0])
                break
            heappop(requests)
        if self._deadlines:
            first = min(first, next(iter(self._deadlines.values()))[0])
        self._timer_told = first
        return None if first == math.inf else first

    def handle_timer(self, now: float) -> None:
        """Run every timer due at ``now``, earliest first. Never raises."""
        timers, requests, deadlines = self._timers, self._request_timers, self._deadlines
        while True:
            # The earliest due among the three timer queues (ties: requests, deadlines, others).
            at = timers[0][0] if timers else math.inf
            queue = 0
            if requests and requests[0][0] <= at:
                at, queue = requests[0][0], 1
            if deadlines:
                deadline = next(iter(deadlines.values()))[0]
                if deadline < at or (deadline == at and queue == 0):
                    at, queue = deadline, 2
            if at > now:
                return
            try:
                if queue == 1:
                    _, rpc_id, gen = heappop(requests)
                    self._on_request_timer(rpc_id, gen, now)
                elif queue == 2:
                    _, (_, call) = deadlines.popitem(last=False)
                    limit = self.config.operation_timeout
                    call.fail(OperationTimeout(f"{call.name} did not complete within {limit} s"))
                else:
                    _, seq, fn = heappop(timers)
                    if seq in self._cancelled:
                        self._cancelled.discard(seq)
                    else:
                        fn(now)
            except Exception:
                self.stats["internal_errors"] += 1
                self._log_bug(now, "internal error in a timer")

    def _log_bug(self, now: float, message: str, *args: object) -> None:
        """Log the exception being handled, with its traceback, as ERROR: the first of each kind,
        then at most one of that kind every ``BUG_LOG_INTERVAL`` seconds, saying how many of it
        were left out since (each is counted in ``stats`` all the same). A bug that a remote
        peer can trigger at will must not let it flood the operator's log, nor hide another
        bug's traceback.

        A kind is ``message`` with those of ``args`` that are text (a message or event type's
        name), the exception's type and where it was raised (the file and line of its
        traceback's last frame). The other ``args`` (an address) are left out of it: a peer
        chooses its address, and each new one would be logged. At most ``BUG_LOG_KINDS`` kinds
        are remembered, the one logged longest ago forgotten first (logged again at its next
        occurrence, its count of those left out lost)."""
        exc = sys.exc_info()[1]
        tb = exc.__traceback__ if exc is not None else None
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        site = f"{tb.tb_frame.f_code.co_filename}:{tb.tb_lineno}" if tb is not None else ""
        kind = "\0".join([message, *(a for a in args if isinstance(a, str)),
                          f"{type(exc).__module__}.{type(exc).__qualname__}", site])
        logged_at, left_out = self._bugs_logged.get(kind, (-math.inf, 0))
        if now < logged_at + BUG_LOG_INTERVAL:
            self._bugs_logged[kind] = (logged_at, left_out + 1)
            return
        # Moved to the end: the dict's order is then the order kinds were last logged in.
        self._bugs_logged.pop(kind, None)
        while len(self._bugs_logged) >= BUG_LOG_KINDS:
            del self._bugs_logged[next(iter(self._bugs_logged))]
        self._bugs_logged[kind] = (now, 0)
        if left_out:
            message += f" ({left_out} more like it not logged since the last one)"
        log.exception(message, *args)

    def add_listener(self, fn: Callable[[LookupEvent], None]) -> Callable[[], None]:
        """Call ``fn`` with every lookup event; returns a function that unsubscribes it. An
        exception raised by ``fn`` is logged and counted (``listener_errors``) and never reaches
        the lookup: a faulty display cannot stall an operation."""
        if not callable(fn):
            raise InvalidType(f"a listener must be callable, not {type(fn).__name__}")
        self._listeners.append(fn)
        return lambda: self._listeners.remove(fn) if fn in self._listeners else None

    def register_handler(self, message_type: type[Message], handler: Handler) -> None:
        """Serve requests of ``message_type``: ``handler(message, sender_id, address, now)``
        returns the reply message."""
        self._handlers[message_type] = handler

    def schedule(self, deadline: float, fn: Callable[[float], None]) -> None:
        """Run ``fn(now)`` from :meth:`handle_timer` once ``deadline`` is reached (services'
        timers). Timers cannot be cancelled: a service ignores one it no longer needs."""
        self._schedule(deadline, fn)

    # ================================================================== operations

    def ping(self, address: Address, now: float) -> Call[Contact]:
        """Ask ``address`` for its id; resolves to the contact that answered. It is offered to
        the routing table like any contact that answers us (a full bucket, a ban or our own id
        can keep it out)."""
        call: Call[Contact] = self.new_call("ping", now)

        def on_reply(envelope: Envelope | None, now: float) -> None:
            if envelope is None or envelope.sender is None:
                call.fail(OperationTimeout(f"no answer from {format_address(address)}"))
            else:
                call.resolve(make_contact(envelope.sender, address))

        self.request(address, Ping(), now, on_reply=on_reply)
        return call

    def bootstrap(self, addresses: Iterable[Address], now: float) -> Call[int]:
        """Join as the paper says (section 2.3): contact the known addresses, look up our own id,
        then refresh every bucket farther than our closest neighbour. Resolves to the number of
        contacts in the table; fails with NoPeersError if no address answered, and with
        OperationTimeout if one did but none answered the lookup of our own id in
        ``_SELF_LOOKUP_TRIES`` tries (a node that knew only its bootstrap peers would be cut
        off once they leave). An answer with our own id is not a peer answering: it is our own
        address (or another node using our id, which we could not join through either), so a
        join through nothing but our own addresses fails with NoPeersError once the pings are
        over, with no lookup.

        Once the caller stopped waiting (a cancelled Peer.bootstrap: the call failed with
        OperationAbandoned), the join asks nobody more: no lookup starts, and the lookup of our
        own id and the bucket refreshes under way stop asking (the requests already out run
        their course). A join past the call's deadline instead ends the lookups it started, so
        that the buckets it began to refresh are filled all the same."""
        call: Call[int] = self.new_call("bootstrap", now)
        given_up: Call[None] = Call("bootstrap given up")  # done once nobody waits for the join
        call.add_done_callback(
            lambda c: given_up.resolve(None) if isinstance(c.exception(), OperationAbandoned)
            else None)
        targets = list(dict.fromkeys(addresses))
        if not targets:
            call.fail(InvalidArgument("bootstrap needs at least one address"))
            return call
        if self.ipv6 is not None:
            reachable = [a for a in targets if self.reachable(a)]
            self.stats["unreachable"] += len(targets) - len(reachable)
            targets = reachable
            if not targets:
                call.fail(NoPeersError("no bootstrap address of our IP family"))
                return call
        remaining = [len(targets)]
        answered = [0]
        ourselves = [0]  # answers with our own id

        def after_refresh(now: float) -> None:
            self.save_contacts()  # a durable node can rejoin from here on
            call.resolve(len(self.table))

        lookups = [0]

        def after_self_lookup(found: list[Contact], now: float) -> None:
            if call.done:
                return
            if not found:
                # A bootstrap peer answered the ping, but nobody answered the lookup (its
                # requests were lost): a table of the bootstrap peers alone would leave this
                # node cut off once they go. Look again, after rpc_timeout_max, then twice that
                # (requests that answer fast wait little, and tries close together would meet
                # the same burst of loss); after the last try, the join fails.
                lookups[0] += 1
                if lookups[0] < _SELF_LOOKUP_TRIES:
                    self._schedule(
                        now + self.config.rpc_timeout_max * 2 ** (lookups[0] - 1),
                        lambda now: None if call.done else self.find_closest(
                            self.id, now, after_self_lookup, given_up))
                else:
                    call.fail(OperationTimeout(
                        "the bootstrap peers answered, but nobody answered the lookup of our "
                        f"own id ({_SELF_LOOKUP_TRIES} tries)"))
                return
            self._refresh(self._to_refresh_after_join(found), now, after_refresh, given_up)

        def on_pong(envelope: Envelope | None, now: float) -> None:
            remaining[0] -= 1
            if envelope is not None and envelope.sender == self.id:
                ourselves[0] += 1
            elif envelope is not None and envelope.sender is not None:
                answered[0] += 1
            if remaining[0] == 0 and not call.done:
                if not answered[0] and ourselves[0]:
                    error = NoPeersError("no bootstrap address answered but this node itself (an "
                                         "address of ours, or another node with our id)")
                    error.only_ourselves = True
                    call.fail(error)
                elif not answered[0]:
                    call.fail(NoPeersError("no bootstrap address answered"))
                else:
                    self.find_closest(self.id, now, after_self_lookup, given_up)

        for address in targets:
            self.request(address, Ping(), now, on_reply=on_pong)
        return call

    def reachable(self, address: Address) -> bool:
        """Whether our socket can send to ``address``: it is of our IP family (see ``ipv6``)."""
        return self.ipv6 is None or (":" in address[0]) is self.ipv6

    def find_nodes(self, target: int, now: float) -> Call[list[Contact]]:
        """The k closest live contacts to ``target`` in the network (an iterative lookup): those
        that answered it, closest first, never this node. Never empty: a lookup that no peer
        answered fails as :meth:`unanswered` says (NoPeersError when this node knows no other,
        OperationTimeout when none answered, as a read does), since an empty answer would
        claim a network with nobody in it."""
        check_id(target, "target")
        call: Call[list[Contact]] = self.new_call("find_nodes", now)

        def then(lookup: Lookup, now: float) -> None:
            closest = lookup.closest()
            if closest:
                call.resolve(closest)
            else:
                call.fail(self.unanswered(lookup))

        self.closest_lookup(target, now, then, call)
        return call

    def get(self, key: int, now: float) -> Call[bytes]:
        """The value whose SHA-256 is ``key``, from our store or the network; fails with
        NotFoundError when no peer reached has it, as :meth:`unanswered` says when no peer
        answered, and as :meth:`unheard` says when too many of those nearest it did not. A
        store that cannot be read now (StorageUnavailable) is passed over: the k
        closest peers hold the value too.

        Gets of one key asked while a lookup for it has had no answer yet share that lookup
        (see :class:`_SharedRead`): a burst of identical reads costs the network one."""
        check_id(key)
        call: Call[bytes] = self.new_call("get", now)
        try:
            local = self.store.get_value(key, now)
        except StorageUnavailable:
            self.stats["storage_errors"] += 1
            local = None
        if local is not None:
            call.resolve(local)
            return call
        shared = self._reads.get(("get", key))
        if shared is not None and shared.writes == self._writes_done:
            self.stats["reads_shared"] += 1
            shared.join(call)
            return call
        inner: Call[bytes] = Call("get")
        shared = _SharedRead(self._reads, ("get", key), inner, call, self._writes_done)
        found: list[Value] = []
        without: list[Contact] = []  # peers that answered without the value

        def on_message(contact: Contact, message: Message, lookup: Lookup,
                       now: float) -> Iterable[Contact] | None:
            shared.close()
            if isinstance(message, Value):
                if key_for(message.value) != key:
                    self.punish(contact, now)
                    return None
                found.append(message)
                lookup.stop()
                return ()
            if isinstance(message, Nodes):
                without.append(contact)
                return message.nodes
            return None

        def on_finish(lookup: Lookup, now: float) -> None:
            if found:
                inner.resolve(found[0].value)
                self._cache_on_path(key, found[0], without, lookup, now)
            elif not lookup.closest():
                inner.fail(self.unanswered(lookup))
            else:
                missing = f"no peer reached holds key 0x{key:064x}"
                inner.fail(self.unheard(lookup, missing) or NotFoundError(missing))

        def hit(message: Message) -> bool:
            shared.close()
            return isinstance(message, Value) and key_for(message.value) == key

        def on_hit(message: Message, now: float) -> None:
            # As on_finish with the probe's value found first: nobody to cache it at.
            assert isinstance(message, Value)
            inner.resolve(message.value)

        self.run_lookup(key, "value", FindValue(key), now, on_message, on_finish, inner,
                        probe=self.config.probe_gets, hit=hit, on_hit=on_hit)
        return call

    def holder_radius(self, now: float) -> int:
        """The XOR distance within which a contact is a likely holder of a key: half the
        distance from our id to our k-th closest contact.

        Our own k closest contacts lie within a distance that reflects the network's density
        around us; ids are uniform, so the k closest nodes to any key lie within about the same
        distance of it. A contact within half of it has, on that estimate, at most k / 2 nodes
        closer to the key than itself, so it is one of the k closest and holds the value if
        anyone does. In a network the routing table covers well (up to a few hundred nodes) our
        closest contact to most keys is that close; in a large one, a lookup gets that close in
        its last round."""
        if self._radius_at + self.config.refresh_interval <= now or (
                self._radius_size != len(self.table)):
            ours = self.table.closest(self.id, self.config.k)
            self._radius = (ours[-1].id ^ self.id) // 2 if len(ours) >= self.config.k else 1 << 256
            self._radius_at, self._radius_size = now, len(self.table)
        return self._radius

    def set(self, value: bytes, now: float) -> Call[int]:
        """Store ``value`` at the k closest peers to its key, then here; resolves to the key.

        Raises StorageFull at once, with nothing sent, when our own store has no room for it.
        Fails, with nothing stored here, when there were peers to ask and none of them stored it
        (:meth:`unstored` says how: StorageFull, RateLimited, RemoteError, OperationTimeout),
        and with RateLimited when at least k peers known to be live are closer to the key than
        the nearest peer that stored it and one of those failed us for our request rate
        (:meth:`overtaken`: readers would end their lookup among those k, and miss it); with
        fewer than k of them it succeeds. With no peer known it is stored here alone, and
        offered to peers as they come (hand-over to a newcomer, and the publisher's republish).
        A peer whose known contacts all failed of late asks none and fails with
        OperationTimeout."""
        self.check_value(value)
        key = key_for(value)
        cfg = self.config
        new = self.store.value_meta(key) is None
        if new:
            self._check_room(len(value))
        call: Call[int] = self.new_call("set", now)
        if new:
            self._reserve(len(value), call)

        def keep(meta: Meta) -> None:
            self.store.put_value(key, value, meta)

        self.replicate(key, Store(value, int(cfg.expire_time)), now,
                       self._written(key, call, key, keep), call)
        return call

    def append(self, key: int, value: int, now: float) -> Call[None]:
        """Add ``value`` to the multimap set under ``key`` at the k closest peers, then here.
        Raises and fails as :meth:`set` does, with nothing stored here."""
        check_id(key)
        check_id(value, "value")
        cfg = self.config
        new = self.store.entry_meta(key, value) is None
        if new:
            self._check_room(ENTRY_SIZE)
        call: Call[None] = self.new_call("append", now)
        if new:
            self._reserve(ENTRY_SIZE, call)

        def keep(meta: Meta) -> None:
            self.store.add_entry(key, value, meta)

        self.replicate(key, Append(key, value, int(cfg.expire_time)), now,
                       self._written(key, call, None, keep), call)
        return call

    def _check_room(self, size: int) -> None:
        """StorageFull unless our store can take one more item of ``size`` bytes of our own
        (cached copies, which it evicts for it, counted as room) besides those of the sets and
        appends on their way (:meth:`_reserve`): a write we could not keep is refused before it
        reaches the network, also when many are asked for at once."""
        bytes_, items = self._reserved
        self.store.quotas.check_own(size, pending=bytes_, pending_items=items)

    def _reserve(self, size: int, call: Call[Any]) -> None:
        """Hold room for a new item of our own of ``size`` bytes until ``call`` (its set or
        append) is done: by then it is stored here, or it never will be."""
        reserved = self._reserved
        reserved[0] += size
        reserved[1] += 1

        def release(call: Call[Any]) -> None:
            reserved[0] -= size
            reserved[1] -= 1

        call.add_done_callback(release)

    def _register_write(self, key: int, call: Call[Any]) -> Callable[[], bool]:
        """Count a write of ``key`` (a set, an append, a namespace set, a /dht put) as on its
        way until ``call`` is done, and return a test of whether :meth:`forget` of ``key`` came
        since: a write forgotten on its way must not become ours when it ends, else it would
        be renewed past the forget. Every kind of write registers here, so that one
        :meth:`forget` covers them all."""
        writing = self._writing
        state = writing.setdefault(key, [0, 0])  # [writes on their way, forgets since]
        state[0] += 1
        forgets = state[1]

        def done(call: Call[Any]) -> None:
            self._writes_done += 1
            state[0] -= 1
            if not state[0]:
                del writing[key]

        call.add_done_callback(done)
        return lambda: state[1] != forgets

    def _written(self, key: int, call: Call[T], result: T, keep: Callable[[Meta], None],
                 ) -> Callable[[int, QadomError | None, float], None]:
        """The end of a set or an append of ``key`` once :meth:`replicate` is done: fail
        ``call`` with the network's refusal, else store the item here as ours with
        ``keep(meta)`` and resolve ``call`` with ``result``. A :meth:`forget` of ``key`` while
        the write was on its way holds: that write is then neither stored here nor published
        (a write of the key asked for after the forget is, as usual)."""
        forgotten = self._register_write(key, call)
        cfg = self.config

        def replicated(acks: int, error: QadomError | None, now: float) -> None:
            if call.done:  # timed out (or the peer closed): the caller was told it failed
                return
            if error is not None:
                call.fail(error)
                return
            if not forgotten():  # no forget of the key since this write started
                try:
                    keep(Meta(now + cfg.expire_time, now + cfg.publisher_renew_after,
                              original=True))
                except StorageFull as exc:
                    call.fail(exc)
                    return
            call.resolve(result)

        return replicated

    def unanswered(self, lookup: Lookup) -> QadomError:
        """Why a read that no peer answered found nothing: no peer known (NoPeersError: none in
        the table, nor any it gave up and may ping back), or
        none of those asked answered with a result, or every peer known failed of late and none
        was asked (OperationTimeout). Either way it is no sign that the network holds nothing.

        The message tells silence from refusals: peers that answered with an ERROR (a store
        they cannot read, a rate limit...) answered, and what the first of them said is given.
        It also says so when most of the peers that stayed silent had just refused us for our
        request rate (a peer over its limit answers one refusal a second and drops the rest),
        though a read reports that as OperationTimeout all the same."""
        if lookup.candidates():
            refusals = lookup.refusals if isinstance(lookup, _NodeLookup) else 0
            first = lookup.first_refusal if isinstance(lookup, _NodeLookup) else None
            rate = ""
            if isinstance(lookup, _NodeLookup) and _mostly(lookup.silent_limited, lookup.silent):
                rate = (f" ({lookup.silent_limited} of the {lookup.silent} that stayed silent "
                        "had just refused us for our request rate: slow down)")
            if not refusals or first is None:
                return OperationTimeout(f"no peer answered the lookup{rate}")
            said = _describe(first)
            if refusals >= lookup.requests:
                return OperationTimeout(f"every peer asked answered with an error: {said}")
            return OperationTimeout(
                f"no peer answered the lookup with a result: {refusals} of the "
                f"{lookup.requests} asked answered with an error (the first: {said}), the "
                f"others with nothing of use{rate}")
        if len(self.table) or self._given_up:  # the table gave up those it held: still peers
            return OperationTimeout("every known peer failed to answer of late; none was asked")
        return NoPeersError("no peer known to ask: join a network first (bootstrap)")

    def unheard(self, lookup: Lookup, missing: str) -> OperationTimeout | None:
        """Why a read whose lookup found nothing (``missing`` says what) may not say that the
        network holds nothing: more of the peers it should have heard from failed it than
        answered it. Those are the peers closer to the target than its k-th closest that
        answered (all of them, with fewer than k answers): those that failed it (unanswered, or
        refused with an ERROR; not those whose answer was of no use, which answered), and those
        it passed over because their addresses failed of late; those that answered are the
        closest that did, at most k. None when at least as many answered: under churn some of
        the closest peers are always gone, and the others hold copies too. With it, a read cut
        off from the peers near a key (their socket buffers full, a partition, our own backoff
        after such failures) fails with OperationTimeout instead of saying NotFound, or an empty
        set, for data they may well hold."""
        answered = lookup.closest()
        bound = answered[-1].id ^ lookup.target if len(answered) >= lookup.k else _FAR
        failed = 0
        if isinstance(lookup, _NodeLookup):
            failed = sum(1 for distance in lookup.unheard_distances if distance < bound)
        skip = lookup._skip
        if isinstance(skip, _Skip):
            failed += sum(1 for distance in skip.distances if distance < bound)
        if failed <= len(answered):
            return None
        # At most k + 1 of each kind are kept: enough to tell, not always to count.
        many = f"more than {lookup.k}" if failed > lookup.k else str(failed)
        return OperationTimeout(
            f"{missing}, but {many} of the peers nearest it did not answer (failed of late, "
            f"silent, or refusing), against {len(answered)} that answered: it may be held there")

    def forget(self, key: int) -> bool:
        """Stop republishing ``key`` as its original publisher (a value, multimap entries, or a
        service record stored under that key); our copies and the network's then expire
        ``expire_time`` after the last republish. True if we had published it, or a write of it
        is on its way (a set, an append, a namespace set or a /dht put whose storage key it
        is): that write is then neither kept here as ours nor renewed."""
        check_id(key)
        state = self._writing.get(key)
        if state is not None:  # a write of it on its way: it will not be ours
            state[1] += 1
            self.store.forget(key)
            return True
        return self.store.forget(key)

    def search(self, key: int, now: float) -> Call[builtins.set[int]]:
        """The union of the multimap sets under ``key`` held here and by the k closest peers (and
        any peer met on the way); an empty set when none, but a failure as :meth:`unanswered`
        says when we hold none and no peer answered, and as :meth:`unheard` says when none was
        read and too many of those nearest the key did not answer. Entries held here that
        cannot be read now (StorageUnavailable) are left out: the k closest peers hold them
        too.

        A set larger than one page (``search_page_size`` values) is then read page by page from
        each of the k closest that said more follow, at most ``max_search_pages`` pages of each
        peer (a set larger than that is read in part). A page a peer does not serve (no answer
        to any attempt, an ERROR, or "more" with no value past the point asked) is asked, from
        the same point, of another peer that answered the lookup and may hold values past it
        (none is asked when one already read to its end from at or before that point sent a
        value past it, or when the set held here has a value past it: those are read); each
        peer is asked at most once from each point. When none is left, the search fails with
        IncompleteSearch (an OperationTimeout) holding the values read: it never resolves with
        part of what the peers that answered hold. (A peer, or the set held here, read in
        another's place answers for its own set: when it holds fewer values past that point
        than the peer that failed, those are missing from the union, as they would be had the
        failed peer not answered the lookup at all.) The lookup has ``operation_timeout``;
        then the deadline moves to ``operation_timeout`` after each page that comes, so a read
        whose pages keep coming completes however long it is, and one that stalls fails with
        IncompleteSearch. Once the call is done (failed, or abandoned by its caller), no more
        page is asked for.

        Searches of one key asked while a lookup for it has had no answer yet share that lookup
        and its pages (see :class:`_SharedRead`); each gets a set of its own."""
        check_id(key)
        call: Call[builtins.set[int]] = Call("search")
        shared = self._reads.get(("search", key))
        if shared is not None and shared.writes == self._writes_done:
            self.stats["reads_shared"] += 1
            shared.join(call)
            if shared.renew is not None:  # the lookup's deadline counts from this search too
                shared.renew(now)
            return call
        inner: Call[builtins.set[int]] = Call("search")
        shared = _SharedRead(self._reads, ("search", key), inner, call, self._writes_done)
        try:
            results = self._local_entries(key, now)
        except StorageUnavailable:
            self.stats["storage_errors"] += 1
            results = set()
        paging = _Paging(self, key, inner, results, now)
        shared.renew = paging.renew
        holders = paging.holders
        more: dict[int, int] = {}  # contact id -> last value of its first page, when more follow

        def on_message(contact: Contact, message: Message, lookup: Lookup,
                       now: float) -> Iterable[Contact] | None:
            shared.close()
            if not isinstance(message, Entries):
                return None
            results.update(message.values)
            if message.more and message.values:
                more[contact.id] = message.values[-1]
            holders[contact.id] = _Holder(contact, message.values, contact.id in more)
            return message.nodes

        def on_finish(lookup: Lookup, now: float) -> None:
            if not results and not lookup.closest():
                inner.fail(self.unanswered(lookup))  # not "empty": nobody was asked, or answered
                return
            silenced = None if results else self.unheard(
                lookup, f"no peer reached holds an entry under key 0x{key:064x}")
            if silenced is not None:  # not "empty" either: those that would know were silent
                inner.fail(silenced)
                return
            paging.begin([(holders[c.id], more[c.id]) for c in lookup.closest() if c.id in more],
                         now)

        self.run_lookup(key, "search", Search(key, None), now, on_message, on_finish, inner)
        return call

    def refresh(self, now: float, *, all_buckets: bool = False) -> Call[None]:
        """Refresh buckets with no lookup for ``refresh_interval`` (every bucket with
        ``all_buckets``) by looking up a random id in each one's range (section 2.3)."""
        call: Call[None] = self.new_call("refresh", now)
        buckets = (self.table.buckets if all_buckets
                   else self.table.stale_buckets(now, self.config.refresh_interval))
        # The lookups stop asking once the call is done: its deadline, or a caller who stopped
        # waiting (a cancelled Peer.refresh).
        self._refresh([(b.lo, b.hi) for b in buckets], now, lambda now: call.resolve(None), call)
        return call

    # ================================================================== RPC layer

    def request(self, address: Address, message: Message, now: float, *,
                expect_id: int | None = None, on_reply: ReplyCallback | None = None,
                on_stall: Callable[[float], None] | None = None, retry: bool = True) -> int:
        """Send ``message`` to ``address`` and track it until answered or failed.

        ``on_reply(envelope, now)`` runs once: with the reply envelope, or with None when every
        attempt timed out or the answer came from another id than ``expect_id``. ``on_stall(now)``
        runs when the first attempt times out and a retry goes out. Without ``retry`` the request
        is sent once (``Config.rpc_retries`` resends otherwise).

        At most ``max_requests_in_flight`` requests are out to one address: another waits, in
        the order asked, for one of those to end, and its attempts and their timeouts start
        when it goes out (a lookup's waits in its place among the lookup's ``alpha``: a lookup
        stalled by requests waiting would ask others, queued in turn, and an overrun node would
        only overrun itself more). A request waiting that is of no use any more is not sent
        (:func:`_still_wanted`): a lookup's or a probe's whose address entered the lookups'
        backoff fails unsent at once, as does one (a search's page too) whose operation is over;
        one of a finished lookup is dropped, with nobody to tell. Past ``max_queued_requests``
        waiting in all, a request fails at once, unsent (and never encoded). A request that
        fails unsent counts against no contact.
        """
        ids = self._rpc_ids
        rpc_id = ids.pop() if ids else self._draw_rpc_id()
        while rpc_id in self._pending:
            rpc_id = ids.pop() if ids else self._draw_rpc_id()
        cfg = self.config
        on_reply = on_reply or _ignore_reply
        retries = cfg.rpc_retries if retry else 0
        cap = cfg.max_requests_in_flight
        out = self._in_flight.get(address, 0)
        if cap and out >= cap and self._queued >= cfg.max_queued_requests:
            # Shed: it never goes out, so it is not encoded (a burst of them, hand-overs to
            # an address that answers nothing, say, would cost an encoding each for nothing).
            self._pending[rpc_id] = _Request(rpc_id, address, message, b"", expect_id,
                                             on_reply, on_stall, now, retries)
            self.stats["requests_out"] += 1
            self.stats["requests_shed"] += 1
            # Failed on the timer queue, not here: the caller is mid-way (a lookup choosing
            # whom to ask) and must not see its outcome before this call returns.
            self._schedule(now, partial(self._unsent, rpc_id))
            return rpc_id
        token, sure = self._token_to_send(address, now)
        # Without a token from this peer that is surely still valid, a request is padded so that
        # the answer fits the peer's amplification bound (see amplification_factor): a lot if
        # the answer may be large.
        pad_to = 0 if sure else (
            cfg.min_request_size if message.LARGE_REPLY else cfg.min_small_request_size)
        data = self.codec.encode_parts(rpc_id, self._sender, message, token, pad_to)
        req = _Request(rpc_id, address, message, data, expect_id, on_reply, on_stall, now,
                       retries)
        self._pending[rpc_id] = req
        self.stats["requests_out"] += 1
        if cap and out >= cap:
            self.stats["requests_queued"] += 1
            self._queued += 1
            waiting = self._waiting.get(address)
            if waiting is None:
                waiting = self._waiting[address] = deque()
            waiting.append(req)
            return rpc_id
        self._in_flight[address] = out + 1
        req.placed = True
        self._transmit(req, now)
        return rpc_id

    def _draw_ahead(self) -> int:
        """The next request id of a node drawing them from the operating system's generator:
        ``RPC_IDS_AT_ONCE`` are read at once, in one call (a read of 8 bytes costs about as much
        as the rest of sending a small request), and handed out one by one (:meth:`request`)."""
        ids = self._rpc_ids
        ids.extend(memoryview(self.rng.randbytes(8 * RPC_IDS_AT_ONCE)).cast("Q"))
        return ids.pop()

    def _unsent(self, rpc_id: int, now: float) -> None:
        """Fail a request that never went out (see :meth:`request`), as unanswered."""
        req = self._pending.pop(rpc_id, None)
        if req is not None:
            req.on_reply(None, now)

    def _unplace(self, req: _Request, now: float) -> None:
        """``req`` ended (answered, or failed for good): its place at its address goes to the
        oldest request waiting for one there that is still of use (see :meth:`request` and
        :func:`_still_wanted`). If the address is in backoff now, a lookup's request waiting
        there is not: each fails unsent at once. (Others go out in turn: a write, a delivery or
        a hand-over to a peer that failed a few requests under loss is still likely answered.)"""
        address = req.address
        freed, req.placed = req.placed, False
        waiting = self._waiting.get(address)
        if not waiting:  # the common case, every reply: nobody waits there
            if freed:
                out = self._in_flight[address] - 1
                if out:
                    self._in_flight[address] = out
                else:
                    del self._in_flight[address]
            return
        dead = self._dead.get(address, -math.inf) > now
        if not freed and not dead:
            return
        # Without a place to give (or once it is given), the requests waiting are looked at
        # only when the address failed, to fail its lookups' requests unsent; the others keep
        # their turn (in ``kept``, used only then).
        placing = freed
        kept: deque[_Request] = deque()
        while waiting:
            queued = waiting.popleft()
            self._queued -= 1
            if self._pending.get(queued.rpc_id) is not queued:
                continue
            wanted = _still_wanted(queued.on_reply, dead)
            if wanted is None:  # nobody listens for its answer
                del self._pending[queued.rpc_id]
                self.stats["requests_dropped"] += 1
                continue
            if not wanted:
                # Its operation ended meanwhile (it stops at its next input), or its lookup's
                # address failed meanwhile (taken as unanswered, as the lookup would not have
                # asked it now): unsent, and the next one waiting is looked at.
                self.stats["requests_dropped"] += 1
                self._schedule(now, partial(self._unsent, queued.rpc_id))
                continue
            if placing:
                placing = False
                queued.sent_at = now
                queued.placed = True
                self._transmit(queued, now)
            else:
                kept.append(queued)
                self._queued += 1
            if not dead:
                break
        if kept:
            if waiting:
                kept.extend(waiting)
            self._waiting[address] = kept
        elif waiting is not None and not waiting:
            self._waiting.pop(address, None)
        if placing:  # nobody took the place
            out = self._in_flight.get(address, 0) - 1
            if out > 0:
                self._in_flight[address] = out
            else:
                self._in_flight.pop(address, None)

    def _transmit(self, req: _Request, now: float) -> None:
        req.gen += 1
        self._send(req.data, req.address)
        at = now + self.rpc_timeout_to(req.address)
        heappush(self._request_timers, (at, req.rpc_id, req.gen))
        if at < self._timer_told:
            self.timer_changed = True

    @property
    def rpc_timeout(self) -> float:
        """The current per-attempt timeout: the smoothed RTT plus 4 x its deviation (RFC 6298
        style), within ``rpc_timeout_min`` and ``rpc_timeout_max``."""
        cfg = self.config
        if self._srtt is None:
            return cfg.rpc_timeout
        # min(rpc_timeout_max, max(rpc_timeout_min, ...)) without the builtins' calls: this runs
        # for every request sent.
        timeout = self._srtt + 4 * self._rttvar
        if not timeout > cfg.rpc_timeout_min:
            timeout = cfg.rpc_timeout_min
        return timeout if timeout < cfg.rpc_timeout_max else cfg.rpc_timeout_max

    def rpc_timeout_to(self, address: Address) -> float:
        """The per-attempt timeout of a request to ``address``: :attr:`rpc_timeout`, or longer
        for an address that answered later than that (RFC 6298 per destination, from that
        address's own round trips, at most ``rpc_timeout_max``). Never shorter than
        :attr:`rpc_timeout`: an address with no round trip of its own, a dead or unknown peer
        among them, is waited for exactly as long as the node-wide estimate says."""
        timeout = self.rpc_timeout
        own = self._peer_rtt.get(address)
        if own is None:
            return timeout
        srtt, rttvar, _ = own
        return min(self.config.rpc_timeout_max, max(timeout, srtt + 4 * rttvar))

    @property
    def probe_hedge(self) -> float:
        """How long a probing lookup waits for its single probe before widening to alpha:
        ``probe_hedge_rtts`` smoothed round trips, at least ``probe_hedge_min``, and never longer
        than the per-attempt timeout (whose stall would widen it anyway)."""
        cfg = self.config
        if self._srtt is None:
            return self.rpc_timeout
        return min(self.rpc_timeout, max(cfg.probe_hedge_min,
                                         cfg.probe_hedge_rtts * (self._srtt + self._rttvar)))

    def _on_request_timer(self, rpc_id: int, gen: int, now: float) -> None:
        req = self._pending.get(rpc_id)
        if req is None or req.gen != gen:
            return
        if req.attempts <= req.retries:
            req.attempts += 1
            self.stats["retries"] += 1
            self._transmit(req, now)
            # The resend keeps the place: a first attempt that went unanswered is as likely a
            # sign of a peer (or a process) overrun by requests as of a lost datagram, and more
            # requests would only make it worse.
            if req.on_stall is not None and req.attempts == 2:
                req.on_stall(now)
            return
        del self._pending[rpc_id]
        self.stats["timeouts"] += 1
        try:
            # A timeout of its own, earned by late replies, ends with a request that failed: a
            # peer gone silent is given up as fast as any other (it earns it again if it
            # answers late).
            self._peer_rtt.pop(req.address, None)
            self._remember_failed(req, now)
            self._contact_failed(req.address, req.expect_id, now)
            req.on_reply(None, now)
        finally:
            self._unplace(req, now)

    def _remember_failed(self, req: _Request, now: float) -> None:
        """Remember a failed request for ``rpc_timeout_max``, so that a reply that comes after
        all still measures its address (:meth:`_late_reply`); at most ``max_failed_rpcs``, the
        oldest forgotten first."""
        cfg, failed = self.config, self._failed_rpcs
        if not cfg.max_failed_rpcs:
            return
        # Kept oldest first, each for the same time: the expired ones are at the front.
        while failed and (len(failed) >= cfg.max_failed_rpcs
                          or next(iter(failed.values()))[3] <= now):
            failed.popitem(last=False)
        failed[req.rpc_id] = (req.address, req.expect_id, req.sent_at, now + cfg.rpc_timeout_max)

    def _late_reply(self, rpc_id: int, address: Address, sender: int | None,
                    now: float) -> None:
        """A reply to no open request: if it answers one of ours that failed of late, from the
        address it was sent to, its address is slower than the timeout it was given. Karn's rule
        takes no sample from a request that timed out, so without this the estimate of a peer
        slower than the others' timeout could never grow toward its round trip, and every request
        to it would fail though it answers each one. The sample is the time since the first
        attempt: a reply to a later attempt makes it longer than the round trip, never shorter,
        so the timeout it sets is long enough. Once only (a reply to a resend is not another
        sample), and only from the id the request was for: another id answering there says
        nothing of the contact we asked, which is gone."""
        entry = self._failed_rpcs.get(rpc_id)
        if entry is None or entry[0] != address:
            return
        del self._failed_rpcs[rpc_id]
        expected, sent, until = entry[1:]
        if until > now and (expected is None or sender == expected):
            self._sample_rtt(now - sent, address, now, late=True)

    def _on_reply(self, envelope: Envelope, address: Address, now: float) -> None:
        req = self._pending.get(envelope.rpc_id)
        if req is None or req.address != address:
            self.stats["unexpected"] += 1
            if req is None:
                self._late_reply(envelope.rpc_id, address, envelope.sender, now)
            return
        if envelope.token is not None:
            self._keep_token(address, envelope.token, now)
        if isinstance(envelope.message, Challenge) and envelope.token is not None:
            if req.challenged is None:
                # Prove our address, once per request, with the token just granted.
                self.stats["challenged"] += 1
                req.challenged = envelope.token
                req.sent_at = now
                req.data = self.codec.encode_parts(req.rpc_id, self._sender, req.message,
                                                   envelope.token)
                self._transmit(req, now)
                return
            if envelope.token == req.challenged:
                # The same CHALLENGE again: the answer to a copy sent before the proof (a
                # resend that crossed the first CHALLENGE). The proven copy's answer is still
                # to come; the request waits for it, or for its timer.
                return
        del self._pending[envelope.rpc_id]
        try:
            if req.attempts == 1:  # Karn's rule: only unambiguous samples
                self._sample_rtt(now - req.sent_at, address, now)
            message = envelope.message
            if (type(message) is Error and message.code == ErrorCode.RATE_LIMITED
                    and not req.message.RATE_OF_ITS_OWN):  # a PUBLISH over the publishing rate
                self._note_limited(address, now)
            sender = envelope.sender
            if req.expect_id is not None and sender != req.expect_id:
                # The address now answers for another id: the contact we had is gone.
                self.stats["wrong_id"] += 1
                known = self.table.get(req.expect_id)
                if known is not None and known.address == address:
                    waiting = list(self.table.bucket_for(req.expect_id).replacements.values())
                    self.table.remove(req.expect_id)
                    self._hand_over_promoted(waiting, now)
                given = self._given_up.get(req.expect_id)
                if given is not None and given[0].address == address:
                    del self._given_up[req.expect_id]  # that contact is gone from that address
                if sender is not None:
                    # Seen, but handed nothing now: it answered a request meant for another
                    # id, and an address can answer under a new id at every reply, each of
                    # which would otherwise cost us a hand-over. Its items come with the hourly
                    # republish.
                    self._saw(make_contact(sender, address), now, hand_over=False)
                if sender is not None and isinstance(req.on_reply, _Asked):
                    # A lookup's: it asks no other id there, but may still ask the one that
                    # answered.
                    req.on_reply.answered_as(sender, now)
                else:
                    req.on_reply(None, now)
                return
            if sender is not None:
                self._saw(make_contact(sender, address), now)
            req.on_reply(envelope, now)
        finally:
            self._unplace(req, now)

    def _on_request(self, envelope: Envelope, address: Address, now: float, size: int) -> None:
        self.stats["requests_in"] += 1
        # Only a token proves the source address. A claimed sender id proves nothing: ids and
        # addresses are public, so a spoofer could name a victim of our routing table.
        token = envelope.token
        current = token is not None and hmac.compare_digest(token, self.token_for(address))
        proven = current or (token is not None and hmac.compare_digest(
            token, self._old_token_for(address)))
        # Proof comes first: a proven request spends a budget that spoofed ones cannot.
        if not self._within_rate(address, now, proven):
            # Answer a refusal at most once a second per address; flood traffic gets nothing.
            self.stats["rate_limited"] += 1
            if self._refusals.allow((address, proven), now):
                refusal = self.codec.encode_parts(
                    envelope.rpc_id, self._sender, Error(ErrorCode.RATE_LIMITED, "slow down"))
                if len(refusal) <= self.config.amplification_factor * size:
                    self._send(refusal, address)
            return
        sender = envelope.sender
        # A token of the previous secret dies at the next rotation: grant a fresh one, so that
        # a peer that keeps asking never meets a CHALLENGE.
        grant = None if current else self.token_for(address)
        message = envelope.message
        kind = type(message)
        if not proven and kind in self._proof_required:
            # Served unproven only by what changes nothing (require_proof), else CHALLENGE.
            handler = self._proof_required[kind]
            unserved: Message = Challenge()
        else:
            handler = self._handlers.get(kind)
            unserved = Error(ErrorCode.UNSUPPORTED, "request not served here")
        if handler is None:
            reply = unserved
            if type(reply) is Challenge:
                self.stats["challenges_sent"] += 1
        else:
            try:
                reply = handler(message, sender, address, now)
            except StorageUnavailable as exc:
                # Our store cannot be read now: the requester asks others (a lookup takes an
                # ERROR as no answer). No bug, and the store says so once, not at every request.
                self.stats["storage_unavailable"] += 1
                reply = Error(ErrorCode.STORAGE_UNAVAILABLE, str(exc)[:200])
            except Exception:
                self.stats["internal_errors"] += 1
                self._log_bug(now, "internal error serving %s", type(message).__name__)
                reply = Error(ErrorCode.INTERNAL, "internal error")
        data = self.codec.encode_parts(envelope.rpc_id, self._sender, reply, grant)
        bound = self.config.amplification_factor * size
        if not proven and len(data) > bound:
            # Never send an unproven address more than amplification_factor times what it sent:
            # a small Challenge instead, or nothing when even that would be too much.
            data = self.codec.encode_parts(envelope.rpc_id, self._sender, Challenge(), grant)
            if len(data) > bound:
                self.stats["too_small"] += 1
                return
            self.stats["challenges_sent"] += 1
        self._send(data, address)
        if sender is not None and sender != self.id:
            self._note_requester(sender, address, now,
                                 budget=None if proven else bound - len(data))

    def _ping_size(self, address: Address, now: float) -> int:
        """The size of the PING we would send to ``address`` (with the longest request id)."""
        token, sure = self._token_to_send(address, now)
        pad_to = 0 if sure else self.config.min_small_request_size
        return len(self.codec.encode_parts(2**64 - 1, self._sender, Ping(), token, pad_to))

    def require_proof(self, message_type: type[Message], *,
                      unproven: Handler | None = None) -> None:
        """Serve ``message_type`` only to requesters that proved their address with a token:
        for requests that make us send to that address later (pubsub subscriptions), where a
        spoofed source would turn us into a reflector, and for those that act in the name of
        their source address (every write, charged to its host's storage quota; a DELIVER,
        taken as its relay's). An unproven one is answered CHALLENGE (with a token, so the
        requester resends it proven), or, given ``unproven``, what ``unproven(message,
        sender_id, address, now)`` returns, which must change nothing stored."""
        self._proof_required[message_type] = unproven

    def token_for(self, address: Address) -> bytes:
        """The token this node currently grants ``address`` (what its replies carry). Minted
        once per address and secret, then remembered (bounded), so requests cost no HMAC."""
        token = self._granted.get(address)
        if token is None:
            token = _remember_token(self._granted, address, self._secret, self.config.max_tokens)
        return token

    def _old_token_for(self, address: Address) -> bytes:
        """The token the previous secret granted ``address`` (still accepted), remembered as
        :meth:`token_for` remembers the current one."""
        token = self._granted_old.get(address)
        if token is None:
            token = _remember_token(self._granted_old, address, self._old_secret,
                                    self.config.max_tokens)
        return token

    def _token_to_send(self, address: Address, now: float) -> tuple[bytes | None, bool]:
        """The token ``address`` granted us to put in a request now, and whether it is surely
        still valid there. A peer changes its secret at a maintenance tick once
        ``token_lifetime`` has passed since the last change, and takes tokens of the current
        and the previous secret (with our timing, the usual case). Ticks are
        ``maintenance_interval`` apart, so the secret after the one a token was minted from
        lasts at least the longer of the two intervals, and the token with it: it is surely
        valid for that long after it came, less a margin for the flight of the reply that
        brought it and of the request that uses it (a maintenance interval, but at most half
        of that time), and surely dead ``2 * (token_lifetime + maintenance_interval)`` after
        it came (it is then forgotten). In between it is sent, but with the request padded as
        if there were none, so that the answer comes in full either way instead of a
        CHALLENGE and a second round trip: the case of every peer we have not asked for a
        while."""
        kept = self._tokens.get(address)
        if kept is None:
            return None, False
        token, came = kept
        age = now - came
        if age < self._token_sure_for:
            return token, True
        if age < self._token_dead_after:
            return token, False
        del self._tokens[address]
        return None, False

    def _keep_token(self, address: Address, token: bytes, now: float) -> None:
        tokens = self._tokens
        tokens[address] = (token, now)
        tokens.move_to_end(address)
        if len(tokens) > self.config.max_tokens:
            tokens.popitem(last=False)

    def _within_rate(self, address: Address, now: float, proven: bool = False) -> bool:
        """Per-address and (for non-loopback hosts) per-host request budgets, a host being an
        IPv4 address or an IPv6 /64 (:func:`~qadom.contact.host_key`). Requests that proved
        their address have budgets of their own, apart from the unproven ones': requests
        spoofed from an address, however many, never spend what its own requests may."""
        if proven:
            address_rate, host_rate = self._proven_address_rate, self._proven_host_rate
        else:
            address_rate, host_rate = self._address_rate, self._host_rate
        if not address_rate.allow(address, now):
            return False
        host = address[0]
        return is_loopback(host) or host_rate.allow(host_key(host), now)

    def _note_requester(self, sender: int, address: Address, now: float,
                        budget: int | None) -> None:
        """A request came from ``sender``: refresh it if known and the request proved its
        address, else ping it to verify it, if the ping fits in ``budget`` bytes (what the
        amplification bound leaves after the reply; None: a proven address, no bound).

        A contact's id and address are public: a request without a token, in its name from its
        address, may come from anybody and proves no sign of life (else a spoofer could keep a
        dead contact in its bucket and out of the lookups' backoff).

        An address is pinged at most once per ``verify_interval`` (whatever answers that ping
        from it is seen, under the id it answers with), and at most ``max_verifying``
        addresses are being verified at once for unproven requests, and as many for proven
        ones, apart: spoofed requests, which can fill the first, never keep a requester that
        proved its address from being verified."""
        known = self.table.get(sender)
        if known is not None:
            if known.address == address and budget is None:
                self._saw(known, now)
            return
        pinged = max(self._verifying.get(address, -1e300),
                     self._verifying_proven.get(address, -1e300))
        if pinged + self.config.verify_interval > now:
            return
        pool = self._verifying if budget is not None else self._verifying_proven
        if len(pool) >= self.config.max_verifying:
            return
        if not self.table.has_room_for(sender, address[0]):
            # Its bucket is full of contacts that keep answering: verifying it would only queue
            # it as a replacement, at the price of a ping (and of the pings that ping sets off).
            self.stats["verify_skipped"] += 1
            return
        if budget is not None and budget < self._ping_size(address, now):
            self.stats["verify_skipped"] += 1
            return
        pool[address] = now
        # Toward an address not proven, the ping goes once: a resend would be sent to a spoofed
        # source too, past the amplification bound the budget keeps.
        self.request(address, Ping(), now, expect_id=sender, retry=budget is None)

    def _saw(self, contact: Contact, now: float, *, hand_over: bool = True) -> None:
        """``contact`` answered us, or made a request that proved its address with a token:
        update the table, pinging an old contact if a bucket is full, and hand items over
        (:meth:`_hand_over`) to each contact that entered it: ``contact`` (unless not
        ``hand_over``), and the replacements a bucket's split took in. A contact banned for
        lying stays out until its ban ends, answers or not."""
        address = contact.address
        # _is_banned, and the pops below, inline and only where there is something: this runs
        # for every reply and every proven request.
        if self._banned and self._banned.get(address, -math.inf) > now:
            return
        if self._given_up:
            self._given_up.pop(contact.id, None)  # back on its own: no need to ping it again
        if self._dead:
            self._dead.pop(address, None)
        if self._failures:
            self._failures.pop(address, None)
        table = self.table
        entered: list[Contact] = []
        to_ping = table.seen(contact, entered)
        if to_ping is not None and (table.bucket_for(to_ping.id).answered_ping_at
                                    + self.config.ping_before_evict_interval > now):
            # Its bucket's last ping-before-evict was answered a moment ago: the newcomer waits
            # as a replacement without another (Config.ping_before_evict_interval).
            self.stats["evict_pings_put_off"] += 1
            table.kept(to_ping.id)
        elif to_ping is not None:
            pinged = to_ping

            def settle(envelope: Envelope | None, at: float) -> None:
                # However the ping-before-evict ended, its bucket may ask for the next one. An
                # answer (seen), a failure (failed) or a removal (another id answered) settled
                # it already; what is left is a silence that _contact_failed blamed on our own
                # rate, which says nothing about the contact: it keeps its place.
                held = table.get(pinged.id)
                if held is not None and held.address == pinged.address:
                    table.kept(pinged.id)
                    if envelope is not None:  # it answered as itself
                        table.bucket_for(pinged.id).answered_ping_at = at

            self.request(to_ping.address, Ping(), now, expect_id=to_ping.id, on_reply=settle)
        if entered and self.store.quotas.total_items:
            # The contact itself, and the replacements a split of its bucket promoted: each
            # entered the table, perhaps among our k closest (section 2.5).
            for newcomer in entered:
                if hand_over or newcomer.id != contact.id:
                    self._hand_over(newcomer, now)

    def _hand_over_promoted(self, waiting: list[Contact], now: float) -> None:
        """The contacts of ``waiting`` (replacements of the buckets contacts just left) that
        the table promoted in their place entered it: each gets its items as a newcomer does
        (:meth:`_hand_over`)."""
        if not self.store.quotas.total_items:
            return
        for contact in waiting:
            held = self.table.get(contact.id)
            if held is not None and held.address == contact.address:
                self._hand_over(contact, now)

    def _hand_over(self, newcomer: Contact, now: float) -> None:
        """Section 2.5: a node that learns of a new node stores to it the items it should hold,
        and, so that only one node does, only the items whose key it is itself the closest to:
        an item goes to the newcomer when the newcomer is one of the k closest to its key among
        the nodes we know (our contacts and ourselves), and no contact we know besides the
        newcomer is closer to the key than we are. So each key is sent by the holders that know
        no node closer to it than themselves: the one closest holder, as long as holders know a
        contact in every subtree along their id's path that holds a node (as Kademlia's tables
        do); a farther holder sends it too only while it knows no node closer to the key than
        itself.

        This runs only when a contact joins our neighbourhood (one of our own k closest: the
        newcomer is taken to be one of the k closest to a key we are the closest to only then),
        and reads only the ranges of our store where such keys lie: the ids that share more
        leading bits with our id than any other contact's id does (we are the closest to all of
        them), then, nearest first, each sibling subtree along our id's path that holds no
        contact besides the newcomer (we are the closest to a key there unless a contact on
        our side of it is closer: checked key by key). At most ``republish_batch`` items in all
        per newcomer; keys past that bound reach the newcomer by the hourly republish.

        A neighbour is handed items over once per ``republish_interval``: one that leaves our
        table and comes back (dropped after its answers were lost, say, or while it refused the
        very burst of copies we sent it) gets the rest by the hourly republish, so a hand-over
        never sets off another. As ids cost nothing, hand-overs are charged to where they go
        too: an address handed items over within the last ``republish_interval`` is handed
        none under another id, and one host (:func:`_hand_over_host`: a public address's /24
        or /64, a private address itself; loopback is exempt) is handed at most
        ``republish_batch`` items per ``republish_interval``, counted from its first hand-over
        in it; the newcomer gets the first of its items that fit. A hand-over refused, or cut
        short, for either is counted in ``stats["hand_overs_refused"]``; the items reach the
        newcomer by the hourly republish."""
        cfg, table = self.config, self.table
        ours = table.closest(self.id, cfg.k + 1)
        if newcomer not in ours[:cfg.k]:
            return
        handed = self._handed
        interval = cfg.republish_interval
        if handed.get(newcomer.id, -math.inf) + interval > now:
            return
        own, batch = self.id, cfg.republish_batch
        address = newcomer.address
        if self._handed_addresses.get(address, -math.inf) + interval > now:
            self.stats["hand_overs_refused"] += 1
            return
        host = _hand_over_host(address[0])
        room = batch
        if host is not None:
            began, spent = self._handed_hosts.get(host, (-math.inf, 0))
            if began + interval > now:
                room -= spent
            if room <= 0:
                self.stats["hand_overs_refused"] += 1
                return
        # The bits at which a contact's id first differs from ours: the sibling subtree at each
        # of them holds a contact, closer than us to its every key. At any other bit the sibling
        # holds none, and its keys are closer to us than to any contact beyond it.
        levels = {(c.id ^ own).bit_length() - 1 for c in table if c.id != newcomer.id}
        ranges = [(0, ID_SPACE)]  # we know nobody else: we are the closest to every key
        if levels:
            nearest = min(levels)  # our own subtree below it holds no contact but the newcomer
            ranges = [(own & -(1 << nearest), 1 << nearest)]
            ranges += [((own ^ (1 << level)) & -(1 << level), 1 << level)
                       for level in range(nearest + 1, ID_BITS) if level not in levels]
        held: list[Due | DueRecord] = []
        with self._store_step("hand over"):  # a store that cannot be read hands nothing over
            found: list[Due | DueRecord] = []
            for lo, width in ranges:
                found += self.store.held_between(lo, lo + width, batch - len(found))
                if len(found) >= batch:
                    break
            held = found
        copies: list[Message] = []
        for due in held:
            if not due.meta.original and due.meta.expires - now < 1:
                continue
            closest = [c.id for c in table.closest(due.key, cfg.k + 1)]  # leaves us out
            if newcomer.id not in closest[:cfg.k]:
                continue
            rival = next((i for i in closest if i != newcomer.id), None)
            if rival is not None and rival ^ due.key < own ^ due.key:
                continue  # a contact we know is closer to the key: it sends it, not us
            if own ^ due.key < newcomer.id ^ due.key and closest.index(newcomer.id) == cfg.k - 1:
                continue  # with us before it, the newcomer is the (k+1)-th closest we know
            ttl = remaining_ttl(due.meta, now, cfg)
            if isinstance(due, DueRecord):
                service = self._record_services.get(due.kind)
                copy = service.copy_message(due, ttl, now) if service is not None else None
                if copy is not None:
                    copies.append(copy)
            else:
                copies.append(Store(due.item, ttl) if isinstance(due.item, bytes)
                              else Append(due.key, due.item, ttl))
        if not copies:
            return
        if len(copies) > room:
            self.stats["hand_overs_refused"] += 1
            del copies[room:]
        remembered = cfg.max_hand_over_recipients
        if len(handed) >= remembered:
            handed.clear()  # a bound on memory: at worst one more hand-over to a neighbour
        handed[newcomer.id] = now
        handed.move_to_end(newcomer.id)  # oldest first, for _forget_old_bookkeeping
        # Oldest first too; a bound on memory that forgets the oldest: at worst one more
        # hand-over to an address, or a fresh budget to a host, that an hour would have given.
        addresses, hosts = self._handed_addresses, self._handed_hosts
        addresses.pop(address, None)
        if len(addresses) >= remembered:
            addresses.popitem(last=False)
        addresses[address] = now
        if host is not None:
            began, spent = hosts.get(host, (-math.inf, 0))
            if began + interval > now:
                hosts[host] = (began, spent + len(copies))  # in its place: ordered by began
            else:  # its budget's interval begins now
                hosts.pop(host, None)
                if len(hosts) >= remembered:
                    hosts.popitem(last=False)
                hosts[host] = (now, len(copies))
        for copy in copies:
            self.stats["handed_over"] += 1
            self.request(newcomer.address, copy, now, expect_id=newcomer.id)

    def _contact_failed(self, address: Address, node_id: int | None, now: float) -> None:
        """A request to ``address`` failed for good (every attempt went unanswered). The address
        enters the lookups' backoff once ``dead_after_failures`` requests to it failed in a row
        (an answer from it resets the count, as does a request from the contact our table holds
        at that address that proves the address with a token), and a contact of our table only
        once the table gives it up as well (``stale_failures`` failures in a row, or one when a
        replacement waits): under loss a live peer fails single requests, and skipping it after
        one would make a busy peer shun most of the network (see Config.dead_backoff).

        A failure counts toward the next one for ``dead_backoff`` only, as long as the backoff
        that a full count sets lasts: the address is then asked again from a count of 0, and a
        count short of a backoff is trusted no longer than a backoff is."""
        cfg = self.config
        # It told us it refuses us for our rate, and a peer over its limit answers one refusal a
        # second and drops the rest: this silence is that, not a departure. It counts toward a
        # backoff (we should ask it less), but our table keeps the contact.
        limited = self._silenced(address, now)
        if limited:
            self.stats["timeouts_rate_limited"] += 1
        failures = self._failures
        held = failures.pop(address, None)
        count = 1 if held is None or held[1] + cfg.dead_backoff <= now else held[0] + 1
        if node_id is not None and not limited:
            table = self.table
            known = table.get(node_id)
            if known is not None and known.address == address:
                waiting = list(table.bucket_for(node_id).replacements.values())
                if not table.failed(node_id):
                    count = min(count, cfg.dead_after_failures - 1)
                elif not waiting:  # given up with nobody to take its place: ping it again later
                    self._give_up(known, now)
                else:
                    self._hand_over_promoted(waiting, now)
        if count < cfg.dead_after_failures:
            if len(failures) >= cfg.max_failure_counts:
                failures.clear()  # a bound on memory: the counts only delay a backoff
            failures[address] = (count, now)  # the newest last, for _forget_old_bookkeeping
            return
        self._dead[address] = now + cfg.dead_backoff

    def _note_limited(self, address: Address, now: float) -> None:
        """``address`` answered RATE_LIMITED: the requests to it that go unanswered for as long
        as one sent now may wait for its last attempt do not count against its contact in our
        table (:meth:`_contact_failed`; they still count toward a backoff), so a peer that asks
        too fast does not drop a live contact, its only one perhaps, for it."""
        cfg = self.config
        limited = self._limited_by
        limited.pop(address, None)
        if len(limited) >= cfg.max_failure_counts:
            limited.pop(next(iter(limited)))  # the oldest: a bound on memory
        limited[address] = now + (1 + cfg.rpc_retries) * cfg.rpc_timeout_max

    def _silenced(self, address: Address, now: float) -> bool:
        """Whether silence from ``address`` at ``now`` is explained by our request rate: it
        answered RATE_LIMITED recently enough that a request sent after that refusal may still
        have been waiting for its last attempt (:meth:`_note_limited`)."""
        return self._limited_by.get(address, -math.inf) > now

    def _give_up(self, contact: Contact, now: float) -> None:
        """The table gave ``contact`` up after ``stale_failures`` failures with no replacement
        waiting: remember it, to ping it again (:meth:`_retry_given_up`). Section 4.1 would keep
        it in its bucket, only flagged, so that a node cut off from the network (or from part
        of it) for a while does not forget it for good; the table drops it instead, so that a
        departed contact is not handed out in answers."""
        cfg, pool = self.config, self._given_up
        if not cfg.max_given_up:
            return
        pool.pop(contact.id, None)
        while len(pool) >= cfg.max_given_up:
            pool.popitem(last=False)  # a bound on memory: the oldest are the least likely back
        pool[contact.id] = (contact, now, now + cfg.given_up_retry, cfg.given_up_retry)

    def _retry_given_up(self, now: float) -> None:
        """Ping up to ``given_up_pings`` given-up contacts whose next ping is due, whose bucket
        has room for them and whose address is not banned, oldest given up first; the delay to
        each one's next ping doubles, from ``given_up_retry`` up to ``refresh_interval``. One
        that answers comes back through :meth:`_saw` like any contact that answers us (and
        leaves the pool there), and refresh lookups through it then find the rest of its side
        of a healed cut. None is pinged in a network where no contact fails: the pool fills
        only with contacts the table gave up."""
        cfg, pool, table = self.config, self._given_up, self.table
        if not pool or not cfg.given_up_pings:
            return
        due: list[tuple[Contact, float, float]] = []
        for contact, given, next_at, delay in pool.values():
            if (next_at <= now and table.has_room_for(contact.id, contact.address[0])
                    and self.reachable(contact.address) and not self._is_banned(contact, now)):
                due.append((contact, given, delay))
                if len(due) >= cfg.given_up_pings:
                    break
        for contact, given, delay in due:
            pool[contact.id] = (contact, given, now + delay,
                                min(2 * delay, max(cfg.refresh_interval, delay)))
            self.stats["given_up_pings"] += 1
            self.request(contact.address, Ping(), now, expect_id=contact.id)

    def punish(self, contact: Contact, now: float) -> None:
        """``contact`` gave a false answer: drop the contacts our table holds at its address, and
        for ``liar_backoff`` seconds neither ask that address nor let anything answering from it
        into the table. The address is what lied (the answer came from it); the id it answered
        with is not banned, nor a contact of that id elsewhere dropped: ids are not bound to
        addresses, and a liar could otherwise claim any honest contact's id and have it
        evicted and shut out."""
        self.stats["liars"] += 1
        address = contact.address
        table = self.table
        waiting = [waiting for held in table if held.address == address
                   for waiting in table.bucket_for(held.id).replacements.values()
                   if waiting.address != address]
        table.remove_address(address)  # its replacements too: none takes a freed slot
        self._hand_over_promoted(waiting, now)
        until = now + self.config.liar_backoff
        self._banned[address] = until
        self._dead[address] = max(self._dead.get(address, -math.inf), until)

    def _is_banned(self, contact: Contact, now: float) -> bool:
        return self._banned.get(contact.address, -math.inf) > now

    def _sample_rtt(self, sample: float, address: Address, now: float, *,
                    late: bool = False) -> None:
        """Take one round-trip sample of ``address`` (RFC 6298 smoothing). It feeds the
        node-wide estimate, unless the address has one of its own: one that answered later
        than the node-wide timeout (``late``, from :meth:`_late_reply`) gets its own, fed by its
        samples from then on, for as long as it leads to a longer timeout than the node-wide one
        (:meth:`rpc_timeout_to`); so the estimate that times out unknown and dead peers is that
        of the peers that answer within it, as fast as one slow peer or none would leave it."""
        peers = self._peer_rtt
        own = peers.pop(address, None)
        if own is None and not late:
            if self._srtt is None:
                self._srtt, self._rttvar = sample, sample / 2
            else:
                self._rttvar = 0.75 * self._rttvar + 0.25 * abs(self._srtt - sample)
                self._srtt = 0.875 * self._srtt + 0.125 * sample
            return
        if own is None:
            srtt, rttvar = sample, sample / 2
        else:
            srtt, rttvar, _ = own
            rttvar = 0.75 * rttvar + 0.25 * abs(srtt - sample)
            srtt = 0.875 * srtt + 0.125 * sample
        limit = self.config.max_peer_rtts
        if not limit or srtt + 4 * rttvar <= self.rpc_timeout:
            return  # no slower than the others now: the node-wide estimate is its own again
        while len(peers) >= limit:
            peers.popitem(last=False)  # the least recently sampled
        peers[address] = (srtt, rttvar, now)  # the newest last, for _forget_old_bookkeeping

    def _send(self, data: bytes, address: Address) -> None:
        self.stats["datagrams_out"] += 1
        self.stats["bytes_out"] += len(data)
        self._outbox.append((data, address))

    def _schedule(self, deadline: float, fn: Callable[[float], None]) -> int:
        """Run ``fn(now)`` at ``deadline``; returns the timer's number, for :meth:`_cancel`."""
        self._timer_seq += 1
        heappush(self._timers, (deadline, self._timer_seq, fn))
        if deadline < self._timer_told:
            self.timer_changed = True
        return self._timer_seq

    def _cancel(self, timer: int) -> None:
        """The timer numbered ``timer`` will not run (dropped once it comes first)."""
        self._cancelled.add(timer)

    # ================================================================== request handlers

    def _handle_ping(self, message: Ping, sender: int | None, address: Address,
                     now: float) -> Message:
        return Pong()

    def _handle_find_node(self, message: FindNode, sender: int | None, address: Address,
                          now: float) -> Message:
        return Nodes(tuple(self.table.closest(message.target, self.config.k, exclude=sender)))

    def _handle_find_value(self, message: FindValue, sender: int | None, address: Address,
                           now: float) -> Message:
        held = self.store.get_value_and_meta(message.key, now)
        if held is not None:
            return Value(held[0], remaining_ttl(held[1], now, self.config))
        return Nodes(tuple(self.table.closest(message.key, self.config.k, exclude=sender)))

    def _handle_store(self, message: Store, sender: int | None, address: Address,
                      now: float) -> Message:
        return self._store_value(key_for(message.value), message.value, message.ttl,
                                 message.cache, address, now)

    def _store_value(self, key: int, value: bytes, ttl: int, cache: bool, address: Address,
                     now: float) -> Message:
        """What a STORE of ``value`` (whose key is ``key``) from ``address`` is answered."""
        try:
            old = self.store.value_meta(key)
        except StorageUnavailable as exc:  # refused as a write the store cannot make
            return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
        meta = self._received_meta(old, ttl, cache, address, now)
        if meta is None:
            return Error(ErrorCode.BAD_REQUEST, "ttl must be positive")
        if old is not None and old.original:
            return Stored()  # we publish it ourselves; our schedule rules
        try:
            self.store.put_value(key, value, meta)
        except StorageFull as exc:
            return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
        return Stored()

    def _handle_find_node_unproven(self, message: FindNodeStore, sender: int | None,
                                   address: Address, now: float) -> Message:
        """An unproven FIND_NODE_STORE: answered as a FIND_NODE of its key, with ``stored``
        false, storing nothing (its writer sends the value again in a proven STORE if we turn
        out to be among the k closest; see ``require_proof`` in ``__init__``)."""
        if message.ttl <= 0:  # refused as a proven one would be
            return Error(ErrorCode.BAD_REQUEST, "ttl must be positive")
        key = key_for(message.value)
        return NodesStored(tuple(self.table.closest(key, self.config.k, exclude=sender)), False)

    def _handle_find_node_store(self, message: FindNodeStore, sender: int | None,
                                address: Address, now: float) -> Message:
        if message.ttl <= 0:  # refused whoever holds the key, as a STORE's would be
            return Error(ErrorCode.BAD_REQUEST, "ttl must be positive")
        key = key_for(message.value)
        k = self.config.k
        nodes = tuple(self.table.closest(key, k, exclude=sender))
        mine = self.id ^ key
        if len(nodes) >= k and nodes[-1].id ^ key < mine:
            return NodesStored(nodes, False)  # k known contacts are closer: not ours to hold
        # As a STORE of the value (without its cache flag) would be answered.
        reply = self._store_value(key, message.value, message.ttl, False, address, now)
        if isinstance(reply, Error) and reply.code == ErrorCode.BAD_REQUEST:
            return reply
        return NodesStored(nodes, isinstance(reply, Stored))

    def _handle_append(self, message: Append, sender: int | None, address: Address,
                       now: float) -> Message:
        try:
            old = self.store.entry_meta(message.key, message.value)
        except StorageUnavailable as exc:  # refused as a write the store cannot make
            return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
        meta = self._received_meta(old, message.ttl, False, address, now)
        if meta is None:
            return Error(ErrorCode.BAD_REQUEST, "ttl must be positive")
        if old is not None and old.original:
            return Stored()
        try:
            self.store.add_entry(message.key, message.value, meta)
        except StorageFull as exc:
            return Error(ErrorCode.STORAGE_FULL, str(exc)[:200])
        return Stored()

    def _received_meta(self, old: Meta | None, ttl: int, cache: bool, address: Address,
                       now: float) -> Meta | None:
        """Bookkeeping for an item a peer sent us (section 2.5). Its lifetime is the TTL it
        carries, capped at ``expire_time`` and never shortened by a later store; receiving it
        counts as this hour's republish, so our own republish moves an hour later."""
        if ttl <= 0:
            return None
        if old is not None and old.expires <= now:
            old = None  # expired, not swept yet: what arrives is all there is
        cfg = self.config
        expires = now + min(float(ttl), cfg.expire_time)
        cached = cache and (old is None or old.cached)
        republish_at = NEVER if cached else now + cfg.republish_interval
        if old is not None:
            if cache and not old.cached:
                # A cached copy's lifetime (up to a day from the get that cached it) never
                # lengthens a replica's: else a value nobody renews would outlive its day.
                expires, republish_at = old.expires, old.republish_at
            elif cache == old.cached:
                expires = max(expires, old.expires)
            # A replica over a cached copy lives by its own lifetime, for the same reason.
        return Meta(expires, republish_at, False, cached,
                    old.source if old is not None else host_key(address[0]))

    def _handle_search(self, message: Search, sender: int | None, address: Address,
                       now: float) -> Message:
        values, more = self.store.entries_after(message.key, message.after,
                                                self.config.search_page_size, now)
        nodes = () if message.after is not None else tuple(
            self.table.closest(message.key, self.config.k, exclude=sender))
        return Entries(tuple(values), more, nodes)

    # ================================================================== service API
    # What extensions (namespaces, publish/subscribe, HTTP records) build their operations from:
    # deadline-bounded calls, iterative lookups, replication to the k closest, punishing liars.

    def ask(self, address: Address, message: Message, now: float, *,
            expect_id: int | None = None) -> Call[Message]:
        """One request as a call: resolves to the reply message (an :class:`Error` reply
        included), fails with OperationTimeout when every attempt went unanswered."""
        call: Call[Message] = Call(type(message).__name__)

        def on_reply(envelope: Envelope | None, now: float) -> None:
            if envelope is None:
                call.fail(OperationTimeout(f"no answer from {format_address(address)}"))
            else:
                call.resolve(envelope.message)

        self.request(address, message, now, expect_id=expect_id, on_reply=on_reply)
        return call

    def ask_each(self, contacts: Iterable[Contact], message: Message, now: float,
                 then: Callable[[list[tuple[Contact, Message | None]], float], None], *,
                 silenced: builtins.set[int] | None = None) -> None:
        """Send ``message`` to every contact (each must answer from its own id), then run
        ``then(replies, now)`` once, when all have answered or failed: ``replies`` pairs each
        contact with its reply message (an :class:`Error` included), or None when it never
        answered, in the order the outcomes came. With no contacts, it runs at once.

        ``silenced``: the ids of the contacts that never answered while our request rate
        explained their silence (they had just refused us for it) are added to it, judged when
        their request failed."""
        asked = list(contacts)
        replies: list[tuple[Contact, Message | None]] = []
        if not asked:
            then(replies, now)
            return

        def on_reply(contact: Contact, envelope: Envelope | None, now: float) -> None:
            if envelope is None and silenced is not None and self._silenced(
                    contact.address, now):
                silenced.add(contact.id)
            replies.append((contact, None if envelope is None else envelope.message))
            if len(replies) == len(asked):
                then(replies, now)

        for contact in asked:
            self.request(contact.address, message, now, expect_id=contact.id,
                         on_reply=partial(on_reply, contact))

    def new_call(self, name: str, now: float) -> Call[Any]:
        """A call that fails with OperationTimeout if still pending at the operation deadline."""
        call: Call[Any] = Call(name)
        limit = self.config.operation_timeout
        deadline = now + limit
        if deadline < self._last_deadline:  # a clock that went back: keep the FIFO in order

            def expire(now: float) -> None:
                call.fail(OperationTimeout(f"{name} did not complete within {limit} s"))

            self._schedule(deadline, expire)
            return call
        self._last_deadline = deadline
        self._timer_seq += 1
        seq = self._timer_seq
        deadlines = self._deadlines
        deadlines[seq] = (deadline, call)
        if deadline < self._timer_told:
            self.timer_changed = True
        call.add_done_callback(lambda _: _forget(deadlines, seq))
        return call

    def run_lookup(self, target: int, kind: str, message: Message, now: float,
                   on_message: OnMessage, on_finish: Callable[[Lookup, float], None],
                   call: Call[Any] | None = None, *, probe: bool = False,
                   hit: ProbeHit | None = None, on_hit: OnHit | None = None) -> None:
        """Run one iterative lookup for ``target`` asking ``message`` of each peer.

        ``on_message`` interprets each reply (see :data:`OnMessage`); ``on_finish`` runs once when
        the lookup has converged or was stopped. If ``call`` completes first (its deadline), the
        lookup stops asking.

        With ``probe`` (a value lookup), the first time the closest candidate not asked yet is a
        likely holder (within :meth:`holder_radius` of ``target``) it is asked alone, and the
        lookup goes on ``alpha`` at a time once it has answered without the value, failed, or
        stayed silent for :attr:`probe_hedge`, so a slow or dead probe costs at most that delay.
        When our own closest contact is a likely holder, the other first candidates are not even
        gathered unless the probe misses.

        ``hit(message)`` says whether a probe's reply ends the lookup by itself (it holds the
        value), and ``on_hit(message, now)`` must then do what ``on_message`` and ``on_finish``
        would do with that reply alone. Given both, and while nobody listens to lookup events,
        a probe that hits is settled with ``on_hit`` and the lookup's state is built only when
        it misses; the requests, timers, statistics and outcome are the same either way.
        """
        cfg = self.config
        self._lookup_seq += 1
        dead = self._dead
        table = self.table

        skip = _Skip(dead, self._banned, now, target, cfg.k)

        def seeds() -> list[Contact]:
            # The k closest contacts not in backoff: if the k closest in the table are all dead,
            # skipping them must not leave the lookup with nobody to ask. The table is read
            # wider only as far as contacts in backoff are met: the backoff holds addresses
            # that never made it into the table too, and its size must not set the cost.
            return _live_closest(table, target, cfg.k, dead, now, skip.note)

        likely: Callable[[Contact], bool] | None = None
        nearest = None
        if probe:
            radius = self.holder_radius(now)

            def likely(c: Contact) -> bool:
                return c.id ^ target <= radius

            nearest = table.nearest(target)
        if nearest is not None and likely is not None and likely(nearest) and not skip(nearest):
            if (hit is not None and on_hit is not None and not self._listeners
                    and self.reachable(nearest.address)):
                # The probe is asked on its own; the lookup is built only if it misses.
                light = _Probe(self, self._lookup_seq, target, kind, message, nearest,
                               on_message, on_finish, hit, on_hit, call, now, seeds, skip,
                               likely)
                light.touched_before = table.touch(target, now)
                self.request(nearest.address, message, now, expect_id=nearest.id,
                             on_reply=light.on_reply, on_stall=light.on_stall)
                self.stats["probes"] += 1
                light.hedge_timer = self._schedule(now + self.probe_hedge, light.hedge)
                return
            # The probe is built alone; the other seeds only if it misses.
            lookup = self._new_lookup(target, (nearest,), skip, likely, seeds)
        else:
            lookup = self._new_lookup(target, seeds(), skip, likely)
        touched_before = table.touch(target, now)
        run = _LookupRun(self, lookup, self._lookup_seq, kind, message, on_message, on_finish,
                         call, now)
        run.touched_before = touched_before
        if run.emit:
            run.emit(LookupStarted(run.lookup_id, now, target, kind,
                                   tuple(c.contact for c in lookup.gathered())))
        run.pump(now)

    def _new_lookup(self, target: int, initial: Iterable[Contact],
                    skip: Callable[[Contact], bool] | None,
                    likely: Callable[[Contact], bool] | None,
                    later: Callable[[], Iterable[Contact]] | None = None) -> _NodeLookup:
        """A lookup for ``target`` with this node's limits (see :class:`Lookup`)."""
        cfg = self.config
        return _NodeLookup(target, cfg.k, cfg.alpha, initial, own_id=self.id, skip=skip,
                           likely=likely, later=later, network=_network,
                           max_per_network=cfg.max_lookup_contacts_per_prefix,
                           max_candidates=cfg.lookup_max_candidates,
                           max_requests=cfg.lookup_max_requests)

    def find_closest(self, target: int, now: float,
                    then: Callable[[list[Contact], float], None],
                    call: Call[Any] | None = None) -> None:
        """Look up the k closest to ``target``; ``then(closest, now)`` with those that answered."""
        self.closest_lookup(target, now, lambda lookup, now: then(lookup.closest(), now), call)

    def closest_lookup(self, target: int, now: float, then: Callable[[Lookup, float], None],
                       call: Call[Any] | None = None) -> None:
        """As :meth:`find_closest`, but ``then(lookup, now)`` gets the lookup itself: its
        ``closest()``, and when that is empty why (:meth:`unreached`)."""
        self.run_lookup(target, "node", FindNode(target), now, _named_nodes, then, call)

    def replicate(self, key: int, message: Message, now: float,
                  then: Callable[[int, QadomError | None, float], None] = _ignore_acks,
                  call: Call[Any] | None = None, *,
                  missed: Callable[[float], None] | None = None) -> None:
        """Look up the k closest to ``key`` and have each hold ``message``'s item;
        ``then(acks, error, now)`` with how many of them confirmed it (a republish needs no
        answer) and, when none did although there were peers to ask, why (:meth:`unstored`),
        or RateLimited when at least k peers known to be live (peers that failed us for our
        request rate, and peers that answered without storing it) are closer to the key than
        the nearest peer that did and one of those failed us for our rate (:meth:`overtaken`);
        and ``missed(now)`` too if it reached nobody: no peer kept it on the lookup nor
        answered the request (a refusal is an answer).

        A :class:`Store` of a value of at most ``store_on_lookup_max`` bytes travels with the
        lookup itself (:class:`FindNodeStore`): each peer asked keeps the value if it counts
        itself among the k closest it knows, and only the final k closest that did not keep it
        get a separate Store. Anything else is sent to the final k closest after the lookup."""
        stored_by: builtins.set[int] = set()

        def send_all(lookup: Lookup, now: float) -> None:
            closest = lookup.closest()
            # A peer that kept the value on the way counts even if it turned out farther than
            # the final k closest: it republishes its copy to them within the hour.
            kept = len(stored_by)
            silenced: builtins.set[int] = set()

            def done(replies: list[tuple[Contact, Message | None]], now: float) -> None:
                acks = kept + sum(1 for _, reply in replies if isinstance(reply, Stored))
                self.stats["replicas_acked"] += acks
                if missed is not None and not stored_by and all(r is None for _, r in replies):
                    missed(now)
                then(acks, self.overtaken(lookup, replies, silenced, stored_by, acks) if acks
                     else self.unstored(lookup, replies, len(silenced)), now)

            self.ask_each((c for c in closest if c.id not in stored_by), message, now, done,
                          silenced=silenced)

        if (isinstance(message, Store) and not message.cache
                and len(message.value) <= self.config.store_on_lookup_max):

            def on_message(contact: Contact, reply: Message, lookup: Lookup,
                           now: float) -> Iterable[Contact] | None:
                if not isinstance(reply, NodesStored):
                    return None
                if reply.stored:
                    stored_by.add(contact.id)
                return reply.nodes

            self.run_lookup(key, "node", FindNodeStore(message.value, message.ttl), now,
                            on_message, send_all, call)
        else:
            self.closest_lookup(key, now, send_all, call)

    def unreached(self, lookup: Lookup) -> QadomError:
        """Why a lookup that was to find peers to send to (a write, a publish) found none:
        NoPeersError when no peer is known; RateLimited when a peer refused it for our rate, or
        when most of the peers that stayed silent (more than half) had refused us for our rate
        so recently that their silence is that (a peer over its limit answers one refusal a
        second and drops the rest; see :meth:`_note_limited`); else as :meth:`unanswered`
        says. Every refusal counts, not only the first."""
        error = self.unanswered(lookup)
        if isinstance(error, NoPeersError) or not isinstance(lookup, _NodeLookup):
            return error
        if lookup.rate_refusals:
            return RateLimited(ErrorCode.RATE_LIMITED,
                               f"the lookup was refused for our request rate by "
                               f"{lookup.rate_refusals} of the {lookup.requests} peers asked "
                               f"({error})")
        if _mostly(lookup.silent_limited, lookup.silent):
            return RateLimited(ErrorCode.RATE_LIMITED,
                               f"{lookup.silent_limited} of the {lookup.silent} peers that did "
                               "not answer the lookup had just refused us for our request "
                               "rate: slow down")
        return error

    def overtaken(self, lookup: Lookup, replies: list[tuple[Contact, Message | None]],
                  silenced: builtins.set[int], stored_by: builtins.set[int], acks: int,
                  ) -> RateLimited | None:
        """Why a write that peers confirmed is not stored where readers look: RateLimited when
        at least k peers known to be live are closer to the key than the nearest peer that
        stored it, and at least one of those failed us for our request rate; None otherwise.

        ``stored_by`` holds the ids of the peers that kept it on ``lookup``; ``replies`` are
        those of the peers asked to store it after. A peer failed us for our rate when it
        refused us RATE_LIMITED, or stayed silent while that explains its silence (its id is
        in ``silenced``), in ``lookup`` or among ``replies``. Live are those peers (they
        answer others, within their limits) and the peers that answered ``lookup`` or the
        store without storing it (a refusal is an answer); a closer peer that failed for any
        other reason, or that was never asked, counts for nothing here: it may be gone.

        Why k: a reader's lookup for the key goes on until the k closest peers that answer it
        have answered, so it reaches a peer that holds the item unless k live peers are closer
        to the key; the writer's lookup, cut short by its own rate, may have settled on peers
        farther out than a reader's would. With fewer than k closer live peers the write is
        where readers look; with k or more of them, none of which stored it because some
        failed for our rate, readers may end among them before they reach it (until a
        republish, within the hour, brings it closer), and slowing down is the remedy. Only
        the peers this write heard of are counted: one closer still that it never learnt of
        may stand between readers and the item, as it may for any write.

        At most k distances are kept of each kind and the lookup's candidates, closest first,
        are walked only as far as the nearest storer: the cost does not grow with the lookup."""
        limited = set(lookup.limited_distances) if isinstance(lookup, _NodeLookup) else set()
        key = lookup.target
        nearest = min((node_id ^ key for node_id in stored_by), default=_FAR)
        for contact, reply in replies:
            distance = contact.id ^ key
            if isinstance(reply, Stored):
                nearest = min(nearest, distance)
            elif (contact.id in silenced if reply is None
                  else isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED):
                limited.add(distance)
        closer_limited = sum(1 for distance in limited if distance < nearest)
        if not closer_limited:
            return None
        # Distances are unique per peer (XOR with one key), so a set of them counts each once:
        # a peer that answered the lookup and then refused the store for our rate, say.
        live = {distance for distance in limited if distance < nearest}
        k = lookup.k
        for cand in lookup.gathered():  # closest first
            if cand.distance >= nearest or len(live) >= k:
                break
            if cand.state is State.ANSWERED:  # storers are not closer than the nearest one
                live.add(cand.distance)
        if len(live) < k:
            return None
        return RateLimited(ErrorCode.RATE_LIMITED,
                           f"only peers farther from the key stored it ({acks}); {len(live)} "
                           f"closer ones answer readers, and {closer_limited} of those refused "
                           "us for our request rate: slow down")

    def unstored(self, lookup: Lookup, replies: list[tuple[Contact, Message | None]],
                 silenced: int = 0) -> QadomError | None:
        """Why a write that ``lookup`` found the k closest for was confirmed by none of them,
        given their ``replies``, of which ``silenced`` were silences our rate explains (see
        :meth:`ask_each`); None when there was nobody to ask (no peer known, or only contacts our
        table gave up, none of which answered: the write is ours alone until peers come, as on
        the first node of a network).

        RateLimited when one refused it for our rate, or when most of those that stayed silent
        (more than half) had just refused us for our rate (a peer over its limit answers one
        refusal a second and drops the rest): slowing down is what would get it stored. Else
        the refusals speak for themselves: StorageFull when each peer that refused it was full,
        else the first refusal as a RemoteError. With no refusal, OperationTimeout: the peers
        asked did not answer. When no peer answered the lookup, as :meth:`unreached` says."""
        if not replies:  # nobody answered the lookup (or nobody could be asked)
            error = self.unreached(lookup)
            if isinstance(error, NoPeersError) or not len(self.table):
                # Nobody left in our table either: every contact failed of late and was given
                # up (a network lost, or one cut off from us). Ours alone until peers come, as
                # with none known; the contacts given up are still pinged back.
                return None
            return error
        refusals = [r for _, r in replies if isinstance(r, Error)]
        codes = {r.code for r in refusals}
        said = f"{len(refusals)} of the {len(replies)} closest peers asked refused it"
        if ErrorCode.RATE_LIMITED in codes:
            return RateLimited(ErrorCode.RATE_LIMITED, f"{said}: slow down")
        silent = sum(1 for _, r in replies if r is None)
        if _mostly(silenced, silent):
            return RateLimited(ErrorCode.RATE_LIMITED,
                               f"{silenced} of the {silent} closest peers asked to store it "
                               "that did not answer had just refused us for our request rate: "
                               "slow down")
        if not refusals:
            return OperationTimeout(f"none of the {len(replies)} closest peers asked to store "
                                    "it answered")
        if codes <= {ErrorCode.STORAGE_FULL, ErrorCode.STORAGE_UNAVAILABLE}:
            return StorageFull(f"{said}: their storage is full or failing")
        return RemoteError(refusals[0].code, f"{said}: {_describe(refusals[0])}")

    def _fetch_pages(self, paging: _Paging, holder: _Holder, after: int, now: float) -> None:
        """Ask ``holder`` for its page of ``paging``'s key after ``after``; the answer, or the
        failure of every attempt, goes to :meth:`_Paging.on_page`. Nothing is sent once the
        search's call is done: a search that failed or was abandoned asks for no more pages."""
        if paging.call.done:
            return
        contact = holder.contact
        self.request(contact.address, Search(paging.key, after), now, expect_id=contact.id,
                     on_reply=partial(paging.on_page, holder, after))

    def _to_refresh_after_join(self, found: list[Contact]) -> list[tuple[int, int]]:
        """The id ranges a joining node refreshes once the lookup of its own id has ``found``
        its closest peers: every k-bucket farther away than its closest neighbour (section 2.3).

        The paper's table has one bucket per bit; ours splits only when a bucket overflows, so
        a lookup that met k peers (as it does through a bootstrap node next to us) may leave a
        single bucket with nothing farther to refresh, and the node would know nothing outside
        its neighbourhood until the hourly refresh. So: the subtrees that branch off our id's
        path above the k-th closest peer found (what lies below it is known: a node there would
        be among the k closest), which are the farther buckets of a table that has split (with
        ``Config.split_bits`` b, each such subtree split down to the next depth that is a
        multiple of b, as its buckets split), and every bucket of our table that does not cover
        our id (a relaxed split), but for those that lie wholly closer than that peer and those
        not split yet into subtrees above (refreshed through them).

        The subtrees of at most ``_REFRESH_RANGES`` levels, and ``_REFRESH_RANGES * 2 ** (b -
        1)`` ranges in all (one level's subtree splits into at most ``2 ** (b - 1)``), the
        farthest first: a table that has split along our id's path (a node bootstrapping again,
        its table full) holds a bucket per level, up to 255 when ids cluster around ours, and a
        lookup for each would ask the same neighbours again and again. With random ids, the
        levels farther than the k-th closest number about log2(N / k) for N nodes, so the bound
        binds only with clustered ids or
        past 2^32 k nodes; the nearest ranges it leaves out are then the ones the lookup of our
        own id came closest to, and the hourly refresh of stale buckets reaches them."""
        own = self.id
        distances = sorted(c.id ^ own for c in found if c.id != own)
        k = self.config.k
        kth = distances[k - 1] if len(distances) >= k else 0
        above = 256 - kth.bit_length() if kth else 0  # fewer than k found: no subtree
        bits = self.config.split_bits
        ranges: list[tuple[int, int]] = []
        for depth in range(min(above, _REFRESH_RANGES)):
            shift = 255 - depth
            lo = ((own >> shift) ^ 1) << shift
            ranges.extend(subtree_pieces(lo, depth + 1, bits))  # a range for each bucket
        known = set(ranges)
        # A bucket not split yet into the ranges above is refreshed through them.
        ranges += [(b.lo, b.hi) for b in self.table.buckets
                   if not b.covers(own) and (b.lo, b.hi) not in known
                   and range_distance(own, b.lo, b.hi) + (b.hi - b.lo) > kth
                   and not any(b.lo <= lo and hi <= b.hi for lo, hi in known)]
        ranges.sort(key=lambda r: range_distance(own, *r), reverse=True)
        return ranges[:_REFRESH_RANGES << (bits - 1)]

    def _to_refresh(self, now: float) -> list[tuple[int, int]]:
        """The id ranges of the buckets an upkeep refreshes: those with no lookup into their
        range for ``refresh_interval`` (section 2.3), at most ``_REFRESH_RANGES`` of them,
        the longest without one first, and of those the farthest from us first (as a join
        does). A refresh's lookup counts as a lookup into its bucket (the bucket is touched
        when it starts), so the buckets left out come first at the next upkeep, and each is
        refreshed at most ``ceil(len(buckets) / _REFRESH_RANGES)`` upkeeps after it came
        stale."""
        own = self.id
        stale = self.table.stale_buckets(now, self.config.refresh_interval)
        if len(stale) > _REFRESH_RANGES:
            stale.sort(key=lambda b: (b.last_lookup, -range_distance(own, b.lo, b.hi)))
            del stale[_REFRESH_RANGES:]
        return [(b.lo, b.hi) for b in stale]

    def _refresh(self, ranges: list[tuple[int, int]], now: float,
                 then: Callable[[float], None], call: Call[Any] | None = None) -> None:
        """Look up a random id in each id range ``[lo, hi)``, then ``then(now)``. Once ``call``
        is done, the lookups stop asking (see :meth:`run_lookup`); without it they run to their
        end (upkeep)."""
        if not ranges or not len(self.table):
            then(now)
            return
        left = [len(ranges)]

        def one_done(_: list[Contact], now: float) -> None:
            left[0] -= 1
            if left[0] == 0:
                then(now)

        for lo, hi in ranges:
            self.find_closest(random_id_in(self.rng, lo, hi), now, one_done, call)

    def _local_entries(self, key: int, now: float) -> builtins.set[int]:
        results: builtins.set[int] = set()
        after: int | None = None
        while True:
            values, more = self.store.entries_after(key, after, 4096, now)
            results.update(values)
            if not more or not values:
                return results
            after = values[-1]

    def _maintain(self, now: float) -> None:
        """Periodic upkeep: expire and republish stored items (while the routing table is empty
        none is sent: they stay due), refresh stale buckets (at most ``_REFRESH_RANGES``,
        the oldest first), save the routing table, forget expired bookkeeping, ping a few
        contacts the table gave up (:meth:`_retry_given_up`), rejoin through the saved contacts
        when the routing table is empty.

        A store that refuses a step (a durable store's full disk is StorageFull, a store that
        cannot be read or written now StorageUnavailable) costs that step only: it is logged and
        counted (``storage_errors``), and the other steps, which keep the node reachable, still
        run."""
        self._schedule(now + self.config.maintenance_interval, self._maintain)
        self._expire(now)
        with self._store_step("republish"):
            self._republish(now)
        with self._store_step("save contacts"):
            self.save_contacts()
        self._forget_old_bookkeeping(now)
        self._retry_given_up(now)
        for address in [a for a, until in self._dead.items() if until <= now]:
            del self._dead[address]
        for banned in [b for b, until in self._banned.items() if until <= now]:
            del self._banned[banned]
        if now - self._secret_at >= self.config.token_lifetime:
            self._old_secret, self._secret = self._secret, self.rng.randbytes(32)
            self._secret_at = now
            self._granted_old, self._granted = self._granted, {}
        horizon = now - self.config.verify_interval
        for pool in (self._verifying, self._verifying_proven):
            for address in [a for a, at in pool.items() if at <= horizon]:
                del pool[address]
        if len(self.table):
            self._rejoin_delay = self.config.maintenance_interval
            if self._rejoining:
                self._rejoining = False
                log.info("rejoined the network: %d contacts", len(self.table))
            self._refresh(self._to_refresh(now), now, lambda now: None)
        elif now >= self._rejoin_at:
            self._rejoin(now)

    def _expire(self, now: float) -> None:
        """Drop the expired items, a batch at a time (a store's ``expire`` does at most its
        ``expire_batch`` in one call, so that a mass expiry never holds up the node for long):
        while a batch comes back full, the next follows a second later, not an upkeep later,
        as expired items still count against the store's quotas until they are dropped."""
        with self._store_step("expire"):
            dropped = self.store.expire(now)
            self.stats["expired"] += dropped
            if dropped and dropped >= getattr(self.store, "expire_batch", math.inf):
                self._schedule(now + _EXPIRE_AGAIN, self._expire)

    def _renew_originals(self, now: float) -> None:
        """At start, before the node serves anything: renew, as a republish would, the lifetime
        of our own items and records (``original``) that ends before the first upkeep, or that
        have none (records of a store from before records had a lifecycle), and leave them due,
        so that the first upkeep sends them to the k closest with a fresh lifetime (section 2.5).
        Forgotten before that, they then expire as any other, not kept forever with no
        lifetime.

        A node restarted after more than ``expire_time`` down holds its own items with their
        lifetime lapsed, and every lifetime it sends is what is left of its copy's
        (:func:`~qadom.storage.remaining_ttl`): until renewed, a hand-over, a VALUE or a
        NAMESPACE_FOUND (which read repair passes on) would give them 1 s. The renewal counts as
        our last republish: a copy sent from now on lives at most ``expire_time`` from now, so
        after :meth:`forget` every copy is still gone ``expire_time`` after our last republish
        (sending our own items with a full lifetime at every answer instead would let read
        repair carry them past that). Only the sending waits for an upkeep: at start the
        routing table is empty, and :meth:`_republish` sends nothing until it is not (the first
        upkeep with contacts). A store that refuses the renewal is logged and counted as a
        refused upkeep step (:meth:`_store_step`); their lifetime is then renewed by the first
        upkeep with contacts, which republishes them (until then what we send of them carries
        what is left of their lifetime).

        First, no saved time is left later than this node would set it now
        (:meth:`~qadom.storage.Store.cap_times`): a republish of our own at most
        ``publisher_renew_after`` from now, of an item or record held for others at most
        ``republish_interval`` from now, and every lifetime at most ``expire_time`` from now,
        the longest any write gives (a publication, a renewal, a STORE's TTL, capped at it). The
        store keeps times as the node's clock read them, in Unix seconds: a node restarted with
        its clock set back after it ran ahead would otherwise renew its items only once the
        time its clock was ahead had passed, after every replica had expired."""
        cfg = self.config
        with self._store_step("bound the saved times"):
            self.store.cap_times(now + cfg.publisher_renew_after, now + cfg.republish_interval,
                                 now + cfg.expire_time)
        with self._store_step("renew our own items"):
            self.store.renew_originals(now + cfg.maintenance_interval, now + cfg.expire_time)

    def _forget_old_bookkeeping(self, now: float) -> None:
        """Forget the per-peer entries that can no longer change an answer, so that what a node
        keeps follows its recent traffic, not every address churn ever showed it. Each structure
        is kept oldest first, so each sweep stops at its first entry still of use and costs time
        in proportion to what it forgets.

        * ``_tokens``: a token granted to us ``2 * (token_lifetime + maintenance_interval)``
          ago or more is surely dead, and :meth:`_token_to_send` drops it instead of sending it:
          kept or not, none is sent. Ordered by when each came (``_keep_token``).
        * ``_handed``: a neighbour handed items over to ``republish_interval`` ago or more is
          handed them over again as if it had never been (:meth:`_hand_over`). Ordered by when.
          So is ``_handed_addresses``, per address; ``_handed_hosts``: a host whose hand-over
          budget's interval began ``republish_interval`` ago or more has its whole budget
          again, as one never handed anything. Ordered by when its interval began.
        * the request rate limiters: a sender whose bucket has refilled is allowed the same as
          one never seen (:meth:`RateLimiter.sweep`); so are publishers at the pubsub relay, and
          a subscriber's inbox forgets the streams no copy or message can still come on
          (:meth:`PubSubService.forget_old`).

        * ``_failures``: a count of failed requests whose last failure is ``dead_backoff`` old
          or more counts for nothing (:meth:`_contact_failed` starts it afresh), as a backoff
          that a full count sets ends then: with churn, the addresses that failed of late, not
          every one that ever did (``max_failure_counts`` only bounds a burst). Ordered by the
          last failure.
        * ``_given_up``: a contact the table gave up ``given_up_lifetime`` ago or more is pinged
          no more (:meth:`_retry_given_up`). Ordered by when it was given up.

        * ``_limited_by``: the grace after a RATE_LIMITED answer ends at a time, and the entries
          are ordered by it.
        * ``_peer_rtt``: an address's own round-trip estimate not sampled for
          ``refresh_interval`` tells little of its path now; the address is timed by the
          node-wide estimate again, as one never slow (it earns its own back with a late reply,
          :meth:`_late_reply`). Ordered by the last sample.
        * ``_failed_rpcs``: a failed request is remembered ``rpc_timeout_max`` for a late reply;
          the entries are ordered by when they are forgotten.

        ``_dead``, ``_banned``, ``_verifying`` and ``_verifying_proven`` are swept by their
        own deadlines in :meth:`_maintain`, and ``_granted`` becomes ``_granted_old`` at every
        change of secret (the one before is dropped)."""
        cfg = self.config
        failures, backoff = self._failures, cfg.dead_backoff
        while failures:
            address, (_, failed) = next(iter(failures.items()))
            if failed + backoff > now:  # the test _contact_failed counts a failure by
                break
            del failures[address]
        limited = self._limited_by
        while limited and next(iter(limited.values())) <= now:
            del limited[next(iter(limited))]
        peer_rtt, interval = self._peer_rtt, cfg.refresh_interval
        while peer_rtt and next(iter(peer_rtt.values()))[2] + interval <= now:
            peer_rtt.popitem(last=False)
        failed_rpcs = self._failed_rpcs
        while failed_rpcs and next(iter(failed_rpcs.values()))[3] <= now:
            failed_rpcs.popitem(last=False)
        tokens = self._tokens
        dead_after = 2 * (cfg.token_lifetime + cfg.maintenance_interval)
        while tokens:
            address, (_, came) = next(iter(tokens.items()))
            if now - came < dead_after:  # the test _token_to_send drops a token by
                break
            del tokens[address]
        handed, interval = self._handed, cfg.republish_interval
        while handed:
            node_id, at = next(iter(handed.items()))
            if at + interval > now:  # the test _hand_over skips a neighbour by
                break
            del handed[node_id]
        handed_addresses = self._handed_addresses
        while handed_addresses and next(iter(handed_addresses.values())) + interval <= now:
            handed_addresses.popitem(last=False)  # as _hand_over refuses an address by
        handed_hosts = self._handed_hosts
        while handed_hosts and next(iter(handed_hosts.values()))[0] + interval <= now:
            handed_hosts.popitem(last=False)  # as _hand_over starts a host's interval anew
        given_up, lifetime = self._given_up, cfg.given_up_lifetime
        while given_up:
            _, given, _, _ = next(iter(given_up.values()))
            if given + lifetime > now:
                break
            given_up.popitem(last=False)
        self._address_rate.sweep(now)
        self._host_rate.sweep(now)
        self._proven_address_rate.sweep(now)
        self._proven_host_rate.sweep(now)
        self._refusals.sweep(now)
        self.pubsub.forget_old(now)

    def save_contacts(self) -> None:
        """Save the routing table, for a restart or a rejoin.

        A table of ``k`` contacts or more is saved as it is. A smaller one (the network lost,
        contacts failing one by one) is saved first and topped up with the contacts saved before
        that it no longer holds, to as many as were saved before: a node that loses its network
        keeps every address it could rejoin through, and the list never grows while it waits.
        An empty table leaves the saved contacts as they were."""
        contacts = list(self.table)
        if len(contacts) < self.config.k:
            before = self.store.load_contacts()
            have = {c.id for c in contacts}
            have.add(self.id)
            contacts += [c for c in before if c.id not in have][:len(before) - len(contacts)]
        self.store.save_contacts(contacts)

    def _rejoin(self, now: float) -> None:
        """Our routing table is empty (a start while the network was down, every contact gone):
        bootstrap again through up to k of the contacts saved before, with a delay that doubles
        from one maintenance interval up to ``refresh_interval`` while it keeps failing. A node
        that never had contacts (the first of a network) has none saved and waits to be found."""
        saved: list[Address] = []
        with self._store_step("load contacts"):
            saved = [c.address for c in self.store.load_contacts() if c.id != self.id]
        if not saved:
            return
        cfg = self.config
        if not self._rejoining:  # logged when it starts and when it ends, not at every attempt
            self._rejoining = True
            log.warning("no contacts left: rejoining through %d saved contacts until one "
                        "answers", len(saved))
        self._rejoin_at = now + self._rejoin_delay
        self._rejoin_delay = min(2 * self._rejoin_delay, cfg.refresh_interval)
        self.stats["rejoins"] += 1
        self.bootstrap(self.rng.sample(saved, min(len(saved), cfg.k)), now)

    @contextlib.contextmanager
    def _store_step(self, what: str) -> Iterator[None]:
        """Run one maintenance step; a StorageFull from the store (a full disk, or its subclass
        StorageUnavailable: a store that cannot be read or written now) is counted, and logged
        when the step starts failing (not again at every tick while it goes on failing)."""
        try:
            yield
        except StorageFull as exc:
            self.stats["storage_errors"] += 1
            if what not in self._failing_steps:
                self._failing_steps.add(what)
                log.warning("maintenance could not %s: %s", what, exc)
        else:
            if what in self._failing_steps:
                self._failing_steps.discard(what)
                log.warning("maintenance could %s again", what)

    def _republish(self, now: float) -> None:
        """Send every item whose time has come to the k closest (section 2.5): our own items
        with a fresh lifetime every ``publisher_renew_after``, items we store for others
        with what is left of theirs every ``republish_interval``. Service records follow the
        same schedule, each sent by its service. A tick sends at most ``republish_batch``: our
        own items and records first, the soonest due first, then those we store for others in
        the room left, the soonest due first; in each, records due get at least half of the room
        when values and entries are due too. So no republish of others' items holds back the
        renewals of a bulk of our own due at once: they are spread over the ticks of
        ``publisher_renew_window``, and land before the copies of the last renewal expire as
        long as the bulk fits them (:attr:`~qadom.config.Config.publisher_renew_after`). An
        item or record whose rewrite the store refuses (StorageFull, or StorageUnavailable for
        a damaged page) is counted (``storage_errors``) and stays due for the next tick,
        holding back none of the others in this one (at the next, one of our own still comes
        first: see :attr:`~qadom.config.Config.republish_batch`); it is logged when such
        refusals start and when a tick
        meets none again, not at every tick. A rewrite no larger than what it replaces is never
        refused for the quotas (:meth:`Quotas.replace <qadom.storage.Quotas.replace>`), so a
        store over lower limits than it was filled under still renews what it holds.

        A republish counts as done only once it reached somebody: with an empty routing table
        (a start before the saved contacts answered, a network lost) nothing is sent and every
        item stays due, and one that reached nobody (:meth:`_republish_missed`) is due again at
        the next tick. Else a publisher whose renewal fell while it could reach nobody would put
        the next one off by a day, while every copy on the network expires."""
        if not len(self.table):
            return
        cfg = self.config
        batch = cfg.republish_batch
        store = self.store
        # Our own first: our renewal is all that keeps an item of ours alive, while an item we
        # store for others has k storers to repair it (one an hour is enough), and their
        # republishes, due every hour, would otherwise hold ours back past their copies' expiry.
        items, records = _share_batch(store.due(now, batch, originals=True),
                                      store.due_records(now, batch, originals=True), batch)
        room = batch - len(items) - len(records)
        if room:  # every one of ours due is in: those we store for others fill the rest
            theirs, their_records = _share_batch(
                [due for due in store.due(now, len(items) + room) if not due.meta.original],
                [due for due in store.due_records(now, len(records) + room)
                 if not due.meta.original], room)
            items += theirs
            records += their_records
        refused: list[StorageFull] = []  # the refusals of our own store this tick
        for record in records:
            service = self._record_services.get(record.kind)
            try:
                if service is not None:
                    service.republish(record, now, partial(
                        self._republish_missed, record.kind, record.key, None, record.meta, now))
                else:  # a kind no service republishes: keep it as it is, off the schedule
                    self.store.put_record(record.kind, record.key, record.data, now,
                                          meta=replace(record.meta, republish_at=NEVER))
            except StorageFull as exc:
                self.stats["storage_errors"] += 1
                refused.append(exc)
        entries: dict[int, list[tuple[Message, Callable[[float], None]]]] = {}  # by key
        for due in items:
            meta = due.meta
            if meta.original:
                ttl = cfg.expire_time
                meta = replace(meta, expires=now + ttl,
                               republish_at=now + cfg.publisher_renew_after)
            else:
                ttl = meta.expires - now
                meta = replace(meta, republish_at=now + cfg.republish_interval
                               if ttl >= 1 else NEVER)
            message: Message
            try:  # our own bookkeeping first: an item the store refuses is tried again next tick
                if isinstance(due.item, bytes):
                    self.store.put_value(due.key, due.item, meta)
                    message = Store(due.item, int(ttl))
                else:
                    self.store.add_entry(due.key, due.item, meta)
                    message = Append(due.key, due.item, int(ttl))
            except StorageFull as exc:
                self.stats["storage_errors"] += 1
                refused.append(exc)
                continue
            if ttl >= 1:
                self.stats["republished"] += 1
                missed = partial(self._republish_missed, None, due.key, due.item, due.meta, now)
                if isinstance(message, Append):
                    entries.setdefault(due.key, []).append((message, missed))
                else:
                    self.replicate(due.key, message, now, missed=missed)
        for key, appends in entries.items():
            self._replicate_entries(key, appends, now)
        # What our store refuses stays due and is met again at every tick: logged as a failing
        # upkeep step is (_store_step), when it starts and when it ends.
        what = "renew the items due"
        if refused and what not in self._failing_steps:
            self._failing_steps.add(what)
            log.warning("maintenance could not %s: our store refused %d of them: %s", what,
                        len(refused), refused[0])
        elif not refused and what in self._failing_steps:
            self._failing_steps.discard(what)
            log.warning("maintenance could %s again", what)

    def _republish_missed(self, kind: str | None, key: int, item: bytes | int | None,
                          due: Meta, sent: float, now: float) -> None:
        """The republish at ``sent`` of an item (``kind`` None: the value, or the entry ``item``,
        under ``key``) or of the record of ``kind`` under ``key``, which was ``due`` then,
        reached nobody: it is due again (at the next tick), unless its bookkeeping changed since
        that republish wrote it. A storer's republish received meanwhile counts as this hour's
        (section 2.5), and a :meth:`forget` or a newer copy has its own schedule. Our own item's
        lifetime stays the one that republish gave it: a forgotten item's copies are still gone
        ``expire_time`` after our last republish, reached or not."""
        self.stats["republish_missed"] += 1
        cfg = self.config
        interval = cfg.publisher_renew_after if due.original else cfg.republish_interval
        store = self.store
        try:
            if kind is not None:
                meta = store.record_meta(kind, key)
                data = store.get_record(kind, key)
                if meta is None or data is None or not _unchanged(meta, due, sent, interval):
                    return
                store.put_record(kind, key, data, now, meta=replace(meta, republish_at=now))
            elif isinstance(item, int):
                meta = store.entry_meta(key, item)
                if meta is None or not _unchanged(meta, due, sent, interval):
                    return
                store.add_entry(key, item, replace(meta, republish_at=now))
            else:
                meta = store.value_meta(key)
                value = store.get_value(key)
                if meta is None or value is None or not _unchanged(meta, due, sent, interval):
                    return
                store.put_value(key, value, replace(meta, republish_at=now))
        except StorageFull:
            self.stats["storage_errors"] += 1

    def _replicate_entries(self, key: int,
                           appends: list[tuple[Message, Callable[[float], None]]],
                           now: float) -> None:
        """Send every one of ``appends`` (entries under ``key``, each with what to call if it
        reached nobody) to the k closest to ``key``, found by one lookup: entries of one key
        often come due together (appended or received together), and a lookup each would cost
        that many lookups of the same key."""
        if len(appends) == 1:
            message, missed = appends[0]
            self.replicate(key, message, now, missed=missed)
            return

        def send_all(closest: list[Contact], now: float) -> None:
            for message, missed in appends:

                def count(replies: list[tuple[Contact, Message | None]], now: float,
                          missed: Callable[[float], None] = missed) -> None:
                    self.stats["replicas_acked"] += sum(
                        1 for _, r in replies if isinstance(r, Stored))
                    if all(r is None for _, r in replies):
                        missed(now)

                self.ask_each(closest, message, now, count)

        self.find_closest(key, now, send_all)

    def _cache_on_path(self, key: int, found: Value, without: list[Contact], lookup: Lookup,
                       now: float) -> None:
        """Cache a found value at the closest peer on the lookup path that did not have it
        (section 2.3), for 24 h halved once for each peer the lookup saw between it and the k
        closest to the key, where the value's replicas are: the k closest themselves do not
        count, since every cache peer lies beyond them or among them, and counting them would
        leave no lifetime worth sending (24 h / 2^k). Never for longer than the copy it was read
        from has left (``found.ttl``): a value nobody renews is gone everywhere a day after its
        last publication, cached copies included, however often it is read. Never at an
        address banned since it answered (it lied to this lookup or another)."""
        without = [c for c in without if not self._is_banned(c, now)]
        if not without:
            return
        target = min(without, key=lambda c: c.id ^ key)
        closer = sum(1 for cand in lookup.candidates() if cand.distance < target.id ^ key)
        lifetime = min(math.ldexp(self.config.expire_time, -max(0, closer - self.config.k)),
                       found.ttl)
        if lifetime >= self.config.cache_min_lifetime:
            self.stats["cached_sent"] += 1
            self.request(target.address, Store(found.value, int(lifetime), cache=True), now,
                         expect_id=target.id)

    def _emit(self, event: LookupEvent) -> None:
        for fn in list(self._listeners):
            try:
                fn(event)
            except Exception:
                # Called for every reply a lookup gets: a listener that fails on each would
                # write a traceback per datagram a peer sends, so it is logged as bugs are.
                self.stats["listener_errors"] += 1
                self._log_bug(event.now, "a lookup listener raised on %s", type(event).__name__)

    def check_value(self, value: object) -> bytes:
        """``value`` if it is bytes within ``max_value_size``; InvalidType / ValueTooLarge."""
        return check_record_value(value, self.config.max_value_size)


def _mostly(part: int, whole: int) -> bool:
    """Whether ``part`` is more than half of ``whole`` (never when ``whole`` is 0)."""
    return 2 * part > whole


def _remember_token(granted: dict[Address, bytes], address: Address, secret: bytes,
                    limit: int) -> bytes:
    """Mint the token ``secret`` grants ``address`` and keep it in ``granted``, which holds at
    most ``limit`` (emptied when full: a token forgotten is only minted again)."""
    if len(granted) >= limit:
        granted.clear()
    token = granted[address] = _mint_token(address, secret)
    return token


def _mint_token(address: Address, secret: bytes) -> bytes:
    """The token ``secret`` grants ``address``: HMAC-SHA256 of "host|port", 16 bytes."""
    text = f"{address[0]}|{address[1]}".encode()
    return hmac.new(secret, text, hashlib.sha256).digest()[:TOKEN_BYTES]


def _live_closest(table: RoutingTable, target: int, count: int, dead: dict[Address, float],
                  now: float, passed: Callable[[Contact], None] | None = None) -> list[Contact]:
    """The ``count`` contacts of ``table`` closest to ``target`` whose address is not in backoff
    (``dead``, until when). Reads ``count`` contacts, then twice as many as long as some of
    those read were in backoff: the cost follows the contacts in backoff near ``target``, not
    how many addresses ``dead`` holds. ``passed(contact)`` is told of each one in backoff met
    (perhaps more than once)."""
    width = count
    while True:
        picked = table.closest(target, width)
        live = [c for c in picked if dead.get(c.address, -math.inf) <= now]
        if passed is not None and len(live) < len(picked):
            for c in picked:
                if dead.get(c.address, -math.inf) > now:
                    passed(c)
        if len(live) >= count or len(picked) < width:
            return live[:count]
        width = count + 2 * (width - len(live))


def _unchanged(meta: Meta, due: Meta, sent: float, interval: float) -> bool:
    """Whether ``meta`` is still the bookkeeping a republish at ``sent`` of an item that was
    ``due`` wrote: the same owner, next due within ``interval`` of it (a /dht record's at most:
    its entries may end sooner). A copy received since moves the time to an interval after it,
    and :meth:`Node.forget` to NEVER."""
    return meta.original == due.original and sent < meta.republish_at <= sent + interval


def _share_batch(items: list[Due], records: list[DueRecord], room: int,
                 ) -> tuple[list[Due], list[DueRecord]]:
    """The first of ``items`` and of ``records`` (each soonest due first) that one tick's
    ``room`` republishes: all of both when they fit, else the records at least half of it (all
    of it when no item is due) and the items the rest."""
    taken = min(len(records), max(room - len(items), room // 2))
    return items[:room - taken], records[:taken]


def _forget(deadlines: OrderedDict[int, tuple[float, Call[Any]]], seq: int) -> None:
    deadlines.pop(seq, None)


def _ignore_reply(envelope: Envelope | None, now: float) -> None:
    return None


class _SharedRead:
    """One read's lookup serving every caller of the same read (kind and key) that asks while
    it has had no answer yet: each caller holds a call of its own, completed with the shared
    outcome (a result copied with ``copy``, so no caller sees another's changes; an exception
    shared as an asyncio future shares it, but for an IncompleteSearch: each caller gets one
    of its own, with its own copy of the values read). The shared lookup runs while any
    caller still waits: once every one of their calls is done (its deadline passed, or it was
    abandoned), the lookup's call fails with OperationAbandoned and it stops asking. (A get's
    caller has its own deadline; a search's lookup has its deadline moved by each search that
    joins it: ``renew``.) A read joins only a lookup that has heard no answer yet
    (:meth:`close`) and that started after the last of the node's own writes ended
    (``writes``, the node's count of writes ended when it started): a write that ended before a
    read was asked, on this node, is never missed for a lookup, or a read of our own store,
    that came before it."""

    __slots__ = ("callers", "inner", "key", "open", "reads", "renew", "waiting", "writes")

    def __init__(self, reads: dict[tuple[str, int], _SharedRead], key: tuple[str, int],
                 inner: Call[Any], first: Call[Any], writes: int) -> None:
        self.reads = reads
        self.key = key
        self.inner = inner
        self.writes = writes
        self.renew: Callable[[float], None] | None = None
        self.callers: list[Call[Any]] = []
        self.waiting = 0  # callers whose calls are not done
        self.open = True
        reads[key] = self
        self.join(first)
        inner.add_done_callback(self._settled)

    def join(self, caller: Call[Any]) -> None:
        self.callers.append(caller)
        self.waiting += 1
        caller.add_done_callback(self._left)

    def close(self) -> None:
        """No caller joins any more: the lookup has heard an answer, or ended."""
        if self.open:
            self.open = False
            if self.reads.get(self.key) is self:
                del self.reads[self.key]

    def _settled(self, inner: Call[Any]) -> None:
        self.close()
        error = inner.exception()
        if error is not None:
            for caller in self.callers:
                if isinstance(error, IncompleteSearch):  # what was read, each caller's own
                    caller.fail(IncompleteSearch(str(error), copy(error.values)))
                else:
                    caller.fail(error)
            return
        result = inner.result()
        for caller in self.callers:
            caller.resolve(copy(result) if isinstance(result, builtins.set) else result)

    def _left(self, caller: Call[Any]) -> None:
        self.waiting -= 1
        if not self.waiting and not self.inner.done:
            self.close()
            self.inner.fail(OperationAbandoned(
                f"every caller of this {self.inner.name} stopped waiting"))


class _Holder:
    """A peer that answered a search's lookup with ENTRIES, as the search's paging sees it."""

    __slots__ = ("contact", "more", "pages", "reach", "start")

    def __init__(self, contact: Contact, values: Iterable[int], more: bool) -> None:
        self.contact = contact
        self.pages = 1  # pages read from it: its answer to the lookup was the first
        self.reach = max(values, default=-1)  # the greatest value it sent
        self.more = more  # its last page said more values follow
        # Where the pages being read from it began (-1: its first page); None while none are.
        # At most one page request to it is under way at a time.
        self.start: int | None = None


class _Paging:
    """The pages of one search after its lookup (:meth:`Node.search`): which holder is read from
    which point, which holder was read to its end from which point, which page failed where,
    and the search's deadline."""

    def __init__(self, node: Node, key: int, call: Call[builtins.set[int]],
                 results: builtins.set[int], now: float) -> None:
        self.node = node
        self.key = key
        self.call = call
        self.results = results
        # ``results`` is our own store's set, read whole (to its end, from its first value)
        # before the lookup: it answers for the values past any point below its greatest, as a
        # holder read to its end does.
        self.own_reach = max(results, default=-1)
        self.holders: dict[int, _Holder] = {}  # by id, every peer that answered with ENTRIES
        self.tried: builtins.set[tuple[int, int]] = set()  # (holder id, point) pages asked for
        # By holder id, the earliest point (-1: its first page) from which a read of it went on
        # to a page that said no more follow: every value it holds past that point is read.
        self.ended: dict[int, int] = {}
        self.running = 0  # holders being read
        self.paging = False  # the lookup is over
        self.watch: Call[None] | None = None
        self.renew(now)
        call.add_done_callback(self._ended)

    def renew(self, now: float) -> None:
        """Move the search's deadline to ``operation_timeout`` from ``now``. The deadline is a
        call of the node's deadline queue (Node.new_call), replaced by a new one, which keeps
        that queue in order: all its deadlines are the same timeout after their start."""
        old = self.watch
        self.watch = watch = self.node.new_call("search", now)
        watch.add_done_callback(self._expired)
        if old is not None:
            old.resolve(None)  # the node forgets it

    def _expired(self, watch: Call[None]) -> None:
        error = watch.exception()
        if error is None or watch is not self.watch:
            return  # replaced by a later deadline, or the search ended
        if self.paging:
            limit = self.node.config.operation_timeout
            error = IncompleteSearch(
                f"search incomplete: {len(self.results)} values read, then no page came for "
                f"{limit:g} s", self.results)
        self.call.fail(error)

    def _ended(self, call: Call[builtins.set[int]]) -> None:
        if self.watch is not None:
            self.watch.resolve(None)

    def begin(self, first: list[tuple[_Holder, int]], now: float) -> None:
        """Read each holder of ``first`` after the point given with it (the last value of its
        first page); resolve the call once no holder is being read. A holder whose answer to the
        lookup held values and said no more follow was read to its end by it."""
        self.paging = True
        for holder in self.holders.values():
            if not holder.more and holder.reach >= 0:
                self.ended[holder.contact.id] = -1
        cap = self.node.config.max_search_pages
        for holder, after in first:
            if holder.pages < cap:
                holder.start = -1
                self.running += 1
                self.node._fetch_pages(self, holder, after, now)
        if not self.running:
            self.call.resolve(self.results)

    def on_page(self, holder: _Holder, after: int, envelope: Envelope | None,
                now: float) -> None:
        """``holder``'s answer to the request for its page after ``after`` (None: every attempt
        went unanswered): take its values and ask for the next page, or read it elsewhere."""
        if self.call.done:
            return  # failed or abandoned: nothing is read any more
        message = None if envelope is None else envelope.message
        if not isinstance(message, Entries):  # no answer to any attempt, or an ERROR
            self._failed(holder, after, now)
            return
        values = [v for v in message.values if v > after]  # a page must move forward
        if message.more and not values:  # more that cannot be read from this peer
            self._failed(holder, after, now)
            return
        self.renew(now)
        self.results.update(values)
        holder.pages += 1
        holder.more = message.more
        holder.reach = max(holder.reach, max(values, default=-1))
        if message.more and holder.pages < self.node.config.max_search_pages:
            self.node._fetch_pages(self, holder, max(values), now)
            return
        if not message.more and holder.start is not None:  # read to its end from its start
            self.ended[holder.contact.id] = min(self.ended.get(holder.contact.id, holder.start),
                                                holder.start)
        holder.start = None  # read to its end, or to max_search_pages
        self.running -= 1
        if not self.running:
            self.call.resolve(self.results)

    def _failed(self, holder: _Holder, after: int, now: float) -> None:
        """``holder`` did not serve its page after ``after``: read that page and the rest from
        another holder, or fail the search when there is none. A holder read to its end from
        at or before that point that sent a value past it, or our own store's set when it
        holds one, stands in for it at no request: what it holds past the point is read."""
        self.tried.add((holder.contact.id, after))
        holder.start = None
        self.running -= 1
        other = None  # our own store's set holds a value past ``after``: it stands in
        if after >= self.own_reach:
            other = self._substitute(holder, after)
            if other is None:
                self.call.fail(IncompleteSearch(
                    f"search incomplete: {len(self.results)} values read, but the values after "
                    f"{after} could be read from none of the peers holding the key (each one "
                    "asked failed to answer or refused)", self.results))
                return
        if other is None or self._brought(other, after):
            # Our store, or ``other``, was read to its end from at or before ``after``: what it
            # holds past it is in the results already, and asking again would bring it twice.
            if not self.running:
                self.call.resolve(self.results)
            return
        if other.start is not None:
            return  # being read from before ``after``: its pages bring its values past it
        self.tried.add((other.contact.id, after))
        other.start = after
        self.running += 1
        self.node._fetch_pages(self, other, after, now)

    def _brought(self, holder: _Holder, after: int) -> bool:
        """Whether ``holder`` was read to its end from at or before ``after`` and sent a value
        past it: then every value it holds past ``after`` is read. (One that sent none past it
        is known to hold none there, and is no substitute for a holder that failed there.)"""
        ended = self.ended.get(holder.contact.id)
        return ended is not None and ended <= after < holder.reach

    def _substitute(self, failed: _Holder, after: int) -> _Holder | None:
        """The holder to read the values after ``after`` from in place of ``failed``: first one
        read to its end from at or before that point that sent a value past it (its values past
        it are read already: no request), then one being read from before that point (its next
        pages bring them, at no extra request), else one not asked from there yet that may hold
        values past it (its last page said more, or it sent one) with pages left under
        max_search_pages, those that said more first, then those that reached furthest. None
        when none is left."""
        cap = self.node.config.max_search_pages
        best: _Holder | None = None
        best_rank = (-1, -1)
        for holder in self.holders.values():
            if holder is failed:
                continue
            if self._brought(holder, after):
                rank = (3, holder.reach)
            elif holder.start is not None:
                if holder.start > after:
                    continue  # read from a later point only: it would not bring these values
                rank = (2, holder.reach)
            elif (holder.contact.id, after) in self.tried:
                continue
            elif holder.pages < cap and (holder.more or holder.reach > after):
                rank = (int(holder.more), holder.reach)
            else:
                continue  # known to hold nothing past ``after``, or out of pages
            if rank > best_rank:
                best, best_rank = holder, rank
        return best
