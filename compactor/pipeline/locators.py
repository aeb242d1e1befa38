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


def compacted(bucket: int, position: int) -> int:
    return bucket << 16 | position


def source(j: int) -> int:
    return SOURCE_BASE + j


def is_source(ordinal: np.ndarray | int) -> np.ndarray | bool:
    return np.asarray(ordinal) >= SOURCE_BASE


def bucket_of_compacted(ordinal: int) -> int:
    return ordinal >> 16



def sort_by_locator(file: np.ndarray, row: np.ndarray) -> np.ndarray:
    """The permutation that orders unique locators ``(file, row)`` by file, then row.

    No comparison sort: each file's row range gets a slice of one map, in file order; every
    locator is scattered to its place and the map read back in order, O(n + rows spanned). When
    the locators are sparse in their files (the map would be much larger than n) it sorts.
    """
    n = len(file)
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    files = pa.array(file)
    ordinals = pa.array(np.sort(pc.unique(files).to_numpy()))
    dense = pc.index_in(files, value_set=ordinals).to_numpy()
    ranges = pa.table({"f": dense, "r": row}).group_by("f").aggregate(
        [("r", "min"), ("r", "max")])
    first = np.zeros(len(ordinals), dtype=np.int64)
    span = np.zeros(len(ordinals), dtype=np.int64)
    at = ranges.column("f").to_numpy()
    first[at] = ranges.column("r_min").to_numpy()
    span[at] = ranges.column("r_max").to_numpy() - first[at] + 1
    if int(span.sum()) > 4 * n + (1 << 16):
        return np.lexsort((row, file))
    offset = np.concatenate([[0], np.cumsum(span)[:-1]]) - first
    kind: type[np.signedinteger[Any]] = np.int32 if n < np.iinfo(np.int32).max else np.int64
    slot: np.ndarray = np.full(int(span.sum()), -1, dtype=kind)
    slot[offset[dense] + row] = np.arange(n, dtype=kind)
    out = slot[slot >= 0].astype(np.int64)
    if len(out) != n:
        raise ValueError("locators repeat a (file, row)")
    return out
