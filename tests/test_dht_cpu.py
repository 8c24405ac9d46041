"""What a DHT_PUT costs its receiver: signatures are verified only for entries it does not hold
byte for byte, a record is encoded a bounded number of times whatever its entries, decoding
decompresses no public key, and a host's republishes verify at most its budget
(``Config.dht_verify_rate``). Work is counted (verifications, encodings, key parses), never timed.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from coincurve import PrivateKey, PublicKey
from hypothesis import given, settings
from hypothesis import strategies as st

from qadom import Config, dhtrecords
from qadom.codec import Codec
from qadom.contact import Address
from qadom.dhtrecords import (
    CONTROLLED,
    RECORD_KIND,
    SECURED,
    DhtPut,
    DhtRefused,
    Entry,
    Record,
    RefusedCode,
    apply_write,
    compress,
    decode_record,
    encode_record,
    load,
    make_entry,
    storage_key,
)
from qadom.errors import Unauthorized, ValueTooLarge
from qadom.messages import Challenge, Envelope, Error, ErrorCode, Message, Stored
from qadom.node import Node

T0 = 1_700_000_000.0
HOST = ("198.51.100.9", 5000)
OTHER_HOST = ("203.0.113.7", 5000)
P = 2**256 - 2**32 - 977


def secret(i: int) -> bytes:
    return (i + 1).to_bytes(32, "big")


def entries_that_fit(key: str, config: Config, *, first: int = 0,
                     data: str = "x") -> list[Entry]:
    """As many CONTROLLED entries of distinct keys as one record of ``key`` holds, the public
    keys alternately compressed and not (both spellings must cost nothing to decode)."""
    entries: list[Entry] = []
    for i in range(first, first + 400):
        entry = make_entry(secret(i), key, data, CONTROLLED, compressed=i % 2 == 0)
        if len(encode_record(Record(key, CONTROLLED, (*entries, entry)))) > (
                config.dht_max_record_size):
            return entries
        entries.append(entry)
    raise AssertionError("the record never filled up")


@dataclass
class Work:
    verifications: int = 0
    encodings: int = 0
    key_parses: int = 0


@pytest.fixture
def work(monkeypatch: pytest.MonkeyPatch) -> Iterator[Work]:
    """Counts the signatures dhtrecords verifies, the records it encodes and the public keys it
    parses (each parse decompresses a point)."""
    counted = Work()
    verify, encode = dhtrecords.verify, dhtrecords.encode_record

    def counting_verify(entry: Entry, key: str, mode: str) -> bool:
        counted.verifications += 1
        return verify(entry, key, mode)

    def counting_encode(record: Record) -> bytes:
        counted.encodings += 1
        return encode(record)

    def counting_public_key(data: bytes) -> PublicKey:
        counted.key_parses += 1
        return PublicKey(data)

    monkeypatch.setattr(dhtrecords, "verify", counting_verify)
    monkeypatch.setattr(dhtrecords, "encode_record", counting_encode)
    monkeypatch.setattr(dhtrecords, "PublicKey", counting_public_key)
    yield counted


class Peer:
    """One node driven through its datagrams, as a remote host with its token would."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.codec = Codec(config)
        self.node = Node(config=config, rng=random.Random(1), node_id=1)

    def ask(self, message: Message, source: Address, now: float, *,
            proven: bool = True) -> Message:
        token = self.node.token_for(source) if proven else None
        self.node.datagram_received(self.codec.encode(Envelope(7, None, message, token)),
                                    source, now)
        replies = [self.codec.decode(data).message for data, address
                   in self.node.datagrams_to_send() if address == source]
        assert len(replies) == 1
        return replies[0]

    def held(self, key: str, now: float) -> Record | None:
        return load(self.node.store, storage_key(key), self.config, now)


def republish(record: Record, ttl: int = 86400) -> DhtPut:
    return DhtPut(encode_record(record), ttl, republish=True)


# ---------------------------------------------------------------------------- replays


