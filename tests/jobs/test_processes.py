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

import runtime
from compactor.faults import ENV as FAULT_ENV
from compactor.reader import read_partition
from jobs.history import ABANDONED, INTERRUPTED, RUNNING, SUCCEEDED, History
from jobs.leases import Leases
from jobs.scheduler import SystemClock
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


def test_once_interrupted_by_ctrl_c_exits_130(tmp_path: Path) -> None:
    """As ``compactor compact`` does: a Ctrl-C'd run is not a success, even though every
    round it started has an outcome (here abandoned before its commit)."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    part = table.partition({"day": DAYS[0]})
    path = write_config(table.url, tmp_path, scheduler="lease_ttl: 6s, shutdown_grace: 0s")
    marker = tmp_path / "sleeping"
    process = start_jobs("once", path, "--json", env={FAULT_ENV: f"hash_bucket:sleep-3:{marker}"})
    try:
        wait_for(marker.exists, 60, "the round to reach hash_bucket")
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 130, err
    report = json.loads(out)
    assert not report["ok"] and [r["outcome"] for r in report["runs"]] == [ABANDONED]
    assert "interrupted by SIGINT" in err.splitlines()[-1]
    assert compactions(part) == 0


def test_once_names_the_due_partitions_another_scheduler_holds(tmp_path: Path) -> None:
    """Not "nothing was due": a partition held by another scheduler's lease (one killed
    mid-round leaves it for lease_ttl) is listed, and stays due."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:2])
    held = table.partition({"day": DAYS[0]})
    other = Leases(table.storage, "elsewhere:1:x:pidns0", 60.0, SystemClock())
    assert other.acquire(held.key) is not None
    path = write_config(table.url, tmp_path)
    done = jobs_cli("once", path)
    assert done.code == 0, done
    assert f"1 partition(s) due but not run here: another scheduler holds the lease (they " \
           f"stay due): daily day={DAYS[0]}" in " ".join(done.out.split()), done
    report = json.loads(jobs_cli("once", path, "--json").out)
    assert report["ok"] and report["runs"] == []  # (the other day is compacted already)
    assert report["held"] == [{"job": "daily", "partition": f"day={DAYS[0]}"}]
    assert compactions(held) == 0 and compactions(table.partition({"day": DAYS[1]})) == 1


def test_a_local_job_ignores_a_ray_address_in_the_environment(tmp_path: Path) -> None:
    """``COMPACTOR_ADDRESS`` names a Ray cluster: a job on the local backend runs locally."""
    table = make_table(f"file://{tmp_path}/t", DAYS[:1])
    path = write_config(table.url, tmp_path, job="backend: local")
    done = jobs_cli("once", path, "--json", env={"COMPACTOR_ADDRESS": "auto"})
    assert done.code == 0, done
    assert [r["outcome"] for r in json.loads(done.out)["runs"]] == [SUCCEEDED]
    validated = jobs_cli("validate", path, "--json", env={"COMPACTOR_ADDRESS": "auto"})
    (job,) = json.loads(validated.out)["jobs"]
    assert (job["backend"], job["address"]) == ("local", None)


def test_an_address_for_the_local_backend_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match=r"^the local runtime backend takes no address \(got "
                                         r"'auto'\); an address is for the ray backend$"):
        runtime.init("local", address="auto")
    assert not runtime.is_initialized()
