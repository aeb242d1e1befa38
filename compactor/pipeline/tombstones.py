"""Step 2, beside the hash tasks of a rebase: the deletes the old index remembers, as records.

With an ordering column a deleted key stays in the index as a tombstone, so that a row older
than the delete, arriving later, still loses to it (``merge``, "Tombstones"). A rebase (or a
rebuild of an index found unusable) builds the new index from the compacted files, which hold
no trace of deleted keys: each old bucket's tombstones are read from its index chain and go to
the dedupe actors as delete records of the old compacted state (its watermark as their stream
position, like its files' rows), bucketed by the new bucket count. A tombstone is its key, its
ordering value and its op: it points at no row (``row`` 0 of an ordinal of its own, never
materialized).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from compactor.fs import Storage
from compactor.merge import OP_DELETE, index_schema, record_schema
from compactor.pipeline import index_store
from compactor.pipeline.hash_bucket import HashOutput, group_bounds


def carried_tombstones(storage: Storage, chain: list[str], order_type: pa.DataType,
                       bucket_count: int, groups: int, position: int, ordinal: int,
                       tolerant: bool) -> HashOutput:
    """The tombstones of the index ``chain`` as delete records per group of ``groups`` over
    ``bucket_count`` buckets. ``tolerant``: an index known to be unusable may not be readable
    at all; its deletes are then lost with it (the output's ``warning`` says so), not
    the round."""
    try:
        dead = index_store.tombstones(storage, chain, index_schema(order_type))
    except index_store.IndexUnavailable as e:
        if not tolerant:
            raise
        return HashOutput({}, 0, 0, position, ordinal, warning=(
            f"the deletes remembered by the index being rebuilt are lost with it ({e}): a row "
            "older than such a delete that arrives later will not lose to it"))
    n = dead.num_rows
    hi = dead.column("hi").to_numpy()
    schema = record_schema(order_type)
    records = pa.table({
        "hi": dead.column("hi"), "lo": dead.column("lo"), "order": dead.column("order"),
        "row": pa.array(np.zeros(n, dtype=np.int32)),
        "op": pa.array(np.full(n, OP_DELETE, dtype=np.int8)),
    }, schema=pa.schema([f for f in schema if f.name not in ("pos", "file")]))
    # sorted by key (an index is), so by bucket and group too: a range of rows per group,
    # gathered on its own (a slice would carry the whole buffers into the object store)
    bounds = group_bounds(hi, bucket_count, groups)
    out = {g: records.take(pa.array(np.arange(bounds[g], bounds[g + 1])))
           for g in range(groups) if bounds[g + 1] > bounds[g]}
    return HashOutput(out, n, 0, position, ordinal)
