"""Small compacted files are merged into fuller ones, and the data stays what the oracle says.

A round writes each bucket's new rows into new files; a stream that mostly adds keys would
leave one small file per bucket per round for good. ``compactor.pipeline.small_files`` picks,
from the compacted state alone, the files a round rewrites whole to stop that.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pytest

import runtime
from compactor.manifest import DataFile
from compactor.pipeline.plan import plan_round
from compactor.pipeline.small_files import MERGE_FILES, to_merge
from tests.compactor.test_compaction import SCHEMA, Scenario


def _file(rows: int) -> DataFile:
    return DataFile(f"file:///f{rows}", rows * 10, rows, "x")


def _expected(files: list[DataFile], full: int) -> tuple[int, ...] | None:
    """The rule, restated: the shortest run of the smallest small files (by rows, then
    position) of at least two files and a full file's rows, else all of them, where there
    are MERGE_FILES small files or a full file's rows in them; else none."""
    order = sorted((i for i, f in enumerate(files) if 2 * f.rows < full),
                   key=lambda i: (files[i].rows, i))
    if len(order) < MERGE_FILES and (len(order) < 2 or sum(files[i].rows for i in order) < full):
        return None
    for n in range(2, len(order) + 1):
        if sum(files[i].rows for i in order[:n]) >= full:
            return tuple(sorted(order[:n]))
    return tuple(sorted(order))


def test_small_files_are_merged_when_there_are_enough_of_them_or_a_full_files_worth():
    full = 1000
    small = [_file(100)] * (MERGE_FILES - 1)
    assert to_merge([small], full) == {}  # too few, and too little for a full file
    assert to_merge([[*small, _file(100)]], full) == {0: tuple(range(MERGE_FILES))}
    # files of half a full file or more are not small, and stay where they are
    big = [_file(500), _file(1000), _file(499), _file(499), _file(2), _file(600)]
    assert to_merge([big], full) == {0: (2, 3, 4)}  # 1000 rows of small files: a full one
    assert to_merge([big[:4]], full) == {}  # 998 rows
    assert to_merge([[_file(999)]], 1000) == {}  # one file alone is never merged
    # the smallest first, up to a full file's rows: the rest wait for a later round
    assert to_merge([[_file(400), _file(450), _file(300), _file(100), _file(200)]], full) \
        == {0: (0, 2, 3, 4)}
    assert to_merge([[_file(200)] * MERGE_FILES], full) == {0: (0, 1, 2, 3, 4)}
    # per bucket
    assert to_merge([small, [*small, _file(1)], []], full) == {1: tuple(range(MERGE_FILES))}
    rng = np.random.default_rng(3)
    for _ in range(300):
        files = [_file(int(n)) for n in rng.integers(1, 1200, rng.integers(0, 14))]
        expected = _expected(files, full)
        assert to_merge([files], full) == ({} if expected is None else {0: expected})


@pytest.fixture
def rt() -> Iterator[None]:
    with runtime.init("local", num_cpus=2):
        yield


def _append_mostly(s: Scenario, rng: np.random.Generator, r: int, new: int) -> None:
    """Round ``r``: ``new`` new keys, updates of a few keys of this round's, now and then
    deletes of some (older files lose no row: they stay small)."""
    lsn = r * 10_000
    start = r * new
    ids = np.concatenate([np.arange(start, start + new), rng.integers(start, start + new, 25)])
    s.upsert(pa.table({"id": ids, "v": [f"r{r}-{i}" for i in range(len(ids))],
                       "lsn": np.arange(lsn, lsn + len(ids))}, schema=SCHEMA))
    if r % 3 == 2:
        s.delete(pa.table({"id": rng.integers(start, start + new, 30),
                           "lsn": np.full(30, lsn + 5000)}))


def _everywhere(s: Scenario, rng: np.random.Generator, keys: int) -> None:
    """Updates and deletes of keys all over the partition (in merged files too)."""
    ids = rng.integers(0, keys, 400)
    s.upsert(pa.table({"id": ids, "v": [f"late-{i}" for i in range(400)],
                       "lsn": np.arange(10**7, 10**7 + 400)}, schema=SCHEMA))
    s.delete(pa.table({"id": rng.integers(0, keys, 300), "lsn": np.full(300, 10**7 + 200)}))


