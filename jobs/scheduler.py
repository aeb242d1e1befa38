"""The scheduler: evaluates triggers, takes leases, runs rounds, records them.

::

    tick loop (caller's thread)              round threads (<= concurrency)     lease keeper
    ---------------------------              ------------------------------     ------------
    for each job: open the table, list       run_round(): compact_partition     every ttl/3:
    its partitions, snapshot each            on the runtime, progress = the     renew the lease
      -> pending gauges                      round's fence; retries with        of each running
      -> due? (triggers, cron mark)          backoff                            round (a lost
      -> free slot, runtime ready?           -> history.finish, metrics,        lease abandons
      -> take the lease, re-check the        release the lease                  the round)
         partition under it
      -> history.start, start the round

``run_once`` does one evaluation and waits for the rounds it started (``jobs once``); ``run``
ticks until stopped (``jobs run``). Stopping takes no new work, lets running rounds finish for
the grace period, then abandons them at their next step (before any commit), and returns within
a bounded time even if a round never reaches a step boundary (the runtime is shut down under
it). The re-check under the lease is what makes racing schedulers run exactly one round per due
partition: the loser of a race finds nothing pending once the winner has committed.

Rounds run on one runtime per process (``runtime.init`` is process-wide): jobs that name another
backend or address wait until the running rounds are done, then the runtime is switched. A
runtime the embedding program started itself is used as it is.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

import psutil

import runtime
from compactor.compaction import compact_partition
from compactor.errors import InvalidPartition, UnknownPartition
from compactor.layout import unescaped
from compactor.partition import Partition
from compactor.pipeline.tasks import PRELOAD
from compactor.table import Table, open_table
from jobs.config import Config, Job, partition_text
from jobs.history import ABANDONED, FAILED, INTERRUPTED, TIMED_OUT, History, Run
from jobs.leases import Leases
from jobs.metrics import Metrics
from jobs.rounds import Compact, RoundControl, one_line, run_round
from jobs.triggers import Clock, Pending, cron_fired, due
from runtime.host import pid_namespace

log = logging.getLogger(__name__)

ABANDON_WAIT = 10.0  # after abandoning, how long rounds get to reach a step boundary
SHUTDOWN_WAIT = 5.0  # after shutting the runtime down under them, how long before giving up
# how a round's end is logged: a round that did its work is news, one that did not is trouble
LOG_LEVELS = {FAILED: logging.ERROR, TIMED_OUT: logging.ERROR, ABANDONED: logging.WARNING,
              INTERRUPTED: logging.WARNING}


class SystemClock:
    def now(self) -> float:
        return time.time()


@dataclass(frozen=True)
class Candidate:
    """A partition found due."""

    job: Job
    table: Table
    partition: Partition
    reason: str
    fired: float | None  # the cron fire time that made it due, if any

    @property
    def label(self) -> str:
        return str(self.partition.key)


class _Runtime:
    """The process's runtime, (re)started for the backend and address a job needs."""

    def __init__(self) -> None:
        self.key: tuple[str, str | None] | None = None

    def ready(self, key: tuple[str, str | None], busy: bool) -> bool:
        if runtime.is_initialized() and self.key is None:
            return True  # the embedding program's runtime
        if runtime.is_initialized() and self.key == key:
            return True
        if busy:
            return False
        self.close()
        log.info("starting the %s runtime%s", key[0], f" at {key[1]}" if key[1] else "")
        runtime.init(key[0], address=key[1], preload=PRELOAD)
        self.key = key
        return True

    def close(self) -> None:
        if self.key is not None:
            self.key = None
            runtime.shutdown()


def _listed(table: Table, values: dict[str, Any]) -> Partition:
    """The partition a job lists: as written, or, if that one has no commits and the values
    hold escapes of the printed form (``region=eu%20west``), the one they name."""
    part = table.partition(values)
    plain = unescaped(values)
    if plain is not None and part.version() == 0 and table.partition(plain).version() > 0:
        return table.partition(plain)
    return part

