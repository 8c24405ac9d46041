"""Publish/subscribe: answers of an earlier registration round that come after a later round.

Rounds overlap: subscribing again to a topic no relay holds a lease of starts a round at once,
while a renewal's SUBSCRIBEs may still be out. An answer then changes nothing of a relay the
later round dropped, and of a relay the later round asked too, only that round's answer decides
whether it stays (docs/PROTOCOL.md, "Publish/subscribe"). Driven sans-IO: one node (k = 3) and
the relays it asks played by the test, the clock standing still while requests are out."""

from __future__ import annotations

from collections.abc import Callable

from qadom.codec import Codec
from qadom.contact import Address, Contact
from qadom.messages import Envelope, Error, ErrorCode, FindNode, Message, Nodes
from qadom.node import Node
from qadom.pubsub import Deliver, Delivered, Subscribe, Subscribed

from helpers import ask_proven, node_near

TOPIC = 0xA5 << 248
LEASE_MS = 60_000
FULL = Error(ErrorCode.TOO_MANY_SUBSCRIBERS, "full")
Reply = Callable[[Address, Message], "Message | None"]


class Relays:
    """A sans-IO subscriber whose table holds three peers near :data:`TOPIC` (``olds``), and
    three peers closer still that only lookups can find (``news``)."""

    def __init__(self) -> None:
        self.node, self.codec, self.olds = node_near(TOPIC, 3)
        self.news = [Contact(TOPIC ^ (1 << (40 + i)), (f"10.0.1.{i + 1}", 4000))
                     for i in range(3)]
        self.ids = {c.address: c.id for c in self.olds + self.news}
        self.got: list[bytes] = []

    def answer(self, reply: Reply, now: float) -> list[tuple[int, Address]]:
        """Answer what the node sends with ``reply(address, request)``; returns the requests
        left unanswered (``reply`` gave None), as (rpc id, address)."""
        node, codec = self.node, self.codec
        unanswered: list[tuple[int, Address]] = []
        for _ in range(20):
            out = node.datagrams_to_send()
            if not out:
                return unanswered
            for data, address in out:
                request = codec.decode(data)
                answer = reply(address, request.message)
                if answer is None:
                    unanswered.append((request.rpc_id, address))
                else:
                    node.datagram_received(codec.encode(Envelope(
                        request.rpc_id, self.ids[address], answer)), address, now)
        raise AssertionError("the node never fell quiet")

    def late(self, request: tuple[int, Address], answer: Message, now: float) -> None:
        rpc_id, address = request
        self.node.datagram_received(
            self.codec.encode(Envelope(rpc_id, self.ids[address], answer)), address, now)

    def relays(self) -> set[Address]:
        return {c.address for c in self.node.pubsub.relays_of(TOPIC)}

    def deliver_from(self, address: Address, now: float) -> Message:
        return ask_proven(self.node, Deliver(TOPIC, 1, 0, b"m"), address, now)

    def renewal_left_waiting(self) -> tuple[float, list[tuple[int, Address]]]:
        """The olds refuse the first round (full); the renewal round asks them again, and their
        answers are still to come. Returns the time and those SUBSCRIBEs."""
        node = self.node
        _, first = node.pubsub.subscribe(TOPIC, self.got.append, 0.0)
        self.answer(lambda a, m: Nodes(()) if isinstance(m, FindNode) else FULL, 0.0)
        assert first.done and first.exception() is not None
        now = node.get_timer()
        assert now is not None
        node.handle_timer(now)
        assert node.stats["pubsub_rounds"] == 2
        waiting = self.answer(lambda a, m: Nodes(()) if isinstance(m, FindNode) else None, now)
        assert sorted(a for _, a in waiting) == sorted(c.address for c in self.olds)
        timer = node.get_timer()
        assert timer is not None and timer > now  # all still out
        return now, waiting

    def subscribe_again(self, reply: Reply, now: float) -> list[tuple[int, Address]]:
        """Subscribe again while the renewal's SUBSCRIBEs are out: no relay holds our lease, so
        a third round starts at once; it ends, answered by ``reply``, before they are answered.
        Returns the requests of that round left unanswered."""
        _, again = self.node.pubsub.subscribe(TOPIC, self.got.append, now)
        assert self.node.stats["pubsub_rounds"] == 3
        unanswered = self.answer(reply, now)
        assert again.done
        return unanswered


