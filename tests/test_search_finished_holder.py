"""A search's paging (Node.search) counts what it already read to the end: a holder read to its
end from at or before a point where another holder's page failed (or whose whole set came with
its answer to the lookup), and the searching node's own store, already hold the values past that
point, so the failed page is neither asked of it again nor, when it has gone since, a reason for
IncompleteSearch. A holder (or our store) that sent no value past the failed point, or whose read
began after it, covers nothing there: the search asks on, or fails. Sans-IO, virtual clock."""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable

import pytest

from qadom.call import Call
from qadom.config import Config
from qadom.contact import Address, Contact
from qadom.errors import IncompleteSearch
from qadom.messages import Entries, Envelope, Message, Nodes, Search
from qadom.node import Node, _Holder, _Paging
from qadom.storage import Meta

from helpers import answer_requests, node_near

TARGET = 1 << 210
PAGE = 10  # values a holder sends per page
WHOLE = list(range(30))  # three pages

Silent = Callable[[int, int], bool]  # (holder 0 or 1, point of a page request): no answer


def _page(values: list[int], after: int | None) -> Entries:
    rest = [v for v in values if after is None or v > after]
    return Entries(tuple(rest[:PAGE]), len(rest) > PAGE, ())


def _search(held: list[list[int]], silent: Silent, own: Iterable[int] = (),
            ) -> tuple[Call[set[int]], list[tuple[int, int]]]:
    """A search of TARGET by a node (k = 2) that knows two peers near it, holder i holding
    ``held[i]`` and serving it page by page but for the page requests ``silent`` names; the
    node's own store holds ``own``. Time runs in 5 s steps (each attempt of a request goes
    unanswered by the next) until the search is done. Its call, and the page requests
    (holder, after) it sent, retries included, in order."""
    _, _, contacts = node_near(TARGET, 2)
    node = Node(node_id=0, now=0.0, rng=random.Random(7), config=Config(k=2, alpha=2))
    for contact in contacts:
        node.table.seen(contact)
    for value in own:
        node.store.add_entry(TARGET, value, Meta(86400.0, 3600.0))
    index = {c.address: i for i, c in enumerate(contacts)}
    asked: list[tuple[int, int]] = []

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        i = index[address]
        if not isinstance(message, Search):
            return contacts[i].id, Nodes(())
        if message.after is not None:
            asked.append((i, message.after))
            if silent(i, message.after):
                return None
        return contacts[i].id, _page(held[i], message.after)

    call = node.search(TARGET, 0.0)
    now = 0.0
    while not call.done and now < 60.0:
        node.handle_timer(now)
        answer_requests(node, node.codec, reply, now)
        now += 5.0
    assert call.done
    return call, asked


def _asked_of(asked: list[tuple[int, int]], holder: int) -> list[int]:
    return [after for i, after in asked if i == holder]


def test_a_holder_gone_after_its_end_leaves_the_search_whole() -> None:
    # Both hold the three pages. Holder 0 goes silent for its second page; holder 1 serves its
    # second and third pages at once, then goes silent: it has gone. When holder 0's page
    # fails (two attempts, 10 s later), holder 1 was read to its end from its first page.
    ended: set[int] = set()

    def silent(holder: int, after: int) -> bool:
        if holder == 0 or holder in ended:
            return True
        if after >= WHOLE[-PAGE - 1]:  # it serves its last page now
            ended.add(holder)
        return False

    call, asked = _search([WHOLE, WHOLE], silent)
    assert call.exception() is None, call.exception()
    assert call.result() == set(WHOLE)
    assert _asked_of(asked, 1) == [PAGE - 1, 2 * PAGE - 1]  # its own read, once


def test_a_holder_read_to_its_end_is_not_asked_again() -> None:
    # As above, but holder 1 stays and would answer: it is not asked again either.
    call, asked = _search([WHOLE, WHOLE], lambda holder, after: holder == 0)
    assert call.result() == set(WHOLE)
    assert _asked_of(asked, 1) == [PAGE - 1, 2 * PAGE - 1]
    assert _asked_of(asked, 0) == [PAGE - 1, PAGE - 1]  # two attempts, no answer


