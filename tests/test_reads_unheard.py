"""A read that finds nothing says so (NotFoundError, an empty set) only when at least as many of
the peers nearest the key answered without it as failed it; otherwise those that did not answer
may hold it, and the read fails with OperationTimeout (Node.unheard). Sans-IO, virtual clock."""

from __future__ import annotations

import random

from qadom.config import Config
from qadom.contact import Address, Contact
from qadom.errors import NotFoundError, OperationTimeout
from qadom.messages import Entries, Message, Nodes, Search
from qadom.node import Node

from helpers import answer_requests, node_near

TARGET = 1 << 210


def run_read(silent: int, search: bool = False) -> tuple[Node, BaseException | None]:
    """A read of TARGET by a node knowing 5 contacts near it (k = 5) of which the ``silent``
    closest never answer and the others answer without it."""
    _, _, contacts = node_near(TARGET, 5)
    node = Node(node_id=0, now=0.0, rng=random.Random(1), config=Config(k=5, alpha=5))
    for contact in contacts:
        node.table.seen(contact)
    quiet = {c.address for c in contacts[:silent]}
    ids = {c.address: c.id for c in contacts}

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        if address in quiet:
            return None
        if isinstance(message, Search):
            return ids[address], Entries((), False, ())
        return ids[address], Nodes(())

    call = node.search(TARGET, 0.0) if search else node.get(TARGET, 0.0)
    for now in (0.0, 5.0, 10.0, 15.0):
        node.handle_timer(now)
        answer_requests(node, node.codec, reply, now)
    assert call.done
    return node, call.exception()


def test_a_get_whose_nearest_peers_mostly_stay_silent_fails_with_a_timeout() -> None:
    _, error = run_read(silent=3)
    assert isinstance(error, OperationTimeout), error
    assert "3 of the peers nearest it did not answer" in str(error)
    assert "against 2 that answered" in str(error)


def test_a_get_whose_nearest_peers_mostly_answer_says_not_found() -> None:
    _, error = run_read(silent=2)  # as under churn: some are gone, the others answer
    assert isinstance(error, NotFoundError), error


def test_a_search_whose_nearest_peers_mostly_stay_silent_fails_rather_than_say_empty() -> None:
    _, error = run_read(silent=4, search=True)
    assert isinstance(error, OperationTimeout), error
    _, error = run_read(silent=1, search=True)
    assert error is None  # an empty set: four of five answered


def test_peers_passed_over_for_a_backoff_count_as_not_answering() -> None:
    """The nearest contacts failed of late (their addresses are in backoff): a read does not ask
    them, and what farther peers say without the value does not make it NotFound."""
    _, _, near = node_near(TARGET, 3)
    node = Node(node_id=0, now=0.0, rng=random.Random(2), config=Config(k=4, alpha=4))
    far = [Contact(TARGET ^ (1 << (120 + i)), (f"10.0.1.{i + 1}", 4000)) for i in range(1)]
    for contact in (*near, *far):
        node.table.seen(contact)
        if contact in near:
            node._dead[contact.address] = 100.0  # failed of late: skipped until then
    ids = {c.address: c.id for c in far}
    call = node.get(TARGET, 1.0)
    asked = answer_requests(node, node.codec, lambda a, m: (ids[a], Nodes(tuple(near))), 1.0)
    assert asked and set(asked) <= set(ids)  # only the far one is asked
    assert call.done and isinstance(call.exception(), OperationTimeout), call.exception()
