"""The bound on requests out to one address (Config.max_requests_in_flight) and the sharing of
identical reads (qadom.node._SharedRead), on the sans-IO core with a virtual clock."""

from __future__ import annotations

import random
from collections.abc import Callable

from qadom import Config
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Address
from qadom.errors import OperationAbandoned, OperationTimeout
from qadom.ids import key_for
from qadom.messages import Entries, Envelope, Message, Nodes, Ping, Pong, Value
from qadom.node import Node
from qadom.sim import SimNetwork

from helpers import node_near

A: Address = ("10.0.0.1", 4000)
B: Address = ("10.0.0.2", 4000)


def sent(node: Node) -> list[tuple[Envelope, Address]]:
    codec = Codec(node.config)
    return [(codec.decode(data), address) for data, address in node.datagrams_to_send()]


def answer(node: Node, request: Envelope, address: Address, message: Message, sender: int,
           now: float) -> None:
    node.datagram_received(Codec(node.config).encode(Envelope(request.rpc_id, sender, message)),
                           address, now)


def test_requests_past_the_bound_wait_and_go_out_in_order_as_places_free() -> None:
    # (Failures put no address into backoff here: that fails those waiting, tested below.)
    node = Node(node_id=0, now=0.0, rng=random.Random(1),
                config=Config(max_requests_in_flight=4, dead_after_failures=100))
    replies: list[tuple[int, Envelope | None]] = []

    def note(i: int) -> Callable[[Envelope | None, float], None]:
        return lambda envelope, now: replies.append((i, envelope))

    ids = [node.request(A, Ping(), 0.0, on_reply=note(i)) for i in range(10)]
    node.request(B, Ping(), 0.0)
    out = sent(node)
    assert [a for _, a in out] == [A] * 4 + [B]  # B has places of its own
    assert [e.rpc_id for e, _ in out[:4]] == ids[:4]
    assert node.stats["requests_queued"] == 6
    answer(node, out[0][0], A, Pong(), 7, 0.01)
    (nxt, address), = sent(node)
    assert (nxt.rpc_id, address) == (ids[4], A)  # the oldest waiting one takes the place
    assert replies == [(0, replies[0][1])] and replies[0][1] is not None
    # The four out time out and are resent, keeping their places (a peer that does not answer
    # may be overrun: more requests would not help it); those waiting stay unsent. When the four
    # fail for good, each failure sends the next one waiting, whose attempts start only then.
    node.handle_timer(100.0)
    assert sorted(e.rpc_id for e, a in sent(node) if a == A) == sorted(ids[1:5])
    assert replies[1:] == []
    node.handle_timer(200.0)
    assert sorted(i for i, e in replies if e is None) == [1, 2, 3, 4]
    assert sorted(e.rpc_id for e, a in sent(node) if a == A) == sorted(ids[5:9])
    for at in (300.0, 400.0, 500.0, 600.0):
        node.handle_timer(at)
    assert sorted(i for i, _ in replies) == list(range(10))  # every one ended, none lost
    assert not node._in_flight and not node._waiting and not node._queued


def test_past_the_queue_bound_a_request_fails_unsent_and_counts_against_nobody() -> None:
    node = Node(node_id=0, now=0.0, rng=random.Random(2),
                config=Config(max_requests_in_flight=1, max_queued_requests=2))
    replies: list[Envelope | None] = []
    for _ in range(4):
        node.request(A, Ping(), 0.0, on_reply=lambda e, now: replies.append(e))
    assert len(sent(node)) == 1
    assert replies == []  # not during the call that asked for it
    node.handle_timer(0.0)
    assert replies == [None] and node.stats["requests_shed"] == 1
    assert A not in node._failures and A not in node._dead