def test_a_replayed_record_is_neither_verified_nor_encoded_again(work: Work) -> None:
    config = Config()
    peer = Peer(config)
    record = Record("k", CONTROLLED, tuple(entries_that_fit("k", config)))
    assert len(encode_record(record)) > config.dht_max_record_size - 200  # a full record
    put = republish(record)
    assert isinstance(peer.ask(put, HOST, T0), Stored)
    assert work.verifications == len(record.entries)  # each new entry once
    assert peer.held("k", T0) == record
    skey = storage_key("k")
    first = peer.node.store.record_meta(RECORD_KIND, skey)
    assert first is not None
    for i in range(1, 4):  # the same datagram again and again
        before = Work(work.verifications, work.encodings, work.key_parses)
        assert isinstance(peer.ask(put, HOST, T0 + i), Stored)
        assert work.verifications == before.verifications  # held byte for byte: not again
        assert work.key_parses == before.key_parses
        assert work.encodings - before.encodings <= 2  # not once per entry
    # Still what a republish of the record held means: the same record, renewed.
    assert peer.held("k", T0 + 3) == record
    renewed = peer.node.store.record_meta(RECORD_KIND, skey)
    assert renewed is not None and renewed.republish_at == first.republish_at + 3


def test_a_replayed_client_write_is_not_verified_again(work: Work) -> None:
    config = Config()
    peer = Peer(config)
    entry = make_entry(secret(1), "s", "v", SECURED, exp_time=int(T0) + 10**6)
    put = DhtPut(encode_record(Record("s", SECURED, (entry,))), 600)
    assert isinstance(peer.ask(put, HOST, T0), Stored)
    assert work.verifications == 1
    assert isinstance(peer.ask(put, HOST, T0 + 1), Stored)
    assert work.verifications == 1
    # Its float twin equals it as an Entry but is another signed text: verified, and refused.
    twin = replace(entry, exp_time=float(int(T0) + 10**6))
    assert twin == entry and str(twin.exp_time) != str(entry.exp_time)
    held = peer.held("s", T0 + 1)
    for message in (DhtPut(encode_record(Record("s", SECURED, (twin,))), 600),
                    republish(Record("s", SECURED, (twin,)))):
        reply = peer.ask(message, HOST, T0 + 2)
        assert isinstance(reply, DhtRefused) and reply.code == RefusedCode.UNAUTHORIZED
    assert work.verifications == 3
    assert peer.held("s", T0 + 2) == held and peer.held("s", T0 + 2) is not None


# ---------------------------------------------------------------------------- fresh records


@pytest.mark.parametrize("count", [1, 10, 40])
def test_a_fresh_record_costs_one_verification_an_entry_and_one_encoding(
        work: Work, count: int) -> None:
    config = Config()
    peer = Peer(config)
    record = Record("k", CONTROLLED, tuple(entries_that_fit("k", config)[:count]))
    assert isinstance(peer.ask(republish(record), HOST, T0), Stored)
    assert work.verifications == count
    assert work.encodings <= 2  # whatever the number of entries
    assert work.key_parses == count  # the verifications' own, none to decode
    assert peer.held("k", T0) == record


def test_a_republish_verifies_only_the_entries_a_holder_does_not_hold(work: Work) -> None:
    config = Config()
    peer = Peer(config)
    entries = entries_that_fit("c", config, data="a fairly long piece of data")[:20]
    mine = Record("c", CONTROLLED, tuple(entries[:10]))
    assert isinstance(peer.ask(republish(mine), HOST, T0), Stored)
    assert work.verifications == 10
    # A storer's copy: our ten (one in an older version of its owner's), and five owners more.
    older = make_entry(secret(3), "c", "older", CONTROLLED, compressed=False)
    assert older.owner == entries[3].owner
    theirs = Record("c", CONTROLLED, (*entries[:3], older, *entries[4:15]))
    assert isinstance(peer.ask(republish(theirs), HOST, T0 + 1), Stored)
    assert work.verifications == 10 + 1 + 5
    held = peer.held("c", T0 + 1)
    assert held == Record("c", CONTROLLED, tuple(entries[:15]))  # fill-only, as before
    # A forged entry among held ones is still refused, and changes nothing.
    forged = replace(entries[15], data="forged")
    reply = peer.ask(republish(Record("c", CONTROLLED, (*entries[:15], forged))), HOST, T0 + 2)
    assert isinstance(reply, DhtRefused) and reply.code == RefusedCode.UNAUTHORIZED
    assert work.verifications == 16 + 1
    assert peer.held("c", T0 + 2) == held


