"""Step 4: materialize a group of source files: read each once, in place; write bucket files.

Source files are read where they are, only the row groups that hold surviving rows, and only
the table's columns, about ``READ_BATCH_BYTES`` at a time. Each source is read once and its
surviving rows go to their buckets' writers; bucket b's rows of the group are written in
(source ordinal, row) order, into the fewest files of at most ``rows_per_file`` rows, all of one
size but the last (``locators.file_rows``: not full files and a small remainder for a later
round to merge): exactly the places the dedupe actors' ``finalize`` points the next index at.
Columns a file lacks (added to the table later) are filled with nulls; every batch is cast to
the table schema, but for text a source stores with a dictionary, which stays dictionary
indices up to the writer (``dictionary_reads``) and is read back in the table's type. Small
sources (at most ``READ_AHEAD_BYTES``) are read whole, several ahead of the one being decoded.
A row group all of whose rows one bucket keeps, stored as the table's files are (a compacted
file rewritten for rows it lost in other row groups), is copied as its bytes
(``parquet_splice``), not decoded.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compactor import files, layout, parquet_splice
from compactor.errors import CorruptFile, SchemaMismatch
from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.layout import PartitionKey
from compactor.manifest import DataFile
from compactor.pipeline.dedupe import BucketPlan
from compactor.pipeline.locators import SOURCE_BASE, compacted, file_count, file_rows
from compactor.pipeline.row_sets import RowSet
from compactor.schema import nests, stored_type
from compactor.thrift_compact import Struct

if TYPE_CHECKING:
    from compactor.pipeline.plan import RoundPlan

# Compacted files have dictionary pages only for text columns with few distinct values
# (``dictionary_columns``): with row groups of ROW_GROUP_ROWS, building (and for high-cardinality
# columns abandoning) a dictionary per column chunk doubled the encode time, and a
# general-purpose codec finds the repetition a dictionary would. Per million benchmark CDC rows:
# zstd level 1 0.20 s, 18.5 MB; lz4 or snappy 0.14 s, 33 MB; snappy with dictionaries for every
# column (the pyarrow default) 0.35 s, 39.5 MB. A dictionary for the one four-valued text column
# alone: 34.0 -> 32.4 MB for a compacted file of a million rows, 0.18 -> 0.15 s to write it
# alone (no measurable change in a whole materialize task).
CODECS = ("zstd", "lz4", "snappy", "gzip", "brotli", "none")
DEFAULT_CODEC = "zstd"
ROW_GROUP_ROWS = 128 * 1024


def min_copy_rows(rows_per_file: int) -> int:
    """The fewest rows of a source row group copied as bytes: half the writer's row groups
    (ROW_GROUP_ROWS, or a full file's rows, ``rows_per_file``, where fewer). Smaller ones are
    decoded and written with their neighbours, so a file's row groups do not grow in number
    round after round (a copy is written as it is: a round's few new rows after a copied group,
    or a source's tiny row groups, would stay row groups of their own for good)."""
    return max(1, min(ROW_GROUP_ROWS, rows_per_file) // 2)


# a text column is dictionary-encoded where a sample of DICTIONARY_SAMPLE rows holds at most
# one distinct value in DICTIONARY_RATIO
DICTIONARY_SAMPLE = 8192
DICTIONARY_RATIO = 16


def write_options(codec: str, dictionary: list[str] | None = None,
                  delta: list[str] | None = None) -> dict[str, Any]:
    """The Parquet writer settings of compacted files compressed with ``codec``, with
    dictionary pages for the columns ``dictionary`` and the columns ``delta`` delta-encoded
    (DELTA_BINARY_PACKED; none of either by default)."""
    if codec not in CODECS:
        raise ValueError(f"compression {codec!r} is not one of {', '.join(CODECS)}")
    # (no page index: a row group with one cannot be moved between files, parquet_splice)
    options: dict[str, Any] = {"compression": codec, "use_dictionary": dictionary or False,
                               "write_page_index": False}
    if delta:
        options["column_encoding"] = dict.fromkeys(delta, "DELTA_BINARY_PACKED")
    if codec == "zstd":
        options["compression_level"] = 1
    return options


# Integer and temporal columns are delta-encoded (DELTA_BINARY_PACKED: the differences of
# consecutive values, bit-packed by blocks) where that stores them smaller than plain values
# compressed with the file's codec. Ids, sequence numbers and timestamps of rows written in
# the order they arrived, or small numbers, shrink to a few bits a value, and decode 2.5-5x
# faster than plain values through snappy (an 817K-row compacted file, snappy: id 3.51 ->
# 0.84 MB and 20.8 -> 4.3 ms to decode, 16.3 -> 9.5 ms to encode; lsn, qty and a timestamp
# alike). Random numbers (as many bits a difference as a value) and few values repeated
# (where the codec finds the repeats) stay plain: larger delta-encoded, and slower to encode.
_DELTA_BLOCK, _DELTA_MINIBLOCK = 128, 32  # the Parquet writer's block and miniblock values
_DELTA_BLOCK_HEADER = 12  # bytes a block spends on its minimum and its miniblocks' widths


def _delta_type(t: pa.DataType) -> bool:
    """Stored as Parquet INT32 or INT64 (decimals are fixed-size binary)."""
    return (pa.types.is_integer(t) or pa.types.is_date(t) or pa.types.is_timestamp(t)
            or pa.types.is_time(t) or pa.types.is_duration(t))


def _delta_bytes(values: np.ndarray) -> float:
    """Bytes a value the int64 ``values`` take delta-encoded, by their full blocks."""
    blocks = (len(values) - 1) // _DELTA_BLOCK
    d = np.diff(values[:blocks * _DELTA_BLOCK + 1]).reshape(
        blocks, _DELTA_BLOCK // _DELTA_MINIBLOCK, _DELTA_MINIBLOCK)
    # each miniblock's values less its block's least, in as many bits as the largest needs
    spread = (d.max(axis=2) - d.min(axis=(1, 2))[:, None]).view(np.uint64)
    bits = np.frexp(spread.astype(np.float64))[1]  # (bit length; may err by one near 2**53)
    return float(bits.sum() * _DELTA_MINIBLOCK / 8 + blocks * _DELTA_BLOCK_HEADER) / (
        blocks * _DELTA_BLOCK)


def _estimator(codec: str) -> pa.Codec:
    """What judges a sample's size under ``codec``: itself, but zstd (level 1) for gzip and
    brotli, whose ratios it is near and which are 10-100x slower (a sample of eight columns:
    1.7-3 ms by snappy or zstd, 26 ms by brotli, 350 ms by gzip, each file)."""
    return pa.Codec("zstd", compression_level=1) if codec in ("gzip", "brotli") else \
        pa.Codec(codec)


def _stored(values: pa.Array) -> pa.Array:
    """``values`` as Parquet stores them: the table's stored type (``schema.stored_type``:
    dates as days, times in seconds as milliseconds; a table made before may still hold
    date64), and timestamps in seconds as milliseconds (pyarrow writes them so; unchecked: a
    date64 with a time of day, or seconds beyond milliseconds' range, only judged a little
    off)."""
    t = values.type
    if pa.types.is_timestamp(t) and t.unit == "s":
        return values.cast(pa.timestamp("ms", t.tz), safe=False)
    stored = stored_type(t)
    return values if stored == t else values.cast(stored, safe=False)


def delta_columns(sample: pa.Table, codec: str) -> list[str]:
    """The integer and temporal columns of ``sample`` that take fewer bytes delta-encoded
    than plain and compressed with ``codec`` (their non-null values among the first
    DICTIONARY_SAMPLE rows, as Parquet stores them; none where fewer than a delta block).
    A name with a dot is never chosen: the writer reads it as a path, which may also name a
    field of a struct column, of another type."""
    head = sample.slice(0, DICTIONARY_SAMPLE)
    chosen = []
    for f in head.schema:
        if not _delta_type(f.type) or "." in f.name:
            continue
        values = _stored(pc.drop_null(head.column(f.name)).combine_chunks())
        if len(values) <= _DELTA_BLOCK:
            continue
        t = values.type
        width = 4 if t.bit_width <= 32 else 8
        plain = values.view(pa.int64()) if width == 8 else values.cast(
            pa.int64(), safe=False) if pa.types.is_integer(t) else values.view(
            pa.int32()).cast(pa.int64())
        ints = plain.to_numpy()
        raw = ints.astype(np.int32 if width == 4 else np.int64).tobytes()
        stored = len(raw) if codec == "none" else _estimator(codec).compress(raw).size
        if _delta_bytes(ints) <= stored / len(ints):
            chosen.append(f.name)
    return chosen


def _dictionary_text(t: pa.DataType) -> bool:
    """string or binary (Parquet reads the large variants as dictionaries of these too)."""
    return pa.types.is_string(t) or pa.types.is_binary(t)


# A text column a source stores with dictionary pages, in at most DICTIONARY_READ_BYTES bytes a
# value uncompressed (bit-packed indices: few distinct values), is read as a dictionary array
# and stays one up to the writer: its values are neither decoded into strings, nor gathered as
# strings, nor hashed again into the compacted file's dictionary. A four-valued column, per
# million rows read: decoding 41 -> 13 ms, gathering 17 -> 4 ms, writing 35 -> 17 ms.
DICTIONARY_READ_BYTES = 2
DICTIONARY_READ_GROUPS = 8  # row groups looked at to decide


def dictionary_reads(schema: pa.Schema) -> Callable[[pq.FileMetaData], list[str]]:
    """Given a source's footer, the text columns of ``schema`` to read as dictionary arrays."""
    text = [f.name for f in schema if _dictionary_text(f.type)]

    def pick(meta: pq.FileMetaData) -> list[str]:
        if not text or not meta.num_row_groups:
            return []
        where = files.top_level_leaves(meta)
        chosen = []
        for name in text:
            if name not in where:
                continue
            chunks = [meta.row_group(g).column(where[name])
                      for g in range(min(meta.num_row_groups, DICTIONARY_READ_GROUPS))]
            if all(c.has_dictionary_page for c in chunks) and sum(
                    c.total_uncompressed_size for c in chunks) <= DICTIONARY_READ_BYTES * sum(
                    c.num_values for c in chunks):
                chosen.append(name)
        return chosen

    return pick


def dictionary_columns(sample: pa.Table) -> list[str]:
    """The text (string or binary) columns of ``sample`` worth a dictionary: at most one
    distinct value in ``DICTIONARY_RATIO`` among its first ``DICTIONARY_SAMPLE`` rows (so none
    in a sample of fewer than DICTIONARY_RATIO rows). Numbers are left plain (a dictionary of
    a few hundred integers made writing slower). A compacted file's writer asks with its first
    row group's rows (``ROW_GROUP_ROWS``, or all of a smaller file's)."""
    head = sample.slice(0, DICTIONARY_SAMPLE)
    if not head.num_rows:
        return []
    chosen = []
    for f in head.schema:
        values, t = head.column(f.name), f.type
        if pa.types.is_dictionary(t):
            values, t = values.cast(t.value_type), t.value_type
        if not (pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_binary(t)
                or pa.types.is_large_binary(t)):
            continue
        distinct = pc.count_distinct(values, mode="all").as_py()
        if distinct * DICTIONARY_RATIO <= head.num_rows:
            chosen.append(f.name)
    return chosen


@dataclass(frozen=True)
class SourceRows:
    """One source file of a materialize task and, per bucket, its surviving rows."""

    ordinal: int
    file: DataFile
    rows: dict[int, RowSet]  # bucket -> rows
    op_column: str | None = None  # a CDC source's: never read as data
    cost: float = 0.0  # what reading it costs the task, as decoded bytes (``group_sources``)


@dataclass(frozen=True)
class MaterializeOutput:
    group: int
    written: dict[int, tuple[DataFile, ...]]  # bucket -> files, in order
    files_read: int
    bytes_read: int
    rows_written: int
    rows_copied: int = 0  # of rows_written: in row groups copied as bytes
    peak_rss: int = 0  # of the process that ran it (set by the task wrapper)


def conform(batch: pa.Table, schema: pa.Schema, source: str,
            keep_dictionary: bool = False) -> pa.Table:
    """``batch`` with exactly the table's columns, in order and type (new columns null);
    ``keep_dictionary``: a column read as a dictionary array of the table's type's values
    stays one (materialize's writers take them)."""
    columns = []
    for f in schema:
        if f.name in batch.column_names:
            col = batch.column(f.name)
            if col.type != f.type and not (keep_dictionary and pa.types.is_dictionary(col.type)
                                           and col.type.value_type == f.type):
                try:
                    col = col.cast(f.type)
                except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                    raise SchemaMismatch(
                        f"{source}: column {f.name!r} has type {col.type}, the table's is "
                        f"{f.type}: {e}") from None
            columns.append(col)
        else:
            columns.append(pa.nulls(batch.num_rows, f.type))
    return pa.Table.from_arrays(columns, schema=pa.schema(
        [f.with_type(c.type) for f, c in zip(schema, columns, strict=True)], schema.metadata))


# bytes of a source read at a time, as the Parquet footer counts them (row groups'
# uncompressed size: dictionary-encoded columns decode larger); at least a row. A worker's heap
# is handed back to the kernel when it idles, so a round's tasks fault their memory in afresh:
# the less a batch holds, the less they fault. 16 MB against 32 (20M-row harness, two
# alternating runs each, rounds 3 s apart): incremental round 0.87/0.90 -> 0.83/0.86 s, full
# round 8.24/8.40 -> 8.42/8.32 s, its peak 1709/1715 -> 1627/1655 MB (8 MB: 1583/1572 MB, the
# full round 8.54/8.47 s)
READ_BATCH_BYTES = 16 << 20


def batch_rows(rows: int, decoded_bytes: int) -> int:
    """Rows decoded at a time, of ``rows`` rows holding ``decoded_bytes``: about
    ``READ_BATCH_BYTES`` (at least one row, at most all)."""
    per_row = decoded_bytes / max(rows, 1)
    return max(1, min(max(rows, 1), int(READ_BATCH_BYTES / max(per_row, 1e-9))))


def read_split(storage: Storage, file: DataFile, rows: dict[int, np.ndarray],
               schema: pa.Schema, opened: pq.ParquetFile | None = None,
               in_memory: bool | None = None, skip: str | None = None, threads: bool = True
               ) -> Iterator[dict[int, pa.Table]]:
    """Rows ``rows[key]`` (sorted) of ``file`` for each key, reading the file once and only the
    row groups that hold wanted rows, about ``READ_BATCH_BYTES`` at a time:
    yields, per batch, each key's rows in it (in order; a key without rows there is absent),
    gathered straight from the decoded batch. Memory stays bounded whatever the file's size
    (by a batch, and a row group's compressed column chunks while its rows are read).
    ``opened``: the file, already verified and opened (the caller closes it); ``in_memory``:
    it was read whole (by default: if it was opened); ``skip``: a column of the file not read
    (a CDC source's op column: null if the table has a column of that name); ``threads``: its
    columns decoded in Arrow's threads (never for a file read whole)."""
    parquet = opened or files.open_verified(storage, file, read_dictionary=dictionary_reads(
        schema))
    in_memory = opened is not None if in_memory is None else in_memory
    try:
        meta = parquet.metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        starts = np.cumsum([0, *sizes])
        group_of = {key: np.searchsorted(starts, r, side="right") - 1 for key, r in rows.items()}
        # (each key's rows are sorted, so are their groups: the distinct ones of each where
        # they change, not by np.unique's sort of them all: 16 ms per 1M rows)
        groups = np.unique(np.concatenate([np.zeros(0, dtype=np.int64)] + [
            g[np.flatnonzero(np.diff(g, prepend=-1))] for g in group_of.values()]))
        if not len(groups):
            return
        present = set(parquet.schema_arrow.names)  # (a property pyarrow builds each time)
        names = [n for n in schema.names if n in present and n != skip]
        # each key's rows in the coordinates of the groups read, one after another
        unread = np.ones(len(sizes), dtype=bool)
        unread[groups] = False
        skipped = np.cumsum(np.where(unread, sizes, 0)) - np.where(unread, sizes, 0)
        local = {key: r - skipped[group_of[key]] for key, r in rows.items()}
        step = batch_rows(int(sum(sizes[g] for g in groups)),
                          sum(meta.row_group(g).total_byte_size for g in groups))
        at = 0
        # (a file read whole is small: decoding its columns in threads costs more than it
        # saves, 0.3 against 0.15-0.19 ms a 10-row file)
        batches = batches_of(parquet, groups.tolist(), names, batch_size=step,
                             use_threads=threads and not in_memory)
        for batch in _named_errors(file, batches, in_memory=in_memory):
            # in the table's types first: a file's type may have no gather of its own
            # (string_view, binary_view)
            data = conform(pa.Table.from_batches([batch]), schema, file.url,
                           keep_dictionary=True)
            end = at + data.num_rows
            out = {}
            for key, r in local.items():
                lo, hi = np.searchsorted(r, [at, end])
                if lo == hi:
                    continue
                out[key] = data if hi - lo == data.num_rows else \
                    data.take(pa.array(r[lo:hi] - at))  # every row in order: no gather
            at = end
            del data, batch
            yield out
    finally:
        if opened is None:
            parquet.close()


def _named_errors(file: DataFile, batches: Iterator[pa.RecordBatch], in_memory: bool = False
                  ) -> Iterator[pa.RecordBatch]:
    """``batches``, with a read failure naming ``file``: undecodable data is a CorruptFile,
    data Arrow cannot read a SchemaMismatch; an I/O error (which a job may retry) keeps its
    type and gets a note. pyarrow reports some undecodable pages as OSError too: from a file
    already in memory (``in_memory``) every failure is the data's."""
    try:
        yield from batches
    except pa.ArrowInvalid as e:
        raise CorruptFile(f"file {file.url} is not valid Parquet ({e})") from None
    except pa.ArrowNotImplementedError as e:  # (valid, but not as Arrow reads it)
        raise SchemaMismatch(f"file {file.url}: Arrow cannot read it ({e})") from None
    except OSError as e:
        if in_memory:
            raise CorruptFile(f"file {file.url} is not valid Parquet ({e})") from None
        e.add_note(f"reading {file.url}")
        raise


def _as(values: pa.Array, t: pa.DataType) -> pa.Array:
    return values if values.type == t else values.cast(t)


def _dense_head(tables: list[pa.Table], schema: pa.Schema, rows: int) -> pa.Table:
    """The first ``rows`` rows of ``tables`` (conformed batches), in the table's types."""
    head, n = [], 0
    for t in tables:
        if n >= rows:
            break
        t = t.slice(0, rows - n)
        head.append(pa.Table.from_arrays([_as(c, f.type) for c, f in
                                          zip(t.columns, schema, strict=True)], schema=schema))
        n += t.num_rows
    return pa.concat_tables(head)


def _combine(tables: list[pa.Table], schema: pa.Schema, dictionary: set[str]) -> pa.Table:
    """``tables`` (conformed batches) as one table of ``schema``: the columns ``dictionary``
    as dictionary arrays sharing one dictionary (so the writer takes their indices as they
    are; ``_used_values`` trims it per row group), the others in the table's types."""
    columns = []
    for i, f in enumerate(schema):
        chunks = [c for t in tables for c in t.column(i).chunks]
        if f.name in dictionary:
            chunks = [c if c.type == f.type else c.cast(f.type) if pa.types.is_dictionary(c.type)
                      else c.dictionary_encode() for c in chunks]
            columns.append(pa.chunked_array(chunks, f.type).unify_dictionaries())
        else:
            columns.append(pa.chunked_array([_as(c, f.type) for c in chunks], f.type))
    return pa.Table.from_arrays(columns, schema=schema)


# a shared dictionary of more bytes than this keeps only the values its rows use (a pass over
# the indices: 1.4 ms a row group of four-valued text, so not where the whole is this small)
DICTIONARY_TRIM_BYTES = 16 << 10


def _used_values(column: pa.ChunkedArray) -> pa.ChunkedArray:
    """``column`` (chunks sharing one dictionary: a row group's) with only the dictionary
    values its rows use, once the dictionary holds more than ``DICTIONARY_TRIM_BYTES`` (the
    writer stores it whole, and the sources' can hold many values, or a few large ones, the
    rows written never use), or where the column has nulls.

    pyarrow's writer (26 at least) states a batch's min and max from the whole dictionary when
    the batch's distinct indices are as many as the dictionary's values, counting null as one:
    a batch with nulls and all values but one gave the row group that value as its (exact) min
    or max, where no row held it. With only values the row group's rows hold, any value it
    states is one of them.
    """
    if not column.num_chunks or (column.chunk(0).dictionary.nbytes <= DICTIONARY_TRIM_BYTES
                                 and not column.null_count):
        return column
    dictionary = column.chunk(0).dictionary
    used = np.zeros(len(dictionary), dtype=bool)
    for c in column.chunks:
        used[c.indices.drop_null().to_numpy()] = True
    if used.all():
        return column
    renumbered = pa.array(np.cumsum(used, dtype=np.int32) - 1)
    kept = dictionary.filter(pa.array(used))
    return pa.chunked_array([pa.DictionaryArray.from_arrays(renumbered.take(c.indices), kept)
                             for c in column.chunks], column.type)


def batches_of(parquet: pq.ParquetFile, row_groups: list[int], columns: list[str],
               **options: Any) -> Iterator[pa.RecordBatch]:
    """``parquet.iter_batches`` of ``columns`` in ``row_groups``; a file with a dictionary
    inside a nested column (list<dictionary<string>>) a row group at a time: each row group
    has a dictionary of its own, and Arrow reads such a column across them as chunks it cannot
    convert ('Nested data conversions not implemented for chunked array outputs')."""
    schema = parquet.schema_arrow
    inside = [schema.field(name).type for name in columns]
    if any(not pa.types.is_dictionary(t) and nests(t, pa.types.is_dictionary) for t in inside):
        return itertools.chain.from_iterable(
            parquet.iter_batches(row_groups=[g], columns=columns, **options) for g in row_groups)
    return parquet.iter_batches(row_groups=row_groups, columns=columns, **options)


class _BucketWriter:
    """Writes one bucket's rows, a new file every ``rows_per_file`` rows (the task's share cut
    into files of one size, ``locators.file_rows``); each file's dictionary and delta-encoded
    columns are chosen from its first row group's rows (``dictionary_columns``,
    ``delta_columns``). Row groups come encoded from rows (``add``) or as a
    source's bytes (``copy``); ``template``: the footer of the table's files
    (``parquet_splice``)."""

    def __init__(self, storage: Storage, partition: PartitionKey, bucket: int,
                 schema: pa.Schema, rows_per_file: int, codec: str,
                 template: parquet_splice.Template) -> None:
        self.storage, self.partition, self.bucket = storage, partition, bucket
        self.schema, self.rows_per_file, self.codec = schema, rows_per_file, codec
        self.template = template
        self.files: list[DataFile] = []
        self._buffer: list[pa.Table] = []
        self._buffered = 0
        self._file: parquet_splice.SplicedWriter | None = None
        self._chosen: list[str] | None = None  # the current file's dictionary columns
        self._delta: list[str] = []  # ... and its delta-encoded ones
        self._file_schema = schema  # the encoder's: text columns with a dictionary as such
        self._passthrough: set[str] = set()
        self._out: Any = None
        self._rel = ""
        self._in_file = 0

    def room(self) -> int:
        """Rows the current file can still take."""
        return self.rows_per_file - self._in_file - self._buffered

    def add(self, data: pa.Table) -> None:
        while data.num_rows:
            room = self.room()
            take = data.slice(0, room)
            data = data.slice(room)
            self._buffer.append(take)
            self._buffered += take.num_rows
            if self._in_file + self._buffered == self.rows_per_file:
                self._close()
            elif self._buffered >= ROW_GROUP_ROWS:
                self._flush(whole_groups=True)

    def copy(self, data: bytes, group: Struct, start: int) -> None:
        """Append a source's row group ``group`` as its bytes ``data`` (which began at byte
        ``start`` of the source); it must fit (``room``)."""
        rows = parquet_splice.group_rows(group)
        assert 0 < rows <= self.room()
        self._flush()
        self._open().copy(data, group, start)
        self._in_file += rows
        if self._in_file == self.rows_per_file:
            self._close()

    def _open(self) -> parquet_splice.SplicedWriter:
        if self._file is None:
            self._rel = layout.new_compacted_file(self.partition, self.bucket)
            self._out = self.storage.open_output(self._rel)
            self._file = parquet_splice.SplicedWriter(self._out, self.template)
        return self._file

    def _flush(self, whole_groups: bool = False) -> None:
        """Write the rows buffered as row groups of ROW_GROUP_ROWS (``whole_groups``: keep
        the rows of a last, smaller one buffered for more to join them)."""
        if not self._buffered:
            return
        if self._chosen is None:
            head = _dense_head(self._buffer, self.schema, DICTIONARY_SAMPLE)
            self._chosen = dictionary_columns(head)
            self._delta = delta_columns(head, self.codec)
            if head.num_rows < DICTIONARY_SAMPLE:
                # a first row group too small to judge by (a few rows before a copied row
                # group, or a small file): a text column its sources store as few-valued
                # dictionaries (read as such: ``dictionary_reads``) gets one too
                self._chosen += sorted({f.name for t in self._buffer for f in t.schema
                                        if pa.types.is_dictionary(f.type)
                                        and f.name not in self._chosen})
            # text columns with a dictionary are written from dictionary arrays
            self._passthrough = {f.name for f in self.schema if f.name in self._chosen
                                 and _dictionary_text(f.type)}
            self._file_schema = pa.schema(
                [f.with_type(pa.dictionary(pa.int32(), f.type)) if f.name in self._passthrough
                 else f for f in self.schema], metadata=self.schema.metadata)
        data = _combine(self._buffer, self._file_schema, self._passthrough)
        end = data.num_rows - data.num_rows % ROW_GROUP_ROWS if whole_groups else data.num_rows
        for at in range(0, end, ROW_GROUP_ROWS):  # a row group at a time
            group = data.slice(at, min(ROW_GROUP_ROWS, end - at))
            for name in self._passthrough:
                i = group.schema.get_field_index(name)
                group = group.set_column(i, group.field(i), _used_values(group.column(i)))
            self._open().write(group, write_options(self.codec, self._chosen, self._delta),
                               ROW_GROUP_ROWS)
        self._in_file += end
        # the rows left, as slices of the batches they came in (not of ``data``: its rows
        # written need not stay in memory)
        rest, skip = [], end
        for t in self._buffer:
            if skip < t.num_rows:
                rest.append(t.slice(skip))
            skip = max(0, skip - t.num_rows)
        self._buffer, self._buffered = rest, self._buffered - end

    def _close(self) -> None:
        self._flush()
        if self._file is None:
            return
        # the footer states the table's types (readers get text, not dictionaries)
        try:
            self._file.close()
        except parquet_splice.NotParquet as e:  # (a defect of ours: say which file)
            raise parquet_splice.NotParquet(
                f"writing {self.storage.url_of(self.storage.path(self._rel))}: {e}; nothing "
                "was committed") from None
        self._out.close()
        self.files.append(files.written(self.storage, self.storage.path(self._rel),
                                        self._in_file))
        self._file, self._out, self._in_file, self._chosen = None, None, 0, None

    def finish(self) -> tuple[DataFile, ...]:
        self._close()
        return tuple(self.files)


# Sources this small are read whole, up to READ_AHEAD_FILES of them ahead of the one being
# decoded, by as many threads: a small file is mostly request latency (an object store's), and
# thousands of small deltas read one after another would cost a round trip or three each.
READ_AHEAD_BYTES = 8 << 20
READ_AHEAD_FILES = 8


class _ReadAhead:
    """Opens the small sources of a task ahead of their turn, whole, in a thread pool."""

    def __init__(self, storage: Storage, sources: list[SourceRows], schema: pa.Schema) -> None:
        self.storage, self.sources = storage, sources
        self.dictionary = dictionary_reads(schema)
        self.small = [s.file.size <= READ_AHEAD_BYTES for s in sources]
        count = sum(self.small)
        self.pool = ThreadPoolExecutor(min(READ_AHEAD_FILES, count)) if count > 1 else None
        self.pending: dict[int, Future[files.Opened]] = {}
        self.next = 0

    def take(self, i: int) -> files.Opened | None:
        """Source ``i`` opened (None: not read ahead; the caller opens it), after asking for
        the next ones."""
        if self.pool is None:
            return None
        self.next = max(self.next, i)
        while self.next < len(self.sources) and len(self.pending) < READ_AHEAD_FILES:
            if self.small[self.next]:
                self.pending[self.next] = self.pool.submit(
                    files.open_source, self.storage, self.sources[self.next].file, True,
                    self.dictionary)
            self.next += 1
        ahead = self.pending.pop(i, None)
        return None if ahead is None else ahead.result()

    def __enter__(self) -> _ReadAhead:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def read_ahead_memory(sources: list[SourceRows]) -> int:
    """The bytes ``_ReadAhead`` may hold for ``sources``."""
    small = sorted((s.file.size for s in sources if s.file.size <= READ_AHEAD_BYTES),
                   reverse=True)
    return sum(small[:READ_AHEAD_FILES]) if len(small) > 1 else 0


@dataclass(frozen=True)
class _Copy:
    """A row group of a source that one bucket keeps whole, stored as the table's files are:
    copied as its bytes ``[start, end)``."""

    bucket: int
    group: Struct
    start: int
    end: int


def _with_statistics(meta: pq.FileMetaData, group: int) -> bool:
    """Whether every column chunk of row group ``group`` has statistics, as the writer's have
    (a source written without them is decoded and written anew, so compacted files have them
    for readers to skip row groups by)."""
    chunks = meta.row_group(group)
    return all(chunks.column(i).is_stats_set for i in range(chunks.num_columns))


def _copies(opened: files.Opened, size: int, wanted: dict[int, np.ndarray],
            template: parquet_splice.Template, least: int) -> dict[int, _Copy]:
    """The row groups of the ``opened`` file (of ``size`` bytes) to copy as bytes, by index:
    each one of at least ``least`` rows and at most ROW_GROUP_ROWS (the writer's size), with
    statistics, all of whose rows one bucket keeps, if the file stores its row groups as the
    table's files do (``template``)."""
    meta = opened.parquet.metadata
    sizes = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)],
                     dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)])
    whole: dict[int, int] = {}
    for b, r in wanted.items():
        kept = np.diff(np.searchsorted(r, starts))
        whole.update((int(g), b) for g in np.flatnonzero((kept == sizes) & (sizes >= least)
                                                         & (sizes <= ROW_GROUP_ROWS))
                     if template.may_take(meta, int(g)) and _with_statistics(meta, int(g)))
    if not whole:  # (a delta's row groups hold rows of every bucket: nothing more to read)
        return {}
    try:
        footer = parquet_splice.footer_of(opened.read_range, size)
    except parquet_splice.NotParquet:
        return {}
    groups = parquet_splice.row_groups(footer)
    if not template.same_layout(footer) or \
            [parquet_splice.group_rows(g) for g in groups] != sizes.tolist():
        return {}
    out = {}
    for g, b in sorted(whole.items()):
        where = parquet_splice.span(groups[g])
        if where is not None and template.takes(groups[g]):
            out[g] = _Copy(b, groups[g], *where)
    return out


