"""Ids, keys and the XOR metric (paper section 2.1)."""

import hashlib
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from qadom.errors import InvalidArgument, InvalidType
from qadom.ids import ID_SPACE, check_id, distance, key_for, random_id, random_id_in

ids = st.integers(min_value=0, max_value=ID_SPACE - 1)


def test_key_is_sha256_big_endian() -> None:
    assert key_for(b"sudo python") == int.from_bytes(
        hashlib.sha256(b"sudo python").digest(), "big")
    assert key_for(b"sudo python") == (
        44523492095186523269265158000087001266127815262863473237438729878159874507476)


@given(ids, ids)
def test_distance_is_symmetric_and_zero_only_to_itself(a: int, b: int) -> None:
    assert distance(a, b) == distance(b, a)
    assert (distance(a, b) == 0) == (a == b)


@given(ids, ids, ids)
def test_triangle_inequality(a: int, b: int, c: int) -> None:
    assert distance(a, c) <= distance(a, b) + distance(b, c)


@given(ids, ids)
def test_unidirectional(a: int, d: int) -> None:
    # exactly one point lies at distance d from a
    assert distance(a, a ^ d) == d


def test_random_ids_are_seeded_and_in_range() -> None:
    assert random_id(random.Random(3)) == random_id(random.Random(3))
    rng = random.Random(1)
    for _ in range(100):
        assert 0 <= random_id(rng) < ID_SPACE
        assert 64 <= random_id_in(rng, 64, 128) < 128


@pytest.mark.parametrize("bad", [-1, ID_SPACE, ID_SPACE * 2])
def test_check_id_range(bad: int) -> None:
    with pytest.raises(InvalidArgument) as info:
        check_id(bad)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", ["1", 1.0, b"\x01", None, True])
def test_check_id_type(bad: object) -> None:
    with pytest.raises(InvalidType) as info:
        check_id(bad)
    assert isinstance(info.value, TypeError)
