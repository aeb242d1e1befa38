"""Serialization of values for the object store and the wire.

A value is pickled with protocol 5 and out-of-band buffers (cloudpickle, so lambdas and classes
defined in ``__main__`` work). The frame written to shared memory (or inlined in a message) is::

    magic(8) | header_len(8) | nbuf(8) | nbuf x (offset(8), length(8)) | header | buffers...

Buffers start at 64-byte aligned offsets, and reading wraps them as memoryviews into the mapping,
so numpy arrays and Arrow buffers come back without a copy.

ObjectRefs met while pickling are recorded, so the store knows which objects a value contains
and keeps them alive while it lives.
"""

from __future__ import annotations

import os
import pickle
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import cloudpickle

MAGIC = b"CPTOBJ01"
ALIGN = 64
_HEAD = struct.Struct("<8sQQ")
_BUF = struct.Struct("<QQ")

_collect = threading.local()


@contextmanager
def collecting_refs() -> Iterator[list[str]]:
    """Within the block, ids of ObjectRefs that get pickled are appended to the yielded list."""
    prev = getattr(_collect, "ids", None)
    ids: list[str] = []
    _collect.ids = ids
    try:
        yield ids
    finally:
        _collect.ids = prev


def note_ref_pickled(object_id: str) -> None:
    ids = getattr(_collect, "ids", None)
    if ids is not None:
        ids.append(object_id)


class Frame:
    """A pickled value: header bytes plus out-of-band buffers, and the refs it contains."""

    __slots__ = ("buffers", "contained", "header", "size")

    def __init__(self, header: bytes, buffers: list[memoryview], contained: list[str]) -> None:
        self.header = header
        self.buffers = buffers
        self.contained = contained
        offset = _align(_HEAD.size + _BUF.size * len(buffers) + len(header))
        for b in buffers:
            offset = _align(offset + b.nbytes)
        self.size = offset

    def _parts(self) -> list[memoryview | bytes]:
        """The frame as consecutive byte strings (buffers as views, never copied)."""
        table = bytearray()
        offset = _align(_HEAD.size + _BUF.size * len(self.buffers) + len(self.header))
        data: list[memoryview | bytes] = []
        for b in self.buffers:
            table += _BUF.pack(offset, b.nbytes)
            data.append(b)
            end = offset + b.nbytes
            offset = _align(end)
            if offset > end:
                data.append(bytes(offset - end))
        head = _HEAD.pack(MAGIC, len(self.header), len(self.buffers)) + table + self.header
        first = _align(len(head))
        return [head + bytes(first - len(head)), *data]

    def write_into(self, out: memoryview) -> None:
        pos = 0
        for part in self._parts():
            n = len(part) if isinstance(part, bytes) else part.nbytes
            out[pos:pos + n] = part
            pos += n

    def write_to_fd(self, fd: int) -> None:
        """Write the frame at the start of file ``fd`` with as few system calls as possible."""
        parts = [memoryview(p).cast("B") for p in self._parts()]
        pos = 0
        while parts:
            batch = parts[:512]
            written = os.pwritev(fd, batch, pos)
            pos += written
            while parts and written >= parts[0].nbytes:
                written -= parts[0].nbytes
                parts.pop(0)
            if written:
                parts[0] = parts[0][written:]

    def to_bytes(self) -> bytes:
        out = bytearray(self.size)
        self.write_into(memoryview(out))
        return bytes(out)


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


def dumps(value: Any) -> Frame:
    buffers: list[pickle.PickleBuffer] = []
    with collecting_refs() as ids:
        header = cloudpickle.dumps(value, protocol=5, buffer_callback=buffers.append)
    views = [b.raw() for b in buffers]
    return Frame(header, views, ids)


def loads(data: memoryview | bytes) -> Any:
    """Rebuild a value from a frame; buffers stay views into ``data`` (no copy)."""
    view = memoryview(data)
    magic, header_len, nbuf = _HEAD.unpack_from(view, 0)
    if magic != MAGIC:
        raise ValueError("not a runtime object frame (bad magic)")
    pos = _HEAD.size
    bufs = []
    for _ in range(nbuf):
        off, n = _BUF.unpack_from(view, pos)
        bufs.append(view[off:off + n])
        pos += _BUF.size
    return pickle.loads(view[pos:pos + header_len], buffers=bufs)


def dumps_small(value: Any) -> tuple[bytes, list[str]]:
    """Pickle in-band (for messages: specs, args, exceptions); returns bytes and contained refs."""
    with collecting_refs() as ids:
        data = cloudpickle.dumps(value, protocol=5)
    return data, ids


def loads_small(data: bytes) -> Any:
    return pickle.loads(data)
