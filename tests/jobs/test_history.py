"""The run history is a real SQLite file that outlives its writers and is shared by several."""

from __future__ import annotations

import json
import multiprocessing
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from click.testing import CliRunner

from jobs.cli import jobs
from jobs.history import FAILED, RUNNING, SUCCEEDED, History, HistoryUnavailable, Run


def a_run(job: str = "orders", partition: str = "day=2024-05-01", started: float = 100.0
          ) -> Run:
    return Run(job, "file:///t", partition, "3 pending deltas >= 1", "host:1:abc", started)


def test_runs_survive_reopening(tmp_path: Path) -> None:
    path = str(tmp_path / "state" / "jobs.sqlite")  # parent directories are created
    with History(path) as history:
        first = history.start(a_run(started=100.0))
        second = history.start(a_run(partition="day=2024-05-02", started=101.0))
        assert first.id is not None and first.outcome == RUNNING
        history.finish(replace(first, outcome=SUCCEEDED, finished_at=112.5, attempts=1,
                               rows_in=10, rows_out=8, bytes_read=1000, bytes_written=800))
        history.finish(replace(second, outcome=FAILED, finished_at=102.0, attempts=1,
                               error_type="MissingFile", error="file x does not exist"))
        history.set_cron_mark("orders", "day=2024-05-01", 99.0)
    with History(path) as history:
        newest, oldest = history.recent()
        assert newest.partition == "day=2024-05-02" and newest.error == "file x does not exist"
        assert (oldest.outcome, oldest.duration, oldest.rows_out) == (SUCCEEDED, 12.5, 8)
        assert history.running() == []
        assert history.cron_mark("orders", "day=2024-05-01") == 99.0
        assert history.cron_mark("orders", "day=2024-05-02") is None
        assert [r.job for r in history.recent(job="other")] == []
        assert len(history.recent(limit=1)) == 1


def _write_runs(path: str, n: int, job: str) -> None:
    with History(path) as history:
        for i in range(n):
            run = history.start(a_run(job=job, started=float(i)))
            history.finish(replace(run, outcome=SUCCEEDED, finished_at=i + 1.0))


def test_processes_and_threads_share_one_history(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite")
    History(path).close()
    context = multiprocessing.get_context("spawn")
    processes = [context.Process(target=_write_runs, args=(path, 30, f"p{i}")) for i in range(2)]
    threads = [threading.Thread(target=_write_runs, args=(path, 30, f"t{i}")) for i in range(2)]
    for w in (*processes, *threads):
        w.start()
    for w in (*processes, *threads):
        w.join(60)
    assert [p.exitcode for p in processes] == [0, 0]
    with History(path) as history:
        runs = history.recent(limit=None)
    assert len(runs) == 120 and all(r.outcome == SUCCEEDED for r in runs)


def test_status_shows_recent_runs(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.sqlite")
    with History(path) as history:
        run = history.start(a_run())
        history.finish(replace(run, outcome=FAILED, finished_at=103.0, attempts=1,
                               error_type="SchemaMismatch", error="column v: int64 is not string"))
        history.start(a_run(job="users", partition="default", started=200.0))
    result = CliRunner().invoke(jobs, ["status", "--history", path])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["job", "partition", "started", "duration", "outcome", "rows",
                                "in/out", "bytes", "read/written", "error"]
    assert lines[1].split() == ["users", "default", "1970-01-01T00:03:20+00:00", "running"]
    assert lines[2].split()[:5] == ["orders", "day=2024-05-01", "1970-01-01T00:01:40+00:00",
                                    "3.0s", "failed"]
    assert lines[2].strip().endswith("column v: int64 is not string")
    result = CliRunner().invoke(jobs, ["status", "--history", path, "--json", "--job", "orders"])
    (record,) = json.loads(result.output)
    assert record["error_type"] == "SchemaMismatch" and record["duration"] == 3.0
    result = CliRunner().invoke(jobs, ["status", "--history", path, "--job", "nope"])
    assert result.exit_code == 0 and f"no runs of job 'nope' recorded in {path}" in \
        result.output, result.output


def test_status_without_a_history(tmp_path: Path) -> None:
    result = CliRunner().invoke(jobs, ["status", "--history", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 0 and "no runs recorded in" in result.output
    assert "(no such file yet)" in result.output
    assert not (tmp_path / "none.sqlite").exists()


def _open_at(path: str, start: float, job: str) -> None:
    import time
    while time.time() < start:  # open together: the first opens create the file and switch to WAL
        pass
    _write_runs(path, 3, job)


def test_schedulers_opening_a_new_history_together_all_get_it(tmp_path: Path) -> None:
    """Processes opening a new history at the same moment all get it: a racing-schedulers run
    once failed at start-up with "database is locked" (SQLite may answer so at once, without its
    busy wait, to an open that meets another process switching the new file to WAL)."""
    import time
    context = multiprocessing.get_context("spawn")
    for attempt in range(3):
        path = str(tmp_path / f"jobs{attempt}.sqlite")
        start = time.time() + 1.5
        processes = [context.Process(target=_open_at, args=(path, start, f"p{i}"))
                     for i in range(8)]
        for p in processes:
            p.start()
        for p in processes:
            p.join(60)
        assert [p.exitcode for p in processes] == [0] * 8
        with History(path) as history:
            assert len(history.recent(limit=None)) == 24


def test_a_history_that_cannot_be_opened_is_named_with_the_reason(tmp_path: Path) -> None:
    (tmp_path / "a-directory").mkdir()
    (tmp_path / "text.sqlite").write_text("these are not the runs you are looking for\n" * 20)
    (tmp_path / "file").write_text("")
    cases = {"a-directory": "is a directory; name a file",
             "text.sqlite": "file is not a database",
             "file/under-a-file.sqlite": "cannot open or create it"}
    for name, reason in cases.items():
        path = tmp_path / name
        with pytest.raises(HistoryUnavailable) as e:
            History(str(path))
        assert str(e.value).startswith(f"run history {path}: ") and reason in str(e.value)
        # the command line says so in one line (no traceback), exit status 1
        config = tmp_path / "jobs.yaml"
        config.write_text(f"history: {path}\njobs:\n  - name: daily\n"
                          f"    table: file://{tmp_path}/t\n    triggers: {{pending_deltas: 1}}\n")
        result = CliRunner().invoke(jobs, ["once", str(config)])
        assert result.exit_code == 1 and result.stderr.strip() == f"error: {e.value}"