def _runs(meta: pq.FileMetaData, copies: dict[int, _Copy]
          ) -> Iterator[tuple[int, int, _Copy | None]]:
    """The file's rows in order, as ``(first, end, copy)``: a row group to copy, or the rows
    between two (``copy`` None) to decode."""
    at = first = 0
    for g in range(meta.num_row_groups):
        rows = meta.row_group(g).num_rows
        if g in copies:
            if at > first:
                yield first, at, None
            yield at, at + rows, copies[g]
            first = at + rows
        at += rows
    if at > first:
        yield first, at, None


def materialize_group(storage: Storage, partition: PartitionKey, group: int,
                      sources: list[SourceRows], schema: pa.Schema, rows_per_file: int,
                      codec: str = DEFAULT_CODEC, threads: bool = True) -> MaterializeOutput:
    """Read each source once and write every bucket's surviving rows of them, in order: row
    groups a bucket keeps whole and that are stored as its files are copied as bytes, the
    other rows decoded and encoded. ``threads``: sources decoded in Arrow's threads (off
    where the round runs a task per core at least: with 2 tasks at a time on 2 cores, each
    decoding in 2 threads, a 20M-row first round took 5% longer)."""
    maybe_fail("materialize")
    template = parquet_splice.Template(schema, write_options(codec))
    writers: dict[int, _BucketWriter] = {}
    totals = bucket_rows(sources)

    def writer(bucket: int) -> _BucketWriter:
        if bucket not in writers:
            writers[bucket] = _BucketWriter(storage, partition, bucket, schema,
                                            file_rows(totals[bucket], rows_per_file), codec,
                                            template)
        return writers[bucket]

    bytes_read = rows = copied = 0
    with _ReadAhead(storage, sources, schema) as ahead:
        for i, source in enumerate(sources):
            wanted = {b: r.array() for b, r in source.rows.items()}
            opened = ahead.take(i) or files.open_source(storage, source.file,
                                                         read_dictionary=ahead.dictionary)
            parquet = opened.parquet
            try:
                copies = {} if source.op_column is not None else _copies(
                    opened, source.file.size, wanted, template, min_copy_rows(rows_per_file))
                for first, end, copy in _runs(parquet.metadata, copies):
                    if copy is not None and writer(copy.bucket).room() >= end - first:
                        # (from the version of the file verified and read)
                        writer(copy.bucket).copy(opened.read_range(copy.start, copy.end),
                                                 copy.group, copy.start)
                        copied += end - first
                        continue
                    part = {b: r[np.searchsorted(r, first):np.searchsorted(r, end)]
                            for b, r in wanted.items()} if copies else wanted
                    for parts in read_split(storage, source.file, part, schema, parquet,
                                            opened.whole, source.op_column, threads):
                        for bucket in sorted(parts):
                            writer(bucket).add(parts.pop(bucket))
            finally:
                opened.close()
            bytes_read += source.file.size
            rows += sum(len(r) for r in source.rows.values())
    written = {b: w.finish() for b, w in sorted(writers.items())}
    return MaterializeOutput(group, written, len(sources), bytes_read, rows, copied)


