"""``compactor jobs``: validate a job config, run the scheduler, run it once, show the history.

The click group ``jobs``, for the ``compactor`` command line to register (importing this module
lazily); ``python -m jobs`` runs the group on its own. Each command takes ``--json``, ``--debug``
and ``--endpoint-url`` like every other command; ``--endpoint-url`` is the S3 endpoint of jobs
whose ``storage_options`` name none.
Exit codes: 0 ok, 1 a failure (a config error, a round that failed, timed out or was abandoned,
an unreadable table), 2 usage; ``once`` stopped by a signal: 128 + its number (130 for Ctrl-C).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from compactor.cli.common import EXIT_FAILURE, Session, command, styled, timestamp
from compactor.units import format_size
from jobs.config import (
    DEFAULT_HISTORY,
    ENV_HISTORY,
    Config,
    ConfigError,
    Job,
    Triggers,
    default_history,
    load_config,
)
from jobs.history import NOOP, SUCCEEDED, History, Run

if TYPE_CHECKING:
    from jobs.scheduler import Scheduler

log = logging.getLogger("jobs")
DONE = (SUCCEEDED, NOOP)  # outcomes of a round that left nothing undone


@click.group("jobs", context_settings={"help_option_names": ["-h", "--help"]})
def jobs() -> None:
    """Scheduled compaction: keep the partitions a job config names compacted.

    \b
      compactor jobs validate jobs.yaml     # check the config, show what it means
      compactor jobs once jobs.yaml         # run what is due now, then exit
      compactor jobs run jobs.yaml          # keep running (SIGTERM/SIGINT to stop)
      compactor jobs status jobs.yaml       # recent rounds (--json for tools)
    """


def _config(session: Session, path: str) -> Config:
    config = load_config(path)
    if not session.endpoint_url:
        return config
    return replace(config, jobs=tuple(
        replace(job, storage_options={**(session.storage_options(job.table) or {}),
                                      **job.storage_options})
        for job in config.jobs))


def _triggers_text(t: Triggers) -> str:
    parts = [f"cron {t.cron!r} ({t.timezone})"] if t.cron else []
    if t.pending_deltas is not None:
        parts.append(f"pending deltas >= {t.pending_deltas}")
    if t.pending_bytes is not None:
        parts.append(f"pending bytes >= {format_size(t.pending_bytes)}")
    if t.oldest_delta_age is not None:
        parts.append(f"oldest pending delta >= {t.oldest_delta_age:g}s old")
    return ", or ".join(parts)


def _job_info(job: Job) -> dict[str, Any]:
    backend, address = job.runtime_key
    return {"name": job.name, "table": job.table, "partitions": job.partitions.describe(),
            "triggers": _triggers_text(job.triggers), "backend": backend, "address": address,
            "target_file_size": job.target_file_size, "compression": job.compression,
            "retries": job.retries.max,
            "timeout": job.timeout, "concurrency": job.concurrency}


@command("validate", group=jobs)
@click.argument("config", type=click.Path(dir_okay=False))
def validate(session: Session, config: str) -> None:
    """Check a job config (YAML) and show what each job will do; nothing is contacted."""
    session.where = f"config {config}"
    cfg = _config(session, config)
    info: dict[str, Any] = {"ok": True, "config": config, "history": cfg.history,
                            "metrics": None if cfg.metrics is None else  # ([::1]:9464)
                            f"[{cfg.metrics[0]}]:{cfg.metrics[1]}" if ":" in cfg.metrics[0]
                            else f"{cfg.metrics[0]}:{cfg.metrics[1]}",
                            "jobs": [_job_info(j) for j in cfg.jobs]}

    def render(out: Console) -> None:
        out.print(f"{config}: OK, {len(cfg.jobs)} job(s); history in {cfg.history}")
        for j in info["jobs"]:
            out.print(f"  {j['name']}: {j['table']} (partitions: {j['partitions']}) when "
                      f"{j['triggers']}; on {j['backend']}"
                      + (f" at {j['address']}" if j["address"] else ""))

    session.emit(info, render)


class _JsonLines(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"time": timestamp(record.created), "level": record.levelname,
                           "logger": record.name, "message": record.getMessage()})


@contextmanager
def _logging(json_lines: bool = False) -> Iterator[None]:
    """The scheduler's log on stderr: timestamped lines, or JSON objects one per line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonLines() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    level = log.level
    log.setLevel(logging.INFO)
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(level)


