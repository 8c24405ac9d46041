"""The iterative lookup state machine, without any network."""

from __future__ import annotations

import random

from qadom.contact import Contact
from qadom.lookup import Lookup, State


def c(node_id: int) -> Contact:
    return Contact(node_id, ("127.0.0.1", node_id + 1))


def test_keeps_alpha_in_flight_closest_first() -> None:
    lookup = Lookup(0, k=3, alpha=2, initial=[c(8), c(1), c(4), c(2)])
    first = lookup.next_requests()
    assert [x.contact.id for x in first] == [1, 2]
    assert lookup.next_requests() == []  # alpha in flight
    lookup.on_reply(c(1), [c(3)])
    assert [x.contact.id for x in lookup.next_requests()] == [3]
    assert lookup.rounds == 2


def test_stall_frees_the_slot_at_once_and_failure_lets_the_next_move_up() -> None:
    lookup = Lookup(0, k=2, alpha=1, initial=[c(1), c(2), c(3)])
    assert [x.contact.id for x in lookup.next_requests()] == [1]
    lookup.on_stall(c(1))
    assert [x.contact.id for x in lookup.next_requests()] == [2]  # slot freed
    lookup.on_reply(c(2), [])
    assert lookup.next_requests() == []  # 1 is still a k-closest candidate, stalled
    assert not lookup.finished
    lookup.on_failure(c(1))
    assert [x.contact.id for x in lookup.next_requests()] == [3]  # 3 moves into the k closest
    lookup.on_reply(c(3), [])
    assert lookup.finished
    assert [x.id for x in lookup.closest()] == [2, 3]


def test_late_answer_from_a_stalled_peer_counts() -> None:
    lookup = Lookup(0, k=1, alpha=1, initial=[c(1)])
    lookup.next_requests()
    lookup.on_stall(c(1))
    lookup.on_reply(c(1), [])
    assert lookup.finished and [x.id for x in lookup.closest()] == [1]


def test_only_the_k_closest_are_asked_and_farther_ones_never_block() -> None:
    lookup = Lookup(0, k=2, alpha=3, initial=[c(1), c(2), c(50), c(60)])
    assert {x.contact.id for x in lookup.next_requests()} == {1, 2}
    lookup.on_reply(c(1), [])
    lookup.on_reply(c(2), [])
    assert lookup.finished
    unasked = {x.contact.id for x in lookup.candidates() if x.state is State.WAITING}
    assert unasked == {50, 60}


def test_ignores_own_id_duplicates_and_skipped() -> None:
    lookup = Lookup(0, k=5, alpha=5, initial=[c(1)], own_id=7, skip=lambda x: x.id == 9)
    lookup.next_requests()
    new = lookup.on_reply(c(1), [c(7), c(1), c(9), c(3), c(3)])
    assert new == [c(3)]


def test_empty_lookup_is_finished_and_stop_ends_early() -> None:
    assert Lookup(0, k=3, alpha=3, initial=[]).finished
    lookup = Lookup(0, k=3, alpha=3, initial=[c(1), c(2)])
    lookup.next_requests()
    lookup.stop()
    assert lookup.finished and lookup.next_requests() == []


def test_replies_from_unknown_or_repeated_are_ignored() -> None:
    lookup = Lookup(0, k=3, alpha=1, initial=[c(1), c(2)])
    lookup.next_requests()
    assert lookup.on_reply(c(2), [c(5)]) == []  # 2 was never asked
    lookup.on_reply(c(1), [])
    assert lookup.on_reply(c(1), [c(6)]) == []  # second answer ignored
    assert lookup.replies == 1


def on(node_id: int, host: str) -> Contact:
    return Contact(node_id, (host, 4000))


def test_one_network_gets_at_most_its_share_of_a_lookup() -> None:
    def network(contact: Contact) -> str | None:
        host = contact.address[0]
        return None if host.startswith("127.") else host.rsplit(".", 1)[0]

    honest = [on(100 + i, f"9.{i}.0.1") for i in range(4)]
    attacker = on(50, "1.2.3.1")
    lookup = Lookup(0, k=4, alpha=1, initial=[attacker, *honest], network=network,
                    max_per_network=2)
    assert [x.contact.id for x in lookup.next_requests()] == [50]
    # The attacker names 20 of its own, all closer to the target than anyone: one more gets in.
    sybils = [on(i, f"1.2.3.{i + 2}") for i in range(1, 21)]
    assert lookup.on_reply(attacker, sybils) == [sybils[0]]
    assert lookup.crowded == 19
    closest = [cand.contact.id for cand in lookup.candidates()][:4]
    assert closest == [1, 50, 100, 101]  # two of the attacker's network, then honest peers
    # Honest peers of other networks still bring theirs, and unlimited addresses all get in.
    assert [x.contact.id for x in lookup.next_requests()] == [1]
    named = [on(60, "9.9.9.9"), on(61, "127.0.0.1"), on(62, "127.0.0.2"), on(63, "127.0.0.3")]
    assert lookup.on_reply(sybils[0], named) == named and lookup.crowded == 19


