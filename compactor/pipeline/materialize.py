"""Step 4: materialize one touched bucket: read surviving rows in place, write Parquet files.

Source files are read where they are, only the row groups that hold surviving rows, and only
the table's columns. Rows are written in the order the dedupe actor planned (its next index
already points at them), ``rows_per_file`` to a file. Columns a file lacks (added to the table
later) are filled with nulls; every batch is cast to the table schema.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compactor import files, layout
from compactor.errors import SchemaMismatch
from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.layout import PartitionKey
from compactor.manifest import DataFile
from compactor.pipeline.dedupe import BucketPlan

WRITE_OPTIONS = {"compression": "zstd", "compression_level": 1, "row_group_size": 128 * 1024}


@dataclass(frozen=True)
class MaterializeOutput:
    bucket: int
    written: tuple[DataFile, ...]
    files_read: int
    bytes_read: int
    rows_written: int
    peak_rss: int = 0  # of the process that ran it (set by the task wrapper)


def conform(batch: pa.Table, schema: pa.Schema, source: str) -> pa.Table:
    """``batch`` with exactly the table's columns, in order and type (new columns null)."""
    columns = []
    for f in schema:
        if f.name in batch.column_names:
            col = batch.column(f.name)
            if col.type != f.type:
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise SchemaMismatch(
                        f"{source}: column {f.name!r} has type {col.type}, the table's is "
                        f"{f.type}: {e}") from None
            columns.append(col)
        else:
            columns.append(pa.nulls(batch.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=schema)


def read_rows(storage: Storage, file: DataFile, rows: np.ndarray, schema: pa.Schema) -> pa.Table:
    """Rows ``rows`` (sorted) of ``file``, reading only the row groups that hold them."""
    parquet = files.open_verified(storage, file)
    try:
        meta = parquet.metadata
        starts = np.cumsum([0] + [meta.row_group(i).num_rows for i in range(meta.num_row_groups)])
        groups = np.unique(np.searchsorted(starts, rows, side="right") - 1)
        names = [n for n in schema.names if n in parquet.schema_arrow.names]
        if len(rows) == meta.num_rows:
            data = parquet.read(columns=names)
            return conform(data, schema, file.url)
        data = parquet.read_row_groups(groups.tolist(), columns=names)
    finally:
        parquet.close()
    # positions of the wanted rows within the concatenation of the row groups read
    group_start_in_data = np.cumsum([0] + [int(starts[g + 1] - starts[g]) for g in groups])
    g_of_row = np.searchsorted(starts, rows, side="right") - 1
    local = rows - starts[g_of_row] + group_start_in_data[np.searchsorted(groups, g_of_row)]
    return conform(data.take(pa.array(local)), schema, file.url)


def materialize_bucket(storage: Storage, partition: PartitionKey, plan: BucketPlan,
                       sources: dict[int, DataFile], schema: pa.Schema) -> MaterializeOutput:
    maybe_fail("materialize")
    written: list[DataFile] = []
    pending: list[pa.Table] = []
    pending_rows = 0
    bytes_read = 0

    def flush(n: int) -> None:
        nonlocal pending, pending_rows
        data = pa.concat_tables(pending)
        chunk, rest = data.slice(0, n), data.slice(n)
        rel = layout.new_compacted_file(partition, plan.bucket)
        with storage.open_output(rel) as out:
            pq.write_table(chunk, out, **WRITE_OPTIONS)
        written.append(files.written(storage, storage.path(rel), chunk.num_rows))
        pending = [rest] if rest.num_rows else []
        pending_rows = rest.num_rows

    for ordinal, rows in plan.sources:
        source = sources[ordinal]
        bytes_read += source.size
        pending.append(read_rows(storage, source, rows, schema))
        pending_rows += len(rows)
        while pending_rows >= plan.rows_per_file:
            flush(plan.rows_per_file)
    if pending_rows:
        flush(pending_rows)
    return MaterializeOutput(plan.bucket, tuple(written), len(plan.sources), bytes_read,
                             plan.rows_out)