def test_fill_owners_adds_what_adding_entry_by_entry_adds() -> None:
    config = Config()
    rng = random.Random(5)
    added = left_out = 0
    for _ in range(12):
        sizes = [rng.randrange(1, 400) for _ in range(30)]
        current: Record | None = None
        for i in range(rng.randrange(1, 20)):
            try:
                current = apply_write(current, Record("f", CONTROLLED, (make_entry(
                    secret(i), "f", "c" * sizes[i], CONTROLLED),)), T0, config)
            except ValueTooLarge:
                break
        assert current is not None
        sent = [make_entry(secret(i + rng.randrange(0, 3)), "f", "s" * rng.randrange(1, 900),
                           CONTROLLED) for i in range(0, 40, 2)]
        sent = list({e.owner: e for e in reversed(sent)}.values())[::-1]  # one per owner
        # What a holder added before: each entry of a new owner, as a write, as far as it fits.
        expected = current
        owners = {e.owner for e in current.entries}
        for entry in sent:
            if entry.owner not in owners:
                try:
                    expected = apply_write(expected, Record("f", CONTROLLED, (entry,)), T0,
                                           config)
                    added += 1
                except ValueTooLarge:
                    left_out += 1
        merged = dhtrecords.fill_owners(current, Record("f", CONTROLLED, tuple(sent)), config)
        assert merged == expected
        assert len(encode_record(merged)) <= config.dht_max_record_size
    assert added and left_out  # both cases were met


def test_a_full_record_still_takes_the_new_owners_that_fit() -> None:
    config = Config()
    entries = entries_that_fit("g", config)
    # Past 24 entries the CBOR array's head takes a byte more: the sizes must count it.
    for count in (22, 23, 24, 25, len(entries) - 1):
        current = Record("g", CONTROLLED, tuple(entries[:count]))
        sent = Record("g", CONTROLLED, tuple(entries[count:]))
        merged = dhtrecords.fill_owners(current, sent, config)
        assert merged == Record("g", CONTROLLED, tuple(entries))


# ---------------------------------------------------------------------------- public keys


def test_decoding_a_record_decompresses_no_public_key(work: Work) -> None:
    config = Config()
    record = Record("k", CONTROLLED, tuple(entries_that_fit("k", config)))
    assert decode_record(encode_record(record), config) == record
    assert work.key_parses == 0


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 2**64))
def test_owner_of_is_the_compressed_form(n: int) -> None:
    public = PrivateKey(n.to_bytes(32, "big")).public_key
    short, full = public.format(compressed=True), public.format(compressed=False)
    hybrid = bytes((6 | (full[-1] & 1),)) + full[1:]
    for spelling in (short, full, hybrid):
        assert dhtrecords.owner_of(spelling) == compress(spelling) == short
    wrong_parity = bytes((hybrid[0] ^ 1,)) + hybrid[1:]
    off_curve = full[:64] + bytes(((full[64] + 1) % 256,))
    for bad in (wrong_parity, off_curve, b"\x05" + short[1:], short[:32], short + b"\0", b"",
                b"\x02" + P.to_bytes(32, "big"), b"\x04" + P.to_bytes(32, "big") + full[33:]):
        with pytest.raises(ValueError):
            dhtrecords.owner_of(bad)
        with pytest.raises(ValueError):
            compress(bad)


