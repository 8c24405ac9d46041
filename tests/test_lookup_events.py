"""Every request of a lookup ends in an event, so a display of it never shows a peer as asked
after the lookup is over: a reply, a final timeout, or a refusal (an ERROR, or an answer of no
use), which is a final timeout that says why."""

from __future__ import annotations

import random

import pytest
from nacl.signing import SigningKey

from qadom import Config, Node
from qadom.contact import Contact
from qadom.errors import OperationAbandoned, StaleSequence
from qadom.events import (
    LookupEvent,
    LookupFinished,
    LookupRefused,
    LookupReply,
    LookupRequest,
    LookupTimeout,
)
from qadom.lookup import Lookup
from qadom.messages import Error, ErrorCode, FindNode, Message, Nodes, Pong
from qadom.namespace import storage_key
from qadom.sim import SimNetwork
from qadom.widgets import ASKED, FAILED, LookupView

from helpers import signed_record


def _ended(events: list[LookupEvent]) -> tuple[int, int, list[LookupRefused]]:
    requests = sum(isinstance(e, LookupRequest) for e in events)
    ended = sum(isinstance(e, LookupReply) or (isinstance(e, LookupTimeout) and e.final)
                for e in events)
    return requests, ended, [e for e in events if isinstance(e, LookupRefused)]


def test_sim_refusals_and_useless_answers_end_their_requests_in_events() -> None:
    net = SimNetwork(4)
    nodes = net.build(200)
    origin, target = nodes[0], random.Random(1).getrandbits(256)
    closest = net.true_closest(target, 10, exclude=origin.id)
    refusing, useless = set(closest[:5]), set(closest[5:])

    def refuse(message: FindNode, sender: int | None, address: object, now: float) -> Message:
        return Error(ErrorCode.RATE_LIMITED, "slow down")

    def pong(message: FindNode, sender: int | None, address: object, now: float) -> Message:
        return Pong()  # not the NODES a FIND_NODE asks for

    for node in nodes:
        if node.id in refusing:
            node.register_handler(FindNode, refuse)
        elif node.id in useless:
            node.register_handler(FindNode, pong)
    events: list[LookupEvent] = []
    origin.add_listener(events.append)
    view = LookupView(origin, target=target)
    report = net.lookup(origin, target)
    requests, ended, refused = _ended(events)
    assert requests == report.requests and ended == requests
    assert {e.contact.id for e in refused} == refusing | useless
    assert {e.code for e in refused if e.contact.id in refusing} == {ErrorCode.RATE_LIMITED}
    assert {e.code for e in refused if e.contact.id in useless} == {None}
    assert all(e.final for e in refused)
    assert report.failures == len(refused)
    assert sum(p.state == ASKED for p in view.peers.values()) == 0
    assert sum(p.state == FAILED for p in view.peers.values()) == report.failures


def test_sim_a_lookup_its_operation_gave_up_on_is_not_said_to_have_found_a_value() -> None:
    """A find_nodes cancelled while its lookup asks: the lookup stops at the next reply, and
    its LookupFinished says it was given up, not that it found the value; so does the view."""
    net = SimNetwork(5)
    nodes = net.build(60)
    origin, target = nodes[0], random.Random(2).getrandbits(256)
    events: list[LookupEvent] = []
    origin.add_listener(events.append)
    view = LookupView(origin, target=target)
    call = net.call(origin, origin.find_nodes, target)
    call.fail(OperationAbandoned("find_nodes was cancelled"))
    net.run_for(5.0)
    (finished,) = [e for e in events if isinstance(e, LookupFinished)]
    assert finished.given_up and not finished.found_value
    assert view.status == "given up"
    quiet: list[LookupEvent] = []
    origin.add_listener(quiet.append)
    assert net.run_call(net.call(origin, origin.find_nodes, target))
    (done,) = [e for e in quiet if isinstance(e, LookupFinished)]
    assert not done.given_up and not done.found_value


def test_a_namespace_set_refuted_by_a_newer_record_ends_given_up_not_found() -> None:
    """A replica holding a newer seq fails the set: its lookup stopped because the operation
    ended, which the events and the view say, instead of "found the value"."""
    net = SimNetwork(4)
    nodes = net.build(200)
    owner = SigningKey(b"\x01" * 32)
    net.run_call(net.call(nodes[0], nodes[0].namespace.set, signed_record(owner, 7, 2, b"new")))
    skey = storage_key(bytes(owner.verify_key), 7)
    writer = next(n for n in nodes[1:] if n.namespace.local(skey, net.now) is None)
    view = LookupView(writer, kind="namespace")
    events: list[LookupEvent] = []
    writer.add_listener(events.append)
    with pytest.raises(StaleSequence):
        net.run_call(net.call(writer, writer.namespace.set, signed_record(owner, 7, 1, b"old")))
    finished = [e for e in events if isinstance(e, LookupFinished)]
    assert len(finished) == 1 and finished[0].kind == "namespace"
    assert finished[0].given_up and not finished[0].found_value
    assert not any(e.found_value for e in events if isinstance(e, LookupReply))
    assert view.status == "given up"
    view.close()


def test_a_candidate_left_out_without_a_request_is_no_request_and_no_round() -> None:
    """Peers name a contact at a multicast address, closer to the target than any node: the
    lookup leaves it out (no datagram goes there), so it counts as a failure, not as a request,
    and the rounds are those of the requests sent."""
    net = SimNetwork(1, config=Config(k=4, alpha=1))
    nodes = net.build(12)
    origin, target = nodes[0], random.Random(7).getrandbits(256)
    nowhere = Contact(target ^ 1, ("224.0.0.1", 4000))
    for node in nodes[1:]:
        def handler(message: FindNode, sender: int | None, address: object, now: float,
                    node: Node = node) -> Message:
            honest = node.table.closest(message.target, node.config.k, exclude=sender)
            return Nodes(tuple([nowhere, *honest])[:node.config.k])

        node.register_handler(FindNode, handler)
    events: list[LookupEvent] = []
    origin.add_listener(events.append)
    report = net.lookup(origin, target)
    (finished,) = [e for e in events if isinstance(e, LookupFinished)]
    asked = [e for e in events if isinstance(e, LookupRequest)]
    assert origin.stats["contacts_out_of_scope"] >= 1
    assert report.requests == finished.requests == len(asked)
    assert finished.rounds == max(e.round for e in asked) == report.rounds
    assert finished.failures >= 1


def test_a_candidate_left_out_at_one_address_is_asked_at_its_other() -> None:
    """X is named at a multicast address (left out) and, by a closer peer, at its own: the
    lookup asks it there, and counts the rounds and requests of what it sent."""
    p = Contact(1 << 200, ("127.0.0.2", 4000))
    q = Contact(1 << 100, ("127.0.0.3", 4000))
    x = Contact(1 << 150, ("224.0.0.1", 4000))
    x_real = Contact(x.id, ("127.0.0.4", 4000))
    lookup = Lookup(0, 3, 1, [p])
    assert [c.contact for c in lookup.next_requests()] == [p]
    lookup.on_reply(p, [q, x])
    assert [c.contact for c in lookup.next_requests()] == [q]
    lookup.on_reply(q, [x_real])  # another address for x: its alternate, in round 3
    assert [c.contact for c in lookup.next_requests()] == [x]
    lookup.unask(x)  # the driver does not send to a multicast address
    assert (lookup.requests, lookup.rounds) == (2, 2)
    (again,) = lookup.next_requests()
    assert again.contact.address == x_real.address and again.round == 3
    assert (lookup.requests, lookup.rounds) == (3, 3)
