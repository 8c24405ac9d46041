"""RoutingTable's bucket-wise shortcuts agree with their plain definitions on any table:
closest() with sorting every contact, the relaxed split rule with counting every closer contact."""

from __future__ import annotations

import heapq
import random

from hypothesis import given, settings
from hypothesis import strategies as st

from qadom.contact import Contact
from qadom.routing import RoutingTable


def plain_may_split(table: RoutingTable, new_id: int) -> bool:
    """Sections 2.4 and 4.2 as written, for a full bucket off our id's path: split while its
    depth is not a multiple of b, or while fewer than k known contacts are closer to us."""
    if table.bucket_for(new_id).depth % table.split_bits:
        return True
    closer = sum(1 for c in table if c.id ^ table.own_id < new_id ^ table.own_id)
    return closer < table.k


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32), bits=st.sampled_from([6, 12, 256]),
       k=st.sampled_from([1, 2, 3, 8, 20]), cache=st.sampled_from([0, 2, 20]),
       size=st.sampled_from([5, 60, 400]), split=st.sampled_from([1, 2, 3]))
def test_shortcuts_match_the_plain_rules(seed: int, bits: int, k: int, cache: int,
                                         size: int, split: int) -> None:
    rng = random.Random(seed)
    own = rng.getrandbits(bits)
    table = RoutingTable(own, k, cache, 3, 0.0, split_bits=split)
    for _ in range(size):
        new_id = rng.getrandbits(bits)
        if new_id == own:
            continue
        bucket = table.bucket_for(new_id)
        if (len(bucket.contacts) >= k and new_id not in bucket.contacts
                and not bucket.covers(own) and bucket.hi - bucket.lo >= 2):
            assert table._may_split(bucket, new_id) == plain_may_split(table, new_id)
        asked = table.seen(Contact(new_id, ("127.0.0.1", 1)))
        if asked is not None:
            if rng.random() < 0.5:
                table.seen(asked)
            else:
                table.failed(asked.id)
    table.check_invariants()
    contacts = list(table)
    for _ in range(20):
        target = rng.getrandbits(bits)
        count = rng.choice([0, 1, 3, k, 64])
        exclude = rng.choice(contacts).id if contacts and rng.random() < 0.5 else None
        expected = heapq.nsmallest(count, (c for c in contacts if c.id != exclude),
                                   key=lambda c: c.id ^ target)
        assert table.closest(target, count, exclude=exclude) == expected
