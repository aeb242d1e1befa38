"""Which rows of which files a round rewrites, per bucket, and where each one lands.

A dedupe actor builds one from its next index: the *selected* entries are the live ones that
point at a source of the round or at a compacted file that lost a row. Materialize writes
bucket b's selected rows of a group of files in (file ordinal, row) order, cut into files of
one size of at most ``rows_per_file`` rows (``locators.file_rows``); the actor points the index
at exactly those places.

No sort by locator: every file that may hold selected rows gets a range of one array over all
their rows, in ordinal order. Each selected entry stores its bucket at its row's slot; one pass
over each file's range reads the rows back in order, per bucket, and stores at each slot the
row's rank among its bucket's rows of the file. Relocating an entry is then a lookup of its
slot. The work is O(entries + rows of those files), in chunks of ``CHUNK`` entries, so the
temporaries stay small whatever the index size.

An incremental round rewrites a few compacted files that lost rows, and every other row of
them: such a file is given as its *complement*, the rows it lost (the merge's superseded
locators). Its surviving rows and their ranks follow from those alone, so the plan looks at
none of its entries; ``relocate`` finds them (one compare per entry of the index per file) and
checks that they are exactly one per surviving row.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from compactor.merge import gather
from compactor.pipeline.index_store import IndexCorrupt
from compactor.pipeline.locators import (
    MAX_FILES_PER_BUCKET,
    SOURCE_BASE,
    file_count,
    file_rows,
    find_in,
    stable_order,
)
from compactor.pipeline.row_sets import RowSet

CHUNK = 1 << 18
# compacted file ordinals (bucket << 16 | position) numbered by a table when they span at most
# this many numbers (the files of 64 adjacent buckets)
MAX_SPAN = 1 << 22
CACHE_BYTES = 64 << 20
# places among a task's rows of a bucket below this are figured in 32-bit numbers (``relocate``)
PLACES_32 = 1 << 31


@dataclass(frozen=True)
class FileRows:
    """Bucket i's selected rows of one file, for each bucket of the group with any."""

    ordinal: int
    rows: dict[int, RowSet]


def _rank(span: np.ndarray, selected: np.ndarray) -> None:
    """Number the ``selected`` slots of ``span`` 0, 1, ... in order and set the others to -1,
    in place: a running count, not a masked assignment (1.5 against 5.1 ms per 1M slots)."""
    np.cumsum(selected, dtype=np.int32, out=span)
    span *= selected
    span -= 1


