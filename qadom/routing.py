"""The k-bucket routing table (Kademlia paper, sections 2.2, 2.4 and 4.1).

The table is a list of buckets that partition the id space into contiguous ranges ``[lo, hi)``; it
starts as one bucket covering everything. Each bucket holds at most ``k`` contacts in
least-recently-seen order (oldest first) plus a bounded *replacement cache* of verified contacts
waiting for a slot.

Invariants (checked by :meth:`RoutingTable.check_invariants` in the tests):

* the buckets' ranges are disjoint, sorted, and cover ``[0, 2**256)`` exactly;
* every range has a power-of-two width and is aligned to it (it is a subtree of the id trie);
* a contact sits in the one bucket whose range holds its id, at most once in the whole table, and
  never has our own id;
* no bucket holds more than ``k`` contacts, nor more than ``replacement_cache_size`` replacements
  (one, the newcomer that set off a ping-before-evict, when that is 0), and only a full bucket
  keeps replacements (a free slot, after a removal or a split, takes the newest one the diversity
  limits allow).

Only contacts that have *answered us from their address* may be passed to :meth:`seen`; the table
does not check that, the caller (:mod:`qadom.node`) does. When a bucket is full, :meth:`seen` splits
it if it may (it covers our own id; or its depth, the leading bits its ids share, is not a multiple
of ``split_bits``, the paper's b of section 4.2; or the paper's relaxed rule of section 2.4: the
newcomer would be among our k closest contacts) and otherwise parks the newcomer in the replacement
cache and names the bucket's least-recently-seen contact, which the caller pings and evicts only if
it does not answer (ping-before-evict: old contacts that stay up are preferred, section 2.2); a
bucket has one such ping under way at a time, and asks for another once the caller reports how the
last one ended. With ``replacement_cache_size`` 0 the newcomer still waits for that one ping, as in
the paper, and is dropped if the pinged contact answers.

Network diversity (not in the paper; discv5 and mainline DHT implementations do the same): a
contact from a public address is refused when its /24 (IPv4) or /64 (IPv6) network already has
``max_bucket_per_prefix`` contacts in its bucket or ``max_table_per_prefix`` in the table, so that
many ids on few networks cannot fill the table (an eclipse). A bucket's replacement cache counts
too: one network holds at most ``max_bucket_per_prefix`` (else ``max_table_per_prefix``) places
among a bucket's contacts and replacements together, and a newcomer from a network at that share
takes the place of its network's oldest replacement, so that one network cannot flush the
replacements of the others. Loopback, private and link-local addresses are not limited. Refused
contacts are counted in :attr:`RoutingTable.prefix_refused`. Invariant: the limits hold for every
bucket and the whole table.
"""

from __future__ import annotations

import bisect
import ipaddress
import math
from collections import Counter, OrderedDict
from collections.abc import Iterable, Iterator, Mapping

from .contact import GLOBAL, Address, Contact, address_scope, embedded_ipv4, ip_of
from .ids import ID_BITS, ID_SPACE

_PREFIXES: dict[str, str | None] = {}  # host -> network prefix (a bounded memo)
_PREFIXES_MAX = 65536


def range_depth(lo: int, hi: int) -> int:
    """How many leading bits all ids of ``[lo, hi)``, an aligned block (a bucket's range),
    share."""
    return 257 - (hi - lo).bit_length()


def subtree_pieces(lo: int, depth: int, split_bits: int) -> list[tuple[int, int]]:
    """The ranges in which a table with ``split_bits`` b keeps the subtree of the ids that
    share ``depth`` leading bits with ``lo``, when it lies off our id's path: its buckets split
    until their depth is a multiple of b (section 4.2), so 2 ** (-depth % b) ranges, lowest
    first."""
    extra = min(-depth % split_bits, ID_BITS - depth)
    width = 1 << (ID_BITS - depth - extra)
    start = lo >> (ID_BITS - depth) << (ID_BITS - depth)
    return [(a, a + width) for a in range(start, start + (width << extra), width)]


