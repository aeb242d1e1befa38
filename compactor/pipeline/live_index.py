"""A dedupe actor's index in memory, updated in place from one round to the next.

The index of a group of buckets holds one entry per key (``compactor.merge``'s index columns)
as numpy arrays with spare capacity at their end. Entries ``[0, sorted_n)`` are sorted by key.
An incremental round (``fold``):

- *replaces* the entry of each key it changes where the entry is;
- *marks* the entry of each key that leaves the index (``OP_GONE``, no file; a key that comes
  back later takes its slot again);
- *appends* the keys it brings for the first time after the last entry, in key order, and finds
  them later through a small sorted list of the appended keys.

So a round costs O(records + changes), not a copy of the index (a copy of a 10M-key index is
330 MB of fresh memory to fault in each round), and an entry keeps its position from round to
round: the locators plan and finalize read and update stay where they were.

Appended and gone entries are folded away by a rebuild (``rebuilt``: one sorted copy) once
they pass 1/``REBUILD_FRACTION`` of the index, at the start of the round that finds them so;
that O(n) pass is paid once per that many changed keys. Rounds that cannot fold in place merge
a sorted copy instead (``compactor.merge``, sliced): the first round, rounds of more records
than a quarter of the index (``IN_PLACE_FRACTION``; at least ``IN_PLACE_RECORDS`` fold in place),
and ordering values other than fixed-width numbers without nulls.

An index folded in place describes the round's next state before the round commits: an actor
whose round aborts or fails drops it and reloads the persisted index of the committed state.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pyarrow as pa

from compactor.merge import (
    _INDEX_FIXED,
    OP_GONE,
    OP_UPSERT,
    MergeResult,
    _decode_order,
    _dedupe,
    _locate,
    _Records,
    fixed_width,
    index_schema,
    one_array,
    resolve,
    sort_by_key,
)

# a round folds in place when it brings at most 1/IN_PLACE_FRACTION as many records as the index
# has entries (or IN_PLACE_RECORDS); bigger ones change much of it: they merge a copy
IN_PLACE_FRACTION = 4
IN_PLACE_RECORDS = 1 << 19
REBUILD_FRACTION = 8
HEADROOM_FRACTION = 8  # spare capacity a new or grown index gets, as a fraction of its entries


def with_room(n: int) -> int:
    """The capacity of an index of ``n`` entries: room to append 1/HEADROOM_FRACTION more."""
    return n + max(n // HEADROOM_FRACTION, 1024)


def _numpy_order(order: pa.Array) -> np.ndarray | None:
    """Fixed-width ordering values without nulls as integers of their width (else None)."""
    width = fixed_width(order)
    return None if width is None else order.view(width).to_numpy()


def _with_headroom(values: np.ndarray, n: int, need: int | None = None) -> np.ndarray:
    """The first ``n`` of ``values`` in a new array with room for ``need`` (default ``n``)
    entries and 1/HEADROOM_FRACTION more."""
    need = n if need is None else need
    out = np.empty(with_room(need), dtype=values.dtype)
    out[:n] = values[:n]
    return out


class LiveIndex:
    """An index: ``columns`` (fixed-width, capacity >= ``n``; ``order`` among them as integers
    of its width when the ordering values are fixed-width without nulls, else ``order`` holds
    them as Arrow) whose entries ``[0, sorted_n)`` are sorted by key."""

    def __init__(self, columns: dict[str, np.ndarray], order_type: pa.DataType | None,
                 order: pa.Array | None, n: int) -> None:
        self.columns = columns
        self.order_type = order_type
        self.order = order  # variable-width or nullable ordering values: no folds in place
        self.n = self.sorted_n = n
        self.dead = int(np.count_nonzero(columns["op"][:n] == OP_GONE))  # entries marked gone
        self.live = int(np.count_nonzero(columns["op"][:n] == OP_UPSERT))  # upserts
        # the appended entries [sorted_n, n) in key order: their keys and positions
        self._tail = (np.zeros(0, np.uint64), np.zeros(0, np.uint64), np.zeros(0, np.int64))

    @classmethod
    def of(cls, table: pa.Table, headroom: bool = True) -> LiveIndex:
        """An index of ``table`` (index columns, sorted by key, one entry per key), its columns
        copied chunk by chunk (Arrow's memory is read-only) into arrays with room to append
        (``headroom``), else of their size."""
        n = table.num_rows
        capacity = with_room(n) if headroom else n

        def copied(chunks: list[pa.Array], dtype: np.dtype) -> np.ndarray:
            out = np.empty(capacity, dtype=dtype)
            at = 0
            for chunk in chunks:
                out[at:at + len(chunk)] = chunk.to_numpy()
                at += len(chunk)
            return out

        columns = {name: copied(table.column(name).chunks, table.schema.field(name).type
                                .to_pandas_dtype()) for name in _INDEX_FIXED}
        order_type, order = None, None
        if "order" in table.column_names:
            values = table.column("order")
            order_type = values.type
            width = fixed_width(pa.array([], order_type)) if not values.null_count else None
            if width is None:
                order = one_array(values) if n else pa.array([], order_type)
            else:
                columns["order"] = copied([c.view(width) for c in values.chunks],
                                          width.to_pandas_dtype())
        return cls(columns, order_type, order, n)

    @classmethod
    def adopt(cls, result: MergeResult) -> LiveIndex:
        """The index a merge produced, sharing its arrays (and the spare capacity of the
        buffers they are the start of, ``result.buffers``)."""
        index = result.index
        columns = {name: result.buffers.get(name, result.columns[name]) for name in _INDEX_FIXED}
        order_type, order = None, None
        if "order" in index.column_names:
            order_type = index.schema.field("order").type
            if "order" in result.buffers:
                columns["order"] = result.buffers["order"]
            else:
                values = one_array(index.column("order")) if index.num_rows else \
                    pa.array([], order_type)
                numbers = _numpy_order(values)
                if numbers is None:
                    order = values
                else:
                    columns["order"] = numbers
        n = index.num_rows
        columns = {name: values if values.flags.writeable else _with_headroom(values, n)
                   for name, values in columns.items()}  # (Arrow's memory is read-only)
        return cls(columns, order_type, order, n)

    @property
    def capacity(self) -> int:
        return len(self.columns["hi"])

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.columns.values()) + \
            (self.order.nbytes if self.order is not None else 0)

    def column(self, name: str) -> np.ndarray:
        """Entries ``[0, n)`` of a fixed-width column (a view: writes go to the index)."""
        return self.columns[name][:self.n]

    def table(self) -> pa.Table:
        """The entries in position order (not key order once some were appended), zero-copy;
        OP_GONE entries included."""
        schema = index_schema(self.order_type)
        arrays = []
        for f in schema:
            if f.name != "order":
                arrays.append(pa.array(self.column(f.name), f.type))
            elif self.order is not None:
                arrays.append(self.order)
            else:
                arrays.append(pa.array(self.column("order")).view(f.type))
        return pa.table(arrays, schema=schema)

    def in_key_order(self, first_hi: int = 0, end_hi: int | None = None
                     ) -> np.ndarray | slice:
        """Positions of the entries with ``hi`` in [first_hi, end_hi) in key order, without
        OP_GONE ones: a slice where they are consecutive (no appended or gone ones among
        them), else an array."""
        hi = self.columns["hi"][:self.sorted_n]
        a = int(np.searchsorted(hi, np.uint64(first_hi)))
        b = self.sorted_n if end_hi is None else int(np.searchsorted(hi, np.uint64(end_hi)))
        t_hi, _, t_pos = self._tail
        ta = int(np.searchsorted(t_hi, np.uint64(first_hi)))
        tb = len(t_hi) if end_hi is None else int(np.searchsorted(t_hi, np.uint64(end_hi)))
        if tb == ta and not (self.dead and (self.columns["op"][a:b] == OP_GONE).any()):
            return slice(a, b)
        positions = np.concatenate([np.arange(a, b, dtype=np.int64), t_pos[ta:tb]])
        perm, _ = sort_by_key(self.columns["hi"][positions], self.columns["lo"][positions],
                              runs=True)
        positions = positions[perm]
        if self.dead:
            positions = positions[self.columns["op"][positions] != OP_GONE]
        return positions

    def take(self, positions: np.ndarray | slice) -> pa.Table:
        """The entries at ``positions`` (a slice of them: zero-copy)."""
        if isinstance(positions, slice):
            return self.table().slice(positions.start, positions.stop - positions.start)
        return self.table().take(pa.array(positions))

    def sorted_table(self) -> pa.Table:
        """The entries in key order without OP_GONE ones (a copy unless already so)."""
        return self.take(self.in_key_order())

    def needs_rebuild(self) -> bool:
        return (self.n - self.sorted_n) + self.dead > self.n // REBUILD_FRACTION

    def rebuilt(self) -> LiveIndex:
        """The index sorted by key, without gone entries: gathered straight into new arrays
        with headroom."""
        at = self.in_key_order()
        positions = np.arange(at.start, at.stop) if isinstance(at, slice) else at
        m = len(positions)
        columns = {}
        for name, column in self.columns.items():
            out = np.empty(with_room(m), dtype=column.dtype)
            np.take(column, positions, out=out[:m])
            columns[name] = out
        order = None if self.order is None else self.order.take(pa.array(positions))
        return LiveIndex(columns, self.order_type, order, m)

    def count_between(self, first_hi: int, end_hi: int | None) -> int:
        """Entries (OP_GONE ones included) with ``hi`` in [first_hi, end_hi) (None: no end)."""
        count = 0
        for hi in (self.columns["hi"][:self.sorted_n], self._tail[0]):
            a = int(np.searchsorted(hi, np.uint64(first_hi)))
            count += (len(hi) if end_hi is None else
                      int(np.searchsorted(hi, np.uint64(end_hi)))) - a
        return count

    def _locate(self, q_hi: np.ndarray, q_lo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """For each query key: (its entry's position, whether it has one)."""
        at = np.zeros(len(q_hi), dtype=np.int64)
        found = np.zeros(len(q_hi), dtype=bool)
        if self.sorted_n:
            at, found = _locate(self.columns["hi"][:self.sorted_n],
                                self.columns["lo"][:self.sorted_n], q_hi, q_lo)
        t_hi, t_lo, t_pos = self._tail
        rest = np.flatnonzero(~found)
        if len(t_hi) and len(rest):
            t_at, t_found = _locate(t_hi, t_lo, q_hi[rest], q_lo[rest])
            hit = rest[t_found]
            at[hit] = t_pos[t_at[t_found]]
            found[hit] = True
        return at, found

    def accepts(self, incoming: pa.Table) -> bool:
        """Whether ``fold`` can take these records in place: the index has entries and holds
        its ordering values as numbers, and the records' are of the same type, without
        nulls."""
        incoming = _decode_order(incoming)
        has_order = "order" in incoming.column_names
        if not self.n or has_order != (self.order_type is not None) or self.order is not None:
            return False
        return not has_order or (incoming.schema.field("order").type == self.order_type
                                 and not incoming.column("order").null_count)

    def fold(self, incoming: pa.Table | Iterable[pa.Table]) -> MergeResult | None:
        """Fold ``incoming`` records into the index in place (``compactor.merge.merge``'s
        rule and result, its ``index`` this index's table and its ``entered`` positions here);
        None, with nothing changed, when this index cannot take them (``accepts``). Records
        may come as slices over disjoint ranges of keys, folded one at a time (temporaries
        stay a slice's); the caller has checked they are accepted (a slice that is not raises
        ValueError, the index half folded)."""
        if isinstance(incoming, pa.Table):
            if not self.accepts(incoming):
                return None
            incoming = [incoming]
        parts, appended = [], []
        try:
            for t in incoming:
                if not self.accepts(t):
                    raise ValueError("records the index cannot fold in place")
                part, added = self._fold(_decode_order(t))
                parts.append(part)
                appended.append(added)
        finally:  # (slices cover disjoint keys: none looks for another's new keys)
            self._find_appended(appended)
        return MergeResult(
            index=self.table(), records_in=sum(p.records_in for p in parts),
            inserted=sum(p.inserted for p in parts), updated=sum(p.updated for p in parts),
            deleted=sum(p.deleted for p in parts),
            duplicates_dropped=sum(p.duplicates_dropped for p in parts),
            superseded_files=np.unique(np.concatenate(
                [np.zeros(0, np.int32)] + [p.superseded_files for p in parts])),
            entered=np.concatenate([np.zeros(0, np.int64)] + [p.entered for p in parts]),
            gone_hi=np.concatenate([np.zeros(0, np.uint64)] + [p.gone_hi for p in parts]),
            gone_lo=np.concatenate([np.zeros(0, np.uint64)] + [p.gone_lo for p in parts]),
            superseded=np.concatenate([np.zeros(0, np.int64)] + [p.superseded for p in parts]),
            columns={name: self.column(name) for name in _INDEX_FIXED})

    def _fold(self, incoming: pa.Table) -> tuple[MergeResult, np.ndarray]:
        """One slice: its result, and the positions of the keys it appended."""
        has_order = "order" in incoming.column_names
        old = _Records(self.table(), "index", _INDEX_FIXED, check=False)
        new = _Records(incoming, "incoming records")
        winners = _dedupe(new)
        at, found = self._locate(new.hi[winners], new.lo[winners])
        r = resolve(old, new, winners, at, found)
        gone_hi, gone_lo = old.hi[r.left], old.lo[r.left]
        values = new.take(r.entering)
        if has_order:
            values["order"] = _numpy_order(values["order"])
        present = found[r.enters]  # keys with an entry (live, tombstone or gone): replaced
        slots = r.entering_at[present]
        op = self.columns["op"]
        revived = int(np.count_nonzero(op[slots] == OP_GONE))
        for name, column in self.columns.items():
            column[slots] = values[name][present]
        op[r.left] = OP_GONE
        self.columns["file"][r.left] = -1
        self.columns["row"][r.left] = -1
        self.dead += len(r.left) - revived
        self.live += r.inserted - r.deleted
        appended = self._append({name: v[~present] for name, v in values.items()})
        return MergeResult(
            index=self.table(), records_in=len(new), inserted=r.inserted, updated=r.updated,
            deleted=r.deleted, duplicates_dropped=r.duplicates_dropped,
            superseded_files=r.superseded_files,
            entered=np.concatenate([slots, appended]), gone_hi=gone_hi, gone_lo=gone_lo,
            superseded=r.superseded,
            columns={name: self.column(name) for name in _INDEX_FIXED}), appended

    def _append(self, values: dict[str, np.ndarray]) -> np.ndarray:
        """Append entries (in key order, keys new to the index); their positions."""
        k = len(values["hi"])
        if not k:
            return np.zeros(0, dtype=np.int64)
        n = self.n
        if n + k > self.capacity:
            self.columns = {name: _with_headroom(column, n, n + k)
                            for name, column in self.columns.items()}
        for name, column in self.columns.items():
            column[n:n + k] = values[name]
        self.n = n + k
        return np.arange(n, n + k, dtype=np.int64)

    def _find_appended(self, positions: list[np.ndarray]) -> None:
        """Add appended entries (sorted runs of positions) to the sorted list of the tail."""
        added = np.concatenate([np.zeros(0, np.int64), *positions])
        if not len(added):
            return
        t_hi, t_lo, t_pos = self._tail
        hi = np.concatenate([t_hi, self.columns["hi"][added]])
        lo = np.concatenate([t_lo, self.columns["lo"][added]])
        perm, _ = sort_by_key(hi, lo, runs=True)  # sorted runs: merged in linear passes
        self._tail = (hi[perm], lo[perm], np.concatenate([t_pos, added])[perm])

