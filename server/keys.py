"""Lock keys: the canonical bytes a key travels as, and its name for humans.

A key is a ``str``, ``bytes``, an integer (``int`` or anything with
``__index__``, such as ``numpy.int64``; not ``bool``) or a tuple of keys
(``("chunk", 3, 7)``).  Equal keys encode to equal bytes, so ``3`` and
``numpy.int64(3)`` name the same lock; ``"3"`` and ``3`` do not.  The empty
encoding is the controller's default lock, and bounded keys live in a
namespace of their own (``bounded("x", n)`` and ``write("x")`` are different
locks).  Pure functions, no MPI: the client encodes, the server only compares
bytes and decodes them to name a key in errors, tables and traces.
"""

from __future__ import annotations

import operator
from collections.abc import Iterable

from .protocol import KEY_LENGTH

DEFAULT = b""
"""Encoding of the controller's default lock (``read()``/``write()`` without a key)."""
_BOUNDED = b"#"
_STR, _BYTES, _INT, _TUPLE = b"s", b"b", b"i", b"t"
MAX_KEY = 0xFFFF
"""Longest encoded key in bytes (its length travels as two bytes in a multi-key request)."""


def encode(key: object) -> bytes:
    """Return the canonical bytes of ``key``; ``TypeError`` for a type that is not a key."""
    if type(key) is str:
        data = _STR + key.encode("utf-8", "surrogatepass")
    elif type(key) is bytes:
        data = _BYTES + key
    elif type(key) is int:
        data = _INT + str(key).encode()
    else:
        data = _encode_other(key)
    if len(data) > MAX_KEY:
        raise ValueError(f"a lock key may encode to at most {MAX_KEY} bytes, not {len(data)}")
    return data


def _encode_other(key: object) -> bytes:
    if isinstance(key, bool):
        raise TypeError("a lock key cannot be a bool (True == 1 would silently share the lock of key 1)")
    if isinstance(key, str):
        return _STR + str(key).encode("utf-8", "surrogatepass")
    if isinstance(key, bytes):  # a subclass; bytearray and memoryview are mutable, so no keys (as in a dict)
        return _BYTES + bytes(key)
    if isinstance(key, tuple):
        return _TUPLE + b"".join(_prefixed(encode(part)) for part in key)
    if hasattr(type(key), "__index__"):
        return _INT + str(operator.index(key)).encode()  # type: ignore[arg-type]
    hint = " (did you mean timeout=...?)" if isinstance(key, float) else ""
    raise TypeError(f"a lock key must be a str, bytes, an integer or a tuple of those, not {type(key).__name__}{hint}")


def encode_bounded(key: object) -> bytes:
    """Return the canonical bytes of bounded key ``key`` (a namespace apart from read/write keys)."""
    return _BOUNDED + encode(key)


def _prefixed(data: bytes) -> bytes:
    return KEY_LENGTH.pack(len(data)) + data


def pack(keys: Iterable[bytes]) -> bytes:
    """Return the key area of a multi-key request: every key prefixed by its length."""
    return b"".join(_prefixed(k) for k in keys)


def unpack(area: bytes) -> tuple[bytes, ...]:
    """Split a multi-key area made by :func:`pack` (``ValueError`` if it is malformed)."""
    keys: list[bytes] = []
    at = 0
    while at < len(area):
        if at + KEY_LENGTH.size > len(area):
            raise ValueError("truncated key list")
        (length,) = KEY_LENGTH.unpack_from(area, at)
        at += KEY_LENGTH.size
        if at + length > len(area):
            raise ValueError("truncated key list")
        keys.append(area[at : at + length])
        at += length
    return tuple(keys)


def decode(data: bytes) -> object:
    """Return the key that :func:`encode` turned into ``data`` (bounded keys lose their namespace)."""
    if data.startswith(_BOUNDED):
        data = data[1:]
    tag, body = data[:1], data[1:]
    if tag == _STR:
        return body.decode("utf-8", "surrogatepass")
    if tag == _BYTES:
        return bytes(body)
    if tag == _INT:
        return int(body)
    if tag == _TUPLE:
        return tuple(decode(part) for part in unpack(body))
    raise ValueError(f"not an encoded key: {data!r}")


def is_bounded(data: bytes) -> bool:
    """Whether ``data`` is the encoding of a bounded key."""
    return data.startswith(_BOUNDED)


def describe(data: bytes) -> str:
    """Name an encoded key for people: ``'out/part-17.h5'``, ``('chunk', 3)``, ``bounded 'lustre'``."""
    if data == DEFAULT:
        return "the default lock"
    try:
        text = repr(decode(data))
    except ValueError:
        text = repr(data)
    return f"bounded {text}" if is_bounded(data) else text
