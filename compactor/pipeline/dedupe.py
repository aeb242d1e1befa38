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
4. ``commit`` (or ``abort``): the round committed (or not).

The index is a ``live_index.LiveIndex``: an incremental round folds its records into it in
place, so from ``fold`` on it describes the round's next state; an actor whose round aborts or
fails drops it and reloads the committed state's persisted index when next asked.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

import runtime
from compactor.faults import maybe_fail
from compactor.fs import Storage
from compactor.hashing import bucket_of, bucket_start
from compactor.merge import OP_DELETE, OP_UPSERT, MergeResult, index_schema, record_schema
from compactor.pipeline import index_store, locators
from compactor.pipeline.hash_bucket import GroupRecords, HashOutput
from compactor.pipeline.live_index import IN_PLACE_FRACTION, IN_PLACE_RECORDS, LiveIndex
from compactor.pipeline.rewrite_map import RewriteMap
from compactor.pipeline.row_sets import RowSet
from compactor.pipeline.sliced_merge import SLICE_RECORDS, merge_in_slices, slice_edges


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
    plans: dict[int, BucketPlan] = field(default_factory=dict)
    touched: dict[int, bool] = field(default_factory=dict)  # bucket -> got records this round
    chains: dict[int, list[str]] = field(default_factory=dict)  # bucket -> next index chain
    rewrite: RewriteMap | None = None  # the entries whose rows are rewritten, and where to
    # positions in the index of the entries the merge brought in (None: all of them, a first
    # round or a rebuild, whose indexes are written whole); per bucket, the (hi, lo) of the
    # keys it removed
    entered: np.ndarray | None = None
    gone: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    copied: bool = False  # the fold merged a copy of the index (not in place)


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
    copied: bool  # merged a copy of the index (not in place)


