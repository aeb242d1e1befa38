"""The hash-bucket step's records: which group each key goes to, and what each record holds."""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from compactor import files
from compactor.fs import Storage
from compactor.hashing import bucket_of, bucket_start, key_digest
from compactor.manifest import CdcOps, DeltaKind
from compactor.merge import OP_DELETE, OP_UPSERT
from compactor.pipeline.hash_bucket import (
    PER_ROW,
    GroupRecords,
    HashInput,
    combined,
    group_bounds,
    hash_file,
)


def _group(hi: np.ndarray, bucket_count: int, groups: int) -> np.ndarray:
    """The group of each digest, as the plan assigns buckets to actors (b * G // B)."""
    return bucket_of(hi, bucket_count).astype(np.int64) * groups // bucket_count


@pytest.mark.parametrize("bucket_count,groups", [(1, 1), (2, 2), (7, 3), (7, 7), (300, 16),
                                                 (2**31 - 1, 5), (64, 1)])
def test_group_bounds_cut_sorted_digests_where_the_groups_change(bucket_count, groups) -> None:
    rng = np.random.default_rng(bucket_count * 31 + groups)
    # random digests, and the digests on either side of every bucket start of a small table
    edges = [bucket_start(b, bucket_count) for b in range(1, min(bucket_count, 400))]
    hi = np.sort(np.concatenate([
        rng.integers(0, 2**64, 20_000, dtype=np.uint64, endpoint=False),
        np.array(edges + [e - 1 for e in edges] + [0, 2**64 - 1], dtype=np.uint64)]))
    bounds = group_bounds(hi, bucket_count, groups)
    expected = np.searchsorted(_group(hi, bucket_count, groups), np.arange(groups + 1))
    assert bounds.tolist() == expected.tolist()


def test_each_group_gets_exactly_its_keys_records_sorted_and_compact(tmp_path) -> None:
    """A CDC file with repeated keys, cut into 3 groups of 7 buckets: each group's records are
    its keys' rows (digest, ordering value, row, op as in the file), sorted by digest; each
    group's records, pickled, carry only their own rows' bytes."""
    rng = np.random.default_rng(5)
    n = 30_000
    ids = rng.integers(0, 5_000, n)
    source = pa.table({"id": ids, "lsn": rng.permutation(n).astype(np.int64),
                       "Op": pa.array(rng.choice(["I", "U", "D"], n)), "v": np.arange(n)})
    path = tmp_path / "delta.parquet"
    pq.write_table(source, path, row_group_size=7_000)
    storage = Storage(f"file://{tmp_path}")
    file, _ = files.describe(storage, f"file://{path}")
    item = HashInput(file, 4, 9, DeltaKind.CDC, CdcOps("Op"))
    out = hash_file(storage, item, ("id",), "lsn", pa.int64(), 7, 3)

    hi, lo = key_digest(source.select(["id"]), ("id",))
    group = _group(hi, 7, 3)
    op = np.where(source.column("Op").to_numpy(zero_copy_only=False) == "D", OP_DELETE,
                  OP_UPSERT)
    sizes = {}
    for g in range(3):
        records = out.records[g]
        rows = records.column("row").to_numpy()
        assert sorted(rows.tolist()) == np.flatnonzero(group == g).tolist()
        assert records.column("hi").to_numpy().tolist() == hi[rows].tolist()
        assert records.column("lo").to_numpy().tolist() == lo[rows].tolist()
        assert records.column("order").to_pylist() == source.column("lsn").to_numpy()[
            rows].tolist()
        assert records.column("op").to_numpy().tolist() == op[rows].tolist()
        key = list(zip(records.column("hi").to_pylist(), records.column("lo").to_pylist(),
                       strict=True))
        assert key == sorted(key)
        buffers: list[pickle.PickleBuffer] = []
        pickle.dumps(records, protocol=5, buffer_callback=buffers.append)
        sizes[g] = sum(b.raw().nbytes for b in buffers)
        # 8 + 8 + 8 + 4 + 1 bytes a record (and a little padding), not the whole file's
        assert sizes[g] <= 29 * records.num_rows + 1024, (g, sizes[g], records.num_rows)
    assert out.rows == n and (out.position, out.ordinal) == (9, 4)