class RewriteMap:
    def __init__(self, ordinals: np.ndarray, spans: np.ndarray, file: np.ndarray,
                 row: np.ndarray, selected: np.ndarray,
                 bucket_of: Callable[[np.ndarray], np.ndarray | int], buckets: int,
                 complement: dict[int, tuple[int, np.ndarray]] | None = None) -> None:
        """``ordinals``: sorted file ordinals that may hold selected entries, with ``spans``
        rows each; ``file``, ``row``: the index's locators; ``selected``: mask of the entries
        whose rows are rewritten, or their positions (sorted); ``bucket_of``: the bucket (0
        to ``buckets - 1``) of the entries at some positions; ``complement``: compacted files
        of ``ordinals`` every row of which is rewritten but the given ones (ordinal -> (its
        bucket, the rows)): their entries must not be among ``selected``."""
        self.ordinals = np.asarray(ordinals, dtype=np.int64)
        # the dense number of each ordinal by one table lookup: compacted ordinals (sorted
        # first) at their distance from the lowest, sources after them at their distance from
        # SOURCE_BASE, and a -1 at the end for every other ordinal; compacted ordinals further
        # apart than MAX_SPAN (files of distant buckets of a big group) by binary search instead
        sources = self.ordinals >= SOURCE_BASE
        compacted = self.ordinals[~sources]
        self._low = int(compacted[0]) if len(compacted) else 0
        self._width = int(compacted[-1]) - self._low + 1 if len(compacted) else 0
        self._compacted = None
        if self._width > MAX_SPAN:
            self._compacted, self._width = compacted, 0
        size = self._width + (int(self.ordinals[-1]) - SOURCE_BASE + 1 if sources.any() else 0)
        # only sources, numbered without gaps (a first round's): a file's dense number is its
        # distance from the first, no table lookup
        self._first_source = int(self.ordinals[0]) if len(self.ordinals) and not len(compacted) \
            and int(self.ordinals[-1]) - int(self.ordinals[0]) == len(self.ordinals) - 1 \
            else None
        self._dense_of = np.full(size + 1, -1, dtype=np.int64)
        if self._compacted is None:
            self._dense_of[np.where(sources, self.ordinals - SOURCE_BASE + self._width,
                                    self.ordinals - self._low)] = np.arange(len(self.ordinals))
        else:
            self._dense_of[self.ordinals[sources] - SOURCE_BASE] = np.flatnonzero(sources)
        self.offsets = np.concatenate([[0], np.cumsum(spans)]).astype(np.int64)
        self._spans = np.diff(self.offsets)
        self._bucket, self.buckets = bucket_of, buckets
        # the selected entries a chunk at a time: CHUNK entries of the index (a mask), or
        # CHUNK of the positions given
        self.selected = selected if selected.dtype == bool else None
        self._positions = None if self.selected is not None else \
            np.asarray(selected, dtype=np.int64)
        self._chunks = -(-len(selected) // CHUNK)
        self._relocated = False
        self._placed: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # by relocate
        # first the bucket of each selected row at its slot, then its rank within the
        # bucket's selected rows of its file
        self.slots = np.full(int(self.offsets[-1]), -1, dtype=np.int32)
        marked = 0
        # what relocate needs of a chunk of entries, kept for chunks not wholly selected (an
        # incremental round's) up to CACHE_BYTES in all, so it need not find them again
        self._found: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | int]] = {}
        budget = CACHE_BYTES
        for c in range(self._chunks):
            positions, files, rows = self._chunk(c, file, row)
            d, at = self._slot(files, rows)
            bucket = self._bucket_at(positions)
            self.slots[at] = bucket
            marked += len(at)
            if isinstance(positions, slice):  # every entry of the chunk: found again cheaply
                continue
            size = positions.nbytes + d.nbytes + at.nbytes + np.asarray(bucket).nbytes
            if size <= budget:
                self._found[c] = (positions, d, at, bucket)
                budget -= size
        if int(np.count_nonzero(self.slots >= 0)) != marked:
            raise IndexCorrupt("selected entries repeat a (file, row) locator")
        # complement files: each surviving row's rank among them, straight from the lost rows
        self._complement: dict[int, int] = {}  # dense number -> bucket
        # the entries of the complement files: their positions, and per entry which file (j),
        # the files' dense numbers and buckets, and per entry its row's rank among those kept
        self._found_complement: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                      np.ndarray] | None = None
        kept_rows: dict[int, np.ndarray] = {}  # complement files: the mask of rows they keep
        for ordinal, (i, lost) in sorted((complement or {}).items()):
            k = int(self._dense(np.array([ordinal]))[0])
            if k < 0 or ordinal >= SOURCE_BASE:
                raise ValueError(f"file {ordinal} is not a compacted file of the map")
            span = self.slots[self.offsets[k]:self.offsets[k + 1]]
            lost = np.sort(np.asarray(lost, dtype=np.int64))
            if len(lost) and (lost[0] < 0 or lost[-1] >= len(span)
                              or (np.diff(lost) == 0).any()):
                raise IndexCorrupt(f"file {ordinal} of {len(span)} rows: lost rows repeat or "
                                 "fall outside it")
            if (span >= 0).any():
                raise ValueError(f"file {ordinal} is both selected and a complement")
            alive = np.ones(len(span), dtype=bool)
            alive[lost] = False
            _rank(span, alive)
            self._complement[k] = i
            kept_rows[k] = alive
        self.files: list[FileRows] = []  # files with selected rows, in ordinal order
        self.counts = np.zeros((buckets, len(self.ordinals)), dtype=np.int64)
        for k, ordinal in enumerate(self.ordinals.tolist()):
            span = self.slots[self.offsets[k]:self.offsets[k + 1]]
            selected_here = kept_rows.pop(k, None)
            if selected_here is None and buckets == 1:  # its rows ranked by a running count
                selected_here = span >= 0
                _rank(span, selected_here)
            if selected_here is not None:  # (ranked already)
                rows_of = RowSet.of_mask(selected_here)
                if len(rows_of):
                    i = self._complement.get(k, 0)
                    self.counts[i, k] = len(rows_of)
                    self.files.append(FileRows(ordinal, {i: rows_of}))
                continue
            rows = np.flatnonzero(span >= 0)
            if len(span) < 2**31:  # plans travel to the driver and the tasks: half the bytes
                rows = rows.astype(np.int32)
            if not len(rows):
                continue
            owners = span[rows]
            by_bucket = stable_order(owners, buckets) if buckets > 1 else np.arange(len(rows))
            cuts = np.searchsorted(owners[by_bucket], np.arange(buckets + 1))
            per_bucket = {}
            for i in range(buckets):
                mine = rows[by_bucket[cuts[i]:cuts[i + 1]]]
                if len(mine):
                    per_bucket[i] = RowSet.of(mine)
                    span[mine] = np.arange(len(mine), dtype=np.int32)
                    self.counts[i, k] = len(mine)
            self.files.append(FileRows(ordinal, per_bucket))

    def _chunk(self, c: int, file: np.ndarray, row: np.ndarray
               ) -> tuple[np.ndarray | slice, np.ndarray, np.ndarray]:
        """(positions, files, rows) of the selected entries of chunk ``c``; positions as a
        slice where they are all its entries of the index."""
        start = c * CHUNK
        if self._positions is not None:
            positions = self._positions[start:start + CHUNK]
            return positions, file[positions], row[positions]
        assert self.selected is not None
        chosen = self.selected[start:start + CHUNK]
        if chosen.all():  # every entry (a first round's): views, no gathers
            whole = slice(start, start + len(chosen))
            return whole, file[whole], row[whole]
        positions = start + np.flatnonzero(chosen)
        return positions, file[positions], row[positions]

    def _bucket_at(self, positions: np.ndarray | slice) -> np.ndarray | int:
        """The bucket of the entries at ``positions`` (a slice: a run of them)."""
        if self.buckets == 1:
            return 0
        if isinstance(positions, slice):
            positions = np.arange(positions.start, positions.stop)
        return self._bucket(positions)

    def _dense(self, files: np.ndarray) -> np.ndarray:
        """The dense number of each file ordinal (-1: not one of the map's files)."""
        if self._first_source is not None:
            d = files - np.int64(self._first_source)  # (int64)
            if not len(d) or (d.min() >= 0 and d.max() < len(self.ordinals)):
                return d
        f = files.astype(np.int64)
        if self._width or self._compacted is not None:
            k = np.where(f >= SOURCE_BASE, f - (SOURCE_BASE - self._width), f - self._low)
            # (a compacted ordinal above the map's highest would land among the sources)
            k[(f < SOURCE_BASE) & (k >= self._width)] = -1
        else:  # only sources (a first round's)
            k = f - SOURCE_BASE
        # (a negative k, as unsigned, is beyond the table: the -1 at its end)
        d = self._dense_of[np.minimum(k.view(np.uint64), len(self._dense_of) - 1)]
        if self._compacted is not None:
            at = np.flatnonzero(f < SOURCE_BASE)
            k = np.searchsorted(self._compacted, f[at])
            hit = k < len(self._compacted)
            hit[hit] = self._compacted[k[hit]] == f[at[hit]]
            d[at] = np.where(hit, k, -1)
        return d

    def _slot(self, files: np.ndarray, rows: np.ndarray, check: bool = True
              ) -> tuple[np.ndarray, np.ndarray]:
        d = self._dense(files)
        if check and len(d) and (d.min() < 0 or rows.min() < 0
                                 or (rows >= self._spans[d]).any()):
            raise IndexCorrupt("selected entries point outside the files the map was given")
        return d, self.offsets[d] + rows

    def relocate(self, file: np.ndarray, row: np.ndarray, group_of: dict[int, int],
                 buckets: list[int], kept: list[int], rows_per_file: int) -> np.ndarray:
        """Point every selected entry at its new place, updating ``file`` and ``row``.

        ``group_of``: the materialize task of each file ordinal with selected rows (tasks take
        consecutive files; each writes a bucket's rows in ordinal order, a new file every
        ``file_rows(its rows of the bucket, rows_per_file)`` rows); ``buckets[i]``: the number
        of the group's bucket i, whose compacted files are ordinals ``buckets[i] << 16 |
        position``; ``kept[i]``: how many of its files stay in place, ahead of the new ones.
        Returns how many files each bucket has after the round. ``file`` and ``row`` must be
        the arrays the map was built from, with its selected entries unchanged since (their
        slots are looked up again, unchecked).
        """
        if self._relocated:  # it reads the old locators as it overwrites them: once only
            raise ValueError("the rewrite map has relocated its entries already")
        missing = [o for d, o in enumerate(self.ordinals.tolist())
                   if o not in group_of and self.counts[:, d].any()]
        if missing:
            raise ValueError(f"files {missing[:5]} hold rows to rewrite but no task writes them")
        groups = max(group_of.values(), default=0) + 1
        group = np.array([group_of.get(o, 0) for o in self.ordinals.tolist()], dtype=np.int64)
        # rows of bucket i that task g writes before file d's (files of g before d)
        before = np.zeros_like(self.counts)
        files_of_task = np.zeros((len(kept), groups), dtype=np.int64)
        per_file_of_task = np.ones((len(kept), groups), dtype=np.int64)
        for g in range(groups):
            in_g = group == g
            counts = np.where(in_g, self.counts, 0)
            before[:, in_g] = (np.cumsum(counts, axis=1) - counts)[:, in_g]
            rows = counts.sum(axis=1)
            files_of_task[:, g] = file_count(rows, rows_per_file)
            per_file_of_task[:, g] = file_rows(rows, rows_per_file)
        total = np.array(kept, dtype=np.int64) + files_of_task.sum(axis=1)
        if len(total) and total.max() > MAX_FILES_PER_BUCKET:
            raise ValueError(f"bucket {buckets[int(total.argmax())]} would hold more than "
                             f"{MAX_FILES_PER_BUCKET} files; raise the target file size or "
                             "rebase to more buckets")
        first_file = total[:, None] - files_of_task.sum(axis=1)[:, None] \
            + np.cumsum(files_of_task, axis=1) - files_of_task
        # (bucket, file): the ordinal of the first file the file's task writes for the bucket
        start_file = (np.array(buckets, dtype=np.int64) << 16)[:, None] | first_file[:, group]
        per_file = per_file_of_task[:, group]  # (bucket, file): the rows of its task's files
        self.find_complement(file, row)
        # chunks not kept when the map was built (a first round's, whose entries are all
        # selected, or beyond CACHE_BYTES) are found again (their slots were checked then, and
        # the locators of selected entries have not changed since)
        self._relocated = True
        self._placed = (before, start_file, per_file)
        # an entry's place among its task's rows of its bucket, and its file and row there, in
        # 32 bits where the places fit (all but a task of 2**31 rows of a bucket): a division
        # of 32-bit numbers is twice as fast as of 64, and a divmod slower than a division
        # and a multiply (2M entries: 8.8 -> 3.5 ms)
        small = int((before + self.counts).max(initial=0)) < PLACES_32
        kind = np.int32 if small else np.int64
        first_place: np.ndarray = before.astype(kind)
        first_of: np.ndarray = start_file.astype(kind)
        sizes: np.ndarray = per_file.astype(kind)
        if self._found_complement is not None:  # (per file first, then per entry)
            entries, j, dense, i, ranks = self._found_complement
            place = first_place[i, dense][j] + ranks
            size = sizes[i, dense][j]
            q = place // size
            place -= q * size
            q += first_of[i, dense][j]
            file[entries] = q
            row[entries] = place
        for c in range(self._chunks):
            found = self._found.pop(c, None)
            if found is None:
                positions, files, rows = self._chunk(c, file, row)
                d, at = self._slot(files, rows, check=False)
                bucket = self._bucket_at(positions)
            else:
                positions, d, at, bucket = found
            if isinstance(bucket, int):  # plain gathers, not two-dimensional ones
                place = gather(first_place[bucket], d)
                place += gather(self.slots, at)
                size = gather(sizes[bucket], d)
                new_file = gather(first_of[bucket], d)
            else:
                place = first_place[bucket, d]
                place += gather(self.slots, at)
                size = sizes[bucket, d]
                new_file = first_of[bucket, d]
            q = place // size
            place -= q * size
            new_file += q
            where: np.ndarray | slice = positions
            if not isinstance(positions, slice) and len(positions) and \
                    positions[-1] - positions[0] + 1 == len(positions):
                where = slice(int(positions[0]), int(positions[-1]) + 1)  # every entry
            file[where] = new_file
            row[where] = place
        return total

    def find_complement(self, file: np.ndarray, row: np.ndarray) -> None:
        """Find the entries of the complement files, checked to be one per row they keep;
        call it before any entry of the index gets a new file ordinal (kept files
        renumbered, or ``relocate``, which calls it too)."""
        if not self._complement or self._found_complement is not None:
            return
        dense = np.array(sorted(self._complement), dtype=np.int64)
        of = self.ordinals[dense].astype(file.dtype)  # (sorted)
        # one pass over the index for all files; the entries found are checked and ranked
        # together, not file by file (a pass over them per file)
        positions, j = find_in(file, of)
        rows = row[positions]
        buckets = np.array([self._complement[k] for k in dense.tolist()], dtype=np.int64)
        keeps = self.counts[buckets, dense]
        entries = np.bincount(j, minlength=len(dense))
        inside = (rows >= 0) & (rows < self._spans[dense][j])
        if inside.all():  # (the rows of an undamaged index)
            ranks = self.slots[self.offsets[dense][j] + rows]  # (-1 at a lost row)
        else:
            ranks = np.where(inside, self.slots[self.offsets[dense][j] + np.where(inside, rows, 0)],
                             -1)
        # per file: as many entries as rows kept, none at a lost row, none at one row twice
        # (each file checked for each, so the first damaged one is named)
        wrong = entries != keeps
        bad = ranks < 0
        if bad.any():
            wrong[np.unique(j[bad])] = True
        # the entries of files whose ranks are each in 0 to their rows kept, at one place each
        ok = ~wrong[j] if wrong.any() else slice(None)
        place = np.concatenate([[0], np.cumsum(np.where(wrong, 0, keeps))[:-1]])[j[ok]] + ranks[ok]
        seen = np.zeros(len(place), dtype=bool)
        seen[place] = True
        if int(np.count_nonzero(seen)) != len(place):
            twice = np.bincount(place, minlength=len(place)) > 1
            wrong[np.unique(j[ok][twice[place]])] = True
        if wrong.any():
            w = int(np.flatnonzero(wrong)[0])
            k = int(dense[w])
            span = int(self._spans[k])
            raise IndexCorrupt(
                f"the index's entries of file {int(self.ordinals[k])} are not one per row it "
                f"keeps ({int(entries[w])} entries for {int(keeps[w])} rows; "
                f"{span - int(keeps[w])} lost)")
        self._found_complement = (positions, j, dense, buckets, ranks)

    def placed(self, i: int, bucket: int) -> list[tuple[int, int, int, np.ndarray, int]]:
        """After ``relocate``: for each compacted file of ``bucket`` (the group's bucket i) the
        map was given, (its ordinal, the ordinal of the first file its rewritten rows went to,
        their first place among their task's rows of the bucket, the mask of its rows
        rewritten, the rows of each file that task wrote of the bucket)."""
        assert self._placed is not None, "relocate first"
        before, start_file, per_file = self._placed
        out = []
        for d, ordinal in enumerate(self.ordinals.tolist()):
            if ordinal < SOURCE_BASE and ordinal >> 16 == bucket:
                rows = self.slots[self.offsets[d]:self.offsets[d + 1]] >= 0
                out.append((ordinal, int(start_file[i, d]), int(before[i, d]), rows,
                            int(per_file[i, d])))
        return out