def test_a_lookup_request_waiting_for_an_address_that_failed_meanwhile_is_not_sent() -> None:
    target = 1 << 200
    _, _, contacts = node_near(target)
    node = Node(node_id=0, now=0.0, rng=random.Random(3), config=Config(
        k=3, alpha=3, max_requests_in_flight=1, dead_after_failures=1, stale_failures=1,
        probe_gets=False, rpc_retries=0))  # (no resend: the first timeout is a failure)
    for contact in contacts:
        node.table.seen(contact)
    gets = [node.get(target ^ i, 0.0) for i in range(3)]  # each asks the dead one first
    dead = contacts[0].address
    to_dead: list[Envelope] = []
    for now in (0.0, 5.0, 10.0, 15.0):  # the others answer at once; the first never does
        node.handle_timer(now)
        out = sent(node)
        while out:  # an answer frees a place for a request that waited: answered in turn
            for request, address in out:
                if address == dead:
                    to_dead.append(request)
                else:
                    holder = next(c for c in contacts if c.address == address)
                    answer(node, request, address, Nodes(()), holder.id, now)
            out = sent(node)
    assert dead in node._dead
    # The first lookup's request there; never the others', still waiting when it failed and
    # put the address into backoff: they were dropped unsent, and their lookups went on.
    assert len(to_dead) == 1
    assert node.stats["requests_dropped"] == 2
    assert all(get.done for get in gets)
    assert not node._waiting and not node._queued


def test_identical_gets_share_one_lookup_while_it_has_heard_nothing() -> None:
    value = b"shared"
    key = key_for(value)
    node, _, contacts = node_near(key)
    calls = [node.get(key, 0.0) for _ in range(50)]
    out = sent(node)
    assert len(out) == 1  # the probe, once for all fifty
    assert node.stats["reads_shared"] == 49
    request, address = out[0]
    answer(node, request, address, Value(value, 60), contacts[0].id, 0.01)
    assert all(c.result() == value for c in calls)


def test_a_read_asked_after_the_lookup_heard_an_answer_starts_its_own() -> None:
    key = 1 << 201
    node, _, contacts = node_near(key)
    early = node.get(key, 0.0)
    (request, address), = sent(node)
    answer(node, request, address, Nodes(()), contacts[0].id, 0.01)  # the probe misses
    sent(node)
    late = node.get(key, 0.02)
    assert node.stats["reads_shared"] == 0
    assert sent(node)  # a lookup of its own
    assert not early.done and not late.done


def test_a_caller_that_stops_waiting_leaves_the_others_their_lookup() -> None:
    value = b"kept"
    key = key_for(value)
    node, _, contacts = node_near(key)
    first, second = node.get(key, 0.0), node.get(key, 0.0)
    (request, address), = sent(node)
    first.fail(OperationAbandoned("cancelled"))
    answer(node, request, address, Value(value, 60), contacts[0].id, 0.01)
    assert second.result() == value


def test_when_every_caller_stopped_waiting_the_shared_lookup_stops_asking() -> None:
    key = 1 << 202
    node, _, contacts = node_near(key)
    calls: list[Call[bytes]] = [node.get(key, 0.0), node.get(key, 0.0)]
    (request, address), = sent(node)
    for call in calls:
        call.fail(OperationAbandoned("cancelled"))
    answer(node, request, address, Nodes(tuple(contacts)), contacts[0].id, 0.01)
    assert sent(node) == []  # the probe missed, and nobody waits: no more requests
    assert node.get(key, 0.02) is not None and sent(node)  # a new read asks again


def test_searches_sharing_a_lookup_each_get_a_set_of_their_own() -> None:
    key = 1 << 203
    node, _, contacts = node_near(key)
    calls = [node.search(key, 0.0) for _ in range(3)]
    for request, address in sent(node):
        holder = next(c for c in contacts if c.address == address)
        answer(node, request, address, Entries((4, 9), False, ()), holder.id, 0.01)
    results = [c.result() for c in calls]
    assert results == [{4, 9}] * 3
    results[0].add(1)
    assert results[1] == {4, 9} and len({id(r) for r in results}) == 3


def test_a_read_shares_no_lookup_begun_before_a_write_of_ours_ended() -> None:
    key = 1 << 205
    node, _, _ = node_near(key)
    early = node.search(key, 0.0)
    sent(node)
    write: Call[None] = Call("append")
    node._register_write(key, write)  # any write of ours (set, append, namespace, /dht)
    write.resolve(None)  # ... ended: a read asked now must see what it stored
    late = node.search(key, 0.1)
    assert node.stats["reads_shared"] == 0 and sent(node)  # a lookup of its own
    assert not early.done and not late.done


