"""Reading a partition's compacted state back as Arrow."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pyarrow as pa

from compactor.errors import MissingColumn
from compactor.partition import Partition
from compactor.pipeline.materialize import conform
from compactor.table import Table


def read_partition(table: Table, partition: Partition | Mapping[str, Any] | None = None, *,
                   version: int | None = None, columns: Sequence[str] | None = None) -> pa.Table:
    """The compacted rows of ``partition`` as of commit ``version`` (default: newest).

    Only the compacted state: deltas above the high watermark are not folded in. Every file is
    verified unchanged before it is read. The newest state is read with the table's columns
    (every partition alike); an older version with the columns the table had for it (not
    ones added since, as nulls).
    """
    if not isinstance(partition, Partition):
        partition = table.partition(partition)
    snap = partition.snapshot(version)
    as_of = table.metadata_at(snap.schema_version)  # (a handle older than its columns learns)
    schema = table.schema if version is None else as_of.schema
    if columns is not None:
        unknown = [c for c in columns if c not in schema.names]
        if unknown:
            raise MissingColumn(
                f"partition {partition.key} of {table.url} has no column "
                f"{', '.join(map(repr, unknown))} at commit {snap.version} (its columns: "
                f"{', '.join(schema.names)})")
        schema = pa.schema([schema.field(c) for c in columns])
    if snap.compacted is None:
        return schema.empty_table()

    def read(file: Any) -> pa.Table:
        parquet = table.open_file(file)
        try:
            names = [n for n in schema.names if n in parquet.schema_arrow.names]
            return conform(parquet.read(columns=names), schema, file.url)
        finally:
            parquet.close()

    with ThreadPoolExecutor(8) as pool:
        parts = list(pool.map(read, snap.compacted.files))
    return pa.concat_tables(parts) if parts else schema.empty_table()
