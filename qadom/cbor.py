"""Reading CBOR that other peers wrote: :func:`loads`, cbor2's decoder without its tagged types.

cbor2 decodes many tagged types by default (dates, decimal fractions, regular expressions, MIME
messages, UUIDs, IP addresses...), some at a cost far beyond their size: an 8 KB MIME message
(tag 36) takes milliseconds of the email parser, an 8 KB bigfloat (tag 5) milliseconds of decimal
arithmetic, against microseconds for a whole well-formed datagram. No qadom format has a field of
any such type, so an input carrying one is malformed whatever it would decode to: :func:`loads`
refuses the tag as soon as it meets it, before reading what it tags.

Guarantee: the only tags decoded are 2 and 3 (bignums: integers, which a peer may write that way;
docs/PROTOCOL.md). Any other tag raises :class:`cbor2.CBORDecodeError`, as malformed CBOR does.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import cbor2

_DECODED = frozenset({2, 3})


def _refuse(decoder: Any, immutable: bool = False) -> Any:
    raise cbor2.CBORDecodeError("a semantic tag that no qadom format uses")


class _RefuseTags(Mapping[int, Callable[[Any, bool], Any]]):
    """cbor2's ``semantic_decoders``: every tag but those of ``_DECODED`` maps to a decoder that
    refuses it (cbor2 looks each tag it meets up here, and decodes it itself on a KeyError). It
    lists nothing: it answers any tag it is asked about, as a default would."""

    def __getitem__(self, tag: int) -> Callable[[Any, bool], Any]:
        if tag in _DECODED:
            raise KeyError(tag)
        return _refuse

    def __len__(self) -> int:
        return 0

    def __iter__(self) -> Iterator[int]:
        return iter(())


_REFUSE_TAGS = _RefuseTags()


def loads(data: bytes) -> Any:
    """``data`` decoded as :func:`cbor2.loads` does, but for the tags this module refuses; raises
    what cbor2 raises on malformed input (:class:`cbor2.CBORDecodeError` and a few others)."""
    return cbor2.loads(data, semantic_decoders=_REFUSE_TAGS)
