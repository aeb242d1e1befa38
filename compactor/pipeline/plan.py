"""Step 1: plan a round from a consistent snapshot, sizing every task from Parquet footers.

The plan fixes what the round folds in (every delta above the high watermark, up to the
snapshot's version), the bucket layout, the source files and their ordinals, how many rows go
to an output file, and the ``memory`` each task and actor asks the scheduler for, so that
memory-aware scheduling keeps a round within the machine or cluster. Files larger than
``SPLIT_ROWS`` are hashed in several tasks by row groups; consecutive small files share a task
(up to ``BATCH_ROWS`` rows and ``BATCH_FILES`` files), so thousands of small delta files cost
tens of tasks, not thousands. Of many small files only a sample of footers is read
(``FOOTER_SAMPLE``); the rest are sized from it.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

import pyarrow as pa

from compactor import files
from compactor.errors import FileTooLarge, InvalidTableSpec
from compactor.manifest import CdcOps, CompactedState, DataFile, DeltaKind
from compactor.partition import Partition
from compactor.pipeline import index_store, locators, output_size, small_files
from compactor.pipeline.hash_bucket import HashInput
from compactor.pipeline.materialize import DEFAULT_CODEC
from compactor.snapshot import Snapshot
from compactor.table import Table

SPLIT_ROWS = 4_000_000  # rows per hash task at most (whole row groups)
BATCH_ROWS = 256 * 1024  # files this small share a hash task, up to this many rows in all...
BATCH_FILES = 64  # ...and this many files
RECORD_BYTES = 64  # digest, locator, op and bookkeeping per key record in memory
MIN_TASK_MEMORY = 64 << 20
FOOTER_THREADS = 16
# of many small files (up to BATCH_ROWS rows each: hashed whole, in shared tasks) only the
# FOOTER_SAMPLE largest footers are read; the others' sizes in memory are estimated from those
# (a round of hundreds of small deltas on S3 spent seconds reading footers); each file is
# still checked unchanged when a hash task opens it
FOOTER_SAMPLE = 16


@dataclass(frozen=True)
class HashTask:
    inputs: tuple[HashInput, ...]  # one file or a slice of one, or several small files
    memory: int
    size: int  # bytes of the input files this task covers (its share of a sliced file)

    def describe(self) -> str:
        first = self.inputs[0]
        if len(self.inputs) > 1:
            return f"hash task of {first.file.url} and {len(self.inputs) - 1} more small files"
        return f"hash task of {first.file.url}" + (
            f" (row groups from row {first.first_row})" if first.row_groups is not None else "")


def batch_small(tasks: list[HashTask]) -> list[HashTask]:
    """``tasks`` (one file or slice each) with runs of consecutive whole small files
    (``BATCH_ROWS`` rows in all at most, ``BATCH_FILES`` files) merged into one task each,
    asking for the memory of its files together; every task asks for MIN_TASK_MEMORY at
    least."""
    out: list[HashTask] = []
    batch: list[HashTask] = []
    rows = 0

    def close() -> None:
        if len(batch) == 1:
            out.append(batch[0])
        elif batch:
            out.append(HashTask(tuple(i for t in batch for i in t.inputs),
                                sum(t.memory for t in batch), sum(t.size for t in batch)))
        batch.clear()

    for task in tasks:
        [item] = task.inputs
        n = item.file.rows
        small = item.row_groups is None and n <= BATCH_ROWS
        if not small or rows + n > BATCH_ROWS or len(batch) == BATCH_FILES:
            close()
            rows = 0
        if small:
            batch.append(task)
            rows += n
        else:
            out.append(task)
    close()
    return [replace(t, memory=max(MIN_TASK_MEMORY, t.memory)) for t in out]


@dataclass(frozen=True)
class RoundPlan:
    snapshot: Snapshot
    base: CompactedState | None  # the compacted state whose index the round merges into
    rebuild: bool  # old compacted files are re-hashed (rebase, or no usable index)
    bucket_count: int
    groups: int
    tasks: tuple[HashTask, ...]
    sources: dict[int, DataFile]  # ordinal -> file, for materialize
    high_watermark: int
    rows_per_file: int
    # the bytes a row takes in a compacted file, rows_per_file's ground (None: the inputs'
    # bytes per row stood in, no measure of it)
    file_row_bytes: float | None
    row_bytes: float  # decoded (Arrow) bytes per row, for materialize memory requests
    dedupe_memory: int
    order_type: pa.DataType | None
    # a rebuild's old index chains whose tombstones the new index keeps (with an ordering
    # column: see tombstones.py), each with the source ordinal its records carry; and whether
    # a chain that cannot be read loses its tombstones (the index is known unusable) rather
    # than failing the round
    tombstones: tuple[tuple[tuple[str, ...], int], ...] = ()
    tombstones_tolerant: bool = False
    # the op column of each CDC source (by ordinal): not data, even where a later delta added
    # a table column of that name
    op_columns: dict[int, str] = field(default_factory=dict)
    # per bucket, the positions of the small compacted files the round merges (small_files)
    small: dict[int, tuple[int, ...]] = field(default_factory=dict)

    @property
    def rows_in(self) -> int:
        return sum(d.rows for d in self.snapshot.deltas)

    @property
    def bytes_in(self) -> int:
        return sum(d.size for d in self.snapshot.deltas)

    def group_buckets(self, group: int) -> list[int]:
        return [b for b in range(self.bucket_count)
                if b * self.groups // self.bucket_count == group]

    def small_ordinals(self, group: int) -> list[int]:
        """The ordinals of the small files merged in dedupe group ``group``'s buckets."""
        return [locators.compacted(b, i) for b in self.group_buckets(group)
                for i in self.small.get(b, ())]


