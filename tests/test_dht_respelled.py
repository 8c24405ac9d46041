"""/dht records: the signed text of a write covers neither the spelling of its public key
(compressed, uncompressed, hybrid) nor whether its S is low or high, so anyone who read a write can
re-spell it into other valid copies. A re-spelled copy is the same write: it never replaces the
entry held, never ends its publisher's renewal, and changes a holder's lifetime only as an
identical replay would; readers keep being served the owner's own spelling."""

from __future__ import annotations

import random

import pytest
from coincurve import PublicKey
from coincurve.ecdsa import cdata_to_der, deserialize_compact

from qadom import Config
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    SECURED,
    DhtPut,
    Entry,
    Record,
    canonical,
    encode_record,
    make_entry,
    public_key,
    same_write,
    signed_message,
    storage_key,
    verify,
)
from qadom.messages import Stored
from qadom.node import Node
from qadom.sim import SimNetwork
from qadom.storage import Meta, published_meta

from helpers import ask_proven

N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
T0 = 1_700_000_000.0
HOUR = 3600.0
KEY = "victim"
SKEY = storage_key(KEY)
OWNER = (11).to_bytes(32, "big")
OTHER = (12).to_bytes(32, "big")
SENDER = ("203.0.113.66", 5000)
SPELLINGS = ["uncompressed", "hybrid", "high-S", "uncompressed high-S", "hybrid high-S"]


def respelled(entry: Entry, spelling: str) -> Entry:
    """``entry`` spelled otherwise, as anyone who read it can spell it (no key needed)."""
    pub_key, sign = entry.pub_key, entry.sign
    full = PublicKey(entry.pub_key).format(compressed=False)
    if spelling.startswith("uncompressed"):
        pub_key = full
    elif spelling.startswith("hybrid"):
        pub_key = bytes((6 | (full[-1] & 1),)) + full[1:]
    if spelling.endswith("high-S"):
        sign = sign[:32] + (N - int.from_bytes(sign[32:], "big")).to_bytes(32, "big")
    return Entry(entry.data, pub_key, entry.exp_time, sign, entry.owner)


def strictly_valid(entry: Entry, mode: str) -> bool:
    """Whether libsecp256k1 itself (low S only) verifies ``entry``."""
    der = cdata_to_der(deserialize_compact(entry.sign))
    return bool(PublicKey(entry.pub_key).verify(der, signed_message(KEY, entry.data,
                                                                      entry.exp_time, mode)))


def holder(record: Record, meta: Meta) -> Node:
    node = Node(config=Config(), rng=random.Random(1), node_id=1, now=T0)
    node.store.put_record(RECORD_KIND, SKEY, encode_record(record), T0, meta=meta)
    return node


def the_record(mode: str) -> tuple[Record, Entry]:
    """A record of KEY with the owner's entry (another owner's after it when CONTROLLED)."""
    entry = make_entry(OWNER, KEY, "owner's only write", mode, T0 + 10 * 86400)
    others = () if mode == SECURED else (make_entry(OTHER, KEY, "another's", mode),)
    return Record(KEY, mode, (entry, *others)), entry


# ------------------------------------------------------------------ one write, many spellings


@pytest.mark.parametrize("mode", [SECURED, CONTROLLED])
@pytest.mark.parametrize("spelling", SPELLINGS)
def test_each_spelling_is_the_same_write(mode: str, spelling: str) -> None:
    entry = make_entry(OWNER, KEY, "data", mode, 1800000000)
    other = respelled(entry, spelling)
    assert other != entry and verify(other, KEY, mode)  # a valid, byte-different copy
    assert same_write(entry, other) and canonical(entry) == canonical(other)
    # Another write of the owner, or another owner's write of the same text, is another write.
    assert not same_write(entry, make_entry(OWNER, KEY, "data2", mode, 1800000000))
    assert not same_write(entry, make_entry(OWNER, KEY, "data", mode, 1800000000.0))
    assert not same_write(entry, make_entry(OTHER, KEY, "data", mode, 1800000000))


# ------------------------------------------------------------------ a client's write


