"""Compaction survives crashes, and runs unchanged on S3 and on the Ray backend."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

import runtime
from compactor.compaction import compact_partition
from compactor.faults import ENV, InjectedFault
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
