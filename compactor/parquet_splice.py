"""Parquet files assembled from whole row groups, encoded or copied as bytes.

A Parquet file is ``PAR1``, its row groups' column chunks, a footer (Thrift ``FileMetaData``,
compact protocol), the footer's length and ``PAR1``. Nothing inside a column chunk refers to its
place in the file; only the footer does (each chunk's page offsets). So a row group is moved
from one file to another by copying its bytes and shifting those offsets.

Materialize writes every compacted file this way (:class:`Assembler`): it encodes rows with
pyarrow into a small in-memory file and moves that file's row groups into the output, and a
row group of a source that loses no row and is stored exactly as the output would store it (the
same Parquet schema and codec: a compacted file of the table, typically) is copied as bytes,
never decoded or encoded. The output's footer is the one pyarrow writes for the table's schema
with the same options (:class:`Template`: its key-value metadata, ``created_by``, column
orders), with the row groups put in.

Not copied: row groups with page indexes, bloom filters, encrypted or external column chunks,
or chunks that do not lie one after another (:func:`span`); their rows are decoded as any
other's.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from compactor.thrift_compact import STRUCT, Sequence, Struct, ThriftError, dumps, loads

MAGIC = b"PAR1"
# parquet.thrift field ids
FMD_SCHEMA, FMD_NUM_ROWS, FMD_ROW_GROUPS, FMD_ENCRYPTION = 2, 3, 4, 8
RG_COLUMNS, RG_NUM_ROWS, RG_FILE_OFFSET, RG_ORDINAL = 1, 3, 5, 7
CC_FILE_PATH, CC_FILE_OFFSET, CC_META = 1, 2, 3
CC_OFFSET_INDEX, CC_COLUMN_INDEX, CC_CRYPTO, CC_ENCRYPTED = 4, 6, 8, 9
CM_CODEC, CM_COMPRESSED = 4, 7
CM_DATA_PAGE, CM_INDEX_PAGE, CM_DICTIONARY_PAGE, CM_BLOOM = 9, 10, 11, 14
_OFFSETS = (CM_DATA_PAGE, CM_INDEX_PAGE, CM_DICTIONARY_PAGE)
_NOT_MOVABLE = (CC_FILE_PATH, CC_OFFSET_INDEX, CC_COLUMN_INDEX, CC_CRYPTO, CC_ENCRYPTED)

TAIL_BYTES = 64 << 10  # read from a file's end at once: its footer, most often


class NotParquet(ValueError):
    """Bytes that do not end as a Parquet file does."""


def footer_of(read: Callable[[int, int], bytes | memoryview], size: int) -> Struct:
    """The footer of a Parquet file of ``size`` bytes, read through ``read(start, end)``."""
    if size < 12:
        raise NotParquet(f"{size} bytes is too short for Parquet")
    start = max(0, size - TAIL_BYTES)
    tail = read(start, size)
    if tail[-4:] != MAGIC:
        raise NotParquet("no Parquet magic at the end")
    length = struct.unpack("<I", tail[-8:-4])[0]
    if length + 12 > size:
        raise NotParquet(f"a footer of {length} bytes in a file of {size}")
    if length + 8 > len(tail):
        tail = read(size - 8 - length, size)
    try:
        return loads(memoryview(tail)[len(tail) - 8 - length:len(tail) - 8])
    except ThriftError as e:
        raise NotParquet(f"footer: {e}") from None


def row_groups(footer: Struct) -> list[Struct]:
    groups = footer.get(FMD_ROW_GROUPS)
    return list(groups.items) if groups is not None else []


def group_rows(group: Struct) -> int:
    return int(group.get(RG_NUM_ROWS))


def _chunks(group: Struct) -> list[Struct]:
    return list(group.get(RG_COLUMNS).items)


def span(group: Struct) -> tuple[int, int] | None:
    """The bytes ``[start, end)`` of the row group's column chunks, or None if it cannot be
    moved as bytes (page indexes, bloom filters, encryption, chunks in another file, or
    chunks with gaps between them)."""
    start, end, total = None, 0, 0
    for chunk in _chunks(group):
        meta = chunk.get(CC_META)
        if meta is None or any(chunk.has(f) for f in _NOT_MOVABLE) or meta.has(CM_BLOOM):
            return None
        first = meta.get(CM_DICTIONARY_PAGE) or meta.get(CM_DATA_PAGE)
        size = meta.get(CM_COMPRESSED)
        if not first or size is None:
            return None
        start = first if start is None else min(start, first)
        end, total = max(end, first + size), total + size
    if start is None or end - start != total:
        return None
    return start, end


def _shifted(group: Struct, by: int, ordinal: int) -> Struct:
    """``group`` with every offset moved by ``by`` bytes (a copy: ``group`` is left as is)."""
    columns = []
    for chunk in _chunks(group):
        meta = chunk.get(CC_META)
        meta = Struct([[f, t, v + by if f in _OFFSETS and v else v] for f, t, v in meta.fields])
        columns.append(Struct([
            [f, t, meta if f == CC_META else v + by if f == CC_FILE_OFFSET and v else v]
            for f, t, v in chunk.fields]))
    fields: list[list[Any]] = []
    for f, t, v in group.fields:
        if f == RG_COLUMNS:
            v = Sequence(STRUCT, columns)
        elif f == RG_FILE_OFFSET and v:
            v += by
        elif f == RG_ORDINAL:
            v = ordinal
        fields.append([f, t, v])
    return Struct(fields)


class Template:
    """The footer pyarrow writes for ``schema`` with the writer ``options``: what an assembled
    file states about itself, and the test of which row groups it may take as they are."""

    def __init__(self, schema: pa.Schema, options: dict[str, Any]) -> None:
        sink = pa.BufferOutputStream()
        pq.write_table(schema.empty_table(), sink, **options)
        data = sink.getvalue().to_pybytes()
        self.footer = footer_of(lambda s, e: data[s:e], len(data))
        self.schema = self.footer.get(FMD_SCHEMA)
        [empty] = row_groups(self.footer)  # (a table of no rows is one empty row group)
        self.codecs = [c.get(CC_META).get(CM_CODEC) for c in _chunks(empty)]
        # the same as pyarrow reads them: a first test that needs no footer parsed here
        meta = pq.read_metadata(pa.BufferReader(data))
        self.parquet_schema = meta.schema
        self.codec_names = [meta.row_group(0).column(i).compression
                            for i in range(meta.num_columns)]

    def may_take(self, meta: pq.FileMetaData, group: int) -> bool:
        """Whether row group ``group`` of the file with footer ``meta`` (as pyarrow read it)
        may be stored as this template's are: the same Parquet schema and codecs (``same_layout``
        and ``takes`` decide, on the footer's bytes)."""
        chunks = meta.row_group(group)
        return meta.schema.equals(self.parquet_schema) and [
            chunks.column(i).compression for i in range(chunks.num_columns)] == self.codec_names

    def same_layout(self, footer: Struct) -> bool:
        """Whether row groups of the file with this ``footer`` are stored as this template's
        files store theirs (the same Parquet schema, unencrypted)."""
        return footer.get(FMD_SCHEMA) == self.schema and not footer.has(FMD_ENCRYPTION)

    def takes(self, group: Struct) -> bool:
        """Whether ``group`` (of a file of the same layout) can be copied as bytes: movable
        and compressed with this template's codec in every column."""
        return span(group) is not None and [
            c.get(CC_META).get(CM_CODEC) for c in _chunks(group)] == self.codecs


