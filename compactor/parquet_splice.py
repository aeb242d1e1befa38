"""Parquet files assembled from whole row groups, encoded or copied as bytes.

A Parquet file is ``PAR1``, its row groups' column chunks, a footer (Thrift ``FileMetaData``,
compact protocol), the footer's length and ``PAR1``. Nothing inside a column chunk refers to its
place in the file; only the footer does (each chunk's page offsets). So a row group is moved
from one file to another by copying its bytes and shifting those offsets.

Materialize writes every compacted file through :class:`SplicedWriter`: pyarrow encodes rows
straight into the output, and a row group of a source that loses no row and is stored exactly
as the output would store it (the same Parquet schema and codec: a compacted file of the table,
typically) is copied in between as bytes, never decoded or encoded. A file with copies gets the
footer pyarrow writes for the table's schema with the same options (:class:`Template`: its
key-value metadata, ``created_by``, column orders), with every row group put in.

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
ARROW_SCHEMA = b"ARROW:schema"
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
        self.metadata: dict[bytes, bytes] = dict(meta.metadata or {})
        self.arrow_schema = schema
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


# pyarrow 17 and later can change a writer's key-value metadata before it closes
_SET_METADATA = hasattr(pq.ParquetWriter, "add_key_value_metadata")


class _Sink:
    """What a pyarrow ``ParquetWriter`` writes to: ``out``, with row groups of other files
    inserted between the writer's (``insert``), and the writer's footer held back once
    ``footer`` is set. Positions the writer sees (``tell``) count only its own bytes."""

    closed = False

    def __init__(self, out: IO[bytes]) -> None:
        self.out = out
        self.out.write(MAGIC)  # (the writer's own is dropped: a file may begin with a copy)
        self.position = 0  # bytes the writer wrote, its magic included
        self.inserted: list[tuple[int, int]] = []  # (writer position, bytes inserted there)
        self.footer: bytearray | None = None

    def write(self, data: Any) -> int:
        if self.footer is None and self.position >= len(MAGIC):  # (nearly every call: a page)
            n = memoryview(data).nbytes
            self.out.write(data)
            self.position += n
            return n
        view = memoryview(data).cast("B")
        if self.footer is not None:
            self.footer += view
        else:
            skip = max(0, min(len(view), len(MAGIC) - self.position))
            if bytes(view[:skip]) != MAGIC[self.position:self.position + skip]:
                raise NotParquet("the Parquet writer did not begin with its magic")
            self.out.write(view[skip:])
        self.position += len(view)
        return len(view)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass  # (``out`` is the caller's to close)

    def insert(self, data: bytes) -> int:
        """Write ``data`` (between two of the writer's row groups); where it begins in
        ``out``."""
        at = max(self.position, len(MAGIC))
        where = at + sum(n for _, n in self.inserted)
        self.out.write(data)
        self.inserted.append((at, len(data)))
        return where

    def moved(self, start: int, end: int) -> int:
        """How far the writer's bytes ``[start, end)`` moved in ``out``: the bytes inserted
        before them (none may be inserted inside)."""
        if any(start < p < end for p, _ in self.inserted):
            raise NotParquet("a row group was copied into the middle of an encoded one")
        return sum(n for p, n in self.inserted if p <= start)


class SplicedWriter:
    """One Parquet file written to ``out``: rows encoded by a pyarrow ``ParquetWriter`` as
    they come (``write``), row groups of other files copied in between as bytes (``copy``).

    Where nothing was copied the file is the writer's, footer and all (its stored Arrow schema
    set to the table's where the writer's differs: ``add_key_value_metadata``). Otherwise the
    writer's footer is held back, its row groups' offsets moved past the copies, and the file
    gets the template's footer (key-value metadata, column orders) with every row group in
    file order."""

    def __init__(self, out: IO[bytes], template: Template) -> None:
        self.out, self.template = out, template
        self.sink = _Sink(out)
        self.writer: pq.ParquetWriter | None = None
        self.copied: list[tuple[int, Struct]] = []  # (offset in the file, row group)

    def write(self, table: pa.Table, options: dict[str, Any], row_group_rows: int) -> None:
        """Encode ``table`` (its schema: the file's first ``write``'s) as row groups."""
        if self.writer is None:
            self.writer = pq.ParquetWriter(self.sink, table.schema, **options)
        self.writer.write_table(table, row_group_size=row_group_rows)

    def copy(self, data: bytes, group: Struct, start: int) -> None:
        """Append the row group ``group`` whose chunks are ``data``, which began at byte
        ``start`` of its file."""
        at = self.sink.insert(data)
        self.copied.append((at, _shifted(group, at - start, 0)))

    def close(self) -> None:
        """Write the footer. ``out`` stays open."""
        stored = self.template.metadata.get(ARROW_SCHEMA)
        if self.writer is not None and not self.copied and (
                _SET_METADATA or self.writer.schema.equals(self.template.arrow_schema)):
            if stored is not None and not self.writer.schema.equals(self.template.arrow_schema):
                self.writer.add_key_value_metadata({ARROW_SCHEMA: stored})
            self.writer.close()
            return
        groups = list(self.copied)
        if self.writer is not None:
            self.sink.footer = bytearray()
            self.writer.close()
            tail = bytes(self.sink.footer)
            length = struct.unpack("<I", tail[-8:-4])[0]
            footer = loads(tail[-8 - length:-8])
            if footer.get(FMD_SCHEMA) != self.template.schema:
                raise NotParquet("the writer's Parquet schema is not the table's")
            for group in row_groups(footer):
                where = span(group)
                if where is None:  # (the writer's options: no page index, no bloom filter)
                    raise NotParquet("an encoded row group that cannot be moved")
                by = self.sink.moved(*where)
                groups.append((where[0] + by, _shifted(group, by, 0)))
        groups.sort(key=lambda g: g[0])
        fields = []
        for f, t, v in self.template.footer.fields:
            if f == FMD_NUM_ROWS:
                v = sum(group_rows(g) for _, g in groups)
            elif f == FMD_ROW_GROUPS:
                v = Sequence(STRUCT, [_shifted(g, 0, i) for i, (_, g) in enumerate(groups)])
            fields.append([f, t, v])
        data = dumps(Struct(fields))
        self.out.write(data + struct.pack("<I", len(data)) + MAGIC)
