"""compactor: table storage and compaction of change data into current-state Parquet.

The table model (this package's storage half)::

    table = create_table("s3://bucket/orders", schema, primary_key=["id"],
                         ordering_column="lsn", partition_by=["day"])
    part = table.partition({"day": "2024-05-01"})
    part.append(arrow_table)                                  # written by us as Parquet
    part.register(["s3://exports/orders/LOAD0001.parquet"],   # referenced in place
                  kind=DeltaKind.CDC, cdc=CdcOps("Op", upsert=("I", "U"), delete=("D",)))
    snap = part.snapshot()       # consistent: compacted state + pending deltas at one commit
"""

from compactor.errors import (
    ChangedFile,
    CommitConflict,
    CommitUnknown,
    CompactorError,
    CorruptFile,
    EmptyDelta,
    FileTooLarge,
    ForeignFile,
    InvalidPartition,
    InvalidTableSpec,
    MissingColumn,
    MissingFile,
    NullKey,
    NullValue,
    OutsideTableRoot,
    SchemaMismatch,
    TableExists,
    TableNotFound,
    TooManyFiles,
    UnknownOp,
    UnknownPartition,
)
from compactor.fs import Storage
from compactor.layout import PartitionKey
from compactor.manifest import CdcOps, CompactedState, DataFile, Delta, DeltaKind
from compactor.partition import Partition
from compactor.snapshot import Snapshot
from compactor.table import Table, TableMetadata, create_table, list_tables, open_table

__all__ = [
    "CdcOps",
    "ChangedFile",
    "CommitConflict",
    "CommitUnknown",
    "CompactedState",
    "CompactorError",
    "CorruptFile",
    "DataFile",
    "Delta",
    "DeltaKind",
    "EmptyDelta",
    "FileTooLarge",
    "ForeignFile",
    "InvalidPartition",
    "InvalidTableSpec",
    "MissingColumn",
    "MissingFile",
    "NullKey",
    "NullValue",
    "OutsideTableRoot",
    "Partition",
    "PartitionKey",
    "SchemaMismatch",
    "Snapshot",
    "Storage",
    "Table",
    "TableExists",
    "TableMetadata",
    "TableNotFound",
    "TooManyFiles",
    "UnknownOp",
    "UnknownPartition",
    "create_table",
    "list_tables",
    "open_table",
]
