"""The sans-IO node driven on a virtual clock: RPC rules, verification, liars, paging, events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest

from qadom import Config, NoPeersError, NotFoundError
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.errors import InvalidArgument, InvalidType, OperationTimeout, ValueTooLarge
from qadom.events import LookupEvent, LookupFinished, LookupReply, LookupRequest, LookupStarted
from qadom.ids import key_for
from qadom.messages import (
    Envelope,
    Error,
    ErrorCode,
    FindValue,
    Message,
    Nodes,
    Ping,
    Pong,
    Value,
)
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import Meta

from helpers import answer_requests

CONFIG = Config()


def network(count: int, seed: int = 1, **kwargs: object) -> tuple[SimNetwork, list[Node]]:
    net = SimNetwork(seed=seed, **kwargs)  # type: ignore[arg-type]
    return net, net.add_nodes(count)


def record_sizes(nodes: list[Node]) -> list[int]:
    """Wrap each node's outbox so the test sees every datagram's size."""
    sizes: list[int] = []
    for node in nodes:
        original: Callable[[], list[tuple[bytes, Address]]] = node.datagrams_to_send

        def wrapped(original: Callable[[], list[tuple[bytes, Address]]] = original,
                    ) -> list[tuple[bytes, Address]]:
            out = original()
            sizes.extend(len(data) for data, _ in out)
            return out

        node.datagrams_to_send = wrapped  # type: ignore[method-assign]
    return sizes


def test_malformed_datagrams_are_dropped_counted_and_the_node_still_answers() -> None:
    net, (a, b) = network(2)
    before = dict(a.stats)
    for junk in (b"", b"\xff", b"\x85\x01\x01\x01\x01\x01", b"x" * 20000, bytes(range(256))):
        a.datagram_received(junk, ("127.9.9.9", 1), net.now)
    assert a.stats["malformed"] == before.get("malformed", 0) + 5
    assert a.stats["internal_errors"] == 0
    assert net.run_call(net.call(b, b.ping, net.address_of(a))).id == a.id


def test_unexpected_replies_are_counted_and_ignored() -> None:
    net, (a, b) = network(2)
    codec = Codec(CONFIG)
    a.datagram_received(codec.encode(Envelope(12345, b.id, Pong())), net.address_of(b), net.now)
    assert a.stats["unexpected"] == 1
    # A reply with the right request id but from another address is not accepted either.
    rpc_id = a.request(net.address_of(b), Ping(), net.now)
    a.datagram_received(codec.encode(Envelope(rpc_id, b.id, Pong())), ("127.9.9.9", 1), net.now)
    assert a.stats["unexpected"] == 2


def test_requests_retry_then_fail_in_bounded_time() -> None:
    net, (a, b) = network(2)
    net.remove(b)
    outcome: list[tuple[Envelope | None, float]] = []
    start = net.now
    a.request(net.address_of(b), Ping(), net.now, expect_id=b.id,
              on_reply=lambda env, now: outcome.append((env, now)))
    net.run_for(10)
    assert len(outcome) == 1
    envelope, when = outcome[0]
    assert envelope is None
    assert when - start <= (1 + CONFIG.rpc_retries) * CONFIG.rpc_timeout_max + 1e-9
    assert a.stats["retries"] >= 1 and a.stats["timeouts"] >= 1


def test_contact_enters_table_only_after_answering() -> None:
    net = SimNetwork(seed=3)
    a, b = net.add_node(), net.add_node()
    # b asks a something; a has never heard from b.
    b.request(net.address_of(a), Ping(), net.now)
    net.step()  # deliver b's request to a (and nothing more)
    assert b.id not in a.table
    net.run_for(5)  # a pings b, b answers
    assert b.id in a.table


def test_spoofed_sender_never_enters_the_table() -> None:
    net = SimNetwork(seed=2)
    a, b = net.add_node(), net.add_node()  # a has never heard of b
    codec = Codec(CONFIG)
    spoofed = 0xABC
    a.datagram_received(codec.encode(Envelope(1, spoofed, Ping())), net.address_of(b), net.now)
    net.call(a, lambda now: None)  # flush a's outbox into the network
    net.run_for(5)
    assert spoofed not in a.table and b.id in a.table
    assert a.stats["wrong_id"] == 1


def test_a_requester_from_a_network_that_holds_its_share_is_not_verified() -> None:
    node = Node(node_id=0, now=0.0)
    codec = Codec(CONFIG)
    for i in range(CONFIG.max_table_contacts_per_prefix):  # one /24 fills its table share
        node.table.seen(Contact((i + 1) << 240, (f"1.2.3.{i + 1}", 4000)))
    newcomer = (200 << 240) + 5
    node.datagram_received(codec.encode(Envelope(1, newcomer, Ping())), ("1.2.3.200", 4000), 0.0)
    sent = node.datagrams_to_send()
    assert [codec.decode(data).message for data, _ in sent] == [Pong()]  # the answer, no PING
    assert node.stats["verify_skipped"] == 1 and newcomer not in node.table
    # The same request from another network is verified as usual.
    node.datagram_received(codec.encode(Envelope(2, newcomer + 1, Ping())), ("5.6.7.8", 4000),
                           0.0)
    kinds = [type(codec.decode(data).message) for data, _ in node.datagrams_to_send()]
    assert kinds == [Pong, Ping]


def test_ask_each_reports_every_outcome_once() -> None:
    net, nodes = network(5, seed=9)
    asker, gone = nodes[0], nodes[4]
    contacts = [Contact(n.id, net.address_of(n)) for n in nodes[1:]]
    net.remove(gone)
    outcomes: list[list[tuple[Contact, Message | None]]] = []
    asker.ask_each(contacts, Ping(), net.now, lambda replies, now: outcomes.append(replies))
    net.run_for(30)
    assert len(outcomes) == 1
    by_id = {contact.id: reply for contact, reply in outcomes[0]}
    assert by_id == {**{c.id: Pong() for c in contacts[:3]}, gone.id: None}
    asker.ask_each([], Ping(), net.now, lambda replies, now: outcomes.append(replies))
    assert outcomes[-1] == []  # nobody to ask: at once


def test_a_lookup_takes_two_candidates_of_a_network_whatever_its_peers_name() -> None:
    node = Node(node_id=0, now=0.0)
    codec = Codec(CONFIG)
    target = 1 << 200
    attacker = Contact(target ^ (1 << 190), ("1.2.3.1", 4000))  # the closest we know
    node.table.seen(attacker)
    for i in range(6):
        node.table.seen(Contact(target ^ ((i + 2) << 195), (f"9.{i}.0.1", 4000)))
    sybils = tuple(Contact(target ^ (i + 1), ("1.2.3.2", 4001 + i)) for i in range(20))
    ids = {c.address: c.id for c in (*node.table, *sybils)}
    call = node.find_nodes(target, 0.0)
    # Every request answered: the attacker's with sybils, the rest with nothing.
    asked = answer_requests(node, codec, lambda address, _: (
        ids[address], Nodes(sybils if address == attacker.address else ())), 0.1)
    assert call.done
    assert sum(1 for a in asked if a[0].startswith("1.2.3.")) == 2  # the attacker and one sybil
    assert node.stats["lookup_crowded"] == 19
    assert sum(1 for c in call.result() if c.address[0].startswith("1.2.3.")) == 2


def test_get_refuses_a_wrong_value_and_drops_the_liar() -> None:
    net, nodes = network(30, seed=5)
    value = b"the truth"
    key = key_for(value)
    writer = nodes[1]
    net.run_call(net.call(writer, writer.set, value))
    # The liar is the node closest to the key; a reader with alpha = 1 asks it first.
    liar = min((n for n in nodes if n is not writer), key=lambda n: n.id ^ key)
    liar.register_handler(FindValue, lambda message, sender, address, now: Value(b"lies"))
    reader = net.add_node(config=replace(CONFIG, alpha=1))
    net.run_call(net.call(reader, reader.bootstrap, [net.address_of(nodes[0])]))
    reader.table.seen(Contact(liar.id, net.address_of(liar)))
    assert reader.table.closest(key, 1)[0].id == liar.id
    assert net.run_call(net.call(reader, reader.get, key)) == value
    assert reader.stats["liars"] == 1 and liar.id not in reader.table
    # Answering again does not bring the liar back while its ban lasts...
    assert net.run_call(net.call(reader, reader.ping, net.address_of(liar))).id == liar.id
    net.run_call(net.call(liar, liar.find_nodes, reader.id))  # it asks; the reader verifies it
    net.run_for(5)
    assert liar.id not in reader.table
    assert net.run_call(net.call(reader, reader.get, key)) == value  # and it is not asked
    assert reader.stats["liars"] == 1
    # ...but once the ban is over, an answer is an answer.
    net.run_for(CONFIG.liar_backoff)
    net.run_call(net.call(reader, reader.ping, net.address_of(liar)))
    assert liar.id in reader.table


def test_a_liar_claiming_an_honest_id_is_banned_by_its_address_alone() -> None:
    """A liar names an honest contact's id at its own address, then answers as that id with a
    false value. The address that lied is banned and what our table holds there dropped; the
    honest contact of that id, at its own address, keeps its place and is asked next time."""
    config = replace(CONFIG, k=2, alpha=1)
    node = Node(node_id=0, now=0.0, config=config)
    codec = Codec(config)
    value = b"the truth"
    key = key_for(value)
    liar_address: Address = ("1.2.3.4", 4000)
    liar = Contact(key ^ 1, liar_address)  # the closest to the key we know
    other = Contact(key ^ 2, ("5.6.7.8", 4000))
    honest = Contact(key ^ (1 << 255), ("9.9.9.9", 4000))  # far from the key: not a first pick
    for contact in (liar, other, honest):
        node.table.seen(contact)
    asked: list[Address] = []

    def reply(address: Address, request: Message) -> tuple[int, Message]:
        asked.append(address)
        if address == liar_address and asked.count(address) == 1:  # asked as itself
            return liar.id, Nodes((Contact(honest.id, liar_address),))
        if address == liar_address:  # asked as the honest id it named
            return honest.id, Value(b"lies")
        if address == other.address:  # no help: the named contact moves up
            return other.id, Error(ErrorCode.STORAGE_UNAVAILABLE, "cannot be read")
        return honest.id, Value(value)

    def get(now: float) -> bytes:
        call = node.get(key, now)
        answer_requests(node, codec, reply, now)
        return call.result()

    # The lie is refused, and the honest id, named at its own address by our table, is asked
    # there; no cached copy goes to the address that lied.
    assert get(0.0) == value
    assert node.stats["liars"] == 1 and asked.count(liar_address) == 2
    assert liar.id not in node.table
    assert node.table.get(honest.id) == honest
    # Whatever id answers from the liar's address is kept out; the honest id is not.
    assert node._is_banned(Contact(7, liar_address), 1.0)
    assert not node._is_banned(honest, 1.0)
    asked.clear()
    assert get(1.0) == value
    assert honest.address in asked and liar_address not in asked


def test_missing_key_is_not_found_in_bounded_time_with_dead_peers() -> None:
    net, nodes = network(40, seed=6)
    for dead in nodes[10:15]:
        net.remove(dead)
    start = net.now
    with pytest.raises(NotFoundError) as info:
        net.run_call(net.call(nodes[0], nodes[0].get, 12345))
    assert isinstance(info.value, KeyError)
    assert net.now - start < CONFIG.operation_timeout


def test_search_of_thousands_pages_and_no_datagram_exceeds_the_limit() -> None:
    net, nodes = network(25, seed=7)
    sizes = record_sizes(nodes)
    reader = nodes[9]
    holder = min((n for n in nodes if n is not reader), key=lambda n: n.id ^ 99)
    for value in range(3000):
        holder.store.add_entry(99, value * 7919, Meta(expires=net.now + 3600))
    found = net.run_call(net.call(reader, reader.search, 99))
    assert found == {value * 7919 for value in range(3000)}
    assert sizes and max(sizes) <= CONFIG.max_datagram_size
    assert sum(1 for s in sizes if s > 3000) >= 3000 // CONFIG.search_page_size


def test_search_collects_from_every_replica_across_pages() -> None:
    net, nodes = network(25, seed=8)
    for i in range(500):
        net.run_call(net.call(nodes[i % 5], nodes[i % 5].append, 4242, i))
    assert net.run_call(net.call(nodes[20], nodes[20].search, 4242)) == set(range(500))
    assert net.run_call(net.call(nodes[21], nodes[21].search, 4243)) == set()


def test_an_expired_entry_is_not_served_before_the_sweep_removes_it() -> None:
    net, nodes = network(12, seed=10)
    reader = nodes[4]
    holders = [n for n in nodes if n is not reader]
    net.run_for(1.0)
    for node in nodes:  # every copy expires between two upkeep sweeps
        node.store.add_entry(77, 1, Meta(expires=net.now + 5))
        node.store.add_entry(77, 2, Meta(expires=net.now + 3600))
    assert net.run_call(net.call(reader, reader.search, 77)) == {1, 2}
    net.run_for(10.0)  # past the first entry's expiry, before the next sweep
    assert holders[0].store.stats()["entries"] == 2  # still stored, no longer served
    assert net.run_call(net.call(reader, reader.search, 77)) == {2}


def test_full_size_values_travel_and_oversize_is_refused_before_storing() -> None:
    net, nodes = network(10, seed=9)
    big = bytes(range(256)) * 32
    assert len(big) == 8192
    key = net.run_call(net.call(nodes[1], nodes[1].set, big))
    nodes[1].store = type(nodes[1].store)()  # forget locally; must come from the network
    assert net.run_call(net.call(nodes[7], nodes[7].get, key)) == big
    before = nodes[2].store.stats()
    with pytest.raises(ValueTooLarge):
        nodes[2].set(big + b"x", net.now)
    with pytest.raises(InvalidType):
        nodes[2].set("text", net.now)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument):
        nodes[2].get(-1, net.now)
    assert nodes[2].store.stats() == before


def test_bootstrap_to_nobody_fails_clearly() -> None:
    net = SimNetwork(seed=10)
    node = net.add_node()
    with pytest.raises(NoPeersError):
        net.run_call(net.call(node, node.bootstrap, [("127.200.0.1", 4000)]))


def test_operations_end_at_their_deadline() -> None:
    config = Config(operation_timeout=3.0, rpc_timeout=10.0, rpc_timeout_min=10.0,
                    rpc_timeout_max=10.0)
    net = SimNetwork(seed=11, config=config)
    a, b = net.add_node(), net.add_node()
    net.run_call(net.call(b, b.bootstrap, [net.address_of(a)]))
    net.latency = (5.0, 5.0)  # every answer now arrives after the deadline
    with pytest.raises(OperationTimeout):
        net.run_call(net.call(b, b.find_nodes, 5))


def test_lookup_events_tell_the_whole_story() -> None:
    net, nodes = network(60, seed=12)
    events: list[LookupEvent] = []
    nodes[0].add_listener(events.append)
    target = 2**255 + 12345
    result = net.run_call(net.call(nodes[0], nodes[0].find_nodes, target))
    assert isinstance(events[0], LookupStarted) and isinstance(events[-1], LookupFinished)
    requests = [e for e in events if isinstance(e, LookupRequest)]
    replies = [e for e in events if isinstance(e, LookupReply)]
    finished = events[-1]
    assert finished.requests == len(requests) and finished.replies == len(replies)
    assert [c.id for c in finished.closest] == [c.id for c in result]
    assert all(e.distance == e.contact.id ^ target for e in requests)
    assert finished.rounds == max(e.round for e in requests)
    truth = sorted((n.id for n in nodes[1:]), key=lambda i: i ^ target)[:20]
    assert [c.id for c in result] == truth


def test_datagram_handling_never_raises_on_handler_bugs() -> None:
    net, (a, b) = network(2)

    def broken(message: object, sender: object, address: object, now: float) -> Pong:
        raise RuntimeError("bug")

    a.register_handler(Ping, broken)
    call = net.call(b, b.ping, net.address_of(a))
    net.run_for(5)
    assert call.done and a.stats["internal_errors"] == 1
