"""The scheduler in-process: what runs, how many at once, and rounds stopped before their commit."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import runtime
from compactor import Partition, Table, create_table
from compactor.compaction import compact_partition
from compactor.pipeline.tasks import PRELOAD
from compactor.reader import read_partition
from jobs.cli import jobs
from jobs.history import (
    ABANDONED,
    INTERRUPTED,
    NOOP,
    RUNNING,
    SUCCEEDED,
    TIMED_OUT,
    History,
    Run,
)
from jobs.leases import Leases
from jobs.rounds import Abandoned
from jobs.scheduler import Scheduler
from tests.jobs.conftest import (
    SCHEMA,
    ManualClock,
    compactions,
    config,
    make_table,
    rows,
    write_config,
)

pytestmark = pytest.mark.usefixtures("rt")
DAYS = ["2024-05-01", "2024-05-02", "2024-06-01"]


class Gate:
    """compact_partition that stops when it reports ``step`` (before the round's own check of
    it) until ``open()``."""

    def __init__(self, step: str = "commit") -> None:
        self.step = step
        self.reached = threading.Event()
        self._open = threading.Event()

    def open(self) -> None:
        self._open.set()

    def __call__(self, table: Table, partition: Partition, **kwargs: Any) -> Any:
        progress = kwargs["progress"]

        def gated(step: str, done: int, *counts: int) -> None:
            if step == self.step and done == 0:
                self.reached.set()
                self._open.wait(30)
            progress(step, done, *counts)

        return compact_partition(table, partition, **{**kwargs, "progress": gated})


def in_thread(f: Callable[[], Any]) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []
    thread = threading.Thread(target=lambda: out.append(f()))
    thread.start()
    return thread, out


def test_only_due_partitions_of_the_job_run(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS)
    table.partition({"day": "2024-05-02"}).append(rows(range(5), "x"))
    cfg = config(table.url, tmp_path, triggers="{pending_deltas: 2}",
                 job='partitions: {pattern: "day=2024-05-*"}')
    scheduler = Scheduler(cfg)
    runs = scheduler.run_once()
    assert [(r.partition, r.outcome, r.trigger) for r in runs] == \
        [("day=2024-05-02", SUCCEEDED, "2 pending deltas >= 2")]
    assert scheduler.run_once() == []  # compacted: nothing pending any more
    scheduler.shutdown()
    assert [compactions(table.partition({"day": d})) for d in DAYS] == [0, 1, 0]


@pytest.mark.parametrize("job_limit, limit, expected", [("", 2, 2), ("concurrency: 1", 4, 1)])
def test_rounds_at_once_are_limited(tmp_path: Path, job_limit: str, limit: int,
                                    expected: int) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS)
    running, peak = [0], [0]
    lock = threading.Lock()

    def counting(table: Table, partition: Partition, **kwargs: Any) -> Any:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        try:
            time.sleep(0.3)
            return compact_partition(table, partition, **kwargs)
        finally:
            with lock:
                running[0] -= 1

    cfg = config(table.url, tmp_path, job=job_limit, scheduler=f"concurrency: {limit}")
    scheduler = Scheduler(cfg, compact=counting)
    runs = scheduler.run_once()
    scheduler.shutdown()
    assert sorted(r.outcome for r in runs) == [SUCCEEDED] * 3 and peak[0] == expected


def test_a_round_past_its_timeout_stops_before_its_commit(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    gate = Gate("hash_bucket")  # the first step after planning
    scheduler = Scheduler(config(table.url, tmp_path, job="timeout: 0.5s"), compact=gate)
    thread, out = in_thread(scheduler.run_once)
    assert gate.reached.wait(30)
    time.sleep(0.6)
    gate.open()
    thread.join(30)
    scheduler.shutdown()
    (run,) = out[0]
    assert (run.outcome, run.attempts) == (TIMED_OUT, 1)
    assert run.error == "timed out after 0.5s, before the commit"
    part = table.partition({"day": DAYS[0]})
    assert compactions(part) == 0 and len(part.snapshot().deltas) == 1
    assert not list((tmp_path / "t/partitions/day=2024-05-01").glob("compacted/*/*.parquet"))


def test_a_round_that_times_out_while_committing_is_recorded_as_committed(
        tmp_path: Path) -> None:
    """The timeout passes after the fence before the commit: the round commits, and is a
    success (it was recorded 'timed out ..., before the commit', its commit in the log)."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])

    def slow_commit(table: Table, partition: Partition, **kwargs: Any) -> Any:
        fence = kwargs["progress"]

        def progress(step: str, done: int, *counts: int) -> None:
            fence(step, done, *counts)
            if (step, done) == ("commit", 0):  # past the deadline, the commit still to write
                time.sleep(max(0.0, fence.__self__.deadline - time.monotonic()) + 0.1)

        return compact_partition(table, partition, **{**kwargs, "progress": progress})

    scheduler = Scheduler(config(table.url, tmp_path, job="timeout: 3s"), compact=slow_commit)
    (run,) = scheduler.run_once()
    scheduler.shutdown()
    assert (run.outcome, run.error) == (SUCCEEDED, None)
    assert compactions(table.partition({"day": DAYS[0]})) == 1


