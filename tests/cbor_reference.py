"""What cbor2 writes for qadom's datagrams: the plain reference the codec's own writer is held to
(byte for byte) by the codec tests, and how the fuzzers write fields the encoder would refuse."""

from __future__ import annotations

from typing import Any

from qadom.codec import _VERSION, _close, _dump_item, _head
from qadom.ids import ID_BYTES, id_to_bytes
from qadom.messages import Kind


def plain_field(kind: Kind, value: Any) -> Any:
    """The plain value of a field, as cbor2 is given it: an id as its 32 bytes, contacts as
    [id bytes, host, port] triples, anything else as it is."""
    if kind is Kind.ID:
        return id_to_bytes(value)
    if kind is Kind.OPT_ID:
        return None if value is None else id_to_bytes(value)
    if kind is Kind.CONTACTS:
        return [[c.id.to_bytes(ID_BYTES, "big"), c.address[0], c.address[1]] for c in value]
    if kind is Kind.IDS:
        return [id_to_bytes(item) for item in value]
    return value


def dump_envelope(code: int, rpc_id: int, sender: bytes | None, fields: list[Any],
                  token: bytes | None = None, padding: bytes | None = None) -> bytes:
    """An envelope of field values of any shape, written with the codec's own item writers (the
    pieces :meth:`qadom.codec.Codec.encode` is built from): ``[PROTOCOL_VERSION, code, rpc_id,
    sender, fields]``, then ``token`` when there is a token or padding, then ``padding``."""
    core = b"".join([_VERSION, _dump_item(code), _dump_item(rpc_id), _dump_item(sender),
                     _head(4, len(fields)), *map(_dump_item, fields)])
    return _close(core, token, padding)
