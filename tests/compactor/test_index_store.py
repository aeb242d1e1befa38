"""Index chains: what a delta file holds, and folding a chain back into an index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compactor.fs import Storage
from compactor.merge import record_schema
from compactor.pipeline import index_store


def _index(rows: list[tuple[int, int, int, int]]) -> pa.Table:
    """Entries (hi, lo, pos, file); sorted by key like a real index."""
    rows = sorted(rows)
    n = len(rows)
    return pa.table({
        "hi": pa.array([r[0] for r in rows], pa.uint64()),
        "lo": pa.array([r[1] for r in rows], pa.uint64()),
        "pos": pa.array([r[2] for r in rows], pa.int64()),
        "file": pa.array([r[3] for r in rows], pa.int32()),
        "row": pa.array([r[0] * 10 + r[1] for r in rows], pa.int64()),
        "op": pa.array(np.zeros(n, np.int8)),
    }, schema=record_schema())


def test_locate_finds_keys_that_share_a_hi_word():
    index = _index([(5, 1, 1, 0), (5, 2, 1, 0), (5, 3, 1, 0), (9, 0, 1, 0)])
    hi = np.array([5, 5, 5, 9, 9, 7], dtype=np.uint64)
    lo = np.array([3, 1, 4, 0, 1, 0], dtype=np.uint64)
    assert index_store.locate(index, hi, lo).tolist() == [2, 0, -1, 3, -1, -1]


def test_a_delta_chain_folds_back_to_the_new_index(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0), (3, 3, 1, 0), (3, 4, 1, 0)])
    new = _index([(1, 1, 1, 0), (2, 2, 7, 1), (3, 4, 1, 0), (8, 8, 7, 1)])  # 2 moved, 3/3 gone
    changed, gone = index_store.changes(old, new)
    assert changed.tolist() == [False, True, False, True]
    assert [(int(k["hi"]), int(k["lo"])) for k in gone] == [(3, 3)]
    index_store.write(storage, "base.arrow", old)
    delta = pa.concat_tables([new.filter(pa.array(changed)),
                              index_store.absent(gone, new.schema)])
    index_store.write(storage, "delta.arrow", delta)
    folded = index_store.read(storage, ["base.arrow", "delta.arrow"], new.schema)
    assert folded.equals(new)


def test_chains_written_as_parquet_by_earlier_versions_are_still_read(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0)])
    new = _index([(1, 1, 1, 0), (2, 2, 7, 1), (4, 4, 7, 1)])
    pq.write_table(old, tmp_path / "base.parquet")
    changed, _ = index_store.changes(old, new)
    index_store.write(storage, "delta.arrow", new.filter(pa.array(changed)))
    folded = index_store.read(storage, ["base.parquet", "delta.arrow"], new.schema)
    assert folded.equals(new)
    assert index_store.new_path("p", 3).startswith("p/index/b00003/base-")
    assert index_store.new_path("p", 3).endswith(".arrow")