def _walked_finished(lookup: Lookup) -> bool:
    """``finished`` walked from the closest candidate at every call, as by definition."""
    if lookup.stopped:
        return True
    if lookup.requests >= lookup.max_requests:
        return lookup.in_flight == 0
    eligible = 0
    for cand in lookup.candidates():
        if cand.state is State.FAILED:
            continue
        if cand.state is not State.ANSWERED:
            return False
        eligible += 1
        if eligible >= lookup.k:
            break
    return True


def _walked_next(lookup: Lookup) -> list[int]:
    """The ids ``next_requests`` must choose (a lookup without probing), walked from the
    closest candidate, as by definition."""
    if lookup.stopped or lookup.requests >= lookup.max_requests:
        return []
    chosen: list[int] = []
    in_flight, requests, eligible = lookup.in_flight, lookup.requests, 0
    for cand in lookup.candidates():
        if in_flight >= lookup.alpha or eligible >= lookup.k or requests >= lookup.max_requests:
            break
        if cand.state is State.FAILED:
            continue
        eligible += 1
        if cand.state is State.WAITING:
            chosen.append(cand.contact.id)
            in_flight += 1
            requests += 1
    return chosen


def test_what_is_asked_and_when_it_ends_match_a_walk_from_the_closest_every_time() -> None:
    # next_requests and finished remember how far the closest candidates are settled; every
    # input (a reply naming closer or farther peers, a stall, a failure of one in flight or of
    # one that answered, a trim) must give what a walk from the closest candidate gives.
    rng = random.Random(2024)
    for _ in range(300):
        k, alpha = rng.randint(1, 6), rng.randint(1, 3)
        universe = [c(i) for i in rng.sample(range(1, 400), 60)]
        lookup = Lookup(0, k=k, alpha=alpha, initial=rng.sample(universe, rng.randint(1, 8)),
                        max_candidates=rng.choice([k, 12, 100]), max_requests=40)
        for _ in range(80):
            assert lookup.finished is _walked_finished(lookup)
            expected = _walked_next(lookup)
            assert [x.contact.id for x in lookup.next_requests()] == expected
            asked = [x for x in lookup.candidates()
                     if x.state in (State.IN_FLIGHT, State.STALLED, State.ANSWERED)]
            if not asked:
                break
            cand = rng.choice(asked)
            roll = rng.random()
            if roll < 0.6:
                lookup.on_reply(cand.contact, rng.sample(universe, rng.randint(0, 5)))
            elif roll < 0.75:
                lookup.on_stall(cand.contact)
            else:
                lookup.on_failure(cand.contact)  # one that answered too: a lie found out
        assert lookup.finished is _walked_finished(lookup)


def at(node_id: int, host: str) -> Contact:
    """``node_id`` named at an address of ``host``: another address than :func:`c` gives it."""
    return Contact(node_id, (host, 9000))


def test_an_id_named_at_a_wrong_address_first_is_asked_at_the_right_one_when_that_fails() -> None:
    # A hostile peer answers first and names id 1 at an address that does not answer for it;
    # an honest peer then names 1 at its real address. The real one is asked once the fake
    # fails, and a late reply, stall or failure of the fake address changes nothing after.
    lookup = Lookup(0, k=2, alpha=2, initial=[c(5), c(6)])
    assert [x.contact.id for x in lookup.next_requests()] == [5, 6]
    fake = at(1, "10.0.0.9")
    assert lookup.on_reply(c(5), [fake]) == [fake]
    assert [x.contact for x in lookup.next_requests()] == [fake]
    assert lookup.on_reply(c(6), [c(1)]) == []  # not a new candidate: an alternate of 1
    assert lookup.next_requests() == [] and not lookup.finished
    lookup.on_failure(fake)
    assert [x.contact for x in lookup.next_requests()] == [c(1)]
    assert lookup.requests == 4 and lookup.failures == 1
    lookup.on_stall(fake)
    lookup.on_failure(fake)
    assert lookup.on_reply(fake, [c(3)]) == []
    assert lookup.in_flight == 1 and lookup.failures == 1 and lookup.replies == 2
    assert lookup.candidates()[0].state is State.IN_FLIGHT
    lookup.on_reply(c(1), [])
    assert lookup.finished and lookup.closest() == [c(1), c(5)]


def test_a_failed_candidate_named_at_a_new_address_is_asked_there() -> None:
    lookup = Lookup(0, k=1, alpha=1, initial=[at(1, "10.0.0.9"), c(5)])
    assert [x.contact for x in lookup.next_requests()] == [at(1, "10.0.0.9")]
    lookup.on_failure(at(1, "10.0.0.9"))
    assert [x.contact for x in lookup.next_requests()] == [c(5)]
    # Named at the address it failed at: nothing new; at another: asked again there.
    assert lookup.on_reply(c(5), [at(1, "10.0.0.9"), c(1)]) == [c(1)]
    assert not lookup.finished
    assert [x.contact for x in lookup.next_requests()] == [c(1)]
    lookup.on_reply(c(1), [])
    assert lookup.finished and lookup.closest() == [c(1)]