def range_distance(target: int, lo: int, hi: int) -> int:
    """The least XOR distance from ``target`` to an id of ``[lo, hi)``, an aligned block (a
    bucket's range): its ids' distances fill the block of the same width at that distance."""
    return (lo ^ target) & -(hi - lo)


def network_prefix(host: str) -> str | None:
    """The public network ``host`` belongs to, as the text of its /24 (IPv4) or /64 (IPv6); None
    for addresses that are not limited, being no GLOBAL ones (:func:`~qadom.contact.address_scope`:
    loopback, private, link-local, multicast...), or not IP literals. An IPv6 address that
    embeds the IPv4 address it reaches (NAT64, 6to4: :func:`~qadom.contact.embedded_ipv4`)
    belongs to that IPv4 address's network: one IPv4 address holds a whole 6to4 /48, and every
    NAT64 address shares one /64."""
    prefix = _PREFIXES.get(host, "")
    if prefix != "":
        return prefix
    address = ip_of(host)
    if address is None or address_scope(host) != GLOBAL:
        prefix = None
    else:
        if address.version == 6:
            assert isinstance(address, ipaddress.IPv6Address)
            address = embedded_ipv4(address) or address
        bits = 24 if address.version == 4 else 64
        prefix = str(ipaddress.ip_network(f"{address}/{bits}", strict=False))
    if len(_PREFIXES) >= _PREFIXES_MAX:
        _PREFIXES.clear()
    _PREFIXES[host] = prefix
    return prefix


_values = dict.values


class Bucket:
    """One k-bucket: contacts with ids in ``[lo, hi)``, least recently seen first."""

    __slots__ = ("answered_ping_at", "contacts", "failures", "hi", "last_lookup", "lo", "pinging",
                 "replacements")

    def __init__(self, lo: int, hi: int, last_lookup: float) -> None:
        self.lo = lo
        self.hi = hi
        self.contacts: OrderedDict[int, Contact] = OrderedDict()
        self.replacements: OrderedDict[int, Contact] = OrderedDict()
        self.failures: dict[int, int] = {}
        self.last_lookup = last_lookup
        self.pinging: int | None = None  # id of the contact under ping-before-evict, if any
        # When a ping-before-evict of this bucket was last answered (Node._saw): the caller's
        # clock, for Config.ping_before_evict_interval.
        self.answered_ping_at = -math.inf

    def covers(self, node_id: int) -> bool:
        return self.lo <= node_id < self.hi

    @property
    def depth(self) -> int:
        """How many leading bits all ids of this bucket share."""
        return range_depth(self.lo, self.hi)

    def least_recently_seen(self) -> Contact:
        return next(iter(self.contacts.values()))

    def __len__(self) -> int:
        return len(self.contacts)

    def __repr__(self) -> str:
        return f"<Bucket depth={self.depth} contacts={len(self.contacts)}>"


