"""Ping-before-evict (paper section 2.2) and hand-overs (section 2.5) at the edges: however the
ping a full bucket asks for ends, the bucket may ask for the next one; every contact that enters
the table among our k closest, a replacement promoted by a split too, is handed its items."""

from __future__ import annotations

import pytest

from qadom import Config
from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.ids import ID_SPACE, key_for
from qadom.messages import Envelope, Error, ErrorCode, Message, Ping, Pong, Store
from qadom.node import Node
from qadom.routing import RoutingTable
from qadom.storage import published_meta

from helpers import answer_requests

H = ID_SPACE // 2  # the far half from id 0
Q = H // 2


def _drain(node: Node, codec: Codec) -> list[tuple[Envelope, Address]]:
    return [(codec.decode(data), address) for data, address in node.datagrams_to_send()]


def _run_timers(node: Node, until: float) -> None:
    """Run ``node``'s timers due up to ``until``; what it sends meanwhile (resends) is lost."""
    for _ in range(1000):
        at = node.get_timer()
        if at is None or at > until:
            return
        node.handle_timer(at)
        node.datagrams_to_send()
    raise AssertionError("timers kept coming")


ENDINGS = ["answers", "refuses for our rate", "silent, blamed on our rate", "silent",
           "another id answers"]


@pytest.mark.parametrize("cache", [20, 0])
@pytest.mark.parametrize("ending", ENDINGS)
def test_however_a_ping_before_evict_ends_the_bucket_may_ask_for_another(
        ending: str, cache: int) -> None:
    """Our far bucket (k = 2) holds B and C, B least recently seen; B refused a ping of ours for
    our rate. A newcomer N sets off a ping of B, which ends as ``ending``: a silence within the
    time B's refusal explains says nothing about B (it keeps its place; without a replacement
    cache N, which waited only for that ping, is dropped, as when B answers). Whatever the
    ending, the bucket is pinging nobody after it, and the next newcomer sets off a ping of the
    bucket's least recently seen contact: newcomers do not all end in the replacement cache
    (with no interval between pings: ping_before_evict_interval, tested below, puts off the
    next one after an answered ping)."""
    # split_bits=1: the far half is one bucket that may not split (section 2.2 alone).
    config = Config(k=2, replacement_cache_size=cache, ping_before_evict_interval=0, split_bits=1)
    node = Node(node_id=0, now=0.0, config=config)
    codec = Codec(config)
    for i in (1, 2):  # our neighbourhood: the far bucket may not split
        node.table.seen(Contact(i, (f"10.0.0.{i}", 4000)))
    b, c = Contact(H + 1, ("10.0.1.1", 4000)), Contact(H + 2, ("10.0.1.2", 4000))
    newcomer, next_one = Contact(H + 3, ("10.0.1.3", 4000)), Contact(H + 4, ("10.0.1.4", 4000))
    ids = {p.address: p.id for p in (b, c, newcomer, next_one)}
    start = 10.0 if ending == "silent" else 0.0  # past the refusal's reach, or within it

    node.ping(b.address, 0.0)
    answer_requests(node, codec, lambda address, message: (
        b.id, Error(ErrorCode.RATE_LIMITED, "slow down")), 0.0)
    node.table.seen(c)
    bucket = node.table.bucket_for(H)
    assert list(bucket.contacts) == [b.id, c.id]

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        if address != b.address:
            return ids[address], Pong()
        if ending == "answers":
            return b.id, Pong()
        if ending == "refuses for our rate":
            return b.id, Error(ErrorCode.RATE_LIMITED, "slow down")
        if ending == "another id answers":
            return 3, Pong()  # a node of our neighbourhood now answers there
        return None

    _run_timers(node, start)
    node.ping(newcomer.address, start)
    asked = answer_requests(node, codec, reply, start)
    assert asked[:2] == [newcomer.address, b.address]  # N answered, then B was pinged
    _run_timers(node, start + 5.0)  # every attempt of the ping has timed out
    assert bucket is node.table.bucket_for(H)
    assert bucket.pinging is None
    node.table.check_invariants()
    if ending == "silent, blamed on our rate":
        assert node.stats["timeouts_rate_limited"] >= 1
        assert list(bucket.contacts) == [b.id, c.id]  # kept, still the least recently seen
        assert list(bucket.replacements) == ([newcomer.id] if cache else [])

    node.ping(next_one.address, start + 5.0)
    sent = _drain(node, codec)
    assert [(type(e.message), a) for e, a in sent] == [(Ping, next_one.address)]
    node.datagram_received(codec.encode(Envelope(sent[0][0].rpc_id, next_one.id, Pong())),
                           next_one.address, start + 5.0)
    oldest = bucket.least_recently_seen()
    assert [(type(e.message), a) for e, a in _drain(node, codec)] == [(Ping, oldest.address)]
    assert bucket.pinging == oldest.id


