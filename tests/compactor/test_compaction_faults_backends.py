"""Compaction survives crashes, and runs unchanged on S3 and on the Ray backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

import runtime
from compactor.commit_log import CommitLog
from compactor.compaction import compact_partition
from compactor.errors import commit_unknown, committed_before
from compactor.faults import ENV, InjectedFault
from compactor.fs import Storage
from compactor.layout import LOG_DIR
from compactor.reader import read_partition
from tests.compactor.test_compaction import SCHEMA, Scenario, _rows


@pytest.fixture
def faulty(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    """Arm one fault (STEP, ACTION) before the runtime starts (workers inherit it)."""

    def arm(step: str, action: str) -> Path:
        marker = tmp_path / f"fault-{step}"
        monkeypatch.setenv(ENV, f"{step}:{action}:{marker}")
        return marker

    return arm


def _two_rounds(s: Scenario) -> None:
    rng = np.random.default_rng(11)
    s.upsert(_rows(rng, 4000, 3000, 0, "a"))
    s.compact_and_check()
    s.upsert(_rows(rng, 4000, 3000, 4000, "b"))
    s.delete(pa.table({"id": rng.integers(0, 3000, 200), "lsn": np.full(200, 9000)}))


@pytest.mark.parametrize("step", ["hash_bucket", "materialize"])
def test_killed_task_worker_is_retried_and_the_result_is_correct(faulty, tmp_path, step):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    marker = faulty(step, "kill")
    with runtime.init("local", num_cpus=2):
        _two_rounds(s)
        s.compact_and_check()
    assert marker.exists()  # the fault really fired


def test_killed_dedupe_actor_restarts_and_reloads_its_index(faulty, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    with runtime.init("local", num_cpus=2):
        _two_rounds(s)
    # workers take their environment at start-up: arm the fault, then start a new runtime,
    # whose actors load the index from storage, die mid-merge, restart and load it again
    marker = faulty("dedupe", "kill")
    with runtime.init("local", num_cpus=2):
        s.compact_and_check()
    assert marker.exists()


def test_failed_commit_publishes_nothing_and_a_rerun_converges(faulty, tmp_path):
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    with runtime.init("local", num_cpus=2):
        _two_rounds(s)
        before = read_partition(s.table, s.part)
        version = s.part.version()
        faulty("commit", "raise")
        with pytest.raises(InjectedFault):
            compact_partition(s.table, s.part)
        assert s.part.version() == version
        assert read_partition(s.table, s.part).equals(before)
        s.compact_and_check()


@pytest.mark.parametrize("where", ["file", "s3"])
def test_an_interrupt_while_the_commit_is_written_keeps_the_files_it_names(
        tmp_path, monkeypatch, request, where):
    """Ctrl-C after the commit's request landed but before its answer did (a helper saw it on
    S3 behind a slow proxy): the round must not remove its files, which the commit names."""
    url = f"file://{tmp_path}/t" if where == "file" else \
        f"s3://{request.getfixturevalue('s3_bucket')}/t"
    s = Scenario(url, SCHEMA, ["id"], "lsn")
    with runtime.init("local", num_cpus=2):
        _two_rounds(s)
        version = s.part.version()
        create = Storage.create

        def landed_then_interrupted(self: Storage, rel: str, data: bytes) -> None:
            create(self, rel, data)
            if rel.split("/")[-2:-1] == [LOG_DIR] and b'"compaction"' in data:
                raise KeyboardInterrupt

        monkeypatch.setattr(Storage, "create", landed_then_interrupted)
        with pytest.raises(KeyboardInterrupt) as interrupted:
            compact_partition(s.table, s.part)
        monkeypatch.undo()
        assert "whether it was committed is unknown" in (commit_unknown(interrupted.value) or "")
        assert s.part.version() == version + 1  # it landed, and every file it names is there
        s.check()
        state = s.part.snapshot().compacted
        assert state is not None and all(s.table.storage.fs.exists(
            s.table.storage.strip(f.url)) for f in state.files)


@pytest.mark.parametrize("when", ["after the log's create returned", "before the create",
                                  "after the commit"])
def test_an_interrupt_around_the_commit_says_what_it_knows_and_keeps_what_may_be_named(
        tmp_path, monkeypatch, when):
    """The review's windows: an interrupt after the commit file was written but before the
    commit returned (the files were removed), one as the file is about to be written (kept:
    it may have landed, as far as the round can tell), one after the commit (says it
    committed); a second Ctrl-C while the first unwinds keeps what the first said."""
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
    with runtime.init("local", num_cpus=2):
        _two_rounds(s)
        version = s.part.version()
        commit, create = CommitLog.commit, Storage.create

        def interrupted_after(self: CommitLog, *args: Any, **kwargs: Any) -> int:
            commit(self, *args, **kwargs)
            raise KeyboardInterrupt

        def interrupted_before(self: Storage, rel: str, data: bytes) -> None:
            if rel.split("/")[-2:-1] == [LOG_DIR] and b'"compaction"' in data:
                raise KeyboardInterrupt
            create(self, rel, data)

        def interrupting(step: str, done: int, *counts: int) -> None:
            if (step, done) == ("commit", 1):
                raise KeyboardInterrupt

        progress = None
        if when == "after the log's create returned":
            monkeypatch.setattr(CommitLog, "commit", interrupted_after)
        elif when == "before the create":
            monkeypatch.setattr(Storage, "create", interrupted_before)
        else:
            progress = interrupting
        with pytest.raises(KeyboardInterrupt) as interrupted:
            compact_partition(s.table, s.part, progress=progress)
        monkeypatch.undo()
        try:  # a second Ctrl-C while the first unwinds keeps what the first said
            raise KeyboardInterrupt from None
        except KeyboardInterrupt as again:
            again.__context__ = interrupted.value
            unknown, committed = commit_unknown(again), committed_before(again)
        landed = s.part.version() == version + 1
        files = list((tmp_path / "t" / "partitions").rglob("compacted/*/*.parquet"))
        if when == "before the create":  # (as inside it: whether it landed is unknown)
            assert "whether it was committed is unknown" in (unknown or "")
            assert committed is None and not landed
            before = s.part.snapshot().compacted
            assert before is not None and len(files) > len(before.files)  # kept, for gc
            s.compact_and_check()
        elif when == "after the commit":
            assert unknown is None and landed
            assert committed == f"the round committed as commit {version + 1} of partition " \
                                f"{s.part.key} of {s.table.url}"
            s.check()
        else:
            assert "whether it was committed is unknown" in (unknown or "") and landed
            s.check()  # every file it names is there


@pytest.fixture
def s3_runtime(s3_bucket: str) -> Iterator[str]:
    with runtime.init("local", num_cpus=2):  # started after the S3 fixture: workers see it
        yield f"s3://{s3_bucket}/tables/t"


def test_compaction_on_the_s3_api_server(s3_runtime):
    s = Scenario(s3_runtime, SCHEMA, ["id"], "lsn")
    _two_rounds(s)
    result = s.compact_and_check()
    assert result.table.startswith("s3://")


@pytest.mark.slow
def test_compaction_on_the_ray_backend(tmp_path):
    pytest.importorskip("ray")
    import ray

    # join the runtime suite's shared instance if there is one
    ctx = runtime.init("ray") if ray.is_initialized() else runtime.init("ray", num_cpus=2)
    with ctx:
        s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn")
        _two_rounds(s)
        s.compact_and_check()