class RoutingTable:
    """The k-bucket table of the node whose id is ``own_id``. Pure: time is passed in."""

    def __init__(self, own_id: int, k: int = 20, replacement_cache_size: int = 20,
                 stale_failures: int = 3, now: float = 0.0, *, max_bucket_per_prefix: int = 0,
                 max_table_per_prefix: int = 0, split_bits: int = 1) -> None:
        self.own_id = own_id
        self.k = k
        self.split_bits = split_bits  # see Config.split_bits
        self.replacement_cache_size = replacement_cache_size
        self.stale_failures = stale_failures
        self.max_bucket_per_prefix = max_bucket_per_prefix  # 0: no limit
        self.max_table_per_prefix = max_table_per_prefix  # 0: no limit
        self.prefix_refused = 0  # contacts refused by the network diversity limits
        self.buckets: list[Bucket] = [Bucket(0, ID_SPACE, now)]
        self._los: list[int] = [0]
        self._size = 0
        self._per_prefix: dict[str, int] = {}  # contacts in the table per limited network

    # ------------------------------------------------------------------ queries

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[Contact]:
        for bucket in self.buckets:
            yield from bucket.contacts.values()

    def __contains__(self, node_id: object) -> bool:
        return isinstance(node_id, int) and node_id in self.bucket_for(node_id).contacts

    def get(self, node_id: int) -> Contact | None:
        return self.bucket_for(node_id).contacts.get(node_id)

    def bucket_for(self, node_id: int) -> Bucket:
        return self.buckets[bisect.bisect_right(self._los, node_id) - 1]

    def closest(self, target: int, count: int, exclude: int | None = None) -> list[Contact]:
        """The ``count`` contacts closest to ``target`` by XOR, closest first."""
        # A bucket is an aligned block of ids of width w, so the distances from ``target`` to its
        # ids fill exactly the block of width w starting at (lo ^ target) & -w, and the blocks of
        # two buckets never overlap. Taking whole buckets in the order of their blocks therefore
        # takes contacts nearest first: stop once ``count`` are in hand and sort only those.
        # (Same result as sorting the whole table: ids, hence distances, are all different.)
        if count <= 0:
            return []
        picked: list[Contact] = []
        # range_distance(target, b.lo, b.hi), inline: this runs for every FIND_NODE answered.
        for bucket in sorted(self.buckets, key=lambda b: (b.lo ^ target) & -(b.hi - b.lo)):
            contacts = bucket.contacts
            if contacts:
                # The bucket's contacts in the dict's own order (dict.values, not the ordered
                # dict's: that one looks every id up again, hashing it); sorted below anyway.
                if exclude in contacts:  # left out here, in the one bucket that can hold it
                    picked.extend([c for c in _values(contacts) if c.id != exclude])
                else:
                    picked.extend(_values(contacts))
                # Enough once ``count`` are in hand: mostly the first bucket taken holds exactly
                # k, and the next one is neither taken nor sorted.
                if len(picked) >= count:
                    break
        picked.sort(key=lambda c: c.id ^ target)
        del picked[count:]
        return picked

    def nearest(self, target: int) -> Contact | None:
        """The contact closest to ``target`` (``closest(target, 1)``, without sorting buckets
        when the bucket covering ``target`` has contacts, as it mostly has)."""
        bucket = self.bucket_for(target)
        if not bucket.contacts:
            found = self.closest(target, 1)
            return found[0] if found else None
        # A bucket's contacts are keyed by their ids: the nearest id, by a C-level key.
        contacts = bucket.contacts
        return contacts[min(contacts, key=target.__xor__)]

    def stale_buckets(self, now: float, interval: float) -> list[Bucket]:
        """Buckets with no lookup into their range for ``interval`` seconds (section 2.3)."""
        return [b for b in self.buckets if now - b.last_lookup >= interval]

    # ------------------------------------------------------------------ updates

    def touch(self, target: int, now: float) -> float:
        """Record a lookup for ``target``: its bucket needs no refresh for a while. Returns
        the bucket's previous lookup time, for :meth:`untouch`."""
        bucket = self.bucket_for(target)
        previous, bucket.last_lookup = bucket.last_lookup, now
        return previous

    def untouch(self, target: int, touched: float, previous: float) -> None:
        """Take back :meth:`touch` ``(target, touched)``, which returned ``previous``: the lookup
        for ``target`` stopped before it was done. Only if no later lookup touched the bucket
        meanwhile (its mark is still ``touched``)."""
        bucket = self.bucket_for(target)
        if bucket.last_lookup == touched:
            bucket.last_lookup = previous

    def seen(self, contact: Contact, entered: list[Contact] | None = None) -> Contact | None:
        """Record that ``contact`` answered us. Returns a contact to ping, or None.

        The contact is added (or moved to the most-recently-seen end). When its bucket is full and
        may not split, the contact goes to the replacement cache and the return value is the
        bucket's least-recently-seen contact, which the caller should ping, then report with
        :meth:`seen` (it answered), :meth:`failed` (it did not) or :meth:`kept` (its silence says
        nothing about it). Only one such ping per bucket is asked for at a time, until one of
        those reports (or the pinged contact's removal) ends it. A contact whose id is known at
        another address is ignored: the known one keeps its place until it fails.

        The contacts that entered the table are appended to ``entered``, when given, each once:
        ``contact`` if it was added, and the replacements that the halves of a split bucket took
        in (``contact`` among them, if it waited as one).
        """
        if contact.id == self.own_id:
            return None
        while True:
            bucket = self.bucket_for(contact.id)
            known = bucket.contacts.get(contact.id)
            if known is not None:
                if known.address == contact.address:
                    bucket.contacts.move_to_end(contact.id)
                    bucket.failures.pop(contact.id, None)
                    if bucket.pinging == contact.id:
                        bucket.pinging = None
                        if not self.replacement_cache_size:
                            # Without a cache, the newcomer waited only for this ping's outcome.
                            bucket.replacements.clear()
                return None
            if len(bucket.contacts) < self.k:
                if not self._diverse(bucket, contact.address[0]):
                    self.prefix_refused += 1
                    bucket.replacements.pop(contact.id, None)
                    return None
                bucket.replacements.pop(contact.id, None)
                self._put(bucket, contact)
                if entered is not None:
                    entered.append(contact)
                return None
            if self._may_split(bucket, contact.id):
                promoted = self._split(bucket)
                if entered is not None:
                    entered.extend(promoted)
                continue
            if not self._diverse(bucket, contact.address[0]):
                self.prefix_refused += 1
                return None
            self._add_replacement(bucket, contact)
            if bucket.pinging is None:
                oldest = bucket.least_recently_seen()
                bucket.pinging = oldest.id
                return oldest
            return None

    def kept(self, node_id: int) -> None:
        """The ping-before-evict of ``node_id`` (the contact :meth:`seen` named) ended with
        neither :meth:`seen` nor :meth:`failed` of it: its silence says nothing about it (the
        caller blames it on its own request rate). It keeps its place, as a contact that answers
        does (without a replacement cache the newcomer that waited for the ping is dropped), but
        neither moves to the most-recently-seen end nor has its failures forgotten, since it did
        not answer; its bucket may ask for another ping-before-evict. Nothing happens when
        ``node_id`` is not the contact its bucket is pinging (that ping ended already)."""
        bucket = self.bucket_for(node_id)
        if bucket.pinging == node_id:
            bucket.pinging = None
            if not self.replacement_cache_size:
                bucket.replacements.clear()

    def has_room_for(self, node_id: int, host: str | None = None) -> bool:
        """Whether the table would hold ``node_id`` after :meth:`seen` of it at ``host`` now
        (without ``host``, leaving the network diversity limits out for the newcomer itself):
        False for our own id, an id the table holds already, and a newcomer :meth:`seen` would
        only queue as a replacement or refuse. Exact: a full bucket that may split is split in
        simulation, with the replacements each half takes in, as :meth:`seen` would (one of them
        may be ``node_id`` itself); the table is not changed."""
        if node_id == self.own_id:
            return False
        bucket = self.bucket_for(node_id)
        if node_id in bucket.contacts:
            return False
        if len(bucket.contacts) < self.k:
            return host is None or self._diverse(bucket, host)
        return self._may_split(bucket, node_id) and self._room_after_splits(bucket, node_id, host)

    def failed(self, node_id: int) -> bool:
        """Record that ``node_id`` did not answer a request. Returns True if it was removed.

        It is removed at once when a replacement waits (which takes its place), or after
        ``stale_failures`` consecutive failures otherwise (section 4.1).
        """
        bucket = self.bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        if node_id not in bucket.contacts:
            return False
        if bucket.pinging == node_id:
            bucket.pinging = None
        count = bucket.failures.get(node_id, 0) + 1
        if bucket.replacements or count >= self.stale_failures:
            self.remove(node_id)
            return True
        bucket.failures[node_id] = count
        return False

    def remove(self, node_id: int) -> None:
        """Drop ``node_id`` (a failed or lying contact) and promote the newest replacement."""
        bucket = self.bucket_for(node_id)
        bucket.replacements.pop(node_id, None)
        gone = bucket.contacts.pop(node_id, None)
        if gone is None:
            return
        self._size -= 1
        prefix = network_prefix(gone.address[0]) if self._per_prefix else None
        if prefix is not None:
            left = self._per_prefix[prefix] - 1
            if left:
                self._per_prefix[prefix] = left
            else:
                del self._per_prefix[prefix]
        bucket.failures.pop(node_id, None)
        if bucket.pinging == node_id:
            bucket.pinging = None
        self._promote(bucket)

    def remove_address(self, address: Address) -> int:
        """Drop every contact and replacement at ``address`` (a liar's: ids are not bound to
        addresses, so it may hold several), the replacements first, so that none of them takes
        a slot the contacts free. Returns how many contacts were dropped."""
        for bucket in self.buckets:
            if bucket.replacements:
                for node_id in [i for i, c in bucket.replacements.items()
                                if c.address == address]:
                    del bucket.replacements[node_id]
        gone = [c.id for c in self if c.address == address]
        for node_id in gone:
            self.remove(node_id)
        return len(gone)

    # ------------------------------------------------------------------ internals

    def _promote(self, bucket: Bucket) -> list[Contact]:
        """Fill ``bucket``'s free slots from its replacement cache, newest first, with those the
        diversity limits allow (section 4.1): a bucket with room keeps nobody waiting. Those taken
        keep the order they were seen in: the newest ends most recently seen. Returns those
        taken."""
        taken: list[Contact] = []
        while bucket.replacements and len(bucket.contacts) < self.k:
            _, newest = bucket.replacements.popitem(last=True)
            if self._diverse(bucket, newest.address[0]):
                self._put(bucket, newest)
                taken.append(newest)
            else:
                self.prefix_refused += 1
        if len(taken) > 1:
            for contact in reversed(taken):  # oldest first to the most-recently-seen end
                bucket.contacts.move_to_end(contact.id)
        return taken

    def _put(self, bucket: Bucket, contact: Contact) -> None:
        """Add ``contact`` (known to be allowed) to ``bucket``, which has room."""
        bucket.contacts[contact.id] = contact
        self._size += 1
        if self.max_bucket_per_prefix or self.max_table_per_prefix:
            prefix = network_prefix(contact.address[0])
            if prefix is not None:
                self._per_prefix[prefix] = self._per_prefix.get(prefix, 0) + 1

    def _diverse(self, bucket: Bucket, host: str) -> bool:
        """Whether the network diversity limits let a contact at ``host`` into ``bucket``."""
        return self._allows(host, bucket.contacts.values(), self._per_prefix)

    def _allows(self, host: str, contacts: Iterable[Contact], counts: Mapping[str, int]) -> bool:
        """Whether the network diversity limits let a contact at ``host`` join ``contacts`` (a
        bucket's), with ``counts`` contacts per network in the whole table."""
        per_bucket, per_table = self.max_bucket_per_prefix, self.max_table_per_prefix
        if not per_bucket and not per_table:
            return True
        prefix = network_prefix(host)
        if prefix is None:
            return True
        if per_table and counts.get(prefix, 0) >= per_table:
            return False
        return not per_bucket or sum(1 for c in contacts
                                     if network_prefix(c.address[0]) == prefix) < per_bucket

    def _add_replacement(self, bucket: Bucket, contact: Contact) -> None:
        """Queue ``contact`` (allowed into ``bucket`` by :meth:`_diverse`) as the newest of
        ``bucket``'s replacements. Its network's share of the bucket counts the replacements too:
        at that share, the newcomer takes the place of its network's oldest replacement (there is
        one: the contacts alone are below the share, or :meth:`_diverse` refused it); else, with
        the cache full, of the oldest replacement. Without a cache, it waits alone, for the
        ping-before-evict it sets off (the paper's rule)."""
        replacements = bucket.replacements
        replacements.pop(contact.id, None)
        share = self.max_bucket_per_prefix or self.max_table_per_prefix
        prefix = network_prefix(contact.address[0]) if share else None
        if prefix is not None:
            queued = [i for i, c in replacements.items() if network_prefix(c.address[0]) == prefix]
            if queued:
                held = sum(1 for c in bucket.contacts.values()
                           if network_prefix(c.address[0]) == prefix)
                for node_id in queued[:held + len(queued) + 1 - share]:
                    del replacements[node_id]
        replacements[contact.id] = contact
        while len(replacements) > (self.replacement_cache_size or 1):
            replacements.popitem(last=False)

    def _may_split(self, bucket: Bucket, new_id: int) -> bool:
        if bucket.hi - bucket.lo < 2:
            return False
        if bucket.covers(self.own_id):
            return True
        if bucket.depth % self.split_bits:
            # Accelerated lookups (section 4.2): a bucket off our id's path splits until its
            # depth is a multiple of b, so that the table keeps k contacts in each subtree at
            # such a depth, and the first peers a lookup asks are up to b bits nearer the target.
            return True
        # Relaxed splitting (section 2.4): keep every contact of the subtree that holds our k
        # closest neighbours, so the table knows our own neighbourhood exactly. Split only if
        # fewer than k contacts are closer to us than the newcomer. As in closest(), each
        # bucket's distances from our id fill one block and blocks never overlap, so every
        # contact of a bucket whose block starts below this bucket's block is closer, every
        # contact of a bucket whose block starts above it is farther, and only this bucket's own
        # contacts need comparing one by one.
        own = self.own_id
        new_distance = new_id ^ own
        block = (bucket.lo ^ own) & -(bucket.hi - bucket.lo)
        closer = 0
        for other in self.buckets:
            if other is not bucket and (other.lo ^ own) & -(other.hi - other.lo) < block:
                closer += len(other.contacts)
        if closer >= self.k:  # the usual case far from us: no need to compare one by one
            return False
        for node_id in bucket.contacts:
            if node_id ^ own < new_distance:
                closer += 1
        return closer < self.k

    def _split(self, bucket: Bucket) -> list[Contact]:
        """Split ``bucket`` in halves; returns the replacements they took in (:meth:`_promote`)."""
        mid = (bucket.lo + bucket.hi) // 2
        low = Bucket(bucket.lo, mid, bucket.last_lookup)
        high = Bucket(mid, bucket.hi, bucket.last_lookup)
        for node_id, contact in bucket.contacts.items():
            (low if node_id < mid else high).contacts[node_id] = contact
        for node_id, contact in bucket.replacements.items():
            (low if node_id < mid else high).replacements[node_id] = contact
        for node_id, count in bucket.failures.items():
            (low if node_id < mid else high).failures[node_id] = count
        if bucket.pinging is not None:  # the ping under way goes on, in the pinged one's half
            (low if bucket.pinging < mid else high).pinging = bucket.pinging
        index = self.buckets.index(bucket)
        self.buckets[index:index + 1] = [low, high]
        self._los[index:index + 1] = [low.lo, high.lo]
        # A bucket full enough to keep replacements may split later (relaxed splitting): the
        # halves now have room, which the contacts waiting for it take.
        return self._promote(low) + self._promote(high)

    def _room_after_splits(self, bucket: Bucket, node_id: int, host: str | None) -> bool:
        """:meth:`has_room_for` ``node_id`` (at ``host``) when its full ``bucket`` may split
        for it: :meth:`_split` (with its promotions) and :meth:`_may_split` done on copies of the
        halves that would hold ``node_id``, until one has room or may split no more."""
        own, k = self.own_id, self.k
        lo, hi = bucket.lo, bucket.hi
        contacts = list(bucket.contacts.values())
        waiting = list(bucket.replacements.values())  # oldest first
        limited = bool(self.max_bucket_per_prefix or self.max_table_per_prefix)
        counts = dict(self._per_prefix) if limited else self._per_prefix  # as promotions change
        block = (lo ^ own) & -(hi - lo)
        closer = sum(len(other.contacts) for other in self.buckets
                     if other is not bucket and (other.lo ^ own) & -(other.hi - other.lo) < block)
        while True:
            mid = (lo + hi) // 2
            halves: list[tuple[int, int, list[Contact], list[Contact]]] = []
            for a, b in ((lo, mid), (mid, hi)):  # promoted low half first, as _split does
                half = [c for c in contacts if a <= c.id < b]
                queue = [c for c in waiting if a <= c.id < b]
                while queue and len(half) < k:
                    newest = queue.pop()
                    if self._allows(newest.address[0], half, counts):
                        half.append(newest)
                        prefix = network_prefix(newest.address[0]) if limited else None
                        if prefix is not None:
                            counts[prefix] = counts.get(prefix, 0) + 1
                halves.append((a, b, half, queue))
            (lo, hi, contacts, waiting), (s_lo, s_hi, sibling, _) = (
                halves if node_id < mid else halves[::-1])
            if (s_lo ^ own) & -(s_hi - s_lo) < (lo ^ own) & -(hi - lo):
                closer += len(sibling)
            if any(c.id == node_id for c in contacts):
                return True  # it waited as a replacement, and its half took it in
            if len(contacts) < k:
                return host is None or self._allows(host, contacts, counts)
            if hi - lo < 2:
                return False
            if not lo <= own < hi and not range_depth(lo, hi) % self.split_bits:
                # Neither our id's path nor a depth that is not a multiple of split_bits: the
                # relaxed rule, as in _may_split.
                distance = node_id ^ own
                if closer + sum(1 for c in contacts if c.id ^ own < distance) >= k:
                    return False

    def check_invariants(self) -> None:
        """Raise AssertionError if any invariant in the module docstring is broken."""
        expected_lo = 0
        total = 0
        seen_ids: set[int] = set()
        for bucket, lo in zip(self.buckets, self._los, strict=True):
            width = bucket.hi - bucket.lo
            assert bucket.lo == lo == expected_lo, "buckets must tile the id space"
            assert width > 0 and width & (width - 1) == 0, "width must be a power of two"
            assert bucket.lo % width == 0, "bucket must be aligned to its width"
            assert len(bucket.contacts) <= self.k
            assert len(bucket.replacements) <= (self.replacement_cache_size or (
                bucket.pinging is not None))
            for node_id, contact in bucket.contacts.items():
                assert contact.id == node_id and bucket.covers(node_id)
                assert node_id != self.own_id and node_id not in seen_ids
                seen_ids.add(node_id)
            for node_id in bucket.replacements:
                assert bucket.covers(node_id) and node_id not in bucket.contacts
            assert not bucket.replacements or len(bucket.contacts) == self.k, (
                "a bucket with room keeps no replacements")
            total += len(bucket.contacts)
            expected_lo = bucket.hi
            share = self.max_bucket_per_prefix or self.max_table_per_prefix
            if share:
                here = Counter(network_prefix(c.address[0]) for c in bucket.contacts.values())
                here.pop(None, None)
                assert max(here.values(), default=0) <= (self.max_bucket_per_prefix or share)
                here.update(network_prefix(c.address[0]) for c in bucket.replacements.values())
                here.pop(None, None)
                assert max(here.values(), default=0) <= share, "a network over its share"
        assert expected_lo == ID_SPACE and total == self._size
        if self.max_bucket_per_prefix or self.max_table_per_prefix:
            everywhere = Counter(network_prefix(c.address[0]) for c in self)
            everywhere.pop(None, None)
            assert dict(everywhere) == self._per_prefix, "per-network counts are off"
            if self.max_table_per_prefix:
                assert max(everywhere.values(), default=0) <= self.max_table_per_prefix