@pytest.mark.parametrize("kind", ["quicksort", "stable"])
@pytest.mark.parametrize("runs", [False, True])
def test_sort_by_key_orders_by_both_words_whatever_the_sort(monkeypatch, kind, runs) -> None:
    """The permutation sorts by (hi, lo) and marks where each key starts, on either sort
    (``runs``: sorted runs, as a dedupe actor gets; which sort is picked depends on the CPU),
    including digests whose top bits tie (the row numbers packed under them)."""
    from compactor import merge

    monkeypatch.setattr(merge, "_RUNS_SORT", kind)
    rng = np.random.default_rng(11)
    n = 40_000
    hi = rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False)
    hi[: n // 4] = hi[n // 4: n // 2] & ~np.uint64(0xFFFF)  # many top-bit ties
    hi[n // 2: n // 2 + 500] = hi[:500]  # some equal hi words
    lo = rng.integers(0, 8, n, dtype=np.uint64)  # equal keys, and equal hi with other lo
    if runs:
        cuts = np.sort(rng.choice(np.arange(1, n), 29, replace=False))
        parts = [np.lexsort((lo[a:b], hi[a:b])) + a for a, b in
                 zip([0, *cuts], [*cuts, n], strict=True)]
        order = np.concatenate(parts)
        hi, lo = hi[order], lo[order]
    perm, first = merge.sort_by_key(hi, lo, runs=runs)
    assert sorted(perm.tolist()) == list(range(n))
    keys = list(zip(hi[perm].tolist(), lo[perm].tolist(), strict=True))
    assert keys == sorted(keys)
    assert first.tolist() == [i == 0 or keys[i] != keys[i - 1] for i in range(n)]


def test_a_rebases_carried_tombstones_go_to_their_groups_each_in_its_own_buffers(
        tmp_path) -> None:
    """The deletes an index remembers, as delete records per group of the new bucket count:
    each group's are its keys (sorted), and carry only their own bytes into the object store."""
    from compactor.merge import index_schema
    from compactor.pipeline import index_store
    from compactor.pipeline.tombstones import carried_tombstones

    rng = np.random.default_rng(8)
    n = 20_000
    hi = np.sort(rng.integers(0, 2**64, n, dtype=np.uint64, endpoint=False))
    index = pa.table({"hi": hi, "lo": rng.integers(0, 2**64, n, dtype=np.uint64),
                      "file": pa.array(np.full(n, -1, np.int32)),
                      "row": pa.array(np.full(n, -1, np.int32)),
                      "op": pa.array(np.where(np.arange(n) % 3 == 0, OP_DELETE, OP_UPSERT)
                                     .astype(np.int8)),
                      "order": pa.array(np.arange(n, dtype=np.int64))},
                     schema=index_schema(pa.int64()))
    storage = Storage(f"file://{tmp_path}")
    index_store.write(storage, "base.arrow", index)
    out = carried_tombstones(storage, ["base.arrow"], pa.int64(), 7, 3, 5, 99, False)
    dead = np.flatnonzero(np.arange(n) % 3 == 0)
    group = _group(hi[dead], 7, 3)
    for g in range(3):
        records = out.records[g]
        assert records.column("hi").to_numpy().tolist() == hi[dead[group == g]].tolist()
        assert records.column("order").to_pylist() == dead[group == g].tolist()
        assert set(records.column("op").to_pylist()) == {OP_DELETE}
        buffers: list[pickle.PickleBuffer] = []
        pickle.dumps(records, protocol=5, buffer_callback=buffers.append)
        assert sum(b.raw().nbytes for b in buffers) <= 29 * records.num_rows + 1024


def test_small_files_hashed_together_are_one_run_per_group_with_the_same_records(
        tmp_path) -> None:
    """``combined``: a task's small files as one output, each group one run sorted by key whose
    records carry their own position and file; a dedupe actor reads from it exactly the
    records (and the rows each file spans) it reads from the files' own outputs."""
    rng = np.random.default_rng(9)
    storage = Storage(f"file://{tmp_path}")
    outputs = []
    for j in range(12):
        n = int(rng.integers(1, 40))
        path = tmp_path / f"d{j}.parquet"
        pq.write_table(pa.table({"id": rng.integers(0, 50, n), "lsn": rng.integers(0, 9, n)}),
                       path)
        file, _ = files.describe(storage, f"file://{path}")
        kind = DeltaKind.DELETE if j % 4 == 3 else DeltaKind.UPSERT
        outputs.append(hash_file(storage, HashInput(file, 100 + j, 1 + j // 3, kind, None),
                                 ("id",), "lsn", pa.int64(), 5, 2))
    one = combined(outputs)
    assert (one.position, one.ordinal) == (PER_ROW, PER_ROW)
    assert one.rows == sum(o.rows for o in outputs)
    for g in (0, 1):
        alone, together = GroupRecords(outputs, g), GroupRecords([one], g)
        assert len(together.runs) == 1 and together.rows == alone.rows
        assert together.spans() == alone.spans()
        key = together.runs[0][0].select(["hi", "lo"]).to_pylist()
        assert key == sorted(key, key=lambda k: (k["hi"], k["lo"]))
        inner = np.sort(rng.integers(0, 2**64 - 1, 3, dtype=np.uint64))
        for j in range(4):  # each range of keys: the same records, in any order
            a = alone.between(alone.cuts(inner), j)
            b = together.between(together.cuts(inner), j)
            if a is None:
                assert b is None
                continue
            assert b is not None and a.schema == b.schema
            assert _rows(a) == _rows(b)


def _rows(table: pa.Table) -> list[tuple[object, ...]]:
    return sorted(tuple(r.values()) for r in table.to_pylist())
