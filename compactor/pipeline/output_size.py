"""How many rows make a compacted file of the target size.

A round writes each bucket files of at most ``rows_per_file`` rows (each materialize task cuts
its rows of a bucket into files of one size but the last, ``locators.file_rows``): the dedupe
actors point the index at those places while the files are written, so the number is fixed by
the plan, from an estimate of the bytes a row takes in a compacted file.

- Compacted files say it, written with the codec the round writes (``CODEC_PROPERTY`` of the
  compacted state) and of ``BASE_FILE_BYTES`` on average (so their footers do not count):
  a round records the bytes per row of the files it wrote (``ROW_BYTES_PROPERTY``), or
  carries the figure its state had where it wrote only smaller files (or, a state of at
  least ``SAMPLE_ROWS`` rows without one, records the figure it planned with: its sample's),
  and the next round takes it. A state without the figure (written before it was recorded)
  gives its own bytes over its rows, where it holds at least as many rows as the round brings
  in.
- Otherwise (a first round, a rebuild or rebase, a state small beside the round's input or of
  small files, another codec) the input's bytes per row can be far off: the demo's DMS-style
  export takes 55 bytes a row (dictionaries, snappy), its compacted files (zstd) 11, so files
  came out five times smaller than asked. The plan therefore writes a sample as compacted
  files are written (the table's columns, codec, dictionary columns, row groups), into
  memory: the first rows of the largest input file that holds whole rows (not a delete
  delta's keys), up to ``SAMPLE_ROWS`` rows and ``SAMPLE_BYTES`` of them decoded, read a page
  at a time. A row's bytes are the difference the second half of the sample makes, so the
  footer and the pages' headers, fixed costs a full file spreads over many more rows, do not
  count. Reading and encoding it takes tens of milliseconds.
- Where there is no such file or it cannot be read, the inputs' and the compacted files'
  bytes per row stand in (the step that reads a bad file says what is wrong with it).
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from compactor import files
from compactor.manifest import CompactedState, DataFile, DeltaKind
from compactor.pipeline.materialize import (
    ROW_GROUP_ROWS,
    batches_of,
    conform,
    delta_columns,
    dictionary_columns,
    write_options,
)
from compactor.table import Table

SAMPLE_ROWS = 16 * 1024
SAMPLE_BYTES = 8 << 20  # decoded, as the footer counts them
BASE_FILE_BYTES = 1 << 20
CODEC_PROPERTY = "compression"  # of the compacted state: the codec its round wrote with
ROW_BYTES_PROPERTY = "row_bytes"  # ... and the bytes a row takes in its files
_READ_BUFFER = 1 << 20  # the sample's column chunks are read this much at a time


def _encoded_size(sample: pa.Table, codec: str) -> int:
    sink = pa.BufferOutputStream()
    pq.write_table(sample, sink, row_group_size=ROW_GROUP_ROWS,
                   **write_options(codec, dictionary_columns(sample),
                                   delta_columns(sample, codec)))
    return int(sink.getvalue().size)


def sample_bytes_per_row(table: Table, file: DataFile, op_column: str | None,
                         codec: str) -> float | None:
    """The bytes a row like ``file``'s first ones takes in a compacted file (None: it has
    fewer than two rows, or cannot be read)."""
    try:
        opened = files.open_source(table.storage, file)
        try:
            meta = opened.parquet.metadata
            decoded = sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))
            rows = min(SAMPLE_ROWS, meta.num_rows,
                       max(2, int(SAMPLE_BYTES * meta.num_rows / max(decoded, 1))))
            present = set(opened.parquet.schema_arrow.names)
            columns = [n for n in table.schema.names if n in present and n != op_column]
            reader = pq.ParquetFile(opened.source, metadata=meta, buffer_size=_READ_BUFFER,
                                    pre_buffer=False)
            batch = next(batches_of(reader, list(range(meta.num_row_groups)), columns,
                                    batch_size=rows), None)
        finally:
            opened.close()
        if batch is None or batch.num_rows < 2:
            return None
        sample = conform(pa.Table.from_batches([batch]), table.schema, file.url)
        half = sample.num_rows // 2
        grown = _encoded_size(sample, codec) - _encoded_size(sample.slice(0, half), codec)
    except Exception:  # an estimate: the step that reads the file reports it
        return None
    return grown / (sample.num_rows - half) if grown > 0 else None


def _figure(text: str | None) -> float | None:
    """A recorded bytes per row, if it is one (a state's properties are plain text anyone
    may have edited: what is not a positive number is ignored, not fatal to the round)."""
    try:
        value = float(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and 0 < value < float("inf") else None


def bytes_per_row(table: Table, base: CompactedState | None,
                  inputs: list[tuple[DataFile, DeltaKind, str | None]], codec: str) -> float:
    """Bytes a row takes in a compacted file written with ``codec``, for a round folding
    ``inputs`` (file, delta kind, op column) into ``base``: see the module's text."""
    return estimate(table, base, inputs, codec)[0]


def estimate(table: Table, base: CompactedState | None,
             inputs: list[tuple[DataFile, DeltaKind, str | None]], codec: str
             ) -> tuple[float, bool]:
    """``bytes_per_row``, and whether it is a measure a later round may keep (recorded, the
    state's own, or a sample's), not the stand-in of the inputs' bytes per row."""
    input_rows = sum(f.rows for f, _, _ in inputs)
    if base is not None and base.properties.get(CODEC_PROPERTY, codec) == codec:
        recorded = _figure(base.properties.get(ROW_BYTES_PROPERTY))
        if recorded is not None:
            return recorded, True
        if base.rows and base.rows >= input_rows \
                and base.size >= BASE_FILE_BYTES * len(base.files):
            return base.size / base.rows, True
    whole_rows = [(f, op) for f, kind, op in inputs if kind is not DeltaKind.DELETE]
    if whole_rows:
        file, op_column = max(whole_rows, key=lambda item: item[0].size)
        sampled = sample_bytes_per_row(table, file, op_column, codec)
        if sampled is not None:
            return sampled, True
    rows = input_rows + (base.rows if base is not None else 0)
    size = sum(f.size for f, _, _ in inputs) + (base.size if base is not None else 0)
    return size / max(rows, 1), False


def recorded(base: CompactedState | None, written: list[DataFile], codec: str,
             planned: float | None, rows: int) -> dict[str, str]:
    """The properties a round's compacted state of ``rows`` rows records for the next round's
    estimate: the codec, and the bytes per row of the files ``written`` with it where they are
    big enough to tell; else the figure ``base`` had, if of the same codec; else, for a state
    of at least ``SAMPLE_ROWS`` rows, the figure the round ``planned`` with (its sample's, None
    where it had only the inputs' bytes per row, which can be several times off: as good
    as a later round's sample of its own deltas, and the same each round, so rounds of small
    files keep one size: a 64 KiB target made 30,000 rows a file, then 20,000 and 18,750
    after rounds of 2,000 updates, each sized by its own delta's sample)."""
    out = {CODEC_PROPERTY: codec}
    size, written_rows = sum(f.size for f in written), sum(f.rows for f in written)
    if written and written_rows and size >= BASE_FILE_BYTES * len(written):
        out[ROW_BYTES_PROPERTY] = repr(size / written_rows)
    elif base is not None and base.properties.get(CODEC_PROPERTY) == codec \
            and ROW_BYTES_PROPERTY in base.properties:
        out[ROW_BYTES_PROPERTY] = base.properties[ROW_BYTES_PROPERTY]
    elif planned is not None and rows >= SAMPLE_ROWS:
        out[ROW_BYTES_PROPERTY] = repr(planned)
    return out
