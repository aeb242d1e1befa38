"""Persisted primary-key indexes: one Parquet file per bucket, beside the table.

A compacted state names its bucket index files in ``properties["index"]`` (a JSON list, one
path relative to the table root per bucket). An untouched bucket keeps its index file from the
round before; a touched bucket gets a fresh file, written before the commit (an abandoned round
leaves it unreferenced, for the garbage collector). Indexes are Arrow data, never pickles.
"""

from __future__ import annotations

import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from compactor.fs import Storage
from compactor.manifest import CompactedState

PROPERTY = "index"


class IndexUnavailable(Exception):
    """The persisted index of a bucket cannot be used; the round rebuilds it from data."""


def paths_of(state: CompactedState | None) -> list[str] | None:
    if state is None or PROPERTY not in state.properties:
        return None
    paths: list[str] = json.loads(state.properties[PROPERTY])
    if len(paths) != state.bucket_count:
        return None
    return paths


def new_path(partition_dir: str, bucket: int) -> str:
    return f"{partition_dir}/index/b{bucket:05d}/{uuid.uuid4().hex}.parquet"


def write(storage: Storage, rel: str, index: pa.Table) -> None:
    with storage.open_output(rel) as out:
        pq.write_table(index, out, compression="zstd")


def read(storage: Storage, rel: str, schema: pa.Schema) -> pa.Table:
    try:
        data = storage.read(rel)
        table = pq.read_table(pa.BufferReader(data))
    except (FileNotFoundError, OSError, pa.ArrowInvalid) as e:
        raise IndexUnavailable(f"index file {storage.url_of(storage.path(rel))}: {e}") from None
    if not table.schema.equals(schema):
        try:
            table = table.cast(schema)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as e:
            raise IndexUnavailable(f"index file {rel} does not match: {e}") from None
    return table
