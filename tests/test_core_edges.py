"""Edge cases of the lookups' fallback and of per-host budgets: a lookup whose last candidates
are of the other IP family still falls back on the routing table, and IPv6 link-local neighbours
(which all share fe80::/64, on every link) are each their own host."""

from __future__ import annotations

from dataclasses import replace

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Contact, host_key
from qadom.messages import Envelope, Error, ErrorCode, Nodes
from qadom.node import Node
from qadom.pubsub import RelayTable

from helpers import answer_requests


def test_a_lookup_whose_last_candidates_are_unreachable_falls_back_on_the_table() -> None:
    """Of the two first candidates one answers with an error, the other names only IPv6
    contacts, which an IPv4 socket cannot ask: the lookup has one answer of the two it wants,
    and asks the contact of the table it did not start with, as it does when its candidates
    fail by timeout."""
    config = replace(Config(), k=2, alpha=2)
    node = Node(node_id=0, now=0.0, config=config)
    node.ipv6 = False
    codec = Codec(config)
    target = 1 << 200
    near = Contact(target ^ (1 << 100), ("1.2.3.4", 4000))
    dead = Contact(target ^ (1 << 101), ("2.3.4.5", 4000))
    spare = Contact(1 << 201, ("3.4.5.6", 4000))  # in another bucket, not among the first k
    for contact in (near, dead, spare):
        node.table.seen(contact)
    assert len(node.table) == 3
    named = (Contact(target ^ 1, ("2a00:1450::1", 4000)),
             Contact(target ^ 2, ("2a00:1451::1", 4000)))
    call = node.find_nodes(target, 0.0)
    sent = {address: codec.decode(data) for data, address in node.datagrams_to_send()}
    assert set(sent) == {near.address, dead.address}
    refusal = Envelope(sent[dead.address].rpc_id, dead.id,
                       Error(ErrorCode.INTERNAL, "broken"))
    node.datagram_received(codec.encode(refusal), dead.address, 0.1)  # no use to the lookup
    now = 0.2
    reply = Envelope(sent[near.address].rpc_id, near.id, Nodes(named))
    node.datagram_received(codec.encode(reply), near.address, now)
    assert node.stats["unreachable"] == 2
    asked = [address for _, address in node.datagrams_to_send()]
    assert asked == [spare.address]
    assert not call.done


def test_ipv6_link_local_neighbours_are_each_their_own_host() -> None:
    """Every link-local address is in fe80::/64, whatever the link: that /64 is no end site's,
    and counting it as one host would make all the IPv6 peers of a LAN share one budget."""
    assert host_key("fe80::1%eth0") != host_key("fe80::2%eth0")
    assert host_key("fe80::1%eth0") != host_key("fe80::1%eth1")
    relays = RelayTable(100, 100, 600.0, max_per_host=1, max_per_host_topic=1)
    assert relays.subscribe(1, ("fe80::1%eth0", 4000), 60.0, 0.0)[0] == RelayTable.OK
    assert relays.subscribe(2, ("fe80::2%eth0", 4000), 60.0, 0.0)[0] == RelayTable.OK
    assert relays.subscribe(3, ("fe80::1%eth0", 4001), 60.0, 0.0)[0] == (
        RelayTable.HOST_TOO_MANY_TOPICS)
    relays.unsubscribe(1, ("fe80::1%eth0", 4000))
    relays.unsubscribe(2, ("fe80::2%eth0", 4000))
    assert relays.held_by("fe80::1%eth0") == relays.held_by("fe80::2%eth0") == 0


def test_a_private_peer_cannot_send_a_lookup_to_our_loopback_as_the_unspecified_address() -> None:
    """A datagram to 0.0.0.0 or :: reaches this machine (Linux delivers it as to loopback): a
    peer on our network, which may not name our loopback, may not name those either."""
    node = Node(node_id=0, now=0.0, config=replace(Config(), alpha=1, k=4))
    codec = Codec(node.config)
    target = 1 << 200
    peer = Contact(target ^ (1 << 100), ("10.1.2.3", 4000))
    node.table.seen(peer)
    named = (Contact(target ^ 1, ("0.0.0.0", 80)), Contact(target ^ 2, ("::", 80)),
             Contact(target ^ 3, ("::ffff:0.0.0.0", 80)), Contact(target ^ 4, ("192.168.1.5", 80)))
    ids = {c.address: c.id for c in (peer, *named)}
    call = node.find_nodes(target, 0.0)
    asked = answer_requests(node, codec, lambda address, _: (
        ids[address], Nodes(named if address == peer.address else ())), 0.1)
    assert call.done
    assert asked == [peer.address, ("192.168.1.5", 80)]
    assert node.stats["contacts_out_of_scope"] == 3
