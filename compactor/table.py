"""Tables: create, open, metadata versions, schema evolution, partitions.

Table metadata is a sequence of immutable JSON files, ``_table/metadata/<version>.json``, each a
complete :class:`TableMetadata`, each created exclusively: creating version 1 is creating the
table (so two racing creators cannot both succeed), and a schema change creates the next version
(a racing change makes the loser re-read and re-check against the winner's schema). Only the
schema changes between versions; the key, ordering, partition and hashing settings are fixed at
creation.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from compactor import files
from compactor.errors import (
    CorruptFile,
    InvalidPartition,
    InvalidTableSpec,
    TableExists,
    TableNotFound,
)
from compactor.fs import Storage
from compactor.hashing import HASH_ID
from compactor.layout import (
    METADATA_DIR,
    PARTITIONS_DIR,
    UNPARTITIONED,
    PartitionKey,
    PartitionValue,
    log_file,
    metadata_file,
    parse_number,
)
from compactor.manifest import DataFile
from compactor.partition import Partition
from compactor.pipeline.locators import MAX_BUCKETS
from compactor.schema import (
    check_table_columns,
    evolve,
    plain_schema,
    schema_from_text,
    schema_to_text,
    stored_schema,
)

FORMAT = 1
DEFAULT_BUCKET_COUNT = 16
DEFAULT_HASH_ALGORITHM = HASH_ID
DEFAULT_CHECKPOINT_INTERVAL = 100


@dataclass(frozen=True)
class TableMetadata:
    """One version of a table's metadata."""

    version: int
    table_id: str
    schema: pa.Schema
    primary_key: tuple[str, ...]
    ordering_column: str | None
    partition_by: tuple[str, ...]
    bucket_count: int  # default for compaction rounds; a round may rebase to another count
    hash_algorithm: str
    checkpoint_interval: int
    created_at: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "version": self.version, "table_id": self.table_id,
            "schema": schema_to_text(self.schema), "primary_key": list(self.primary_key),
            "ordering_column": self.ordering_column, "partition_by": list(self.partition_by),
            "bucket_count": self.bucket_count, "hash_algorithm": self.hash_algorithm,
            "checkpoint_interval": self.checkpoint_interval, "created_at": self.created_at,
        }

    @classmethod
    def from_json(cls, data: bytes, source: str) -> TableMetadata:
        try:
            d = json.loads(data)
            if d.get("format") != FORMAT:
                raise ValueError(f"unsupported format {d.get('format')!r}")
            return cls(
                # (plain types: a table created before they were stored so is read as such)
                int(d["version"]), str(d["table_id"]),
                plain_schema(schema_from_text(d["schema"], source=source)),
                tuple(d["primary_key"]), d["ordering_column"], tuple(d["partition_by"]),
                int(d["bucket_count"]), str(d["hash_algorithm"]), int(d["checkpoint_interval"]),
                float(d["created_at"]),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            raise CorruptFile(f"{source}: not valid table metadata ({e})") from None


def create_table(
    url: str,
    schema: pa.Schema,
    *,
    primary_key: Sequence[str],
    ordering_column: str | None = None,
    partition_by: Sequence[str] = (),
    bucket_count: int = DEFAULT_BUCKET_COUNT,
    hash_algorithm: str = DEFAULT_HASH_ALGORITHM,
    checkpoint_interval: int = DEFAULT_CHECKPOINT_INTERVAL,
    storage_options: Mapping[str, Any] | None = None,
) -> Table:
    """Create an empty table at ``url``; :class:`TableExists` if one is there already.

    Partition columns name the partition values (``{"day": "2024-05-01"}``); they need not be
    columns of ``schema``.
    """
    key = tuple(primary_key)
    if len(set(schema.names)) != len(schema.names):
        raise InvalidTableSpec(f"schema repeats a column name: {schema.names}")
    schema = stored_schema(schema, f"table {url}", InvalidTableSpec)
    check_table_columns(schema, key, ordering_column)
    parts = tuple(partition_by)
    if len(set(parts)) != len(parts) or any(not p for p in parts):
        raise InvalidTableSpec(f"partition columns {list(parts)} must be distinct and non-empty")
    if bucket_count < 1 or checkpoint_interval < 1:
        raise InvalidTableSpec("bucket_count and checkpoint_interval must be at least 1")
    if bucket_count > MAX_BUCKETS:  # (a round refuses more: compacted files' ordinals)
        raise InvalidTableSpec(f"table {url}: bucket_count {bucket_count} is more than the "
                               f"{MAX_BUCKETS} a partition can be compacted into")
    storage = Storage(url, storage_options)
    metadata = TableMetadata(1, uuid.uuid4().hex, schema, key, ordering_column, parts,
                             bucket_count, hash_algorithm, checkpoint_interval, time.time())
    try:
        storage.create(metadata_file(1), json.dumps(metadata.to_dict()).encode())
    except FileExistsError:
        # A retried PUT whose first attempt landed (its answer was lost) also finds the file:
        # it is ours if it holds our table id.
        if _read_metadata(storage, 1).table_id != metadata.table_id:
            raise TableExists(f"a table already exists at {storage.url}") from None
    return Table(storage, metadata)


def open_table(url: str, *, storage_options: Mapping[str, Any] | None = None) -> Table:
    """Open the table at ``url``; :class:`TableNotFound` if there is none."""
    storage = Storage(url, storage_options)
    return Table(storage, _load_latest(storage))


def list_tables(url: str, *, storage_options: Mapping[str, Any] | None = None) -> list[str]:
    """URLs of the tables directly under ``url`` (and ``url`` itself, if it is one)."""
    storage = Storage(url, storage_options)
    found = [storage.url] if storage.list(METADATA_DIR) else []
    for name in storage.list(""):
        if not name.startswith("_") and storage.list(f"{name}/{METADATA_DIR}"):
            found.append(storage.url_of(storage.path(name)))
    return found


def _versions(storage: Storage) -> list[int]:
    return sorted(v for v in map(parse_number, storage.list(METADATA_DIR)) if v is not None)


def _read_metadata(storage: Storage, version: int) -> TableMetadata:
    rel = metadata_file(version)
    source = storage.url_of(storage.path(rel))
    return TableMetadata.from_json(storage.read(rel), source)


def _load_latest(storage: Storage) -> TableMetadata:
    versions = _versions(storage)
    if not versions:
        raise TableNotFound(f"no table at {storage.url} (no {METADATA_DIR}/ metadata)")
    return _read_metadata(storage, versions[-1])


class Table:
    """A table: its storage and the newest metadata this handle has seen. Picklable."""

    def __init__(self, storage: Storage, metadata: TableMetadata) -> None:
        self.storage = storage
        self._metadata = metadata
        self._by_version: dict[int, TableMetadata] = {metadata.version: metadata}

    def __repr__(self) -> str:
        return f"Table({self.url!r})"

    @property
    def url(self) -> str:
        return self.storage.url

    @property
    def metadata(self) -> TableMetadata:
        return self._metadata

    @property
    def schema(self) -> pa.Schema:
        return self._metadata.schema

    @property
    def primary_key(self) -> tuple[str, ...]:
        return self._metadata.primary_key

    @property
    def ordering_column(self) -> str | None:
        return self._metadata.ordering_column

    @property
    def partition_by(self) -> tuple[str, ...]:
        return self._metadata.partition_by

    @property
    def bucket_count(self) -> int:
        return self._metadata.bucket_count

    @property
    def hash_algorithm(self) -> str:
        return self._metadata.hash_algorithm

    def refresh(self) -> TableMetadata:
        """Re-read the newest metadata version (e.g. to see columns other writers added)."""
        self._remember(_load_latest(self.storage))
        return self._metadata

    def _remember(self, metadata: TableMetadata) -> None:
        self._by_version[metadata.version] = metadata
        if metadata.version > self._metadata.version:
            self._metadata = metadata

    def metadata_at(self, version: int) -> TableMetadata:
        """Metadata version ``version`` (e.g. a snapshot's ``schema_version``)."""
        if version not in self._by_version:
            try:
                self._remember(_read_metadata(self.storage, version))
            except FileNotFoundError:
                raise TableNotFound(f"table {self.url} has no metadata version {version}") from None
        return self._by_version[version]

    def evolve_schema(self, incoming: Iterable[tuple[pa.Schema, str]]) -> int:
        """Make the table schema cover every ``(schema, source)``; return the covering version.

        Raises :class:`SchemaMismatch` (naming the source, column and types) on a type change.
        """
        incoming = list(incoming)
        while True:
            current = self._metadata
            schema = current.schema
            for file_schema, source in incoming:
                schema = evolve(schema, file_schema, source=source)
            if schema is current.schema:
                return current.version
            new = replace(current, version=current.version + 1, schema=schema,
                          created_at=time.time())
            try:
                self.storage.create(metadata_file(new.version), json.dumps(new.to_dict()).encode())
            except FileExistsError:
                self.refresh()  # another writer changed the schema first: check against theirs
                continue
            self._remember(new)
            return new.version

    # -- partitions ----------------------------------------------------------------------------
    def partition(self, values: Mapping[str, PartitionValue] | None = None) -> Partition:
        """The partition with these values (no I/O; it may not have commits yet)."""
        try:
            return Partition(self, PartitionKey.of(self.partition_by, dict(values or {})))
        except InvalidPartition as e:
            raise InvalidPartition(f"table {self.url}: {e}") from None

    def partitions(self) -> list[Partition]:
        """Every partition that has at least one commit, in path order."""
        if not self.partition_by:
            candidates = [f"{PARTITIONS_DIR}/{UNPARTITIONED}"]
        else:
            candidates = [PARTITIONS_DIR]
            for _ in self.partition_by:
                candidates = [f"{d}/{n}" for d in candidates for n in self.storage.list(d)
                              if "=" in n]
        keys = [PartitionKey.from_dir(d) for d in candidates]
        present = self.storage.read_many(log_file(k, 1) for k in keys)
        return [Partition(self, k) for k in keys if log_file(k, 1) in present]

    # -- data files ----------------------------------------------------------------------------
    def describe_file(self, url: str) -> DataFile:
        """Stat a Parquet file (size, rows from the footer, fingerprint) to reference it."""
        described, parquet = files.describe(self.storage, url)
        parquet.close()
        return described

    def verify_file(self, file: DataFile) -> None:
        """Raise :class:`MissingFile` / :class:`ChangedFile` unless ``file`` is unchanged."""
        files.verify(self.storage, file)

    def open_file(self, file: DataFile) -> pq.ParquetFile:
        """Verify ``file`` is unchanged and open it (footer read; close it when done)."""
        return files.open_verified(self.storage, file)