def test_a_late_subscribed_does_not_bring_back_a_relay_a_later_round_dropped() -> None:
    """The third round's lookup finds three newcomers closer to the topic, which accept: the
    olds are relays no more. A SUBSCRIBED to the renewal coming after that leaves it so: the
    old relay is not counted, and its next DELIVER is answered NOT_SUBSCRIBED, which makes it
    forget us."""
    relays = Relays()
    now, waiting = relays.renewal_left_waiting()
    news = {c.address for c in relays.news}

    def reply(address: Address, message: Message) -> Message | None:
        if isinstance(message, FindNode):
            return Nodes(tuple(relays.news))
        if isinstance(message, Subscribe) and address in news:
            return Subscribed(LEASE_MS)
        return None

    assert relays.subscribe_again(reply, now) == []
    assert relays.relays() == news
    stale = waiting[0]
    relays.late(stale, Subscribed(LEASE_MS), now)
    assert relays.relays() == news
    refused = relays.deliver_from(stale[1], now)
    assert isinstance(refused, Error) and refused.code == ErrorCode.NOT_SUBSCRIBED
    # A subscription to the topic counts the relays holding our lease: the newcomers only.
    _, counted = relays.node.pubsub.subscribe(TOPIC, relays.got.append, now)
    assert counted.result() == len(news)


def test_a_late_refusal_does_not_drop_a_relay_a_later_round_registered() -> None:
    """An old relay refused the renewal's SUBSCRIBE, then accepted the third round's, whose
    SUBSCRIBED came first: the relay holds our lease, and the refusal coming after does not
    drop it (it would answer its next DELIVER NOT_SUBSCRIBED and forget us)."""
    relays = Relays()
    now, waiting = relays.renewal_left_waiting()
    olds = {c.address for c in relays.olds}

    def reply(address: Address, message: Message) -> Message | None:
        return Nodes(()) if isinstance(message, FindNode) else Subscribed(LEASE_MS)

    assert relays.subscribe_again(reply, now) == []
    assert relays.relays() == olds
    stale = waiting[0]
    relays.late(stale, FULL, now)
    assert relays.relays() == olds
    assert isinstance(relays.deliver_from(stale[1], now), Delivered)
    assert relays.node.stats["pubsub_received"] == 1  # passed on to our listeners


def test_a_relay_whose_later_subscribe_goes_unanswered_stays_on_an_earlier_subscribed() -> None:
    """An old relay answered the renewal's SUBSCRIBE (late, while the third round was asking it
    too), then every attempt of the third round's went unanswered: the earlier SUBSCRIBED says
    it holds our lease for a whole lease from now, so it stays a relay."""
    relays = Relays()
    now, waiting = relays.renewal_left_waiting()
    node: Node = relays.node

    def reply(address: Address, message: Message) -> Message | None:
        return Nodes(()) if isinstance(message, FindNode) else None

    _, again = node.pubsub.subscribe(TOPIC, relays.got.append, now)
    third = relays.answer(reply, now)
    assert sorted(a for _, a in third) == sorted(a for _, a in waiting)
    stale = waiting[0]
    relays.late(stale, Subscribed(LEASE_MS), now)
    assert not again.done
    codec: Codec = relays.codec
    for _ in range(100):  # the third round's SUBSCRIBEs and their resends time out
        timer = node.get_timer()
        assert timer is not None and timer < now + 30
        node.handle_timer(timer)
        for data, _address in node.datagrams_to_send():
            assert isinstance(codec.decode(data).message, Subscribe)  # resends, unanswered
        if again.done:
            break
    assert again.done  # the third round is over
    assert relays.relays() == {stale[1]}
    assert isinstance(relays.deliver_from(stale[1], node.get_timer() or now), Delivered)