def test_a_search_that_joins_a_lookup_moves_its_deadline() -> None:
    key = 1 << 206
    _, _, contacts = node_near(key)
    config = Config(k=3, alpha=3, rpc_timeout=10.0, rpc_timeout_max=10.0, rpc_timeout_min=10.0,
                    operation_timeout=30.0)
    node = Node(node_id=0, now=0.0, rng=random.Random(5), config=config)
    for contact in contacts:
        node.table.seen(contact)
    early = node.search(key, 0.0)  # nobody answers: the lookup waits on its timeouts
    sent(node)
    node.handle_timer(25.0)
    late = node.search(key, 25.0)
    assert node.stats["reads_shared"] == 1
    node.handle_timer(31.0)
    assert not late.done  # asked at 25: not past its 30 s at 31
    node.handle_timer(56.0)
    assert late.done and isinstance(late.exception(), OperationTimeout)
    assert early.done


def test_requests_other_than_lookups_waiting_for_an_address_in_backoff_still_go_out() -> None:
    """Only a lookup's request (which goes on with others) fails unsent when its address enters
    backoff: a write, a delivery or a hand-over waiting there goes out in turn, since a peer that
    failed a few requests in a row under loss still answers most."""
    node = Node(node_id=0, now=0.0, rng=random.Random(6), config=Config(
        max_requests_in_flight=1, rpc_retries=0, dead_after_failures=1))
    replies: list[Envelope | None] = []
    for _ in range(3):
        node.request(A, Ping(), 0.0, on_reply=lambda e, now: replies.append(e))
    assert len(sent(node)) == 1
    node.handle_timer(5.0)  # the one out fails: the address enters backoff
    assert A in node._dead
    second, = sent(node)  # the next one waiting goes out all the same
    answer(node, second[0], A, Pong(), 7, 5.1)
    third, = sent(node)
    answer(node, third[0], A, Pong(), 7, 5.2)
    assert replies[0] is None and all(r is not None for r in replies[1:])
    assert node.stats["requests_dropped"] == 0 and not node._waiting and not node._in_flight


def test_a_probe_or_a_page_waiting_for_a_place_is_not_sent_once_its_read_is_over() -> None:
    key = 1 << 207
    _, _, contacts = node_near(key)
    node = Node(node_id=0, now=0.0, rng=random.Random(7),
                config=Config(k=3, alpha=3, max_requests_in_flight=1))
    for contact in contacts:
        node.table.seen(contact)
    near = contacts[0]
    node.request(near.address, Ping(), 0.0)  # holds the nearest contact's only place
    ping, = sent(node)
    get = node.get(key, 0.0)  # its probe waits for that place
    assert sent(node) == []
    get.fail(OperationAbandoned("cancelled"))
    answer(node, ping[0], near.address, Pong(), near.id, 0.01)
    node.handle_timer(0.01)
    assert sent(node) == [] and node.stats["requests_dropped"] == 1


def test_a_burst_of_publishes_under_heavy_loss_all_reach_the_subscriber() -> None:
    """190 messages published at once to a topic under 20% loss: the relays' deliveries queue
    for the subscriber's places. Failures in a row under loss put its address into backoff now
    and then; its deliveries waiting then still go out, and every message arrives, in order."""
    net = SimNetwork(5)
    nodes = net.add_nodes(8)
    net.loss = 0.2
    publisher, subscriber = nodes[1], nodes[-1]
    got: list[bytes] = []
    _, call = net.call(subscriber, subscriber.pubsub.subscribe, 4242, got.append)
    assert net.run_call(call) > 0
    calls = [net.call(publisher, publisher.pubsub.publish, 4242, b"%05d" % i)
             for i in range(190)]
    net.run_for(60)
    assert all(c.done and c.exception() is None for c in calls)
    assert got == [b"%05d" % i for i in range(190)]
