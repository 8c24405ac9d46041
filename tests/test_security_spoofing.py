"""Spoofed source addresses prove nothing (docs/SECURITY.md, "Amplification" and "Sybil and
eclipse attacks"): only a token proves that a requester receives our datagrams at its address.
Real encoded datagrams, a virtual clock."""

from __future__ import annotations

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.messages import Envelope, Ping
from qadom.node import Node

CONFIG = Config()
CODEC = Codec(CONFIG)


def run_until_answered_or_failed(node: Node, rpc_id: int, now: float) -> float:
    """Run ``node``'s timers until request ``rpc_id`` is over; returns the time then."""
    while rpc_id in node._pending:
        deadline = node.get_timer()
        assert deadline is not None
        now = max(now, deadline)
        node.handle_timer(now)
        node.datagrams_to_send()
    return now


def test_spoofed_requests_naming_a_dead_contact_do_not_keep_it_in_the_table() -> None:
    """A contact stopped answering. An off-path attacker sends requests from its address under
    its (public) id, without a token, between our failed requests: they prove nothing, so the
    contact still leaves its bucket after ``stale_failures`` failures in a row and its address
    enters the lookups' backoff. The same requests carrying the token we granted that address
    do count as a sign of life."""
    node = Node(node_id=0, now=0.0)
    dead = Contact(1 << 255, ("5.6.7.8", 4000))
    alive = Contact(1 << 254, ("5.6.9.8", 4000))
    node.table.seen(dead)
    node.table.seen(alive)
    token = node.token_for(alive.address)
    now = 0.0
    for attempt in range(CONFIG.stale_failures):
        for contact, proof in ((dead, None), (alive, token)):
            rpc_id = node.request(contact.address, Ping(), now, expect_id=contact.id)
            now = run_until_answered_or_failed(node, rpc_id, now)
            request = CODEC.encode(Envelope(1000 + attempt, contact.id, Ping(), proof,
                                            CONFIG.min_small_request_size))
            node.datagram_received(request, contact.address, now)
            node.datagrams_to_send()
    assert dead.id not in node.table
    assert node._dead.get(dead.address, 0.0) > now
    assert node.table.get(alive.id) == alive

