"""One scheduled round of a partition: attempts, retries with backoff, and the commit fence.

The round runs ``compact_partition`` in the scheduler's thread for it, with the
:class:`RoundControl` as its progress callback. The pipeline reports progress between steps and
as tasks finish, and, last of all, just before it commits; raising there stops the round and
it publishes nothing (its files are removed). So the control is a fence: it raises
:class:`Abandoned` once the scheduler is stopping past its grace period, the round has outlived
its timeout, or the lease is no longer safely ours. The same control is what the lease keeper
renews and what a backoff wait sleeps on, so abandoning also ends a wait at once. Once the
scheduler is stopping, a failed attempt is not retried (a Ctrl-C on a terminal also reaches
the runtime's worker processes, and retrying their deaths would only delay the exit).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from compactor.compaction import compact_partition
from compactor.partition import Partition
from compactor.table import Table
from jobs.config import Job
from jobs.history import ABANDONED, FAILED, NOOP, SUCCEEDED, TIMED_OUT, Run
from jobs.leases import Lease, LeaseLost, Leases
from jobs.retry import backoff, is_transient
from jobs.triggers import Clock

log = logging.getLogger(__name__)

Compact = Callable[..., Any]  # compact_partition's signature


class Abandoned(Exception):
    """The round was stopped before its commit; ``outcome`` says why (abandoned, timed_out)."""

    def __init__(self, outcome: str, reason: str) -> None:
        super().__init__(reason)
        self.outcome = outcome


class RoundControl:
    """What the scheduler, the lease keeper and the round share about one running round."""

    def __init__(self, leases: Leases, lease: Lease, timeout: float | None) -> None:
        self.leases = leases
        self.lease = lease
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.timeout = timeout
        self._stopped: Abandoned | None = None
        self._lock = threading.RLock()  # abandon() may run in a signal handler
        self._lease_lock = threading.Lock()
        self._released = False
        self.draining = False
        self._wake = threading.Event()

    def drain(self) -> None:
        """The scheduler is stopping: a failed attempt is no longer retried."""
        self.draining = True

    def abandon(self, outcome: str, reason: str) -> None:
        """Stop the round at its next step (a running step cannot be interrupted)."""
        with self._lock:
            if self._stopped is None:
                self._stopped = Abandoned(outcome, reason)
        self._wake.set()

    @property
    def stopped(self) -> Abandoned | None:
        return self._stopped

    def check(self, step: str = "", done: int = 0, total: int = 0, *_bytes: int) -> None:
        """The fence: raise :class:`Abandoned` if the round must not go on (to its commit).
        Once it has committed (``commit`` step done) there is nothing left to fence: a round
        timed out or abandoned in the meantime is recorded as what it was, committed."""
        if step == "commit" and done >= 1:
            return
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.abandon(TIMED_OUT, f"timed out after {self.timeout:g}s, before the commit")
        elif not self.leases.valid(self.lease):
            self.abandon(ABANDONED, f"the lease of partition {self.lease.partition} ran out "
                                    "before the commit")
        if self._stopped is not None:
            raise self._stopped

    def renew(self) -> None:
        """Extend the lease (called by the lease keeper); abandons the round if it was lost."""
        with self._lease_lock:
            if self._released:
                return
            try:
                self.lease = self.leases.renew(self.lease)
            except LeaseLost as e:
                self.abandon(ABANDONED, str(e))

    def release(self) -> None:
        """Give the lease up (once; a renewal cannot race it)."""
        with self._lease_lock:
            if not self._released:
                self._released = True
                self.leases.release(self.lease)

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; whether the round was abandoned meanwhile."""
        self._wake.wait(seconds)
        return self._stopped is not None


def one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def run_round(job: Job, table: Table, partition: Partition, control: RoundControl, run: Run,
              clock: Clock, compact: Compact = compact_partition) -> Run:
    """Run the round (retrying transient failures); ``run`` with its outcome and figures."""
    attempt = 0
    while True:
        attempt += 1
        try:
            control.check()
            result = compact(table, partition, target_file_size=job.target_file_size,
                             compression=job.compression, progress=control.check)
        except Abandoned as e:
            return _done(run, clock, attempt, e.outcome, e)
        except Exception as e:
            if control.stopped is not None:  # e.g. the runtime was shut down under it
                return _done(run, clock, attempt, control.stopped.outcome, control.stopped)
            if not is_transient(e):
                return _done(run, clock, attempt, FAILED, e)
            if control.draining:  # e.g. Ctrl-C reached the runtime's workers too
                return _done(run, clock, attempt, ABANDONED, e,
                             prefix="the scheduler is stopping, so this was not retried: ")
            if attempt > job.retries.max:
                return _done(run, clock, attempt, FAILED, e,
                             prefix=f"gave up after {attempt} attempts: ")
            delay = backoff(job.retries, attempt)
            log.warning("job %s partition %s: attempt %d failed (%s: %s); retrying in %.1fs",
                        job.name, run.partition, attempt, type(e).__name__, one_line(e), delay)
            if control.wait(delay):
                assert control.stopped is not None
                return _done(run, clock, attempt, control.stopped.outcome, control.stopped)
            continue
        if result.committed and result.message:  # (e.g. the index was rebuilt, and why)
            log.warning("job %s partition %s: %s", job.name, partition.key, result.message)
        return replace(run, outcome=SUCCEEDED if result.committed else NOOP,
                       finished_at=clock.now(), attempts=attempt, rows_in=result.rows_in,
                       rows_out=result.rows_out, bytes_read=result.bytes_read,
                       bytes_written=result.bytes_written)


def _done(run: Run, clock: Clock, attempts: int, outcome: str, error: BaseException,
          prefix: str = "") -> Run:
    return replace(run, outcome=outcome, finished_at=clock.now(), attempts=attempts,
                   error_type=type(error).__name__, error=prefix + one_line(error))
