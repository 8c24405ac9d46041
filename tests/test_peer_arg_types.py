"""Deliberate errors for bad arguments are qadom's own (README: every one derives from
QadomError) and of the documented builtin kind: TypeError for a wrong type, ValueError for a
value out of range. Peer methods on a real peer on loopback (port 0), the pubsub wire messages
as a caller builds them."""

from __future__ import annotations

from collections.abc import Callable

import cbor2
import pytest

from qadom import InvalidArgument, InvalidType, Peer, ProtocolError, QadomError
from qadom.codec import Codec
from qadom.config import Config
from qadom.errors import InvalidField
from qadom.messages import Envelope
from qadom.namespace import NamespaceFound, NamespaceStore
from qadom.pubsub import Subscribe

from helpers import FAST

WRONG_KEYS: list[object] = [5, None, b"key", True, 1.5, ["key"]]


async def test_dht_forget_of_a_key_of_the_wrong_type_is_a_type_error() -> None:
    async with Peer("127.0.0.1", 0, config=FAST) as peer:
        for key in WRONG_KEYS:
            with pytest.raises(InvalidType, match="key must be a str") as refused:
                peer.dht_forget(key)  # type: ignore[arg-type]
            assert isinstance(refused.value, TypeError) and isinstance(refused.value, QadomError)
        # A str that is no usable key is a bad value, named as the HTTP helper names it.
        for key in ("", "k" * (FAST.dht_max_key_size + 1), "\ud800"):
            with pytest.raises(InvalidField) as bad:
                peer.dht_forget(key)
            assert bad.value.field == "key" and isinstance(bad.value, ValueError)
        assert peer.dht_forget("never written here") is False


def test_a_subscribe_of_no_lease_is_refused_as_a_bad_value() -> None:
    for lease_ms in (0, -1):
        with pytest.raises(InvalidArgument, match="a lease is at least 1 ms") as refused:
            Subscribe(1, lease_ms)
        assert isinstance(refused.value, ValueError) and isinstance(refused.value, QadomError)
    assert Subscribe(1, 1).lease_ms == 1


def test_a_datagram_subscribing_for_no_lease_is_a_protocol_error() -> None:
    codec = Codec(Config())
    items = cbor2.loads(codec.encode(Envelope(7, None, Subscribe(3, 60_000))))
    assert items[4][1] == 60_000  # the lease field
    items[4][1] = 0
    with pytest.raises(ProtocolError, match="a lease is at least 1 ms"):
        codec.decode(cbor2.dumps(items))



@pytest.mark.parametrize("build", [
    lambda: NamespaceStore(bytes(31), 5, 0, b"v", bytes(64), 60),
    lambda: NamespaceStore(bytes(32), 5, 0, b"v", bytes(63), 60),
    lambda: NamespaceStore(bytes(32), 5, 2**63, b"v", bytes(64), 60),
    lambda: NamespaceFound(bytes(33), 5, 0, b"v", bytes(64), (), 60),
])
def test_a_namespace_message_of_the_wrong_shape_is_a_bad_value(
        build: Callable[[], object]) -> None:
    with pytest.raises(InvalidArgument) as refused:
        build()
    assert isinstance(refused.value, ValueError) and isinstance(refused.value, QadomError)