def _files(s: Scenario) -> list[list[DataFile]]:
    state = s.part.snapshot().compacted
    assert state is not None
    return [list(b) for b in state.buckets]


def test_an_append_mostly_stream_keeps_few_files_per_bucket_and_matches_the_oracle(tmp_path):
    """Rounds adding keys merge each bucket's small files once there are MERGE_FILES; updates
    and deletes of keys in merged files then find them (the index moved with their rows),
    also after a new runtime reloads the index from storage."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=3)
    rng = np.random.default_rng(5)
    merged = 0
    for rounds in (range(12), range(12, 22)):  # a new runtime reloads the index merges moved
        with runtime.init("local", num_cpus=2):
            for r in rounds:
                _append_mostly(s, rng, r, 600)
                before = _files(s) if r else []
                result = s.compact_and_check()  # (default target: every file here is small)
                counts = [len(b) for b in _files(s)]
                assert max(counts) <= MERGE_FILES, (r, counts)
                if before and max(len(b) for b in before) >= MERGE_FILES:
                    assert result.small_files_merged == sum(
                        len(b) for b in before if len(b) >= MERGE_FILES), r
                    merged += 1
                else:
                    assert result.small_files_merged == 0, r
            _everywhere(s, rng, (r + 1) * 600)
            s.compact_and_check()
    assert merged >= 2
    assert sum(len(b) for b in _files(s)) < 22 * 3 // 2


def test_small_files_holding_a_full_files_rows_are_merged_into_a_full_file(rt, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=2)
    rng = np.random.default_rng(6)
    target = 1_300  # bytes: a file of about two thousand rows
    sum_triggered = False
    for r in range(14):
        _append_mostly(s, rng, r, 800)
        if r:
            plan = plan_round(s.table, s.part, target_file_size=target, bucket_count=None,
                              rebase=False, groups=2)
            per_file = plan.rows_per_file
            before = _files(s)
            expected = {b: m for b, files in enumerate(before)
                        if (m := _expected(files, per_file)) is not None}
            assert plan.small == expected, r
            sum_triggered |= any(len(i) < MERGE_FILES for i in expected.values())
        result = s.compact_and_check(target_file_size=target)
        if r:
            assert result.small_files_merged == sum(len(i) for i in expected.values())
            after = {f.url for b in _files(s) for f in b}
            assert not {before[b][i].url for b, i in
                        ((b, i) for b, ii in expected.items() for i in ii)} & after
    assert sum_triggered
    _everywhere(s, rng, 14 * 800)
    # (this round's rows per file: sized by its delta, whose ids in random order take more
    # bytes a row than the files' ids in order)
    per_file = plan_round(s.table, s.part, target_file_size=target, bucket_count=None,
                          rebase=False, groups=2).rows_per_file
    s.compact_and_check(target_file_size=target)
    # what is left small in a bucket holds less than a full file
    for files in _files(s):
        small_rows = [f.rows for f in files if 2 * f.rows < per_file]
        assert len(small_rows) < MERGE_FILES and (len(small_rows) < 2
                                                  or sum(small_rows) < 2 * per_file)


def test_a_bucket_with_small_files_and_no_new_rows_merges_them_too(rt, tmp_path):
    """The choice is made from the compacted state alone: a bucket the round's delta does not
    touch still has its small files merged, and its index moves with them."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=2)
    for r in range(MERGE_FILES):
        s.upsert(pa.table({"id": np.arange(r * 100, r * 100 + 100), "v": ["x"] * 100,
                           "lsn": np.full(100, r)}, schema=SCHEMA))
        s.compact_and_check()
    assert [len(b) for b in _files(s)] == [MERGE_FILES, MERGE_FILES]
    # one key: one bucket gets it, the other only merges
    s.upsert(pa.table({"id": [3], "v": ["new"], "lsn": [100]}, schema=SCHEMA))
    result = s.compact_and_check()
    assert result.small_files_merged == 2 * MERGE_FILES
    assert [len(b) for b in _files(s)] == [1, 1]
    # and the keys of the untouched bucket are found where they went
    s.delete(pa.table({"id": np.arange(0, 800, 7), "lsn": np.full(115, 200)}))
    s.compact_and_check()
