"""The hot paths' shortcuts build exactly what the plain ones build.

``make_envelope`` and ``make_contact`` fill the slots of a plain twin class and then make it an
Envelope or a Contact; the codec keeps the bytes of the last sender id it wrote; a rate limiter
clamps a refilled bucket without calling ``min``. Each must be indistinguishable from the plain
construction: same type, equality, hash, repr, immutability and bytes on the wire.
"""

from __future__ import annotations

import dataclasses

import cbor2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from qadom.codec import Codec
from qadom.config import Config
from qadom.contact import Contact, make_contact
from qadom.messages import Envelope, FindNode, Ping, Pong, make_envelope
from qadom.ratelimit import RateLimiter

ids = st.integers(0, 2**256 - 1)
rpc_ids = st.integers(0, 2**64 - 1)
tokens = st.none() | st.binary(min_size=1, max_size=32)


@given(rpc_ids, st.none() | ids, tokens, st.sampled_from([Ping(), Pong(), FindNode(5)]))
def test_make_envelope_is_an_envelope(rpc_id: int, sender: int | None, token: bytes | None,
                                      message: Ping | Pong | FindNode) -> None:
    built = make_envelope(rpc_id, sender, message, token)
    plain = Envelope(rpc_id, sender, message, token)
    assert type(built) is Envelope
    assert built == plain and hash(built) == hash(plain) and repr(built) == repr(plain)
    assert (built.rpc_id, built.sender, built.message, built.token, built.pad_to) == (
        rpc_id, sender, message, token, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.rpc_id = 1  # type: ignore[misc]
    assert dataclasses.replace(built, token=b"t") == Envelope(rpc_id, sender, message, b"t")


@given(ids, st.sampled_from(["127.0.0.1", "::1", "fe80::1%eth0"]), st.integers(1, 65535))
def test_make_contact_is_a_contact(node_id: int, host: str, port: int) -> None:
    built = make_contact(node_id, (host, port))
    plain = Contact(node_id, (host, port))
    assert type(built) is Contact
    assert built == plain and hash(built) == hash(plain) and repr(built) == repr(plain)
    assert built.wire is None and {built, plain} == {plain}
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.address = ("127.0.0.2", port)  # type: ignore[misc]


def _plain(rpc_id: int, sender: int | None, token: bytes | None) -> bytes:
    """What cbor2 writes for a Ping envelope."""
    items: list[object] = [1, Ping.CODE, rpc_id,
                           None if sender is None else sender.to_bytes(32, "big"), []]
    if token is not None:
        items.append(token)
    return bytes(cbor2.dumps(items))


@given(st.lists(st.tuples(rpc_ids, st.none() | ids, tokens), min_size=1, max_size=8))
def test_one_codec_writes_each_sender_it_is_given(
        sends: list[tuple[int, int | None, bytes | None]]) -> None:
    codec = Codec(Config())  # one codec for every send: the sender it kept must not leak
    for rpc_id, sender, token in sends:
        assert codec.encode_parts(rpc_id, sender, Ping(), token) == _plain(rpc_id, sender, token)
        if sender is not None:  # an equal id that is another int object
            again = int(str(sender))
            assert codec.encode_parts(rpc_id, again, Ping(), token) == _plain(rpc_id, sender,
                                                                              token)


def test_a_codec_alternating_senders_writes_each_one() -> None:
    codec = Codec(Config())
    first, second = 2**255 + 1, 7
    for sender in (first, first, second, None, first, second):
        assert codec.encode_parts(9, sender, Ping()) == _plain(9, sender, None)


@pytest.mark.parametrize("burst", [1, 3, 2**53 + 1])
def test_a_refilled_bucket_holds_at_most_its_burst(burst: int) -> None:
    limiter: RateLimiter[str] = RateLimiter(rate=10.0, burst=burst, max_senders=4)
    assert limiter.allow("a", 0.0)
    assert limiter.allow("a", 1e9)  # refilled far past the burst: clamped to it
    tokens, updated = limiter._buckets["a"]
    assert (tokens, updated) == (float(burst) - 1.0, 1e9)
    assert type(tokens) is float
    limiter.allow("b", 0.0)
    limiter.allow("b", 0.05)  # half a token refilled: not clamped
    assert limiter._buckets["b"] == (float(burst) - 1.0 + 0.5 - 1.0
                                     if burst > 1 else 0.5, 0.05)