def test_a_kept_contact_stays_where_it_was_and_only_the_ping_it_is_under_is_settled() -> None:
    """RoutingTable.kept ends the ping-before-evict of the contact it names, and only that one:
    the contact keeps its place and its failures; without a cache the newcomer is dropped."""
    table = RoutingTable(0, k=2, replacement_cache_size=0)
    for i in (1, 2, H + 1, H + 2):
        table.seen(Contact(i, (f"10.0.0.{i % 250}", 1)))
    assert not table.failed(H + 2)  # one failure, no replacement waiting: it stays
    oldest = table.seen(Contact(H + 3, ("10.0.0.9", 1)))
    assert oldest is not None and oldest.id == H + 1
    bucket = table.bucket_for(H)
    table.kept(H + 2)  # not the one pinged: nothing changes
    assert bucket.pinging == H + 1 and list(bucket.replacements) == [H + 3]
    table.kept(H + 1)
    assert bucket.pinging is None and not bucket.replacements
    assert list(bucket.contacts) == [H + 1, H + 2] and bucket.failures == {H + 2: 1}
    table.check_invariants()


def test_seen_reports_the_contacts_that_entered_the_table() -> None:
    """``entered`` gets the contact seen when it is added, the replacements a split promoted, and
    nothing for a contact that only waits as a replacement or was known already."""
    table = RoutingTable(0, k=2)
    entered: list[Contact] = []
    near = [Contact(i, (f"10.0.0.{i}", 1)) for i in (1 << 10, 1 << 11)]
    far = [Contact(H + Q + i, (f"10.0.1.{i}", 1)) for i in (1, 2)]
    waiting = Contact(H + 1, ("10.0.2.1", 1))
    for contact in near + far:
        table.seen(contact, entered)
    assert entered == near + far
    entered.clear()
    assert table.seen(waiting, entered) == far[0]  # waits: ping-before-evict of the oldest
    table.seen(far[0], entered)  # it answered
    assert entered == []
    table.remove(near[1].id)  # fewer than k contacts closer than the far half now
    table.seen(Contact(H + Q, ("10.0.3.1", 1)), entered)  # splits the far bucket, then waits
    assert entered == [waiting]
    assert table.get(waiting.id) == waiting and table.get(H + Q) is None
    table.check_invariants()