@contextmanager
def _signals(on_signal: Callable[[int, int], None]) -> Iterator[None]:
    """Call ``on_signal(signum, count)`` on SIGTERM and SIGINT (``count``: how many so far;
    main thread only, else do nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    count = 0

    def handler(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        on_signal(signum, count)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _scheduler(config: Config) -> Scheduler:
    from jobs.scheduler import Scheduler  # the runtime and the pipeline load here, not for --help

    return Scheduler(config)


def _serve_metrics(scheduler: Scheduler, cfg: Config) -> str:
    """Start the metrics endpoint; its URL. A host that does not resolve or a port that is
    taken is the config's mistake: say so at its line rather than with a bare socket error."""
    assert cfg.metrics is not None
    address, port = cfg.metrics
    try:
        return scheduler.metrics.serve(address, port)
    except OSError as e:  # socket.gaierror for a name that does not resolve
        raise ConfigError(f"{cfg.metrics_where}: cannot serve metrics at {address!r} port "
                          f"{port}: {e.strerror or e}") from None


@command("run", group=jobs)
@click.argument("config", type=click.Path(dir_okay=False))
def run(session: Session, config: str) -> None:
    """Run the scheduler until SIGTERM or SIGINT (a second one abandons running rounds).

    Stopped so, it exits 0, as a service stopped on purpose does (unlike `once`, whose exit
    code tells a caller its work was cut short); how its rounds ended is in the history
    (`jobs status`). It logs to stderr (with --json: one JSON object per line, for log
    shippers; nothing goes to stdout).
    """
    session.where = f"config {config}"
    cfg = _config(session, config)
    stop = threading.Event()
    with _logging(session.json):
        scheduler = _scheduler(cfg)

        def on_signal(signum: int, count: int) -> None:
            stop.set()
            scheduler.request_stop(abandon=count > 1)

        with _signals(on_signal):
            try:
                if cfg.metrics is not None:
                    log.info("metrics at %s", _serve_metrics(scheduler, cfg))
                log.info("scheduler %s: %d job(s), tick %gs, history %s", scheduler.owner,
                         len(cfg.jobs), cfg.tick, cfg.history)
                scheduler.run(stop)
                log.info("stopping: no new rounds; running ones get %gs to finish",
                         cfg.shutdown_grace)
            finally:
                scheduler.shutdown()
        log.info("stopped")


