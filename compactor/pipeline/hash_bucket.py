"""Step 2: hash-bucket one source file into key records, grouped by dedupe actor.

Reads only the key, ordering and op columns, computes the key digest (``hashing.key_digest``)
and emits, per group of buckets, the records ``(hi, lo, [order], pos, file, row, op)`` the
dedupe actors merge, sorted by key (``pos`` and ``file``, one value per file, travel once).
Whole rows stay where they are.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compactor import files
from compactor.delta import op_masks
from compactor.errors import NullKey, SchemaMismatch, UnknownOp
from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.hashing import NullKeyError, UnsupportedKeyType, bucket_start, key_digest
from compactor.manifest import CdcOps, DataFile, DeltaKind
from compactor.merge import (
    OP_DELETE,
    OP_UPSERT,
    gather,
    one_array,
    record_schema,
    sort_by_key,
    take_values,
)

WHOLE_FILE_BYTES = 1 << 20  # source files up to this size are read in one request


@dataclass(frozen=True)
class HashInput:
    """One source file of a round and how to read it."""

    file: DataFile
    ordinal: int
    position: int  # stream position of the delta (or the old watermark, for compacted files)
    kind: DeltaKind
    cdc: CdcOps | None
    row_groups: tuple[int, ...] | None = None  # a slice of a large file; None: all of it
    first_row: int = 0  # row index (in the file) of the slice's first row


PER_ROW = -1  # a HashOutput's position and ordinal when its records carry their own


@dataclass(frozen=True)
class HashOutput:
    """Records of one source file, per group of buckets, sorted by key.

    ``pos`` and ``file`` are the same for every record of a file: they travel once, as
    ``position`` and ``ordinal``, not per row (``GroupRecords`` puts them back). Small files
    hashed in one task travel as one output (``combined``), whose records carry their own
    ``pos`` and ``file`` columns (``position`` and ``ordinal`` are ``PER_ROW``).
    """

    records: dict[int, pa.Table]  # group -> records without pos and file
    rows: int
    bytes_read: int
    position: int
    ordinal: int
    peak_rss: int = 0  # of the process that ran it (set by the task wrapper)
    warning: str = ""  # what the round's result should say (a tombstone task's lost deletes)


def _locators(parts: list[tuple[pa.Table, int, int]]) -> tuple[np.ndarray, np.ndarray]:
    """The stream position and file of every record of the runs ``parts`` (records,
    position, ordinal), in order: a run's own ``pos`` and ``file`` columns where it carries
    them (``PER_ROW``), else its one position and ordinal for each of its records."""
    pos = [t.column("pos").to_numpy() if o == PER_ROW else np.full(t.num_rows, p, np.int64)
           for t, p, o in parts]
    file = [t.column("file").to_numpy() if o == PER_ROW else np.full(t.num_rows, o, np.int32)
            for t, p, o in parts]
    return (np.concatenate([np.zeros(0, np.int64), *pos]),
            np.concatenate([np.zeros(0, np.int32), *file]))


class GroupRecords:
    """The records of one group from all hash outputs, as sorted runs (one per output), read
    a range of keys at a time: each run is sorted by key, so a range is a slice of each."""

    def __init__(self, outputs: Sequence[HashOutput | Sequence[HashOutput]],
                 group: int) -> None:
        """``outputs``: hash outputs, or hash tasks' lists of them."""
        flat = [o for x in outputs for o in ([x] if isinstance(x, HashOutput) else x)]
        self.runs = [(o.records[group], o.position, o.ordinal) for o in flat
                     if group in o.records and o.records[group].num_rows]
        self.rows = sum(t.num_rows for t, _, _ in self.runs)
        self.nbytes = sum(t.nbytes for t, _, _ in self.runs)
        self._hi = [t.column("hi").to_numpy() for t, _, _ in self.runs]

    def spans(self) -> dict[int, int]:
        """Per source ordinal, one past the highest row its records name."""
        spans: dict[int, int] = {}
        for t, _, ordinal in self.runs:
            if ordinal != PER_ROW:
                spans[ordinal] = max(spans.get(ordinal, 0),
                                     int(pc.max(t.column("row")).as_py()) + 1)
                continue
            ordinals, at = np.unique(t.column("file").to_numpy(), return_inverse=True)
            ends = np.zeros(len(ordinals), dtype=np.int64)
            np.maximum.at(ends, at, t.column("row").to_numpy().astype(np.int64) + 1)
            for o, end in zip(ordinals.tolist(), ends.tolist(), strict=True):
                spans[o] = max(spans.get(o, 0), end)
        return spans

    def cuts(self, inner: np.ndarray) -> list[np.ndarray]:
        """Per run, its rows cut at the ``hi`` values ``inner``: 0, where each falls, and the
        run's length; ``between(cuts, j)`` reads the records of range j."""
        return [np.concatenate([[0], np.searchsorted(hi, inner), [len(hi)]]).astype(np.int64)
                for hi in self._hi]

    def between(self, cuts: list[np.ndarray], j: int) -> pa.Table | None:
        """Records of run rows ``cuts[r][j]:cuts[r][j + 1]``, as ``merge.record_schema``
        (None when there are none)."""
        parts = [(t.slice(c[j], c[j + 1] - c[j]), position, ordinal)
                 for (t, position, ordinal), c in zip(self.runs, cuts, strict=True)
                 if c[j + 1] > c[j]]
        if not parts:
            return None
        table = pa.concat_tables([t.drop_columns(["pos", "file"]) if o == PER_ROW else t
                                  for t, _, o in parts], promote_options="permissive")
        columns = {name: table.column(name) for name in table.column_names}
        pos, file = _locators(parts)
        columns["pos"], columns["file"] = pa.array(pos), pa.array(file)
        order = table.schema.field("order").type if "order" in columns else None
        return pa.table(columns).select(record_schema(order).names)


