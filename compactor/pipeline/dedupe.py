"""Step 3: dedupe actors. Each owns a group of buckets and their primary-key indexes.

An actor keeps its buckets' indexes in memory between rounds (tagged with the compacted state
they describe) and reloads them from the persisted index files when it is new, restarted, or
behind. A round talks to it four times:

1. ``fold``: fold the incoming key records into the index (``merge.merge``, a range of keys
   at a time: ``sliced_merge``); the driver then frees the records;
2. ``plan``: say, per bucket, which compacted files stay in place and which rows of which
   files survive (``rewrite_map``); (``merge`` is both, for callers that keep the records);
3. ``finalize``: given how the driver grouped source files into materialize tasks, point the
   next index at the rows' places in the files those tasks write, and persist it;
4. ``commit`` (or ``abort``): adopt the next index once the round is committed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

import runtime
from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.hashing import bucket_of, bucket_start
from compactor.merge import OP_DELETE, MergeResult, index_schema, record_schema
from compactor.pipeline import index_store, locators
from compactor.pipeline.hash_bucket import GroupRecords, HashOutput
from compactor.pipeline.rewrite_map import RewriteMap
from compactor.pipeline.row_sets import RowSet
from compactor.pipeline.sliced_merge import merge_in_slices


@dataclass(frozen=True)
class BucketPlan:
    """What one touched bucket needs: files kept in place and rows to rewrite."""

    bucket: int
    files_before: int  # files the bucket had
    keep: tuple[int, ...]  # positions in the old bucket file list, referenced in place
    sources: tuple[tuple[int, RowSet], ...]  # (file ordinal, rows rewritten), ordinal order

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


_CHUNK = 1 << 20  # entries handled at a time where a pass over all would need big temporaries


@dataclass
class _Pending:
    index: pa.Table | None = None  # the group's next index, sorted by key
    bounds: np.ndarray | None = None  # bucket i of the group: index rows bounds[i]:bounds[i+1]
    plans: dict[int, BucketPlan] = field(default_factory=dict)
    touched: dict[int, bool] = field(default_factory=dict)  # bucket -> got records this round
    chains: dict[int, list[str]] = field(default_factory=dict)  # bucket -> next index chain
    rewrite: RewriteMap | None = None  # the entries whose rows are rewritten, and where to
    # positions in the index of the entries the merge brought in (None: all of them, a first
    # round or a rebuild, whose indexes are written whole); per bucket, the (hi, lo) of the
    # keys it removed
    entered: np.ndarray | None = None
    gone: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    # the index's file and row columns as numpy arrays of its own, which finalize updates
    file: np.ndarray | None = None
    row: np.ndarray | None = None


@dataclass
class _Folded:
    """What ``plan`` needs of a ``fold``: its merge, and of the records only summaries."""

    result: MergeResult
    per_bucket: np.ndarray  # records per bucket of the group
    spans: dict[int, int]  # rows of each file the records came from
    state: int | None
    bucket_sizes: dict[int, tuple[int, ...]]
    reloaded: bool
    nbytes: int


class DedupeActor:
    """The index of a group of buckets is one table sorted by key (a bucket is a range of
    ``hi``, found by binary search), so a round neither concatenates nor splits it."""

    def __init__(self, storage: Storage, partition_dir: str, buckets: list[int],
                 bucket_count: int, order_type: pa.DataType | None) -> None:
        self.storage = storage
        self.partition_dir = partition_dir
        self.buckets = list(buckets)
        self.bucket_count = bucket_count
        self.records_schema = record_schema(order_type)
        self.schema = index_schema(order_type)
        self.index: pa.Table | None = None
        self.chains: dict[int, list[str]] = {}  # the persisted chain of each bucket's index
        self.state: int | None = None  # position of the compacted state the index describes
        self.pending = _Pending()
        self._folded: _Folded | None = None
        last = self.buckets[-1] + 1
        self._starts = np.array([bucket_start(b, bucket_count) for b in self.buckets]
                                + ([bucket_start(last, bucket_count)] if last < bucket_count
                                   else []), dtype=np.uint64)

    def _bounds(self, index: pa.Table) -> np.ndarray:
        """Bucket i of the group holds index rows ``bounds[i]:bounds[i + 1]``."""
        bounds = np.searchsorted(index.column("hi").to_numpy(), self._starts)
        return bounds if len(bounds) > len(self.buckets) else np.append(bounds, index.num_rows)

    def _ensure(self, state: int | None, chains: dict[int, list[str]] | None) -> bool:
        """Make ``self.index`` describe compacted state ``state``; True if it was reloaded."""
        if state is None:
            self.index = self.schema.empty_table()
            self.chains = {b: [] for b in self.buckets}
            self.state = None
            return False
        if self.state == state and self.index is not None:
            return False
        if chains is None:
            raise index_store.IndexUnavailable("the compacted state names no index files")
        parts = [index_store.read(self.storage, chains[b], self.schema) for b in self.buckets]
        self.index = pa.concat_tables(parts).combine_chunks()
        self.chains = {b: list(chains[b]) for b in self.buckets}
        self.state = state
        return True

    def merge(self, state: int | None, index_paths: dict[int, list[str]] | None,
              bucket_sizes: dict[int, tuple[int, ...]], group: int,
              outputs: Sequence[HashOutput | Sequence[HashOutput]]) -> GroupResult:
        """``fold`` then ``plan``."""
        self.fold(state, index_paths, bucket_sizes, group, outputs)
        return self.plan()

    def fold(self, state: int | None, index_paths: dict[int, list[str]] | None,
             bucket_sizes: dict[int, tuple[int, ...]], group: int,
             outputs: Sequence[HashOutput | Sequence[HashOutput]]) -> None:
        """Merge the round's records (group ``group`` of the hash ``outputs``) into the index
        of compacted state ``state``; keeps what ``plan`` needs of them, so the caller may free
        the records before the plans are made."""
        reloaded = self._ensure(state, index_paths)
        maybe_fail("dedupe")
        old = self.index
        assert old is not None
        records = GroupRecords(outputs, group)
        end = self.buckets[-1] + 1
        result = merge_in_slices(old, records, self.records_schema, int(self._starts[0]),
                                 bucket_start(end, self.bucket_count),
                                 keep_entered=state is not None)
        # records per bucket of the group (a bucket is a range of hi)
        per_bucket = np.diff(sum(records.cuts(self._starts[1:len(self.buckets)]),
                                 np.zeros(len(self.buckets) + 1, dtype=np.int64)))
        self._folded = _Folded(result, per_bucket, records.spans(), state, bucket_sizes,
                               reloaded, old.nbytes + records.nbytes + result.index.nbytes)

    def plan(self) -> GroupResult:
        """After ``fold``: per bucket, the files kept in place and the rows to rewrite."""
        if self._folded is None:  # an actor that died is retried as such (jobs retry it)
            where = self.storage.url_of(self.storage.path(self.partition_dir))
            raise runtime.ActorDiedError(
                f"partition {where}: the dedupe actor of buckets {self.buckets[0]}-"
                f"{self.buckets[-1]} holds no folded round (it restarted after folding, or the "
                "round was aborted or planned already; the records are freed): nothing was "
                "committed; run the round again")
        folded, self._folded = self._folded, None
        result, records_per_bucket, spans = folded.result, folded.per_bucket, folded.spans
        state, bucket_sizes = folded.state, folded.bucket_sizes
        end = self.buckets[-1] + 1
        new = result.index
        op = new.column("op").to_numpy()
        live = new.num_rows - int(np.count_nonzero(op == OP_DELETE))
        bounds = self._bounds(new)
        edges = np.array([*self.buckets, end])
        gone_bucket = np.searchsorted(edges, bucket_of(result.gone_hi, self.bucket_count),
                                      side="right") - 1
        lost = result.superseded_files[(result.superseded_files >= 0)
                                       & (result.superseded_files < locators.SOURCE_BASE)]
        file, row = result.columns["file"], result.columns["row"]
        counts = (result.records_in, result.inserted, result.updated, result.deleted,
                  result.duplicates_dropped)
        # a first round's entries all entered: no list of them (as big as the index)
        self.pending = _Pending(index=new, bounds=bounds, file=file, row=row,
                                entered=None if state is None else result.entered)
        gone_hi, gone_lo = result.gone_hi, result.gone_lo
        del result
        # rewritten: live rows of this round's sources and of compacted files that lost a row
        rewrite = locators.is_source(file)
        if len(lost):
            rewrite |= member(file, lost)
        rewrite &= op != OP_DELETE
        for o in lost.tolist():
            spans[o] = bucket_sizes[locators.bucket_of_compacted(o)][o & 0xFFFF]
        ordinals = np.array(sorted(spans), dtype=np.int64)
        self.pending.rewrite = RewriteMap(ordinals, np.array([spans[o] for o in ordinals.tolist()],
                                                             dtype=np.int64),
                                          file, row, rewrite, bounds)
        for i, b in enumerate(self.buckets):
            mine = gone_bucket == i
            self.pending.gone[b] = (gone_hi[mine], gone_lo[mine])
            self.pending.touched[b] = bool(records_per_bucket[i])
            plan = _plan_bucket(b, lost, len(bucket_sizes.get(b, ())), [
                (f.ordinal, RowSet.of(f.rows[i])) for f in self.pending.rewrite.files
                if i in f.rows])
            if plan is not None:
                self.pending.plans[b] = plan
        return GroupResult(dict(self.pending.plans), *counts, live, folded.nbytes,
                           folded.reloaded)

    def finalize(self, groups: list[list[int]], rows_per_file: int
                 ) -> tuple[dict[int, list[str]], list[str]]:
        """Point the next index at the files materialize writes; persist what changed.

        ``groups`` lists the source ordinals of each materialize task, in task order; task g
        writes bucket b's rows of its sources in (ordinal, row) order, a new file every
        ``rows_per_file`` rows. Returns the next index chain of every bucket whose index
        changed, and the files written.
        """
        pending = self.pending
        assert pending.index is not None and pending.bounds is not None
        assert pending.file is not None and pending.row is not None
        group_of = {o: g for g, ordinals in enumerate(groups) for o in ordinals}
        index, bounds, file, row = pending.index, pending.bounds, pending.file, pending.row
        # tombstones point at no file (their rows are never materialized); only entries that
        # came in this round can still point at one
        entered = pending.entered
        op = index.column("op").to_numpy()
        if entered is None:  # every entry
            attached = np.concatenate([np.zeros(0, dtype=np.int64)] + [
                i + np.flatnonzero((op[i:i + _CHUNK] == OP_DELETE) & (file[i:i + _CHUNK] >= 0))
                for i in range(0, len(op), _CHUNK)])
        else:
            attached = np.concatenate([np.zeros(0, dtype=np.int64)] + [
                e[(op[e] == OP_DELETE) & (file[e] >= 0)]
                for e in (entered[i:i + _CHUNK] for i in range(0, len(entered), _CHUNK))])
        file[attached] = -1
        moved = [attached]
        # kept files behind a lost one move up in their bucket's file list (found before the
        # rewritten rows get their new ordinals, which may be the same numbers)
        for i, b in enumerate(self.buckets):
            plan = pending.plans.get(b)
            if plan is not None:
                moved.append(_shift_kept(b, plan, int(bounds[i]), int(bounds[i + 1]), file))
        assert pending.rewrite is not None
        kept = [len(pending.plans[b].keep) if b in pending.plans else 0 for b in self.buckets]
        try:
            pending.rewrite.relocate(file, row, group_of, self.buckets, kept, rows_per_file)
        except ValueError as e:  # too many files for a bucket: say whose, nothing is committed
            where = self.storage.url_of(self.storage.path(self.partition_dir))
            raise ValueError(f"partition {where}: {e}; nothing was committed") from None
        index = _set(_set(index, "file", file), "row", row)  # shares the arrays, no copy
        pending.index = index
        changed = None
        if entered is not None:  # what the merge brought in, and what moved to new files
            changed = np.zeros(index.num_rows, dtype=bool)
            changed[entered] = True
            changed |= pending.rewrite.selected
            for m in moved:
                changed[m] = True
        written: list[str] = []
        for i, b in enumerate(self.buckets):
            lo, hi = int(bounds[i]), int(bounds[i + 1])
            part = index.slice(lo, hi - lo)
            chain = self.chains.get(b, [])
            next_chain = self._persist(b, part, chain,
                                       None if changed is None else changed[lo:hi])
            if next_chain is not None:
                pending.chains[b] = next_chain
                written.append(next_chain[-1])
        return dict(pending.chains), written

    def _persist(self, b: int, part: pa.Table, chain: list[str],
                 changed: np.ndarray | None) -> list[str] | None:
        """Write bucket ``b``'s next index, whole (a base) or as a delta on ``chain``; the next
        chain, or None when nothing about the bucket's keys changed."""
        count = 0 if changed is None else int(np.count_nonzero(changed))
        if changed is not None and chain and not self.pending.touched[b] and not count:
            return None
        gone_hi, gone_lo = self.pending.gone[b]
        delta_rows = count + len(gone_hi)
        if changed is None or not chain or len(chain) >= index_store.MAX_CHAIN \
                or delta_rows * 4 > part.num_rows:
            rel = index_store.new_path(self.partition_dir, b, "base")
            index_store.write(self.storage, rel, part)
            return [rel]
        gone = np.empty(len(gone_hi), dtype=index_store.KEY)
        gone["hi"], gone["lo"] = gone_hi, gone_lo
        rel = index_store.new_path(self.partition_dir, b, "delta")
        index_store.write(self.storage, rel, pa.concat_tables(
            [part.filter(pa.array(changed)), index_store.absent(gone, self.schema)]))
        return [*chain, rel]

    def commit(self, state: int) -> None:
        """The round committed as compacted state ``state``: adopt the next indexes."""
        self.index = self.pending.index
        self.chains.update(self.pending.chains)
        self.pending = _Pending()
        self.state = state

    def abort(self) -> None:
        self.pending = _Pending()
        self._folded = None

    def loaded_state(self) -> int | None:
        return self.state


