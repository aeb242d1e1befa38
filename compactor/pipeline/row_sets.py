"""The rows of a file a round rewrites, as they travel from the dedupe actors to the driver
and the materialize tasks.

A full round rewrites most rows of every source: as int32 numbers that is 4 bytes per row,
which the driver holds for the whole table while the tasks run (80 MB per 20M rows, 4 GB per
billion). Dense sets are sent as a bitmap over the range they span instead (1 bit per row of
it); sparse ones (an incremental round's few rows of a delta) stay numbers.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, eq=False)
class RowSet:
    """Sorted distinct row numbers of one file: ``values`` (int32), or a bitmap ``bits``
    (little-endian bit order) over rows ``first .. first + span - 1``."""

    count: int
    first: int = 0
    span: int = 0
    bits: np.ndarray | None = None
    values: np.ndarray | None = None

    @classmethod
    def of(cls, rows: np.ndarray) -> RowSet:
        """``rows``: sorted, distinct, non-negative row numbers."""
        n = len(rows)
        if n == 0:
            return cls(0, values=np.zeros(0, dtype=np.int32))
        first, span = int(rows[0]), int(rows[-1]) - int(rows[0]) + 1
        if span > 32 * n:  # a bit per row of the range costs more than 4 bytes per row
            return cls(n, values=np.asarray(rows, dtype=np.int32))
        mask = np.zeros(span, dtype=bool)
        mask[np.asarray(rows, dtype=np.int64) - first] = True
        return cls(n, first, span, bits=np.packbits(mask, bitorder="little"))

    @classmethod
    def of_mask(cls, mask: np.ndarray) -> RowSet:
        """The rows where ``mask`` (bool, one per row of the file) is True: as ``of`` their
        numbers, without listing them where the set is dense."""
        n = int(np.count_nonzero(mask))
        if n == 0:
            return cls(0, values=np.zeros(0, dtype=np.int32))
        first = int(np.argmax(mask))
        span = len(mask) - int(np.argmax(mask[::-1])) - first
        if span > 32 * n:
            return cls(n, values=np.flatnonzero(mask).astype(np.int32))
        return cls(n, first, span, bits=np.packbits(mask[first:first + span], bitorder="little"))

    def __len__(self) -> int:
        return self.count

    def array(self) -> np.ndarray:
        """The row numbers, sorted (int64)."""
        if self.bits is None:
            assert self.values is not None
            return self.values.astype(np.int64)
        mask = np.unpackbits(self.bits, count=self.span, bitorder="little")
        return np.flatnonzero(mask) + self.first

    @property
    def nbytes(self) -> int:
        return int((self.bits if self.bits is not None else self.values).nbytes)  # type: ignore[union-attr]
