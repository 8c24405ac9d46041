"""The iterative lookup as a pure state machine (Kademlia paper, section 2.3).

A :class:`Lookup` decides *whom to ask next*; it sends nothing and knows nothing of messages or
time.
Its driver (:mod:`qadom.node`) reports each outcome: :meth:`~Lookup.on_reply` with the contacts the
peer named, :meth:`~Lookup.on_stall` when a first attempt timed out (the slot is freed at once, the
request may still be answered), :meth:`~Lookup.on_failure` when the request failed for good.

Rules, as the paper has them with the "keep alpha in flight" refinement:

* Candidates are ordered by XOR distance to the target. Only the ``k`` closest candidates that have
  not failed are eligible to be asked.
* At most ``alpha`` requests are in flight (stalled requests do not count).
* A value lookup may *probe*: when the closest candidate not asked yet is a likely holder of the
  value (the driver's ``likely`` rule), it is asked alone, and nothing else is asked until it has
  answered, stalled or failed, or the driver calls :meth:`~Lookup.widen` (a hedge timer). A probe
  that finds the value ends the lookup; any other outcome ends probing for the rest of it, so a
  lookup probes at most once.
* The lookup has *converged* when each of the ``k`` closest non-failed candidates has answered;
  failed candidates drop out and the next ones move up. It also ends when no candidate is left.
* A candidate's *round* is one more than the round of the peer that named it (initial contacts are
  round 1); the lookup's round count is the highest round asked. Rounds are what the paper's
  O(log n) bound counts.
* A candidate is one id at one address. Another address named for an id already among the
  candidates is kept as an *alternate* of that candidate (see "Bounds"), unless the candidate
  answered (its id answered from its address), the id was asked at that address before, or the
  same input already offered another address for it (one reply offers one address per id).
  When the candidate fails (silence, an ERROR, another id answering), it is asked again at its
  first alternate, as if newly named there (its network's share included); a candidate that
  failed is asked again at an address named for it later in the same way. So a peer that names
  the closest ids at addresses that do not answer for them cannot hide the real peers that
  others name at their real addresses. An outcome counts only for the address its candidate
  stands at: a late reply, stall or failure of an address it left is ignored.
* One address (not in the paper; peers name addresses of their choosing, and many ids named at
  one address must not make a lookup send it a request each): at most one request is out to an
  address at a time, and at most two go to it in all: a second only if the first was answered,
  for another id if the id asked answered it, else only for the id that did; none if the first
  failed (silence, an ERROR, a lie). A candidate at an address that takes no more requests
  fails at once, without a request (nor counted in :attr:`Lookup.failures`), and a contact named
  at one is not taken, nor kept as an alternate; one at an address with a request out waits for
  its outcome. An id named at the wrong address is still asked at its own (see the alternates
  above), and a fake id named at a peer's address cannot hide that peer, which answers the fake
  as itself and is asked next. Honest peers never name two ids at one address.
* Network diversity (not in the paper): with a ``network`` rule, at most ``max_per_network``
  candidates of one network (the rule's answer; None: not limited) that have not failed are in
  a lookup, so peers of one network cannot crowd out the others by naming each other (an
  eclipse of the target). Candidates refused for it are counted in :attr:`Lookup.crowded` and
  kept aside (the ``k`` closest per network): a candidate that fails frees its network's share
  for the closest of them, so fake contacts named in another peer's network, which fail, cannot
  keep that network's real peers out.
* Bounds (not in the paper; a lookup runs on what remote peers name): at most
  :attr:`Lookup.max_requests` requests are asked, after which the lookup ends once none is in
  flight; at most :attr:`Lookup.max_candidates` candidates are kept, past which the farthest are
  forgotten, failed ones first, then ones not asked yet or that answered (never one in flight
  or stalled, nor one of the ``k`` closest that answered); at most as many refused
  candidates are kept aside; at most :data:`MAX_ALTERNATES` alternates per candidate and
  ``max_candidates`` in all are kept (an address named past them is dropped), and one address
  a candidate left per request asked. So peers that keep naming new contacts cannot make a
  lookup hold, or scan at every reply, more than a fixed number of candidates (and
  addresses), nor make it ask without end until its deadline.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable
from enum import Enum
from operator import attrgetter

from .contact import Address, Contact, make_contact

_DISTANCE = attrgetter("distance")

MAX_CANDIDATES = 1024
"""Candidates one lookup keeps, and refused candidates it keeps aside, at most, unless told
otherwise (``Config.lookup_max_candidates`` says why)."""

MAX_ALTERNATES = 3
"""Alternate addresses one lookup keeps for one candidate at most (see the module docstring):
as many peers as this, each naming an id at an address of its own before an honest peer names
its real one, are needed to hide it."""

MAX_REQUESTS = 512
"""Requests one lookup asks at most, unless told otherwise (``Config.lookup_max_requests`` says
why)."""


_ASKING, _OPEN, _SPENT = -1, -2, -3
"""What :attr:`Lookup._addresses` holds for an address besides an id (ids are not negative)."""


class State(Enum):
    WAITING = "waiting"  # known, not asked yet
    IN_FLIGHT = "in_flight"  # asked, counts toward alpha
    STALLED = "stalled"  # asked, first attempt timed out; does not count toward alpha
    ANSWERED = "answered"
    FAILED = "failed"


# The members as module globals, which the loops below read for every candidate: CPython 3.11
# reads ``State.FAILED`` through the enum class's attribute machinery, about ten times the cost
# of a global (a lookup's ``finished`` alone reads up to 2k of them per reply).
_WAITING, _IN_FLIGHT, _STALLED, _ANSWERED, _FAILED = (
    State.WAITING, State.IN_FLIGHT, State.STALLED, State.ANSWERED, State.FAILED)


class Candidate:
    __slots__ = ("contact", "distance", "round", "state")

    def __init__(self, contact: Contact, distance: int, round_: int) -> None:
        self.contact = contact
        self.distance = distance
        self.round = round_
        self.state = _WAITING

    def __lt__(self, other: Candidate) -> bool:
        return self.distance < other.distance


_ABSENT = Candidate(make_contact(-1, ("", 0)), -1, 0)
"""What :meth:`Lookup._add` finds for an id not among the candidates: its contact is none
that a peer names, so one test tells a contact named again from the others."""


class Lookup:
    """The state of one iterative lookup for ``target``."""

    def __init__(self, target: int, k: int, alpha: int, initial: Iterable[Contact], *,
                 own_id: int | None = None,
                 skip: Callable[[Contact], bool] | None = None,
                 likely: Callable[[Contact], bool] | None = None,
                 later: Callable[[], Iterable[Contact]] | None = None,
                 network: Callable[[Contact], str | None] | None = None,
                 max_per_network: int = 0, max_candidates: int = MAX_CANDIDATES,
                 max_requests: int = MAX_REQUESTS) -> None:
        self.target = target
        self.max_candidates = max(k, max_candidates)
        self.max_requests = max_requests
        self.k = k
        self.alpha = alpha
        self.own_id = own_id
        self._likely = likely  # None once probing is over (or never allowed)
        self.probe: Candidate | None = None  # the likely holder asked alone, while it blocks
        self._skip = skip
        self._network = network if max_per_network > 0 else None
        self._max_per_network = max_per_network
        self._per_network: dict[str, int] = {}
        # Per network, the candidates refused for its share: id -> (contact, round).
        self._refused: dict[str, dict[int, tuple[Contact, int]]] = {}
        self._refused_count = 0  # contacts in self._refused, at most max_candidates
        self.crowded = 0  # candidates refused because their network had its share
        self._order: list[Candidate] = []
        self._by_id: dict[int, Candidate] = {}
        # Per candidate id, its alternates, first to ask first: (contact, round); and the
        # addresses it left (asked, failed), never taken again. Empty for an honest network,
        # which never names one id at two addresses.
        self._alternates: dict[int, list[tuple[Contact, int]]] = {}
        self._alternate_count = 0  # contacts in self._alternates, at most max_candidates
        self._left: dict[int, list[Address]] = {}
        # Per address this lookup asked: _ASKING while its first request is out; then _OPEN if
        # it answered as the id asked (one more request, for another id, may go there), the id
        # it answered as for another (which alone may be asked there, once more), or _SPENT (it
        # failed, or its second request went out: nobody may). At most one entry per request:
        # bounded by max_requests.
        self._addresses: dict[Address, int] = {}
        # How many of the closest candidates are settled (see _settle), and how many of those
        # answered: what next_requests and finished would otherwise walk again at every input.
        self._settled = 0
        self._settled_answered = 0
        self.in_flight = 0
        self.stopped = False
        self._chosen = 0  # requests chosen (next_requests), sent or not: what max_requests bounds
        self._asked_rounds: list[int] = []  # the round of each request sent, as chosen
        self.replies = 0
        self.failures = 0
        self.rounds = 0  # the latest round of a request sent
        # ``later``: more first-round candidates, gathered only when the lookup needs more than
        # ``initial``. A probe asks one candidate and usually ends with its answer, so a driver
        # whose closest contact is a likely holder passes that one as ``initial`` and the rest
        # here.
        self._later = later
        if not self._add(initial, 1) or likely is None:
            self._ensure()

    # ------------------------------------------------------------------ inputs

    def next_requests(self) -> list[Candidate]:
        """The candidates to ask now (marked in flight). Empty when alpha are in flight or none
        is eligible. Call after every input."""
        if self.stopped or self.probe is not None or self._chosen >= self.max_requests:
            return []
        likely = self._likely
        addresses = self._addresses
        chosen: list[Candidate] = []
        walking = True
        while walking:
            walking = False
            # The settled candidates ahead are each eligible if they answered, and never asked.
            start, eligible = self._settle()
            for cand in self._order[start:]:
                if (self.in_flight >= self.alpha or eligible >= self.k
                        or self._chosen >= self.max_requests):
                    break
                if cand.state is _FAILED:
                    continue
                if cand.state is _WAITING and addresses:
                    held = addresses.get(cand.contact.address)
                    if held is not None and held != _OPEN and held != cand.contact.id:
                        if held == _ASKING:  # asked there for another id: wait for the outcome
                            eligible += 1
                            continue
                        # Its address failed, answered as another id or was asked twice: so it
                        # fails, and the walk starts again, as failing moves candidates
                        # (alternates, shares).
                        self._fail(cand)
                        walking = True
                        break
                eligible += 1
                if cand.state is _WAITING:
                    if likely is not None and not chosen and likely(cand.contact):
                        self.probe = cand  # asked alone
                        chosen.append(self._ask(cand))
                        break
                    if self._later is not None:  # more than the initial candidate is needed
                        self._ensure()
                        return self.next_requests()
                    chosen.append(self._ask(cand))
        return chosen

    def on_reply(self, contact: Contact, named: Iterable[Contact]) -> list[Contact]:
        """``contact`` answered and named ``named``; returns the contacts that were new (with
        those a failed candidate is now to be asked at)."""
        cand = self._by_id.get(contact.id)
        if cand is None or cand.state in (_ANSWERED, _FAILED, _WAITING):
            return []
        if cand.contact is not contact and cand.contact.address != contact.address:
            return []  # an address it left answered late
        if cand.state is _IN_FLIGHT:
            self.in_flight -= 1
        cand.state = _ANSWERED
        addresses, address = self._addresses, cand.contact.address
        if addresses.get(address) == _ASKING:  # the first request there: one more may go
            addresses[address] = _OPEN
        self.replies += 1
        if self._alternates:  # it answered from its address: no other is asked for it
            self._drop_alternates(contact.id)
        if self.stopped:
            return []
        if cand is self.probe:  # it did not have the value
            self.widen()
        return self._add(named, cand.round + 1)

    def on_stall(self, contact: Contact) -> None:
        """The first attempt to ``contact`` timed out: free its slot for the next candidate."""
        cand = self._by_id.get(contact.id)
        if cand is not None and cand.state is _IN_FLIGHT and (
                cand.contact is contact or cand.contact.address == contact.address):
            cand.state = _STALLED
            self.in_flight -= 1
            if cand is self.probe:
                self.widen()

    def on_failure(self, contact: Contact, answered_as: int | None = None) -> None:
        """The request to ``contact`` failed for good (timeout, error, or a lie), or its address
        answered as ``answered_as``, another id. A candidate with an alternate is to be asked
        again there (see the module docstring). No other candidate is asked at that address,
        but ``answered_as`` if this was the first request there."""
        cand = self._by_id.get(contact.id)
        if cand is None or cand.state in (_FAILED, _WAITING):
            return
        if cand.contact is not contact and cand.contact.address != contact.address:
            return  # an address it left failed late
        addresses, address = self._addresses, cand.contact.address
        addresses[address] = (answered_as if answered_as is not None and answered_as >= 0
                              and addresses.get(address) == _ASKING else _SPENT)
        self.failures += 1
        self._fail(cand)

    def unask(self, contact: Contact) -> None:
        """The request just chosen for ``contact`` (by :meth:`next_requests`) is not sent after
        all (its driver cannot or will not reach the address): it fails as with
        :meth:`on_failure`, and counts in neither ``requests`` nor ``rounds``, which count the
        requests sent. It still counts against ``max_requests``, so candidates left out so
        cannot make a lookup walk further than one that asks them."""
        cand = self._by_id.get(contact.id)
        if cand is None or cand.state is not _IN_FLIGHT or cand.contact is not contact:
            return
        asked_in = cand.round  # failing may move it to an alternate address, and its round
        self.on_failure(contact)
        rounds = self._asked_rounds
        rounds.remove(asked_in)
        self.rounds = max(rounds, default=0)

    @property
    def requests(self) -> int:
        """The requests sent (each candidate's first attempt; its retry is not counted)."""
        return len(self._asked_rounds)

    def widen(self) -> None:
        """End probing: the probe, if one is out, no longer holds the others back, and no
        candidate is asked alone again; ``alpha`` at a time from now on."""
        self.probe = None
        self._likely = None
        self._ensure()

    @property
    def probing(self) -> bool:
        """True while a probe is out and holds the other requests back."""
        return self.probe is not None

    def add(self, contacts: Iterable[Contact]) -> list[Contact]:
        """More first-round candidates (a driver's fallback); returns the ones that were new."""
        self._ensure()
        return self._add(contacts, 1)

    def stop(self) -> None:
        """End the lookup early (a value was found); nothing more will be asked."""
        self.stopped = True

    # ------------------------------------------------------------------ outputs

    @property
    def finished(self) -> bool:
        """True when stopped, or when the k closest non-failed candidates have all answered."""
        if self.stopped:
            return True
        if self._later is not None:  # first-round candidates not gathered yet
            return False
        if self._chosen >= self.max_requests:  # asks nobody more: done once nothing is in flight
            return self.in_flight == 0
        settled, answered = self._settle()
        return answered >= self.k or settled == len(self._order)

    def closest(self, count: int | None = None) -> list[Contact]:
        """The closest candidates that answered, closest first (the lookup's result)."""
        limit = self.k if count is None else count
        self._ensure()
        answered = [c.contact for c in self._order if c.state is _ANSWERED]
        return answered[:limit]

    def candidates(self) -> list[Candidate]:
        """Every candidate seen, closest first (for views and tests)."""
        self._ensure()
        return list(self._order)

    def gathered(self) -> list[Candidate]:
        """The candidates gathered so far, closest first: unlike :meth:`candidates`, without
        gathering the ``later`` ones first, so that looking changes nothing (a probe's other
        first candidates are gathered only if it misses)."""
        return list(self._order)

    # ------------------------------------------------------------------ internals

    def _settle(self) -> tuple[int, int]:
        """The number of closest candidates that are settled (each answered or failed: no
        input but a lie found out later changes those), and how many of them answered.
        Remembered between calls, so a candidate is walked past once while the order holds;
        taken back when a candidate comes in among them, when candidates are forgotten
        (:meth:`_trim`), or when one that answered fails."""
        order, settled, answered = self._order, self._settled, self._settled_answered
        end = len(order)
        while settled < end:
            state = order[settled].state
            if state is _ANSWERED:
                answered += 1
            elif state is not _FAILED:
                break
            settled += 1
        self._settled, self._settled_answered = settled, answered
        return settled, answered

    def _ask(self, cand: Candidate) -> Candidate:
        address = cand.contact.address
        # The first request there, or the second: the last.
        self._addresses[address] = _ASKING if address not in self._addresses else _SPENT
        cand.state = _IN_FLIGHT
        self.in_flight += 1
        self._chosen += 1
        self._asked_rounds.append(cand.round)
        if cand.round > self.rounds:
            self.rounds = cand.round
        return cand

    def _fail(self, cand: Candidate) -> None:
        """``cand`` failed: it frees its slot and its network's share, and moves to its
        alternate if it has one."""
        if cand.state is _IN_FLIGHT:
            self.in_flight -= 1
        elif cand.state is _ANSWERED:  # found out later (a lie): the settled count changes
            self._settled = self._settled_answered = 0
        cand.state = _FAILED
        if self._network is not None:
            self._free_share(cand.contact)
        if cand is self.probe:
            self.widen()
        if self._alternates:
            self._next_alternate(cand)

    def _ensure(self) -> None:
        """Gather the ``later`` candidates, if not done yet."""
        later = self._later
        if later is not None:
            self._later = None
            self._add(later(), 1)

    def _add(self, contacts: Iterable[Contact], round_: int) -> list[Contact]:
        # New candidates are appended, then the order is sorted once: a reply names up to k
        # contacts, and one sort of an almost sorted list costs less than k insertions.
        by_id = self._by_id
        skip = self._skip
        network = self._network
        own_id = self.own_id
        target = self.target
        added: list[Candidate] = []
        # Ids this input named at another address than their candidate's, and the failed
        # candidates it moved (both None, unless peers name one id at two addresses).
        named: list[int] | None = None
        revived: list[Contact] | None = None
        known_as, absent = by_id.get, _ABSENT  # one hash of the 256-bit id per contact named
        addresses = self._addresses
        for contact in contacts:
            node_id = contact.id
            known = known_as(node_id, absent)
            if known.contact is contact:  # named again as the very contact known: most are
                continue
            if known is not absent:
                # Named again as an equal contact (the routing table's, or decoded before): it
                # takes the known one's place, as the codec decodes a contact it met before as
                # one object, so the next naming is that object again. Seldom at another
                # address; never for one that answered (which takes no other address).
                if known.state is not _ANSWERED:
                    if known.contact.address == contact.address:
                        known.contact = contact
                        continue
                    if named is None:
                        named = []
                    if node_id not in named and known not in added:  # one address per input
                        named.append(node_id)
                        if self._named_at(known, contact, round_):
                            if revived is None:
                                revived = []
                            revived.append(contact)
                continue
            if node_id == own_id or (skip is not None and skip(contact)):
                continue
            if addresses and not self._may_stand(contact):
                continue
            if network is not None and not self._admit(contact, round_):
                continue
            cand = by_id[node_id] = Candidate(contact, node_id ^ target, round_)
            added.append(cand)
        if revived is not None:  # a failed candidate is to be asked again: not settled now
            self._settled = self._settled_answered = 0
        if not added:
            return [] if revived is None else revived
        order = self._order
        order.extend(added)
        order.sort(key=_DISTANCE)
        if self._settled and bisect.bisect_left(order, min(added)) < self._settled:
            self._settled = self._settled_answered = 0  # one came in among the settled
        if len(order) > self.max_candidates:
            self._trim(len(order) - self.max_candidates)
        new = [cand.contact for cand in added if cand.contact.id in by_id]
        if revived is not None:
            for contact in revived:
                moved = by_id.get(contact.id)
                if moved is not None and moved.contact is contact:  # not forgotten since
                    new.append(contact)
        return new

    def _named_at(self, cand: Candidate, contact: Contact, round_: int) -> bool:
        """``contact`` names ``cand``'s id at another address: keep it as an alternate of
        ``cand`` (bounded), or, if ``cand`` failed, move it there at once. True if it moved."""
        state = cand.state
        if state is _ANSWERED:
            return False
        node_id, address = contact.id, contact.address
        left = self._left.get(node_id)
        if left is not None and address in left:
            return False  # asked there before
        alternates = self._alternates.get(node_id)
        if alternates is not None and any(other.address == address for other, _ in alternates):
            return False
        if self._skip is not None and self._skip(contact):
            return False
        if not self._may_stand(contact):
            return False
        if state is _FAILED:
            return self._move(cand, contact, round_)
        if self._alternate_count >= self.max_candidates:
            return False
        if alternates is None:
            alternates = self._alternates[node_id] = []
        elif len(alternates) >= MAX_ALTERNATES:
            return False
        alternates.append((contact, round_))
        self._alternate_count += 1
        return False

    def _may_stand(self, contact: Contact) -> bool:
        """Whether ``contact`` may be asked at its address: none of this lookup's requests went
        there, or only the first one, which is still out, or was answered by the id asked, or
        by ``contact``'s id for another."""
        held = self._addresses.get(contact.address)
        return held is None or held in (_ASKING, _OPEN) or held == contact.id

    def _admit(self, contact: Contact, round_: int) -> bool:
        """Whether ``contact`` may stand as a candidate under the network-diversity rule: it
        takes a share of its network (True), or, that network's shares all taken, is refused
        (counted in :attr:`crowded`, kept aside) and False."""
        network = self._network
        name = network(contact) if network is not None else None
        if name is None:
            return True
        count = self._per_network.get(name, 0)
        if count >= self._max_per_network:
            self.crowded += 1
            self._refuse(name, contact, round_)
            return False
        self._per_network[name] = count + 1
        return True

    def _move(self, cand: Candidate, contact: Contact, round_: int) -> bool:
        """Move ``cand``, which failed (it holds no network share), to ``contact``, its id at
        another address, to be asked there as if newly named: it takes a share of that
        address's network, or is refused for it like any candidate (then kept aside under its
        new address, and False). Not to an address it may no longer stand at (False)."""
        if not self._may_stand(contact) or not self._admit(contact, round_):
            return False
        left = self._left.get(contact.id)
        if left is None:
            left = self._left[contact.id] = []
        left.append(cand.contact.address)  # one per request asked: bounded by max_requests
        cand.contact = contact
        cand.round = round_
        cand.state = _WAITING
        return True

    def _next_alternate(self, cand: Candidate) -> None:
        """``cand`` just failed: move it to its first alternate that its network's share
        admits (those it does not are kept aside, as refused candidates are)."""
        node_id = cand.contact.id
        alternates = self._alternates.get(node_id)
        if alternates is None:
            return
        while alternates and cand.state is _FAILED:
            contact, round_ = alternates.pop(0)
            self._alternate_count -= 1
            self._move(cand, contact, round_)  # it was asked, so not among the settled
        if not alternates:
            del self._alternates[node_id]

    def _drop_alternates(self, node_id: int) -> None:
        dropped = self._alternates.pop(node_id, None)
        if dropped is not None:
            self._alternate_count -= len(dropped)

    def _trim(self, excess: int) -> None:
        """Forget ``excess`` candidates (fewer if only in-flight, stalled and the ``k`` closest
        answered are left): the farthest failed ones first (they are kept only so that they are
        not asked again), then the farthest of those not asked yet and those that answered."""
        order = self._order
        answered_kept = 0
        closest_answered: set[int] = set()
        for cand in order:
            if answered_kept >= self.k:
                break
            if cand.state is _ANSWERED:
                closest_answered.add(id(cand))
                answered_kept += 1
        # Failed ones first, then the farthest of the others: one not asked yet that is closer
        # than an answer beyond the k closest answers may still move into them, that answer
        # never will.
        victims: set[int] = set()
        for states in ((_FAILED,), (_WAITING, _ANSWERED)):
            for cand in reversed(order):
                if len(victims) >= excess:
                    break
                if cand.state in states and id(cand) not in closest_answered:
                    victims.add(id(cand))
        if not victims:
            return
        kept: list[Candidate] = []
        for cand in order:
            if id(cand) in victims:
                del self._by_id[cand.contact.id]
                if self._alternates:
                    self._drop_alternates(cand.contact.id)
                if self._left:
                    self._left.pop(cand.contact.id, None)
                if cand.state is not _FAILED:
                    self._release_share(cand.contact)
            else:
                kept.append(cand)
        self._order = kept
        self._settled = self._settled_answered = 0

    def _release_share(self, contact: Contact) -> None:
        """``contact`` leaves the lookup without failing: its network's share is free again."""
        name = self._network(contact) if self._network is not None else None
        if name is None:
            return
        count = self._per_network.get(name, 0) - 1
        if count > 0:
            self._per_network[name] = count
        else:
            self._per_network.pop(name, None)

    def _refuse(self, name: str, contact: Contact, round_: int) -> None:
        """Keep ``contact``, refused for its network's share, among the ``k`` closest refused of
        that network."""
        refused = self._refused.get(name)
        if refused is None:
            if self._refused_count >= self.max_candidates:
                return  # a bound on memory: a share freed later goes to kept ones only
            refused = self._refused[name] = {}
        if contact.id in refused:
            return
        refused[contact.id] = (contact, round_)
        self._refused_count += 1
        if len(refused) > self.k or self._refused_count > self.max_candidates:
            target = self.target
            del refused[max(refused, key=lambda node_id: node_id ^ target)]
            self._refused_count -= 1

    def _free_share(self, contact: Contact) -> None:
        """``contact`` failed: it no longer holds a share of its network, which goes to the
        closest candidate of that network refused so far, if any."""
        assert self._network is not None
        name = self._network(contact)
        if name is None:
            return
        self._release_share(contact)
        refused = self._refused.get(name)
        target = self.target
        while refused:
            node_id = min(refused, key=lambda node_id: node_id ^ target)
            waiting, round_ = refused.pop(node_id)
            self._refused_count -= 1
            if not refused:
                del self._refused[name]
            if self._add((waiting,), round_):
                break