def _plan_bucket(b: int, lost: np.ndarray, files_before: int,
                 sources: list[tuple[int, RowSet]]) -> BucketPlan | None:
    """Bucket ``b``'s plan; ``sources``: its rewritten rows (sorted) of each file, in ordinal
    order; ``lost``: compacted ordinals (any bucket) that lost a row."""
    lost_here = {o & 0xFFFF for o in lost.tolist() if locators.bucket_of_compacted(o) == b}
    if not lost_here and not sources:
        return None
    keep = tuple(i for i in range(files_before) if i not in lost_here)
    return BucketPlan(b, files_before, keep, tuple(sources))


def _shift_kept(b: int, plan: BucketPlan, first: int, end: int, file: np.ndarray
                ) -> np.ndarray:
    """Renumber bucket ``b``'s entries (group positions ``first:end``) in kept files that
    move up in the bucket's file list, in ``file``; returns their positions."""
    shifted = [(position, at) for at, position in enumerate(plan.keep) if position != at]
    if not shifted:
        return np.zeros(0, dtype=np.int64)
    old = np.array([(b << 16) | p for p, _ in shifted], dtype=np.int32)
    moves = first + np.flatnonzero(member(file[first:end], old))
    file[moves] = (b << 16) | np.array([a for _, a in shifted])[np.searchsorted(old,
                                                                               file[moves])]
    return moves


def member(values: np.ndarray, of: np.ndarray) -> np.ndarray:
    """Mask of the int32 ``values`` that are in ``of``: a lookup in a table of flags over
    ``of``'s range when that is small (lost files of a few buckets), else by hashing (np.isin
    would sort both)."""
    if not len(of):
        return np.zeros(len(values), dtype=bool)
    low, span = int(of.min()), int(of.max()) - int(of.min())
    if low < 0 or span >= 1 << 22 or low + span + 1 > np.iinfo(values.dtype).max:
        return pc.is_in(pa.array(values), value_set=pa.array(of)).to_numpy(zero_copy_only=False)
    flags = np.zeros(span + 3, dtype=bool)  # a False slot below and above the range
    flags[np.asarray(of, dtype=np.int64) - low + 1] = True
    return flags[np.clip(values, low - 1, low + span + 1) - (low - 1)]


def _set(table: pa.Table, name: str, values: np.ndarray) -> pa.Table:
    return table.set_column(table.schema.get_field_index(name), name, pa.array(values))