@command("once", group=jobs)
@click.argument("config", type=click.Path(dir_okay=False))
def once(session: Session, config: str) -> None:
    """Evaluate every trigger once, run the rounds that are due, wait for them, exit.

    A partition that is due while another scheduler holds its lease (running a round of it,
    or crashed: the lease then expires after lease_ttl) is not run here; the summary lists
    it ("held"), and it stays due.

    Exit codes: 0 every round succeeded (or had nothing to do; held partitions too), 1 a round
    failed, timed out or was abandoned, or a trigger could not be evaluated, 128 + the
    signal's number after SIGINT (130) or SIGTERM (143)."""
    session.where = f"config {config}"
    cfg = _config(session, config)
    signals: list[int] = []

    def on_signal(signum: int, count: int) -> None:
        signals.append(signum)
        scheduler.request_stop(abandon=count > 1)

    with _logging():
        scheduler = _scheduler(cfg)
        with _signals(on_signal):
            try:
                scheduler.run_once()
            finally:
                scheduler.shutdown()  # after a signal: rounds finish or are abandoned here
    runs = scheduler.finished
    # anything but succeeded/noop (failed, timed out, abandoned...) left work undone
    unfinished = [r for r in runs if r.outcome not in DONE]
    ok = not unfinished and not scheduler.errors and not signals
    problems = []
    if unfinished or scheduler.errors:
        first = scheduler.errors[0] if scheduler.errors else f"{unfinished[0].job} partition " \
            f"{unfinished[0].partition}: {unfinished[0].outcome}: {unfinished[0].error}"
        problems.append(f"{len(unfinished)} round(s) failed, {len(scheduler.errors)} "
                        f"evaluation error(s); first: {first}")
    if signals:  # as a shell reports a process the signal ended: 130 for Ctrl-C
        problems.append(f"interrupted by {signal.Signals(signals[0]).name}: no round was "
                        "started after it, and a running one that outlived the grace period "
                        "was abandoned before its commit")
    code = 128 + signals[0] if signals else 0 if ok else EXIT_FAILURE
    held = [{"job": job, "partition": label} for job, label in scheduler.held]
    report: dict[str, object] = {"ok": ok, "runs": [r.to_dict() for r in runs],
                                 "errors": scheduler.errors, "held": held}
    if not ok:  # (every command's --json failure document has these)
        report.update(error="; ".join(problems), exit_code=code,
                      error_type="Interrupted" if signals else "RoundsFailed")

    def render(out: Console) -> None:
        if runs or not (held or scheduler.errors):
            _render_runs(runs, out, empty="nothing was due")
        if held:
            out.print(f"{len(held)} partition(s) due but not run here: another scheduler holds "
                      "the lease (they stay due): " + ", ".join(
                          f"{h['job']} {h['partition']}" for h in held))
        if scheduler.errors and not runs:
            out.print("no round ran")

    session.emit(report, render)
    for problem in problems:
        click.echo(f"{'error: ' if not problem.startswith('interrupted') else ''}{problem}",
                   err=True)
    if code:
        sys.exit(code)


@command("status", group=jobs)
@click.argument("config", type=click.Path(dir_okay=False), required=False)
@click.option("--history", "history_path", metavar="PATH",
              help="The history database (default: the config's, else "
                   f"${ENV_HISTORY} or {DEFAULT_HISTORY}).")
@click.option("--job", metavar="NAME", help="Only this job's runs.")
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Show at most this many rounds, the most recent first.")
def status(session: Session, config: str | None, history_path: str | None, job: str | None,
           limit: int) -> None:
    """Recent rounds: job, partition, start, duration, outcome, rows and bytes, error."""
    path = history_path or (load_config(config).history if config else default_history())
    session.where = f"history {path}"
    runs: list[Run] = []
    if os.path.exists(path):
        with History(path) as history:
            runs = history.recent(limit, job)
    empty = f"no runs of job {job!r} recorded in {path}" if job else \
        f"no runs recorded in {path}"
    if not os.path.exists(path):  # (a scheduler that never ran; or a mistyped path)
        empty += " (no such file yet)"
    session.emit([r.to_dict() for r in runs],
                 lambda out: _render_runs(runs, out, empty=empty))


def _render_runs(runs: list[Run], out: Console, *, empty: str) -> None:
    if not runs:
        out.print(empty)
        return
    table = RichTable("job", "partition", "started", "duration", "outcome", "rows in/out",
                      "bytes read/written", "error", box=None, padding=(0, 2))
    for r in runs:
        style = {"succeeded": "green", "failed": "red", "timed_out": "red"}.get(r.outcome, "")
        table.add_row(
            r.job, r.partition, timestamp(r.started_at),
            "" if r.duration is None else f"{r.duration:.1f}s", styled(r.outcome, style),
            "" if r.rows_in is None else f"{r.rows_in:,}/{r.rows_out or 0:,}",
            "" if r.bytes_read is None else
            f"{format_size(r.bytes_read)}/{format_size(r.bytes_written or 0)}",
            r.error or "")
    out.print(table)
