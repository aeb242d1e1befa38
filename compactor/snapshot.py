"""A partition's state at one commit, and how a commit entry moves it forward.

A :class:`Snapshot` is what a reader works from: the compacted state (if any round has
committed) plus the deltas above its high watermark, in stream order. It is immutable and names
its commit number, so a reader that plans from it sees one consistent state however many writers
commit meanwhile. Replaying commit entries onto a snapshot is a pure function (:func:`advance`);
checkpoints are serialized snapshots.

Commit entry format (one JSON object per commit file)::

    {"format": 1, "commit_id": "<uuid hex>", "kind": "delta" | "compaction",
     "delta": {...Delta...} | "compaction": {...CompactedState...}}
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from compactor.layout import PartitionKey
from compactor.manifest import CompactedState, Delta

FORMAT = 1


@dataclass(frozen=True)
class Snapshot:
    """The state of one partition as of commit ``version`` (0: nothing committed yet)."""

    partition: PartitionKey
    version: int
    compacted: CompactedState | None
    deltas: tuple[Delta, ...]  # pending: above the high watermark, ascending position

    @property
    def high_watermark(self) -> int:
        """The last stream position folded into the compacted state (0 if never compacted)."""
        return 0 if self.compacted is None else self.compacted.high_watermark

    @property
    def schema_version(self) -> int:
        """The table metadata version whose schema covers every file of this snapshot."""
        versions = [d.schema_version for d in self.deltas]
        if self.compacted is not None:
            versions.append(self.compacted.schema_version)
        return max(versions, default=1)

    def deltas_since(self, position: int) -> tuple[Delta, ...]:
        """Pending deltas above ``position`` (which must not be below the high watermark)."""
        if position < self.high_watermark:
            raise ValueError(
                f"position {position} is below the high watermark {self.high_watermark}; "
                "use Partition.deltas() to read folded-in deltas"
            )
        return tuple(d for d in self.deltas if d.position > position)

    @property
    def pending_rows(self) -> int:
        return sum(d.rows for d in self.deltas)

    @property
    def pending_size(self) -> int:
        return sum(d.size for d in self.deltas)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT, "partition": [list(kv) for kv in self.partition.items],
            "version": self.version,
            "compacted": None if self.compacted is None else self.compacted.to_dict(),
            "deltas": [d.to_dict() for d in self.deltas],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Snapshot:
        _check_format(d)
        return cls(
            PartitionKey(tuple((str(k), str(v)) for k, v in d["partition"])), int(d["version"]),
            None if d["compacted"] is None else CompactedState.from_dict(d["compacted"]),
            tuple(Delta.from_dict(x) for x in d["deltas"]),
        )


def empty(partition: PartitionKey) -> Snapshot:
    return Snapshot(partition, 0, None, ())


def _check_format(d: Mapping[str, Any]) -> None:
    if d.get("format") != FORMAT:
        raise ValueError(f"unsupported format {d.get('format')!r} (this version reads {FORMAT})")


def delta_entry(delta: Delta, commit_id: str) -> dict[str, Any]:
    return {"format": FORMAT, "commit_id": commit_id, "kind": "delta", "delta": delta.to_dict()}


def compaction_entry(state: CompactedState, commit_id: str) -> dict[str, Any]:
    return {"format": FORMAT, "commit_id": commit_id, "kind": "compaction",
            "compaction": state.to_dict()}


def is_compaction(entry: Mapping[str, Any]) -> bool:
    return entry.get("kind") == "compaction"


def advance(snapshot: Snapshot, number: int, entry: Mapping[str, Any]) -> Snapshot:
    """The snapshot after commit ``number`` (which must be ``snapshot.version + 1``)."""
    if number != snapshot.version + 1:
        raise ValueError(f"commit {number} does not follow version {snapshot.version}")
    _check_format(entry)
    kind = entry.get("kind")
    if kind == "delta":
        delta = Delta.from_dict(entry["delta"])
        if delta.position != number:
            raise ValueError(f"delta records position {delta.position}")
        return replace(snapshot, version=number, deltas=(*snapshot.deltas, delta))
    if kind == "compaction":
        state = CompactedState.from_dict(entry["compaction"])
        if state.position != number:
            raise ValueError(f"compaction records position {state.position}")
        pending = tuple(d for d in snapshot.deltas if d.position > state.high_watermark)
        return Snapshot(snapshot.partition, number, state, pending)
    raise ValueError(f"unknown commit kind {kind!r}")
