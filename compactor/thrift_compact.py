"""Thrift's compact protocol, read and written generically (enough for a Parquet footer).

A Parquet footer (``FileMetaData``) is a Thrift struct in the compact protocol. To splice row
groups of several files into one (``parquet_splice``), their footers are read as generic
values, a few offsets are changed, and a new footer is written. No generated classes: a struct
is a :class:`Struct`, a list of ``[field id, type, value]`` in the order read, so fields this
module knows nothing about (newer Parquet versions') are written back exactly as they came.

Values by type: booleans are ``bool`` (a list's elements: the byte as read), the integer types
``int``, ``DOUBLE`` ``float``, ``BINARY`` ``bytes``, ``LIST``/``SET`` a :class:`Sequence`,
``MAP`` a :class:`Mapping`, ``STRUCT`` a :class:`Struct`. Reading what was written gives the
same bytes back for anything a conforming writer produced (a test checks pyarrow's footers).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

STOP, TRUE, FALSE, BYTE, I16, I32, I64, DOUBLE, BINARY, LIST, SET, MAP, STRUCT = range(13)


@dataclass
class Struct:
    fields: list[list[Any]] = field(default_factory=list)  # [id, type, value], in order

    def get(self, fid: int, default: Any = None) -> Any:
        for f in self.fields:
            if f[0] == fid:
                return f[2]
        return default

    def has(self, fid: int) -> bool:
        return any(f[0] == fid for f in self.fields)


@dataclass
class Sequence:
    type: int  # the elements' type
    items: list[Any]


@dataclass
class Mapping:
    key_type: int
    value_type: int
    items: list[tuple[Any, Any]]


class ThriftError(ValueError):
    """Bytes that are not a compact-protocol struct."""


def _read_varint(data: bytes, at: int) -> tuple[int, int]:
    """The varint at ``at`` and where it ends."""
    b = data[at]
    if b < 0x80:
        return b, at + 1
    result, shift = b & 0x7F, 0
    while True:
        shift += 7
        if shift > 70:
            raise ThriftError("varint too long")
        at += 1
        b = data[at]
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result, at + 1


def _read_bytes(data: bytes, at: int, n: int) -> tuple[bytes, int]:
    end = at + n
    if end > len(data):
        raise ThriftError("truncated")
    return data[at:end], end


# (module functions passing the position along, not a reader object's methods: a footer is
# thousands of values, and this reads one in a third of the time)
def _read_value(data: bytes, at: int, t: int) -> tuple[Any, int]:
    """The value of type ``t`` at ``at`` and where it ends."""
    if t in (I32, I64, I16):
        n, at = _read_varint(data, at)
        return (n >> 1) ^ -(n & 1), at
    if t == BINARY:
        n, at = _read_varint(data, at)
        return _read_bytes(data, at, n)
    if t == STRUCT:
        return _read_struct(data, at)
    if t in (LIST, SET):
        head = data[at]
        at += 1
        size, kind = head >> 4, head & 0x0F
        if size == 15:
            size, at = _read_varint(data, at)
        items = []
        for _ in range(size):
            item, at = _read_value(data, at, kind)
            items.append(item)
        return Sequence(kind, items), at
    if t in (TRUE, FALSE):  # a list's element: a byte
        return data[at], at + 1
    if t == BYTE:
        b = data[at]
        return b - 256 if b > 127 else b, at + 1
    if t == DOUBLE:
        raw, at = _read_bytes(data, at, 8)
        return struct.unpack("<d", raw)[0], at
    if t == MAP:
        size, at = _read_varint(data, at)
        if not size:
            return Mapping(0, 0, []), at
        kinds = data[at]
        at += 1
        k, v = kinds >> 4, kinds & 0x0F
        pairs = []
        for _ in range(size):
            key, at = _read_value(data, at, k)
            value, at = _read_value(data, at, v)
            pairs.append((key, value))
        return Mapping(k, v, pairs), at
    raise ThriftError(f"unknown type {t}")


def _read_struct(data: bytes, at: int) -> tuple[Struct, int]:
    fields: list[list[Any]] = []
    last = 0
    while True:
        head = data[at]
        at += 1
        t = head & 0x0F
        if t == STOP:
            return Struct(fields), at
        delta = head >> 4
        if delta:
            fid = last + delta
        else:
            n, at = _read_varint(data, at)
            fid = (n >> 1) ^ -(n & 1)
        if t in (TRUE, FALSE):
            fields.append([fid, TRUE, t == TRUE])
        else:
            value, at = _read_value(data, at, t)
            fields.append([fid, t, value])
        last = fid


def _varint(n: int, out: bytearray) -> None:
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)


def _zigzag(n: int, out: bytearray) -> None:
    _varint((n << 1) ^ (n >> 63), out)


def _write_value(t: int, v: Any, out: bytearray) -> None:
    if t in (TRUE, FALSE, BYTE):
        out.append(v & 0xFF)
    elif t in (I16, I32, I64):
        _zigzag(v, out)
    elif t == DOUBLE:
        out += struct.pack("<d", v)
    elif t == BINARY:
        _varint(len(v), out)
        out += v
    elif t in (LIST, SET):
        n = len(v.items)
        if n < 15:
            out.append(n << 4 | v.type)
        else:
            out.append(0xF0 | v.type)
            _varint(n, out)
        for item in v.items:
            _write_value(v.type, item, out)
    elif t == MAP:
        _varint(len(v.items), out)
        if v.items:
            out.append(v.key_type << 4 | v.value_type)
            for k, x in v.items:
                _write_value(v.key_type, k, out)
                _write_value(v.value_type, x, out)
    elif t == STRUCT:
        _write_struct(v, out)
    else:
        raise ThriftError(f"unknown type {t}")


def _write_struct(s: Struct, out: bytearray) -> None:
    last = 0
    for fid, t, v in s.fields:
        kind = (TRUE if v else FALSE) if t in (TRUE, FALSE) else t
        if 0 < fid - last <= 15:
            out.append((fid - last) << 4 | kind)
        else:
            out.append(kind)
            _zigzag(fid, out)
        if kind not in (TRUE, FALSE):
            _write_value(t, v, out)
        last = fid
    out.append(STOP)


def loads(data: bytes | memoryview) -> Struct:
    """The struct ``data`` holds (all of it: trailing bytes are an error)."""
    view = memoryview(data)
    # (bytes: indexed faster than a view; a footer is a few KB; pyarrow's views are signed)
    raw = bytes(view if view.format == "B" else view.cast("B"))
    try:
        out, at = _read_struct(raw, 0)
    except IndexError:
        raise ThriftError("truncated") from None
    except RecursionError:
        raise ThriftError("nested too deeply") from None
    if at != len(raw):
        raise ThriftError(f"{len(raw) - at} bytes after the struct")
    return out


def dumps(s: Struct) -> bytes:
    out = bytearray()
    _write_struct(s, out)
    return bytes(out)