def test_a_compressed_key_off_the_curve_owns_nothing() -> None:
    x = next(x for x in range(1, 100) if pow((x**3 + 7) % P, (P - 1) // 2, P) != 1)
    off = b"\x02" + x.to_bytes(32, "big")
    with pytest.raises(ValueError):
        compress(off)
    entry = replace(make_entry(secret(1), "o", "v", CONTROLLED), pub_key=off, owner=off)
    config = Config()
    # It decodes (its x is not checked), and no signature ever verifies with it.
    assert decode_record(encode_record(Record("o", CONTROLLED, (entry,))), config).entries == (
        entry,)
    assert not dhtrecords.verify(entry, "o", CONTROLLED)
    with pytest.raises(Unauthorized):
        apply_write(None, Record("o", CONTROLLED, (entry,)), T0, config)
    peer = Peer(config)
    good = make_entry(secret(2), "o", "v", CONTROLLED)
    for put in (DhtPut(encode_record(Record("o", CONTROLLED, (entry,))), 600),
                republish(Record("o", CONTROLLED, (good, entry)))):
        reply = peer.ask(put, HOST, T0)
        assert isinstance(reply, DhtRefused) and reply.code == RefusedCode.UNAUTHORIZED
    assert peer.node.store.stats()["records"] == 0


# ---------------------------------------------------------------------------- the budget


def test_a_hosts_republishes_verify_at_most_its_budget(work: Work) -> None:
    config = Config(dht_verify_rate=10.0, dht_verify_burst=100)
    peer = Peer(config)
    entries = entries_that_fit("b", config)[:50]
    # Refused (its last signature is forged), so sending it again verifies it again.
    bad = Record("b", CONTROLLED, (*entries[:49], replace(entries[49], data="forged")))
    for i in range(2):
        reply = peer.ask(republish(bad), HOST, T0)
        assert isinstance(reply, DhtRefused) and reply.code == RefusedCode.UNAUTHORIZED
        assert work.verifications == 50 * (i + 1)
    reply = peer.ask(republish(bad), HOST, T0)  # the budget is spent
    assert isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED
    assert work.verifications == 100
    assert peer.node.stats["dht_verify_limited"] == 1
    # A valid record over the budget is refused too, and nothing is stored.
    good = Record("g", CONTROLLED, tuple(entries_that_fit("g", config)[:20]))
    reply = peer.ask(republish(good), HOST, T0 + 1)  # 10 verified, then over
    assert isinstance(reply, Error) and reply.code == ErrorCode.RATE_LIMITED
    assert work.verifications == 110
    assert peer.node.store.stats()["records"] == 0
    # Another host has a budget of its own; and the host's comes back at the rate.
    assert isinstance(peer.ask(republish(good), OTHER_HOST, T0 + 1), Stored)
    assert work.verifications == 130
    peer.node.store.delete_record(RECORD_KIND, storage_key("g"))
    assert isinstance(peer.ask(republish(good), HOST, T0 + 3), Stored)
    assert work.verifications == 150
    # Entries held byte for byte spend nothing: the record replayed passes with none left.
    assert isinstance(peer.ask(republish(good), HOST, T0 + 3), Stored)
    assert work.verifications == 150
    # A client's write carries one signature: not counted against the budget.
    write = Record("w", SECURED, (make_entry(secret(99), "w", "v", SECURED),))
    assert isinstance(peer.ask(DhtPut(encode_record(write), 600), HOST, T0 + 3), Stored)


def test_loopback_has_no_verification_budget(work: Work) -> None:
    config = Config(dht_verify_rate=1.0, dht_verify_burst=1)
    peer = Peer(config)
    record = Record("l", CONTROLLED, tuple(entries_that_fit("l", config)[:30]))
    assert isinstance(peer.ask(republish(record), ("127.0.0.9", 4000), T0), Stored)
    assert work.verifications == 30


# ---------------------------------------------------------------------------- proof of address


def test_a_dht_put_needs_proof_of_address() -> None:
    config = Config()
    peer = Peer(config)
    write = Record("p", SECURED, (make_entry(secret(1), "p", "v", SECURED),))
    for put in (DhtPut(encode_record(write), 600), republish(write)):
        assert isinstance(peer.ask(put, HOST, T0, proven=False), Challenge)
        assert peer.node.store.stats()["records"] == 0
    assert isinstance(peer.ask(DhtPut(encode_record(write), 600), HOST, T0), Stored)
    assert peer.held("p", T0) == write
