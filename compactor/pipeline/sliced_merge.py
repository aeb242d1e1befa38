"""Merging a group's records into its index one range of keys at a time.

The merge kernel (``compactor.merge``) needs temporaries several times the size of the records
it sorts, and a dedupe actor's share of a full round is tens of millions of records. Digests
are uniform, so equal ranges of ``hi`` hold about equal shares of the keys: the records (sorted
runs, one per source file or slice of one) and the index are cut at the same ``hi`` values into
slices of about ``SLICE_RECORDS`` records; each slice is merged alone and copied into the next
index's columns (a slice without index entries, as in a first round, is gathered straight
into them).
Temporaries stay bounded by a slice whatever the table size, and the memory one slice frees
serves the next (pages already mapped, not fresh ones to fault in and zero).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from compactor.merge import MergeResult, fixed_width, index_schema, merge, one_array
from compactor.pipeline.hash_bucket import GroupRecords
from compactor.pipeline.live_index import with_room

SLICE_RECORDS = 1 << 19


def slice_edges(first_hi: int, end_hi: int, slices: int) -> np.ndarray:
    """The ``slices - 1`` inner edges cutting ``hi`` range [first_hi, end_hi) evenly."""
    return np.array([first_hi + (end_hi - first_hi) * j // slices for j in range(1, slices)],
                    dtype=np.uint64)


def merge_in_slices(index: pa.Table, records: GroupRecords, schema: pa.Schema,
                    first_hi: int, end_hi: int, slice_records: int = SLICE_RECORDS,
                    keep_entered: bool = True, prior: int | None = None) -> MergeResult:
    """``merge(index, records)``, slice by slice; ``index`` and every record lie in ``hi``
    range [first_hi, end_hi); ``schema``: the records'. The result's index is one table
    (single chunks). ``keep_entered=False``: the result's ``entered`` may be left empty (a
    first round, where every entry entered, needs no list as long as the index; a round of
    one slice returns the merge's own list). ``prior``: as ``merge``'s."""
    slices = max(1, -(-records.rows // max(1, slice_records)))
    inner = slice_edges(first_hi, end_hi, slices)
    if slices == 1:  # the merge's own result is the next index: no copy into one
        whole = records.between(records.cuts(inner), 0)
        return merge(index, schema.empty_table() if whole is None else whole, prior=prior)
    n = index.num_rows
    index_cuts = np.concatenate([[0], np.searchsorted(index.column("hi").to_numpy(), inner),
                                 [n]]).astype(np.int64)
    run_cuts = records.cuts(inner)
    # room for every record to be a new key, and for later rounds to append 1/8 more
    capacity = with_room(n + records.rows)
    fields = index_schema(schema.field("order").type if "order" in schema.names else None)
    out = {f.name: np.empty(capacity, dtype=f.type.to_pandas_dtype()) for f in fields
           if f.name != "order"}  # the fixed-width columns
    # fixed-width ordering values without nulls go into one preallocated buffer too; other
    # values (or once a slice has nulls) are kept per slice and concatenated at the end
    order_type = schema.field("order").type if "order" in schema.names else None
    width = fixed_width(pa.nulls(0, order_type)) if order_type is not None else None
    order_out = np.empty(capacity, width.to_pandas_dtype()) if width is not None else None
    orders: list[pa.Array] = []
    entered, gone_hi, gone_lo, superseded, superseded_at = [], [], [], [], []
    counts = np.zeros(5, dtype=np.int64)
    at = 0
    for j in range(slices):
        part = records.between(run_cuts, j)
        empty = index_cuts[j + 1] == index_cuts[j]  # (a first round's): merged straight into out
        into = None
        if empty:
            into = {name: values[at:] for name, values in out.items()}
            if order_out is not None:
                into["order"] = order_out[at:]
        result = merge(index.slice(index_cuts[j], index_cuts[j + 1] - index_cuts[j]),
                       schema.empty_table() if part is None else part, into=into, prior=prior)
        m = result.index.num_rows
        for name in out:
            if not empty:
                out[name][at:at + m] = result.columns[name]
        if order_type is not None:
            order = one_array(result.index.column("order")).cast(order_type)
            if order_out is not None and order.null_count:
                orders.append(pa.array(order_out[:at]).view(order_type))
                order_out = None
            if order_out is not None:
                values = order.view(width).to_numpy()
                if not np.shares_memory(values, order_out[at:at + m]):  # (not merged into it)
                    order_out[at:at + m] = values
            else:
                orders.append(order)
        if keep_entered:
            entered.append(result.entered + at)
        gone_hi.append(result.gone_hi)
        gone_lo.append(result.gone_lo)
        superseded.append(result.superseded_files)
        superseded_at.append(result.superseded)
        counts += (result.records_in, result.inserted, result.updated, result.deleted,
                   result.duplicates_dropped)
        at += m
        del result, part
    # the next index keeps these buffers (zero-copy) and the room at their end, for the rounds
    # after to append to; where the records held many more versions than keys, give back the
    # capacity beyond 1/8 of room (one column at a time)
    trim = at + at // 8 < capacity - capacity // 4
    buffers = {}
    for name in list(out):
        values = out.pop(name)
        buffers[name] = values[:at + at // 8].copy() if trim else values
        del values
    if trim and order_out is not None:
        order_out = order_out[:at + at // 8].copy()
    columns = {name: values[:at] for name, values in buffers.items()}
    arrays = {name: pa.array(values, fields.field(name).type) for name, values in columns.items()}
    if order_out is not None:
        arrays["order"] = pa.array(order_out[:at]).view(order_type)
        buffers["order"] = order_out
    elif orders:
        arrays["order"] = pa.concat_arrays(orders)
    records_in, inserted, updated, deleted, dropped = (int(c) for c in counts)
    return MergeResult(
        index=pa.table([arrays[name] for name in fields.names], schema=fields),
        records_in=records_in, inserted=inserted, updated=updated, deleted=deleted,
        duplicates_dropped=dropped,
        superseded_files=np.unique(np.concatenate(superseded)),
        entered=np.concatenate([np.zeros(0, dtype=np.int64), *entered]),
        gone_hi=np.concatenate(gone_hi), gone_lo=np.concatenate(gone_lo),
        superseded=np.concatenate([np.zeros(0, dtype=np.int64), *superseded_at]), columns=columns,
        buffers=buffers,
    )
