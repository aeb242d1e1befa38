"""Step 3: dedupe actors. Each owns a group of buckets and their primary-key indexes.

An actor keeps its buckets' indexes in memory between rounds (tagged with the compacted state
they describe) and reloads them from the persisted index files when it is new, restarted, or
behind. A round talks to it three times:

1. ``merge``: fold the incoming key records into the index (``merge.merge``) and say, per
   bucket, which compacted files stay in place and which rows of which files survive;
2. ``finalize``: given how the driver grouped source files into materialize tasks, point the
   next index at the rows' places in the files those tasks write, and persist it;
3. ``commit`` (or ``abort``): adopt the next index once the round is committed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.hashing import bucket_of
from compactor.merge import OP_DELETE, merge, record_schema
from compactor.pipeline import index_store, locators
from compactor.pipeline.hash_bucket import HashOutput, group_records


@dataclass(frozen=True)
class BucketPlan:
    """What one touched bucket needs: files kept in place and rows to rewrite."""

    bucket: int
    files_before: int  # files the bucket had
    keep: tuple[int, ...]  # positions in the old bucket file list, referenced in place
    sources: tuple[tuple[int, np.ndarray], ...]  # (file ordinal, sorted rows), ordinal order

    @property
    def lost(self) -> set[int]:
        return set(range(self.files_before)) - set(self.keep)

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


def files_per_group(counts: list[int], rows_per_file: int) -> list[int]:
    """Files a bucket gets from each materialize group, given its row count in each."""
    return [(n + rows_per_file - 1) // rows_per_file for n in counts]


@dataclass
class _Pending:
    index: dict[int, pa.Table] = field(default_factory=dict)  # bucket -> merged index
    plans: dict[int, BucketPlan] = field(default_factory=dict)
    touched: dict[int, bool] = field(default_factory=dict)  # bucket -> got records this round
    chains: dict[int, list[str]] = field(default_factory=dict)  # bucket -> next index chain
    # bucket -> its index entries whose rows are rewritten, in (file, row) order
    rewrite: dict[int, np.ndarray] = field(default_factory=dict)
    # bucket -> positions of the entries the merge brought in; the (hi, lo) of keys it removed
    entered: dict[int, np.ndarray] = field(default_factory=dict)
    gone: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    full: bool = False  # write every bucket's index whole (first round, rebuild)


class DedupeActor:
    def __init__(self, storage: Storage, partition_dir: str, buckets: list[int],
                 bucket_count: int, order_type: pa.DataType | None) -> None:
        self.storage = storage
        self.partition_dir = partition_dir
        self.buckets = list(buckets)
        self.bucket_count = bucket_count
        self.schema = record_schema(order_type)
        self.index: dict[int, pa.Table] = {}
        self.chains: dict[int, list[str]] = {}  # the persisted chain of each bucket's index
        self.state: int | None = None  # position of the compacted state the index describes
        self.pending = _Pending()

    def _ensure(self, state: int | None, chains: dict[int, list[str]] | None) -> bool:
        """Make ``self.index`` describe compacted state ``state``; True if it was reloaded."""
        if state is None:
            self.index = {b: self.schema.empty_table() for b in self.buckets}
            self.chains = {b: [] for b in self.buckets}
            self.state = None
            return False
        if self.state == state and len(self.index) == len(self.buckets):
            return False
        if chains is None:
            raise index_store.IndexUnavailable("the compacted state names no index files")
        self.index = {b: index_store.read(self.storage, chains[b], self.schema)
                      for b in self.buckets}
        self.chains = {b: list(chains[b]) for b in self.buckets}
        self.state = state
        return True

    def merge(self, state: int | None, index_paths: dict[int, list[str]] | None,
              bucket_sizes: dict[int, int], group: int,
              outputs: list[HashOutput]) -> GroupResult:
        reloaded = self._ensure(state, index_paths)
        maybe_fail("dedupe")
        old = pa.concat_tables([self.index[b] for b in self.buckets])
        incoming = group_records(outputs, group)
        if incoming is None:
            incoming = self.schema.empty_table()
        result = merge(old, incoming)
        superseded = set(result.superseded_files.tolist())
        new = result.index
        live = new.num_rows - int(np.count_nonzero(new.column("op").to_numpy() == OP_DELETE))
        edges = np.array([*self.buckets, self.buckets[-1] + 1])
        bounds = np.searchsorted(bucket_of(new.column("hi").to_numpy(), self.bucket_count),
                                 edges)
        incoming_bucket = bucket_of(incoming.column("hi").to_numpy(), self.bucket_count)
        records_per_bucket = np.bincount(incoming_bucket, minlength=self.bucket_count)
        self.pending = _Pending(full=state is None)
        rewrite = _rewritten_by_bucket(new, superseded, bounds)
        entered = np.split(result.entered, np.searchsorted(result.entered, bounds[1:-1]))
        gone_bucket = np.searchsorted(edges, bucket_of(result.gone_hi, self.bucket_count),
                                      side="right") - 1
        for i, b in enumerate(self.buckets):
            part = new.slice(bounds[i], bounds[i + 1] - bounds[i])
            self.pending.index[b] = part
            self.pending.entered[b] = entered[i] - bounds[i]
            mine = gone_bucket == i
            self.pending.gone[b] = (result.gone_hi[mine], result.gone_lo[mine])
            self.pending.touched[b] = bool(records_per_bucket[b])
            plan = _plan_bucket(b, part, superseded, bucket_sizes.get(b, 0), rewrite[i])
            if plan is not None:
                self.pending.plans[b] = plan
                self.pending.rewrite[b] = rewrite[i]
        return GroupResult(
            dict(self.pending.plans), result.records_in, result.inserted, result.updated,
            result.deleted, result.duplicates_dropped, live,
            old.nbytes + incoming.nbytes + new.nbytes, reloaded,
        )

    def finalize(self, groups: list[list[int]], rows_per_file: int
                 ) -> tuple[dict[int, list[str]], list[str]]:
        """Point the next index at the files materialize writes; persist what changed.

        ``groups`` lists the source ordinals of each materialize task, in task order; task g
        writes bucket b's rows of its sources in (ordinal, row) order, a new file every
        ``rows_per_file`` rows. Returns the next index chain of every bucket whose index
        changed, and the files written.
        """
        group_of = {o: g for g, ordinals in enumerate(groups) for o in ordinals}
        written: list[str] = []
        for b in self.buckets:
            index = self.pending.index[b]
            plan = self.pending.plans.get(b)
            moved = np.zeros(index.num_rows, dtype=bool)
            if plan is not None:
                index, moved = _relocate(b, index, plan, self.pending.rewrite[b], group_of,
                                         len(groups), rows_per_file)
            else:
                index = _detach_tombstones(index)
            self.pending.index[b] = index
            chain = self.chains.get(b, [])
            if not self.pending.full and chain and not self.pending.touched[b] \
                    and not moved.any():
                continue  # nothing about this bucket's keys changed
            gone = np.empty(0, dtype=index_store.KEY)
            if self.pending.full or not chain:
                changed = np.ones(index.num_rows, dtype=bool)
            else:  # what the merge brought in or removed, and what moved to new files
                changed = moved
                changed[self.pending.entered[b]] = True
                gone_hi, gone_lo = self.pending.gone[b]
                gone = np.empty(len(gone_hi), dtype=index_store.KEY)
                gone["hi"], gone["lo"] = gone_hi, gone_lo
            delta_rows = int(changed.sum()) + len(gone)
            if self.pending.full or not chain or len(chain) >= index_store.MAX_CHAIN \
                    or delta_rows * 4 > index.num_rows:
                rel = index_store.new_path(self.partition_dir, b, "base")
                index_store.write(self.storage, rel, index)
                self.pending.chains[b] = [rel]
            else:
                rel = index_store.new_path(self.partition_dir, b, "delta")
                delta = pa.concat_tables([index.filter(pa.array(changed)),
                                          index_store.absent(gone, self.schema)])
                index_store.write(self.storage, rel, delta)
                self.pending.chains[b] = [*chain, rel]
            written.append(rel)
        return dict(self.pending.chains), written

    def commit(self, state: int) -> None:
        """The round committed as compacted state ``state``: adopt the next indexes."""
        self.index.update(self.pending.index)
        self.chains.update(self.pending.chains)
        self.pending = _Pending()
        self.state = state

    def abort(self) -> None:
        self.pending = _Pending()

    def loaded_state(self) -> int | None:
        return self.state


def _lost_files(superseded: set[int], bucket: int) -> set[int]:
    """Positions in bucket ``bucket``'s file list of its compacted files that lost a row."""
    return {o & 0xFFFF for o in superseded
            if 0 <= o < locators.SOURCE_BASE and locators.bucket_of_compacted(o) == bucket}