@pytest.mark.parametrize("mode", [SECURED, CONTROLLED])
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("ours", [True, False])
def test_a_respelled_write_changes_what_an_identical_replay_changes(
        mode: str, spelling: str, ours: bool) -> None:
    """Sent as a client's write to a holder of the record (its publisher or a storer), a
    re-spelled copy of the owner's entry leaves the record as it was written, and the holder's
    bookkeeping (who renews it, its lifetime, its charge) as the entry written again does."""
    record, entry = the_record(mode)
    meta = (published_meta(T0, Config(), owners=frozenset({public_key(OWNER)})) if ours
            else Meta(T0 + 2 * HOUR, T0 + HOUR, source="198.51.100.9"))
    replayed, targeted = holder(record, meta), holder(record, meta)
    for node, sent in ((replayed, entry), (targeted, respelled(entry, spelling))):
        reply = ask_proven(node, DhtPut(encode_record(Record(KEY, mode, (sent,))), 60), SENDER,
                           T0 + 10)
        assert isinstance(reply, Stored)
    assert targeted.store.get_record(RECORD_KIND, SKEY) == encode_record(record)
    assert targeted.store.record_meta(RECORD_KIND, SKEY) == replayed.store.record_meta(
        RECORD_KIND, SKEY)
    kept = targeted.store.record_meta(RECORD_KIND, SKEY)
    assert kept is not None and kept.original == ours


# ------------------------------------------------------------------ a republish


@pytest.mark.parametrize("mode", [SECURED, CONTROLLED])
@pytest.mark.parametrize("spelling", SPELLINGS)
@pytest.mark.parametrize("held_respelled", [True, False])
def test_a_republish_renews_a_copy_spelled_otherwise(mode: str, spelling: str,
                                                      held_respelled: bool) -> None:
    """A storer holds the record in one spelling (say, a re-spelled copy somebody sent it when
    it held nothing) and the publisher republishes it in another: that is the record it holds,
    renewed for the TTL sent as the same bytes would be, and kept as it is held."""
    record, entry = the_record(mode)
    other = Record(KEY, mode, (respelled(entry, spelling), *record.entries[1:]))
    held, sent = (other, record) if held_respelled else (record, other)
    meta = Meta(T0 + HOUR, T0 + HOUR, source="198.51.100.9")  # an hour of its lifetime left
    node = holder(held, meta)
    reply = ask_proven(node, DhtPut(encode_record(sent), 86400, republish=True), SENDER, T0 + 10)
    assert isinstance(reply, Stored)
    assert node.store.get_record(RECORD_KIND, SKEY) == encode_record(held)
    renewed = node.store.record_meta(RECORD_KIND, SKEY)
    assert renewed is not None and renewed.expires == T0 + 10 + 86400


# ------------------------------------------------------------------ on the network


@pytest.mark.parametrize("spelling", ["uncompressed", "high-S"])
def test_a_respelled_repost_does_not_end_the_owners_record(spelling: str) -> None:
    """The owner writes once through A, which renews the record until it forgets it. Somebody
    re-posts the owner's write, re-spelled, through B and has B forget it: A still renews the
    record, which readers find days later in the owner's own spelling (one that libsecp256k1,
    which accepts low S only, verifies too)."""
    config = Config(k=4)
    net = SimNetwork(5, config=config)
    nodes = sorted(net.add_nodes(10), key=lambda node: node.id ^ SKEY)
    a, reader, b = nodes[0], nodes[-2], nodes[-1]
    entry = make_entry(OWNER, KEY, "owner's only write", SECURED)
    net.run_call(net.call(a, a.dht_records.put, Record(KEY, SECURED, (entry,))))
    other = Record(KEY, SECURED, (respelled(entry, spelling),))
    net.run_call(net.call(b, b.dht_records.put, other))
    assert b.dht_records.forget(KEY)
    start = net.now
    for hours in (30, 49, 73):
        net.run_for(start + hours * HOUR - net.now)
        got = net.run_call(net.call(reader, reader.dht_records.get, KEY))
        assert got.entries == (entry,)
        assert strictly_valid(got.entries[0], SECURED)
    meta = a.store.record_meta(RECORD_KIND, SKEY)
    assert meta is not None and meta.original  # still A's to renew
    assert a.dht_records.forget(KEY)
