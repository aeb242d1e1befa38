"""Small source files share hash tasks; large and sliced ones keep their own."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from compactor import create_table
from compactor.manifest import DataFile, DeltaKind
from compactor.pipeline.hash_bucket import HashInput
from compactor.pipeline.plan import (
    BATCH_FILES,
    BATCH_ROWS,
    MIN_TASK_MEMORY,
    HashTask,
    batch_small,
    plan_round,
)


def _task(n: int, rows: int, memory: int = 1 << 20, sliced: bool = False) -> HashTask:
    file = DataFile(f"file:///in/{n}.parquet", rows * 10, rows, "x")
    item = HashInput(file, n, n, DeltaKind.UPSERT, None, (0,) if sliced else None)
    return HashTask((item,), memory, file.size)


def _names(tasks: list[HashTask]) -> list[list[int]]:
    return [[i.ordinal for i in t.inputs] for t in tasks]


def test_consecutive_small_files_share_a_task_within_the_limits() -> None:
    small = BATCH_ROWS // 4
    tasks = [_task(0, small), _task(1, small), _task(2, small), _task(3, small),
             _task(4, small),  # the fifth would pass BATCH_ROWS
             _task(5, BATCH_ROWS + 1),  # large: alone, and it ends the batch before it
             _task(6, 10), _task(7, 10, sliced=True), _task(8, 10)]
    batched = batch_small(tasks)
    assert _names(batched) == [[0, 1, 2, 3], [4], [5], [6], [7], [8]]
    assert batched[0].size == sum(t.size for t in tasks[:4])
    # memory: the files' needs together, never under the floor
    assert [t.memory for t in batched] == [MIN_TASK_MEMORY] * 6
    big = batch_small([_task(0, 10, memory=MIN_TASK_MEMORY),
                       _task(1, 10, memory=MIN_TASK_MEMORY // 2)])
    assert [t.memory for t in big] == [MIN_TASK_MEMORY + MIN_TASK_MEMORY // 2]


def test_a_batch_holds_at_most_batch_files_files() -> None:
    batched = batch_small([_task(n, 1) for n in range(2 * BATCH_FILES + 1)])
    assert [len(t.inputs) for t in batched] == [BATCH_FILES, BATCH_FILES, 1]
    assert [i for t in batched for i in t.inputs] == \
        [i for n in range(2 * BATCH_FILES + 1) for i in _task(n, 1).inputs]


def test_a_round_of_many_small_deltas_plans_few_hash_tasks(tmp_path) -> None:
    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=("id",),
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    for k in range(BATCH_FILES + 5):
        part.append(pa.table({"id": np.arange(3), "lsn": np.full(3, k)}, schema=schema))
    plan = plan_round(table, part, target_file_size=1 << 20, bucket_count=None, rebase=False,
                      groups=2)
    assert [len(t.inputs) for t in plan.tasks] == [BATCH_FILES, 5]
    assert [i.position for t in plan.tasks for i in t.inputs] == \
        [d.position for d in part.snapshot().deltas]


def test_a_round_counts_each_file_it_reads_not_each_task(tmp_path) -> None:
    import runtime
    from compactor.compaction import compact_partition

    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=("id",),
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    for k in range(5):
        part.append(pa.table({"id": np.arange(3) + 10 * k, "lsn": np.full(3, k)}, schema=schema))
    with runtime.init("local", num_cpus=2):
        result = compact_partition(table, part)
    assert result.rows_out == 15
    assert result.files_read == 5 + 5  # each hashed (in one task), then each materialized


def _many_small_deltas(tmp_path, count: int):  # type: ignore[no-untyped-def]
    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=("id",),
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    for k in range(count):  # sizes differ: the largest are the sample
        n = 3 + k
        part.append(pa.table({"id": np.arange(n) + 100 * k, "lsn": np.full(n, k)},
                             schema=schema))
    return table, part


def test_of_many_small_files_only_a_sample_of_footers_is_read(tmp_path, monkeypatch) -> None:
    """Hundreds of small deltas on S3 cost a footer read each: only FOOTER_SAMPLE (the
    largest) are read, and the others' memory is estimated from them, never below what they
    need."""
    from compactor.pipeline import plan as plan_module

    read: list[str] = []
    real = plan_module._footer_stats

    def counted(table, file, columns):  # type: ignore[no-untyped-def]
        read.append(file.url)
        return real(table, file, columns)

    monkeypatch.setattr(plan_module, "_footer_stats", counted)
    table, part = _many_small_deltas(tmp_path, plan_module.FOOTER_SAMPLE + 24)
    files = [f for d in part.snapshot().deltas for f in d.files]
    plan = plan_round(table, part, target_file_size=1 << 20, bucket_count=None, rebase=False,
                      groups=2)
    largest = sorted(files, key=lambda f: -f.size)[:plan_module.FOOTER_SAMPLE]
    assert sorted(read) == sorted(f.url for f in largest)
    assert sum(len(t.inputs) for t in plan.tasks) == len(files)  # every file hashed, whole
    assert all(i.row_groups is None for t in plan.tasks for i in t.inputs)
    assert plan.row_bytes >= 16  # two int64 columns, estimated from the sample
    read.clear()
    table, part = _many_small_deltas(tmp_path / "few", plan_module.FOOTER_SAMPLE)
    plan_round(table, part, target_file_size=1 << 20, bucket_count=None, rebase=False,
               groups=2)
    assert len(read) == plan_module.FOOTER_SAMPLE  # few: every footer read


def test_a_changed_small_file_whose_footer_was_not_read_still_fails_the_round(tmp_path
                                                                             ) -> None:
    """The hash task that opens it checks it unchanged since registered: the round fails
    naming it and commits nothing."""
    from pathlib import Path

    import pytest

    import runtime
    from compactor.compaction import compact_partition
    from compactor.errors import ChangedFile
    from compactor.pipeline.plan import FOOTER_SAMPLE

    table, part = _many_small_deltas(tmp_path, FOOTER_SAMPLE + 8)
    smallest = min((f for d in part.snapshot().deltas for f in d.files), key=lambda f: f.size)
    path = Path(smallest.url.removeprefix("file://"))
    path.write_bytes(path.read_bytes() + b"\0")  # another size: not the registered file
    with runtime.init("local", num_cpus=2), \
            pytest.raises(ChangedFile, match=f"{path.name} changed since it was registered"):
        compact_partition(table, part)
    assert part.snapshot().compacted is None


def test_a_small_source_is_hashed_from_one_read_of_it_whole(tmp_path, monkeypatch) -> None:
    """On an object store a request costs its latency: a small file (not split by row groups)
    is read in one request, a file hashed by row groups only in the parts it needs."""
    from compactor import files
    from compactor.pipeline import hash_bucket
    from compactor.pipeline.hash_bucket import hash_file

    table, part = _many_small_deltas(tmp_path, 1)
    file = part.snapshot().deltas[0].files[0]
    opened: list[bool] = []
    real = files.open_parquet

    def recorded(storage, path, whole=False, read_dictionary=None):  # type: ignore[no-untyped-def]
        opened.append(whole)
        return real(storage, path, whole, read_dictionary)

    monkeypatch.setattr(files, "open_parquet", recorded)
    for row_groups in (None, (0,)):
        item = HashInput(file, 0, 1, DeltaKind.UPSERT, None, row_groups)
        out = hash_file(table.storage, item, ("id",), "lsn", pa.int64(), 2, 1)
        assert out.rows == 3
    monkeypatch.setattr(hash_bucket, "WHOLE_FILE_BYTES", file.size - 1)  # now too big
    hash_file(table.storage, HashInput(file, 0, 1, DeltaKind.UPSERT, None), ("id",), "lsn",
              pa.int64(), 2, 1)
    assert opened == [True, False, False]


def test_an_empty_file_with_a_key_column_of_type_null_adds_no_keys(tmp_path) -> None:
    """pyarrow writes an empty column given no type as type null; among more small files than
    the plan reads footers of, such a file was hashed, and its key column refused without a
    file named."""
    import pyarrow.parquet as pq

    import runtime
    from compactor.compaction import compact_partition

    schema = pa.schema([("sid", pa.string()), ("lsn", pa.int64())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=("sid",),
                         ordering_column="lsn", bucket_count=2)
    part = table.partition()
    for k in range(20):
        part.append(pa.table({"sid": [f"k{k}"], "lsn": [k]}, schema=schema))
    empty, one = tmp_path / "empty.parquet", tmp_path / "one.parquet"
    pq.write_table(pa.table({"sid": pa.array([]), "lsn": pa.array([], pa.int64())}), empty)
    pq.write_table(pa.table({"sid": ["k0"], "lsn": [99]}, schema=schema), one)
    part.register([str(empty), str(one)])
    with runtime.init("local", num_cpus=2):
        result = compact_partition(table, part)
    assert result.rows_out == 20
