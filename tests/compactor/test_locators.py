"""Ordering row locators: ``sort_by_locator`` against numpy's lexsort."""

from __future__ import annotations

import numpy as np
import pytest

from compactor.pipeline.locators import SOURCE_BASE, compacted, sort_by_locator


def _unique_locators(rng: np.random.Generator, n: int, files: np.ndarray, rows: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    file = rng.choice(files, n).astype(np.int32)
    row = rng.integers(0, rows, n)
    pairs = np.unique(np.stack([file.astype(np.int64), row]), axis=1)
    order = rng.permutation(pairs.shape[1])
    return pairs[0][order].astype(np.int32), pairs[1][order]


@pytest.mark.parametrize(("n", "rows"), [
    (0, 10), (1, 10), (5_000, 8_000),  # dense: the map
    (3_000, 10**9),  # sparse in a huge row range: the sort fallback
])
def test_orders_by_file_then_row(n: int, rows: int) -> None:
    rng = np.random.default_rng(n + rows)
    files = np.array([compacted(3, 0), compacted(3, 7), SOURCE_BASE, SOURCE_BASE + 40])
    file, row = _unique_locators(rng, n, files, rows)
    assert sort_by_locator(file, row).tolist() == np.lexsort((row, file)).tolist()


def test_a_repeated_locator_is_refused() -> None:
    with pytest.raises(ValueError, match="repeat"):
        sort_by_locator(np.array([5, 5, 5], dtype=np.int32), np.array([1, 2, 1]))
