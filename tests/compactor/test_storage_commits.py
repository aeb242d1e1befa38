"""Commits: linearizable appends under concurrency, snapshots, compacted states, checkpoints."""

from __future__ import annotations

import multiprocessing
import threading
import uuid
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compactor import CommitConflict, DataFile, Partition, Storage, open_table
from compactor.layout import checkpoint_dir
from tests.compactor._storage import SCHEMA, new_table


def _rows(ids: list[int]) -> pa.Table:
    return pa.table({"id": ids, "v": [str(i) for i in ids]}, schema=SCHEMA)


def _all_ids(part: Partition) -> list[int]:
    ids: list[int] = []
    for delta in part.snapshot().deltas:
        for f in delta.files:
            ids.extend(part.table.open_file(f).read(columns=["id"]).column("id").to_pylist())
    return sorted(ids)


def _append_many(url: str, writer: int, count: int) -> list[int]:
    part = open_table(url).partition()
    return [part.append(_rows([writer * 1000 + i])).position for i in range(count)]


def _check_nothing_lost(part: Partition, positions: list[int], writers: int, count: int) -> None:
    assert sorted(positions) == list(range(1, writers * count + 1))
    assert [d.position for d in part.snapshot().deltas] == sorted(positions)
    assert _all_ids(part) == sorted(w * 1000 + i for w in range(writers) for i in range(count))


def test_threads_appending_lose_nothing_and_get_consecutive_positions(table_root: str) -> None:
    writers, count = 8, 5
    new_table(table_root, checkpoint_interval=7)  # checkpoints are written under contention too
    with ThreadPoolExecutor(writers) as pool:
        results = list(pool.map(_append_many, [table_root] * writers, range(writers),
                                 [count] * writers))
    for mine in results:
        assert mine == sorted(mine)  # each writer's own deltas keep its order
    part = open_table(table_root).partition()
    _check_nothing_lost(part, [p for r in results for p in r], writers, count)
    assert part.log.checkpoints() == [7, 14, 21, 28, 35]


