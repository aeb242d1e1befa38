"""File ordinals: how a row locator names the file a row lives in.

Index entries and records say ``(file, row)``. ``file`` is an int32 ordinal:

- a compacted file of bucket ``b`` at position ``i`` of the bucket's file list:
  ``b << 16 | i`` (below ``SOURCE_BASE``), so a bucket's index is self-contained and can be
  kept in place when the bucket is untouched;
- a source file of this round (a delta file, or on a rebase an old compacted file):
  ``SOURCE_BASE + j``, ``j`` counting the round's source files in stream order, so a higher
  ordinal is a later file and ties at one stream position break the right way.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

SOURCE_BASE = 1 << 30
MAX_BUCKETS = 1 << 14
MAX_FILES_PER_BUCKET = 1 << 16
MAX_FILE_ROWS = (1 << 31) - 1  # row locators are int32


def file_count(rows: Any, rows_per_file: int) -> Any:
    """How many files a materialize task writes of ``rows`` rows of a bucket (an int, or an
    array of counts): the fewest of at most ``rows_per_file`` rows."""
    return -(-rows // rows_per_file)


def file_rows(rows: Any, rows_per_file: int) -> Any:
    """The rows of each file but the last (which holds the rest) when a materialize task
    writes ``rows`` rows of a bucket (an int, or an array of counts): the fewest files of at
    most ``rows_per_file`` rows, ``ceil(rows / k)`` each for ``k = ceil(rows / rows_per_file)``
    files (so exactly ``k``; the last short of the others by fewer rows than there are files):
    a task's share of 2.3 files' rows is three files of 0.77, not two full ones and a
    remainder of 0.3 that a later round would have to merge. At least 1."""
    files = file_count(rows, rows_per_file)
    return np.maximum(-(-rows // np.maximum(files, 1)), 1) if isinstance(rows, np.ndarray) \
        else max(-(-rows // max(files, 1)), 1)


def compacted(bucket: int, position: int) -> int:
    return bucket << 16 | position


def source(j: int) -> int:
    return SOURCE_BASE + j


def is_source(ordinal: np.ndarray | int) -> np.ndarray | bool:
    return np.asarray(ordinal) >= SOURCE_BASE


def bucket_of_compacted(ordinal: int) -> int:
    return ordinal >> 16


def member(values: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Mask of the int32 ``values`` that are in ``of``: compared with each of a few, else a
    lookup in a table of flags over ``of``'s range when that is small (lost files of a few
    buckets), else by hashing (np.isin would sort both)."""
    if not len(of):
        return np.zeros(len(values), dtype=bool)
    if len(of) <= 8:  # a few (an incremental round's lost files): compares, 3-15x faster
        found = values == of[0]
        for value in of[1:]:
            found |= values == value
        return found
    low, span = int(of.min()), int(of.max()) - int(of.min())
    if low < 0 or span >= 1 << 22 or low + span + 1 > np.iinfo(values.dtype).max:
        return pc.is_in(pa.array(values), value_set=pa.array(of)).to_numpy(zero_copy_only=False)
    flags = np.zeros(span + 3, dtype=bool)  # a False slot below and above the range
    flags[np.asarray(of, dtype=np.int64) - low + 1] = True
    return flags[np.clip(values, low - 1, low + span + 1) - (low - 1)]


def stable_order(values: np.ndarray, bound: int) -> np.ndarray:
    """The stable sort of the integers ``values``, each in [0, ``bound``): as 16-bit numbers
    where they fit, which numpy sorts stably by radix (500K values: 24 -> 6 ms)."""
    if bound <= np.iinfo(np.int16).max:
        values = values.astype(np.int16)
    return np.argsort(values, kind="stable")


SCAN_CHUNK = 1 << 18  # values ``find_in`` looks at at a time: its temporaries stay in cache
FIND_SPAN = 1 << 19  # ``find_in`` numbers ``of`` by a table up to this far apart (4 MB)


def find_in(values: np.ndarray, of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The positions of the signed integer ``values`` that are in ``of`` (sorted, distinct,
    of the values' type), in order, and the index in ``of`` of each. One pass, a chunk at a
    time. Where ``of`` spans at most FIND_SPAN numbers (the files of a few buckets) a value is
    in its range by one unsigned compare and looked up in a table only then; else ``member``
    and a search. (An incremental round's 10M index entries, 1.4M of them in 2 files: a mask
    by ``member``, its nonzeros, their values and a search 21.5 ms; this 14.9 ms.)"""
    empty = np.zeros(0, dtype=np.int64)
    if not len(of) or not len(values):
        return empty, empty
    unsigned = np.dtype(f"u{values.dtype.itemsize}")
    low, span = int(of[0]), int(of[-1]) - int(of[0])
    table = None
    if span < FIND_SPAN:
        table = np.full(span + 1, -1, dtype=np.int64)
        table[np.asarray(of, dtype=np.int64) - low] = np.arange(len(of))
    base = np.array(low, dtype=values.dtype).view(unsigned)
    positions, which = [empty], [empty]
    for start in range(0, len(values), SCAN_CHUNK):
        chunk = values[start:start + SCAN_CHUNK]
        if table is not None:
            # (modular: a value is within [low, low + span] exactly when this is at most span)
            offset = chunk.view(unsigned) - base
            at = np.flatnonzero(offset <= span)
            w = table[offset[at]]
            if len(of) < span + 1 and (w < 0).any():  # in the range, not in ``of``
                hit = w >= 0
                at, w = at[hit], w[hit]
        else:
            at = np.flatnonzero(member(chunk, of))
            w = np.searchsorted(of, chunk[at])
        positions.append(at + start)
        which.append(w)
    return np.concatenate(positions), np.concatenate(which)


RENUMBER_SPAN = 1 << 22  # ordinals renumbered through a table up to this far apart (16 MB)
_RENUMBER_CHUNK = 1 << 18  # values at a time: a chunk's temporaries stay in cache


def renumber(values: np.ndarray, old: np.ndarray, new: np.ndarray) -> None:
    """In the int32 ``values``, in place, each of the sorted, distinct ``old`` becomes the
    ``new`` at its place; other values stay. Where ``old`` spans at most RENUMBER_SPAN (the
    kept files of a few buckets) a table lookup per value, a chunk at a time (a search per
    value found took 0.13-0.17 s for 11M entries, 10M of them renumbered, this 0.017 s),
    else a search."""
    if not len(old):
        return
    low, span = int(old[0]), int(old[-1]) - int(old[0]) + 1
    if not 0 <= low < 1 << 30 or span > RENUMBER_SPAN:
        found = np.flatnonzero(member(values, old))
        values[found] = new[np.searchsorted(old, values[found])]
        return
    # what each value in the span gains (0 but at ``old``), and 0 in a last slot for values
    # outside it: an add per value, no mask (a masked copy cost 5 ns a value)
    shift = np.zeros(span + 1, dtype=np.int32)
    shift[np.asarray(old, dtype=np.int64) - low] = np.asarray(new, dtype=np.int64) - old
    base, beyond = np.int32(low), np.uint32(span)
    for i in range(0, len(values), _RENUMBER_CHUNK):
        part = values[i:i + _RENUMBER_CHUNK]
        # value - low as unsigned: below ``low`` it wraps beyond the span too (an int32 from
        # -2**31 less a low under 2**30 wraps to at least 2**31)
        part += shift.take(np.minimum((part - base).view(np.uint32), beyond))