def _rewritten_by_bucket(index: pa.Table, superseded: set[int],
                         bounds: np.ndarray) -> list[np.ndarray]:
    """Per bucket (``bounds`` cut the index into them): the positions, local to the bucket, of
    live entries whose rows get rewritten, in (file, row) order.

    Rewritten: rows from this round's sources, and live rows of compacted files that lost a
    row (superseded files; compacted ordinals name their bucket, so the test is per entry).
    One locator ordering for the whole group of buckets, then a stable split by bucket.
    """
    file = index.column("file").to_numpy()
    live = index.column("op").to_numpy() != OP_DELETE
    lost = np.array(sorted(o for o in superseded if 0 <= o < locators.SOURCE_BASE),
                    dtype=np.int32)
    rewrite = live & (locators.is_source(file) | (
        pc.is_in(pa.array(file), value_set=pa.array(lost)).to_numpy(zero_copy_only=False)
        if len(lost) else False))
    sel = np.flatnonzero(rewrite)
    ranked = sel[locators.sort_by_locator(file[sel], index.column("row").to_numpy()[sel])]
    bucket = (np.searchsorted(bounds, ranked, side="right") - 1).astype(np.int16)
    order = np.argsort(bucket, kind="stable")  # a radix sort: 16-bit keys
    by_bucket = ranked[order]
    cuts = np.searchsorted(bucket[order], np.arange(len(bounds)))
    return [by_bucket[cuts[i]:cuts[i + 1]] - bounds[i] for i in range(len(bounds) - 1)]