def test_a_replacement_a_split_promotes_among_our_k_closest_is_handed_only_its_items() -> None:
    """A (k = 2) holds a value whose key it is the closest to. Its far bucket of B and C is full,
    D (closer to A than both) waits as a replacement, since two contacts of A's neighbourhood
    are closer still. One of them leaves; then E answers: fewer than k contacts are closer than
    E, so the far bucket splits, its half holding D takes D in, and E waits in the other half,
    full. D entered A's table among A's k closest, but it is not one of the k closest to the
    key: A and the neighbour left are closer to it. So A sends it nothing, nor to E, which did
    not enter (a newcomer that is one of the k closest is handed its items:
    tests/test_hand_over_range.py)."""
    config = Config(k=2, split_bits=1)  # splits by the relaxed rule only
    value = b"handed over on a split"
    key = key_for(value)
    node = Node(node_id=key ^ 1, now=0.0, config=config)
    codec = Codec(config)
    node.store.put_value(key, value, published_meta(0.0, config))

    def contact(offset: int, host: str) -> Contact:
        return Contact(node.id ^ offset, (host, 4000))

    n1, n2 = contact(1 << 10, "10.0.0.1"), contact(1 << 11, "10.0.0.2")
    b, c = contact(H + Q + 1, "10.0.1.1"), contact(H + Q + 2, "10.0.1.2")
    d, e = contact(H + 1, "10.0.2.1"), contact(H + Q, "10.0.3.1")
    for known in (n1, n2, b, c):
        node.table.seen(known)
    ids = {p.address: p.id for p in (n1, n2, b, c, d, e)}

    def answered(peer: Contact, now: float) -> list[tuple[Envelope, Address]]:
        """``peer`` answers a ping: what ``node`` sends then (pings it sets off are answered)."""
        node.ping(peer.address, now)
        sent: list[tuple[Envelope, Address]] = []
        for _ in range(10):
            out = _drain(node, codec)
            if not out:
                return sent
            sent += out
            for envelope, address in out:
                if isinstance(envelope.message, Ping):
                    node.datagram_received(codec.encode(Envelope(
                        envelope.rpc_id, ids[address], Pong())), address, now)
        raise AssertionError("pings kept coming")

    answered(d, 1.0)
    assert node.table.get(d.id) is None  # waits: n1 and n2 are closer, the bucket may not split
    node.table.remove(n2.id)
    sent = answered(e, 2.0)
    assert node.table.get(d.id) == d and node.table.get(e.id) is None
    assert d in node.table.closest(node.id, config.k)
    stores = [(envelope.message, address) for envelope, address in sent
              if isinstance(envelope.message, Store)]
    assert n1.id ^ key < d.id ^ key  # with A (the closest), D is the (k+1)-th to the key
    assert stores == [], sent
    assert not any(isinstance(envelope.message, Store) for envelope, _ in answered(d, 3.0))


@pytest.mark.parametrize("ending", ["answers", "silent"])
def test_after_an_answered_ping_before_evict_newcomers_wait_without_one_for_a_while(
        ending: str) -> None:
    """Our far bucket (k = 2) is full. A newcomer sets off a ping of its least recently seen
    contact B. If B answers, newcomers within ``ping_before_evict_interval`` wait as
    replacements without a ping; the first after it pings the bucket's least recently seen
    contact again. If B stays silent, it is evicted as before, and the next newcomer is not put
    off."""
    config = Config(k=2, replacement_cache_size=20, ping_before_evict_interval=60.0,
                    split_bits=1)  # the far half: one bucket that may not split
    node = Node(node_id=0, now=0.0, config=config)
    codec = Codec(config)
    for i in (1, 2):  # our neighbourhood: the far bucket may not split
        node.table.seen(Contact(i, (f"10.0.0.{i}", 4000)))
    b, c = Contact(H + 1, ("10.0.1.1", 4000)), Contact(H + 2, ("10.0.1.2", 4000))
    node.table.seen(b)
    node.table.seen(c)
    bucket = node.table.bucket_for(H)
    newcomers = [Contact(H + 3 + i, (f"10.0.1.{3 + i}", 4000)) for i in range(3)]
    ids = {p.address: p.id for p in (b, c, *newcomers)}

    def reply(address: Address, message: Message) -> tuple[int, Message] | None:
        if address == b.address and ending == "silent":
            return None
        return ids[address], Pong()

    node.ping(newcomers[0].address, 0.0)
    asked = answer_requests(node, codec, reply, 0.0)
    assert asked == [newcomers[0].address, b.address]
    _run_timers(node, 10.0)
    node.ping(newcomers[1].address, 10.0)
    asked = answer_requests(node, codec, reply, 10.0)
    if ending == "answers":
        assert asked == [newcomers[1].address]  # no ping of B: it answered one 10 s ago
        assert node.stats["evict_pings_put_off"] == 1
        assert bucket.pinging is None and list(bucket.contacts) == [c.id, b.id]
        assert newcomers[1].id in bucket.replacements
        _run_timers(node, 70.0)
        node.ping(newcomers[2].address, 70.0)
        asked = answer_requests(node, codec, reply, 70.0)
        assert asked == [newcomers[2].address, c.address]  # past the interval: a ping again
    else:
        assert b.id not in bucket.contacts  # evicted: the newcomer took its place
        assert asked[0] == newcomers[1].address and node.stats["evict_pings_put_off"] == 0
    node.table.check_invariants()
