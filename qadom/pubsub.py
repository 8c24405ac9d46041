"""Publish/subscribe over the DHT: topics relayed by the k closest peers to their key.

How it works (docs/PROTOCOL.md, "Publish/subscribe"):

* A subscriber looks up the k closest peers to the topic key (its *relays*) and sends each a
  ``Subscribe`` with a lease. It renews ``pubsub_renewals`` times per lease (the lease most of
  its relays granted, if shorter than asked) with a fresh lookup, so
  when a relay dies its successor among the k closest is registered at the next renewal; sooner
  when fewer than half the relays a round asked hold its lease (some did not answer): after
  ``rpc_timeout_min``, then twice as long at each such round in a row, up to the renewal
  interval. A relay that leaves a renewal unanswered, or that the renewal's lookup misses
  (unless k closer peers were found), stays a relay, its deliveries accepted, while the lease it
  confirmed last may still hold it at the next round (through one such round at the defaults):
  under loss that is a lost datagram far more often than a departure, and a relay answered
  NOT_SUBSCRIBED forgets a subscriber it holds. Leaving sends ``Unsubscribe``; a subscriber that
  vanishes is forgotten when its lease lapses or when deliveries to it keep failing
  (``pubsub_silent_deliveries``). An ``Unsubscribe`` that reaches a relay after the
  ``Subscribe`` of a later subscription to the topic (resent, duplicated or delayed) does not
  cut that one off for long: the relay is sent ``Subscribe`` again once the ``Unsubscribe`` is
  over, and again once none of its datagrams can still be on the way.
* A publisher looks up the same k closest and sends each a ``Publish`` carrying its stream id (a
  random 64-bit number per publishing node and topic) and the next sequence number of that stream.
  Each relay forwards it as ``Deliver`` to every live subscriber (and hands it to its own local
  subscriptions). A publisher that is itself among the k closest (a lookup never returns the
  node running it) forwards its own messages to the subscribers registered with it too.
* A subscriber receives up to k copies of each message. Its :class:`Inbox` passes on each message
  once, and in sequence order per stream: a message behind a gap waits up to
  ``pubsub_reorder_timeout`` for the missing one, then the gap is given up.

Streams, and what one publisher address can do (docs/SECURITY.md, "Publish/subscribe: duplicates
and drops"): a relay keeps each stream it forwards (:class:`StreamTable`) until
``pubsub_stream_lifetime`` after its last message. While kept, the stream belongs to the address
that opened it, and one address has at most ``pubsub_streams_per_publisher`` kept streams per
topic; a PUBLISH beyond either rule is refused (``STREAM_TAKEN``, ``TOO_MANY_STREAMS``).
A subscriber's inbox never forgets a stream heard within the copy window
(:attr:`~qadom.config.Config.pubsub_copy_window`), the longest two copies of one message can
arrive apart. Together, through honest relays, this guarantees: **one
publisher address, whatever stream ids it uses, cannot make a subscriber deliver another
publisher's message twice, nor drop it.** Not twice: a late copy always finds its stream still
tracked, however many streams came in between. Not dropped: a subscriber drops only messages of
streams it does not track, and only while every one of the ``pubsub_max_publishers`` it tracks
was heard within that window; the streams of one address it heard that recently were all kept by
its k relays at once, so at most ``k x pubsub_streams_per_publisher``, and filling the inbox
takes ``pubsub_max_publishers / (k x pubsub_streams_per_publisher)`` addresses (13 at the
defaults). Nor can another address publish on a kept stream.

Bounds: a relay keeps at most ``pubsub_max_subscribers`` per topic and ``pubsub_max_topics``
topics, of which one host holds at most a tenth (:data:`HOST_SHARE`), grants leases of at most
``pubsub_max_lease``, accepts at most ``pubsub_rate`` publishes per second per sender (bursts
of ``pubsub_burst``), and keeps at most ``pubsub_max_streams`` streams, a tenth of them for one
host; refusals are ``Error`` replies with ``TOO_MANY_SUBSCRIBERS``, ``STORAGE_FULL``,
``RATE_LIMITED``, ``TOO_MANY_STREAMS`` or ``STREAM_TAKEN``. SUBSCRIBE, UNSUBSCRIBE and PUBLISH
are served only to addresses that proved they receive the relay's datagrams (a token; see
docs/PROTOCOL.md, "Amplification"), so a forged source can neither cut a subscription nor
publish, nor open streams in another address's name.

Subscriptions are soft state, in memory only. The pure pieces (the rate limiter of
:mod:`qadom.ratelimit`, :class:`RelayTable`, :class:`StreamTable`, :class:`Inbox`) take ``now``
and hold every rule; :class:`PubSubService` wires them to a :class:`~qadom.node.Node` and its
timer heap. No asyncio, sockets or clock here.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from statistics import median_low
from typing import TYPE_CHECKING

from .call import Call
from .contact import Address, Contact, host_key
from .errors import (
    InvalidArgument,
    NoPeersError,
    OperationTimeout,
    QadomError,
    RateLimited,
    RemoteError,
    SubscriptionClosed,
    TooManySubscribers,
    printable,
)
from .ids import check_id
from .lookup import Lookup
from .messages import Envelope, Error, ErrorCode, Kind, Message, register
from .ratelimit import RateLimiter

if TYPE_CHECKING:
    from .node import Node

Listener = Callable[[bytes], None]

HOST_SHARE = 10
"""One host (all its ports together) may hold at most a tenth of a relay's subscriptions
(``pubsub_max_topics // 10`` in all) and a tenth of one topic's seats
(``pubsub_max_subscribers // 10``), as it may fill at most a tenth of a node's storage
(``max_items_per_source``): a single requester cannot lock the others out."""

RECENT = 1024
"""How far below the highest seq it took on a stream a relay remembers which seqs it took (one
bit each), so that a resent PUBLISH (its PUBLISHED lost or late) is answered again without being
forwarded again, nor charged to the sender's rate. A publisher resends a request at most
``rpc_retries`` times, within ``(1 + rpc_retries) x rpc_timeout_max`` (4 s), and sends messages
published during one lookup together, so a resend can come after a whole burst of later ones:
within its rate a publisher has at most ``pubsub_burst + 4 x pubsub_rate`` (600) taken
meanwhile, at the defaults. The window is one int of at most 1024 bits (128 bytes) a stream."""
_WINDOW = (1 << RECENT) - 1


# ============================================================================= wire messages


@dataclass(frozen=True, slots=True)
class Subscribe(Message):
    """Register the sender's address for ``key`` for ``lease_ms`` milliseconds (at least 1).
    Answered by :class:`Subscribed` with the lease granted, or an ``Error``."""

    CODE = 12
    IS_REQUEST = True
    FIELDS = (("key", Kind.ID), ("lease_ms", Kind.UINT64))
    key: int
    lease_ms: int

    def __post_init__(self) -> None:
        if self.lease_ms < 1:  # the codec turns this into a ProtocolError for a datagram
            raise InvalidArgument("a lease is at least 1 ms")


@dataclass(frozen=True, slots=True)
class Unsubscribe(Message):
    """Forget the sender's subscription to ``key``. Answered by :class:`Unsubscribed`."""

    CODE = 13
    IS_REQUEST = True
    FIELDS = (("key", Kind.ID),)
    key: int


@dataclass(frozen=True, slots=True)
class Publish(Message):
    """Relay ``value`` to the subscribers of ``key``: message ``seq`` of the publisher's stream
    ``stream``. Answered by :class:`Published`, or an ``Error`` with ``RATE_LIMITED``,
    ``TOO_MANY_STREAMS`` or ``STREAM_TAKEN``."""

    CODE = 14
    IS_REQUEST = True
    RATE_OF_ITS_OWN = True  # Config.pubsub_rate, per publisher
    FIELDS = (("key", Kind.ID), ("stream", Kind.UINT64), ("seq", Kind.UINT64),
              ("value", Kind.VALUE))
    key: int
    stream: int
    seq: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Deliver(Message):
    """A relay forwards a published message to a subscriber (same fields as :class:`Publish`).
    Answered by :class:`Delivered`, or ``Error(NOT_SUBSCRIBED)`` (the relay then forgets the
    subscriber)."""

    CODE = 15
    IS_REQUEST = True
    FIELDS = Publish.FIELDS
    key: int
    stream: int
    seq: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Subscribed(Message):
    """The subscription is registered (or renewed) for ``lease_ms`` milliseconds."""

    CODE = 76
    IS_REQUEST = False
    FIELDS = (("lease_ms", Kind.UINT64),)
    lease_ms: int


@dataclass(frozen=True, slots=True)
class Unsubscribed(Message):
    """The subscription is gone (or never was)."""

    CODE = 77
    IS_REQUEST = False


@dataclass(frozen=True, slots=True)
class Published(Message):
    """The relay took the message and forwarded it to ``subscribers`` subscribers."""

    CODE = 78
    IS_REQUEST = False
    FIELDS = (("subscribers", Kind.UINT64),)
    subscribers: int


@dataclass(frozen=True, slots=True)
class Delivered(Message):
    """The subscriber took the message."""

    CODE = 79
    IS_REQUEST = False


for _cls in (Subscribe, Unsubscribe, Publish, Deliver, Subscribed, Unsubscribed, Published,
             Delivered):
    register(_cls)


# ============================================================================= pure state


class RelayTable:
    """A relay's subscribers: per topic, each subscriber address with its lease expiry.

    Bounds: ``max_topics`` topics, ``max_subscribers`` per topic, leases of at most ``max_lease``
    seconds. With ``max_per_host``, one host (all its ports together) holds at most that many
    subscriptions in all, and at most ``max_per_host_topic`` of one topic's subscribers, so a
    single requester cannot take every topic slot or every seat of a topic from the others.
    Expired leases are pruned whenever a topic is read and by :meth:`expire`.
    """

    OK = 0
    TOO_MANY_SUBSCRIBERS = 1
    TOO_MANY_TOPICS = 2
    HOST_TOO_MANY_SUBSCRIBERS = 3
    """The subscriber's host already holds ``max_per_host_topic`` seats of this topic."""
    HOST_TOO_MANY_TOPICS = 4
    """The subscriber's host already holds ``max_per_host`` subscriptions here."""

    def __init__(self, max_topics: int, max_subscribers: int, max_lease: float, *,
                 max_per_host: int | None = None, max_per_host_topic: int | None = None,
                 ) -> None:
        self.max_topics = max_topics
        self.max_subscribers = max_subscribers
        self.max_lease = max_lease
        self.max_per_host = max_per_host
        self.max_per_host_topic = max_per_host_topic
        self._topics: dict[int, dict[Address, float]] = {}
        self._by_host: dict[str, int] = {}  # live subscriptions per host, all topics
        self._by_topic_host: dict[int, dict[str, int]] = {}  # per topic, seats per host

    def subscribe(self, topic: int, subscriber: Address, lease: float,
                  now: float) -> tuple[int, float]:
        """Register or renew; returns ``(OK, lease granted)`` or ``(TOO_MANY_..., 0.0)`` /
        ``(HOST_TOO_MANY_..., 0.0)`` with nothing changed."""
        granted = min(lease, self.max_lease)
        subscribers = self._live(topic, now)
        if subscribers is not None and subscriber in subscribers:
            subscribers[subscriber] = now + granted  # renewing is not joining
            return self.OK, granted
        host = host_key(subscriber[0])
        if self.max_per_host is not None and self._by_host.get(host, 0) >= self.max_per_host:
            return self.HOST_TOO_MANY_TOPICS, 0.0
        if subscribers is None:
            # No sweep here: the periodic sweep drops lapsed leases, and sweeping on demand
            # would let a peer make every refused SUBSCRIBE scan the whole table.
            if len(self._topics) >= self.max_topics:
                return self.TOO_MANY_TOPICS, 0.0
            subscribers = self._topics[topic] = {}
            self._by_topic_host[topic] = {}
        elif len(subscribers) >= self.max_subscribers:
            return self.TOO_MANY_SUBSCRIBERS, 0.0
        seats = self._by_topic_host[topic]
        if self.max_per_host_topic is not None and seats.get(host, 0) >= self.max_per_host_topic:
            if not subscribers:  # the topic was made for this request: leave no trace
                del self._topics[topic], self._by_topic_host[topic]
            return self.HOST_TOO_MANY_SUBSCRIBERS, 0.0
        subscribers[subscriber] = now + granted
        seats[host] = seats.get(host, 0) + 1
        self._by_host[host] = self._by_host.get(host, 0) + 1
        return self.OK, granted

    def unsubscribe(self, topic: int, subscriber: Address) -> bool:
        subscribers = self._topics.get(topic)
        if subscribers is None or subscriber not in subscribers:
            return False
        self._drop(topic, subscribers, subscriber)
        return True

    def subscribers(self, topic: int, now: float) -> list[Address]:
        """The live subscribers of ``topic``, in registration order."""
        subscribers = self._live(topic, now)
        return list(subscribers) if subscribers else []

    def lease(self, topic: int, subscriber: Address) -> float | None:
        """When the lease of ``subscriber`` on ``topic`` ends (None: not registered). Each
        SUBSCRIBE, new or renewing, sets it anew."""
        subscribers = self._topics.get(topic)
        return None if subscribers is None else subscribers.get(subscriber)

    def expire(self, now: float) -> int:
        """Drop every lapsed lease; returns how many."""
        before = self.count()
        for topic in list(self._topics):
            self._live(topic, now)
        return before - self.count()

    def count(self) -> int:
        return sum(len(s) for s in self._topics.values())

    def held_by(self, host: str) -> int:
        """How many subscriptions (all topics) the subscribers on ``host`` (for IPv6, its /64:
        :func:`~qadom.contact.host_key`) hold here."""
        return self._by_host.get(host_key(host), 0)

    def __len__(self) -> int:
        return len(self._topics)

    def _live(self, topic: int, now: float) -> dict[Address, float] | None:
        subscribers = self._topics.get(topic)
        if subscribers is None:
            return None
        lapsed = [a for a, until in subscribers.items() if until <= now]
        for address in lapsed:
            self._drop(topic, subscribers, address)
        return self._topics.get(topic)

    def _drop(self, topic: int, subscribers: dict[Address, float], address: Address) -> None:
        """Forget one subscription, keeping the per-host counts exact."""
        del subscribers[address]
        host = host_key(address[0])
        for counts in (self._by_topic_host[topic], self._by_host):
            left = counts[host] - 1
            if left:
                counts[host] = left
            else:
                del counts[host]
        if not subscribers:
            del self._topics[topic], self._by_topic_host[topic]


class StreamTable:
    """A relay's publisher streams: per topic, which address publishes on which stream.

    A stream is *kept* from the first PUBLISH on it the relay accepts until ``lifetime`` seconds
    after the last one. While kept it belongs to the address that opened it: :meth:`check`
    answers :attr:`TAKEN` to any other address, so a stream id learnt by subscribing cannot be
    used to cut into another publisher's sequence. One address keeps at most ``per_publisher``
    streams per topic (:attr:`TOO_MANY`), and a stream is forgotten only after ``lifetime`` of
    silence, so every stream of a topic one address published on here in the last ``lifetime``
    seconds is still kept: at most ``per_publisher`` of them.

    Bounds: at most ``max_streams`` kept streams in all, of which one host (all its ports
    together) holds at most ``max_per_host`` (:attr:`HOST_TOO_MANY`). When ``max_streams`` are
    kept, opening another forgets the least recently used one (whose address may then open
    another, as the rate limiter hands a forgotten sender a fresh burst): only many hosts
    together can make the table forget a stream that is in use.

    :meth:`check` decides without changing anything kept (it only drops what has lapsed);
    :meth:`record` then takes a message that passed it. Times must not go backwards.
    """

    OK = 0
    TOO_MANY = 1
    """The address keeps ``per_publisher`` streams of this topic already."""
    HOST_TOO_MANY = 2
    """The address's host keeps ``max_per_host`` streams already."""
    TAKEN = 3
    """The stream is kept for another address."""

    def __init__(self, per_publisher: int, lifetime: float, max_streams: int, *,
                 max_per_host: int | None = None) -> None:
        self.per_publisher = per_publisher
        self.lifetime = lifetime
        self.max_streams = max_streams
        self.max_per_host = max_per_host
        # (topic, stream) -> (owner, time of its last message, the highest seq taken, which of
        # the RECENT seqs up to it were taken: bit i for highest - i), least recently used
        # first: the lapsed are always at the front.
        self._streams: OrderedDict[tuple[int, int], tuple[Address, float, int, int]] = (
            OrderedDict())
        self._opened: dict[tuple[int, Address], int] = {}  # kept streams per (topic, owner)
        self._by_host: dict[str, int] = {}  # kept streams per owner host, all topics

    def check(self, topic: int, stream: int, publisher: Address, now: float) -> int:
        """May ``publisher`` publish on ``stream`` of ``topic`` now? ``OK`` or why not."""
        self.expire(now)
        kept = self._streams.get((topic, stream))
        if kept is not None:
            return self.OK if kept[0] == publisher else self.TAKEN
        if self._opened.get((topic, publisher), 0) >= self.per_publisher:
            return self.TOO_MANY
        if self.max_per_host is not None and (
                self._by_host.get(host_key(publisher[0]), 0) >= self.max_per_host):
            return self.HOST_TOO_MANY
        return self.OK

    def taken(self, topic: int, stream: int, seq: int) -> bool:
        """Whether message ``seq`` of a kept stream was taken, if it is within :data:`RECENT`
        of the highest seq taken: a resend of a PUBLISH whose answer was lost or late (its owner
        never sends a seq twice otherwise)."""
        kept = self._streams.get((topic, stream))
        if kept is None:
            return False
        behind = kept[2] - seq
        return 0 <= behind < RECENT and bool(kept[3] >> behind & 1)

    def record(self, topic: int, stream: int, publisher: Address, now: float,
               seq: int = -1) -> None:
        """Take message ``seq`` that :meth:`check` allowed: open the stream or renew it."""
        key = (topic, stream)
        streams = self._streams
        kept = streams.get(key)
        if kept is not None:
            streams.move_to_end(key)
            highest, taken = kept[2], kept[3]
        else:
            if len(streams) >= self.max_streams:
                (old_topic, _), (old_owner, *_) = streams.popitem(last=False)
                self._release(old_topic, old_owner)
            mine = (topic, publisher)
            self._opened[mine] = self._opened.get(mine, 0) + 1
            host = host_key(publisher[0])
            self._by_host[host] = self._by_host.get(host, 0) + 1
            highest, taken = seq, 0
        if seq > highest:
            # Never shift by more than the window: a seq may jump by up to 2**64.
            ahead = seq - highest
            taken = (taken << ahead) & _WINDOW if ahead < RECENT else 0
            highest = seq
        behind = highest - seq
        if behind < RECENT:
            taken |= 1 << behind
        streams[key] = (publisher, now, highest, taken)

    def expire(self, now: float) -> int:
        """Forget every stream silent for ``lifetime``; returns how many."""
        streams = self._streams
        forgotten = 0
        while streams:
            key, (owner, last, *_) = next(iter(streams.items()))
            if last + self.lifetime > now:
                break
            del streams[key]
            self._release(key[0], owner)
            forgotten += 1
        return forgotten

    def opened_by(self, topic: int, publisher: Address) -> int:
        """How many streams of ``topic`` are kept for ``publisher``."""
        return self._opened.get((topic, publisher), 0)

    def held_by(self, host: str) -> int:
        """How many streams (all topics) are kept for the addresses of ``host`` (for IPv6, its
        /64)."""
        return self._by_host.get(host_key(host), 0)

    def entries(self) -> list[tuple[int, int, Address, float]]:
        """Every kept stream as ``(topic, stream, owner, last message)``, least recently used
        first (for inspection)."""
        return [(topic, stream, owner, last)
                for (topic, stream), (owner, last, *_) in self._streams.items()]

    def __len__(self) -> int:
        return len(self._streams)

    def _release(self, topic: int, owner: Address) -> None:
        """One stream of ``owner`` in ``topic`` is no longer kept: keep the counts exact."""
        mine = (topic, owner)
        left = self._opened[mine] - 1
        if left:
            self._opened[mine] = left
        else:
            del self._opened[mine]
        host = host_key(owner[0])
        left = self._by_host[host] - 1
        if left:
            self._by_host[host] = left
        else:
            del self._by_host[host]


class _Stream:
    __slots__ = ("heard", "held", "held_bytes", "next_seq", "started")

    def __init__(self, now: float) -> None:
        self.next_seq = 0
        # The messages held behind a gap, seq -> (message, when it came), in the order they
        # came: the first is the one that has waited longest.
        self.held: OrderedDict[int, tuple[bytes, float]] = OrderedDict()
        self.held_bytes = 0  # the length of the messages in ``held``
        self.started = False  # something was passed on (gaps before that were never ours)
        self.heard = now  # when the last copy of any of its messages came

    def waiting_since(self) -> float:
        """When the message held longest came (only while some is held)."""
        return next(iter(self.held.values()))[1]


class Inbox:
    """A subscriber's duplicate suppression and per-publisher ordering.

    Each publisher stream is tracked by the next sequence number it expects, 0 for a stream not
    heard before (streams start at 0). A message below it, or already held, is a duplicate and
    dropped. The expected one is passed on at once with any held successors. One above it is held
    behind the gap. Once a held message has waited ``reorder_timeout`` since it came, every gap
    before it is given up, and with more than ``max_held`` held the lowest gap is: delivery
    resumes at the lowest held message. So no message waits longer than ``reorder_timeout``,
    however many gaps come before it (a publisher over its rate leaves one before most messages
    a relay took from it). A subscriber that joins a stream midway gets its first message after
    ``reorder_timeout``, and a stream's first messages overtaking each other still come out in
    order. The messages held by all streams together never exceed ``max_held_bytes``: past it,
    the stream holding the most gives up its gap at once (so a publisher that sends only out of
    order costs the others nothing).

    At most ``max_streams`` streams are tracked. A new stream takes the place of the least recently
    heard one, but never of one heard within ``guard`` seconds or holding messages (a stream silent
    for ``guard`` gives up all its gaps at :meth:`expire`, so holds none). With ``guard`` at least
    the copy window (:attr:`~qadom.config.Config.pubsub_copy_window`), a copy of a message already
    passed on always finds its stream still tracked, however many other streams come in between:
    **no message is passed on twice**. While every tracked stream was heard within ``guard``, a
    message of an untracked stream is dropped instead (counted in ``overflowed``); nothing of it was
    passed on, so a later copy, once there is room, is passed on once.
    """

    def __init__(self, reorder_timeout: float, max_held: int, max_streams: int, *,
                 guard: float, max_held_bytes: int) -> None:
        self.reorder_timeout = reorder_timeout
        self.max_held = max_held
        self.max_held_bytes = max_held_bytes
        self.held_bytes = 0  # held by all streams
        self.max_streams = max_streams
        self.guard = guard
        self._streams: OrderedDict[int, _Stream] = OrderedDict()  # least recently heard first
        self.duplicates = 0
        self.skipped = 0  # messages never received, given up behind gaps
        self.overflowed = 0  # messages of untracked streams dropped, no room for their stream

    def accept(self, stream_id: int, seq: int, value: bytes, now: float) -> list[bytes]:
        """Take one received copy; returns the messages to pass on now, in order."""
        streams = self._streams
        stream = streams.get(stream_id)
        if stream is None:
            if len(streams) >= self.max_streams and not self._forget_oldest(now):
                self.overflowed += 1
                return []
            stream = streams[stream_id] = _Stream(now)
        else:
            streams.move_to_end(stream_id)
            stream.heard = now
        if seq < stream.next_seq or seq in stream.held:
            self.duplicates += 1
            return []
        if seq > stream.next_seq:
            stream.held[seq] = (value, now)
            stream.held_bytes += len(value)
            self.held_bytes += len(value)
            released: list[bytes] = []
            if len(stream.held) > self.max_held:
                released.extend(self._skip(stream))
            # Also after that skip: it may release a few bytes only, behind one gap.
            if self.held_bytes > self.max_held_bytes:
                released.extend(self._make_room())
            return released
        stream.next_seq += 1
        stream.started = True
        out = [value]
        out.extend(self._drain(stream))
        return out

    def __len__(self) -> int:
        """How many streams are tracked."""
        return len(self._streams)

    def forget_idle(self, now: float, idle: float) -> int:
        """Forget the streams holding no message and not heard for ``idle`` seconds, least
        recently heard first, stopping at the first that must stay; returns how many.

        With ``idle`` at least the copy window plus the longest silence after which a publisher
        still goes on with a stream (see :meth:`PubSubService.forget_old`), nothing an honest
        publisher sends can find such a stream's entry of use: every copy of a message it passed
        on, or gave up behind a gap, has come by then, so no duplicate can come to be dropped;
        and a later message of the stream cannot be the one it expects next (that one would
        have left within the silence), so it waits behind a gap for ``reorder_timeout`` and is
        passed on then, as the first message of a stream not tracked is."""
        streams = self._streams
        forgotten = 0
        while streams:
            stream_id, oldest = next(iter(streams.items()))
            if oldest.held or oldest.heard + idle > now:
                break
            del streams[stream_id]
            forgotten += 1
        return forgotten

    def _forget_oldest(self, now: float) -> bool:
        """Make room by forgetting the least recently heard stream, if it may be forgotten."""
        stream_id, oldest = next(iter(self._streams.items()))
        if oldest.held or oldest.heard + self.guard > now:
            return False
        del self._streams[stream_id]
        return True

    def expire(self, now: float) -> list[bytes]:
        """Give up every gap before a message held for ``reorder_timeout``, and every gap of a
        stream not heard for ``guard``; returns what that releases.

        A message held behind gaps waits ``reorder_timeout`` from when it came, however many
        gaps come before it: once it has, they are all given up at once. (Timing each gap from
        the release of the messages before it instead made every gap add a timeout to the wait
        of all the messages after it: a publisher over its rate, whose publishes refused by
        every relay each left a gap in its stream, as they were numbered before they left,
        reached its subscribers two messages a second, the rest held until the stream fell
        silent.) A stream silent for ``guard`` gives up all its gaps too: each message it misses
        was published before one it holds, so every copy of it would have come by then."""
        out: list[bytes] = []
        for stream in self._streams.values():
            # The same sums as next_deadline(), so a timer set for that deadline always finds
            # the gap due (``now - waiting_since`` could round below the timeout).
            silent = stream.heard + self.guard <= now
            while stream.held and (
                    silent or stream.waiting_since() + self.reorder_timeout <= now):
                out.extend(self._skip(stream))
        return out

    def next_deadline(self) -> float | None:
        """When the message held longest has waited ``reorder_timeout``, or a stream holding
        messages has been silent for ``guard`` (None: no gap)."""
        due = [min(s.waiting_since() + self.reorder_timeout, s.heard + self.guard)
               for s in self._streams.values() if s.held]
        return min(due) if due else None

    def _make_room(self) -> list[bytes]:
        """Give up gaps, the stream holding the most first, until ``max_held_bytes`` holds."""
        out: list[bytes] = []
        while self.held_bytes > self.max_held_bytes:
            fullest = max(self._streams.values(), key=lambda s: s.held_bytes)
            out.extend(self._skip(fullest))
        return out

    def _skip(self, stream: _Stream) -> list[bytes]:
        """Give up the gap before the lowest held message: release it and its successors."""
        first = min(stream.held)
        if stream.started:
            self.skipped += first - stream.next_seq
        stream.next_seq = first
        return self._drain(stream)

    def _drain(self, stream: _Stream) -> list[bytes]:
        out = []
        held = stream.held
        while stream.next_seq in held:
            value, _ = held.pop(stream.next_seq)
            stream.held_bytes -= len(value)
            self.held_bytes -= len(value)
            out.append(value)
            stream.next_seq += 1
        stream.started = True
        # A gap still open behind the released messages is due when the message held longest
        # behind it (or behind a later gap) has waited reorder_timeout since it came: timed
        # from now instead, each gap would add a timeout to the wait of every message after it.
        return out


# ============================================================================= the service


class _Topic:
    """Our own subscription to one topic: local listeners, relays, inbox, renewal state."""

    __slots__ = ("closed", "ended", "gap_timer", "generation", "inbox", "interval", "key",
                 "listeners", "looking", "registered", "relays", "retry", "waiting")

    def __init__(self, key: int, inbox: Inbox, interval: float) -> None:
        self.key = key
        self.listeners: list[Listener] = []
        # relay address -> (relay id, when the lease it last confirmed ends, the round that sent
        # it our latest Subscribe); an entry is made when a Subscribe is sent (ending then: a
        # relay new this round holds no lease of ours until it answers), so a delivery racing
        # the Subscribed reply is accepted. Rounds overlap (see PubSubService.subscribe): only
        # the answer to the latest Subscribe a relay was sent changes its entry.
        self.relays: dict[Address, tuple[int, float, int]] = {}
        self.inbox = inbox
        self.generation = 0
        self.interval = interval  # between renewals, as the last round set it
        self.looking = 0.0  # how long the lookup of the latest round took
        self.retry = 0.0  # the delay of the next early round (0: the last round was not early)
        self.registered = False  # the first registration round is over
        self.waiting: list[Call[int]] = []
        self.gap_timer: float | None = None
        self.closed = False
        # Done once the topic is closed (its last listener gone): its lookups stop asking then,
        # a first registration's as a renewal's (see Node.run_lookup).
        self.ended: Call[None] = Call("subscription")


class _Batch:
    """Messages published to one topic while one lookup of its relays was under way: they wait
    for it and leave together, in order. ``lookup``, the call that lookup runs for, is done once
    every message of the batch has its call done (each caller stopped waiting, or the deadlines
    passed): the lookup then asks nobody more, and the messages go to the closest peers it had
    found (a write is not undone)."""

    __slots__ = ("found", "lookup", "messages", "waiting")

    def __init__(self) -> None:
        self.lookup: Call[None] = Call("publish")
        self.messages: list[tuple[bytes, Call[int]]] = []
        self.waiting = 0  # the calls of ``messages`` not done yet
        self.found: Lookup | None = None  # the lookup, once it has ended


class _Outbox:
    """Our publications to one topic: the stream id, the next seq, when messages last left, and
    the batches of messages waiting for lookups of the topic's relays, oldest first (none
    exactly while no lookup is under way; messages are numbered when they leave). A batch
    leaves only once every batch before it has, so messages are numbered and sent in the order
    they were published, even when a later lookup ends first."""

    __slots__ = ("batches", "next_seq", "sent", "stream", "switched")

    def __init__(self, stream: int) -> None:
        self.stream = stream
        self.next_seq = 0
        self.sent = 0.0
        self.switched: float | None = None  # when a STREAM_TAKEN last moved us to a new stream
        self.batches: deque[_Batch] = deque()

    def new_stream(self, stream: int) -> None:
        """Go on with stream ``stream`` from seq 0 (messages already numbered keep theirs)."""
        self.stream = stream
        self.next_seq = 0


class SubscriptionHandle:
    """One local subscriber's hold on a topic; :meth:`close` ends it (unsubscribing from the
    relays when it was the last one on this node)."""

    def __init__(self, service: PubSubService, key: int, listener: Listener,
                 call: Call[int]) -> None:
        self.key = key
        self._service = service
        self._listener = listener
        self._call = call  # the first registration, failed if it is closed before that is over
        self.closed = False

    def close(self, now: float) -> None:
        if not self.closed:
            self.closed = True
            self._service._remove_listener(self.key, self._listener, self._call, now)


class PubSubService:
    """Publish/subscribe on one :class:`~qadom.node.Node` (``node.pubsub``): the relay role for
    the topics it is close to, and its own subscriptions and publications.

    ``node.stats`` counts ``pubsub_published`` (messages relayed), ``pubsub_forwarded`` (deliveries
    sent), ``pubsub_resent`` (resent PUBLISHes answered again, not forwarded again, see
    :data:`RECENT`), ``pubsub_received`` (messages passed to local listeners),
    ``pubsub_duplicates``, ``pubsub_rate_limited``, ``pubsub_too_many_streams`` and
    ``pubsub_stream_taken`` (publishes refused for their stream), ``pubsub_inbox_full`` (messages
    of untracked streams dropped, see :class:`Inbox`), ``pubsub_refused`` (subscriptions
    refused), ``pubsub_lost_subscribers`` (dropped after ``pubsub_silent_deliveries``
    DELIVERs in a row went unanswered), ``pubsub_delivery_refused`` (dropped for answering a
    DELIVER with an ERROR), ``pubsub_delivery_rate_limited`` (DELIVERs a subscriber's node
    refused as over its request rate: it is not dropped for that), ``pubsub_rounds``
    (registration rounds) and ``pubsub_subscribed_again`` (SUBSCRIBEs sent again to a relay after
    an UNSUBSCRIBE of an earlier subscription to the topic, see :meth:`_unsubscribe`).
    """

    def __init__(self, node: Node) -> None:
        self.node = node
        cfg = node.config
        self.relay = RelayTable(
            cfg.pubsub_max_topics, cfg.pubsub_max_subscribers, cfg.pubsub_max_lease,
            max_per_host=max(1, cfg.pubsub_max_topics // HOST_SHARE),
            max_per_host_topic=max(1, cfg.pubsub_max_subscribers // HOST_SHARE))
        # (topic, subscriber) -> (unanswered DELIVERs to it counted in a row, when the last of
        # them failed), for those with some; as many as the relay keeps topics, the longest
        # silent forgotten first. A SUBSCRIBE or UNSUBSCRIBE from the subscriber, or an answer
        # to any DELIVER, clears its count.
        self._silent: dict[tuple[int, Address], tuple[int, float]] = {}
        # The longest a request takes to fail: each of its 1 + rpc_retries attempts waits at
        # most rpc_timeout_max. So a DELIVER that fails this long after another one failed was
        # sent after that one had failed (see _on_delivered).
        self._request_lifetime = (1 + cfg.rpc_retries) * cfg.rpc_timeout_max
        self.limiter: RateLimiter[Address] = RateLimiter(cfg.pubsub_rate, cfg.pubsub_burst,
                                                         cfg.pubsub_max_senders)
        self.streams = StreamTable(
            cfg.pubsub_streams_per_publisher, cfg.pubsub_stream_lifetime, cfg.pubsub_max_streams,
            max_per_host=max(cfg.pubsub_streams_per_publisher,
                             cfg.pubsub_max_streams // HOST_SHARE))
        self._topics: dict[int, _Topic] = {}
        # Publisher side, per topic, the topic published to last at the end; at most
        # pubsub_max_topics, and one silent for _stream_idle is forgotten (forget_old). A
        # forgotten topic gets a new stream id (so subscribers never mistake its restarted
        # numbers for duplicates).
        self._outboxes: OrderedDict[int, _Outbox] = OrderedDict()
        # A stream silent this long may be forgotten by relays before our next message reaches
        # them: they keep it pubsub_stream_lifetime after the last message they accepted, which
        # we sent before, and a PUBLISH arrives within one hop, half the copy window. The next
        # message then opens a new stream.
        self._stream_idle = cfg.pubsub_stream_lifetime - min(cfg.pubsub_copy_window / 2,
                                                             cfg.pubsub_stream_lifetime / 2)
        self._sweep_armed = False
        node.register_handler(Subscribe, self._handle_subscribe)
        node.require_proof(Subscribe)  # relays send to subscribers later: no spoofed sources
        node.register_handler(Unsubscribe, self._handle_unsubscribe)
        # A forged UNSUBSCRIBE would cut a subscriber off its relays; a forged PUBLISH would
        # have every relay deliver for a source that spends no rate budget of its own. The
        # subscriber and the publisher hold our tokens already (from SUBSCRIBE, from the lookup
        # of the topic), and a stale one only costs a CHALLENGE and a resend.
        node.require_proof(Unsubscribe)
        node.register_handler(Publish, self._handle_publish)
        node.require_proof(Publish)
        node.register_handler(Deliver, self._handle_deliver)
        # A subscriber takes a DELIVER for its relay's by its source address: a forged one would
        # pass on a forged message, and one far ahead in a publisher's stream would have the
        # publisher's next messages dropped as duplicates. A relay holds the subscriber's token
        # after its first DELIVER (a stale one costs a CHALLENGE and a resend).
        node.require_proof(Deliver)

    # ------------------------------------------------------------------ subscriber side

    def subscribe(self, key: int, listener: Listener,
                  now: float) -> tuple[SubscriptionHandle, Call[int]]:
        """Call ``listener(value)`` with each message published to ``key`` from now on. An
        exception ``listener`` raises is counted (``listener_errors``) and logged, its traceback
        at most once a minute per kind (as the node's own bugs, ``Node._log_bug``), and never
        keeps the message from the other listeners.

        Returns the handle (close it to unsubscribe) and a call that resolves, after the first
        registration round, to the number of relays that accepted (on a topic this node already
        follows: at once, to the relays holding its lease, or after a new round when none
        does); it fails with
        TooManySubscribers / RemoteError when every relay refused, NoPeersError when there is no
        peer to ask, RateLimited when the lookup of the relays was refused for our request rate
        (or most of the peers that did not answer it had just refused us for it),
        OperationTimeout when none answered, and SubscriptionClosed, at once, when
        the handle is closed before. The subscription keeps renewing until closed, whatever the
        first round gave.
        """
        check_id(key)
        call: Call[int] = self.node.new_call("subscribe", now)
        handle = SubscriptionHandle(self, key, listener, call)
        topic = self._topics.get(key)
        if topic is None:
            cfg = self.node.config
            topic = self._topics[key] = _Topic(key, Inbox(
                cfg.pubsub_reorder_timeout, cfg.pubsub_reorder_buffer, cfg.pubsub_max_publishers,
                guard=cfg.pubsub_copy_window, max_held_bytes=cfg.pubsub_reorder_bytes),
                cfg.pubsub_lease / cfg.pubsub_renewals)
            topic.listeners.append(listener)
            topic.waiting.append(call)
            self._register(topic, now)
        else:
            topic.listeners.append(listener)
            live = sum(1 for _, until, _ in topic.relays.values() if until > now)
            if topic.registered and live:
                call.resolve(live)
            else:
                topic.waiting.append(call)
                if topic.registered:
                    # No relay holds the topic's subscription now (they died, or refused the
                    # last rounds): register again at once, and enter (or fail) as a first
                    # subscription would.
                    topic.registered = False
                    self._register(topic, now)
        return handle, call

    def relays_of(self, key: int) -> list[Contact]:
        """The relays our subscription to ``key`` is registered at, or may still be (a relay
        that did not confirm the latest round is kept a while, see :meth:`_keeps`), and those
        a round under way is asking (for inspection)."""
        topic = self._topics.get(key)
        if topic is None:
            return []
        return [Contact(node_id, address) for address, (node_id, _, _) in topic.relays.items()]

    def _register(self, topic: _Topic, now: float) -> None:
        """One registration round: look up the k closest to the topic and (re)subscribe at each.

        The relays are then these k closest, and those of earlier rounds that did not confirm
        this one but still hold the lease they confirmed last (:meth:`_keeps`): under loss a
        lookup misses a relay, or a SUBSCRIBED is lost, far more often than a relay leaves, and
        one we stopped counting would be answered NOT_SUBSCRIBED at its next delivery and drop
        us while it still holds us.

        A round started while an earlier one's SUBSCRIBEs are out supersedes it: an answer to
        the earlier round never makes a relay ours again that this one dropped, and whether a
        relay both asked stays is decided by this round's answer alone (a SUBSCRIBED to the
        earlier one may still lengthen the lease we count it holding)."""
        topic.generation += 1
        generation = topic.generation
        node = self.node
        node.stats["pubsub_rounds"] += 1
        lease = node.config.pubsub_lease
        lease_ms = max(1, round(lease * 1000))
        started = now

        def send_all(found: Lookup, now: float) -> None:
            if topic.closed or topic.generation != generation:
                return
            topic.looking = now - started
            closest = found.closest()
            previous = topic.relays
            # A relay new this round holds no lease of ours until it answers SUBSCRIBED. Each is
            # sent this round's SUBSCRIBE: an answer to an earlier one no longer speaks for it.
            topic.relays = {}
            for c in closest:
                node_id, until, _ = previous.get(c.address, (c.id, now, generation))
                topic.relays[c.address] = (node_id, until, generation)
            # One of an earlier round that is not among them stays while it may hold us, unless
            # a closer peer overtook it: the lookup found k peers all closer to the topic. A relay
            # that is no longer ours gets NOT_SUBSCRIBED for its next delivery and forgets us.
            farthest = (max(c.id ^ topic.key for c in closest)
                        if len(closest) >= node.config.k else None)
            for address, (node_id, until, asked) in previous.items():
                if address not in topic.relays and self._keeps(topic, until, now) and (
                        farthest is None or node_id ^ topic.key < farthest):
                    topic.relays[address] = (node_id, until, asked)
            if not closest:
                self._round_over(topic, generation, 0, [], 0, 0, now,
                                 unreached=node.unreached(found))
                return
            left = [len(closest)]
            accepted = [0]
            failed = [0]
            refusals: list[Error] = []
            grants: list[float] = []  # the leases the relays granted this round

            def on_reply(contact: Contact, envelope: Envelope | None, now: float) -> None:
                reply = None if envelope is None else envelope.message
                if topic.closed:
                    if isinstance(reply, Subscribed) and topic.key not in self._topics:
                        # Closed while this SUBSCRIBE was out: our UNSUBSCRIBE may have reached
                        # the relay first, so say it again now that the relay has us. Not once
                        # the topic is subscribed to again: the relay holds that subscription.
                        self._unsubscribe(topic.key, contact.address, contact.id, now)
                    return
                # Rounds overlap (a subscription to a topic no relay holds starts one while a
                # renewal's SUBSCRIBEs are still out, see subscribe). An answer changes nothing
                # of a relay a later round dropped (or never used): that one gets NOT_SUBSCRIBED
                # at its next DELIVER and forgets us, as the round meant. Of a relay still ours
                # that a later round sent a SUBSCRIBE of its own, only the answer to that one
                # decides whether it stays, in whatever order the two answers come; a SUBSCRIBED
                # to the earlier one still tells how long it holds us.
                held = topic.relays.get(contact.address)
                if isinstance(reply, Subscribed):
                    accepted[0] += 1
                    grants.append(reply.lease_ms / 1000)
                    if held is not None:
                        until = now + reply.lease_ms / 1000
                        if held[2] != generation:
                            until = max(until, held[1])
                        topic.relays[contact.address] = (contact.id, until, held[2])
                elif isinstance(reply, Error):
                    if held is not None and held[2] == generation:
                        del topic.relays[contact.address]  # it holds no lease of ours
                    refusals.append(reply)
                else:
                    # No answer: the SUBSCRIBE or its SUBSCRIBED was lost, or the relay is gone.
                    # Lost is far likelier under loss, and then the relay holds us: it stays
                    # (its deliveries accepted) while the lease it confirmed last may hold us.
                    failed[0] += 1
                    if (held is not None and held[2] == generation
                            and not self._keeps(topic, held[1], now)):
                        del topic.relays[contact.address]
                left[0] -= 1
                if left[0] == 0:
                    self._round_over(topic, generation, accepted[0], refusals, failed[0],
                                     len(closest), now, median_low(grants) if grants else None)

            message = Subscribe(topic.key, lease_ms)
            for contact in closest:
                node.request(contact.address, message, now, expect_id=contact.id,
                             on_reply=partial(on_reply, contact))

        node.closest_lookup(topic.key, now, send_all, topic.ended)

    @staticmethod
    def _keeps(topic: _Topic, until: float, now: float) -> bool:
        """Whether a relay that did not confirm the latest round stays one of ours: while the
        lease it confirmed last (ending at ``until``) would still hold it when the next round's
        SUBSCRIBE reaches it, a renewal interval and a lookup as long as the latest one from
        now. So at the defaults a relay is kept through one round it did not confirm, and
        dropped at the second in a row (``pubsub_renewals``: two renewals in a row may be lost
        before a lease lapses): then its lease lapses before we can renew it, unless our
        SUBSCRIBEs reached it and only its answers were lost. A relay that never confirmed is
        not kept."""
        return until > now + topic.interval + topic.looking

    def _round_over(self, topic: _Topic, generation: int, accepted: int, refusals: list[Error],
                    failed: int, asked: int, now: float, granted: float | None = None, *,
                    unreached: QadomError | None = None) -> None:
        """A registration round ended: schedule the next, and answer the subscriptions waiting
        for their first. ``asked``: the relays the round sent SUBSCRIBE to; ``unreached``: why
        the round's lookup found no relay (Node.unreached), when it found none."""
        if topic.closed or topic.generation != generation:
            return
        cfg = self.node.config
        interval = cfg.pubsub_lease / cfg.pubsub_renewals
        if granted is not None and granted < cfg.pubsub_lease:
            # Relays granted less than we asked (their pubsub_max_lease is shorter): renew
            # pubsub_renewals times within the lease most of them granted, or we drop off them
            # between rounds. Not the shortest: one relay granting a millisecond must not make
            # us renew at every turn. Never more often than rpc_timeout_min.
            interval = max(granted / cfg.pubsub_renewals, min(interval, cfg.rpc_timeout_min))
        topic.interval = interval
        holding = sum(1 for _, until, _ in topic.relays.values() if until > now)
        if (failed and 2 * holding < asked) or (
                not (accepted or refusals) and len(self.node.table)):
            # Fewer than half the relays asked hold a lease of ours, some for not answering (or
            # the lookup reached nobody although we know peers): the dead are skipped by lookups
            # once they failed us a few times, so a lookup soon finds their successors among
            # the k closest. Register again before the next renewal: after rpc_timeout_min, then
            # twice as long at each early round in a row, up to a renewal interval. Not at once
            # after any silence: under loss most rounds miss an answer or two, and each early
            # round loses more (its failures also put live relays in the lookups' backoff).
            topic.retry = min(interval, max(cfg.rpc_timeout_min, 2 * topic.retry))
            interval = topic.retry
        else:
            topic.retry = 0.0
        self.node.schedule(now + interval, partial(self._renew, topic, generation))
        if not topic.registered:
            topic.registered = True
            waiting, topic.waiting = topic.waiting, []
            error: Exception | None = None
            if not accepted:
                if refusals:
                    self.node.stats["pubsub_refused"] += 1
                    error = _refusal(refusals[0], "subscription")
                elif failed:
                    error = OperationTimeout(f"no relay of topic 0x{topic.key:064x} answered")
                elif unreached is not None and not isinstance(unreached, NoPeersError):
                    error = unreached  # peers are known: they refused or did not answer
                else:
                    error = NoPeersError(f"no peer known to relay topic 0x{topic.key:064x}")
            for call in waiting:
                if error is None:
                    call.resolve(accepted)
                else:
                    call.fail(error)

    def _renew(self, topic: _Topic, generation: int, now: float) -> None:
        if not topic.closed and topic.generation == generation:
            self._register(topic, now)

    def _remove_listener(self, key: int, listener: Listener, call: Call[int],
                         now: float) -> None:
        # Closed while its first registration is under way: its own code ended it, which is
        # no network failure (NoPeersError, OperationTimeout) that a caller might retry. The
        # round goes on for the topic's other listeners, if any.
        call.fail(SubscriptionClosed("the subscription was closed before it was registered"))
        topic = self._topics.get(key)
        if topic is None:
            return
        if call in topic.waiting:
            topic.waiting.remove(call)
        if listener in topic.listeners:
            topic.listeners.remove(listener)
        if topic.listeners:
            return
        topic.closed = True
        topic.ended.resolve(None)  # its lookup under way stops asking
        del self._topics[key]
        for address, (node_id, _, _) in topic.relays.items():
            self._unsubscribe(key, address, node_id, now)
        # Each handle took its own call out as it closed; none should be left, but one left pending
        # would never end (the topic's rounds are over).
        for waiting in topic.waiting:
            waiting.fail(SubscriptionClosed("the subscription was closed before it was "
                                            "registered"))
        topic.waiting.clear()

    def _unsubscribe(self, key: int, address: Address, node_id: int, now: float) -> None:
        """Tell the relay at ``address`` we no longer follow ``key``.

        A relay cannot tell which of our subscriptions to a topic an UNSUBSCRIBE meant: one of
        a subscription we closed reaching it after the SUBSCRIBE of the next one (resent after
        a lost datagram, duplicated, or held up on the way) drops that one, which still counts
        the relay as its own and would hear nothing from it until its next round. So once the
        UNSUBSCRIBE is over, answered or not, and again once no datagram of it can still be on
        the way, a subscription to the topic that has asked that relay sends it SUBSCRIBE again
        (:meth:`_subscribe_again`)."""
        self.node.request(address, Unsubscribe(key), now, expect_id=node_id,
                          on_reply=partial(self._unsubscribe_over, key, address))

    def _unsubscribe_over(self, key: int, address: Address, envelope: Envelope | None,
                          now: float) -> None:
        """An UNSUBSCRIBE of ``key`` to ``address`` ended (see :meth:`_unsubscribe`). Every
        attempt of it has left by now, and a datagram is in transit for less than
        ``rpc_timeout_max`` (as :attr:`~qadom.config.Config.pubsub_copy_window` reasons): a
        SUBSCRIBE that leaves then reaches the relay after all of them."""
        self._subscribe_again(key, address, now)
        self.node.schedule(now + self.node.config.rpc_timeout_max,
                           partial(self._subscribe_again, key, address))

    def _subscribe_again(self, key: int, address: Address, now: float) -> None:
        """If our subscription to ``key`` has sent SUBSCRIBE to the relay at ``address`` (it
        is among its relays), send it another: an UNSUBSCRIBE of an earlier subscription may
        have reached the relay after that one. Its answer only tells how long the relay holds
        us, or, refused, that it does not (unless a later round asked it since)."""
        topic = self._topics.get(key)
        held = None if topic is None else topic.relays.get(address)
        if topic is None or held is None:
            return
        node_id, asked = held[0], held[2]
        node = self.node
        node.stats["pubsub_subscribed_again"] += 1

        def on_reply(envelope: Envelope | None, now: float) -> None:
            reply = None if envelope is None else envelope.message
            if topic.closed:
                if isinstance(reply, Subscribed) and key not in self._topics:
                    # Closed while this SUBSCRIBE was out: say UNSUBSCRIBE again, as a round's
                    # late SUBSCRIBED makes us do.
                    self._unsubscribe(key, address, node_id, now)
                return
            held = topic.relays.get(address)
            if held is None:
                return  # a later round dropped it: NOT_SUBSCRIBED at its next DELIVER
            if isinstance(reply, Subscribed):
                topic.relays[address] = (held[0], max(held[1], now + reply.lease_ms / 1000),
                                         held[2])
            elif isinstance(reply, Error) and held[2] == asked:
                del topic.relays[address]  # it holds no lease of ours

        lease_ms = max(1, round(node.config.pubsub_lease * 1000))
        node.request(address, Subscribe(key, lease_ms), now, expect_id=node_id,
                     on_reply=on_reply)

    def _receive(self, topic: _Topic, stream: int, seq: int, value: bytes, now: float) -> None:
        inbox = topic.inbox
        duplicates, overflowed = inbox.duplicates, inbox.overflowed
        ready = inbox.accept(stream, seq, value, now)
        stats = self.node.stats
        stats["pubsub_duplicates"] += inbox.duplicates - duplicates
        stats["pubsub_inbox_full"] += inbox.overflowed - overflowed
        self._emit(topic, ready, now)
        self._arm_gap_timer(topic)

    def _emit(self, topic: _Topic, values: list[bytes], now: float) -> None:
        for value in values:
            self.node.stats["pubsub_received"] += 1
            for listener in list(topic.listeners):
                try:
                    listener(value)
                except Exception:  # one listener's bug must not starve the others
                    # The caller's bug, not qadom's; run for every message a remote publishes,
                    # so its traceback is logged as bugs are: at most once a minute per kind.
                    self.node.stats["listener_errors"] += 1
                    self.node._log_bug(now, "a pubsub listener failed")

    def _arm_gap_timer(self, topic: _Topic) -> None:
        if topic.gap_timer is not None:
            return  # a gap opened since has a later deadline; the timer re-arms when it fires
        deadline = topic.inbox.next_deadline()
        if deadline is None:
            return
        topic.gap_timer = deadline
        self.node.schedule(deadline, partial(self._on_gap_timer, topic, deadline))

    def _on_gap_timer(self, topic: _Topic, deadline: float, now: float) -> None:
        if topic.closed or topic.gap_timer != deadline:
            return
        topic.gap_timer = None
        self._emit(topic, topic.inbox.expire(now), now)
        self._arm_gap_timer(topic)

    # ------------------------------------------------------------------ publisher side

    def publish(self, key: int, value: bytes, now: float) -> Call[int]:
        """Send ``value`` to the k closest peers to ``key`` for relaying; resolves to how many
        accepted it (at least one). Fails with RateLimited when every relay refused for our
        rate, with RemoteError when every relay refused for another reason, with
        OperationTimeout when no relay answered, and with NoPeersError when there is no peer to
        ask (as :meth:`subscribe` does).

        Messages to one topic leave in the order they were published: those published while a
        lookup of the topic is under way wait for it and go out together after it, in order, so
        concurrent publishes cannot overtake each other on their way to the relays. A publish
        given up (its call failed: cancelled, or past its deadline) still goes out, to the
        closest peers its lookup had found (a write is not undone), and before any published
        after it, which gets a lookup of its own once no publish waits for that one. They go out
        on a new stream after a silence relays may have forgotten ours in, or after a relay
        answered that it keeps ours for another address (at most once per
        ``pubsub_stream_lifetime`` unless every relay answered so, so one relay answering that
        falsely costs us that relay only; docs/PROTOCOL.md, "New streams").

        This node keeps what it needs to publish to a topic (its stream) for at most
        ``pubsub_max_topics`` topics: a publish to another topic forgets the one published to
        least recently among those with no message waiting for a lookup of their relays. When
        every one of them has one (publishes to ``pubsub_max_topics`` other topics are all still
        waiting for their lookups), it raises RateLimited at once, nothing sent: wait for some
        to be done. A topic silent for ``pubsub_stream_lifetime`` less one hop's longest time
        (56 s at the defaults) is forgotten too (:meth:`forget_old`): its next message would
        open a new stream anyway.
        """
        check_id(key)
        self.node.check_value(value)
        node = self.node
        outbox = self._outboxes.get(key)
        if outbox is None:
            if len(self._outboxes) >= node.config.pubsub_max_topics:
                idle = next((k for k, o in self._outboxes.items() if not o.batches), None)
                if idle is None:
                    raise RateLimited(ErrorCode.RATE_LIMITED, "publishing to "
                                      f"{len(self._outboxes)} topics at once; wait for some")
                del self._outboxes[idle]
            outbox = self._outboxes[key] = _Outbox(node.rng.getrandbits(64))
        else:
            self._outboxes.move_to_end(key)
        call: Call[int] = node.new_call("publish", now)
        batches = outbox.batches
        start = not batches or batches[-1].lookup.done
        if start:
            # No lookup under way, or the last one stopped: every publish it was for gave up
            # (cancelled, or past its deadline), and it asks nobody more. This one gets a lookup
            # of its own; those still leave when theirs ends, to the closest it had found, and
            # before this one.
            batches.append(_Batch())
        batch = batches[-1]
        batch.messages.append((value, call))
        batch.waiting += 1
        call.add_done_callback(partial(self._publish_done, batch))
        if start:
            node.closest_lookup(key, now, partial(self._lookup_over, key, outbox, batch),
                                batch.lookup)
        return call

    @staticmethod
    def _publish_done(batch: _Batch, _: Call[int]) -> None:
        """A publish's call is done: once none waiting for the batch's lookup is left, it stops
        asking."""
        if batch.found is None:  # else the lookup has ended
            batch.waiting -= 1
            if not batch.waiting:
                batch.lookup.resolve(None)

    def _lookup_over(self, key: int, outbox: _Outbox, batch: _Batch, found: Lookup,
                     now: float) -> None:
        """The lookup of ``batch`` has ended: send it, once every batch before it has left, and
        the later batches whose lookups ended already."""
        batch.found = found
        batches = outbox.batches
        while batches:
            ended = batches[0].found
            if ended is None:
                break
            self._send_batch(key, outbox, batches.popleft().messages, ended, now)

    def _send_batch(self, key: int, outbox: _Outbox, batch: list[tuple[bytes, Call[int]]],
                    found: Lookup, now: float) -> None:
        """Number the messages of one batch, in order, and send them to the closest peers its
        lookup found."""
        closest = found.closest()
        if not closest:  # nothing leaves, so nothing is numbered: subscribers see no gap
            # NoPeersError only when no peer is known: peers that refused the lookup for our
            # request rate (RateLimited) or did not answer it (OperationTimeout) are there.
            error = self.node.unreached(found)
            if isinstance(error, NoPeersError):
                error = NoPeersError(f"no peer known to relay topic 0x{key:064x}")
            for _, call in batch:
                call.fail(error)
            return
        if outbox.next_seq and now - outbox.sent >= self._stream_idle:
            # Relays may have forgotten our stream by the time these messages reach them, and
            # another address may have taken its id meanwhile: never publish on it again.
            outbox.new_stream(self.node.rng.getrandbits(64))
        outbox.sent = now
        # A lookup never returns the node that runs it, so when we are ourselves among the k
        # closest to the topic, subscribers registered here would get nothing from us: relay
        # our own messages as we relay everyone's (with k = 1 we may be the only relay).
        here = len(closest) < self.node.config.k or any(
            self.node.id ^ key < contact.id ^ key for contact in closest)
        for value, call in batch:
            message = Publish(key, outbox.stream, outbox.next_seq, value)
            outbox.next_seq += 1
            if here:
                self._forward(message, now)
            self._send_publish(outbox, message, call, closest, now)

    def _send_publish(self, outbox: _Outbox, message: Publish, call: Call[int],
                      closest: list[Contact], now: float) -> None:
        def done(replies: list[tuple[Contact, Message | None]], now: float) -> None:
            accepted = sum(1 for _, reply in replies if isinstance(reply, Published))
            refusals = [reply for _, reply in replies if isinstance(reply, Error)]
            if outbox.stream == message.stream and any(
                    r.code == ErrorCode.STREAM_TAKEN for r in refusals):
                # A relay keeps our stream for another address: ours changed, or someone took
                # the id where our messages had not reached. Go on with a stream of our own.
                # Each new stream takes one of our pubsub_streams_per_publisher at every relay
                # that accepts it, so a relay answering STREAM_TAKEN to everything (hostile or
                # broken) could make the others refuse us: move at most once per stream
                # lifetime, unless every relay said so (our address changed; nothing was
                # opened anywhere under it).
                everywhere = all(isinstance(reply, Error)
                                 and reply.code == ErrorCode.STREAM_TAKEN for _, reply in replies)
                if everywhere or outbox.switched is None or (
                        now - outbox.switched >= self.node.config.pubsub_stream_lifetime):
                    outbox.switched = now
                    outbox.new_stream(self.node.rng.getrandbits(64))
            if not accepted and refusals:
                call.fail(_refusal(refusals[0], "publish"))
            elif not accepted:
                call.fail(OperationTimeout(f"no relay of topic 0x{message.key:064x} answered"))
            else:
                call.resolve(accepted)

        self.node.ask_each(closest, message, now, done)

    # ------------------------------------------------------------------ relay side

    def _handle_subscribe(self, message: Subscribe, sender: int | None, address: Address,
                          now: float) -> Message:
        cfg = self.node.config
        status, granted = self.relay.subscribe(message.key, address, message.lease_ms / 1000,
                                               now)
        if status == RelayTable.TOO_MANY_SUBSCRIBERS:
            return Error(ErrorCode.TOO_MANY_SUBSCRIBERS,
                         f"topic has {cfg.pubsub_max_subscribers} subscribers here, the maximum")
        if status == RelayTable.TOO_MANY_TOPICS:
            return Error(ErrorCode.STORAGE_FULL,
                         f"relaying {cfg.pubsub_max_topics} topics already, the maximum")
        if status == RelayTable.HOST_TOO_MANY_SUBSCRIBERS:
            return Error(ErrorCode.TOO_MANY_SUBSCRIBERS,
                         f"your host holds {self.relay.max_per_host_topic} of this topic's "
                         "subscriptions here, the maximum for one host")
        if status == RelayTable.HOST_TOO_MANY_TOPICS:
            return Error(ErrorCode.STORAGE_FULL,
                         f"your host holds {self.relay.max_per_host} subscriptions here, the "
                         "maximum for one host")
        self._arm_sweep(now)
        # Silences of an earlier subscription (left or lapsed) are not this one's; a renewal
        # shows the subscriber is there.
        self._silent.pop((message.key, address), None)
        return Subscribed(max(1, int(granted * 1000)))

    def _handle_unsubscribe(self, message: Unsubscribe, sender: int | None, address: Address,
                            now: float) -> Message:
        self.relay.unsubscribe(message.key, address)
        self._silent.pop((message.key, address), None)
        return Unsubscribed()

    def _handle_publish(self, message: Publish, sender: int | None, address: Address,
                        now: float) -> Message:
        node = self.node
        cfg = node.config
        # The stream is checked before the rate, and kept only once both allow the message, so
        # a refused PUBLISH spends no token and changes nothing kept here.
        status = self.streams.check(message.key, message.stream, address, now)
        if status == StreamTable.TAKEN:
            node.stats["pubsub_stream_taken"] += 1
            return Error(ErrorCode.STREAM_TAKEN, "this stream belongs to another address here; "
                         "use one of your own")
        if status == StreamTable.TOO_MANY:
            node.stats["pubsub_too_many_streams"] += 1
            return Error(ErrorCode.TOO_MANY_STREAMS,
                         f"you have {cfg.pubsub_streams_per_publisher} streams of this topic "
                         f"here, the maximum; one is freed {cfg.pubsub_stream_lifetime:g} s "
                         "after its last message")
        if status == StreamTable.HOST_TOO_MANY:
            node.stats["pubsub_too_many_streams"] += 1
            return Error(ErrorCode.TOO_MANY_STREAMS,
                         f"your host has {self.streams.max_per_host} streams here, the maximum "
                         "for one host")
        if self.streams.taken(message.key, message.stream, message.seq):
            # A resend (our PUBLISHED was lost or late): answered again, forwarded once.
            node.stats["pubsub_resent"] += 1
            return Published(len(self.relay.subscribers(message.key, now)))
        if not self.limiter.allow(address, now):
            node.stats["pubsub_rate_limited"] += 1
            return Error(ErrorCode.RATE_LIMITED,
                         f"more than {cfg.pubsub_rate:g} messages per second "
                         f"(bursts of {cfg.pubsub_burst}) from this sender")
        self.streams.record(message.key, message.stream, address, now, message.seq)
        forwarded = self._forward(message, now)
        local = self._topics.get(message.key)
        if local is not None:
            self._receive(local, message.stream, message.seq, message.value, now)
        return Published(forwarded)

    def _forward(self, message: Publish, now: float) -> int:
        """Relay one message: a DELIVER to each live subscriber of its topic here; how many."""
        node = self.node
        node.stats["pubsub_published"] += 1
        targets = self.relay.subscribers(message.key, now)
        deliver = Deliver(message.key, message.stream, message.seq, message.value)
        for target in targets:
            node.stats["pubsub_forwarded"] += 1
            lease = self.relay.lease(message.key, target)
            node.request(target, deliver, now,
                         on_reply=partial(self._on_delivered, message.key, target, lease))
        return len(targets)

    def _on_delivered(self, key: int, target: Address, lease: float | None,
                      envelope: Envelope | None, now: float) -> None:
        """Stop forwarding to a subscriber before its lease lapses once it is no longer
        subscribed (an ERROR answer, but RATE_LIMITED: that one says "not so fast", not "not
        here") or gone (``pubsub_silent_deliveries`` DELIVERs in a row unanswered, each failed
        at least a request's longest lifetime after the one counted before it)."""
        silent, subscription, stats = self._silent, (key, target), self.node.stats
        if self.relay.lease(key, target) != lease:
            # The subscriber has subscribed (again) since this DELIVER left: what became of it
            # says nothing of that subscription. A NOT_SUBSCRIBED for it, overtaken on the way
            # by the SUBSCRIBE of a subscriber that left the topic and came back, would cut the
            # new subscription off here until its next renewal.
            return
        if envelope is None:
            count, last = silent.get(subscription, (0, 0.0))
            if count and now < last + self._request_lifetime:
                # Sent before the failure counted last was known (no request takes longer to
                # fail): lost to the same outage, or in the same burst, as that one. DELIVERs
                # out together fail together, so they are one piece of evidence, not several:
                # counting each would drop a subscriber cut off for a second, or sent a burst
                # it could not all answer, and it would lose every message until its next
                # renewal.
                return
            count += 1
            if count < self.node.config.pubsub_silent_deliveries:
                silent.pop(subscription, None)
                silent[subscription] = (count, now)  # the most recent last
                if len(silent) > self.node.config.pubsub_max_topics:
                    del silent[next(iter(silent))]
                return
            silent.pop(subscription, None)
            if self.relay.unsubscribe(key, target):
                stats["pubsub_lost_subscribers"] += 1
            return
        silent.pop(subscription, None)
        reply = envelope.message
        if not isinstance(reply, Error):
            return
        if reply.code == ErrorCode.RATE_LIMITED:
            # The subscriber is there and still subscribed: its node's request limit refused this
            # one DELIVER (several publishers, each within its pubsub_rate here, can together
            # send it more than that limit). That message is lost from us, but dropping the
            # subscriber would lose all the next ones, until its next renewal, without a word.
            stats["pubsub_delivery_rate_limited"] += 1
        elif self.relay.unsubscribe(key, target):
            stats["pubsub_delivery_refused"] += 1

    def _handle_deliver(self, message: Deliver, sender: int | None, address: Address,
                        now: float) -> Message:
        topic = self._topics.get(message.key)
        if topic is None or address not in topic.relays:
            return Error(ErrorCode.NOT_SUBSCRIBED, "not subscribed to this topic through you")
        self._receive(topic, message.stream, message.seq, message.value, now)
        return Delivered()

    def forget_old(self, now: float) -> None:
        """Forget bookkeeping that can no longer change an answer (called at the node's
        maintenance ticks): the publishers whose rate buckets have refilled (as good as never
        seen), and in each of our subscriptions' inboxes the streams silent for longer than
        anything of theirs can still arrive.

        A publisher starts a new stream after a silence of less than ``pubsub_stream_lifetime``
        (``_stream_idle``), and every copy of a message arrives within the copy window of its
        publish: a stream heard last ``pubsub_stream_lifetime + pubsub_copy_window`` ago will
        get neither a copy of what it had nor the message it expects next (see
        :meth:`Inbox.forget_idle`).

        It forgets too, as a relay, the streams silent for ``pubsub_stream_lifetime``
        (:meth:`StreamTable.expire`, which a PUBLISH would do first anyway), so a relay keeps a
        stream that long after its last message even when no PUBLISH comes after it. As a
        publisher, the topics whose stream its next message would leave (no message waiting for
        a lookup, none sent for ``_stream_idle``, see :meth:`publish`) and that no STREAM_TAKEN
        moved to a new stream within ``pubsub_stream_lifetime`` (which :meth:`publish`'s
        once-per-lifetime rule remembers): publishing to one again opens a new stream, as it
        would have. Streams and topics are each kept least recently used first and swept from
        the front, at a cost in proportion to what is forgotten."""
        self.limiter.sweep(now)
        cfg = self.node.config
        idle = cfg.pubsub_stream_lifetime + cfg.pubsub_copy_window
        for topic in self._topics.values():
            topic.inbox.forget_idle(now, idle)
        self.streams.expire(now)
        self._forget_idle_outboxes(now)

    def _forget_idle_outboxes(self, now: float) -> None:
        """Forget the outboxes :meth:`forget_old` says, from the least recently published to.
        Stops at the first still of use: those after it were published to later, so one is
        forgotten late by at most about a lookup's time (a stream lifetime after a
        STREAM_TAKEN)."""
        outboxes = self._outboxes
        lifetime = self.node.config.pubsub_stream_lifetime
        while outboxes:
            key, outbox = next(iter(outboxes.items()))
            if outbox.batches or now - outbox.sent < self._stream_idle or (
                    outbox.switched is not None and now - outbox.switched < lifetime):
                break
            del outboxes[key]

    def _arm_sweep(self, now: float) -> None:
        if not self._sweep_armed:
            self._sweep_armed = True
            self.node.schedule(now + self.node.config.pubsub_lease, self._sweep)

    def _sweep(self, now: float) -> None:
        """Drop lapsed leases even on topics nobody publishes to; re-armed while any remain."""
        self._sweep_armed = False
        self.relay.expire(now)
        # The counts of unanswered DELIVERs to subscriptions that lapsed can count for nothing
        # more (a new subscription starts afresh).
        silent, lease = self._silent, self.relay.lease
        for topic, address in [s for s in silent if lease(*s) is None]:
            del silent[topic, address]
        if len(self.relay):
            self._arm_sweep(now)


def _refusal(error: Error, what: str) -> RemoteError:
    """The error of a ``what`` every relay refused, ``error`` the first refusal: its reason (the
    relay's text) shortened and with any character that is not printable replaced."""
    reason = f"{what} refused by every relay: {printable(error.reason)}"
    if error.code == ErrorCode.RATE_LIMITED:
        return RateLimited(error.code, reason)
    if error.code == ErrorCode.TOO_MANY_SUBSCRIBERS:
        return TooManySubscribers(error.code, reason)
    return RemoteError(error.code, reason)