class DedupeActor:
    """The index of a group of buckets is one ``LiveIndex`` (a bucket is a range of ``hi``),
    so a round neither concatenates nor splits it."""

    def __init__(self, storage: Storage, partition_dir: str, buckets: list[int],
                 bucket_count: int, order_type: pa.DataType | None) -> None:
        self.storage = storage
        self.partition_dir = partition_dir
        self.buckets = list(buckets)
        self.bucket_count = bucket_count
        self.records_schema = record_schema(order_type)
        self.schema = index_schema(order_type)
        self.index: LiveIndex | None = None
        self.chains: dict[int, list[str]] = {}  # the persisted chain of each bucket's index
        # position of the committed state the index describes (None: none, or the index holds
        # a round not yet committed)
        self.state: int | None = None
        self.pending = _Pending()
        self._folded: _Folded | None = None
        last = self.buckets[-1] + 1
        self._starts = np.array([bucket_start(b, bucket_count) for b in self.buckets]
                                + ([bucket_start(last, bucket_count)] if last < bucket_count
                                   else []), dtype=np.uint64)

    def _range(self, i: int) -> tuple[int, int | None]:
        """The ``hi`` range [first, end) of bucket i of the group (end None: no upper end)."""
        return int(self._starts[i]), int(self._starts[i + 1]) if i + 1 < len(self._starts) \
            else None

    def _bucket_of(self, positions: np.ndarray) -> np.ndarray | int:
        """Bucket (of the group) of the index entries at ``positions``."""
        if len(self.buckets) == 1:
            return 0
        assert self.index is not None
        return np.searchsorted(self._starts[1:len(self.buckets)],
                               self.index.columns["hi"][positions], side="right")

    def _ensure(self, state: int | None, chains: dict[int, list[str]] | None) -> bool:
        """Make ``self.index`` describe compacted state ``state``; True if it was reloaded."""
        if state is None:
            self.index = LiveIndex.of(self.schema.empty_table(), headroom=False)
            self.chains = {b: [] for b in self.buckets}
            return False
        if self.state == state and self.index is not None:
            return False
        self.index, self.state = None, None
        if chains is None:
            raise index_store.IndexUnavailable("the compacted state names no index files")
        parts = [index_store.read(self.storage, chains[b], self.schema) for b in self.buckets]
        self.index = LiveIndex.of(pa.concat_tables(parts))
        self.chains = {b: list(chains[b]) for b in self.buckets}
        self.state = state
        return True

    def merge(self, state: int | None, index_paths: dict[int, list[str]] | None,
              bucket_sizes: dict[int, tuple[int, ...]], group: int,
              outputs: Sequence[HashOutput | Sequence[HashOutput]],
              prior: int | None = None, small: Sequence[int] = ()) -> GroupResult:
        """``fold`` then ``plan``."""
        self.fold(state, index_paths, bucket_sizes, group, outputs, prior)
        return self.plan(small)

    def fold(self, state: int | None, index_paths: dict[int, list[str]] | None,
             bucket_sizes: dict[int, tuple[int, ...]], group: int,
             outputs: Sequence[HashOutput | Sequence[HashOutput]],
             prior: int | None = None) -> None:
        """Merge the round's records (group ``group`` of the hash ``outputs``) into the index
        of compacted state ``state``; keeps what ``plan`` needs of them, so the caller may free
        the records before the plans are made. ``prior``: a rebuild's old high watermark (its
        records up to it are the compacted state it re-hashes: for the round's counts)."""
        reloaded = self._ensure(state, index_paths)
        maybe_fail("dedupe")
        index = self.index
        assert index is not None
        self.state = None  # from here on the index holds this round: not a committed state
        records = GroupRecords(outputs, group)
        end = self.buckets[-1] + 1
        result = None
        in_place = state is not None and index.n > 0 and \
            records.rows <= max(IN_PLACE_RECORDS, index.n // IN_PLACE_FRACTION) and \
            all(index.accepts(run) for run, _, _ in records.runs)
        if in_place and index.needs_rebuild():
            self.index = index = index.rebuilt()
            in_place = index.n > 0  # (every key may have left)
        if in_place:  # a range of keys at a time, as the merge of a copy below
            slices = max(1, -(-records.rows // SLICE_RECORDS))
            cuts = records.cuts(slice_edges(int(self._starts[0]),
                                            bucket_start(end, self.bucket_count), slices))
            result = index.fold(t for t in (records.between(cuts, j) for j in range(slices))
                                if t is not None)
        peak = index.nbytes + records.nbytes
        if result is None:  # a copy, merged slice by slice
            self.index = None
            result = merge_in_slices(index.sorted_table(), records, self.records_schema,
                                     int(self._starts[0]), bucket_start(end, self.bucket_count),
                                     keep_entered=state is not None, prior=prior)
            del index
            self.index = LiveIndex.adopt(result)
            peak += self.index.nbytes
            # the merge's temporaries and the old index (hundreds of MB) would otherwise stay
            # in this process's heap (kept for reuse) while the materialize tasks run
            runtime.release_free_memory()
        assert self.index is not None
        # records per bucket of the group (a bucket is a range of hi)
        per_bucket = np.diff(sum(records.cuts(self._starts[1:len(self.buckets)]),
                                 np.zeros(len(self.buckets) + 1, dtype=np.int64)))
        self._folded = _Folded(result, per_bucket, records.spans(), state, bucket_sizes,
                               reloaded, max(peak, self.index.nbytes + records.nbytes),
                               copied=not in_place)

    def plan(self, small: Sequence[int] = ()) -> GroupResult:
        """After ``fold``: per bucket, the files kept in place and the rows to rewrite;
        ``small``: ordinals of compacted files rewritten whole (``small_files``), merged
        into fuller ones."""
        if self._folded is None:
            raise self._lost("folded", "folding", "planned already; the records are freed")
        folded, self._folded = self._folded, None
        result, records_per_bucket, spans = folded.result, folded.per_bucket, folded.spans
        state, bucket_sizes = folded.state, folded.bucket_sizes
        index = self.index
        assert index is not None
        end = self.buckets[-1] + 1
        op, file = index.column("op"), index.column("file")
        edges = np.array([*self.buckets, end])
        gone_bucket = np.searchsorted(edges, bucket_of(result.gone_hi, self.bucket_count),
                                      side="right") - 1
        lost = result.superseded_files[(result.superseded_files >= 0)
                                       & (result.superseded_files < locators.SOURCE_BASE)]
        if len(small):  # (a file of both: its lost rows, as a file only losing them)
            lost = np.union1d(lost, np.asarray(small, dtype=lost.dtype))
        counts = (result.records_in, result.inserted, result.updated, result.deleted,
                  result.duplicates_dropped)
        # a first round's entries all entered: no list of them (as big as the index)
        entered = None if state is None else result.entered
        self.pending = _Pending(entered=entered, copied=folded.copied)
        gone_hi, gone_lo = result.gone_hi, result.gone_lo
        # rewritten: live rows of this round's sources (only entries that entered this round
        # point at one) and of compacted files that lost a row (every row of such a file but
        # those it lost is live: the map needs only the lost ones, the merge's superseded)
        complement = None
        if entered is None:
            rewrite = locators.is_source(file) & (op == OP_UPSERT)
        else:
            rewrite = np.sort(entered[locators.is_source(file[entered])
                                      & (op[entered] == OP_UPSERT)])
            superseded = result.superseded[
                np.isin(result.superseded >> 32, lost.astype(np.int64))]
            by_file = np.argsort(superseded >> 32, kind="stable")
            cuts = np.searchsorted(superseded[by_file] >> 32, lost.astype(np.int64))
            cuts = np.append(cuts, len(superseded))
            complement = {
                o: (self.buckets.index(locators.bucket_of_compacted(o)),
                    superseded[by_file[cuts[k]:cuts[k + 1]]] & 0xFFFFFFFF)
                for k, o in enumerate(lost.tolist())}
        del result
        for o in lost.tolist():
            spans[o] = bucket_sizes[locators.bucket_of_compacted(o)][o & 0xFFFF]
        ordinals = np.array(sorted(spans), dtype=np.int64)
        try:
            self.pending.rewrite = RewriteMap(
                ordinals, np.array([spans[o] for o in ordinals.tolist()], dtype=np.int64),
                file, index.column("row"), rewrite, self._bucket_of, len(self.buckets),
                complement)
        except ValueError as e:  # a corrupt index: say whose (the round rebuilds it)
            raise self._named(e) from None
        # the rows of each file (RowSets: a bitmap where dense) are only the plans' to take:
        # the map keeps no list of them
        files, self.pending.rewrite.files = self.pending.rewrite.files, []
        for i, b in enumerate(self.buckets):
            mine = gone_bucket == i
            self.pending.gone[b] = (gone_hi[mine], gone_lo[mine])
            self.pending.touched[b] = bool(records_per_bucket[i])
            plan = _plan_bucket(b, lost, len(bucket_sizes.get(b, ())), [
                (f.ordinal, f.rows[i]) for f in files if i in f.rows])
            if plan is not None:
                self.pending.plans[b] = plan
        del files
        return GroupResult(dict(self.pending.plans), *counts, index.live, folded.nbytes,
                           folded.reloaded)

    def finalize(self, groups: list[list[int]], rows_per_file: int
                 ) -> tuple[dict[int, list[str]], list[str]]:
        """Point the next index at the files materialize writes; persist what changed.

        ``groups`` lists the source ordinals of each materialize task, in task order; task g
        writes bucket b's rows of its sources in (ordinal, row) order, into the fewest files of
        at most ``rows_per_file`` rows, all of one size but the last (``locators.file_rows``).
        Returns the next index chain of every bucket whose index changed, and the files
        written.
        """
        pending, index = self.pending, self.index
        if index is None or pending.rewrite is None:
            raise self._lost("planned", "planning", "finalized already")
        group_of = {o: g for g, ordinals in enumerate(groups) for o in ordinals}
        file, row, op = index.column("file"), index.column("row"), index.column("op")
        # tombstones point at no file (their rows are never materialized); only entries that
        # came in this round can still point at one
        entered = pending.entered
        if entered is None:  # every entry
            attached = np.concatenate([np.zeros(0, dtype=np.int64)] + [
                i + np.flatnonzero((op[i:i + _CHUNK] == OP_DELETE) & (file[i:i + _CHUNK] >= 0))
                for i in range(0, len(op), _CHUNK)])
        else:
            attached = np.concatenate([np.zeros(0, dtype=np.int64)] + [
                e[(op[e] == OP_DELETE) & (file[e] >= 0)]
                for e in (entered[i:i + _CHUNK] for i in range(0, len(entered), _CHUNK))])
        file[attached] = -1
        kept = [len(pending.plans[b].keep) if b in pending.plans else 0 for b in self.buckets]
        try:
            # the entries of the files rewritten whole but for their lost rows, found before
            # kept files behind a lost one move up in their bucket's file list (and so before
            # the rewritten rows get their new ordinals, which may be the same numbers)
            pending.rewrite.find_complement(file, row)
            _shift_kept([pending.plans[b] for b in self.buckets if b in pending.plans], file)
            pending.rewrite.relocate(file, row, group_of, self.buckets, kept, rows_per_file)
        except ValueError as e:  # too many files for a bucket, or a corrupt index: say whose
            raise self._named(e) from None
        # an incremental round persists the entries the merge brought in (the attached ones
        # among them), and where the rows of the files it rewrote or renumbered went (not the
        # entries of those rows)
        moves: dict[int, list[index_store.Move]] = {}
        if entered is not None:
            for i, b in enumerate(self.buckets):
                if b in pending.plans:
                    moves[b] = [index_store.Move(old, new)
                                for old, new in _renumbered(pending.plans[b])] + [
                        index_store.Move(*placed) for placed in pending.rewrite.placed(i, b)]
        # the map (a slot per row of its files) is done with: it need not wait for the commit
        # beside the materialize tasks
        pending.rewrite = None
        changed_at: list[np.ndarray] | None = None
        if entered is not None:
            positions = np.sort(entered)  # (distinct: each key enters once)
            # per bucket (appended entries of every bucket follow the sorted ones: positions
            # are not in bucket order)
            bucket = np.asarray(self._bucket_of(positions))
            if bucket.ndim:
                by_bucket = locators.stable_order(bucket, len(self.buckets))
                positions, bucket = positions[by_bucket], bucket[by_bucket]
            else:
                bucket = np.zeros(len(positions), dtype=np.int64)
            cuts = np.searchsorted(bucket, np.arange(len(self.buckets) + 1))
            changed_at = [positions[cuts[i]:cuts[i + 1]] for i in range(len(self.buckets))]
        written: list[str] = []
        table = index.table()
        for i, b in enumerate(self.buckets):
            next_chain, new_files = self._persist(
                b, i, table, None if changed_at is None else changed_at[i], moves.get(b, []))
            if next_chain is not None:
                pending.chains[b] = next_chain
            written += new_files
        if pending.copied:  # as after the fold: hand back the memory its temporaries held
            runtime.release_free_memory()
        return dict(pending.chains), written

    def _named(self, e: ValueError) -> ValueError:
        """``e`` (of its type) naming the partition, and that the round committed nothing."""
        where = self.storage.url_of(self.storage.path(self.partition_dir))
        return type(e)(f"partition {where}: {e}; nothing was committed")

    def _persist(self, b: int, i: int, table: pa.Table, changed: np.ndarray | None,
                 moves: list[index_store.Move]) -> tuple[list[str] | None, list[str]]:
        """Write bucket ``b``'s (the group's i-th) next index, whole (a base) or on its chain as
        the ``moves`` of its files and a delta of the entries at positions ``changed`` (None:
        write a base); the next chain (None when nothing about the bucket's index changed),
        and the files written."""
        assert self.index is not None
        chain = self.chains.get(b, [])
        if changed is not None and chain and not self.pending.touched[b] and not len(changed) \
                and not moves:
            return None, []
        gone_hi, gone_lo = self.pending.gone[b]
        delta_rows = 0 if changed is None else len(changed) + len(gone_hi)
        first, end = self._range(i)
        if changed is None or not chain or index_store.rounds(chain) >= index_store.MAX_CHAIN \
                or delta_rows * 4 > self.index.count_between(first, end):
            rel = index_store.new_path(self.partition_dir, b, "base")
            part = self.index.take(self.index.in_key_order(first, end))  # (a slice: no copy)
            index_store.write(self.storage, rel, part)
            return [rel], [rel]
        written = []
        if moves:
            written.append(index_store.new_path(self.partition_dir, b, "moves"))
            index_store.write_moves(self.storage, written[-1], moves)
        gone = np.empty(len(gone_hi), dtype=index_store.KEY)
        gone["hi"], gone["lo"] = gone_hi, gone_lo
        written.append(index_store.new_path(self.partition_dir, b, "delta"))
        index_store.write(self.storage, written[-1], pa.concat_tables(
            [table.take(pa.array(changed)), index_store.absent(gone, self.schema)]))
        return [*chain, *written], written

    def _lost(self, state: str, step: str, or_else: str) -> runtime.ActorDiedError:
        """The error of a call that finds no round in the state it needs: the actor died and
        was restarted in between (retried as such: jobs retry it), or the caller erred."""
        where = self.storage.url_of(self.storage.path(self.partition_dir))
        return runtime.ActorDiedError(
            f"partition {where}: the dedupe actor of buckets {self.buckets[0]}-"
            f"{self.buckets[-1]} holds no {state} round (it restarted after {step}, or the "
            f"round was aborted or {or_else}): nothing was committed; run the round again")

    def commit(self, state: int) -> None:
        """The round committed as compacted state ``state``: the index describes it."""
        self.chains.update(self.pending.chains)
        self.pending = _Pending()
        self.state = state

    def abort(self) -> None:
        """The round did not commit: drop the index that holds it (the next round reloads the
        committed state's)."""
        self.pending = _Pending()
        self._folded = None
        self.index, self.state = None, None

    def loaded_state(self) -> int | None:
        """The committed state the index in memory describes (None: none held)."""
        return self.state if self.index is not None else None


def _plan_bucket(b: int, lost: np.ndarray, files_before: int,
                 sources: list[tuple[int, RowSet]]) -> BucketPlan | None:
    """Bucket ``b``'s plan; ``sources``: its rewritten rows (sorted) of each file, in ordinal
    order; ``lost``: compacted ordinals (any bucket) that lost a row."""
    lost_here = {o & 0xFFFF for o in lost.tolist() if locators.bucket_of_compacted(o) == b}
    if not lost_here and not sources:
        return None
    keep = tuple(i for i in range(files_before) if i not in lost_here)
    return BucketPlan(b, files_before, keep, tuple(sources))


def _renumbered(plan: BucketPlan) -> list[tuple[int, int]]:
    """(old ordinal, new ordinal) of the bucket's kept files that move up in its file list
    (behind a lost one)."""
    return [(locators.compacted(plan.bucket, position), locators.compacted(plan.bucket, at))
            for at, position in enumerate(plan.keep) if position != at]


def _shift_kept(plans: list[BucketPlan], file: np.ndarray) -> None:
    """Renumber, in ``file``, the entries in kept files that move up in their bucket's file
    list (behind a lost one)."""
    shifted = [pair for plan in plans for pair in _renumbered(plan)]
    if not shifted:
        return
    shifted.sort()
    locators.renumber(file, np.array([o for o, _ in shifted], dtype=np.int32),
                      np.array([n for _, n in shifted], dtype=np.int32))