def _plan_bucket(b: int, index: pa.Table, superseded: set[int], files_before: int,
                 rewrite: np.ndarray) -> BucketPlan | None:
    """``rewrite``: the entries whose rows are rewritten, in (file, row) order."""
    lost = _lost_files(superseded, b)
    if not lost and not len(rewrite):
        return None
    keep = tuple(i for i in range(files_before) if i not in lost)
    files_sorted = index.column("file").to_numpy()[rewrite]
    rows_sorted = index.column("row").to_numpy()[rewrite]
    cuts = np.flatnonzero(np.diff(files_sorted)) + 1
    sources = tuple((int(f[0]), r) for f, r in zip(np.split(files_sorted, cuts),
                                                    np.split(rows_sorted, cuts), strict=True)
                    if len(f))
    return BucketPlan(b, files_before, keep, sources)


def _relocate(b: int, index: pa.Table, plan: BucketPlan, ranked: np.ndarray,
              group_of: dict[int, int], n_groups: int, rows_per_file: int
              ) -> tuple[pa.Table, np.ndarray]:
    """The index with rewritten rows (``ranked``, in (file, row) order) pointing at their new
    files; and which entries moved."""
    file = index.column("file").to_numpy()
    row = index.column("row").to_numpy()
    tomb = index.column("op").to_numpy() == OP_DELETE
    kept_at = np.full(max(plan.files_before, 1), -1, dtype=np.int64)
    kept_at[list(plan.keep)] = np.arange(len(plan.keep))
    rewrite = np.zeros(len(file), dtype=bool)
    rewrite[ranked] = True
    position = np.where(rewrite | tomb, 0, file & 0xFFFF)
    new_file = np.where(rewrite | tomb, -1, (b << 16) | kept_at[position]).astype(np.int32)
    new_row = row.copy()
    known = np.array(sorted(group_of), dtype=np.int64)
    group_at = np.array([group_of[o] for o in known.tolist()], dtype=np.int64)
    group = group_at[np.searchsorted(known, file[ranked])] if len(ranked) else \
        np.zeros(0, dtype=np.int64)
    counts = np.bincount(group, minlength=n_groups)
    first_file = len(plan.keep) + np.concatenate(
        [[0], np.cumsum(files_per_group(counts.tolist(), rows_per_file))[:-1]]).astype(np.int64)
    start_of_group = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    rank = np.arange(len(ranked), dtype=np.int64) - start_of_group[group]
    new_file[ranked] = (b << 16) | (first_file[group] + rank // rows_per_file)
    new_row[ranked] = rank % rows_per_file
    if len(plan.keep) + int(sum(files_per_group(counts.tolist(), rows_per_file))) \
            > locators.MAX_FILES_PER_BUCKET:
        raise ValueError(f"bucket {b} would hold more than 65536 files; raise the target "
                         "file size or rebase to more buckets")
    moved = (new_file != file) | (new_row != row)
    return _set(_set(index, "file", new_file), "row", new_row), moved


def _detach_tombstones(index: pa.Table) -> pa.Table:
    """Tombstones point at no file (their rows are never materialized)."""
    file = index.column("file").to_numpy()
    tomb = index.column("op").to_numpy() == OP_DELETE
    if not (tomb & (file >= 0)).any():
        return index
    return _set(index, "file", np.where(tomb, -1, file).astype(np.int32))


def _set(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))
