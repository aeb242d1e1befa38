"""Index chains: what a delta file holds, and folding a chain back into an index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from compactor.fs import Storage
from compactor.merge import empty_index, index_schema, merge, record_schema
from compactor.pipeline import index_store


def _index(rows: list[tuple[int, int, int, int]], with_pos: bool = False) -> pa.Table:
    """Entries (hi, lo, pos, file); sorted by key like a real index. An index has no ``pos``;
    ``with_pos``: as earlier versions kept it."""
    rows = sorted(rows)
    n = len(rows)
    table = pa.table({
        "hi": pa.array([r[0] for r in rows], pa.uint64()),
        "lo": pa.array([r[1] for r in rows], pa.uint64()),
        "pos": pa.array([r[2] for r in rows], pa.int64()),
        "file": pa.array([r[3] for r in rows], pa.int32()),
        "row": pa.array([r[0] * 10 + r[1] for r in rows], pa.int32()),
        "op": pa.array(np.zeros(n, np.int8)),
    }, schema=record_schema())
    return table if with_pos else table.drop_columns(["pos"])


def test_a_delta_chain_folds_back_to_the_new_index(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0), (3, 3, 1, 0), (3, 4, 1, 0)])
    new = _index([(1, 1, 1, 0), (2, 2, 7, 1), (3, 4, 1, 0), (8, 8, 7, 1)])  # 2 moved, 3/3 gone
    changed = np.array([False, True, False, True])
    gone = np.array([(3, 3)], dtype=index_store.KEY)
    index_store.write(storage, "base.arrow", old)
    delta = pa.concat_tables([new.filter(pa.array(changed)),
                              index_store.absent(gone, new.schema)])
    index_store.write(storage, "delta.arrow", delta)
    folded = index_store.read(storage, ["base.arrow", "delta.arrow"], new.schema)
    assert folded.equals(new)


def test_files_hold_no_stream_positions_and_int32_rows_uncompressed(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    # an index of an earlier version, kept in memory with positions: they are not written
    index_store.write(storage, "base.arrow", _index([(1, 1, 5, 0), (2, 2, 6, 1)], True))
    reader = ipc.open_file(str(tmp_path / "base.arrow"))
    assert reader.schema.names == ["hi", "lo", "file", "row", "op"]
    assert reader.schema.field("row").type == pa.int32()
    # uncompressed: the file is the columns' bytes plus framing
    assert (tmp_path / "base.arrow").stat().st_size < 2 * 8 * 8 + 2048


def test_a_reloaded_index_merges_like_the_one_in_memory(tmp_path):
    """Later records win ties on ``order`` against a reloaded index exactly as against the one
    in memory, and as against an index of an earlier version that kept stream positions."""
    storage = Storage(f"file://{tmp_path}")
    schema = record_schema(pa.int64())

    def records(keys, order, pos, file, op=0):
        n = len(keys)
        return pa.table({"hi": pa.array(keys, pa.uint64()), "lo": pa.array(keys, pa.uint64()),
                         "order": pa.array(order, pa.int64()),
                         "pos": pa.array([pos] * n, pa.int64()),
                         "file": pa.array([file] * n, pa.int32()),
                         "row": pa.array(range(n), pa.int32()),
                         "op": pa.array([op] * n, pa.int8())}, schema=schema)

    first = merge(empty_index(pa.int64()),
                  records([1, 2, 3, 4], [10, 10, 10, 10], 3, 7)).index
    assert first.schema == index_schema(pa.int64())
    index_store.write(storage, "base.arrow", first)
    reloaded = index_store.read(storage, ["base.arrow"], index_schema(pa.int64()))
    legacy = first.add_column(3, "pos", pa.array([3] * 4, pa.int64()))
    # key 1: same order (a tie: the later record wins), 2: older (loses), 3: a delete with the
    # same order (wins), 4: newer
    later = records([1, 2, 3, 4], [10, 9, 10, 11], 4, 8)
    later = later.set_column(6, "op", pa.array([0, 0, 1, 0], pa.int8()))
    kept, again, old = merge(first, later), merge(reloaded, later), merge(legacy, later)
    assert kept.index.equals(again.index) and kept.index.equals(old.index)
    assert (kept.updated, kept.deleted, kept.duplicates_dropped) == \
        (again.updated, again.deleted, again.duplicates_dropped) == \
        (old.updated, old.deleted, old.duplicates_dropped) == (2, 1, 1)
    assert kept.index.column("file").to_pylist() == [8, 7, 8, 8]


def test_chains_written_as_parquet_by_earlier_versions_are_still_read(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0)], True)
    new = _index([(1, 1, 1, 0), (2, 2, 7, 1), (4, 4, 7, 1)])
    pq.write_table(old, tmp_path / "base.parquet")
    changed = np.array([False, True, True])
    index_store.write(storage, "delta.arrow", new.filter(pa.array(changed)))
    folded = index_store.read(storage, ["base.parquet", "delta.arrow"], new.schema)
    assert folded.equals(new)  # the positions the Parquet base holds are dropped
    assert index_store.new_path("p", 3).startswith("p/index/b00003/base-")
    assert index_store.new_path("p", 3).endswith(".arrow")


def test_lz4_arrow_chains_with_positions_from_earlier_versions_are_still_read(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0)], True)
    with pa.OSFile(str(tmp_path / "base.arrow"), "wb") as out, ipc.new_file(
            out, old.schema, options=ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(old)
    assert index_store.read(storage, ["base.arrow"], index_schema()).equals(
        old.drop_columns(["pos"]))
