"""Stable, vectorized 128-bit digest of primary-key values, and the bucket of a digest.

The digest identifies a key by its logical values: two rows get the same digest exactly when
their key values are equal (up to a ~2**-128 chance). It is a pure function of those values, so
it is the same in every run, process, machine, chunking and library version. Any change to the
algorithm below must change ``HASH_ID``; tests/compactor/test_hashing.py pins it with golden
vectors.

Algorithm ``ckh128-v1`` (all arithmetic modulo 2**64)
-----------------------------------------------------
The digest is two 64-bit lanes, ``hi`` and ``lo``, computed by the same absorb loop with their own
seed and their own permutation ``F`` (both are bijections on 64-bit words)::

    lane  seed                 F (x ^= x >> a; x *= m1; x ^= x >> b; x *= m2; x ^= x >> c)
    hi    0x243F6A8885A308D3   a, b, c = 33, 33, 33; m1, m2 = 0xFF51AFD7ED558CCD, 0xC4CEB9FE1A85EC53
    lo    0x13198A2E03707344   a, b, c = 30, 27, 31; m1, m2 = 0xBF58476D1CE4E5B9, 0x94D049BB133111EB

(``hi`` uses the MurmurHash3 fmix64 finalizer, ``lo`` the SplitMix64 finalizer.) For one row::

    s = seed
    for each key column, in the order given:
        s = F(s ^ header)                 # header = tag << 56 | size
        for each 64-bit payload word w:
            s = F(s ^ w)
    lane = s

Each column value becomes a type tag, a size field and a sequence of payload words:

==============================  ===  ==========================  ==================================
Arrow type                      tag  size field                  payload words
==============================  ===  ==========================  ==================================
int8..int64, uint8..uint64      1    8                           the value as a 64-bit two's
                                                                 complement integer
uint64 value >= 2**63           2    8                           the value
bool                            3    8                           0 or 1
date32, date64                  4    8                           milliseconds since 1970-01-01
timestamp (any unit, any tz)    5    16                          floor(seconds) since the epoch
                                                                 (UTC), then nanoseconds 0..10**9-1
time32, time64                  6    8                           nanoseconds since midnight
duration (any unit)             7    16                          as timestamp
string, large_string,           8    byte length n of the        the UTF-8 bytes, 8 at a time,
string_view                          value                       read little-endian; the last
                                                                 word padded with zero bytes
binary, large_binary,           9    byte length n               as string
binary_view, fixed_size_binary
decimal32/64/128/256            10   (scale mod 2**16) << 32     the unscaled value as a 256-bit
                                     | 32                        two's complement integer, least
                                                                 significant 64-bit word first
                                                                 (read from Arrow's buffer: a
                                                                 little-endian host is assumed)
==============================  ===  ==========================  ==================================

So the digest depends on logical values only: int32 ``5`` and uint64 ``5`` agree, as do equal
instants in different timestamp units or time zones, a date in date32 and date64, string and
large_string, decimal128 and decimal256 of the same scale (the hash allows for them; a table
still refuses a delta whose column changes type, unit or time zone: ``compactor.schema``). The
tag keeps types apart (int ``1``
is not string ``"1"``), and because every column absorbs its size before its payload, column
boundaries cannot shift: ``("ab", "c")`` differs from ``("a", "bc")``. A dictionary-encoded
column is hashed by its decoded values. Floating point and nested types are not key types.

Null key values are an error (``NullKeyError`` names the column and the first null row).

Throughput comes from running the loop over blocks of rows that stay in CPU cache, one numpy
operation per step for the whole block; variable-length values take one step per 8-byte word
position, so the cost of a string key grows with its length, not with the number of rows times
a Python call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

__all__ = [
    "HASH_ID",
    "KeyHashError",
    "NullKeyError",
    "UnsupportedKeyType",
    "bucket_of",
    "bucket_start",
    "key_digest",
]

HASH_ID: Final = "ckh128-v1"

_U64 = np.uint64
_BLOCK = 1 << 15  # rows per step: the block's state, words and scratch stay in L2 cache


class KeyHashError(ValueError):
    """A key column cannot be hashed."""


class NullKeyError(KeyHashError):
    """A primary-key column holds a null; ``row`` is the first null row (0-based)."""

    def __init__(self, column: str, row: int) -> None:
        super().__init__(f"null value in primary-key column {column!r} at row {row}")
        self.column = column
        self.row = row

    def __reduce__(self) -> tuple[type[NullKeyError], tuple[str, int]]:
        return (type(self), (self.column, self.row))


class UnsupportedKeyType(KeyHashError):
    """A primary-key column has a type that is not a key type."""

    def __init__(self, column: str, type_: str) -> None:
        super().__init__(
            f"primary-key column {column!r} has type {type_}, which is not a key type "
            "(integers, bool, date, time, timestamp, duration, string, binary, decimal)"
        )
        self.column = column
        self.type = type_

    def __reduce__(self) -> tuple[type[UnsupportedKeyType], tuple[str, str]]:
        return (type(self), (self.column, self.type))


class _Lane:
    """One 64-bit lane: its seed and its permutation F, applied in place to a block."""

    def __init__(self, seed: int, a: int, m1: int, b: int, m2: int, c: int) -> None:
        self.seed = _U64(seed)
        self._shifts = (_U64(a), _U64(b), _U64(c))
        self._mults = (_U64(m1), _U64(m2))

    def permute(self, x: np.ndarray, tmp: np.ndarray) -> None:
        a, b, c = self._shifts
        m1, m2 = self._mults
        for shift, mult in ((a, m1), (b, m2)):
            np.right_shift(x, shift, out=tmp)
            np.bitwise_xor(x, tmp, out=x)
            np.multiply(x, mult, out=x)
        np.right_shift(x, c, out=tmp)
        np.bitwise_xor(x, tmp, out=x)

    def absorb(self, state: np.ndarray, word: np.ndarray | np.uint64, tmp: np.ndarray) -> None:
        """state = F(state ^ word), in place."""
        np.bitwise_xor(state, word, out=state)
        self.permute(state, tmp)

    def start(self, header: int) -> np.uint64:
        """The state after absorbing ``header`` from the seed, for a block that starts uniform."""
        x = np.array([self.seed ^ _U64(header)], dtype=np.uint64)
        self.permute(x, np.empty_like(x))
        return _U64(x[0])


_HI = _Lane(0x243F6A8885A308D3, 33, 0xFF51AFD7ED558CCD, 33, 0xC4CEB9FE1A85EC53, 33)
_LO = _Lane(0x13198A2E03707344, 30, 0xBF58476D1CE4E5B9, 27, 0x94D049BB133111EB, 31)
_LANES = (_HI, _LO)

_TAG_INT, _TAG_UINT_HIGH, _TAG_BOOL, _TAG_DATE, _TAG_TIMESTAMP = 1, 2, 3, 4, 5
_TAG_TIME, _TAG_DURATION, _TAG_STRING, _TAG_BINARY, _TAG_DECIMAL = 6, 7, 8, 9, 10

_NANOS_PER_UNIT = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
_MS_PER_DAY = 86_400_000
# _TAIL_MASK[r] keeps the low r bytes of a little-endian word (r = 8: the whole word).
_TAIL_MASK = np.array([(1 << (8 * r)) - 1 for r in range(9)], dtype=np.uint64)


def _header(tag: int, size: int) -> int:
    return (tag << 56) | size


class _Block:
    """The two lane states of a block of rows (views into the output) plus scratch space.

    ``uniform`` is true while no column has been absorbed: every row still holds the seed, so a
    constant header can be absorbed once as a scalar instead of once per row.
    """

    def __init__(self, hi: np.ndarray, lo: np.ndarray, tmp: np.ndarray, uniform: bool) -> None:
        self.states = (hi, lo)
        self.tmp = tmp[: len(hi)]
        self.uniform = uniform

    def absorb_header(self, header: int | np.ndarray) -> None:
        for lane, state in zip(_LANES, self.states, strict=True):
            if self.uniform and isinstance(header, int):
                state.fill(lane.start(header))
                continue
            if self.uniform:
                state.fill(lane.seed)
            lane.absorb(state, header if isinstance(header, np.ndarray) else _U64(header), self.tmp)
        self.uniform = False

    def absorb_words(self, words: Sequence[np.ndarray]) -> None:
        for lane, state in zip(_LANES, self.states, strict=True):
            for word in words:
                lane.absorb(state, word, self.tmp)

    def absorb_bytes(self, tag: int, offsets: np.ndarray, data: pa.Buffer | None) -> None:
        """Absorb variable-length values: ``offsets`` (n + 1 byte offsets) into ``data``."""
        begin, end = int(offsets[0]), int(offsets[-1])
        lengths = np.diff(offsets).astype(np.int64)
        self.absorb_header(np.uint64(tag << 56) | lengths.astype(np.uint64))
        nwords = (lengths + 7) >> 3
        max_words = int(nwords.max(initial=0))
        if max_words == 0:
            return
        assert data is not None
        # A copy with 8 zero bytes of slack, seen as one unaligned little-endian word starting
        # at every byte, so the word at any offset is a single gather.
        padded = np.zeros(end - begin + 8, dtype=np.uint8)
        padded[: end - begin] = np.frombuffer(data, dtype=np.uint8, count=end - begin, offset=begin)
        word_at = np.ndarray((end - begin + 1,), dtype="<u8", buffer=padded, strides=(1,))
        starts = offsets[:-1].astype(np.int64) - begin
        active: np.ndarray | None = None  # None: every row has a word at this position
        min_words = int(nwords.min())
        for k in range(max_words):
            if k >= min_words:
                rows_left = np.arange(len(nwords)) if active is None else active
                active = rows_left[nwords[rows_left] > k]
            rows = slice(None) if active is None else active
            word = word_at[starts[rows] + 8 * k]
            tail = np.minimum(lengths[rows] - 8 * k, 8)
            word &= _TAIL_MASK[tail]
            for lane, state in zip(_LANES, self.states, strict=True):
                if active is None:
                    lane.absorb(state, word, self.tmp)
                else:
                    sub = state[active]
                    lane.absorb(sub, word, self.tmp[: len(sub)])
                    state[active] = sub


def _int_values(piece: pa.Array, width: pa.DataType) -> np.ndarray:
    return piece.view(width).to_numpy().astype(np.int64)


def _absorb_column(block: _Block, piece: pa.Array) -> None:
    """Absorb one block of one (null-free, decoded) key column."""
    t = piece.type
    if pa.types.is_signed_integer(t):
        block.absorb_header(_header(_TAG_INT, 8))
        block.absorb_words([piece.to_numpy().astype(np.int64).view(np.uint64)])
    elif pa.types.is_unsigned_integer(t):
        values = piece.to_numpy().astype(np.uint64)
        high = values >= _U64(1 << 63)
        if high.any():
            block.absorb_header(
                np.where(high, _U64(_header(_TAG_UINT_HIGH, 8)), _U64(_header(_TAG_INT, 8)))
            )
        else:
            block.absorb_header(_header(_TAG_INT, 8))
        block.absorb_words([values])
    elif pa.types.is_boolean(t):
        block.absorb_header(_header(_TAG_BOOL, 8))
        block.absorb_words([piece.to_numpy(zero_copy_only=False).astype(np.uint64)])
    elif pa.types.is_date32(t):
        block.absorb_header(_header(_TAG_DATE, 8))
        block.absorb_words([(_int_values(piece, pa.int32()) * _MS_PER_DAY).view(np.uint64)])
    elif pa.types.is_date64(t):
        block.absorb_header(_header(_TAG_DATE, 8))
        block.absorb_words([_int_values(piece, pa.int64()).view(np.uint64)])
    elif pa.types.is_timestamp(t) or pa.types.is_duration(t):
        tag = _TAG_TIMESTAMP if pa.types.is_timestamp(t) else _TAG_DURATION
        per_second = 10**9 // _NANOS_PER_UNIT[t.unit]
        seconds, sub = np.divmod(_int_values(piece, pa.int64()), per_second)
        block.absorb_header(_header(tag, 16))
        nanos = sub * _NANOS_PER_UNIT[t.unit]
        block.absorb_words([seconds.view(np.uint64), nanos.view(np.uint64)])
    elif pa.types.is_time32(t) or pa.types.is_time64(t):
        width = pa.int32() if pa.types.is_time32(t) else pa.int64()
        block.absorb_header(_header(_TAG_TIME, 8))
        nanos = _int_values(piece, width) * _NANOS_PER_UNIT[t.unit]
        block.absorb_words([nanos.view(np.uint64)])
    elif pa.types.is_decimal(t):
        wide = piece.cast(pa.decimal256(76, t.scale))
        words = np.frombuffer(wide.buffers()[1], dtype=np.uint64)
        words = words[4 * wide.offset : 4 * (wide.offset + len(wide))].reshape(-1, 4)
        block.absorb_header(_header(_TAG_DECIMAL, ((t.scale % 65536) << 32) | 32))
        block.absorb_words([np.ascontiguousarray(words[:, i]) for i in range(4)])
    elif pa.types.is_fixed_size_binary(t):
        width = t.byte_width
        offsets = np.arange(piece.offset, piece.offset + len(piece) + 1, dtype=np.int64) * width
        block.absorb_bytes(_TAG_BINARY, offsets, piece.buffers()[1])
    else:
        tag = _TAG_STRING if _is_string(t) else _TAG_BINARY
        if pa.types.is_string_view(t) or pa.types.is_binary_view(t):
            piece = piece.cast(pa.large_string() if tag == _TAG_STRING else pa.large_binary())
        large = pa.types.is_large_string(piece.type) or pa.types.is_large_binary(piece.type)
        offsets = np.frombuffer(piece.buffers()[1], dtype=np.int64 if large else np.int32)
        offsets = offsets[piece.offset : piece.offset + len(piece) + 1]
        block.absorb_bytes(tag, offsets, piece.buffers()[2])


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_key_type(t: pa.DataType) -> bool:
    return (
        pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or (pa.types.is_temporal(t) and not pa.types.is_interval(t))
        or pa.types.is_decimal(t)
        or pa.types.is_fixed_size_binary(t)
        or _is_string(t)
        or pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
    )


def _chunks(column: pa.Array | pa.ChunkedArray) -> list[pa.Array]:
    return column.chunks if isinstance(column, pa.ChunkedArray) else [column]


def key_digest(
    data: pa.Table | pa.RecordBatch, key_columns: Sequence[str]
) -> tuple[np.ndarray, np.ndarray]:
    """The ``ckh128-v1`` digest of each row's key: ``(hi, lo)``, two uint64 arrays of length N.

    ``key_columns`` names one or more columns of ``data``, in key order (the order matters).
    Raises ``NullKeyError`` for a null key value, ``UnsupportedKeyType`` for a column that is
    not a key type, ``KeyHashError`` for a missing column.
    """
    if isinstance(key_columns, str) or not key_columns:
        raise KeyHashError(f"key_columns must be a non-empty list of names, got {key_columns!r}")
    missing = [name for name in key_columns if name not in data.schema.names]
    if missing:
        raise KeyHashError(
            f"primary-key column(s) {missing} not found (columns: {data.schema.names})"
        )
    n = data.num_rows
    hi = np.empty(n, dtype=np.uint64)
    lo = np.empty(n, dtype=np.uint64)
    tmp = np.empty(min(n, _BLOCK), dtype=np.uint64)
    for position, name in enumerate(key_columns):
        column = data.column(name)
        value_type = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        if not _is_key_type(value_type):
            raise UnsupportedKeyType(name, str(column.type))
        first_row = 0
        for chunk in _chunks(column):
            if pa.types.is_dictionary(chunk.type):
                chunk = chunk.dictionary_decode()
            if chunk.null_count:
                first_null = pc.index(chunk.is_null(), True).as_py()
                raise NullKeyError(name, first_row + first_null)
            for start in range(0, len(chunk), _BLOCK):
                piece = chunk.slice(start, _BLOCK)
                rows = slice(first_row + start, first_row + start + len(piece))
                _absorb_column(_Block(hi[rows], lo[rows], tmp, position == 0), piece)
            first_row += len(chunk)
    return hi, lo


def bucket_of(hi: np.ndarray, bucket_count: int) -> np.ndarray:
    """The bucket of each digest: ``floor((hi >> 32) * bucket_count / 2**32)`` as int32.

    Takes the ``hi`` lane of ``key_digest``. Bucket ``b`` holds the digests whose ``hi`` lies in
    the ``b``-th of ``bucket_count`` equal ranges, so a digest-sorted index is bucket-sorted too.
    """
    if not 1 <= bucket_count < 2**31:
        raise ValueError(f"bucket_count must be in [1, 2**31), got {bucket_count}")
    hi = np.asarray(hi, dtype=np.uint64)
    scaled = (hi >> _U64(32)) * _U64(bucket_count)
    return (scaled >> _U64(32)).astype(np.int32)


def bucket_start(bucket: int, bucket_count: int) -> int:
    """The least ``hi`` of bucket ``bucket`` (``2**64`` for ``bucket == bucket_count``), so a
    digest-sorted index finds its bucket boundaries by binary search instead of a pass."""
    if not 0 <= bucket <= bucket_count:
        raise ValueError(f"bucket {bucket} is outside [0, {bucket_count}]")
    return -(-bucket * 2**32 // bucket_count) << 32
