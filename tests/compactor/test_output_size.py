"""Compacted files come out at about the target size, however differently the input is stored.

The plan fixes a file's rows before any is written (``pipeline/output_size.py``): from the
compacted files' bytes per row, or, before there are any, from a sample of the input written
as compacted files are.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import runtime
from compactor import DeltaKind, create_table
from compactor.compaction import compact_partition
from compactor.pipeline import output_size
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


def _table(tmp_path, data: pa.Table, **stored: object) -> tuple[Any, Any]:
    """A table of ``data``'s schema, one bucket, ``data`` registered as a file stored plain
    and uncompressed (several times the bytes a compacted file takes a row) unless
    ``stored`` says how."""
    source = tmp_path / "load.parquet"
    pq.write_table(data, source, **(stored or {"compression": "none", "use_dictionary": False}))
    table = create_table(f"file://{tmp_path}/t", data.schema, primary_key=["id"],
                         ordering_column="lsn", bucket_count=1)
    part = table.partition()
    part.register([str(source)])
    return table, part


@pytest.mark.parametrize("codec", ["zstd", "none"])
def test_a_first_rounds_files_are_the_target_size_though_its_input_is_stored_larger(
        rt, tmp_path, codec):
    table, part = _table(tmp_path, _data(120_000))
    target = 200_000
    per_file = _rows_per_file(table, part, target, codec)
    result = compact_partition(table, part, target_file_size=target, compression=codec)
    sizes = sorted(f.size for f in part.snapshot().compacted.files)  # type: ignore[union-attr]
    assert result.files_written == len(sizes) == -(-120_000 // per_file) >= 2
    # a full file would be the target size (the task cuts its rows into files of one size:
    # k files of 1/k of them, each at most a full one)
    per_row = sum(sizes) / 120_000
    assert 0.75 * target <= per_file * per_row <= 1.3 * target, (sizes, per_file, target)
    assert sizes[-1] <= 1.3 * target
    input_per_row = (tmp_path / "load.parquet").stat().st_size / 120_000
    if codec == "zstd":  # the input's own bytes per row would have made files far smaller
        assert sum(sizes) / 120_000 < input_per_row / 2


def _rows_per_file(table, part, target: int, codec: str = "zstd") -> int:
    return plan_round(table, part, target_file_size=target, bucket_count=None, rebase=False,
                      groups=1, compression=codec).rows_per_file


def test_later_rounds_size_files_by_the_compacted_files_bytes_per_row(rt, tmp_path):
    table, part = _table(tmp_path, _data(800_000))
    compact_partition(table, part, target_file_size=2_000_000)
    part.append(_data(1000, 10**7))
    compacted = part.snapshot().compacted
    assert compacted is not None and compacted.size > len(compacted.files) << 20
    assert _rows_per_file(table, part, 2_000_000) == int(
        2_000_000 / (compacted.size / compacted.rows))
    # another codec: the compacted files' bytes per row are not what this round's take
    assert _rows_per_file(table, part, 2_000_000, "none") < _rows_per_file(
        table, part, 2_000_000) / 2


def test_rounds_of_files_under_a_mebibyte_keep_the_first_rounds_size(rt, tmp_path):
    """Files too small to tell their bytes per row (footers weigh) record the figure the
    round planned with, from its sample: later rounds of a few updates each keep the size, not
    each guess anew from its own small delta (30,000 rows a file, then 20,000 and 18,750)."""
    table, part = _table(tmp_path, _data(300_000))
    target = 64 << 10
    first = _rows_per_file(table, part, target)
    compact_partition(table, part, target_file_size=target)
    rng = np.random.default_rng(5)
    for r in range(3):
        update = _data(2000, 10**6 * (r + 1))
        ids = rng.choice(300_000, 2000, replace=False)
        part.append(update.set_column(0, "id", pa.array(ids)).set_column(
            1, "lsn", pa.array(np.full(2000, 10**6 + r))))
        assert _rows_per_file(table, part, target) == first, r
        compact_partition(table, part, target_file_size=target)
    state = part.snapshot().compacted
    assert state is not None and state.rows == 300_000
    sizes = [f.size for f in state.files]
    assert max(sizes) < 1 << 20 and 0.6 * target <= np.median(sizes) <= 1.4 * target, sizes


def test_a_sample_of_a_file_with_dictionaries_inside_lists_is_taken(tmp_path):
    """Its first rows span row groups, each with a dictionary of its own, which Arrow cannot
    read across as one column: the sample read a row group at a time (it failed, and the
    inputs' own bytes per row, 22 against 12 bytes, sized the files and were recorded)."""
    words = pa.dictionary(pa.int32(), pa.string())
    data = _data(40_000)
    data = data.append_column("tags", pa.array(
        [[f"t{i % 7}", f"u{i % 3}"] for i in range(40_000)], pa.list_(pa.string())))
    table, part = _table(tmp_path, data)
    written = tmp_path / "tags.parquet"
    pq.write_table(data.set_column(4, "tags", data.column("tags").cast(pa.list_(words))),
                   written, row_group_size=5000)
    part.register([str(written)])
    file = part.snapshot().deltas[-1].files[0]
    sampled = output_size.sample_bytes_per_row(table, file, None, "zstd")
    assert sampled is not None and 0 < sampled < file.size / file.rows


def test_a_stand_in_figure_is_not_recorded_for_later_rounds():
    """A round sized by the inputs' bytes per row (no sample could be taken: can be several
    times off) records none for its small files, so the next round measures again."""
    from types import SimpleNamespace

    small = [SimpleNamespace(size=40_000, rows=3_000) for _ in range(20)]
    kept = output_size.recorded(None, small, "zstd", None, 60_000)  # type: ignore[arg-type]
    assert kept == {"compression": "zstd"}
    kept = output_size.recorded(None, small, "zstd", 12.5, 60_000)  # type: ignore[arg-type]
    assert kept == {"compression": "zstd", "row_bytes": "12.5"}
    assert "row_bytes" not in output_size.recorded(None, small, "zstd", 12.5, 2)  # type: ignore[arg-type]


def test_a_compacted_state_small_beside_the_rounds_input_does_not_size_its_files(rt, tmp_path):
    """Two rows compacted first: a file of them is almost all footer, and would make the next
    round's files of a big delta hundreds of times too small."""
    table, part = _table(tmp_path, _data(2))
    compact_partition(table, part, target_file_size=1_000_000)
    part.append(_data(200_000, 10))
    result = compact_partition(table, part, target_file_size=1_000_000)
    sizes = sorted(f.size for f in part.snapshot().compacted.files)  # type: ignore[union-attr]
    # (a task's rows cut into even files: here two of 0.55 MB, rather than one full)
    assert result.files_written <= 4 and 0.45e6 <= sizes[-1] <= 1.4e6, sizes


def test_a_delete_deltas_keys_are_not_taken_for_rows(rt, tmp_path):
    """The largest input being a delete delta's keys (all other columns null, a few bytes a
    row) made files many times the target."""
    table, part = _table(tmp_path, _data(100_000))
    part.append(pa.table({"id": np.arange(10**6, 2 * 10**6), "lsn": np.zeros(10**6, np.int64)}),
                kind=DeltaKind.DELETE)
    upserts_only = plan_round(table, part, target_file_size=1_000_000, bucket_count=None,
                              rebase=False, groups=1).rows_per_file
    sample = output_size.sample_bytes_per_row(
        table, part.snapshot().deltas[0].files[0], None, "zstd")
    assert sample is not None and upserts_only == int(1_000_000 / sample)


def test_a_sample_of_wide_rows_reads_a_few_megabytes_of_them(tmp_path):
    rows, width = 4000, 16_000
    blobs = pa.array([bytes([i % 251]) * width for i in range(rows)], pa.binary())
    schema = pa.schema([("id", pa.int64()), ("lsn", pa.int64()), ("blob", pa.binary())])
    data = pa.table({"id": np.arange(rows), "lsn": np.arange(rows), "blob": blobs}, schema=schema)
    table, part = _table(tmp_path, data, compression="none", row_group_size=rows)
    file = part.snapshot().deltas[0].files[0]
    before = pa.total_allocated_bytes()
    pool = pa.default_memory_pool()
    peak = pool.max_memory()
    per_row = output_size.sample_bytes_per_row(table, file, None, "zstd")
    assert per_row is not None and per_row < width / 10  # (a byte repeated: zstd's)
    # at most SAMPLE_BYTES decoded (and its encodings), not the 64 MB row group
    assert pool.max_memory() - max(peak, before) < 4 * output_size.SAMPLE_BYTES


def test_after_a_codec_change_files_are_sized_by_what_the_new_codec_wrote(rt, tmp_path):
    """The state's files are mostly of the old codec: their bytes per row would size the
    rounds after the change wrong; the figure each round records of its files does not."""
    table, part = _table(tmp_path, _data(800_000))
    target = 2_000_000
    compact_partition(table, part, target_file_size=target, compression="none")
    for r in (1, 2):
        before = {f.url for f in part.snapshot().compacted.files}  # type: ignore[union-attr]
        part.append(_data(600_000, r * 10**7))  # new keys: new files
        per_file = _rows_per_file(table, part, target)
        compact_partition(table, part, target_file_size=target)  # zstd
        state = part.snapshot().compacted
        assert state is not None and state.properties["compression"] == "zstd"
        new = [f for f in state.files if f.url not in before]
        # a full file, at the bytes per row they were written with, is about the target (the
        # round's rows are cut into files of one size, each at most a full one)
        per_row = sum(f.size for f in new) / sum(f.rows for f in new)
        assert len(new) >= 2 and 0.7 * target <= per_file * per_row <= 1.3 * target, (
            r, per_file, per_row)
        assert max(f.size for f in new) <= 1.3 * target


@pytest.mark.parametrize("figure", ["", "abc", "nan", "-3", "inf"])
def test_a_recorded_figure_that_is_not_a_positive_number_is_passed_over(figure):
    """A state's properties are plain text in its commit: an edited figure falls back to the
    state's own bytes per row, not a failed plan."""
    from types import SimpleNamespace

    files = [SimpleNamespace(size=4 << 20, rows=100_000) for _ in range(3)]
    base = SimpleNamespace(properties={"compression": "zstd", "row_bytes": figure},
                           rows=300_000, size=12 << 20, files=files)
    per_row = output_size.bytes_per_row(None, base, [], "zstd")  # type: ignore[arg-type]
    assert per_row == (12 << 20) / 300_000
    base.properties["row_bytes"] = "12.5"
    assert output_size.bytes_per_row(None, base, [], "zstd") == 12.5  # type: ignore[arg-type]
