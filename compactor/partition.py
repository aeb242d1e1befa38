"""A partition: its stream of deltas (appended or registered in place) and compacted states.

Every write validates first and commits last: files are checked (existence, Parquet footer,
schema, key columns, null keys, CDC ops) before the table schema is evolved or a commit is
attempted, so bad input leaves the partition unchanged. Appends retry a lost commit race at the
next number (a delta does not depend on what came before it); a compaction commit is rebased over
deltas that landed meanwhile (they are above its watermark) but conflicts with another compaction.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from typing import TYPE_CHECKING, Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from compactor import files, layout
from compactor.commit_log import CommitLog, Entry
from compactor.delta import DeltaSpec
from compactor.errors import (
    CommitConflict,
    EmptyDelta,
    NullValue,
    SchemaMismatch,
    UnknownPartition,
)
from compactor.layout import PartitionKey
from compactor.manifest import CdcOps, CompactedState, DataFile, Delta, DeltaKind
from compactor.schema import dates_as_timestamps, evolve, nests, plain_schema
from compactor.snapshot import Snapshot, compaction_entry, delta_entry, is_compaction

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Mapping, Sequence

    from compactor.table import Table

_REGISTER_THREADS = 16  # footers of many files are read concurrently (round trips on S3)


class Partition:
    """One partition of a table. Cheap to create; safe to share between threads."""

    def __init__(self, table: Table, key: PartitionKey) -> None:
        self.table = table
        self.key = key
        self.log = CommitLog(table.storage, key, table.metadata.checkpoint_interval)
        self._known_head = 0  # a commit number known to exist: where head searches start

    def __repr__(self) -> str:
        return f"Partition({self.table.url!r}, {str(self.key)!r})"

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Partition) and other.table.url == self.table.url
                and other.key == self.key)

    def __hash__(self) -> int:
        return hash((self.table.url, self.key))

    @property
    def values(self) -> dict[str, str]:
        return self.key.values

    # -- reading -------------------------------------------------------------------------------
    def version(self) -> int:
        """The newest commit number (0 if the partition has none)."""
        self._known_head = self.log.head(self._known_head or None)
        return self._known_head

    def snapshot(self, version: int | None = None) -> Snapshot:
        """The partition as of commit ``version`` (default: the newest): a consistent view.

        Raises :class:`UnknownPartition` if the partition has no commits, or no such commit.
        """
        if version is not None and version < 1:
            raise UnknownPartition(
                f"partition {self.key} of {self.table.url} has no commit {version}: commits are "
                f"numbered from 1 (the newest is {self.log.head()})")
        snapshot = self.log.load(version)
        if snapshot.version == 0:
            raise UnknownPartition(f"partition {self.key} of {self.table.url} has no commits")
        self._known_head = max(self._known_head, snapshot.version)
        return snapshot

    def deltas(self, since: int = 0, until: int | None = None) -> list[Delta]:
        """Every delta at a position in ``(since, until]`` (``until`` default: newest),
        including deltas already folded into a compacted state. Reads commit files only."""
        head = self.version() if until is None else until
        if head == 0:
            raise UnknownPartition(f"partition {self.key} of {self.table.url} has no commits")
        entries = self.log.read_from(since + 1, head)
        if since + len(entries) < head:
            raise UnknownPartition(
                f"partition {self.key} of {self.table.url} has no commit {since + len(entries) + 1}"
            )
        return [Delta.from_dict(e["delta"]) for e in entries if e.get("kind") == "delta"]

    # -- appending deltas ----------------------------------------------------------------------
    def _spec(self, kind: DeltaKind, cdc: CdcOps | None) -> DeltaSpec:
        if kind is DeltaKind.CDC and cdc is None:
            cdc = CdcOps()
        meta = self.table.metadata
        try:
            return DeltaSpec(DeltaKind(kind), meta.schema, meta.primary_key,
                             meta.ordering_column, cdc)
        except SchemaMismatch as e:
            raise SchemaMismatch(f"partition {self.key} of {self.table.url}: {e}; nothing was "
                                 "committed") from None

    def append(
        self,
        data: pa.Table | pa.RecordBatch,
        *,
        kind: DeltaKind = DeltaKind.UPSERT,
        cdc: CdcOps | None = None,
    ) -> Delta:
        """Write ``data`` as a Parquet file of this partition and commit it as a delta.

        ``cdc`` configures a CDC delta's op column (default ``CdcOps()``: ``Op`` in I/U/D).
        Returns the committed delta; its ``position`` is the stream position.
        """
        if isinstance(data, pa.RecordBatch):
            data = pa.Table.from_batches([data])
        spec = self._spec(kind, cdc)
        source = f"appended data for partition {self.key} of {self.table.url}"
        incoming = spec.table_columns(data.schema, source)
        data = _plain_data(data, source)
        spec.check_rows(data, source)
        if data.num_rows == 0:
            raise EmptyDelta(f"{source}: no rows")
        # the schema is checked before the file is written, and changed only once it is (a
        # write that fails leaves the table as it was, and a file gc removes)
        evolve(self.table.metadata.schema, incoming, source=source)
        rel = layout.new_data_file(self.key)
        with self.table.storage.open_output(rel) as out:
            _write_data(data, out, source)
        written = files.written(self.table.storage, self.table.storage.path(rel), data.num_rows)
        schema_version = self.table.evolve_schema([(incoming, source)])
        return self._commit_delta(spec, (written,), schema_version)

    def register(
        self,
        urls: Iterable[str],
        *,
        kind: DeltaKind = DeltaKind.UPSERT,
        cdc: CdcOps | None = None,
    ) -> Delta:
        """Commit existing Parquet files as one delta, referenced in place (nothing is copied).

        Each file is checked (exists, is Parquet, has the columns the kind needs, no null keys,
        known CDC ops, compatible schema) before anything is committed.
        """
        spec = self._spec(kind, cdc)
        urls = list(urls)
        if not urls:
            raise EmptyDelta(f"partition {self.key} of {self.table.url}: no files to register")

        def inspect(url: str) -> tuple[DataFile, pa.Schema, str]:
            described, parquet = files.describe(self.table.storage, url)
            source = f"file {described.url}"
            with closing(parquet):
                incoming = spec.table_columns(files.arrow_schema(parquet), source)
                spec.check_parquet(parquet, source)
            return described, incoming, source

        with ThreadPoolExecutor(min(_REGISTER_THREADS, len(urls))) as pool:
            inspected = list(pool.map(inspect, urls))
        if sum(f.rows for f, _, _ in inspected) == 0:
            raise EmptyDelta(f"files {urls} hold no rows")
        schema_version = self.table.evolve_schema((s, src) for _, s, src in inspected)
        return self._commit_delta(spec, tuple(f for f, _, _ in inspected), schema_version)

    def _commit_delta(
        self, spec: DeltaSpec, data_files: tuple[DataFile, ...], schema_version: int
    ) -> Delta:
        made: dict[int, Delta] = {}

        def make(number: int, commit_id: str) -> dict[str, Any]:
            made[number] = Delta(number, spec.kind, data_files, schema_version, time.time(),
                                 spec.cdc)
            return delta_entry(made[number], commit_id)

        number = self.log.commit(make, base=self._known_head or self.log.head())
        self._known_head = max(self._known_head, number)
        return made[number]

    # -- compaction ----------------------------------------------------------------------------
    def commit_compaction(
        self,
        base: Snapshot,
        *,
        high_watermark: int,
        buckets: Sequence[Sequence[DataFile]],
        hash_algorithm: str | None = None,
        metrics: Mapping[str, float] | None = None,
        properties: Mapping[str, str] | None = None,
    ) -> CompactedState:
        """Commit a compaction round planned on snapshot ``base``.

        ``buckets[b]`` lists bucket ``b``'s files in stream order; ``high_watermark`` is the last
        stream position folded in. Deltas appended since ``base`` stay pending above the
        watermark; if another compaction committed since ``base``, raises
        :class:`CommitConflict` and commits nothing.
        """
        where = f"partition {self.key} of {self.table.url}"
        if base.partition != self.key:
            raise ValueError(f"{where}: snapshot is of partition {base.partition}")
        if not base.high_watermark <= high_watermark <= base.version:
            raise ValueError(
                f"{where}: high watermark {high_watermark} is outside "
                f"[{base.high_watermark}, {base.version}] of the base snapshot"
            )
        if not buckets:
            raise ValueError(f"{where}: a compacted state needs at least one bucket")
        schema_version = max(base.schema_version, self.table.metadata.version)
        made: dict[int, CompactedState] = {}

        def make(number: int, commit_id: str) -> dict[str, Any]:
            made[number] = CompactedState(
                number, high_watermark, hash_algorithm or self.table.hash_algorithm,
                tuple(tuple(b) for b in buckets), schema_version, time.time(),
                dict(metrics or {}), dict(properties or {}),
            )
            return compaction_entry(made[number], commit_id)

        def rebase(number: int, entry: Entry) -> None:
            if is_compaction(entry):
                raise CommitConflict(
                    f"{where}: another compaction committed at {number} after commit "
                    f"{base.version} this round was planned on; nothing was committed"
                )

        number = self.log.commit(make, base=base.version, rebase=rebase)
        self._known_head = max(self._known_head, number)
        return made[number]


def _plain_data(data: pa.Table, source: str) -> pa.Table:
    """``data`` with every column in its stored type (``schema.plain_schema``): the types the
    table holds, and that Parquet can write (pyarrow cannot write a dictionary with a null among
    its values, nor every nested dictionary or view). :class:`SchemaMismatch` naming a column
    that cannot be converted."""
    for column, field in zip(data.columns, data.schema, strict=True):
        # (a list view keeps its type, so no cast to date32 refuses a time of day under it:
        # the writer drops it)
        if nests(field.type, _is_list_view) and nests(field.type, pa.types.is_date64):
            row = _first_failing_row(column, _whole_days)
            if row is not None:
                raise SchemaMismatch(f"{source}: column {field.name!r} ({field.type}) holds a "
                                     f"date64 with a time of day at row {row}; {_WHOLE_DAYS}")
    target = plain_schema(data.schema)
    if target is data.schema:
        return data
    columns = []
    for column, field, want in zip(data.columns, data.schema, target, strict=True):
        if pa.types.is_dictionary(field.type):  # (a take decodes any value type; cast not)
            column = pa.chunked_array([c.dictionary.take(c.indices) for c in column.chunks],
                                      field.type.value_type)
        if pa.types.is_date64(column.type):
            _check_whole_days(column, field.name, source)
        try:
            columns.append(column if column.type.equals(want.type) else column.cast(want.type))
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError) as e:
            if isinstance(e, pa.ArrowInvalid) and "date64" in str(e):  # (lost a time of day)
                _check_nested_days(column, want.type, field.name, source)
            raise SchemaMismatch(f"{source}: column {field.name!r} of type {field.type} cannot "
                                 f"be stored as {want.type} ({e}); nothing was committed"
                                 ) from None
    return pa.Table.from_arrays(columns, schema=target)


def _check_whole_days(column: pa.ChunkedArray, name: str, source: str) -> None:
    """:class:`SchemaMismatch` naming the first row of the date64 ``column`` that is not a
    whole day (Parquet stores dates as days; pyarrow's writer drops a time of day silently)."""
    at = 0
    for chunk in column.chunks:
        ms = chunk.view(pa.int64()).fill_null(0).to_numpy()
        bad = np.flatnonzero(ms % _MS_PER_DAY)
        if len(bad):
            row = at + int(bad[0])
            value = pa.scalar(int(ms[bad[0]]), pa.timestamp("ms")).as_py()
            raise SchemaMismatch(
                f"{source}: column {name!r} (date64) holds a time of day at row {row} "
                f"({value}); {_WHOLE_DAYS}")
        at += len(chunk)


_MS_PER_DAY = 86_400_000
_WHOLE_DAYS = ("a table stores dates as whole days: cast it to date32, or store a timestamp; "
               "nothing was committed")


def _check_nested_days(column: pa.ChunkedArray, want: pa.DataType, name: str,
                       source: str) -> None:
    """:class:`SchemaMismatch` naming the first row of ``column`` (of a type nesting date64)
    whose cast to ``want`` fails, with its value, times of day shown: a date64 inside it
    that is not a whole day. Returns if every row casts."""

    def casts(values: pa.Array) -> bool:
        try:
            values.cast(want)
        except (pa.ArrowNotImplementedError, pa.ArrowInvalid, pa.ArrowTypeError):
            return False
        return True

    row = _first_failing_row(column, casts)
    if row is not None:
        value = column.take([row]).cast(dates_as_timestamps(column.type))[0].as_py()
        raise SchemaMismatch(
            f"{source}: column {name!r} ({column.type}) holds a date64 with a time of day at "
            f"row {row} ({value}); {_WHOLE_DAYS}")


def _is_list_view(t: pa.DataType) -> bool:
    return pa.types.is_list_view(t) or pa.types.is_large_list_view(t)


def _whole_days(values: pa.Array) -> bool:
    """Whether every date64 in ``values``, at any depth, is a whole day (nulls are)."""
    t = values.type
    if pa.types.is_date64(t):
        return not bool(np.any(values.view(pa.int64()).fill_null(0).to_numpy() % _MS_PER_DAY))
    if pa.types.is_struct(t):
        return all(_whole_days(child) for child in values.flatten())
    if pa.types.is_map(t):
        return _whole_days(values.keys) and _whole_days(values.items)
    if pa.types.is_nested(t):  # (lists and list views of every kind: their values)
        return _whole_days(values.flatten())
    return True


def _first_failing_row(column: pa.ChunkedArray, ok: Callable[[pa.Array], bool]) -> int | None:
    """The first row of ``column`` that ``ok`` fails on, found by testing prefixes (the rows
    before a failing one pass): only on an error path, a few whole-column tests. None if
    every row passes."""
    at = 0
    for chunk in column.chunks:
        if ok(chunk):
            at += len(chunk)
            continue
        lo, hi = 0, len(chunk) - 1  # the first failing row is in [lo, hi]
        while lo < hi:
            mid = (lo + hi) // 2
            # (a take: a sliced list's cast casts its child values past the slice's end too)
            if ok(chunk.take(np.arange(mid + 1))):
                lo = mid + 1
            else:
                hi = mid
        return at + lo
    return None


def _write_data(data: pa.Table, out: Any, source: str) -> None:
    """Write appended ``data`` as Parquet to ``out``; a null where the table declares a field
    inside a column not nullable (which the writer refuses) is a :class:`NullValue` naming
    the column and the row. A column declared not nullable that holds nulls is written
    nullable: ``DeltaSpec`` checked its upserted rows, and a delete may leave it null."""
    schema = pa.schema([f.with_nullable(True) if not f.nullable and column.null_count else f
                        for f, column in zip(data.schema, data.columns, strict=True)],
                       metadata=data.schema.metadata)
    try:
        # (a cast, which checks nested fields' nulls as the writer does, costs 12 ms per 1M
        # rows of text: only where such a column is)
        pq.write_table(data.cast(schema) if schema != data.schema else data, out)
    except pa.ArrowInvalid as e:
        if "non-nullable" not in str(e):
            raise
        for field in schema:
            def writes(values: pa.Array, field: pa.Field = field) -> bool:
                try:
                    pq.write_table(pa.table([values], schema=pa.schema([field])),
                                   pa.BufferOutputStream())
                except pa.ArrowInvalid:
                    return False
                return True

            row = _first_failing_row(data.column(field.name), writes)
            if row is not None:
                raise NullValue(
                    f"{source}: null at row {row} in column {field.name!r} ({field.type}), "
                    f"inside it where the table declares a field not nullable ({e}); nothing "
                    "was committed") from None
        raise