def test_a_whole_set_in_the_answer_to_the_lookup_is_not_asked_for_again() -> None:
    # Holder 1 holds a part of the set that fits one page: its answer to the lookup said no
    # more follow, and it answers for its own part past holder 0's failed point.
    part = WHOLE[::3]
    call, asked = _search([WHOLE, part], lambda holder, after: holder == 0)
    assert call.result() == set(WHOLE[:PAGE]) | set(part)
    assert _asked_of(asked, 1) == []


def test_the_searching_nodes_own_store_stands_in_for_a_failed_page() -> None:
    # Neither holder serves its second page; the searching node holds the whole set itself,
    # read whole before its lookup.
    call, asked = _search([WHOLE, WHOLE], lambda holder, after: True, own=WHOLE)
    assert call.exception() is None, call.exception()
    assert call.result() == set(WHOLE)
    assert sorted(asked) == [(0, PAGE - 1)] * 2 + [(1, PAGE - 1)] * 2  # two attempts each


def test_an_own_store_with_nothing_past_the_failed_point_stands_in_for_nothing() -> None:
    call, _ = _search([WHOLE, WHOLE], lambda holder, after: True, own=WHOLE[:PAGE // 2])
    error = call.exception()
    assert isinstance(error, IncompleteSearch), error
    assert error.values == set(WHOLE[:PAGE])
    assert f"values after {PAGE - 1} could be read from none" in str(error)


def test_a_holder_read_to_its_end_with_nothing_past_the_failed_point_covers_nothing() -> None:
    # Holder 1 holds only the set's first 15 values: read to its end (two pages), it holds
    # none past the point where holder 0 stops answering (after its second page).
    short = WHOLE[:PAGE + PAGE // 2]
    call, asked = _search([WHOLE, short],
                          lambda holder, after: holder == 0 and after >= 2 * PAGE - 1)
    error = call.exception()
    assert isinstance(error, IncompleteSearch), error
    assert error.values == set(WHOLE[:2 * PAGE])  # never a part as if it were the whole
    assert _asked_of(asked, 1) == [PAGE - 1]  # known to hold nothing past it: not asked


def test_a_holder_read_to_its_end_from_a_later_point_is_asked_from_the_failed_one(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # No order of pages leads here (a substitute is read from a point only when nothing is read
    # from before it, and failures come later only at later points), so _Paging is driven by
    # hand: G was read from 19 to its end; F fails at 9. G's read does not cover 10..19, so it
    # is asked from 9, and when it does not answer the search fails.
    node = Node(node_id=0, now=0.0, rng=random.Random(3), config=Config(k=2))
    fetched: list[tuple[int, int]] = []
    monkeypatch.setattr(node, "_fetch_pages", lambda paging, holder, after, now:
                        fetched.append((holder.contact.id, after)))
    call: Call[set[int]] = Call("search")
    paging = _Paging(node, TARGET, call, set(WHOLE[:PAGE]), 0.0)
    f = _Holder(Contact(TARGET ^ 1, ("10.0.0.1", 4000)), WHOLE[:PAGE], True)
    g = _Holder(Contact(TARGET ^ 2, ("10.0.0.2", 4000)), WHOLE[:PAGE], True)
    paging.holders = {f.contact.id: f, g.contact.id: g}
    paging.begin([(f, PAGE - 1)], 0.0)
    g.start, paging.running = 2 * PAGE - 1, paging.running + 1  # as a substitute from 19
    end = Entries(tuple(WHOLE[2 * PAGE:]), False, ())
    paging.on_page(g, 2 * PAGE - 1, Envelope(1, g.contact.id, end), 1.0)
    assert not call.done
    paging.on_page(f, PAGE - 1, None, 2.0)
    assert fetched == [(f.contact.id, PAGE - 1), (g.contact.id, PAGE - 1)]
    paging.on_page(g, PAGE - 1, None, 3.0)
    error = call.exception()
    assert isinstance(error, IncompleteSearch), error
    assert error.values == set(WHOLE[:PAGE]) | set(WHOLE[2 * PAGE:])
