"""A network simulator: many real :class:`~qadom.node.Node` objects on a virtual clock.

The simulator runs the real protocol core, not a model of it: every node is a
:class:`~qadom.node.Node`, and every datagram it sends is the real encoded bytes, delivered to the
destination's real decoder. Only the wire and the clock are simulated:

* a **virtual network** with a latency distribution (uniform ``(min, max)`` or any function of the
  random generator), a **loss** rate, **duplication** (a second copy with its own delay) and
  **reordering** (a datagram held back by an extra delay, so later ones overtake it);
* a **virtual clock** that jumps from one event to the next, so hours of protocol time cost only
  the work done in them;
* a **churn schedule**: nodes leaving (they stop sending and receiving, without notice) and new
  nodes joining through the real bootstrap, at virtual times drawn from the same seed.

Guarantee: every random choice (node ids, request ids, delays, losses, churn times and victims)
comes from one ``random.Random(seed)``, and nothing depends on wall time, object addresses or
hash order, so the same seed and the same calls give the same run, datagram for datagram, in any
process.

Measurements: :meth:`SimNetwork.lookup` runs one iterative lookup and returns a
:class:`LookupReport` (rounds, messages, virtual latency, and whether the true closest live nodes
were found, computed from the simulator's global view); :meth:`SimNetwork.table_fill` reports
each node's routing table.

Building large networks: joining nodes one by one through the real bootstrap costs about twenty
lookups per join. :meth:`SimNetwork.build` instead fills every routing table directly through the
real :meth:`~qadom.routing.RoutingTable.seen` rules from the true membership, as if each contact
shown had answered; see its docstring for exactly what that does and does not exercise.

Simulated addresses are ``127.x.y.z:4000`` strings; nothing here opens a socket.
"""

from __future__ import annotations

import bisect
import contextlib
import heapq
import math
import numbers
import operator
import random
import statistics
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from .call import Call
from .codec import Codec
from .config import Config
from .contact import Address, Contact
from .errors import InvalidArgument, InvalidType, NoPeersError, OperationTimeout, ProtocolError
from .events import (
    LookupEvent,
    LookupFinished,
    LookupReply,
    LookupRequest,
    LookupStarted,
    LookupTimeout,
)
from .ids import ID_BITS, check_id
from .messages import MESSAGE_TYPES, PROTOCOL_VERSION, FindNode, Ping
from .node import Node
from .routing import range_depth, subtree_pieces

T = TypeVar("T")
R = TypeVar("R")

Latency = tuple[float, float] | Callable[[random.Random], float]
"""One-way delay of a datagram: ``(min, max)`` seconds drawn uniformly (finite, ``0 <= min <=
max``), or a function that draws one delay from the simulator's generator (see
:func:`lognormal_latency`); each delay it draws must be a finite number of seconds >= 0, else the
send that drew it raises InvalidArgument naming the delay."""

_INF = math.inf

_DELIVER = 0
_TIMER = 1
_CHURN = 2


def lognormal_latency(median: float, sigma: float = 0.5,
                      cap: float = 1.0) -> Callable[[random.Random], float]:
    """A long-tailed delay distribution (as measured on wide-area paths): log-normal with the
    given median, capped at ``cap`` seconds. All three must be finite numbers (NaN is refused:
    it would make every delay NaN): InvalidType for anything else than a number (a bool is not
    one)."""
    median, sigma, cap = (_number("median", median), _number("sigma", sigma),
                          _number("cap", cap))
    if not (0 < median < math.inf and 0 <= sigma < math.inf and median <= cap < math.inf):
        raise InvalidArgument("need finite median > 0, sigma >= 0 and cap >= median")

    def draw(rng: random.Random) -> float:
        return min(cap, rng.lognormvariate(0.0, sigma) * median)

    return draw


@dataclass(frozen=True, slots=True)
class LookupReport:
    """What one simulated lookup did, and whether it found the truth.

    ``messages`` counts this lookup's datagrams at the origin while the lookup ran, and nothing
    else the origin sent or received meanwhile (its other operations, its maintenance, the
    requests it served): the lookup's requests (every attempt: retries, and a resend that proves
    the origin's address after a CHALLENGE) and every reply to them (a reply delivered twice
    counts twice, as the origin received it twice); the verification pings its requests provoked
    (a peer asked for the first time that has room for the origin in its table pings it back
    before adding it) and the origin's answers to them; and what the origin sent while handling
    one of those datagrams (a ping-before-evict when a peer that answered finds its bucket of the
    origin's table full, the origin's own ping to verify a peer that pinged it, the copies
    handed over to a new neighbour) with the replies to those requests. Replies are paired with
    requests by request id. Two things are told apart by what the datagram says alone, and may
    count a datagram that is not the lookup's: the lookup's own requests are the origin's
    FIND_NODE requests for its target (another operation of the origin's looking up the same id
    beside it would be counted too), and a verification is a PING from a peer the lookup asked
    (one that the origin's other requests to that peer, or that peer's own ping-before-evict,
    set off is counted too). What arrives after the lookup ended (replies to requests still in
    flight, late verification pings: about one datagram per lookup at 1 000 nodes) is not
    counted, nor are the further pings those verifications set off between other nodes; all
    show in :meth:`SimNetwork.stats`.
    ``true_closest`` and ``closest_found`` compare the lookup's result with the ``expected`` closest
    live nodes to the target (the origin excluded), known from the simulator's global view.
    A lookup whose operation failed before the lookup finished (``ok`` False: its deadline
    passed) reports what it did until then: ``rounds``, ``requests``, ``replies`` and
    ``failures`` are counted from its events up to the failure, ``latency`` runs to the failure,
    and the result it had not delivered counts as nothing found.
    """

    origin: Address
    target: int
    ok: bool  # the operation completed without an error
    rounds: int
    requests: int  # lookup requests sent (first attempts)
    replies: int
    # Requests that failed for good, and candidates left out without a request (an address of
    # the other IP family, banned or multicast); of a lookup its operation's deadline ended,
    # only the requests, as its events show them.
    failures: int
    messages: int
    latency: float  # virtual seconds from start to finish
    true_closest: bool  # the single closest live node is in the result
    closest_found: int  # how many of the expected closest live nodes are in the result
    expected: int  # min(k, live nodes other than the origin)

    @property
    def exact(self) -> bool:
        """The result holds all of the true k closest live nodes."""
        return self.closest_found == self.expected


@dataclass(frozen=True, slots=True)
class TableFill:
    """One node's routing table. ``neighbours`` is how many of the true k closest live nodes to
    the node's own id its table holds (``expected`` of them exist)."""

    address: Address
    contacts: int
    buckets: int
    replacements: int
    dead: int  # contacts in the table that have left the network
    neighbours: int
    expected: int