MIN_GROUP_BYTES = 64 << 20  # decoded bytes a materialize task reads at least...
MAX_GROUP_BYTES = 1 << 30  # ...and at most (unless one source alone is bigger)
# what a source costs a task beyond its rows, as decoded bytes: opening, decoding and
# gathering a 10-row file took 1.7 ms, as long as ~200 KB of a big file's rows. Thousands of
# small files are so cut into tasks for every core, not read in one.
SOURCE_COST_BYTES = 256 << 10
COPY_COST = 1 / 8  # of a compacted file kept whole: its row groups are mostly copied as bytes


def group_sources(plan: RoundPlan, plans: dict[int, BucketPlan],
                  cpus: float) -> list[list[SourceRows]]:
    """Source files with surviving rows, in ordinal order, cut into materialize tasks.

    Tasks get consecutive sources, about 1/(2 x CPUs) of the decoded data each (so every core
    has work), but at least MIN_GROUP_BYTES (fewer, larger files) and at most MAX_GROUP_BYTES;
    each source counts SOURCE_COST_BYTES more than its rows, and where that is most of what
    they cost (thousands of small files) a task gets a CPU's share, not half of it (each task
    writes a file of every bucket its rows go to).
    That many tasks, rounded up to a multiple of the CPUs where there are more tasks than
    CPUs, of about equal cost: a task ends at the source edge nearer a multiple of the equal
    share in the running total, so the cores finish together (cutting a task whenever the next
    source would overflow the share left a remainder: 20 files and 10 small deltas on 2 CPUs
    made 4 tasks of 5 files, then one of the deltas, alone at the end).
    A compacted file one bucket keeps whole (a small file merged, ``small_files``) is mostly
    copied as bytes: its rows count COPY_COST of their decoded bytes, and such files of one
    bucket in a row, with the small files merged that lost rows too, stay in one task (up to
    MAX_GROUP_BYTES), so their rows are cut into files once, not a remainder per task.
    Where a task's share of a bucket ends does not matter to its files' sizes: the task cuts
    it into files of one size (``locators.file_rows``), so a task leaves a small file only of
    a bucket it writes less than half a file's rows of (as with many buckets), or where a file
    holds fewer rows than twice the files the task writes of the bucket (the last is short by
    up to one row per file: 7 rows at 3 a file are 3, 3 and 1).
    """
    by_ordinal: dict[int, dict[int, RowSet]] = {}
    for b, p in plans.items():
        for ordinal, rows in p.sources:
            by_ordinal.setdefault(ordinal, {})[b] = rows
    whole = {o: b for o, rows in by_ordinal.items() if o < SOURCE_BASE and len(rows) == 1
             for b, r in rows.items() if len(r) == plan.sources[o].rows}
    # a bucket's files kept whole or merged (one may also lose rows to the round) stay together
    unit = {**{compacted(b, i): b for b, positions in plan.small.items() for i in positions},
            **whole}
    data = {o: _decoded_bytes(plan, o, by_ordinal[o], o in whole) for o in by_ordinal}
    sizes = {o: n + SOURCE_COST_BYTES for o, n in data.items()}
    cpus = max(1.0, cpus)
    total = sum(sizes.values())
    share = total / (2 * cpus)
    if SOURCE_COST_BYTES * len(sizes) > sum(data.values()):  # (many small files: a task per
        share = max(share, total / cpus)                    # core, not two: fewer files)
    count = max(1, math.ceil(total / min(MAX_GROUP_BYTES, max(MIN_GROUP_BYTES, share)) - 1e-9))
    wave = int(cpus)
    if count > wave:  # (whole waves)
        count = math.ceil(count / wave) * wave
    # a bucket's files kept whole or merged, in a row, are one block (up to MAX_GROUP_BYTES);
    # every other source a block of its own
    blocks: list[tuple[list[int], float]] = []
    for o in sorted(by_ordinal):
        if blocks and o in unit and unit.get(blocks[-1][0][-1]) == unit[o] \
                and blocks[-1][1] + sizes[o] <= MAX_GROUP_BYTES:
            blocks[-1] = (blocks[-1][0] + [o], blocks[-1][1] + sizes[o])
        else:
            blocks.append(([o], sizes[o]))
    step = total / count
    groups: list[list[SourceRows]] = []
    current: list[SourceRows] = []
    current_bytes = done = 0.0
    middle = 0.0  # of the block before, in the running total
    for ordinals, size in blocks:
        # a task ends at the block edge nearer a multiple of the equal share: where one lies
        # between the middles of the blocks either side (one a block spans is passed by)
        passes = (done + size / 2) // step > middle // step
        middle = done + size / 2
        done += size
        if current and (current_bytes + size > MAX_GROUP_BYTES or passes):
            groups.append(current)
            current, current_bytes = [], 0.0
        current += [SourceRows(o, plan.sources[o], by_ordinal[o], plan.op_columns.get(o), sizes[o])
                    for o in ordinals]
        current_bytes += size
    if current:
        groups.append(current)
    return groups


