"""Hand-overs (section 2.5) are charged to where they go, not only to the newcomer's id.

Ids cost nothing: a peer that joins our k closest under ever new ids, from new ports of one host
or from one address answering under a new id at every reply, must not buy a batch of copies of
our items with each. An address handed items is handed none under another id for an interval,
a host (a public address's network; loopback is exempt) at most ``republish_batch`` items per
``republish_interval``, and a contact that entered through a reply under an id other than the
one asked is handed nothing then (Node._hand_over, Node._on_reply). Honest newcomers from other
hosts still get their items at join. A request the full request queue sheds (copies to an
address that answers nothing, say) is never encoded (Node.request).
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import pytest

from qadom import Config
from qadom.codec import Codec
from qadom.ids import key_for
from qadom.messages import Envelope, Message, Ping, Pong, Store, Stored
from qadom.node import Node
from qadom.storage import Meta

CONFIG = Config()
OWN = random.Random(1).getrandbits(256)
H = 1 << 200  # the attacker's ids differ from ours first at this bit: among our k closest
ATTACKER = "93.184.216.34"  # a public address: its /24 is one hand-over host
HONEST = ("151.101.1.1", 4000)  # a public address of another network
HONEST_ID = OWN ^ 1  # the closest id there can be to ours


def holder() -> tuple[Node, Codec]:
    """A sans-IO node holding 400 values for others, and a codec of its config."""
    node = Node(config=CONFIG, rng=random.Random(2), node_id=OWN)
    for i in range(400):
        value = b"%08d" % i * 16
        node.store.put_value(key_for(value), value,
                             Meta(expires=1e12, republish_at=1e12, source="10.0.0.9"))
    return node, Codec(CONFIG)


def requests_to(node: Node, codec: Codec, address: tuple[str, int]) -> list[Envelope]:
    """The requests ``node`` sends to ``address`` now (everything else it sends is dropped)."""
    sent = [codec.decode(data) for data, to in node.datagrams_to_send() if to == address]
    return [envelope for envelope in sent if envelope.message.IS_REQUEST]


def reply(node: Node, codec: Codec, request: Envelope, sender: int | None, message: Message,
          address: tuple[str, int], now: float) -> None:
    node.datagram_received(codec.encode(Envelope(request.rpc_id, sender, message)), address,
                           now)


def join(node: Node, codec: Codec, address: tuple[str, int], node_id: int,
         now: float) -> list[Envelope] | None:
    """A PING from ``node_id`` at ``address`` (unproven, as a newcomer's first), its
    verification ping answered as ``node_id``: the requests ``node`` then sends there (a
    hand-over's), or None if it did not verify the newcomer (no room in its table)."""
    node.datagram_received(codec.encode(Envelope(1, node_id, Ping(), None, 48)), address, now)
    ping = next((e for e in requests_to(node, codec, address) if isinstance(e.message, Ping)),
                None)
    if ping is None:
        return None
    reply(node, codec, ping, node_id, Pong(), address, now)
    return requests_to(node, codec, address)


def stores(sent: list[Envelope] | None) -> list[Envelope]:
    return [envelope for envelope in sent or [] if isinstance(envelope.message, Store)]


def attacker_ids() -> Iterator[int]:
    """Ids among our k closest, each closer to ours than the one before."""
    for i in range(H - 1, 0, -1):
        yield OWN ^ (H | i)


def port_cycle(node: Node, codec: Codec, cycles: int, now: float, step: float) -> float:
    """One public host joins from a new port under a new id at each cycle, and answers one of
    the copies handed over to it under no id: taken as the contact gone (another id answers),
    which frees its network's place in our table for the next port. Returns the time after."""
    ids = attacker_ids()
    for cycle in range(cycles):
        address = (ATTACKER, 10_000 + cycle)
        handed = stores(join(node, codec, address, next(ids), now))
        if handed:
            reply(node, codec, handed[0], None, Stored(), address, now)
            node.datagrams_to_send()
        now += step
        node.handle_timer(now)
        node.datagrams_to_send()
    return now


def test_one_public_host_cycling_ports_and_ids_is_handed_one_batch_an_interval() -> None:
    node, codec = holder()
    port_cycle(node, codec, 100, 0.0, 0.001)
    assert 0 < node.stats["handed_over"] <= CONFIG.republish_batch
    assert node.stats["hand_overs_refused"] >= 1
    assert node.stats["requests_shed"] == 0


def test_a_peer_answering_under_ever_new_ids_from_one_address_is_handed_nothing_more() -> None:
    """On loopback (no per-host budget, no per-network limit): the peer joins as itself and is
    handed its batch, then answers every request under a fresh id, closer to ours each time."""
    node, codec = holder()
    address = ("127.9.9.9", 4444)
    ids = attacker_ids()
    now = 0.0
    sent = join(node, codec, address, next(ids), now)
    assert stores(sent)
    handed = node.stats["handed_over"]
    replies = 0
    while replies < 300 and now < 600.0:  # every request it gets for ten virtual minutes
        if not sent:
            now += 1.0
            node.handle_timer(now)
            sent = requests_to(node, codec, address)
            continue
        for request in sent:
            answer: Message = Pong() if isinstance(request.message, Ping) else Stored()
            reply(node, codec, request, next(ids), answer, address, now)
            replies += 1
        sent = requests_to(node, codec, address)
    assert replies >= handed  # the whole hand-over, each copy answered under a new id
    assert node.stats["wrong_id"] == replies
    assert node.stats["handed_over"] == handed


def test_an_address_handed_items_is_handed_none_under_another_id_within_the_interval() -> None:
    """On loopback (no per-host budget): the peer joins as Y1 and takes in its batch, leaves
    our table, then joins again from the same address as Y2 once it may be verified again: Y2
    enters our table, handed nothing, until the interval since the address's hand-over has
    passed (then Y3 from there is handed its items)."""
    node, codec = holder()
    address = ("127.9.9.9", 6000)
    ids = attacker_ids()
    first = next(ids)
    sent = join(node, codec, address, first, 0.0)
    assert stores(sent)
    while sent:  # bounded: the hand-over is
        for request in sent:
            reply(node, codec, request, first, Stored(), address, 0.0)
        sent = requests_to(node, codec, address)
    spent = node.stats["handed_over"]
    assert spent == CONFIG.republish_batch
    node.table.remove(first)
    again = CONFIG.verify_interval + 1.0
    second = next(ids)
    sent = join(node, codec, address, second, again)
    assert sent is not None and not stores(sent)
    assert node.table.get(second) is not None
    assert node.stats["handed_over"] == spent
    assert node.stats["hand_overs_refused"] == 1
    node.table.remove(second)
    assert stores(join(node, codec, address, next(ids), CONFIG.republish_interval + 1.0))


def test_a_contact_that_enters_under_an_id_not_asked_for_is_handed_nothing_then() -> None:
    """Our verification ping of Y is answered from Y's address as Z, closer to us: Z enters our
    table, but the address answered a request meant for another id, and Z is handed nothing."""
    node, codec = holder()
    address = ("127.9.9.9", 5000)
    asked, answered = OWN ^ (H | 2), OWN ^ (H | 1)
    node.datagram_received(codec.encode(Envelope(1, asked, Ping(), None, 48)), address, 0.0)
    ping = next(e for e in requests_to(node, codec, address) if isinstance(e.message, Ping))
    reply(node, codec, ping, answered, Pong(), address, 0.0)
    assert node.stats["wrong_id"] == 1
    held = node.table.get(answered)
    assert held is not None and held.address == address
    assert not stores(requests_to(node, codec, address))
    assert node.stats["handed_over"] == 0


def test_an_honest_newcomer_from_another_host_gets_its_items_after_a_port_cycle() -> None:
    """After one public host's port cycle, a newcomer from another network, closest to us of
    all, is handed its items at join, and every copy reaches it (none shed for a queue full
    of copies to the attacker's ports)."""
    node, codec = holder()
    now = port_cycle(node, codec, 100, 0.0, 0.001)
    handed, refused = node.stats["handed_over"], node.stats["hand_overs_refused"]
    sent = join(node, codec, HONEST, HONEST_ID, now)
    assert sent is not None
    owed = node.stats["handed_over"] - handed
    assert owed > 0
    assert node.stats["hand_overs_refused"] == refused
    received: set[int] = set()
    for _ in range(200):  # bounded: the newcomer answers every copy until none is left
        for request in sent:
            if isinstance(request.message, Store):
                received.add(request.rpc_id)
            answer: Message = Stored() if isinstance(request.message, Store) else Pong()
            reply(node, codec, request, HONEST_ID, answer, HONEST, now)
        now += 0.001
        node.handle_timer(now)
        sent = requests_to(node, codec, HONEST)
        if not sent and len(received) >= owed:
            break
    assert len(received) == owed


@pytest.mark.parametrize("sweep", [False, True])
def test_a_hosts_budget_is_spent_within_the_interval_and_whole_again_after_it(
        sweep: bool) -> None:
    """One full hand-over to the attacker's network; another port of it within the interval
    gets nothing; after the interval (with the upkeep's sweeps run or not) a port of it that
    was never handed anything gets a hand-over again."""
    node, codec = holder()
    ids = attacker_ids()
    first = (ATTACKER, 10_000)
    handed = stores(join(node, codec, first, next(ids), 0.0))
    assert len(handed) > 0
    reply(node, codec, handed[0], None, Stored(), first, 0.0)  # first leaves our table
    spent = node.stats["handed_over"]
    assert spent == CONFIG.republish_batch
    assert not stores(join(node, codec, (ATTACKER, 10_001), next(ids), 1.0))
    assert node.stats["handed_over"] == spent
    assert node.stats["hand_overs_refused"] == 1
    later = CONFIG.republish_interval + 1.0
    if sweep:
        t = 1.0
        while t <= later:  # the upkeep alone, every 10 virtual seconds
            node.handle_timer(t)
            node.datagrams_to_send()
            t += 10.0
        assert not node._handed_hosts and not node._handed_addresses  # swept
        later = t
    assert stores(join(node, codec, (ATTACKER, 10_002), next(ids), later))
    assert node.stats["handed_over"] > spent


def test_a_request_the_full_queue_sheds_is_never_encoded(monkeypatch: pytest.MonkeyPatch) -> None:
    """A burst of copies to an address that answers nothing fills the request queue: a request
    shed then fails unsent, as ever, and costs no encoding."""
    config = Config(max_requests_in_flight=1, max_queued_requests=1)
    node = Node(config=config, rng=random.Random(2), node_id=OWN)
    address = ("127.9.9.9", 7000)
    node.request(address, Ping(), 0.0)  # out
    node.request(address, Ping(), 0.0)  # waits: the queue is full
    encoded: list[Message] = []
    encode = node.codec.encode_parts

    def counted(rpc_id: int, sender: int | None, message: Message, *rest: object) -> bytes:
        encoded.append(message)
        return encode(rpc_id, sender, message, *rest)  # type: ignore[arg-type]

    monkeypatch.setattr(node.codec, "encode_parts", counted)
    outcomes: list[Envelope | None] = []
    node.request(address, Ping(), 0.0, on_reply=lambda envelope, now: outcomes.append(envelope))
    assert node.stats["requests_shed"] == 1
    assert encoded == []
    node.handle_timer(0.0)
    assert outcomes == [None]  # failed unsent, as unanswered