def test_stopping_abandons_a_running_round_before_its_commit(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    gate = Gate()
    scheduler = Scheduler(config(table.url, tmp_path), compact=gate)
    thread, _ = in_thread(scheduler.run_once)
    assert gate.reached.wait(30)
    scheduler.request_stop()
    stopper, _ = in_thread(lambda: scheduler.shutdown(grace=0.2))
    time.sleep(0.4)  # past the grace period: the round is told to stop
    gate.open()
    started = time.monotonic()
    stopper.join(30)
    thread.join(30)
    assert time.monotonic() - started < 5
    (run,) = scheduler.finished  # run_once returned when told to stop; shutdown() ended it
    assert run.outcome == ABANDONED and "abandoned before its commit" in (run.error or "")
    part = table.partition({"day": DAYS[0]})
    assert compactions(part) == 0
    assert Leases(table.storage, "other", 60, ManualClock()).holder(part.key) is None  # released
    with History(str(tmp_path / "history.sqlite")) as history:
        assert [r.outcome for r in history.recent()] == [ABANDONED]


def test_a_stopping_scheduler_does_not_retry(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    started, crash = threading.Event(), threading.Event()

    def crashing(table: Table, partition: Partition, **kwargs: Any) -> Any:
        started.set()
        crash.wait(30)
        raise runtime.WorkerCrashedError("worker 7 died (SIGINT)")

    scheduler = Scheduler(config(table.url, tmp_path), compact=crashing)
    thread, _ = in_thread(scheduler.run_once)
    assert started.wait(30)
    scheduler.request_stop()  # as on SIGTERM/SIGINT
    crash.set()
    scheduler.shutdown(grace=30)
    thread.join(30)
    (run,) = scheduler.finished
    assert (run.outcome, run.attempts) == (ABANDONED, 1)
    assert run.error == "the scheduler is stopping, so this was not retried: worker 7 died (SIGINT)"


def test_a_round_whose_lease_ran_out_does_not_commit(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    clock = ManualClock(time.time())
    gate = Gate()
    scheduler = Scheduler(config(table.url, tmp_path), compact=gate, clock=clock)
    thread, out = in_thread(scheduler.run_once)
    assert gate.reached.wait(30)
    clock.advance(7)  # lease_ttl is 6s: expired, as if this scheduler had stalled
    other = Leases(table.storage, "other", 6, clock)
    assert other.acquire(part.key) is not None
    gate.open()
    thread.join(30)
    scheduler.shutdown()
    (run,) = out[0]
    assert run.outcome == ABANDONED
    assert run.error in (f"the lease of partition {part.key} ran out before the commit",
                         f"partition {part.key} in {table.url}: the lease was taken over by "
                         "other")
    assert compactions(part) == 0


def test_a_round_longer_than_the_lease_keeps_it_by_renewing(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    gate = Gate("hash_bucket")
    cfg = config(table.url, tmp_path, scheduler="lease_ttl: 2s")
    scheduler = Scheduler(cfg, compact=gate)
    thread, out = in_thread(scheduler.run_once)
    assert gate.reached.wait(30)
    time.sleep(2.5)  # longer than the TTL: only renewals keep the lease
    observer = Leases(table.storage, "other", 2, ManualClock(time.time()))
    held = observer.holder(part.key)
    assert held is not None and held.owner == scheduler.owner and held.epoch > 2
    assert observer.acquire(part.key) is None
    gate.open()
    thread.join(30)
    scheduler.shutdown()
    assert [r.outcome for r in out[0]] == [SUCCEEDED] and compactions(part) == 1


def test_once_runs_what_is_due(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:2])
    path = write_config(table.url, tmp_path)
    result = CliRunner().invoke(jobs, ["once", str(path)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split()[:5] == ["job", "partition", "started", "duration", "outcome"]
    assert sorted(line.split()[1] for line in lines[1:]) == [f"day={d}" for d in DAYS[:2]]
    assert all(line.split()[4] == "succeeded" for line in lines[1:])
    assert "round started (1 pending deltas >= 1)" in result.stderr
    result = CliRunner().invoke(jobs, ["once", str(path), "--json"])
    assert result.exit_code == 0 and json.loads(result.stdout) == {"ok": True, "runs": [],
                                                                   "errors": [], "held": []}


def test_a_partition_leased_by_another_scheduler_is_left_alone(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:2])
    held = Leases(table.storage, "elsewhere", 60, ManualClock(time.time()))
    lease = held.acquire(table.partition({"day": DAYS[0]}).key)
    assert lease is not None
    scheduler = Scheduler(config(table.url, tmp_path))
    assert [r.partition for r in scheduler.run_once()] == [f"day={DAYS[1]}"]
    held.release(lease)
    assert [r.partition for r in scheduler.run_once()] == [f"day={DAYS[0]}"]
    scheduler.shutdown()


def test_a_conflicting_round_retries_from_the_new_state(tmp_path: Path) -> None:
    """Another process compacts the partition just before the round's commit: the round gets a
    CommitConflict, and its next attempt plans from the new state (nothing left to do)."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    calls: list[int] = []

    def racing(table: Table, partition: Partition, **kwargs: Any) -> Any:
        calls.append(1)
        progress = kwargs["progress"]

        def other_writer_first(step: str, done: int, *counts: int) -> None:
            if len(calls) == 1 and step == "commit" and done == 0:
                subprocess.run([sys.executable, "-c", OTHER_WRITER, table.url,
                                json.dumps(partition.values)], check=True, timeout=120)
            progress(step, done, *counts)

        return compact_partition(table, partition, **{**kwargs, "progress": other_writer_first})

    scheduler = Scheduler(config(table.url, tmp_path), compact=racing)
    (run,) = scheduler.run_once()
    scheduler.shutdown()
    assert (run.outcome, run.attempts, run.error) == (NOOP, 2, None)
    part = table.partition({"day": DAYS[0]})
    assert compactions(part) == 1  # the other writer's only
    assert read_partition(table, part).num_rows == 200


OTHER_WRITER = """
import json, sys
from compactor import open_table
from compactor.compaction import compact_partition
from compactor.pipeline.tasks import PRELOAD
from compactor.reader import read_partition
table = open_table(sys.argv[1])
assert compact_partition(table, json.loads(sys.argv[2])).committed
"""


def test_once_reports_a_table_it_cannot_read(tmp_path: Path) -> None:
    path = write_config(f"file://{tmp_path}/nothing-here", tmp_path)
    result = CliRunner().invoke(jobs, ["once", str(path), "--json"])
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert not report["ok"] and report["runs"] == [] and report["errors"] == [
        f"job daily: no table at file://{tmp_path}/nothing-here (no _table/metadata/ metadata)"]
    # what every command's --json failure document has
    assert (report["exit_code"], report["error_type"]) == (1, "RoundsFailed")
    assert report["error"].startswith("0 round(s) failed, 1 evaluation error(s); first: job")
    assert "error: 0 round(s) failed, 1 evaluation error(s); first: job daily: no table at " \
        in result.stderr


def test_jobs_on_another_backend_wait_for_the_runtime_to_be_free(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """One runtime per process: switching backend or address waits until no round runs."""
    import jobs.scheduler

    calls: list[tuple[str, ...]] = []
    state = {"up": False}

    class FakeRuntime:
        @staticmethod
        def is_initialized() -> bool:
            return state["up"]

        @staticmethod
        def init(backend: str, address: str | None = None, preload: tuple = ()) -> None:
            assert preload == PRELOAD  # the workers import the pipeline once, in the zygote
            calls.append(("init", backend, str(address)))
            state["up"] = True

        @staticmethod
        def shutdown() -> None:
            calls.append(("shutdown",))
            state["up"] = False

    monkeypatch.setattr(jobs.scheduler, "runtime", FakeRuntime)
    slot = jobs.scheduler._Runtime()
    assert slot.ready(("local", None), busy=False)
    assert slot.ready(("local", None), busy=True)  # the same runtime: no wait
    assert not slot.ready(("ray", "auto"), busy=True)  # another one: wait for idle
    assert slot.ready(("ray", "auto"), busy=False)
    slot.close()
    assert calls == [("init", "local", "None"), ("shutdown",), ("init", "ray", "auto"),
                     ("shutdown",)]
    state["up"] = True  # started by the embedding program: used as it is, never shut down
    assert jobs.scheduler._Runtime().ready(("ray", None), busy=False)
    assert len(calls) == 4


def test_once_exits_1_when_a_round_was_abandoned(tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """An abandoned round (its lease lost, the grace period over) committed nothing: the run
    did not do its work, so ``once`` must not report success."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])

    def lease_lost(table: Table, partition: Partition, **kwargs: Any) -> Any:
        raise Abandoned(ABANDONED, "the lease of partition day=2024-05-01 ran out before the "
                                   "commit")

    monkeypatch.setattr("jobs.cli._scheduler", lambda cfg: Scheduler(cfg, compact=lease_lost))
    result = CliRunner().invoke(jobs, ["once", str(write_config(table.url, tmp_path)), "--json"])
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert not report["ok"] and [r["outcome"] for r in report["runs"]] == [ABANDONED]
    assert "error: 1 round(s) failed, 0 evaluation error(s); first: daily partition " \
           "day=2024-05-01: abandoned: the lease of partition" in result.stderr


def test_a_timed_out_round_is_not_rerun_at_every_tick(tmp_path: Path,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Like a failed round: due again once the partition changes or max_backoff has passed."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    clock = ManualClock(time.time())

    def slow(table: Table, partition: Partition, **kwargs: Any) -> Any:
        time.sleep(0.2)  # past the timeout: the round's next check stops it
        return compact_partition(table, partition, **kwargs)

    cfg = config(table.url, tmp_path, job="timeout: 0.1s")  # retries.max_backoff: 0.1s
    scheduler = Scheduler(cfg, clock=clock, compact=slow)
    try:
        with caplog.at_level(logging.INFO, logger="jobs"):
            assert [r.outcome for r in scheduler.run_once()] == [TIMED_OUT]
        (record,) = [r for r in caplog.records if "timed_out after" in r.getMessage()]
        assert record.levelno == logging.ERROR
        assert scheduler.run_once() == []  # the next tick: not again as it is
        assert scheduler.run_once() == []
        clock.advance(0.2)  # max_backoff has passed
        assert [r.outcome for r in scheduler.run_once()] == [TIMED_OUT]
        assert scheduler.run_once() == []
        part.append(rows(range(5), "new", 1000))  # the partition changed
        assert [r.outcome for r in scheduler.run_once()] == [TIMED_OUT]
    finally:
        scheduler.shutdown()
    assert compactions(part) == 0


def test_a_cron_fire_that_meets_a_crashed_schedulers_lease_runs_once_it_expires(
        tmp_path: Path) -> None:
    """The fire is not used up by a lease it could not take: it stays due (coalesced) and
    runs when the lease expires, not an hour later at the next fire."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    hour = 3600.0
    clock = ManualClock((time.time() // hour + 1) * hour + 600)  # 10 past an hour, ahead
    cfg = config(table.url, tmp_path, triggers='{cron: "0 * * * *"}', scheduler="lease_ttl: 90s")
    scheduler = Scheduler(cfg, clock=clock)
    try:
        assert scheduler.run_once() == []  # first seen: the schedule starts now
        clock.advance(49 * 60 + 30)  # HH:59:30: another scheduler takes the lease, then dies
        assert Leases(table.storage, "elsewhere:1:dead", 90, clock).acquire(part.key)
        clock.advance(35)  # HH+1:00:05: the cron fired, the dead lease holds until 01:00
        assert scheduler.run_once() == []
        clock.advance(60)  # HH+1:01:05: the lease has expired
        assert [r.outcome for r in scheduler.run_once()] == [SUCCEEDED]
        part.append(rows(range(5), "new", 1000))
        clock.advance(60)
        assert scheduler.run_once() == []  # that fire is used up now: the next is at HH+2:00
    finally:
        scheduler.shutdown()
    assert compactions(part) == 1


def test_a_listed_partition_of_other_columns_is_an_error_of_its_own(tmp_path: Path) -> None:
    """One entry naming columns the table is not partitioned by stopped every partition of the
    job ('no round ran'); the others run, and the entry is an error naming it."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:2])
    cfg = config(table.url, tmp_path, job='partitions: ["day=2024-05-01", '
                                          '"day=2024-05-03,x=a", "day=2024-05-02"]')
    scheduler = Scheduler(cfg)
    try:
        assert sorted((r.partition, r.outcome) for r in scheduler.run_once()) == [
            ("day=2024-05-01", SUCCEEDED), ("day=2024-05-02", SUCCEEDED)]
        assert scheduler.errors == [
            f"job daily: listed partition day=2024-05-03,x=a: table {table.url}: partition "
            "values name columns ['day', 'x'] but the table is partitioned by ['day']"]
    finally:
        scheduler.shutdown()


def test_a_listed_partition_the_table_lacks_is_said_once_and_runs_once_it_comes(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    cfg = config(table.url, tmp_path, job='partitions: ["day=2024-05-01", "day=2024-07-01"]')
    scheduler = Scheduler(cfg)
    with caplog.at_level(logging.WARNING, logger="jobs.scheduler"):
        assert [r.partition for r in scheduler.run_once()] == ["day=2024-05-01"]
        assert scheduler.run_once() == []
    missing = [r.getMessage() for r in caplog.records if "no such partition" in r.getMessage()]
    assert missing == [f"job daily partition day=2024-07-01: the table {table.url} has no such "
                       "partition (yet); it is due once deltas are registered to it"]
    assert scheduler.errors == []
    table.partition({"day": "2024-07-01"}).append(rows(range(3), "late"))
    assert [(r.partition, r.outcome) for r in scheduler.run_once()] == \
        [("day=2024-07-01", SUCCEEDED)]
    scheduler.shutdown()


def test_a_running_scheduler_marks_the_round_of_a_scheduler_that_died_since_interrupted(
        tmp_path: Path) -> None:
    """Not only at its start: a long-running scheduler sharing the history finds, at a tick,
    the rows of a scheduler on its host whose process has gone since; never those of a process
    of another PID namespace (another container with the host's name)."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    scheduler = Scheduler(config(table.url, tmp_path))
    owner_host, _, _, *namespace = scheduler.owner.split(":")
    assert owner_host == socket.gethostname() and namespace[0].startswith("pidns")
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    with History(str(tmp_path / "history.sqlite")) as history:
        rows = {name: history.start(Run("other", table.url, "day=x", "manual", owner,
                                        time.time()))
                for name, owner in [
                    ("alive", f"{owner_host}:{alive.pid}:abcd:{namespace[0]}"),
                    ("elsewhere", f"{owner_host}:{gone.pid}:abcd:pidns1")]}

        def run_of(name: str) -> Run:
            return next(r for r in history.recent() if r.id == rows[name].id)

        stop = threading.Event()
        thread, _ = in_thread(lambda: scheduler.run(stop))
        try:
            time.sleep(1.0)  # some ticks: the scheduler's start is long past
            assert run_of("alive").outcome == RUNNING
            alive.kill()
            alive.wait()
            deadline = time.monotonic() + 30
            while run_of("alive").outcome == RUNNING:
                assert time.monotonic() < deadline, "the dead scheduler's row stayed running"
                time.sleep(0.1)
            dead = run_of("alive")
            assert dead.outcome == INTERRUPTED and dead.finished_at is not None
            assert f":{alive.pid}:" in (dead.error or "")
            assert "stopped before the round finished" in (dead.error or "")
            assert run_of("elsewhere").outcome == RUNNING  # (its pid means nothing here)
        finally:
            stop.set()
            thread.join(30)
            scheduler.shutdown()


def test_listed_partitions_take_the_printed_form_and_a_pattern_that_matches_none_is_said(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """A partition with a value that needs escaping, listed as `show` prints it (escaped,
    '/' between pairs) or with commas and escapes, is the partition (it was taken as
    'eu%20west' literally: never compacted); a pattern matching no partition is warned of."""
    table = create_table(f"file://{tmp_path}/t", SCHEMA, primary_key=["id"],
                         ordering_column="lsn", partition_by=["day", "region"])
    spaced = table.partition({"day": "2024-05-01", "region": "eu west"})
    spaced.append(rows(range(5), "x"))
    assert str(spaced.key) == "day=2024-05-01/region=eu%20west"
    for listed in ("day=2024-05-01/region=eu%20west", "day=2024-05-01,region=eu%20west"):
        spaced.append(rows(range(5), listed))
        cfg = config(table.url, tmp_path, job=f'partitions: ["{listed}"]')
        scheduler = Scheduler(cfg)
        assert [(r.partition, r.outcome) for r in scheduler.run_once()] == \
            [(str(spaced.key), SUCCEEDED)], listed
        scheduler.shutdown()
    assert compactions(spaced) == 2
    cfg = config(table.url, tmp_path, job='partitions: {pattern: "day=2024-06-*"}')
    scheduler = Scheduler(cfg)
    with caplog.at_level(logging.WARNING, logger="jobs.scheduler"):
        assert scheduler.run_once() == [] and scheduler.run_once() == []
    scheduler.shutdown()
    said = [r.getMessage() for r in caplog.records if "matches" in r.getMessage()]
    assert said == [f"job daily: no partition of {table.url} matches the pattern "
                    "'day=2024-06-*' (it is matched against k=v/k2=v2, values unescaped, "
                    "e.g. day=2024-05-01/region=eu west)"]