def summarize(reports: Iterable[LookupReport]) -> dict[str, float]:
    """Aggregate lookup reports: success rates, and median / 95th percentile / max of rounds,
    requests, messages and latency.

    ``rounds`` and ``requests`` are taken over the lookups that completed (``ok``) only: a failed
    lookup was cut off by its deadline, and the few rounds it ran until then would pull the
    figures of lookups that converged down (NaN when no lookup completed). ``messages`` and
    ``latency`` are taken over every lookup: what a failed one cost and how long its caller
    waited are real. ``failed`` counts the lookups that did not complete.

    ``reports`` is any iterable of :class:`LookupReport` (InvalidType for anything else)."""
    if isinstance(reports, (str, bytes, bytearray)) or not isinstance(reports, Iterable):
        raise InvalidType(f"summarize needs lookup reports, not {type(reports).__name__}")
    reports = list(reports)
    for report in reports:
        if not isinstance(report, LookupReport):
            raise InvalidType(f"summarize needs lookup reports, not {type(report).__name__}")
    if not reports:
        return {"lookups": 0}
    n = len(reports)
    out: dict[str, float] = {
        "lookups": n,
        "ok": sum(r.ok for r in reports) / n,
        "true_closest": sum(r.true_closest for r in reports) / n,
        "exact_k": sum(r.exact for r in reports) / n,
        "closest_found_mean": statistics.fmean(
            r.closest_found / r.expected if r.expected else 1.0 for r in reports),
        "failed": sum(not r.ok for r in reports),
    }
    completed = [r for r in reports if r.ok]
    for name in ("rounds", "messages", "requests", "latency"):
        over = completed if name in ("rounds", "requests") else reports
        values = sorted(float(getattr(r, name)) for r in over)
        if not values:
            for suffix in ("p50", "p95", "max"):
                out[f"{name}_{suffix}"] = math.nan
            continue
        out[f"{name}_p50"] = percentile(values, 50)
        out[f"{name}_p95"] = percentile(values, 95)
        out[f"{name}_max"] = values[-1]
    return out


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """The ``pct`` percentile of already sorted values (nearest rank). ``sorted_values`` must be
    a sequence (InvalidType otherwise; InvalidArgument when empty) and ``pct`` a number in
    [0, 100] (InvalidType / InvalidArgument otherwise)."""
    if isinstance(sorted_values, (str, bytes, bytearray)) or not isinstance(sorted_values,
                                                                              Sequence):
        raise InvalidType(f"percentile needs a sequence of sorted values, not "
                          f"{type(sorted_values).__name__}")
    if not 0.0 <= _number("pct", pct) <= 100.0:
        raise InvalidArgument(f"pct must be a percentage in [0, 100], not {pct!r}")
    if not sorted_values:
        raise InvalidArgument("percentile of nothing")
    rank = max(1, -(-len(sorted_values) * pct // 100))
    return sorted_values[int(rank) - 1]


class SimNetwork:
    """Nodes, a virtual clock and a virtual network, all driven by one seed.

    ``latency`` is the one-way delay (see :data:`Latency`); ``loss`` the probability that a
    datagram is dropped; ``duplicate`` the probability that it is delivered twice (the copy with
    its own delay); ``reorder`` the probability that it is held back by an extra uniform delay of
    up to ``reorder_delay`` seconds. All can be changed between steps, and each is checked
    whenever it is set, in the constructor or later: a probability must be a number in [0, 1], a
    delay a finite number of seconds >= 0 (InvalidType for what is not a number, a bool
    included; InvalidArgument out of range, NaN included), and a refused value leaves the one in
    force. With ``trace``, every network and churn event is appended to :attr:`trace` (for
    determinism checks and replay).

    ``seed`` must be an int (InvalidType otherwise: None would seed from the operating system,
    and the run could not be repeated), ``config`` a :class:`~qadom.config.Config` or None.
    """

    def __init__(self, seed: int = 0, *, config: Config | None = None,
                 latency: Latency = (0.01, 0.05), loss: float = 0.0, duplicate: float = 0.0,
                 reorder: float = 0.0, reorder_delay: float = 0.1, trace: bool = False) -> None:
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise InvalidType(f"seed must be an int, not {type(seed).__name__}")
        _check_config(config)
        # Checked by the properties, before anything else is set up.
        self.latency = latency
        self.loss = loss
        self.duplicate = duplicate
        self.reorder = reorder
        self.reorder_delay = reorder_delay
        self.rng = random.Random(seed)
        self.config = config or Config()
        self.now = 0.0
        self.nodes: dict[Address, Node] = {}
        self.down: set[Address] = set()
        self.sent = 0  # datagrams put on the network (duplicates counted once)
        self.delivered = 0
        self.dropped = 0  # lost on the wire, or sent to / from a node that left
        self.duplicated = 0
        self.trace: list[tuple[Any, ...]] | None = [] if trace else None
        self.churn_log: list[tuple[float, str, Address]] = []
        self.joins: list[Call[int]] = []  # bootstrap calls of nodes joined by the churn schedule
        self._events: list[tuple[float, int, int, Any]] = []
        self._seq = 0
        self._armed: dict[Address, float] = {}
        self._live_ids: list[int] = []  # sorted ids of the nodes on the network
        self._by_id: dict[int, Node] = {}
        self._sides: dict[Address, int] | None = None  # set while the network is partitioned
        self._measured: int | None = None  # the origin of the lookup lookup() is measuring
        self._traffic: _LookupTraffic | None = None  # that lookup's datagrams at its origin
        # A node whose churn join failed while it was the measured origin: it leaves once the
        # measurement is over, not halfway through it.
        self._unjoined: Node | None = None
        # The mark of the calls this network starts (Call.started_by): an object of its own,
        # so that a call does not keep the network alive.
        self._mark = object()

    @property
    def latency(self) -> Latency:
        """The one-way delay (see :data:`Latency`), checked whenever it is set."""
        return self._latency

    @latency.setter
    def latency(self, latency: Latency) -> None:
        _check_latency(latency)
        self._latency = latency

    # The wire parameters are read once per datagram: the setters check a value once, and the
    # sending path reads the attribute they store.

    @property
    def loss(self) -> float:
        """The probability that a datagram is dropped, checked whenever it is set."""
        return self._loss

    @loss.setter
    def loss(self, loss: float) -> None:
        self._loss = _probability("loss", loss)

    @property
    def duplicate(self) -> float:
        """The probability that a datagram is delivered twice, checked whenever it is set."""
        return self._duplicate

    @duplicate.setter
    def duplicate(self, duplicate: float) -> None:
        self._duplicate = _probability("duplicate", duplicate)

    @property
    def reorder(self) -> float:
        """The probability that a datagram is held back by up to :attr:`reorder_delay`, checked
        whenever it is set."""
        return self._reorder

    @reorder.setter
    def reorder(self, reorder: float) -> None:
        self._reorder = _probability("reorder", reorder)

    @property
    def reorder_delay(self) -> float:
        """The longest extra delay of a reordered datagram, in seconds, checked whenever it is
        set."""
        return self._reorder_delay

    @reorder_delay.setter
    def reorder_delay(self, reorder_delay: float) -> None:
        self._reorder_delay = _seconds("reorder_delay", reorder_delay)

    # ------------------------------------------------------------------ building

    def add_node(self, *, config: Config | None = None, node_id: int | None = None) -> Node:
        """A new node on the next free simulated address (not yet joined to anyone), with
        ``config`` (a :class:`~qadom.config.Config`; the network's by default) and ``node_id``
        (a random id by default).

        ``node_id`` may be the id of a node that has left: a peer restarted with the data
        directory it keeps its id in comes back under that id. The new node is another node on
        a new address; from then on the id names it (:meth:`live_nodes`, :meth:`true_closest`,
        the churn schedule), and the node that left stays in :attr:`nodes` under its own
        address, still gone. The id of a live node is refused (InvalidArgument), before any
        node is made."""
        _check_config(config)
        if node_id is not None:
            self._check_id_free(check_id(node_id, "node_id"))
        index = len(self.nodes) + 1
        address = (f"127.{(index >> 16) & 255}.{(index >> 8) & 255}.{index & 255}", 4000)
        node = Node(config=config or self.config, rng=random.Random(self.rng.getrandbits(64)),
                    node_id=node_id, now=self.now)
        self._check_id_free(node.id)  # a random id that a live node drew too
        node.address = address
        self.nodes[address] = node
        self._by_id[node.id] = node
        bisect.insort(self._live_ids, node.id)
        self._after_input(address, node)
        return node

    def address_of(self, node: Node) -> Address:
        """The simulated address of ``node``, one of this network's nodes (live or gone):
        InvalidArgument otherwise."""
        self._check_member(node)
        assert node.address is not None
        return node.address

    def _check_id_free(self, node_id: int) -> None:
        """InvalidArgument if a live node has the id ``node_id`` (two live nodes with one id
        would be one contact to every table, and :meth:`true_closest` would count it once)."""
        holder = self._by_id.get(node_id)
        if holder is not None and holder.address not in self.down:
            raise InvalidArgument(f"node id {node_id:x} is already on the network")

    def add_nodes(self, count: int, *, bootstrap: bool = True, tries: int = 5) -> list[Node]:
        """Add ``count`` nodes; with ``bootstrap`` each joins for real (ping, lookup of its own
        id, bucket refresh) through a random live node, one after the other.

        Under loss a join can fail: its bootstrap pings lost (NoPeersError), or every lookup of
        its own id (OperationTimeout). The node then joins again through another random live
        node (one not tried yet while there is one), up to ``tries`` joins in all (at least 1).
        A node whose last join fails leaves the network, as a churn join that fails does (see
        :meth:`churn`), and add_nodes raises that join's error: no node that did not join stays
        live. The nodes that joined before it stay, live and joined; none is added after it.
        A node that the churn schedule takes off the network while it joins has left, as any
        node may: it is not tried again, and add_nodes goes on."""
        count, tries = _count("count", count), _count("tries", tries, 1)
        if not isinstance(bootstrap, bool):
            raise InvalidType(f"bootstrap must be a bool, not {type(bootstrap).__name__}")
        added = []
        for _ in range(count):
            via = self._random_live_address()
            node = self.add_node()
            added.append(node)
            if bootstrap and via is not None:
                self._join(node, via, tries)
        return added

    def _join(self, node: Node, via: Address, tries: int) -> None:
        """Bootstrap ``node`` through ``via``, then through other live nodes, as
        :meth:`add_nodes` says."""
        tried = {via}
        for attempt in range(1, tries + 1):
            joining = self.call(node, node.bootstrap, [via])
            try:
                self.run_call(joining)
                return
            except BaseException as error:
                failed = isinstance(error, (NoPeersError, OperationTimeout))
                if self.address_of(node) in self.down:  # taken off by the churn schedule
                    if failed:
                        return
                    raise
                # A call still running (past run_call's own bound) is no failed join to try
                # again: two joins of one node would run side by side.
                if not failed or not joining.done or attempt == tries:
                    self.remove(node)
                    raise
            others = [i for i in self._live_ids if i != node.id]
            fresh = [i for i in others if self.address_of(self._by_id[i]) not in tried]
            pool = fresh or others
            if not pool:  # nobody else is live (they left meanwhile): no join can succeed
                self.remove(node)
                raise NoPeersError("no live node left to join through")
            via = self.address_of(self._by_id[pool[self.rng.randrange(len(pool))]])
            tried.add(via)

    def build(self, count: int, *, joins: int = 0, spread: float = 0.0) -> list[Node]:
        """Build a network of ``count`` nodes quickly, then let ``joins`` more join for real.

        What it does: it creates ``count`` nodes (their creation order is their age) and shows
        each node's real :class:`~qadom.routing.RoutingTable` contacts drawn from the true
        membership, passing each to the real :meth:`~qadom.routing.RoutingTable.seen`, so bucket
        splitting (including the relaxed rule of section 2.4), bucket capacity and the
        replacement cache behave exactly as in a running node. Ranges of ids at each XOR prefix
        distance are shown nearest first. From a range where the node's bucket may still split
        (fewer than ``k`` nodes are closer) or that has at most ``k + replacement_cache_size``
        members, every member is shown, oldest first. From a larger range, the ``k`` oldest
        members are shown first, then ``replacement_cache_size`` other members drawn at random:
        a full bucket keeps its oldest contacts (ping-before-evict, section 2.2) and the
        newcomers wait in the replacement cache. When :meth:`seen` asks to ping the
        least-recently-seen contact, that contact is taken to have answered.

        What it skips: no datagram is exchanged while filling, so the stats stay at zero, no
        request-verification or ping-before-evict traffic happens, and the lookups through which
        a real node meets its contacts are replaced by the oldest-first rule above. Each table
        is what a node that has heard from the whole network would hold under Kademlia's
        keep-the-oldest policy, the state that joins and bucket refreshes converge to. The
        ``joins`` nodes added afterwards go through the real bootstrap (:meth:`add_nodes`), so
        the join path is exercised at full size too. Under loss each of them tries its join a
        few times as :meth:`add_nodes` says, and build raises as it does (the built network and
        the joins that succeeded stay; the node whose joins all failed has left).

        With ``spread``, the nodes start one after the other over ``spread`` virtual seconds
        (the clock advances between two), so that their periodic timers (maintenance,
        republishing) do not all fire at the same instants, as they would not on real machines;
        nodes that started together would otherwise all republish each item in the same tick,
        none of them seeing another's republish first. The tables are filled once all have
        started.

        The network must be empty.
        """
        count, joins = _count("count", count, 1), _count("joins", joins)
        spread = _seconds("spread", spread)
        if self.nodes:
            raise InvalidArgument("build() needs an empty network; use add_nodes() to grow one")
        built = []
        for _ in range(count):
            built.append(self.add_node())
            if spread:
                self.run_for(spread / count)
        contacts = {n.id: Contact(n.id, self.address_of(n)) for n in built}
        filler = _TableFiller(list(self._live_ids), {n.id: age for age, n in enumerate(built)},
                              contacts, self.rng)
        for node in built:
            filler.fill(node)
        self.add_nodes(joins)
        return built

    def remove(self, node: Node) -> None:
        """Take ``node`` off the network for good: it neither sends nor receives again.
        ``node`` must be one of this network's nodes (InvalidArgument otherwise: a node of
        another network may share an address with one of ours, which would be taken down in its
        place); removing one that has already left does nothing."""
        self._check_member(node)
        address = self.address_of(node)
        if address in self.down:
            return
        self.down.add(address)
        index = bisect.bisect_left(self._live_ids, node.id)
        if index < len(self._live_ids) and self._live_ids[index] == node.id:
            del self._live_ids[index]
        self._log("leave", address)

    def leave(self, count: int, *, keep: Iterable[Node] = ()) -> list[Node]:
        """Take ``count`` random live nodes off the network now (never those in ``keep``, an
        iterable of this network's nodes: InvalidType / InvalidArgument otherwise)."""
        count = _count("the number of nodes to leave", count)
        kept = {self.address_of(n) for n in self._members("keep", keep)}
        by_id = self._by_id
        pool = [i for i in self._live_ids if by_id[i].address not in kept]
        if count > len(pool):
            raise InvalidArgument(f"only {len(pool)} nodes may leave, not {count}")
        gone = [self._by_id[i] for i in self.rng.sample(pool, count)]
        for node in gone:
            self.remove(node)
        return gone

    def churn(self, *, leave: int = 0, join: int = 0, start: float | None = None,
              duration: float = 60.0, keep: Iterable[Node] = ()) -> None:
        """Schedule ``leave`` departures and ``join`` arrivals at random virtual times in
        ``[start, start + duration)`` (start: now). A leaving node is drawn among the live nodes
        when its time comes, except the nodes in ``keep`` and the origin of a lookup that
        :meth:`lookup` is measuring (its report would be of an origin gone halfway, not of a
        lookup); none leaves when only those are live. A joining node bootstraps through a
        random live node, and its bootstrap call is appended to :attr:`joins`; a node whose
        bootstrap fails (its datagrams lost, or that node gone meanwhile) leaves again, once the
        lookup being measured is over if it is that lookup's origin. They happen as
        :meth:`run_for` or :meth:`run_call` reach their times. ``start`` and ``duration`` must
        be finite numbers (an event at an infinite or NaN time would never happen), ``keep`` an
        iterable of this network's nodes; nothing is scheduled unless all are valid."""
        leave, join = _count("leave", leave), _count("join", join)
        duration = _number("duration", duration)
        if not 0 <= duration < math.inf:
            raise InvalidArgument("duration must be finite and not negative")
        begin = self.now if start is None else _number("start", start)
        if not math.isfinite(begin):
            raise InvalidArgument(f"churn needs a finite start time, not {begin!r}")
        if begin < self.now:
            raise InvalidArgument("churn cannot be scheduled in the past")
        # By address, not id: a node that left may come back under its id (add_node), as
        # another node that ``keep`` did not name.
        kept = frozenset(self.address_of(n) for n in self._members("keep", keep))
        for kind, count in (("leave", leave), ("join", join)):
            payload: str | tuple[str, frozenset[Address]] = (
                (kind, kept) if kind == "leave" and kept else kind)
            for _ in range(count):
                self._push(begin + self.rng.random() * duration, _CHURN, payload)

    # ------------------------------------------------------------------ driving

    def call(self, node: Node, operation: Callable[..., R], *args: Any) -> R:
        """Start ``operation(*args, now)`` on ``node`` (e.g. ``net.call(n, n.get, key)``).
        ``node`` must be live on this network: InvalidArgument otherwise (a node that left would
        only wait out the operation's deadline, one of another network would never hear back);
        ``operation`` must be callable (InvalidType otherwise).
        An operation bound to a node, or to a service of a node (``n.namespace.set``), must be
        bound to ``node``: InvalidArgument otherwise, before it runs (another node's operation
        would run there while only ``node``'s datagrams went out). The calls it returns (alone
        or in a tuple) are marked as this network's, for :meth:`run_call`."""
        self._check_live(node)
        if not callable(operation):
            raise InvalidType(f"the operation must be callable, not {type(operation).__name__}")
        bound = _bound_node(operation)
        if bound is not None and bound is not node:
            raise InvalidArgument("the operation belongs to another node than the one given: "
                                  "use net.call(n, n.operation, ...)")
        result = operation(*args, self.now)
        self._after_input(self.address_of(node), node)
        for started in (result if isinstance(result, tuple) else (result,)):
            if isinstance(started, Call) and started.started_by is None:
                started.started_by = self._mark
        return result

    def step(self) -> bool:
        """Process the next event; False when there is none."""
        if not self._events:
            return False
        self._process(heapq.heappop(self._events))
        return True

    def _process(self, event: tuple[float, int, int, Any]) -> None:
        when, _, kind, payload = event
        if when > self.now:
            self.now = when
        if kind == _DELIVER:
            data, source, destination = payload
            node = self.nodes.get(destination)
            sides = self._sides
            if node is None or destination in self.down or (
                    sides is not None and sides.get(source, -1) != sides.get(destination, -2)):
                self.dropped += 1
                if self.trace is not None:
                    self.trace.append((when, "lost", source, destination, len(data)))
                return
            self.delivered += 1
            if self.trace is not None:
                self.trace.append((when, "deliver", source, destination, data))
            traffic = self._traffic
            if traffic is not None and destination == traffic.address:
                traffic.received(data, source)
            node.datagram_received(data, source, self.now)
            self._after_input(destination, node)
        elif kind == _TIMER:
            address = payload
            if self._armed.get(address) != when:
                return  # superseded by an earlier arming
            del self._armed[address]
            if address not in self.down:
                node = self.nodes[address]
                node.handle_timer(self.now)
                self._after_input(address, node)
        else:
            self._churn_event(payload)

    def run_call(self, call: Call[T], *, timeout: float | None = None) -> T:
        """Run events until ``call`` completes (bounded by ``timeout`` virtual seconds, the
        operation timeout by default); returns its result or raises its exception.

        ``call`` must be a :class:`~qadom.call.Call` (InvalidType otherwise) that another
        network did not start (InvalidArgument, before any virtual time is spent: events here
        would never complete it); ``timeout`` None or a finite number of seconds >= 0
        (InvalidType / InvalidArgument otherwise, before any virtual time is spent). The calls
        :meth:`call` returns are known; a call made directly on a node (``n.get(key,
        net.now)``) carries no mark and is run as given: the caller must make it on one of this
        network's nodes."""
        if not isinstance(call, Call):
            raise InvalidType(f"run_call needs a Call (as net.call() returns), not "
                              f"{type(call).__name__}")
        bound = (self.config.operation_timeout * 2 if timeout is None
                 else _seconds("timeout", timeout))
        self.check_ours(call)
        limit = self.now + bound
        events, process, pop = self._events, self._process, heapq.heappop
        while not call.done:
            if not events or events[0][0] > limit:
                raise OperationTimeout(f"{call!r} did not complete by virtual time {limit}")
            process(pop(events))
        return call.result()

    def check_ours(self, call: Call[Any]) -> None:
        """InvalidArgument if another network started ``call`` (:meth:`call` marks the calls it
        starts): events here would never complete it. A call without a mark passes; what is not
        a :class:`~qadom.call.Call` is InvalidType."""
        if not isinstance(call, Call):
            raise InvalidType(f"check_ours needs a Call, not {type(call).__name__}")
        if call.started_by is not None and call.started_by is not self._mark:
            raise InvalidArgument(f"{call!r} was started on another network: run it there")

    def run_for(self, duration: float) -> None:
        """Run every event up to ``now + duration``; the clock then stands at that time.
        ``duration`` must be a finite number (the periodic timers would otherwise run forever)."""
        duration = _number("duration", duration)
        if not duration >= 0:
            raise InvalidArgument("the virtual clock does not run backwards")
        if duration == math.inf:
            raise InvalidArgument("run_for needs a finite duration")
        until = self.now + duration
        events, process, pop = self._events, self._process, heapq.heappop
        while events and events[0][0] <= until:
            process(pop(events))
        self.now = until

    # ------------------------------------------------------------------ measuring

    def live_nodes(self) -> list[Node]:
        """The nodes on the network, in id order."""
        return [self._by_id[i] for i in self._live_ids]

    def live_addresses(self) -> list[Address]:
        return [self.address_of(self._by_id[i]) for i in self._live_ids]

    def true_closest(self, target: int, count: int, *, exclude: int | None = None) -> list[int]:
        """The ids of the ``count`` live nodes closest to ``target`` by XOR, closest first
        (``exclude``, if given, left out). ``target`` and ``exclude`` must be ids (see
        :func:`~qadom.ids.check_id`: InvalidType / InvalidArgument otherwise)."""
        check_id(target, "target")
        if exclude is not None:
            check_id(exclude, "exclude")
        count = _count("count", count)
        ids = self._live_ids
        need = count + (1 if exclude is not None else 0)
        # The smallest aligned subtree around the target holding enough ids holds the closest
        # ones: every id inside it is closer than every id outside.
        lo, hi = 0, len(ids)
        for depth in range(1, ID_BITS + 1):
            shift = ID_BITS - depth
            prefix = (target >> shift) << shift
            a = bisect.bisect_left(ids, prefix, lo, hi)
            b = bisect.bisect_left(ids, prefix + (1 << shift), lo, hi)
            if b - a < need:
                break
            lo, hi = a, b
        pool = (i for i in ids[lo:hi] if i != exclude)
        return heapq.nsmallest(count, pool, key=target.__xor__)

    def lookup(self, node: Node, target: int) -> LookupReport:
        """Run one node lookup (``find_nodes``) from ``node`` to completion and report it.
        ``node`` must be live on this network (InvalidArgument otherwise, as for :meth:`call`)."""
        check_id(target, "target")
        self._check_live(node)
        events: list[LookupEvent] = []
        unsubscribe = node.add_listener(events.append)
        traffic = _LookupTraffic(self.address_of(node), target, Codec(node.config))
        started = self.now
        self._measured = node.id
        self._traffic = traffic
        try:
            call = self.call(node, node.find_nodes, target)
            lookup_id = next((e.lookup_id for e in events
                              if isinstance(e, LookupStarted) and e.target == target), None)
            with contextlib.suppress(Exception):  # the report records the failure
                self.run_call(call)
        finally:
            self._measured = None
            self._traffic = None
            unsubscribe()
            if self._unjoined is not None:
                unjoined, self._unjoined = self._unjoined, None
                self.remove(unjoined)
        mine = [e for e in events if e.lookup_id == lookup_id]
        finished = next((e for e in mine if isinstance(e, LookupFinished)), None)
        if finished is not None:
            counts = (finished.rounds, finished.requests, finished.replies, finished.failures)
        else:
            # The operation failed (its deadline) before the lookup finished: what the lookup
            # did until then, counted as the lookup counts (a request per contact asked, its
            # round; a final timeout or a refusal per request failed for good).
            counts = (max((e.round for e in mine if isinstance(e, LookupRequest)), default=0),
                      sum(isinstance(e, LookupRequest) for e in mine),
                      sum(isinstance(e, LookupReply) for e in mine),
                      sum(isinstance(e, LookupTimeout) and e.final for e in mine))
        truth = self.true_closest(target, node.config.k, exclude=node.id)
        found = {c.id for c in finished.closest} if finished else set()
        return LookupReport(
            origin=self.address_of(node), target=target,
            ok=call.done and call.exception() is None,
            rounds=counts[0], requests=counts[1], replies=counts[2], failures=counts[3],
            messages=traffic.count,
            latency=(finished.now if finished else self.now) - started,
            true_closest=bool(truth) and truth[0] in found,
            closest_found=sum(1 for i in truth if i in found),
            expected=len(truth),
        )

    def lookups(self, count: int, *, gap: float = 0.0) -> list[LookupReport]:
        """``count`` lookups of random ids from random live nodes, one after the other, with
        ``gap`` virtual seconds of network time between them (churn events happen there).
        ``gap`` must be a finite number of seconds >= 0 (InvalidType / InvalidArgument
        otherwise, before any lookup runs)."""
        count, gap = _count("count", count), _seconds("gap", gap)
        reports = []
        for _ in range(count):
            if not self._live_ids:
                break
            origin = self._by_id[self.rng.choice(self._live_ids)]
            reports.append(self.lookup(origin, self.rng.getrandbits(ID_BITS)))
            if gap:
                self.run_for(gap)
        return reports

    def table_fill(self, node: Node) -> TableFill:
        """The state of ``node``'s routing table, compared with the true membership. ``node``
        must be one of this network's nodes (one that left included): InvalidArgument otherwise,
        as another network's table compared with this membership means nothing."""
        self._check_member(node)
        table = node.table
        truth = self.true_closest(node.id, node.config.k, exclude=node.id)
        down = self.down
        contacts = list(table)
        return TableFill(
            address=self.address_of(node),
            contacts=len(contacts),
            buckets=len(table.buckets),
            replacements=sum(len(b.replacements) for b in table.buckets),
            dead=sum(1 for c in contacts if c.address in down),
            neighbours=sum(1 for i in truth if i in table),
            expected=len(truth),
        )

    def fill_summary(self) -> dict[str, float]:
        """Routing-table fill over the live nodes: median and extremes of contacts and buckets,
        the share of departed contacts among all the contacts listed, and the share of true
        neighbours known."""
        fills = [self.table_fill(n) for n in self.live_nodes()]
        if not fills:
            return {"nodes": 0}
        contacts = sorted(f.contacts for f in fills)
        buckets = sorted(f.buckets for f in fills)
        return {
            "nodes": len(fills),
            "contacts_min": contacts[0],
            "contacts_p50": percentile(contacts, 50),
            "contacts_max": contacts[-1],
            "buckets_p50": percentile(buckets, 50),
            "dead_share": sum(f.dead for f in fills) / max(1, sum(contacts)),
            "neighbours_known": sum(f.neighbours for f in fills)
            / max(1, sum(f.expected for f in fills)),
        }

    def stats(self) -> dict[str, int]:
        """Network counters and the sum of every node's own counters."""
        total: dict[str, int] = {"sent": self.sent, "delivered": self.delivered,
                                 "dropped": self.dropped, "duplicated": self.duplicated,
                                 "live": len(self._live_ids), "left": len(self.down)}
        for node in self.nodes.values():
            for name, value in node.stats.items():
                total[f"node.{name}"] = total.get(f"node.{name}", 0) + value
        return total

    # ------------------------------------------------------------------ internals

    def partition(self, *groups: Iterable[Node]) -> None:
        """Cut the network into ``groups``: from now until :meth:`heal`, a datagram reaches its
        destination only if both ends are in the same group (datagrams already on their way
        included). A node in no group is cut off from everyone. Each group is an iterable of
        this network's nodes, and no node is in two groups (InvalidType / InvalidArgument
        otherwise, and the network stays as it was)."""
        sides: dict[Address, int] = {}
        for side, group in enumerate(groups):
            for node in self._members("each group", group):
                address = self.address_of(node)
                if sides.setdefault(address, side) != side:
                    raise InvalidArgument(f"node {address} is in two groups")
        self._sides = sides
        self._log("partition", ("", len(self._sides)))

    def heal(self) -> None:
        """End a :meth:`partition`: every live node reaches every other again."""
        self._sides = None
        self._log("heal", ("", 0))

    def _check_live(self, node: Node) -> None:
        """InvalidArgument unless ``node`` is one of this network's nodes and has not left."""
        if not self._is_member(node) or node.address in self.down:
            raise InvalidArgument("node is not live on this network")

    def _members(self, name: str, nodes: Any) -> list[Node]:
        """``nodes`` as a list of this network's nodes (live or gone): InvalidType unless it is
        an iterable of nodes, InvalidArgument for a node of another network."""
        if isinstance(nodes, (str, bytes, bytearray)) or not isinstance(nodes, Iterable):
            raise InvalidType(f"{name} must be an iterable of nodes, not {type(nodes).__name__}")
        members = list(nodes)
        for node in members:
            if not isinstance(node, Node):
                raise InvalidType(f"{name} must hold nodes, not {type(node).__name__}")
            self._check_member(node)
        return members

    def _check_member(self, node: Node) -> None:
        """InvalidArgument unless ``node`` is one of this network's nodes (live or gone)."""
        if not self._is_member(node):
            raise InvalidArgument("node is not one of this network's nodes")

    def _is_member(self, node: Node) -> bool:
        address = getattr(node, "address", None)
        return address is not None and self.nodes.get(address) is node

    def _delay(self) -> float:
        latency = self._latency
        rng = self.rng
        if callable(latency):
            delay = latency(rng)
            # One check per draw, consuming no randomness: a negative delay would deliver in the
            # past, NaN or inf never (or out of order), a str would fail deep in the heap.
            if not ((delay.__class__ is float or (isinstance(delay, (int, float))
                                                   and not isinstance(delay, bool)))
                    and 0.0 <= delay < _INF):
                raise InvalidArgument(f"the latency function drew the delay {delay!r}: a delay "
                                      "must be a finite number of seconds >= 0")
        else:
            # rng.uniform(lo, hi) without its call: it is lo + (hi - lo) * random(), the same
            # float
            delay = latency[0] + (latency[1] - latency[0]) * rng.random()
        reorder = self._reorder
        if reorder and rng.random() < reorder:
            delay += rng.random() * self._reorder_delay
        return delay

    def _after_input(self, address: Address, node: Node) -> None:
        out = node.datagrams_to_send()
        traffic = self._traffic
        if traffic is not None and address == traffic.address:
            traffic.sent(out)
        if out:
            now = self.now
            down = address in self.down
            random_ = self.rng.random
            loss, duplicate = self._loss, self._duplicate
            delay, events, push = self._delay, self._events, heapq.heappush
            self.sent += len(out)
            for data, destination in out:
                if down or (loss and random_() < loss):
                    self.dropped += 1
                    if self.trace is not None:
                        self.trace.append((now, "drop", address, destination, len(data)))
                    continue
                payload = (data, address, destination)
                self._seq += 1
                push(events, (now + delay(), self._seq, _DELIVER, payload))
                if duplicate and random_() < duplicate:
                    self.duplicated += 1
                    self._push(now + delay(), _DELIVER, payload)
        armed = self._armed.get(address)
        if armed is not None and not node.timer_changed:
            # While timer_changed is False, the node's next deadline is no earlier than the one
            # get_timer() returned last (see Node.get_timer), itself no earlier than the one
            # armed: that one is still early enough, as transport.py reasons too. This skips
            # about three calls in four, one per datagram.
            return
        deadline = node.get_timer()
        if deadline is not None and (armed is None or deadline < armed):
            self._armed[address] = deadline
            self._push(deadline, _TIMER, address)

    def _churn_event(self, payload: str | tuple[str, frozenset[Address]]) -> None:
        if isinstance(payload, tuple):  # a departure that spares the nodes of ``kept``
            _, kept = payload
            by_id = self._by_id
            candidates = [i for i in self._live_ids
                          if i != self._measured and by_id[i].address not in kept]
            if candidates:
                self.remove(self._by_id[candidates[self.rng.randrange(len(candidates))]])
            return
        kind = payload
        if kind == "leave":
            ids = self._live_ids
            # any live node but the origin of the lookup being measured (if it is live)
            spared = bisect.bisect_left(ids, self._measured) if self._measured is not None else -1
            if spared >= len(ids) or (spared >= 0 and ids[spared] != self._measured):
                spared = -1
            pool = len(ids) - (spared >= 0)
            if pool > 0:
                index = self.rng.randrange(pool)
                self.remove(self._by_id[ids[index + (0 <= spared <= index)]])
            return
        via = self._random_live_address()
        node = self.add_node()
        self._log("join", self.address_of(node))
        if via is not None:
            joining = self.call(node, node.bootstrap, [via])
            joining.add_done_callback(partial(self._joined, node))
            self.joins.append(joining)

    def _joined(self, node: Node, joining: Call[int]) -> None:
        # A node that cannot join leaves again, as `qadom serve --bootstrap` exits when no
        # bootstrap address answers: else it would stay on the network knowing nobody, and
        # answer every read from its empty table. The origin of the lookup being measured
        # leaves when the measurement is over: its report is of a lookup, not of an origin gone
        # halfway (as a churn departure spares it).
        if joining.exception() is not None:
            if node.id == self._measured:
                self._unjoined = node
            else:
                self.remove(node)

    def _random_live_address(self) -> Address | None:
        ids = self._live_ids
        if not ids:
            return None
        return self.address_of(self._by_id[ids[self.rng.randrange(len(ids))]])

    def _log(self, kind: str, address: Address) -> None:
        self.churn_log.append((self.now, kind, address))
        if self.trace is not None:
            self.trace.append((self.now, kind, address))

    def _push(self, when: float, kind: int, payload: Any) -> None:
        self._seq += 1
        heapq.heappush(self._events, (when, self._seq, kind, payload))


def _bound_node(operation: Callable[..., Any]) -> Node | None:
    """The node ``operation`` is a method of, directly or through one of its services (whose
    ``node`` attribute is that node), seen through :func:`functools.partial`; None for a plain
    function or a method of anything else."""
    while isinstance(operation, partial):
        operation = operation.func
    owner = getattr(operation, "__self__", None)
    if owner is not None and not isinstance(owner, Node):
        owner = getattr(owner, "node", None)
    return owner if isinstance(owner, Node) else None


def _count(name: str, value: Any, least: int = 0) -> int:
    """``value`` as a count of at least ``least``: InvalidType unless it is an integer (a float
    such as 2.5 or 2.0 is not one: the simulator never rounds a number of nodes or lookups for
    the caller), InvalidArgument when it is below ``least``."""
    if isinstance(value, bool):
        raise InvalidType(f"{name} must be an integer, not {value!r}")
    try:
        count = operator.index(value)
    except TypeError:
        raise InvalidType(f"{name} must be an integer, not {value!r}") from None
    if count < least:
        raise InvalidArgument(f"{name} must be at least {least}, not {count}")
    return count


def _number(name: str, value: Any) -> float:
    """``value`` as a float: InvalidType unless it is a real number (a bool is not one: True is
    no probability or time), InvalidArgument when it is an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise InvalidType(f"{name} must be a number, not {type(value).__name__}")
    try:
        return float(value)
    except OverflowError:
        raise InvalidArgument(f"{name} is too large: {value!r}") from None


def _seconds(name: str, value: Any) -> float:
    """``value`` as a finite number of seconds >= 0 (see :func:`_number`; NaN and infinity are
    InvalidArgument: a time at either would never come, or break the order of the events)."""
    seconds = _number(name, value)
    if not 0.0 <= seconds < _INF:
        raise InvalidArgument(f"{name} must be a finite number of seconds >= 0, not {value!r}")
    return seconds


def _probability(name: str, value: Any) -> float:
    """``value`` as a probability in [0, 1] (see :func:`_number`; NaN is InvalidArgument: it
    compares false with every draw, and would read as 0)."""
    p = _number(name, value)
    if not 0.0 <= p <= 1.0:
        raise InvalidArgument(f"{name} must be a probability in [0, 1], not {value!r}")
    return p


def _check_config(config: Any) -> None:
    """InvalidType unless ``config`` is a :class:`~qadom.config.Config` or None."""
    if config is not None and not isinstance(config, Config):
        raise InvalidType(f"config must be a Config, not {type(config).__name__}")


def _check_latency(latency: Any) -> None:
    """InvalidArgument unless ``latency`` is a :data:`Latency`: a callable, or a 2-tuple of
    finite numbers with ``0 <= min <= max``."""
    if callable(latency):
        return
    if not isinstance(latency, tuple) or len(latency) != 2 or not all(
            isinstance(x, (int, float)) and not isinstance(x, bool) for x in latency):
        raise InvalidArgument(f"latency must be a (min, max) pair of seconds or a function of "
                              f"the generator, not {latency!r}")
    if not 0.0 <= latency[0] <= latency[1] < math.inf:
        raise InvalidArgument("latency (min, max) needs finite 0 <= min <= max")


class _LookupTraffic:
    """The datagrams of the lookup :meth:`SimNetwork.lookup` is measuring, counted at its origin
    as :attr:`LookupReport.messages` says: the simulator shows it every datagram the origin
    receives (:meth:`received`, before the origin handles it) and every batch it sends
    (:meth:`sent`, after each input).

    It reads a datagram's message code and request id from its first bytes (:func:`_header`),
    and decodes in full only the origin's FIND_NODE requests, to compare their target: decoding
    every reply a second time (the contacts of each NODES) would cost the simulator about a
    third more time per lookup."""

    __slots__ = ("address", "asked", "codec", "count", "provoked", "rpc_ids", "target")

    def __init__(self, address: Address, target: int, codec: Codec) -> None:
        self.address = address
        self.target = target
        self.codec = codec
        self.count = 0
        self.rpc_ids: set[int] = set()  # the requests of the lookup, and those it provoked
        self.asked: set[Address] = set()  # where those requests went
        # The datagram being handled is the lookup's: what the origin sends now, it sends for
        # the lookup.
        self.provoked = False

    def received(self, data: bytes, source: Address) -> None:
        header = _header(data)
        ours = False
        if header is not None:
            code, rpc_id, is_request = header
            # A request: a peer the lookup asked verifying the origin before adding it to its
            # table. A reply: to a request of the lookup's.
            ours = (code == _PING and source in self.asked) if is_request else (
                rpc_id in self.rpc_ids)
        self.count += ours
        self.provoked = ours

    def sent(self, out: list[tuple[bytes, Address]]) -> None:
        provoked, self.provoked = self.provoked, False
        for data, destination in out:
            header = _header(data)
            if header is None:
                continue
            code, rpc_id, is_request = header
            if not is_request:  # an answer to the datagram just handled
                self.count += provoked
            elif provoked or rpc_id in self.rpc_ids or (
                    code == _FIND_NODE and self._finds_target(data)):
                self.count += 1
                self.rpc_ids.add(rpc_id)
                self.asked.add(destination)

    def _finds_target(self, data: bytes) -> bool:
        try:
            message = self.codec.decode(data).message
        except ProtocolError:
            return False
        return isinstance(message, FindNode) and message.target == self.target


_PING = Ping.CODE
_FIND_NODE = FindNode.CODE


def _header(data: bytes) -> tuple[int, int, bool] | None:
    """The message code, request id and whether it is a request, of a datagram, read from the
    head of its envelope ``[version, code, rpc_id, ...]`` (see :mod:`qadom.codec`) without
    decoding the rest; None when the datagram does not start as an envelope of a known
    message does."""
    try:
        if not 0x85 <= data[0] <= 0x87:  # an array of 5 to 7 items
            return None
        version, at = _uint(data, 1)
        code, at = _uint(data, at)
        rpc_id, _ = _uint(data, at)
    except (IndexError, ValueError):
        return None
    cls = MESSAGE_TYPES.get(code)
    if version != PROTOCOL_VERSION or cls is None:
        return None
    return code, rpc_id, cls.IS_REQUEST


def _uint(data: bytes, at: int) -> tuple[int, int]:
    """The CBOR unsigned integer at ``data[at]``, and where the next item starts; ValueError if
    there is none there, IndexError if the data ends first."""
    head = data[at]
    info = head & 31
    if head >> 5 != 0 or info > 27:
        raise ValueError("not an unsigned integer")
    if info < 24:
        return info, at + 1
    size = 1 << (info - 24)  # 1, 2, 4 or 8 bytes follow
    if at + 1 + size > len(data):
        raise IndexError("truncated")
    return int.from_bytes(data[at + 1:at + 1 + size], "big"), at + 1 + size


class _TableFiller:
    """Fills routing tables for :meth:`SimNetwork.build` from a sorted list of every id."""

    def __init__(self, ids: list[int], age: dict[int, int], contacts: dict[int, Contact],
                 rng: random.Random) -> None:
        self.ids = ids
        self.age = [age[i] for i in ids]  # by position in ``ids``
        self.contacts = contacts
        self.rng = rng
        self._oldest: dict[tuple[int, int], list[int]] = {}
        self._keep = 0

    def fill(self, node: Node) -> None:
        table = node.table
        own = node.id
        ids = self.ids
        k = table.k
        shown = k + table.replacement_cache_size
        self._keep = max(self._keep, k)
        # spans[d]: the positions in ``ids`` of the nodes sharing exactly d leading bits with us
        spans: list[tuple[int, int, int]] = []
        for depth in range(ID_BITS):
            shift = ID_BITS - 1 - depth
            sibling = ((own >> shift) ^ 1) << shift
            spans.append((bisect.bisect_left(ids, sibling),
                          bisect.bisect_left(ids, sibling + (1 << shift)), depth + 1))
            subtree = (own >> shift) << shift
            if (bisect.bisect_left(ids, subtree + (1 << shift))
                    - bisect.bisect_left(ids, subtree)) <= 1:
                break  # nobody else shares depth + 1 bits with us
        closer = 0
        age = self.age
        for lo, hi, depth in reversed(self._pieces(spans, own, table.split_bits)):
            size = hi - lo
            if closer < k or size <= shown:
                members = sorted(range(lo, hi), key=age.__getitem__)
            else:
                members = self.oldest(lo, hi, depth)[:k]
                chosen = set(members)
                extra = [i for i in self.rng.sample(range(lo, hi), shown) if i not in chosen]
                members += extra[:shown - k]
            for index in members:
                to_ping = table.seen(self.contacts[ids[index]])
                if to_ping is not None:
                    table.seen(to_ping)  # it answered the ping: it stays, the newcomer waits
            closer += size

    def _pieces(self, spans: list[tuple[int, int, int]], own: int,
                bits: int) -> list[tuple[int, int, int]]:
        """``spans`` (positions of the nodes sharing exactly ``depth - 1`` leading bits with
        ``own``, farthest first), each cut into the subtrees a table with ``split_bits`` =
        ``bits`` keeps apart (those at the next depth that is a multiple of ``bits``), as
        ``(lo, hi, depth)`` positions: farthest first, so that reversed they come nearest first."""
        ids = self.ids
        pieces: list[tuple[int, int, int]] = []
        for lo, hi, depth in spans:
            if hi - lo <= 1 or not -depth % bits:
                pieces.append((lo, hi, depth))
                continue
            cuts = sorted(((a ^ own, bisect.bisect_left(ids, a, lo, hi),
                            bisect.bisect_left(ids, b, lo, hi), range_depth(a, b))
                           for a, b in subtree_pieces(ids[lo], depth, bits)), reverse=True)
            pieces += [(a, b, d) for _, a, b, d in cuts if b > a]  # farthest first
        return pieces

    def oldest(self, lo: int, hi: int, depth: int) -> list[int]:
        """Positions of the oldest members of the subtree at ``depth`` spanning [lo, hi),
        oldest first (at least ``k`` of them when there are that many)."""
        age = self.age
        if hi - lo <= 2 * self._keep or depth >= ID_BITS:
            return sorted(range(lo, hi), key=age.__getitem__)
        cached = self._oldest.get((lo, hi))
        if cached is not None:
            return cached
        shift = ID_BITS - 1 - depth
        middle = ((self.ids[lo] >> (shift + 1)) << (shift + 1)) | (1 << shift)
        split = bisect.bisect_left(self.ids, middle, lo, hi)
        merged = heapq.merge(self.oldest(lo, split, depth + 1), self.oldest(split, hi, depth + 1),
                             key=age.__getitem__)
        result = [index for _, index in zip(range(2 * self._keep), merged, strict=False)]
        self._oldest[(lo, hi)] = result
        return result
