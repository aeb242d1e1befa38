"""Index chains: what a delta file holds, and folding a chain back into an index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from compactor.fs import Storage
from compactor.merge import merge, record_schema
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
        "row": pa.array([r[0] * 10 + r[1] for r in rows], pa.int32()),
        "op": pa.array(np.zeros(n, np.int8)),
    }, schema=record_schema())


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
    assert _without_pos(folded).equals(_without_pos(new))
    assert set(folded.column("pos").to_pylist()) == {index_store.PERSISTED_POS}


def _without_pos(table: pa.Table) -> pa.Table:
    return table.drop_columns(["pos"])


def test_files_hold_no_stream_positions_and_int32_rows_uncompressed(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    index_store.write(storage, "base.arrow", _index([(1, 1, 5, 0), (2, 2, 6, 1)]))
    reader = ipc.open_file(str(tmp_path / "base.arrow"))
    assert reader.schema.names == ["hi", "lo", "file", "row", "op"]
    assert reader.schema.field("row").type == pa.int32()
    # uncompressed: the file is the columns' bytes plus framing
    assert (tmp_path / "base.arrow").stat().st_size < 2 * 8 * 8 + 2048


def test_a_reloaded_index_merges_like_the_one_in_memory(tmp_path):
    """Persisted entries lose ``pos``; later records still win ties on ``order`` exactly as
    they do against the index kept in memory."""
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

    first = merge(record_schema(pa.int64()).empty_table(),
                  records([1, 2, 3, 4], [10, 10, 10, 10], 3, 7)).index
    index_store.write(storage, "base.arrow", first)
    reloaded = index_store.read(storage, ["base.arrow"], schema)
    # key 1: same order (a tie: the later record wins), 2: older (loses), 3: a delete with the
    # same order (wins), 4: newer
    later = records([1, 2, 3, 4], [10, 9, 10, 11], 4, 8)
    later = later.set_column(6, "op", pa.array([0, 0, 1, 0], pa.int8()))
    kept, again = merge(first, later), merge(reloaded, later)
    assert _without_pos(kept.index).equals(_without_pos(again.index))
    assert (kept.updated, kept.deleted, kept.duplicates_dropped) == \
        (again.updated, again.deleted, again.duplicates_dropped) == (2, 1, 1)
    assert kept.index.column("file").to_pylist() == [8, 7, 8, 8]


def test_chains_written_as_parquet_by_earlier_versions_are_still_read(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0)])
    new = _index([(1, 1, 1, 0), (2, 2, 7, 1), (4, 4, 7, 1)])
    pq.write_table(old, tmp_path / "base.parquet")
    changed = np.array([False, True, True])
    index_store.write(storage, "delta.arrow", new.filter(pa.array(changed)))
    folded = index_store.read(storage, ["base.parquet", "delta.arrow"], new.schema)
    assert _without_pos(folded).equals(_without_pos(new))
    # the entry only the Parquet base holds keeps the position it was written with
    assert folded.column("pos").to_pylist() == [1, index_store.PERSISTED_POS,
                                                 index_store.PERSISTED_POS]
    assert index_store.new_path("p", 3).startswith("p/index/b00003/base-")
    assert index_store.new_path("p", 3).endswith(".arrow")


def test_lz4_arrow_chains_with_positions_from_earlier_versions_are_still_read(tmp_path):
    storage = Storage(f"file://{tmp_path}")
    old = _index([(1, 1, 1, 0), (2, 2, 1, 0)])
    with pa.OSFile(str(tmp_path / "base.arrow"), "wb") as out, ipc.new_file(
            out, old.schema, options=ipc.IpcWriteOptions(compression="lz4")) as writer:
        writer.write_table(old)
    assert index_store.read(storage, ["base.arrow"], old.schema).equals(old)