def group_bounds(hi: np.ndarray, bucket_count: int, groups: int) -> np.ndarray:
    """Where each group's records start in digests ``hi`` sorted ascending, and their count:
    ``groups + 1`` offsets. Group g holds buckets [g*B/G, (g+1)*B/G), a range of ``hi``: a
    binary search per group, not a pass."""
    # group g's first bucket is the least b with b * groups // bucket_count >= g
    starts = np.array([bucket_start(-(-g * bucket_count // groups), bucket_count)
                       for g in range(1, groups)], dtype=np.uint64)
    return np.concatenate([[0], np.searchsorted(hi, starts), [len(hi)]]).astype(np.int64)


def _ops(data: pa.Table, item: HashInput) -> np.ndarray:
    n = data.num_rows
    if item.kind is DeltaKind.UPSERT:
        return np.full(n, OP_UPSERT, dtype=np.int8)
    if item.kind is DeltaKind.DELETE:
        return np.full(n, OP_DELETE, dtype=np.int8)
    assert item.cdc is not None
    column = data.column(item.cdc.column)
    is_upsert, is_delete = op_masks(column, item.cdc)
    unknown = pc.invert(pc.or_(is_upsert, is_delete))
    if pc.any(unknown).as_py():
        row = pc.index(unknown, True).as_py()
        raise UnknownOp(
            f"{item.file.url}: row {item.first_row + row}: op value {column[row].as_py()!r} in "
            f"column "
            f"{item.cdc.column!r} is neither upsert {list(item.cdc.upsert)} nor delete "
            f"{list(item.cdc.delete)}"
        )
    return np.where(is_delete.to_numpy(zero_copy_only=False), OP_DELETE, OP_UPSERT).astype(np.int8)


def hash_file(
    storage: Storage,
    item: HashInput,
    primary_key: tuple[str, ...],
    ordering_column: str | None,
    order_type: pa.DataType | None,
    bucket_count: int,
    groups: int,
    threads: bool = True,
) -> HashOutput:
    """The records of ``item``. ``threads``: its columns decoded in Arrow's threads (off where
    the round runs a task per core at least: with 2 tasks at a time on 2 cores, each decoding
    in 2 threads, the hash step of 30 files of 1M rows took 7% longer)."""
    maybe_fail("hash_bucket")
    # a small file is read whole, in one request (an object store's latency, not its bytes,
    # is what it costs), then only its key columns decoded; larger ones only in the column
    # chunks the key columns need (a 7 MB delta of 8 columns read whole: +10 ms on local disk)
    parquet = files.open_verified(storage, item.file, whole=item.row_groups is None
                                  and item.file.size <= WHOLE_FILE_BYTES)
    try:
        columns = list(primary_key)
        if ordering_column is not None:
            columns.append(ordering_column)
        if item.kind is DeltaKind.CDC and item.cdc is not None:
            columns.append(item.cdc.column)
        if item.row_groups is None:
            data = parquet.read(columns=columns, use_threads=threads)
        else:
            data = parquet.read_row_groups(list(item.row_groups), columns=columns,
                                           use_threads=threads)
    finally:
        parquet.close()
    if not data.num_rows:  # (an empty file's columns may be of Arrow type null: no keys)
        return HashOutput({}, 0, item.file.size, item.position, item.ordinal)
    try:
        hi, lo = key_digest(data, primary_key)
    except NullKeyError as e:
        raise NullKey(f"{item.file.url}: row {item.first_row + e.row}: null in primary-key column "
                      f"{e.column!r}") from None
    except UnsupportedKeyType as e:
        raise SchemaMismatch(f"{item.file.url}: {e}") from None
    n = data.num_rows
    order = None
    if ordering_column is not None:
        order = one_array(data.column(ordering_column))
        if order_type is not None and order.type != order_type:
            try:
                order = order.cast(order_type)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as e:
                raise SchemaMismatch(
                    f"{item.file.url}: ordering column {ordering_column!r} has type "
                    f"{order.type}, the table's is {order_type}: {e}"
                ) from None
    ops = _ops(data, item)
    schema = record_schema(order_type if ordering_column else None)
    schema = pa.schema([f for f in schema if f.name not in ("pos", "file")])
    # sorted by key, which sorts by bucket and group too (they are ranges of hi): each actor
    # gets sorted runs, which it merges much faster than it sorts (merge.sort_by_key). Each
    # group's records are gathered on their own (a slice of a whole file's arrays would carry
    # the whole buffers into the object store); ``hi``, sorted first to find the groups, is
    # sliced (a view of a numpy array ships only itself)
    by_key, _ = sort_by_key(hi, lo)
    hi = gather(hi, by_key)
    bounds = group_bounds(hi, bucket_count, groups)
    out = {}
    for g in range(groups):
        if bounds[g + 1] == bounds[g]:
            continue
        rows = by_key[bounds[g]:bounds[g + 1]]
        cols: dict[str, pa.Array | np.ndarray] = {"hi": hi[bounds[g]:bounds[g + 1]],
                                                  "lo": gather(lo, rows)}
        if order is not None:
            cols["order"] = take_values(order, rows)
        cols["row"] = (rows + item.first_row).astype(np.int32)
        # (a file's ops are all one but a CDC file's)
        cols["op"] = gather(ops, rows) if item.kind is DeltaKind.CDC else ops[:len(rows)]
        out[g] = pa.table(cols, schema=schema)
    return HashOutput(out, n, item.file.size, item.position, item.ordinal)


def combined(outputs: list[HashOutput]) -> HashOutput:
    """The outputs of several (small) files as one, each group's records one run sorted by
    key that carries every record's ``pos`` and ``file``. A dedupe actor reads a range of
    keys as a slice of every run, so thousands of small files as runs of their own cost it a
    slice each per range (and the object store a table each per group)."""
    if len(outputs) == 1:
        return outputs[0]
    out = {}
    for g in sorted({g for o in outputs for g in o.records}):
        parts = [(o.records[g], o.position, o.ordinal) for o in outputs
                 if g in o.records and o.records[g].num_rows]
        if not parts:
            continue
        table = pa.concat_tables([t for t, _, _ in parts], promote_options="permissive")
        pos, file = _locators(parts)
        table = table.append_column("pos", pa.array(pos)).append_column("file", pa.array(file))
        by_key, _ = sort_by_key(table.column("hi").to_numpy(), table.column("lo").to_numpy())
        out[g] = table.take(pa.array(by_key))
    return HashOutput(out, sum(o.rows for o in outputs), sum(o.bytes_read for o in outputs),
                      PER_ROW, PER_ROW)