@pytest.fixture(params=["file", "s3"])
def shared_root(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A table root that several processes can reach (memory:// is per process)."""
    if request.param == "file":
        return f"file://{tmp_path}/t"
    return f"s3://{request.getfixturevalue('s3_bucket')}/t"


def test_processes_appending_lose_nothing(shared_root: str) -> None:
    writers, count = 4, 5
    new_table(shared_root, checkpoint_interval=6)
    with ProcessPoolExecutor(writers, mp_context=multiprocessing.get_context("spawn")) as pool:
        results = list(pool.map(_append_many, [shared_root] * writers, range(writers),
                                [count] * writers))
    part = open_table(shared_root).partition()
    _check_nothing_lost(part, [p for r in results for p in r], writers, count)


def test_snapshots_are_consistent_and_historical(table_root: str) -> None:
    part = new_table(table_root, checkpoint_interval=4).partition()
    seen = []
    for i in range(10):
        part.append(_rows([i]))
        seen.append(part.snapshot())
    reader = open_table(table_root).partition()
    for snap in seen:
        assert reader.snapshot(snap.version) == snap
    assert [d.position for d in reader.snapshot(6).deltas] == [1, 2, 3, 4, 5, 6]


def _compacted_file(part: Partition, ids: list[int], bucket: int) -> DataFile:
    from compactor.layout import new_compacted_file

    rel = new_compacted_file(part.key, bucket)
    with part.table.storage.open_output(rel) as out:
        import pyarrow.parquet as pq

        pq.write_table(_rows(ids), out)
    return part.table.describe_file(part.table.storage.url_of(part.table.storage.path(rel)))


def test_compaction_commit_records_the_compacted_state(table_root: str) -> None:
    part = new_table(table_root).partition()
    for i in range(3):
        part.append(_rows([i]))
    base = part.snapshot()
    buckets = [[_compacted_file(part, [0, 2], 0)], [], [_compacted_file(part, [1], 2)]]
    state = part.commit_compaction(base, high_watermark=3, buckets=buckets,
                                   metrics={"rows_out": 3, "seconds": 0.25},
                                   properties={"index": "pk-index/v4"})
    assert (state.position, state.high_watermark, state.bucket_count) == (4, 3, 3)
    part.append(_rows([9]))
    snap = open_table(table_root).partition().snapshot()
    assert snap.compacted == state
    assert snap.compacted.hash_algorithm == part.table.hash_algorithm
    assert snap.compacted.metrics == {"rows_out": 3.0, "seconds": 0.25}
    assert (snap.compacted.rows, len(snap.compacted.files)) == (3, 2)
    assert [d.position for d in snap.deltas] == [5]
    assert snap.high_watermark == 3
    # folded-in deltas stay listable
    assert [d.position for d in part.deltas()] == [1, 2, 3, 5]


def test_deltas_appended_during_a_round_stay_pending(table_root: str) -> None:
    part = new_table(table_root).partition()
    part.append(_rows([1]))
    part.append(_rows([2]))
    base = part.snapshot()
    part.append(_rows([3]))  # lands while the round runs
    state = part.commit_compaction(base, high_watermark=2,
                                   buckets=[[_compacted_file(part, [1, 2], 0)]])
    assert state.position == 4  # rebased over the append
    snap = part.snapshot()
    assert [d.position for d in snap.deltas] == [3]
    assert _all_ids(part) == [3]


def test_racing_compactions_exactly_one_commits(table_root: str) -> None:
    part = new_table(table_root).partition()
    part.append(_rows([1]))
    base = part.snapshot()
    files = [_compacted_file(part, [1], 0) for _ in range(6)]
    barrier = threading.Barrier(len(files))

    def commit(f: DataFile) -> Any:
        racer = open_table(table_root).partition()
        barrier.wait()
        try:
            return racer.commit_compaction(base, high_watermark=1, buckets=[[f]])
        except CommitConflict as e:
            return e

    with ThreadPoolExecutor(len(files)) as pool:
        outcomes = list(pool.map(commit, files))
    conflicts = [o for o in outcomes if isinstance(o, CommitConflict)]
    assert len(conflicts) == len(files) - 1
    assert "another compaction committed at 2 after commit 1" in str(conflicts[0])
    assert part.version() == 2
    (winner,) = [o for o in outcomes if not isinstance(o, CommitConflict)]
    assert part.snapshot().compacted == winner


def test_compaction_watermark_must_lie_within_the_base(table_root: str) -> None:
    part = new_table(table_root).partition()
    part.append(_rows([1]))
    base = part.snapshot()
    with pytest.raises(ValueError, match="high watermark 2 is outside \\[0, 1\\]"):
        part.commit_compaction(base, high_watermark=2, buckets=[[]])
    with pytest.raises(ValueError, match="at least one bucket"):
        part.commit_compaction(base, high_watermark=1, buckets=[])
    assert part.version() == 1


def _count_commit_reads(monkeypatch: pytest.MonkeyPatch, storage: Storage) -> list[str]:
    read: list[str] = []
    original = Storage.read_many

    def counting(self: Storage, rels: Any) -> dict[str, bytes]:
        rels = list(rels)
        found = original(self, rels)
        read.extend(r for r in rels if r in found and "/_log/" in r)
        return found

    monkeypatch.setattr(Storage, "read_many", counting)
    return read


def test_checkpoints_bound_the_commits_read_on_open(table_root: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    part = new_table(table_root, checkpoint_interval=10).partition()
    for i in range(35):
        part.append(_rows([i]))
    part.commit_compaction(part.snapshot(), high_watermark=30, buckets=[[]])
    part.append(_rows([99]))
    assert part.log.checkpoints() == [10, 20, 30]
    full = part.snapshot()

    read = _count_commit_reads(monkeypatch, part.table.storage)
    reopened = open_table(table_root).partition()
    assert reopened.snapshot() == full
    assert len(read) == 7  # commits 31..37: everything before is in checkpoint 30
    read.clear()
    assert reopened.snapshot(25).version == 25
    assert len(read) == 5

    # checkpoints are an optimization only: without them the answer is the same
    storage = part.table.storage
    storage.fs.rm(storage.path(checkpoint_dir(part.key)), recursive=True)
    assert open_table(table_root).partition().snapshot() == full
    assert [d.position for d in full.deltas] == [31, 32, 33, 34, 35, 37]


def test_a_failed_checkpoint_never_fails_the_commit(table_root: str,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    part = new_table(table_root, checkpoint_interval=2).partition()
    part.append(_rows([1]))
    original = Storage.create

    def flaky(self: Storage, rel: str, data: bytes) -> None:
        if "_checkpoints" in rel:
            raise OSError("storage hiccup")
        original(self, rel, data)

    monkeypatch.setattr(Storage, "create", flaky)
    assert part.append(_rows([2])).position == 2
    assert part.log.checkpoints() == []
    assert part.snapshot().version == 2


def test_a_retried_request_that_already_landed_counts_as_a_win(
    table_root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An S3 PUT can time out after landing; its retry then meets If-None-Match: the commit
    must be recognized as ours, not re-tried as a new delta."""
    part = new_table(table_root).partition()
    original = Storage.create

    def landed_then_retried(self: Storage, rel: str, data: bytes) -> None:
        original(self, rel, data)
        if "/_log/" in rel:
            raise FileExistsError(rel)

    monkeypatch.setattr(Storage, "create", landed_then_retried)
    assert part.append(_rows([1])).position == 1
    assert part.version() == 1


def test_snapshot_of_many_deltas_sums_rows(table_root: str) -> None:
    part = new_table(table_root).partition()
    for i in range(4):
        part.append(_rows(list(range(i + 1))))
    snap = part.snapshot()
    assert snap.pending_rows == 1 + 2 + 3 + 4
    ids = _all_ids(part)
    assert pc.sum(pa.array(ids)).as_py() == sum(sum(range(i + 1)) for i in range(4))


@settings(max_examples=40, deadline=None)
@given(ops=st.lists(st.one_of(st.just(("append", 0.0)),
                              st.tuples(st.just("compact"), st.floats(0, 1))),
                    min_size=1, max_size=30),
       interval=st.integers(1, 6))
def test_every_version_replays_to_the_modelled_state(ops: list[tuple[str, float]],
                                                     interval: int) -> None:
    """Model: a compaction at watermark w keeps exactly the deltas above w pending."""
    name = f"/prop-{uuid.uuid4().hex}"
    try:
        _check_model(f"memory://{name}/t", ops, interval)
    finally:
        fsspec.filesystem("memory").rm(name, recursive=True)


def _check_model(root: str, ops: list[tuple[str, float]], interval: int) -> None:
    part = new_table(root, checkpoint_interval=interval).partition()
    model: dict[int, tuple[int, list[int]]] = {}  # version -> (watermark, pending positions)
    watermark, pending = 0, []
    for op, fraction in ops:
        if op == "append":
            pending.append(part.append(_rows([1])).position)
        else:
            base = part.snapshot() if part.version() else None
            if base is None:
                continue
            watermark = base.high_watermark + round(fraction * (base.version -
                                                                base.high_watermark))
            part.commit_compaction(base, high_watermark=watermark, buckets=[[]])
            pending = [p for p in pending if p > watermark]
        model[part.version()] = (watermark, list(pending))
    reader = open_table(root).partition()
    for version, (mark, positions) in model.items():
        snap = reader.snapshot(version)
        assert (snap.high_watermark, [d.position for d in snap.deltas]) == (mark, positions)
    assert reader.log.checkpoints() == [n for n in range(1, part.version() + 1)
                                        if n % interval == 0]


def test_a_refused_commit_is_a_permission_error_not_an_unknown_outcome(tmp_path, monkeypatch):
    """A write refused (credentials) stored nothing: it is not read back, and not reported as
    a commit of unknown outcome (a conflict, retried by jobs, its files left behind) when the
    read-back would fail as well."""
    part = new_table(f"file://{tmp_path}/t").partition()
    storage = part.table.storage
    read_many, creates = storage.read_many, []

    def refused(*args: object, **kwargs: object) -> None:
        creates.append(args)
        raise PermissionError("Access Denied")

    def unreadable_once_refused(*args: object, **kwargs: object) -> object:
        if creates:
            raise PermissionError("Access Denied (reading)")
        return read_many(*args, **kwargs)

    monkeypatch.setattr(storage, "create", refused)
    monkeypatch.setattr(storage, "read_many", unreadable_once_refused)
    with pytest.raises(PermissionError, match=r"Access Denied$"):
        part.append(_rows([1]))
    assert len(creates) == 1
