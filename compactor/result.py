"""The public result of a compaction round."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CompactionResult:
    """What one round did. ``committed`` is False when there was nothing to do (or a dry run).

    ``step_seconds`` and ``step_peak_rss`` are keyed by pipeline step (plan, hash_bucket,
    dedupe, materialize, index, commit); peak RSS is the largest resident set of a process that
    ran the step (bytes). ``deletes_applied`` counts keys that were in the compacted state
    before the round and are deleted by it (a key inserted and deleted within one round never
    was there); ``duplicates_dropped`` counts incoming rows that lost to a newer version (a
    rebase counts both as an incremental round of the same deltas would: the compacted rows it
    re-hashes are the keys that were there, not incoming rows).
    ``bytes_read`` counts whole input files (deltas once per step that reads them).
    ``rows_copied``: rows written in row groups copied from a rewritten file as bytes (every
    row of the group survived), not decoded and encoded again. ``small_files_merged``: small
    compacted files rewritten whole, no row of them changed, into fuller ones
    (``compactor.pipeline.small_files``).
    """

    table: str
    partition: str
    committed: bool
    rebased: bool
    position: int | None  # commit number of the new compacted state
    high_watermark_before: int
    high_watermark_after: int
    bucket_count: int
    deltas: int
    rows_in: int
    rows_out: int
    deletes_applied: int
    duplicates_dropped: int
    files_read: int
    bytes_read: int
    files_written: int
    bytes_written: int
    files_referenced: int
    bytes_referenced: int
    buckets_touched: int
    seconds: float
    step_seconds: dict[str, float] = field(default_factory=dict)
    step_peak_rss: dict[str, int] = field(default_factory=dict)
    message: str = ""
    rows_copied: int = 0
    small_files_merged: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def metrics(self) -> dict[str, float]:
        """Flat numeric figures (what the compacted state records as round metrics)."""
        out: dict[str, float] = {
            k: float(v) for k, v in self.to_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        out.update({f"seconds_{k}": v for k, v in self.step_seconds.items()})
        out.update({f"peak_rss_{k}": float(v) for k, v in self.step_peak_rss.items()})
        return out
