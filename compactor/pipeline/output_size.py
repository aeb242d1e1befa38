"""How many rows make a compacted file of the target size.

A round writes each bucket a new file every ``rows_per_file`` rows: the dedupe actors point
the index at those places while the files are written, so the number is fixed by the plan,
from an estimate of the bytes a row takes in a compacted file.

- Compacted files already written say it (their bytes over their rows).
- Before there are any (a first round, a rebuild or rebase), the input's bytes per row can
  be far off: the demo's DMS-style export takes 55 bytes a row (dictionaries, snappy), its
  compacted files (zstd) 11, so files came out five times smaller than asked. The plan
  therefore writes a sample, the first ``SAMPLE_ROWS`` rows of the largest input file, as
  compacted files are written (the table's columns, codec, dictionary columns, row groups),
  into memory, and takes its bytes per row. Reading and encoding it takes tens of
  milliseconds. Where the sample cannot be read, the input's bytes per row stand in: the
  step that reads the file says what is wrong with it.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from compactor import files
from compactor.manifest import CompactedState, DataFile
from compactor.pipeline.materialize import (
    ROW_GROUP_ROWS,
    conform,
    dictionary_columns,
    write_options,
)
from compactor.table import Table

SAMPLE_ROWS = 16 * 1024


def sample_bytes_per_row(table: Table, file: DataFile, op_column: str | None,
                         codec: str) -> float | None:
    """The bytes per row of a compacted file holding ``file``'s first rows (None: it has no
    rows, or cannot be read)."""
    try:
        parquet = files.open_verified(table.storage, file)
        try:
            present = set(parquet.schema_arrow.names)
            columns = [n for n in table.schema.names if n in present and n != op_column]
            batch = next(parquet.iter_batches(batch_size=SAMPLE_ROWS, columns=columns), None)
        finally:
            parquet.close()
        if batch is None or not batch.num_rows:
            return None
        sample = conform(pa.Table.from_batches([batch]), table.schema, file.url)
        sink = pa.BufferOutputStream()
        pq.write_table(sample, sink, row_group_size=ROW_GROUP_ROWS,
                       **write_options(codec, dictionary_columns(sample)))
    except Exception:  # an estimate: the step that reads the file reports it
        return None
    return sink.getvalue().size / batch.num_rows


def bytes_per_row(table: Table, base: CompactedState | None,
                  inputs: list[tuple[DataFile, str | None]], codec: str) -> float:
    """Bytes a row takes in a compacted file: the compacted state's, else a sample of the
    largest of ``inputs`` (file, op column) written so, else the inputs' own."""
    if base is not None and base.rows:
        return base.size / base.rows
    if inputs:
        file, op_column = max(inputs, key=lambda item: item[0].size)
        sampled = sample_bytes_per_row(table, file, op_column, codec)
        if sampled is not None:
            return sampled
    rows = sum(f.rows for f, _ in inputs)
    return sum(f.size for f, _ in inputs) / max(rows, 1)
