"""Reading CBOR that other peers wrote: cbor2's decoder without its tagged types.

cbor2 decodes many tagged types by default (dates, decimal fractions, regular expressions, MIME
messages, UUIDs, IP addresses...), some at a cost far beyond their size: an 8 KB MIME message
(tag 36) takes milliseconds of the email parser, an 8 KB bigfloat (tag 5) milliseconds of decimal
arithmetic, against microseconds for a whole well-formed datagram. No qadom format has a field of
any such type, so an input carrying one is malformed whatever it would decode to.

Guarantee: :func:`loads` (and ``cbor2.loads`` given :data:`REFUSED` and :func:`refuse`, as the
codec calls it) decodes tags 2 and 3 (bignums: integers, which a peer may write that way;
docs/PROTOCOL.md) and raises :class:`cbor2.CBORDecodeError` on any other tag, as on malformed
CBOR. What a tag holds is decoded as plain CBOR first (strings, arrays, integers: as cheap as
any datagram), then the tag is refused: no tag's own decoder ever runs.
"""

from __future__ import annotations

from typing import Any

import cbor2


def refuse(content: Any, *args: Any) -> Any:
    """A semantic decoder (given what the tag holds, decoded), and a tag hook (given the
    decoder and the tag), that refuses the tag it is called for."""
    raise cbor2.CBORDecodeError("a semantic tag that no qadom format uses")


# Every tag that cbor2 decodes to a type of its own, but the bignums. A plain dict, which
# cbor2 reads at no cost per call; tests/test_codec_hostile.py checks that the installed cbor2
# knows no other tag.
REFUSED: dict[int, Any] = dict.fromkeys(
    (0, 1, 4, 5, 25, 28, 29, 30, 35, 36, 37, 52, 54, 100, 256, 258, 260, 261, 1004, 43000, 55799),
    refuse)


def loads(data: bytes) -> Any:
    """``data`` decoded as :func:`cbor2.loads` does, but for the tags this module refuses; raises
    what cbor2 raises on malformed input (:class:`cbor2.CBORDecodeError` and a few others)."""
    return cbor2.loads(data, semantic_decoders=REFUSED, tag_hook=refuse)
