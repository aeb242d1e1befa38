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

import numpy as np

SOURCE_BASE = 1 << 30
MAX_BUCKETS = 1 << 14
MAX_FILES_PER_BUCKET = 1 << 16
MAX_FILE_ROWS = (1 << 31) - 1  # row locators are int32


def compacted(bucket: int, position: int) -> int:
    return bucket << 16 | position


def source(j: int) -> int:
    return SOURCE_BASE + j


def is_source(ordinal: np.ndarray | int) -> np.ndarray | bool:
    return np.asarray(ordinal) >= SOURCE_BASE


def bucket_of_compacted(ordinal: int) -> int:
    return ordinal >> 16