def check_bucket_count(table: Table, partition: Partition, bucket_count: int | None) -> None:
    """:class:`InvalidTableSpec` naming the partition unless ``bucket_count`` is None (keep
    the partition's) or between 1 and ``MAX_BUCKETS``."""
    if bucket_count is not None and not 1 <= bucket_count <= locators.MAX_BUCKETS:
        raise InvalidTableSpec(f"partition {partition.key} of {table.url}: bucket count "
                               f"{bucket_count} must be between 1 and {locators.MAX_BUCKETS}")


class NothingToDo(Exception):
    """No delta above the high watermark and no rebase asked for (as of ``snapshot``)."""

    def __init__(self, message: str, snapshot: Snapshot) -> None:
        super().__init__(message)
        self.snapshot = snapshot


def _footer_stats(table: Table, file: DataFile, columns: list[str]) -> tuple[list[int], int, int]:
    """(rows per row group, decoded bytes of ``columns``, decoded bytes of all columns)."""
    parquet = files.open_verified(table.storage, file)
    try:
        meta = parquet.metadata
        leaves = files.top_level_leaves(meta)
        wanted = [leaves[c] for c in columns if c in leaves]
        groups, key_bytes, all_bytes = [], 0, 0
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            groups.append(rg.num_rows)
            all_bytes += rg.total_byte_size
            key_bytes += sum(rg.column(c).total_uncompressed_size for c in wanted)
        return groups, key_bytes, all_bytes
    finally:
        parquet.close()


def _all_footer_stats(table: Table, items: list[tuple[DataFile, int, DeltaKind, CdcOps | None]],
                      key_cols: list[str]) -> list[tuple[list[int], int, int]]:
    """``_footer_stats`` of every item: read, except for small files beyond a sample of
    FOOTER_SAMPLE, whose figures are estimated from the sample's (the most per row and per
    stored byte)."""
    small = [j for j, (f, *_) in enumerate(items) if f.rows <= BATCH_ROWS]
    sample = set(sorted(small, key=lambda j: -items[j][0].size)[:FOOTER_SAMPLE])
    estimated = set(small) - sample if len(small) > FOOTER_SAMPLE else set()
    read = [j for j in range(len(items)) if j not in estimated]

    def stats(j: int) -> tuple[list[int], int, int]:
        file, _, _, cdc = items[j]
        return _footer_stats(table, file, key_cols + ([cdc.column] if cdc is not None else []))

    with ThreadPoolExecutor(FOOTER_THREADS) as pool:
        found = dict(zip(read, pool.map(stats, read), strict=True))
    if estimated:
        key_per_row = max(found[j][1] / max(items[j][0].rows, 1) for j in sample)
        decoded_per_byte = max(found[j][2] / max(items[j][0].size, 1) for j in sample)
        for j in estimated:
            f = items[j][0]
            found[j] = ([f.rows] if f.rows else [], int(f.rows * key_per_row),
                        int(f.size * decoded_per_byte))
    return [found[j] for j in range(len(items))]


def round_work(table: Table, partition: Partition, bucket_count: int | None, rebase: bool,
               rebuild: bool = False) -> tuple[Snapshot, int, bool]:
    """What a round of ``partition`` would do, from its snapshot alone (no footers, no
    runtime): the snapshot, the bucket count, and whether it rewrites the compacted state.
    Raises ``NothingToDo`` (no pending delta, no rewrite asked for or needed), or
    ``InvalidTableSpec`` (a bucket count change without ``rebase``)."""
    snapshot = partition.snapshot()
    # a handle opened before another writer added a column: its schema must cover the
    # snapshot's files (the round writes the table's columns, and records that it did)
    table.metadata_at(snapshot.schema_version)
    compacted = snapshot.compacted
    check_bucket_count(table, partition, bucket_count)
    if compacted is not None and bucket_count is not None \
            and bucket_count != compacted.bucket_count and not rebase:
        raise InvalidTableSpec(
            f"partition {partition.key} of {table.url} is compacted into "
            f"{compacted.bucket_count} buckets; changing that to {bucket_count} is a rebase "
            "(a full rewrite): ask for it with rebase=True (--rebase)"
        )
    count = bucket_count if bucket_count is not None else \
        (compacted.bucket_count if compacted else table.bucket_count)
    rebuild = compacted is not None and (rebase or rebuild
                                         or index_store.paths_of(compacted) is None)
    if not snapshot.deltas and not rebuild:
        raise NothingToDo(f"partition {partition.key} of {table.url} has no pending deltas",
                          snapshot)
    return snapshot, count, rebuild