def _decoded_bytes(plan: RoundPlan, ordinal: int, rows: dict[int, RowSet], whole: bool
                   ) -> float:
    """What reading a source costs a task, as decoded bytes: its rows', but those of row
    groups a compacted file keeps whole count COPY_COST of theirs (copied as bytes: for a file
    kept whole, all of them; for one that lost rows, those of its row groups that lost none,
    taken as ROW_GROUP_ROWS each from its first row, as the writer writes them but around
    copies: an estimate)."""
    total = plan.sources[ordinal].rows
    copied = total if whole else 0
    if not whole and ordinal < SOURCE_BASE and len(rows) == 1:
        [kept] = rows.values()
        copied = _whole_groups(kept, total)
    return ((total - copied) + copied * COPY_COST) * plan.row_bytes


def _whole_groups(kept: RowSet, total: int) -> int:
    """The rows of a file's row groups of ROW_GROUP_ROWS (from its first row) that ``kept``
    (of its ``total`` rows) holds every row of."""
    sizes = np.diff(np.append(np.arange(0, total, ROW_GROUP_ROWS), total))
    if kept.bits is None:  # (few rows: numbers)
        return int(sizes[np.bincount(kept.array() // ROW_GROUP_ROWS,
                                     minlength=len(sizes))[:len(sizes)] == sizes].sum())
    # a bitmap: the groups of the rows it lacks (a file that lost few rows: few of them)
    lost = np.zeros(len(sizes), dtype=bool)
    missing = np.flatnonzero(~np.unpackbits(kept.bits, count=kept.span,
                                            bitorder="little").view(bool))
    lost[(missing + kept.first) // ROW_GROUP_ROWS] = True
    if kept.first:  # rows before the bitmap's and after it
        lost[:(kept.first - 1) // ROW_GROUP_ROWS + 1] = True
    if kept.first + kept.span < total:
        lost[(kept.first + kept.span) // ROW_GROUP_ROWS:] = True
    return int(sizes[~lost].sum())


def files_per_bucket(plans: dict[int, BucketPlan], groups: list[list[SourceRows]],
                     rows_per_file: int) -> dict[int, int]:
    """How many files each rewritten bucket has after the round: those kept in place, and
    each group's new ones (``locators.file_count`` of its rows of the bucket)."""
    files = {b: len(p.keep) for b, p in plans.items()}
    for group in groups:
        for b, n in bucket_rows(group).items():
            files[b] = files.get(b, 0) + file_count(n, rows_per_file)
    return files


def bucket_rows(group: list[SourceRows]) -> dict[int, int]:
    """A materialize task's rows of each bucket it writes."""
    rows: dict[int, int] = {}
    for source in group:
        for b, r in source.rows.items():
            rows[b] = rows.get(b, 0) + len(r)
    return rows


def task_memory(plan: RoundPlan, group: list[SourceRows]) -> int:
    """Twice the decoded rows a task reads at a time (a batch of its largest source, and the
    rows gathered from it), plus the buckets' buffers (a row group each, or all the rows it
    writes of a bucket when fewer) and the small sources read ahead."""
    largest = max(batch_rows(s.file.rows, int(s.file.rows * plan.row_bytes))
                  for s in group) * plan.row_bytes
    # per bucket: its rows the task writes (a buffer holds a row group)
    buffered = sum(min(ROW_GROUP_ROWS, n) for n in bucket_rows(group).values())
    return int(2 * largest + buffered * plan.row_bytes) + (64 << 20) + read_ahead_memory(group)
