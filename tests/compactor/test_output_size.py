"""Compacted files come out at about the target size, however differently the input is stored.

The plan fixes a file's rows before any is written (``pipeline/output_size.py``): from the
compacted files' bytes per row, or, before there are any, from a sample of the input written
as compacted files are.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runtime
from compactor import create_table
from compactor.compaction import compact_partition
from compactor.pipeline.plan import plan_round

SCHEMA = pa.schema([("id", pa.int64()), ("lsn", pa.int64()), ("status", pa.string()),
                    ("amount", pa.float64())])


@pytest.fixture
def rt() -> Iterator[None]:
    with runtime.init("local", num_cpus=2):
        yield


def _data(rows: int, start: int = 0) -> pa.Table:
    rng = np.random.default_rng(start)
    return pa.table({"id": np.arange(start, start + rows), "lsn": np.arange(rows),
                     "status": rng.choice(["new", "paid", "shipped"], rows),
                     "amount": np.round(rng.random(rows) * 100, 2)}, schema=SCHEMA)


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_a_first_rounds_files_are_the_target_size_though_its_input_is_stored_larger(
        rt, tmp_path, codec):
    # stored plain and uncompressed: several times the bytes a compacted file takes a row
    source = tmp_path / "load.parquet"
    pq.write_table(_data(120_000), source, compression="none", use_dictionary=False)
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         ordering_column="lsn", bucket_count=1)
    part = table.partition()
    part.register([str(source)])
    target = 200_000
    result = compact_partition(table, part, target_file_size=target, compression=codec)
    sizes = sorted(f.size for f in part.snapshot().compacted.files)  # type: ignore[union-attr]
    assert result.files_written == len(sizes) >= 3
    full = sizes[1:]  # (the smallest holds what is left over)
    assert all(0.75 * target <= s <= 1.3 * target for s in full), (sizes, target)
    input_per_row = source.stat().st_size / 120_000
    if codec == "zstd":  # the input's own bytes per row would have made files far smaller
        assert sum(sizes) / 120_000 < input_per_row / 2


def test_later_rounds_size_files_by_the_compacted_files_bytes_per_row(rt, tmp_path):
    source = tmp_path / "load.parquet"
    pq.write_table(_data(50_000), source, compression="none", use_dictionary=False)
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         ordering_column="lsn", bucket_count=1)
    part = table.partition()
    part.register([str(source)])
    compact_partition(table, part, target_file_size=100_000)
    part.append(_data(1000, 10**6))
    compacted = part.snapshot().compacted
    assert compacted is not None
    plan = plan_round(table, part, target_file_size=100_000, bucket_count=None, rebase=False,
                      groups=1)
    assert plan.rows_per_file == int(100_000 / (compacted.size / compacted.rows))
