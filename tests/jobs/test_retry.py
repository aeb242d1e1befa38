"""Transient failures are retried with backoff and jitter; permanent ones are recorded, once."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import botocore.exceptions
import pytest
import s3fs.errors

import runtime
from compactor import ChangedFile, CommitConflict, MissingFile, SchemaMismatch
from compactor.compaction import compact_partition
from jobs.config import Retries
from jobs.history import FAILED, SUCCEEDED
from jobs.retry import backoff, is_transient
from jobs.scheduler import Scheduler
from tests.jobs.conftest import compactions, config, make_table


def s3_error(code: str) -> OSError:
    """What s3fs raises for an S3 error answer (botocore's error as its cause)."""
    error = botocore.exceptions.ClientError({"Error": {"Code": code, "Message": code}},
                                            "PutObject")
    return s3fs.errors.translate_boto_error(error)


def wrapped(error: BaseException) -> RuntimeError:
    try:
        raise RuntimeError("the round failed") from error
    except RuntimeError as e:
        return e


@pytest.mark.parametrize("error", [
    runtime.WorkerCrashedError("worker died"), runtime.ActorDiedError("actor died"),
    runtime.ObjectLostError("lost"), CommitConflict("another round committed first"),
    s3_error("SlowDown"), s3_error("ServiceUnavailable"), s3_error("InternalError"),
    s3_error("RequestTimeout"), TimeoutError("read timed out"),
    ConnectionResetError("reset by peer"), wrapped(s3_error("SlowDown")),
], ids=lambda e: f"{type(e).__name__}:{e}"[:40])
def test_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize("error", [
    SchemaMismatch("column v: int64 cannot become string"), MissingFile("file x is gone"),
    ChangedFile("file x changed"), s3_error("AccessDenied"), s3_error("NoSuchBucket"),
    PermissionError("denied"), ValueError("a bug"), wrapped(ValueError("a bug")),
], ids=lambda e: f"{type(e).__name__}:{e}"[:40])
def test_permanent(error: BaseException) -> None:
    assert not is_transient(error)


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    retries = Retries(max=10, backoff=1.0, max_backoff=8.0)
    rng = random.Random(7)
    for attempt, ceiling in [(1, 1), (2, 2), (3, 4), (4, 8), (5, 8), (9, 8)]:
        delays = [backoff(retries, attempt, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not fixed


# -- in the scheduler ---------------------------------------------------------------------------
def failing_first(*errors: BaseException) -> tuple[Callable[..., Any], list[int]]:
    """compact_partition that raises ``errors`` on the first attempts, then really runs."""
    calls: list[int] = []

    def compact(table: Any, partition: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= len(errors):
            raise errors[len(calls) - 1]
        return compact_partition(table, partition, **kwargs)

    return compact, calls


pytestmark = pytest.mark.usefixtures("rt")


def run(tmp_path: Path, compact: Callable[..., Any], **job: str) -> tuple[Scheduler, Any]:
    table = make_table(f"file://{tmp_path}/t", ["2024-05-01"])
    cfg = config(table.url, tmp_path, **job)
    scheduler = Scheduler(cfg, compact=compact)
    (done,) = scheduler.run_once()
    scheduler.shutdown()
    return scheduler, (table, done)


def test_transient_failures_are_retried_then_the_round_succeeds(tmp_path: Path) -> None:
    compact, calls = failing_first(runtime.WorkerCrashedError("worker 3 died"),
                                   CommitConflict("another round committed first"))
    scheduler, (table, done) = run(tmp_path, compact)
    assert (done.outcome, done.attempts, len(calls)) == (SUCCEEDED, 3, 3)
    assert done.rows_out == 200 and done.error is None
    assert compactions(table.partition({"day": "2024-05-01"})) == 1
    assert scheduler.metrics.retries.labels("daily")._value.get() == 2


def test_retries_are_limited(tmp_path: Path) -> None:
    compact, calls = failing_first(*[s3_error("SlowDown")] * 5)
    _, (table, done) = run(tmp_path, compact)  # retries: max 2
    assert (done.outcome, done.attempts, len(calls)) == (FAILED, 3, 3)
    assert done.error == "gave up after 3 attempts: [Errno 16] SlowDown"
    assert done.error_type == "OSError"
    assert compactions(table.partition({"day": "2024-05-01"})) == 0


def test_a_permanent_failure_is_recorded_with_its_message_and_not_retried(tmp_path: Path
                                                                          ) -> None:
    calls: list[int] = []

    def compact(table: Any, partition: Any, **kwargs: Any) -> Any:
        calls.append(1)
        deltas = partition.snapshot().deltas
        Path(deltas[0].files[0].url.removeprefix("file://")).unlink()  # a file vanished
        return compact_partition(table, partition, **kwargs)

    _, (_, done) = run(tmp_path, compact)
    assert (done.outcome, done.attempts, len(calls)) == (FAILED, 1, 1)
    assert done.error_type == "MissingFile"
    assert done.error.startswith(f"file file://{tmp_path}/t/partitions/day=2024-05-01/data/")
    assert done.error.endswith(".parquet does not exist")


def test_a_partition_that_failed_is_not_due_again_until_it_changes_or_the_backoff_passes(
        tmp_path: Path) -> None:
    """A round that failed (here for good: a delta's file vanished) is recorded once, not again
    at every tick: the partition is due again once it changes (a new delta) or after
    ``retries.max_backoff`` (0.1 s here), in case someone put the file back."""
    from tests.jobs.conftest import ManualClock, rows

    table = make_table(f"file://{tmp_path}/t", ["2024-05-01"])
    part = table.partition({"day": "2024-05-01"})
    Path(part.snapshot().deltas[0].files[0].url.removeprefix("file://")).unlink()
    clock = ManualClock()
    scheduler = Scheduler(config(table.url, tmp_path), clock=clock)
    try:
        (first,) = scheduler.run_once()
        assert first.outcome == FAILED and first.error_type == "MissingFile"
        clock.advance(0.05)
        assert scheduler.run_once() == []  # as it was, and within the backoff: not again
        clock.advance(0.1)
        (again,) = scheduler.run_once()  # the backoff passed: tried again
        assert again.outcome == FAILED
        part.append(rows(range(5), "new"))  # it changed: due at once
        (changed,) = scheduler.run_once()
        assert changed.outcome == FAILED and len(scheduler.history.recent(job="daily")) == 3
    finally:
        scheduler.shutdown()