class Scheduler:
    def __init__(self, config: Config, *, clock: Clock | None = None,
                 history: History | None = None, metrics: Metrics | None = None,
                 compact: Compact = compact_partition) -> None:
        self.config = config
        self.clock: Clock = clock or SystemClock()
        self.history = history or History(config.history)
        self.metrics = metrics or Metrics()
        self.compact = compact
        # host:pid:tag[:pid namespace] (schedulers of one host name may live in different PID
        # namespaces, containers sharing the history: one's process ids mean nothing to another)
        self.owner = ":".join([socket.gethostname(), str(os.getpid()), uuid.uuid4().hex[:8],
                               *_pid_namespace()])
        self.errors: list[str] = []  # evaluation failures (tables or partitions unreadable)
        # (job, partition) due but not started: another scheduler holds the partition's lease
        self.held: list[tuple[str, str]] = []
        self.finished: list[Run] = []
        self._active: dict[tuple[str, str], RoundControl] = {}
        self._changed = threading.Condition()
        self._stopping = threading.Event()
        self._runtime = _Runtime()
        self._keeper: threading.Thread | None = None
        # (job, partition) -> (the partition's version, when) of a round that failed or timed
        # out: it is not due again until the partition changes or retries.max_backoff has passed
        self._failed: dict[tuple[str, str], tuple[int, float]] = {}
        self._absent: set[tuple[str, str]] = set()  # listed partitions found missing, warned
        self._unmatched: set[str] = set()  # jobs whose pattern matched no partition, warned

    # -- evaluation ------------------------------------------------------------------------------
    def evaluate(self) -> list[Candidate]:
        """Every partition that is due now and has no round running here."""
        found: list[Candidate] = []
        for job in self.config.jobs:
            try:
                table = open_table(job.table, storage_options=job.storage_options)
                if job.partitions.values is not None:
                    parts = []
                    for values in job.partitions.values:
                        try:
                            parts.append(_listed(table, values))
                        except InvalidPartition as e:  # (that entry only: the others run)
                            entry = ",".join(f"{k}={v}" for k, v in values.items())
                            self._error(job, InvalidPartition(f"listed partition {entry}: {e}"))
                else:
                    every = table.partitions()
                    parts = [p for p in every if job.partitions.matches(p.key)]
                    if every and not parts and job.name not in self._unmatched:
                        self._unmatched.add(job.name)  # (said once; it may match later)
                        log.warning(
                            "job %s: no partition of %s matches the pattern %r (it is matched "
                            "against k=v/k2=v2, values unescaped, e.g. %s)", job.name,
                            job.table, job.partitions.pattern, partition_text(every[0].key))
            except Exception as e:
                self._error(job, e)
                continue
            for part in parts:
                with self._changed:
                    if (job.name, str(part.key)) in self._active:
                        continue
                try:
                    candidate = self._check(job, table, part)
                except Exception as e:
                    self._error(job, e, part)
                    continue
                if candidate is not None:
                    found.append(candidate)
        return found

    def _error(self, job: Job, error: Exception, part: Partition | None = None) -> None:
        where = f"job {job.name}" + (f" partition {part.key}" if part is not None else "")
        message = f"{where}: {one_line(error)}"
        log.error("%s", message)
        self.errors.append(message)
        self.metrics.evaluation_errors.labels(job.name).inc()

    def _check(self, job: Job, table: Table, part: Partition,
               fired: float | None = None) -> Candidate | None:
        """``part`` as a candidate if it is due (``fired``: reuse that cron evaluation)."""
        version = 0
        try:
            snapshot = part.snapshot()
            pending, version = Pending.of(snapshot), snapshot.version
        except UnknownPartition:
            pending = Pending()
            if job.partitions.values is not None and \
                    (job.name, str(part.key)) not in self._absent:
                self._absent.add((job.name, str(part.key)))  # (said once; it may come later)
                log.warning("job %s partition %s: the table %s has no such partition (yet); "
                            "it is due once deltas are registered to it", job.name, part.key,
                            job.table)
        now = self.clock.now()
        self.metrics.observe_pending(job.name, str(part.key), pending, now)
        failed = self._failed.get((job.name, str(part.key)))
        if failed is not None and failed[0] == version and \
                now - failed[1] < job.retries.max_backoff:
            return None  # failed as it is: not again every tick (the failure is recorded)
        if fired is None:
            fired = self._cron(job, str(part.key), now)
        reason = due(job.triggers, pending, now, fired)
        if reason is None and fired is not None:
            self.history.set_cron_mark(job.name, str(part.key), now)  # fired with nothing to do
        return None if reason is None else Candidate(job, table, part, reason, fired)

    def _cron(self, job: Job, label: str, now: float) -> float | None:
        if job.triggers.cron is None:
            return None
        mark = self.history.cron_mark(job.name, label)
        if mark is None:  # first seen: the schedule starts now
            self.history.set_cron_mark(job.name, label, now)
        return cron_fired(job.triggers, mark, now)

    # -- dispatch --------------------------------------------------------------------------------
    def dispatch(self, candidates: list[Candidate]) -> list[Candidate]:
        """Start rounds for the candidates there is room for; returns the others."""
        waiting = []
        for c in candidates:
            with self._changed:
                busy = len(self._active)
                of_job = sum(1 for job, _ in self._active if job == c.job.name)
            full = busy >= self.config.concurrency or (
                c.job.concurrency is not None and of_job >= c.job.concurrency)
            if self._stopping.is_set() or full:
                waiting.append(c)
                continue
            try:
                if not self._runtime.ready(c.job.runtime_key, busy > 0):
                    waiting.append(c)
                    continue
                self._start(c)
            except Exception as e:
                self._error(c.job, e, c.partition)
        return waiting

    def _start(self, c: Candidate) -> None:
        leases = Leases(c.table.storage, self.owner, self.config.lease_ttl, self.clock)
        lease = leases.acquire(c.partition.key)
        if lease is None:
            # The cron mark stays where it is: the fire is still due (coalesced with any later
            # one) and runs once the lease is free, e.g. when a crashed scheduler's lease has
            # expired, not only at the next fire. If the holder's round folds everything in,
            # the check under the lease then finds nothing to do and moves the mark.
            log.info("job %s partition %s: due, but another scheduler holds its lease",
                     c.job.name, c.label)
            with self._changed:
                self.held.append((c.job.name, c.label))
            return
        try:
            fresh = self._check(c.job, c.table, c.partition, c.fired)  # under the lease now
            if c.fired is not None:
                self.history.set_cron_mark(c.job.name, c.label, self.clock.now())
            if fresh is None:  # e.g. another scheduler's round just folded everything in
                leases.release(lease)
                return
            run = self.history.start(Run(c.job.name, c.table.url, c.label, fresh.reason,
                                         self.owner, self.clock.now()))
        except BaseException:
            leases.release(lease)
            raise
        control = RoundControl(leases, lease, c.job.timeout)
        log.info("job %s partition %s: round started (%s)", c.job.name, c.label, fresh.reason)
        thread = threading.Thread(target=self._round, args=(c, control, run), daemon=True,
                                  name=f"round {c.job.name} {c.label}")
        with self._changed:
            if self._stopping.is_set():
                control.drain()
            self._active[(c.job.name, c.label)] = control
            self._count_leases(c.job.name)
            self._ensure_keeper()
        thread.start()

    def _round(self, c: Candidate, control: RoundControl, run: Run) -> None:
        done = replace(run, outcome=FAILED, finished_at=self.clock.now(),
                       error="the round stopped unexpectedly")
        try:
            try:
                version = c.partition.snapshot().version
            except Exception:  # (the round reports it; the next check sees a change)
                version = -1
            done = run_round(c.job, c.table, c.partition, control, run, self.clock, self.compact)
            if done.outcome in (FAILED, TIMED_OUT):  # would fail the same way at every tick
                self._failed[(c.job.name, c.label)] = (version, self.clock.now())
            else:
                self._failed.pop((c.job.name, c.label), None)
        except BaseException as e:  # a bug, not a compaction failure: record it all the same
            done = replace(done, error_type=type(e).__name__, error=one_line(e))
            raise
        finally:
            try:
                control.release()
            except Exception as e:
                log.warning("job %s partition %s: could not release the lease (%s); it "
                            "expires by itself", c.job.name, c.label, one_line(e))
            try:
                self.history.finish(done)
            finally:
                self.metrics.observe_run(done)
                # logged before the round counts as done: `jobs once` may return (and stop
                # logging) as soon as it does
                log.log(LOG_LEVELS.get(done.outcome, logging.INFO),
                        "job %s partition %s: %s after %.1fs%s", c.job.name, c.label,
                        done.outcome, done.duration or 0.0, f": {done.error}" if done.error else "")
                with self._changed:
                    self._active.pop((c.job.name, c.label), None)
                    self.finished.append(done)
                    self._count_leases(c.job.name)
                    self._changed.notify_all()

    def _count_leases(self, job: str) -> None:
        self.metrics.leases.labels(job).set(sum(1 for j, _ in self._active if j == job))

    def _ensure_keeper(self) -> None:  # with self._changed held
        if self._keeper is None:
            self._keeper = threading.Thread(target=self._keep_leases, daemon=True,
                                            name="lease keeper")
            self._keeper.start()

    def _keep_leases(self) -> None:
        while True:
            time.sleep(self.config.lease_ttl / 3)
            with self._changed:
                controls = list(self._active.values())
                if not controls:  # no round left: a new one starts a new keeper
                    self._keeper = None
                    return
            for control in controls:
                try:
                    control.renew()
                except Exception as e:  # storage trouble: the fence abandons if it lasts
                    log.warning("could not renew the lease of partition %s: %s",
                                control.lease.partition, one_line(e))

    # -- running ---------------------------------------------------------------------------------
    def run_once(self) -> list[Run]:
        """Evaluate every job once, run what is due, wait for those rounds; their records.

        Returns early once a stop is requested: :meth:`shutdown` then ends the rounds still
        running, and :attr:`finished` holds every record.
        """
        self._interrupt_stale()
        self.errors.clear()
        self.held.clear()
        first = len(self.finished)
        candidates = self.evaluate()
        while not self._stopping.is_set():
            candidates = self.dispatch(candidates)
            with self._changed:
                if not self._active and not candidates:
                    break
                self._changed.wait(1.0)
        return self.finished[first:]

    def run(self, stop: threading.Event) -> None:
        """Tick until ``stop`` is set, then stop (see :meth:`shutdown`)."""
        while not stop.is_set():
            # every tick: a scheduler sharing the history may have died since the last one
            self._interrupt_stale()
            with self._changed:  # a long-running scheduler keeps only the last tick's records
                self.errors.clear()
                self.held.clear()
                self.finished.clear()
            self.dispatch(self.evaluate())
            stop.wait(self.config.tick)

    def request_stop(self, *, abandon: bool = False) -> None:
        """Take no new work (safe to call from a signal handler); with ``abandon``, also stop
        running rounds at their next step instead of letting them finish."""
        self._stopping.set()
        with self._changed:
            for control in self._active.values():
                control.drain()
        if abandon:
            self.abandon_all("the scheduler was told to stop at once: the round was abandoned "
                             "before its commit")

    def abandon_all(self, reason: str) -> None:
        with self._changed:
            controls = list(self._active.values())
        for control in controls:
            control.abandon(ABANDONED, reason)

    def _wait_idle(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        with self._changed:
            while self._active and time.monotonic() < deadline:
                self._changed.wait(deadline - time.monotonic())
            return not self._active

    def shutdown(self, grace: float | None = None) -> None:
        """Take no new work; give running rounds ``grace`` seconds (default: the config's) to
        finish, then abandon them before their commit. Returns within a bounded time."""
        self.request_stop()
        if not self._wait_idle(self.config.shutdown_grace if grace is None else grace):
            log.warning("abandoning %d running round(s)", len(self._active))
            self.abandon_all("the scheduler is stopping: the round was abandoned before its "
                             "commit")
            if not self._wait_idle(ABANDON_WAIT):
                log.warning("rounds did not stop in %gs; shutting the runtime down under them",
                            ABANDON_WAIT)
                self._runtime.close()
                self._wait_idle(SHUTDOWN_WAIT)
        self._runtime.close()
        self.metrics.close()
        if not self._active:
            self.history.close()

    def _interrupt_stale(self) -> None:
        """Mark ``running`` rows of dead schedulers on this host as interrupted."""
        host, namespace = socket.gethostname(), _pid_namespace()
        for run in self.history.running():
            owner_host, pid, *rest = [*run.scheduler.split(":"), ""]
            # (rows of schedulers before namespaces were recorded: taken as this namespace's)
            if owner_host == host and rest[1:-1] in ([], namespace) and pid.isdigit() \
                    and int(pid) != os.getpid() and not psutil.pid_exists(int(pid)):
                self.history.finish(replace(
                    run, outcome=INTERRUPTED, finished_at=self.clock.now(),
                    error=f"scheduler {run.scheduler} stopped before the round finished"))


def _pid_namespace() -> list[str]:
    """This process's PID namespace (``pidns4026531836``), where Linux tells it; else none."""
    namespace = pid_namespace()
    return [] if namespace is None else [f"pidns{namespace}"]
