"""Tokens kept with when they came, bounded lookups and their trimming: the rules hold for every
configuration the Config accepts, not only for the defaults.

Driven sans-IO or on the simulated network, with seeded randomness and a virtual clock."""

from __future__ import annotations

from dataclasses import replace

import pytest

from qadom import Config
from qadom.call import Call
from qadom.codec import Codec
from qadom.contact import Contact
from qadom.dhtrecords import SECURED, Record, make_entry
from qadom.errors import StorageUnavailable
from qadom.lookup import Lookup, State
from qadom.messages import FindNode, Nodes
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import MemoryStore

# Maintenance as slow as the secret's changes, or slower: accepted by Config, and what a node
# that serves much and upkeeps little may choose.
SLOW_UPKEEP = [Config(maintenance_interval=300.0),
               Config(token_lifetime=60.0, maintenance_interval=120.0)]


def _sent_now(net: SimNetwork, asker: Node, address: tuple[str, int],
              codec: Codec) -> tuple[bytes | None, int]:
    """The token and the size of a FIND_NODE ``asker`` sends to ``address`` now."""
    asker.datagrams_to_send()
    asker.request(address, FindNode(1), net.now)
    ((data, _),) = asker.datagrams_to_send()
    return codec.decode(data).token, len(data)


@pytest.mark.parametrize("config", SLOW_UPKEEP, ids=["equal", "slower"])
def test_a_token_that_just_came_goes_alone_whatever_the_upkeep_interval(config: Config) -> None:
    """A peer's secret lasts at least the longer of token_lifetime and maintenance_interval (it
    changes only at an upkeep tick): a token that just came is surely valid, and a request
    carries it alone, unpadded."""
    codec = Codec(config)
    net = SimNetwork(4, config=config)
    asker, asked, *_ = net.add_nodes(10)
    net.run_for(5.0)
    address = net.address_of(asked)
    net.run_call(net.call(asker, asker.ping, address))
    token, size = _sent_now(net, asker, address, codec)
    assert token is not None
    assert size < config.min_request_size


@pytest.mark.parametrize("config", [Config(), *SLOW_UPKEEP], ids=["default", "equal", "slower"])
def test_a_token_sent_alone_is_still_valid_at_the_last_moment_it_goes_alone(
        config: Config) -> None:
    """A token that came at any phase of the asked peer's upkeep and was not used since is
    still taken at the last moment the asker sends it alone: no CHALLENGE."""
    net = SimNetwork(6, config=config)
    asker, asked, *_ = net.add_nodes(10)
    net.run_for(5.0)
    address = net.address_of(asked)
    lasts = max(config.token_lifetime, config.maintenance_interval)
    step = lasts / 64
    answers: list[object] = []

    def find_node(now: float) -> Call[None]:
        asker.request(address, FindNode(asked.id ^ 1), now, expect_id=asked.id,
                      on_reply=lambda envelope, now: answers.append(
                          None if envelope is None else envelope.message))
        done: Call[None] = Call("sent")
        done.resolve(None)
        return done

    for cycle in range(12):
        net.run_for(lasts * cycle / 11.7)  # another phase of the asked peer's upkeep
        asker._tokens.pop(address, None)
        net.run_call(net.call(asker, asker.ping, address))  # a token comes
        assert asker._token_to_send(address, net.now)[1]
        while asker._token_to_send(address, net.now + step)[1]:
            net.run_for(step)
        net.call(asker, find_node)  # the token goes alone, for an answer above the bound
        net.run_for(5.0)
    assert len(answers) == 12 and all(isinstance(m, Nodes) for m in answers), answers
    assert asker.stats["challenged"] == 0
    assert asked.stats["challenges_sent"] == 0


def _contact(distance: int) -> Contact:
    return Contact(distance, ("127.0.0.1", 1000 + distance))


def test_trimming_forgets_far_answers_before_closer_contacts_not_asked_yet() -> None:
    """A lookup over its candidate bound forgets a contact that answered but is not among the
    k closest answers (it can change nothing) before a closer contact not asked yet."""
    a, b = _contact(100), _contact(200)
    lookup = Lookup(0, k=2, alpha=2, initial=[a, b], max_candidates=3)
    assert [c.contact for c in lookup.next_requests()] == [a, b]
    c = _contact(50)
    lookup.on_reply(a, [c])  # c, a, b: the bound
    assert [x.contact for x in lookup.next_requests()] == [c]
    lookup.on_reply(b, [])
    d, e = _contact(30), _contact(40)
    lookup.on_reply(c, [d, e])  # d, e, c, a, b: two too many
    states = {x.contact.id: x.state for x in lookup.candidates()}
    assert d.id in states, states  # the closest contact known is not forgotten...
    assert states[c.id] is State.ANSWERED and states[a.id] is State.ANSWERED
    assert b.id not in states  # ...b is: two closer contacts answered
    asked = [x.contact for x in lookup.next_requests()]
    assert d in asked
    lookup.on_reply(d, [])
    while not lookup.finished:
        for x in lookup.next_requests():
            lookup.on_reply(x.contact, [])
    assert lookup.closest()[0] == d


def test_node_lookups_with_a_tight_candidate_bound_find_the_k_closest() -> None:
    """lookup_max_candidates a little above k (Config accepts any bound from k up): lookups
    still converge on the k closest nodes, as a lookup without the bound does."""
    config = replace(Config(k=4, alpha=3), lookup_max_candidates=6)
    net = SimNetwork(11, config=config)
    nodes = net.add_nodes(120)
    net.run_for(5.0)
    exact = 0
    for node in nodes[:30]:
        target = net.rng.getrandbits(256)
        found = net.run_call(net.call(node, node.find_nodes, target))
        exact += [c.id for c in found] == net.true_closest(target, 4, exclude=node.id)
    assert exact >= 28


class _UnreadableRecords(MemoryStore):
    """A store whose service records cannot be read now (a damaged page)."""

    def get_record(self, kind: str, key: int, now: float | None = None) -> bytes | None:
        raise StorageUnavailable("the store cannot be read: damaged")


def test_a_dht_get_without_our_unreadable_copy_counts_a_storage_error() -> None:
    """A /dht get whose own copy cannot be read answers with the peers' copy, and counts the
    read that went on without ours, as get, search and namespace get do."""
    net = SimNetwork(5, config=Config(k=5))
    nodes = net.add_nodes(12)
    writer, reader = nodes[0], nodes[7]
    record = Record("name", SECURED, (make_entry((1).to_bytes(32, "big"), "name", "v1",
                                                 SECURED, None),))
    net.run_call(net.call(writer, writer.dht_records.put, record))
    reader.store = _UnreadableRecords(reader.config)
    got = net.run_call(net.call(reader, reader.dht_records.get, "name"))
    assert got.entries[0].data == "v1"
    assert reader.stats["storage_errors"] == 1
