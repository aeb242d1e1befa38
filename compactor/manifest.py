"""What commits record: data files, deltas and compacted states (frozen, JSON round-trippable).

A commit file holds exactly one of two things: a :class:`Delta` (files plus a kind) or a
:class:`CompactedState` (the bucket-aligned file set a compaction round produced). Files are
*referenced*, never copied: a :class:`DataFile` names the file by URL and pins its identity with
size, row count and a fingerprint (the S3 ETag, or size and modification time elsewhere).
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

OpValue = str | int


class DeltaKind(enum.StrEnum):
    UPSERT = "upsert"  # every row is the new version of its key
    DELETE = "delete"  # rows carry keys (and the ordering column); those keys are deleted
    CDC = "cdc"  # an op column says, per row, upsert or delete


@dataclass(frozen=True)
class CdcOps:
    """How a CDC delta's op column maps to upsert/delete (default: DMS-style ``Op`` I/U/D)."""

    column: str = "Op"
    upsert: tuple[OpValue, ...] = ("I", "U")
    delete: tuple[OpValue, ...] = ("D",)

    def __post_init__(self) -> None:
        if not self.upsert or not self.delete:
            raise ValueError("CdcOps needs at least one upsert and one delete value")
        if set(self.upsert) & set(self.delete):
            raise ValueError(
                f"CdcOps values {sorted(map(str, set(self.upsert) & set(self.delete)))} mean "
                "both upsert and delete"
            )

    def to_dict(self) -> dict[str, Any]:
        return {"column": self.column, "upsert": list(self.upsert), "delete": list(self.delete)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CdcOps:
        return cls(d["column"], tuple(d["upsert"]), tuple(d["delete"]))


@dataclass(frozen=True)
class DataFile:
    """A Parquet file referenced by a commit, pinned by size and fingerprint."""

    url: str
    size: int
    rows: int
    fingerprint: str

    def to_dict(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "rows": self.rows,
                "fingerprint": self.fingerprint}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> DataFile:
        return cls(str(d["url"]), int(d["size"]), int(d["rows"]), str(d["fingerprint"]))


def _files(ds: Any) -> tuple[DataFile, ...]:
    return tuple(DataFile.from_dict(d) for d in ds)


@dataclass(frozen=True)
class Delta:
    """One delta of a partition's stream; ``position`` is its commit number."""

    position: int
    kind: DeltaKind
    files: tuple[DataFile, ...]
    schema_version: int  # table metadata version whose schema covers these files
    committed_at: float  # seconds since the epoch
    cdc: CdcOps | None = None

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "kind": self.kind.value,
            "files": [f.to_dict() for f in self.files], "schema_version": self.schema_version,
            "committed_at": self.committed_at,
            "cdc": None if self.cdc is None else self.cdc.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Delta:
        return cls(
            int(d["position"]), DeltaKind(d["kind"]), _files(d["files"]),
            int(d["schema_version"]), float(d["committed_at"]),
            None if d.get("cdc") is None else CdcOps.from_dict(d["cdc"]),
        )


@dataclass(frozen=True)
class CompactedState:
    """A partition's compacted file set, as committed by a compaction round.

    ``buckets[b]`` lists bucket ``b``'s files in stream order. Every delta at a position up to
    ``high_watermark`` is folded in; deltas above it are still pending. ``metrics`` are the
    round's figures and ``properties`` free-form strings (e.g. where the key index lives).
    """

    position: int
    high_watermark: int
    hash_algorithm: str
    buckets: tuple[tuple[DataFile, ...], ...]
    schema_version: int
    committed_at: float
    metrics: dict[str, float] = field(default_factory=dict, hash=False)
    properties: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def bucket_count(self) -> int:
        return len(self.buckets)

    @property
    def files(self) -> tuple[DataFile, ...]:
        return tuple(f for bucket in self.buckets for f in bucket)

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files)

    def to_dict(self) -> dict[str, Any]:
        return {
            "position": self.position, "high_watermark": self.high_watermark,
            "bucket_count": self.bucket_count, "hash_algorithm": self.hash_algorithm,
            "buckets": [[f.to_dict() for f in b] for b in self.buckets],
            "schema_version": self.schema_version, "committed_at": self.committed_at,
            "metrics": dict(self.metrics), "properties": dict(self.properties),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> CompactedState:
        buckets = tuple(_files(b) for b in d["buckets"])
        if len(buckets) != int(d["bucket_count"]):
            raise ValueError(f"bucket_count {d['bucket_count']} but {len(buckets)} bucket lists")
        return cls(
            int(d["position"]), int(d["high_watermark"]), str(d["hash_algorithm"]), buckets,
            int(d["schema_version"]), float(d["committed_at"]),
            {str(k): float(v) for k, v in d["metrics"].items()},
            {str(k): str(v) for k, v in d["properties"].items()},
        )
