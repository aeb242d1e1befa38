"""Scheduler processes: racing for partitions, killed mid-round, stopped by signals.

Each test runs the ``compactor jobs`` executable (``python -m jobs`` until the group is
registered in the ``compactor`` command line) as separate processes.
"""

from __future__ import annotations

import json
import signal
import time
import urllib.request
from pathlib import Path

import pytest

from compactor.faults import ENV as FAULT_ENV
from compactor.reader import read_partition
from jobs.history import ABANDONED, INTERRUPTED, RUNNING, SUCCEEDED, History
from jobs.leases import Leases
from tests.jobs.conftest import (
    ManualClock,
    compactions,
    jobs_cli,
    make_table,
    start_jobs,
    stop,
    wait_for,
    write_config,
)

pytestmark = pytest.mark.slow
DAYS = ["2024-05-01", "2024-05-02", "2024-05-03"]


@pytest.mark.parametrize("where", ["file", "s3"])
def test_two_schedulers_racing_run_exactly_one_round_per_due_partition(
        request: pytest.FixtureRequest, tmp_path: Path, where: str) -> None:
    root = f"file://{tmp_path}" if where == "file" else \
        f"s3://{request.getfixturevalue('s3_bucket')}"  # leases by conditional PUT over HTTP
    table = make_table(f"{root}/t", DAYS)
    path = write_config(table.url, tmp_path, scheduler="concurrency: 2, lease_ttl: 10s")
    schedulers = [start_jobs("once", path, "--json") for _ in range(2)]
    outputs = [s.communicate(timeout=120) for s in schedulers]
    assert [s.returncode for s in schedulers] == [0, 0], outputs
    runs = [r for out, _ in outputs for r in json.loads(out)["runs"]]
    assert sorted((r["partition"], r["outcome"]) for r in runs) == \
        [(f"day={d}", SUCCEEDED) for d in DAYS]
    assert [compactions(table.partition({"day": d})) for d in DAYS] == [1] * len(DAYS)
    with History(str(tmp_path / "history.sqlite")) as history:  # one history, both wrote it
        assert len(history.recent()) == len(DAYS)
    leases = Leases(table.storage, "observer", 10, ManualClock(time.time()))
    for d in DAYS:  # released, and older epochs cleaned up
        assert leases.holder(table.partition({"day": d}).key) is None
        assert len(table.storage.list(f"_leases/partitions/day={d}")) == 1


def test_a_scheduler_killed_mid_round_commits_nothing_and_its_lease_is_taken_over(
        tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    path = write_config(table.url, tmp_path, scheduler="lease_ttl: 3s")
    marker = tmp_path / "killed"
    # SIGKILL the scheduler itself at the worst moment: its round is written, not yet committed
    killed = jobs_cli("once", path, env={FAULT_ENV: f"commit:kill:{marker}"})
    assert killed.code == -signal.SIGKILL and marker.exists(), killed
    assert compactions(part) == 0 and len(part.snapshot().deltas) == 1  # no partial commit

    leases = Leases(table.storage, "observer", 3, ManualClock(time.time()))
    assert leases.acquire(part.key) is None  # the dead scheduler's lease holds until it expires
    dead = leases.current(part.key)
    assert dead is not None and not dead.released
    with History(str(tmp_path / "history.sqlite")) as history:
        assert [r.outcome for r in history.recent()] == [RUNNING]

    wait_for(lambda: time.time() > dead.expires_at, 10, "the lease to expire")
    takeover = jobs_cli("once", path, "--json")
    assert takeover.code == 0, takeover
    (run,) = json.loads(takeover.out)["runs"]
    assert run["outcome"] == SUCCEEDED and run["rows_out"] == 200
    assert compactions(part) == 1
    assert sorted(read_partition(table, part).column("id").to_pylist()) == list(range(200))

    status = jobs_cli("status", path, "--json")
    outcomes = [(r["outcome"], r["scheduler"] == dead.owner) for r in json.loads(status.out)]
    assert outcomes == [(SUCCEEDED, False), (INTERRUPTED, True)]


@pytest.mark.parametrize("sig, grace, json_logs", [(signal.SIGTERM, "0s", True),
                                                   (signal.SIGINT, "30s", False)])
def test_jobs_run_stops_on_a_signal_in_bounded_time(tmp_path: Path, sig: int, grace: str,
                                                    json_logs: bool) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    path = write_config(table.url, tmp_path, top="metrics: 127.0.0.1:0",
                        scheduler=f"tick: 0.2s, lease_ttl: 6s, shutdown_grace: {grace}")
    process = start_jobs("run", path, *(["--json"] if json_logs else []))
    assert process.stderr is not None
    message = ""
    while not message.startswith("metrics at "):
        line = process.stderr.readline()
        assert line, "the scheduler exited early"
        message = json.loads(line)["message"] if json_logs else line.split(" ", 3)[-1]
    metrics = urllib.request.urlopen(message.split()[-1], timeout=10).read()
    assert b"compactor_jobs_runs_total" in metrics

    history = History(str(tmp_path / "history.sqlite"))
    wait_for(history.recent, 60, "a round to start")
    seconds, err = stop(process, sig)
    assert process.returncode == 0, err
    assert seconds < 15, err
    (run,) = history.recent()
    history.close()
    assert run.outcome in (SUCCEEDED, ABANDONED), run
    assert compactions(part) == (1 if run.outcome == SUCCEEDED else 0)
    if grace != "0s":
        assert run.outcome == SUCCEEDED  # the grace period let it finish
    assert Leases(table.storage, "observer", 6, ManualClock(time.time())).holder(part.key) is None
    last = err.splitlines()[-1]
    assert (json.loads(last)["message"] if json_logs else last).endswith("stopped")
