"""What a delta's files must contain, checked before anything is committed.

Per kind, a file must carry:

- UPSERT: the key columns, the ordering column (if the table has one) and every column the table
  declares not nullable. Other table columns may be absent (read as null); new columns are added
  to the table schema as nullable.
- DELETE: the key columns and the ordering column (if any). Other columns are ignored: a delete
  may carry the whole before-image, as CDC exports do.
- CDC: as UPSERT, plus the op column, whose every value must be one of the configured upsert or
  delete values. The op column is not part of the table schema.

Keys may never be null, nor may a column the table declares not nullable in a row the delta
upserts (a CDC delete row's other columns may be null). For a Parquet file, null checks use the
footer's per-row-group null counts and read a column only where those do not prove it
null-free; the op column is read (it is small, and the only way to know its values). Errors
name the file (or "appended data"), the column and the row.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from compactor import files
from compactor.errors import (
    CorruptFile,
    MissingColumn,
    NullKey,
    NullValue,
    SchemaMismatch,
    UnknownOp,
)
from compactor.manifest import CdcOps, DeltaKind, OpValue


@dataclass(frozen=True)
class DeltaSpec:
    """A delta kind applied to one table: which columns its files need and what they hold."""

    kind: DeltaKind
    table_schema: pa.Schema
    primary_key: tuple[str, ...]
    ordering_column: str | None
    cdc: CdcOps | None

    def __post_init__(self) -> None:
        if (self.kind is DeltaKind.CDC) != (self.cdc is not None):
            raise ValueError("a CDC delta needs CdcOps, and only a CDC delta takes them")
        if self.cdc is not None and self.cdc.column in self.table_schema.names:
            raise SchemaMismatch(
                f"CDC op column {self.cdc.column!r} is also a column of the table: its op values "
                "would be read as that column's data; name the op column differently in the "
                "delta's files")

    @property
    def _ordering(self) -> tuple[str, ...]:
        return () if self.ordering_column is None else (self.ordering_column,)

    def required(self) -> tuple[str, ...]:
        if self.kind is DeltaKind.DELETE:
            return (*self.primary_key, *self._ordering)
        not_null = tuple(f.name for f in self.table_schema if not f.nullable)
        op = () if self.cdc is None else (self.cdc.column,)
        return tuple(dict.fromkeys((*self.primary_key, *self._ordering, *not_null, *op)))

    def table_columns(self, schema: pa.Schema, source: str) -> pa.Schema:
        """Check ``schema`` has the required columns, each name once; return the part that is
        table data."""
        repeated = sorted({n for n in schema.names if schema.names.count(n) > 1
                           and (self.kind is not DeltaKind.DELETE or n in self.required())})
        if repeated:  # (a delete's other columns are ignored, repeated or not)
            raise SchemaMismatch(f"{source}: column(s) {repeated} appear more than once")
        for name in self.required():
            if name not in schema.names:
                raise MissingColumn(f"{source}: missing column {name!r} ({self.kind} delta)")
        if self.kind is DeltaKind.DELETE:
            return pa.schema([schema.field(n) for n in self.required()])
        op = None if self.cdc is None else self.cdc.column
        return pa.schema([f for f in schema if f.name != op])

    @property
    def not_null(self) -> tuple[str, ...]:
        """The non-key columns the table declares not nullable, checked in upserted rows."""
        if self.kind is DeltaKind.DELETE:
            return ()
        return tuple(f.name for f in self.table_schema
                     if not f.nullable and f.name not in self.primary_key)

    def check_rows(self, data: pa.Table, source: str, offset: int = 0) -> None:
        """Raise on a null key, an unknown op, or a null in a not-nullable column of an
        upserted row in ``data`` (rows numbered from ``offset``)."""
        self._check(data, self.primary_key, self.not_null, source, offset)

    def _check(self, data: pa.Table, keys: Sequence[str], not_null: Sequence[str], source: str,
               offset: int) -> None:
        for name in keys:
            row = _first(pc.is_null(data.column(name)))
            if row is not None:
                raise NullKey(f"{source}: null in key column {name!r} at row {offset + row}")
        upserts = None
        if self.cdc is not None:
            upserts = self._check_ops(data.column(self.cdc.column), source, offset)
        for name in not_null:
            nulls = pc.is_null(data.column(name))
            row = _first(nulls if upserts is None else pc.and_(nulls, upserts))
            if row is not None:
                raise NullValue(f"{source}: null at row {offset + row} in column {name!r}, "
                                "which the table declares not nullable")

    def _check_ops(self, column: pa.ChunkedArray, source: str, offset: int) -> pa.ChunkedArray:
        """Raise on an op that is neither an upsert nor a delete; else the mask of upserts."""
        assert self.cdc is not None
        allowed = [*self.cdc.upsert, *self.cdc.delete]
        try:
            upsert, delete = op_masks(column, self.cdc)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            raise UnknownOp(
                f"{source}: op column {self.cdc.column!r} has type {column.type}, which cannot "
                f"hold the configured op values {allowed}"
            ) from None
        row = _first(pc.invert(pc.or_(upsert, delete)))
        if row is not None:
            raise UnknownOp(
                f"{source}: op column {self.cdc.column!r} holds {column[row].as_py()!r} at row "
                f"{offset + row}; expected one of {allowed}"
            )
        return upsert

    def check_parquet(self, parquet: pq.ParquetFile, source: str) -> None:
        """:meth:`check_rows` for a Parquet file, reading as little of it as it can."""
        meta = parquet.metadata
        index = files.top_level_leaves(meta)
        offset = 0
        for g in range(meta.num_row_groups):
            group = meta.row_group(g)
            keys, not_null = ([n for n in names if not _proved_not_null(group, index.get(n))]
                              for names in (self.primary_key, self.not_null))
            columns = [*keys, *not_null] if self.cdc is None else [*keys, *not_null,
                                                                   self.cdc.column]
            if columns:
                try:
                    data = parquet.read_row_group(g, columns=columns)
                except (pa.ArrowException, OSError) as e:
                    raise CorruptFile(f"{source}: row group {g} is unreadable ({e})") from None
                self._check(data, keys, not_null, source, offset)
            offset += group.num_rows


def op_masks(column: pa.ChunkedArray | pa.Array, cdc: CdcOps
             ) -> tuple[pa.ChunkedArray | pa.Array, pa.ChunkedArray | pa.Array]:
    """Which rows of CDC op ``column`` are upserts, and which deletes (a null or unknown op is
    neither; a dictionary-encoded column counts by its values). Raises ``ArrowInvalid`` or
    ``ArrowTypeError`` where the column's type cannot hold the configured op values."""
    if pa.types.is_dictionary(column.type):  # (pandas categoricals; files written from them)
        column = column.cast(column.type.value_type)
    def among(ops: tuple[OpValue, ...]) -> pa.ChunkedArray | pa.Array:
        return pc.fill_null(pc.is_in(column, value_set=pa.array(list(ops), column.type)), False)

    return among(cdc.upsert), among(cdc.delete)


def _first(mask: pa.ChunkedArray | pa.Array) -> int | None:
    index = pc.index(mask, True).as_py()
    return None if index < 0 else int(index)


def _proved_not_null(group: pq.RowGroupMetaData, column: int | None) -> bool:
    if column is None:
        return False
    stats = group.column(column).statistics
    return bool(stats is not None and stats.has_null_count and stats.null_count == 0)
