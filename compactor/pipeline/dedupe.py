"""Step 3: dedupe actors. Each owns a group of buckets and their primary-key indexes.

An actor keeps its buckets' indexes in memory between rounds (tagged with the compacted state
they describe) and reloads them from the persisted index files when it is new, restarted, or
behind. Per round it merges the incoming key records (``merge.merge``), decides per bucket which
compacted files stay in place and which rows of which files make up the rewritten part, and
computes the bucket's next index, whose locators already point into the files materialize is
about to write. The next index is adopted only when the driver reports the commit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.hashing import bucket_of
from compactor.merge import OP_DELETE, merge, record_schema
from compactor.pipeline import index_store, locators
from compactor.pipeline.hash_bucket import HashOutput


@dataclass(frozen=True)
class BucketPlan:
    """What materialize does for one touched bucket."""

    bucket: int
    keep: tuple[int, ...]  # positions in the old bucket file list, referenced in place
    sources: tuple[tuple[int, np.ndarray], ...]  # (file ordinal, sorted rows), in output order
    rows_per_file: int
    index_path: str  # the bucket's next index, already written

    @property
    def rows_out(self) -> int:
        return sum(len(rows) for _, rows in self.sources)


@dataclass(frozen=True)
class GroupResult:
    plans: dict[int, BucketPlan]
    records_in: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    duplicates_dropped: int = 0
    keys: int = 0  # live keys in the group after the round
    peak_index_bytes: int = 0
    index_reloaded: bool = False
    # untouched buckets that had no index file yet (first round, rebuild): their new file
    fresh_index_paths: dict[int, str] = field(default_factory=dict)


class DedupeActor:
    def __init__(self, storage: Storage, partition_dir: str, buckets: list[int],
                 bucket_count: int, order_type: pa.DataType | None) -> None:
        self.storage = storage
        self.partition_dir = partition_dir
        self.buckets = list(buckets)
        self.bucket_count = bucket_count
        self.schema = record_schema(order_type)
        self.index: dict[int, pa.Table] = {}
        self.state: int | None = None  # position of the compacted state the index describes
        self.pending: dict[int, pa.Table] = {}

    def _ensure(self, state: int | None, index_paths: dict[int, str] | None) -> bool:
        """Make ``self.index`` describe compacted state ``state``; True if it was reloaded."""
        if state is None:
            self.index = {b: self.schema.empty_table() for b in self.buckets}
            self.state = None
            return False
        if self.state == state and len(self.index) == len(self.buckets):
            return False
        if index_paths is None:
            raise index_store.IndexUnavailable("the compacted state names no index files")
        self.index = {b: index_store.read(self.storage, index_paths[b], self.schema)
                      for b in self.buckets}
        self.state = state
        return True

    def merge(self, state: int | None, index_paths: dict[int, str] | None,
              bucket_sizes: dict[int, int], rows_per_file: int, group: int,
              outputs: list[HashOutput]) -> GroupResult:
        reloaded = self._ensure(state, index_paths)
        maybe_fail("dedupe")
        parts = [o.records[group] for o in outputs if group in o.records]
        old = pa.concat_tables([self.index[b] for b in self.buckets])
        incoming = (pa.concat_tables(parts, promote_options="permissive") if parts
                    else self.schema.empty_table())
        result = merge(old, incoming)
        superseded = set(result.superseded_files.tolist())
        new = result.index
        live = new.num_rows - int(np.count_nonzero(new.column("op").to_numpy() == OP_DELETE))
        bucket = bucket_of(new.column("hi").to_numpy(), self.bucket_count)
        bounds = np.searchsorted(bucket, np.array([*self.buckets, self.buckets[-1] + 1]))
        plans: dict[int, BucketPlan] = {}
        fresh: dict[int, str] = {}
        self.pending = {}
        for i, b in enumerate(self.buckets):
            part = new.slice(bounds[i], bounds[i + 1] - bounds[i])
            plan, next_index = self._plan_bucket(b, part, superseded, bucket_sizes.get(b, 0),
                                                 rows_per_file)
            if plan is not None:
                plans[b] = plan
                self.pending[b] = next_index
            elif state is None:
                fresh[b] = index_store.new_path(self.partition_dir, b)
                index_store.write(self.storage, fresh[b], next_index)
                self.pending[b] = next_index
        return GroupResult(
            plans, result.records_in, result.inserted, result.updated, result.deleted,
            result.duplicates_dropped, live, old.nbytes + incoming.nbytes + new.nbytes,
            reloaded, fresh,
        )

    def _plan_bucket(self, b: int, index: pa.Table, superseded: set[int], files_before: int,
                     rows_per_file: int) -> tuple[BucketPlan | None, pa.Table]:
        file = index.column("file").to_numpy()
        row = index.column("row").to_numpy()
        tomb = index.column("op").to_numpy() == OP_DELETE
        lost = {o & 0xFFFF for o in superseded
                if 0 <= o < locators.SOURCE_BASE and locators.bucket_of_compacted(o) == b}
        from_sources = (file >= locators.SOURCE_BASE) & ~tomb
        if not lost and not from_sources.any():
            if tomb.any() and (file[tomb] >= 0).any():  # new tombstones: detach from files
                return None, _set(index, "file", np.where(tomb, -1, file).astype(np.int32))
            return None, index
        keep = [i for i in range(files_before) if i not in lost]
        kept_at = np.full(max(files_before, 1), -1, dtype=np.int64)
        kept_at[keep] = np.arange(len(keep))
        position = np.where(from_sources | tomb, 0, file & 0xFFFF)
        rewrite = from_sources | (~tomb & (kept_at[position] < 0))
        new_file = np.where(rewrite | tomb, -1, (b << 16) | kept_at[position]).astype(np.int32)
        new_row = row.copy()
        sel = np.nonzero(rewrite)[0]
        ranked = sel[np.lexsort((row[sel], file[sel]))]
        p = np.arange(len(ranked), dtype=np.int64)
        new_file[ranked] = (b << 16) | (len(keep) + p // rows_per_file)
        new_row[ranked] = p % rows_per_file
        if len(keep) + (len(ranked) + rows_per_file - 1) // rows_per_file \
                > locators.MAX_FILES_PER_BUCKET:
            raise ValueError(f"bucket {b} would hold more than 65536 files; raise the target "
                             "file size or the bucket count (rebase)")
        files_sorted, rows_sorted = file[ranked], row[ranked]
        cuts = np.nonzero(np.diff(files_sorted))[0] + 1
        sources = tuple((int(f[0]), r) for f, r in zip(np.split(files_sorted, cuts),
                                                        np.split(rows_sorted, cuts), strict=True)
                        if len(f))
        next_index = _set(_set(index, "file", new_file), "row", new_row)
        path = index_store.new_path(self.partition_dir, b)
        index_store.write(self.storage, path, next_index)
        return BucketPlan(b, tuple(keep), sources, rows_per_file, path), next_index

    def commit(self, state: int) -> None:
        """The round committed as compacted state ``state``: adopt the next indexes."""
        self.index.update(self.pending)
        self.pending = {}
        self.state = state

    def abort(self) -> None:
        self.pending = {}

    def loaded_state(self) -> int | None:
        return self.state


def _set(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))