def test_a_candidate_that_answered_takes_no_alternate_and_no_address_is_asked_twice() -> None:
    lookup = Lookup(0, k=1, alpha=1, initial=[c(1)])
    lookup.next_requests()
    assert lookup.on_reply(c(1), [at(1, "10.0.0.9")]) == []
    lookup.on_failure(c(1))  # a lie found out later: no alternate was kept for it
    assert lookup.next_requests() == [] and lookup.finished
    # Failed at its first address, 1 is named at it again and at two new ones in one reply:
    # asked at the first new one only, and never again where it failed.
    lookup = Lookup(0, k=1, alpha=1, initial=[c(1), c(5)])
    lookup.next_requests()
    lookup.on_failure(c(1))
    lookup.next_requests()
    renamed = [c(1), at(1, "10.0.0.9"), at(1, "10.0.0.8")]
    assert lookup.on_reply(c(5), renamed) == [at(1, "10.0.0.9")]
    assert [x.contact for x in lookup.next_requests()] == [at(1, "10.0.0.9")]
    lookup.on_failure(at(1, "10.0.0.9"))
    assert lookup.finished
    assert lookup.add([c(1), at(1, "10.0.0.9")]) == [] and lookup.finished
    assert lookup.requests == 3


def test_alternates_are_bounded_per_candidate_and_in_all() -> None:
    # Eight peers name id 1 at an address each, one reply names it at four more: while 1 is in
    # flight, three alternates are kept, so it is asked at four addresses in all.
    peers = [c(100 + i) for i in range(8)]
    lookup = Lookup(0, k=9, alpha=9, initial=[c(1), *peers])
    assert len(lookup.next_requests()) == 9
    for i, peer in enumerate(peers):
        lookup.on_reply(peer, [at(1, f"10.0.{i}.1")] if i else
                        [at(1, f"10.1.{j}.1") for j in range(4)])
    asked = [c(1).address]
    for _ in range(8):
        lookup.on_failure(Contact(1, asked[-1]))
        asked += [x.contact.address for x in lookup.next_requests()]
    assert asked == [c(1).address, ("10.1.0.1", 9000), ("10.0.1.1", 9000), ("10.0.2.1", 9000)]
    # In all: at most max_candidates alternates, whatever the number of candidates.
    lookup = Lookup(0, k=8, alpha=8, initial=[c(i) for i in (1, 2, 3, 4, 50, 51, 52, 53)],
                    max_candidates=8)
    assert len(lookup.next_requests()) == 8
    for j, namer in enumerate((50, 51, 52)):  # each names 1 to 4 at an address of its own
        lookup.on_reply(c(namer), [at(i, f"10.{j}.{i}.1") for i in (1, 2, 3, 4)])
    assert lookup._alternate_count == 8
    assert sum(len(alternates) for alternates in lookup._alternates.values()) == 8


def _network_of(contact: Contact) -> str | None:
    return contact.address[0].rsplit(".", 1)[0]


def test_alternates_keep_the_network_shares_exact_and_no_address_is_asked_twice() -> None:
    # Ids named at random addresses of a few networks; outcomes (late ones of addresses left
    # too) in random order. At every step: each network's share counts the candidates of it
    # that have not failed, no more than max_per_network; no id is asked twice at an address;
    # alternates stay within their bounds; and what is asked matches a walk from the closest.
    rng = random.Random(77)
    for _ in range(200):
        k, alpha = rng.randint(1, 5), rng.randint(1, 3)
        max_candidates = rng.choice([k, 10, 100])

        def named() -> Contact:
            # One address per id and host: ids sharing an address are another rule's
            # (tests/test_security_scope.py).
            node_id = rng.randrange(1, 40)
            return Contact(node_id, (f"10.{rng.randrange(4)}.{rng.randrange(3)}", 9000 + node_id))

        lookup = Lookup(0, k=k, alpha=alpha, initial=[named() for _ in range(4)],
                        network=_network_of, max_per_network=2,
                        max_candidates=max_candidates, max_requests=60)
        asked: set[Contact] = set()
        outcomes: list[Contact] = []
        for _ in range(60):
            expected = _walked_next(lookup)
            chosen = [x.contact for x in lookup.next_requests()]
            assert [x.id for x in chosen] == expected
            assert not asked & set(chosen)
            asked.update(chosen)
            outcomes.extend(chosen)
            shares: dict[str, int] = {}
            for cand in lookup.candidates():
                if cand.state is not State.FAILED:
                    name = _network_of(cand.contact)
                    assert name is not None
                    shares[name] = shares.get(name, 0) + 1
            assert shares == lookup._per_network and max(shares.values(), default=0) <= 2
            assert lookup._alternate_count == sum(map(len, lookup._alternates.values()))
            assert lookup._alternate_count <= max_candidates
            assert all(len(alternates) <= 3 for alternates in lookup._alternates.values())
            if not outcomes:
                break
            contact = rng.choice(outcomes)
            roll = rng.random()
            if roll < 0.5:
                lookup.on_reply(contact, [named() for _ in range(rng.randint(0, 6))])
            elif roll < 0.65:
                lookup.on_stall(contact)
            else:
                lookup.on_failure(contact)