def plan_round(table: Table, partition: Partition, *, target_file_size: int,
               bucket_count: int | None, rebase: bool, groups: int,
               rebuild: bool = False, compression: str = DEFAULT_CODEC) -> RoundPlan:
    unusable = rebuild  # (the index was found unusable: the round runs again without it)
    snapshot, count, rebuild = round_work(table, partition, bucket_count, rebase, rebuild)
    compacted = snapshot.compacted
    key_cols = [*table.primary_key]
    if table.ordering_column:
        key_cols.append(table.ordering_column)
    items: list[tuple[DataFile, int, DeltaKind, CdcOps | None]] = []
    if rebuild:
        assert compacted is not None
        items += [(f, compacted.high_watermark, DeltaKind.UPSERT, None) for f in compacted.files]
    for d in snapshot.deltas:
        items += [(f, d.position, d.kind, d.cdc) for f in d.files]
    base = None if rebuild else compacted
    with ThreadPoolExecutor(1) as pool:  # (a sample, where one is needed, beside the footers)
        per_row = pool.submit(output_size.estimate, table, base, [
            (f, kind, cdc.column if cdc else None) for f, _, kind, cdc in items], compression)
        stats = _all_footer_stats(table, items, key_cols)
        bytes_per_row, measured = per_row.result()

    tasks: list[HashTask] = []
    sources: dict[int, DataFile] = {}
    op_columns: dict[int, str] = {}
    decoded = 0
    for j, ((file, position, kind, cdc), (rg_rows, key_bytes, all_bytes)) in enumerate(
            zip(items, stats, strict=True)):
        ordinal = locators.source(j)
        if file.rows > locators.MAX_FILE_ROWS:
            raise FileTooLarge(
                f"partition {partition.key} of {table.url}: {file.url} has {file.rows} rows; a "
                f"source file may hold at most {locators.MAX_FILE_ROWS} (rows are located by "
                "32-bit numbers): split it into smaller files; nothing was compacted")
        sources[ordinal] = file
        if cdc is not None:
            op_columns[ordinal] = cdc.column
        decoded += all_bytes
        per_row_key = key_bytes / max(file.rows, 1)
        start = first = 0
        chunk: list[int] = []
        chunk_rows = 0
        for g, n in enumerate([*rg_rows, 0]):
            if chunk and (n == 0 or chunk_rows + n > SPLIT_ROWS):
                whole = len(chunk) == len(rg_rows)
                memory = int(chunk_rows * (2 * per_row_key + RECORD_BYTES))  # batch_small floors it
                tasks.append(HashTask((HashInput(
                    file, ordinal, position, kind, cdc,
                    None if whole else tuple(chunk), first),), memory,
                    file.size * chunk_rows // max(file.rows, 1)))
                first, chunk, chunk_rows = start, [], 0
            if n:
                chunk.append(g)
                chunk_rows += n
                start += n
        if not rg_rows:  # an empty file still gets hashed (it may carry schema only)
            tasks.append(HashTask((HashInput(file, ordinal, position, kind, cdc),), 0,
                                  file.size))
    if base is not None:
        for b, bucket in enumerate(base.buckets):
            for i, f in enumerate(bucket):
                sources[locators.compacted(b, i)] = f
    keys = (base.rows if base is not None else 0) + snapshot.pending_rows
    order_type = (table.schema.field(table.ordering_column).type
                  if table.ordering_column else None)
    groups = max(1, min(groups, count))
    old_chains = index_store.paths_of(compacted) if rebuild and order_type is not None else None
    carried = tuple((tuple(chain), locators.source(len(items) + b))
                    for b, chain in enumerate(old_chains or []) if chain)
    rows_per_file = min(locators.MAX_FILE_ROWS,
                        max(1, int(target_file_size / max(bytes_per_row, 1e-9))))
    return RoundPlan(
        snapshot=snapshot, base=base, rebuild=rebuild, bucket_count=count, groups=groups,
        tasks=tuple(batch_small(tasks)), sources=sources,
        high_watermark=snapshot.deltas[-1].position if snapshot.deltas else
        snapshot.high_watermark,
        rows_per_file=rows_per_file, file_row_bytes=bytes_per_row if measured else None,
        row_bytes=decoded / max(sum(f.rows for f, *_ in items), 1),
        dedupe_memory=max(MIN_TASK_MEMORY, int(3 * keys * RECORD_BYTES / groups)),
        order_type=order_type, tombstones=carried, tombstones_tolerant=unusable,
        op_columns=op_columns,
        small=small_files.to_merge(base.buckets, rows_per_file) if base is not None else {},
    )