class Assembler:
    """Writes one Parquet file to ``out`` from row groups given as bytes."""

    def __init__(self, out: IO[bytes], template: Template) -> None:
        self.out, self.template = out, template
        self.out.write(MAGIC)
        self.at = len(MAGIC)
        self.groups: list[Struct] = []
        self.rows = 0

    def add(self, data: bytes | memoryview, group: Struct, start: int) -> None:
        """Append the row group ``group`` whose chunks are ``data``, which began at byte
        ``start`` of its file."""
        self.out.write(data)
        self.groups.append(_shifted(group, self.at - start, len(self.groups)))
        self.at += len(data)
        self.rows += group_rows(group)

    def add_file(self, data: pa.Buffer) -> None:
        """Append every row group of the Parquet file ``data`` (in memory)."""
        view = memoryview(data).cast("B")  # (pyarrow's is of signed bytes)
        footer = footer_of(lambda s, e: view[s:e], len(view))
        if footer.get(FMD_SCHEMA) != self.template.schema:
            raise NotParquet("an encoded file's Parquet schema is not the table's")
        for group in row_groups(footer):
            where = span(group)
            if where is None:  # (the writer's options: no page index, no bloom filter)
                raise NotParquet("an encoded row group that cannot be moved")
            self.add(view[where[0]:where[1]], group, where[0])

    def close(self) -> None:
        fields = []
        for f, t, v in self.template.footer.fields:
            if f == FMD_NUM_ROWS:
                v = self.rows
            elif f == FMD_ROW_GROUPS:
                v = Sequence(STRUCT, self.groups)
            fields.append([f, t, v])
        footer = dumps(Struct(fields))
        self.out.write(footer + struct.pack("<I", len(footer)) + MAGIC)


def encode(table: pa.Table, options: dict[str, Any], row_group_rows: int) -> pa.Buffer:
    """``table`` as an in-memory Parquet file written with ``options``."""
    sink = pa.BufferOutputStream()
    with pq.ParquetWriter(sink, table.schema, **options) as writer:
        writer.write_table(table, row_group_size=row_group_rows)
    return sink.getvalue()

