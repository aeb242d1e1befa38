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


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def byte(self) -> int:
        if self.at >= len(self.data):
            raise ThriftError("truncated")
        self.at += 1
        return self.data[self.at - 1]

    def varint(self) -> int:
        data, at, shift, result = self.data, self.at, 0, 0
        try:
            while True:
                b = data[at]
                at += 1
                result |= (b & 0x7F) << shift
                if not b & 0x80:
                    self.at = at
                    return result
                shift += 7
                if shift > 70:
                    raise ThriftError("varint too long")
        except IndexError:
            raise ThriftError("truncated") from None

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def take(self, n: int) -> bytes:
        if n < 0 or self.at + n > len(self.data):
            raise ThriftError("truncated")
        self.at += n
        return bytes(self.data[self.at - n:self.at])

    def value(self, t: int) -> Any:
        if t in (TRUE, FALSE):  # a list's element: a byte
            return self.byte()
        if t == BYTE:
            b = self.byte()
            return b - 256 if b > 127 else b
        if t in (I16, I32, I64):
            return self.zigzag()
        if t == DOUBLE:
            return struct.unpack("<d", self.take(8))[0]
        if t == BINARY:
            return self.take(self.varint())
        if t in (LIST, SET):
            head = self.byte()
            size = head >> 4
            if size == 15:
                size = self.varint()
            return Sequence(head & 0x0F, [self.value(head & 0x0F) for _ in range(size)])
        if t == MAP:
            size = self.varint()
            if not size:
                return Mapping(0, 0, [])
            kinds = self.byte()
            k, v = kinds >> 4, kinds & 0x0F
            return Mapping(k, v, [(self.value(k), self.value(v)) for _ in range(size)])
        if t == STRUCT:
            return self.struct()
        raise ThriftError(f"unknown type {t}")

    def struct(self) -> Struct:
        out, last = Struct(), 0
        while True:
            head = self.byte()
            t = head & 0x0F
            if t == STOP:
                return out
            delta = head >> 4
            fid = last + delta if delta else self.zigzag()
            if t in (TRUE, FALSE):
                out.fields.append([fid, TRUE, t == TRUE])
            else:
                out.fields.append([fid, t, self.value(t)])
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
    reader = _Reader(bytes(view if view.format == "B" else view.cast("B")))
    out = reader.struct()
    if reader.at != len(data):
        raise ThriftError(f"{len(data) - reader.at} bytes after the struct")
    return out


def dumps(s: Struct) -> bytes:
    out = bytearray()
    _write_struct(s, out)
    return bytes(out)
