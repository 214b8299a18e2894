"""Lock keys: canonical bytes, equal keys alike, different keys apart, names for people (no MPI)."""

import numpy as np
import pytest

from mpilock.server import keys


def test_equal_keys_encode_alike_and_different_ones_apart():
    assert keys.encode(3) == keys.encode(np.int64(3)) == keys.encode(np.uint8(3))
    distinct = [keys.encode(k) for k in ("3", 3, b"3", ("3",), (3,), (("3",),), "", b"", 0, (), ("a", "b"), "a\x00b")]
    assert len(set(distinct)) == len(distinct)
    assert keys.DEFAULT not in distinct  # no key is the default lock
    assert keys.encode_bounded("x") != keys.encode("x")


@pytest.mark.parametrize("key", ["out/part-17.h5", b"\x00\xff", -(10**30), ("chunk", 3, (b"x", "y")), "ünï", ""])
def test_keys_round_trip(key):
    assert keys.decode(keys.encode(key)) == key
    assert keys.decode(keys.encode_bounded(key)) == key


@pytest.mark.parametrize(
    ("key", "message"),
    [
        (True, "bool"),
        (1.5, "timeout="),
        ([1], "list"),
        ({"a"}, "set"),
        (None, "NoneType"),
        (bytearray(b"a"), "bytearray"),  # mutable, as a dict refuses it: "str, bytes, integers and tuples"
        (memoryview(b"a"), "memoryview"),
    ],
)
def test_other_types_are_refused(key, message):
    with pytest.raises(TypeError, match=message):
        keys.encode(key)


def test_names_for_people():
    assert keys.describe(keys.DEFAULT) == "the default lock"
    assert keys.describe(keys.encode("a")) == "'a'"
    assert keys.describe(keys.encode(("chunk", 3))) == "('chunk', 3)"
    assert keys.describe(keys.encode_bounded("fs")) == "bounded 'fs'"


def test_multi_key_areas_round_trip_and_reject_garbage():
    encoded = tuple(keys.encode(k) for k in ("a", 7, ("t", 1)))
    assert keys.unpack(keys.pack(encoded)) == encoded
    with pytest.raises(ValueError):
        keys.unpack(b"\x05\x00ab")


def test_keys_have_a_size_limit():
    keys.encode("x" * 60000)
    with pytest.raises(ValueError, match="at most"):
        keys.encode("x" * 70000)
