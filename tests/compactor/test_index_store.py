"""Index chains: what a delta file holds, and folding a chain back into an index."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq
import pytest

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


def _entries(keys: list[int], file: list[int], row: list[int], op: list[int] | None = None
             ) -> pa.Table:
    n = len(keys)
    return pa.table({"hi": pa.array(keys, pa.uint64()), "lo": pa.array(keys, pa.uint64()),
                     "file": pa.array(file, pa.int32()), "row": pa.array(row, pa.int32()),
                     "op": pa.array(op or [0] * n, pa.int8())}, schema=index_schema())


def _moves_round(tmp_path):
    """Bucket 3 had files 0, 1, 2 (3 << 16 | i), of 4, 6 and 2 rows, an entry per row (key
    10f + r for row r of file f). A round rewrote file 1, keeping rows 0, 2, 3 and 5 (its
    keys 11, 13 and 14 changed), into the files it wrote from place 3 of its task's rows on,
    2 rows per file, from position 2 on; file 2 moved up to position 1."""
    storage = Storage(f"file://{tmp_path}")
    b = 3 << 16
    sizes = [4, 6, 2]
    keys = [10 * f + r for f, n in enumerate(sizes) for r in range(n)]
    base = _entries(keys, [b | f for f, n in enumerate(sizes) for _ in range(n)],
                    [r for n in sizes for r in range(n)])
    index_store.write(storage, "p/base-1.arrow", base)
    survivors = np.array([True, False, True, True, False, True])
    moves = [index_store.Move(b | 2, b | 1),
             index_store.Move(b | 1, b | 2, 3, survivors, 2)]
    index_store.write_moves(storage, "p/moves-1.arrow", moves)
    return storage, b, keys


def test_moves_repoint_the_entries_read_before_them(tmp_path):
    """Each surviving row of the rewritten file lands at place 3 + its rank among the
    survivors (files of 2 rows from position 2 on); the delta then has the changed keys."""
    storage, b, _ = _moves_round(tmp_path)
    # keys 11 and 14 updated (written by the round at places 0 and 1), 13 deleted, 99 new
    delta = pa.concat_tables([
        _entries([11, 14, 99], [b | 2, b | 2, b | 4], [0, 1, 0]),
        index_store.absent(np.array([(13, 13)], dtype=index_store.KEY), index_schema())])
    index_store.write(storage, "p/delta-1.arrow", delta)
    folded = index_store.read(storage, ["p/base-1.arrow", "p/moves-1.arrow", "p/delta-1.arrow"],
                              index_schema())
    expected = {k: (b | 0, k) for k in (0, 1, 2, 3)}  # file 0: kept where it was
    # survivors of file 1 (rows 0, 2, 3, 5) at places 3, 4, 5, 6 -> files 2 + place // 2
    for rank, r in enumerate([0, 2, 3, 5]):
        place = 3 + rank
        expected[10 + r] = (b | (2 + place // 2), place % 2)
    expected.update({20: (b | 1, 0), 21: (b | 1, 1)})  # file 2, renumbered
    expected.update({11: (b | 2, 0), 14: (b | 2, 1), 99: (b | 4, 0)})
    del expected[13]
    got = dict(zip(folded.column("hi").to_pylist(),
                   zip(folded.column("file").to_pylist(), folded.column("row").to_pylist(),
                       strict=True), strict=True))
    assert got == expected
    assert folded.column("hi").to_pylist() == sorted(expected)
    assert index_store.rounds(["p/base-1.arrow", "p/moves-1.arrow", "p/delta-1.arrow"]) == 2


def test_a_live_key_whose_row_did_not_survive_a_move_makes_the_chain_unusable(tmp_path):
    """Row 1 of file 1 (key 11) did not survive, and no delta entry replaces key 11's: the
    chain cannot say where its row is, so the round must rebuild the index from data."""
    storage, b, _ = _moves_round(tmp_path)
    delta = pa.concat_tables([  # key 14's newer entry only
        _entries([14], [b | 2], [1]),
        index_store.absent(np.array([(13, 13)], dtype=index_store.KEY), index_schema())])
    index_store.write(storage, "p/delta-1.arrow", delta)
    with pytest.raises(index_store.IndexUnavailable, match="1 live keys point at no row"):
        index_store.read(storage, ["p/base-1.arrow", "p/moves-1.arrow", "p/delta-1.arrow"],
                         index_schema())


def test_a_moves_file_that_does_not_add_up_is_refused(tmp_path):
    storage, b, _ = _moves_round(tmp_path)
    bad = [index_store.Move(b | 1, b | 2, 3, np.ones(6, dtype=bool), 2)]
    index_store.write_moves(storage, "p/moves-2.arrow", bad)
    table = ipc.open_file(str(tmp_path / "p/moves-2.arrow")).read_all()
    table = table.set_column(3, "rows", pa.array([60], pa.int64()))  # 1 byte for 60 rows

    def rewrite(table: pa.Table) -> None:
        with pa.OSFile(str(tmp_path / "p/moves-2.arrow"), "wb") as out, \
                ipc.new_file(out, table.schema) as writer:
            writer.write_table(table)

    rewrite(table)  # the sums written with the file no longer agree
    with pytest.raises(index_store.IndexUnavailable,
                       match=r"column\(s\) \['rows'\] do not hold what was written"):
        index_store.read(storage, ["p/base-1.arrow", "p/moves-2.arrow"], index_schema())
    rewrite(table.replace_schema_metadata(None))  # no sums (as before them): its own check
    with pytest.raises(index_store.IndexUnavailable, match="1 bytes of survivors for 60 rows"):
        index_store.read(storage, ["p/base-1.arrow", "p/moves-2.arrow"], index_schema())
    rows_per_file = table.schema.get_field_index("rows_per_file")
    rewrite(table.replace_schema_metadata(None).set_column(  # files of no rows
        rows_per_file, "rows_per_file", pa.array([0], pa.int64())))
    with pytest.raises(index_store.IndexUnavailable, match="0 rows per file"):
        index_store.read(storage, ["p/base-1.arrow", "p/moves-2.arrow"], index_schema())


def test_a_reader_taking_a_moves_file_for_an_index_refuses_it(tmp_path):
    """Versions before moves files read every chain file as an index: a moves file does not
    match one, so they rebuild the index instead of using entries that point at old rows."""
    storage, _, _ = _moves_round(tmp_path)
    with pytest.raises(index_store.IndexUnavailable):
        index_store._read_one(storage, "p/moves-1.arrow", index_schema())


@pytest.mark.parametrize("seed", range(8))
def test_a_chain_spliced_into_its_sorted_base_folds_as_a_sort_of_all_of_it(seed: int) -> None:
    """Deltas spliced into the base where their keys fall (one pass over the base) give what
    sorting every entry of the chain gives: keys new, replaced, gone (OP_ABSENT) and gone
    then back, keys sharing ``hi`` (told apart by ``lo``), and a base out of order (an older
    writer's: sorted instead)."""
    rng = np.random.default_rng(seed)

    def entries(n: int, sort: bool) -> pa.Table:
        hi = rng.integers(0, 40, n).astype(np.uint64)  # few values: many keys share hi
        lo = rng.integers(0, 6, n).astype(np.uint64)
        k = np.unique(np.stack([hi, lo], axis=1), axis=0)  # sorted, distinct
        if not sort:
            k = k[rng.permutation(len(k))]
        m = len(k)
        op = np.where(rng.random(m) < 0.25, index_store.OP_ABSENT, 0).astype(np.int8)
        return pa.table({"hi": pa.array(k[:, 0], pa.uint64()), "lo": pa.array(k[:, 1], pa.uint64()),
                         "file": pa.array(rng.integers(0, 9, m), pa.int32()),
                         "row": pa.array(rng.integers(0, 99, m), pa.int32()),
                         "op": pa.array(op)}, schema=index_schema())

    base = entries(150, sort=seed != 7)
    base = base.filter(pc.not_equal(base.column("op"), index_store.OP_ABSENT))
    parts = [base] + [entries(int(rng.integers(0, 60)), sort=False) for _ in range(3)]
    assert index_store._fold(parts).equals(index_store._newest(parts))
