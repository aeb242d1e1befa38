"""Which small compacted files a round merges into fuller ones.

A round writes each bucket's new rows into new files, and rewrites only the files that lost
rows. A partition that mostly gains keys (an append-heavy table, frequent small deltas) would
so gain a small file per bucket per round, without end, until a bucket held
``MAX_FILES_PER_BUCKET`` files and rounds failed; and a task writing less than half a file of a
bucket's rows (a round on many buckets, a first round's last task) writes a small file of them
(a task cuts more rows into files of one size, ``locators.file_rows``: at a 256 MiB target, a
20M-row partition once got five files of 20-73 MB per bucket, a remainder per task).

So a round also rewrites, whole, some of a bucket's *small* files (fewer than half the rows of
a full file), once there are ``MERGE_FILES`` of them or together they hold a full file's rows:
the smallest first, until they hold a full file's rows (or all of them). They go to materialize
as any rewritten file does (every row surviving); their rows are written in order with the
other rows of the bucket that the same materialize task writes (an incremental round's few
sources mostly share one task), cut into files as the task cuts the others
(``locators.file_rows``); a row group of theirs that is a full one of the table's is copied as
its bytes, not decoded (``parquet_splice``). The dedupe actors move their index entries as for
any rewritten file.

A round that finds ``MERGE_FILES`` small files in a bucket merges at least two, and at least
a full file's rows or all of them, so the small files of a bucket fall round after round
to fewer than ``MERGE_FILES`` (a first round's part-full files are merged over as many later
rounds as it takes, not all in the next one), and a round merges about a full file's rows
per bucket at most. The price, for a partition gaining ``s`` rows per bucket per round: a
file collecting them is rewritten every ``MERGE_FILES - 1`` rounds or so until it holds half
a full file's rows; about ``rows_per_file / (2 * MERGE_FILES)`` rows per bucket per round on
average, whatever ``s``.
"""

from __future__ import annotations

from collections.abc import Sequence

from compactor.manifest import DataFile

MERGE_FILES = 8


def is_small(file: DataFile, rows_per_file: int) -> bool:
    return file.rows * 2 < rows_per_file


def to_merge(buckets: Sequence[Sequence[DataFile]], rows_per_file: int
             ) -> dict[int, tuple[int, ...]]:
    """Per bucket with small files to merge, their positions in its file list."""
    merge: dict[int, tuple[int, ...]] = {}
    for b, files in enumerate(buckets):
        small = sorted((f.rows, i) for i, f in enumerate(files) if is_small(f, rows_per_file))
        if len(small) < MERGE_FILES and (
                len(small) < 2 or sum(rows for rows, _ in small) < rows_per_file):
            continue
        chosen: list[int] = []
        total = 0
        for rows, i in small:
            if len(chosen) >= 2 and total >= rows_per_file:
                break
            chosen.append(i)
            total += rows
        merge[b] = tuple(sorted(chosen))
    return merge
