"""Errors name a 256-bit key or topic in hexadecimal: ``0x`` and 64 digits, which the command
line and Python's ``int(text, 0)`` read back as that key (and the HTTP API without the ``0x``),
never as a 78-digit decimal number nor as bare digits a reader could take for decimal."""

from __future__ import annotations

import cbor2
import pytest
from nacl.signing import SigningKey

from qadom import Config
from qadom.errors import BadSignature, NoPeersError, NotFoundError, StaleSequence
from qadom.namespace import NamespaceRecord, supersedes
from qadom.sim import SimNetwork

KEY = 2**255 + 0xABCDEF  # 78 decimal digits, 64 hex
HEX = f"0x{KEY:064x}"
OWNER = SigningKey(bytes(range(32)))
PUBLIC = bytes(OWNER.verify_key)
CONFIG = Config(k=4, alpha=2)


def _record(seq: int, value: bytes) -> NamespaceRecord:
    data = cbor2.dumps(["qadom/namespace/v1", PUBLIC, KEY.to_bytes(32, "big"), seq, value])
    return NamespaceRecord(PUBLIC, KEY, seq, value, OWNER.sign(data).signature)


def _says_hex(error: BaseException) -> None:
    assert HEX in str(error)
    assert str(KEY) not in str(error)


def test_a_value_nobody_holds_is_named_in_hex() -> None:
    net = SimNetwork(1, config=CONFIG)
    nodes = net.add_nodes(8)
    with pytest.raises(NotFoundError) as raised:
        net.run_call(net.call(nodes[0], nodes[0].get, KEY))
    _says_hex(raised.value)


def test_a_namespace_key_nobody_holds_is_named_in_hex() -> None:
    net = SimNetwork(2, config=CONFIG)
    nodes = net.add_nodes(8)
    with pytest.raises(NotFoundError) as raised:
        net.run_call(net.call(nodes[0], nodes[0].namespace.get, PUBLIC, KEY))
    _says_hex(raised.value)


def test_a_bad_signature_and_a_stale_seq_name_the_key_in_hex() -> None:
    good = _record(3, b"v")
    forged = NamespaceRecord(PUBLIC, KEY, 4, b"w", good.signature)
    with pytest.raises(BadSignature) as bad:
        forged.verify()
    _says_hex(bad.value)
    with pytest.raises(StaleSequence) as older:
        supersedes(_record(2, b"u"), good)
    _says_hex(older.value)
    with pytest.raises(StaleSequence) as changed:
        supersedes(_record(3, b"x"), good)
    _says_hex(changed.value)
    assert f"{KEY:064x}" in repr(good)


def test_a_topic_nobody_can_relay_is_named_in_hex() -> None:
    net = SimNetwork(3, config=CONFIG)
    (alone,) = net.add_nodes(1)
    with pytest.raises(NoPeersError) as raised:
        net.run_call(net.call(alone, alone.pubsub.publish, KEY, b"m"))
    _says_hex(raised.value)
