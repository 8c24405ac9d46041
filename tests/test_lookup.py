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
