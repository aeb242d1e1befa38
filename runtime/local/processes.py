"""Worker processes of the local backend: start, talk to, and stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

# How worker processes manage memory, unless the driver's environment says otherwise. Tasks
# allocate and free buffers of hundreds of MB over and over; a page the process has never
# touched costs a fault (and zeroing) each time:
# - glibc hands every block over 32 MB back to the kernel on free, so the next one faults all
#   its pages in again: serve all blocks from the heap (mmap_max=0) and keep up to 512 MiB of
#   free memory at its top (trim_threshold) for the next task;
# - numpy asks for transparent huge pages on large arrays; where the kernel defragments on
#   demand (THP defrag=madvise) that stalls allocations in memory compaction.
# Measured on a 2-core machine, one 20M-row compaction round: kernel time 9.3 s -> 4.7 s, the
# round 14.0 s -> 11.8 s, an incremental round 2.9 s -> 1.8 s.
# - Arrow's buffers come from glibc too (its default, mimalloc, hands freed pages back to the
#   kernel on its own schedule, so each decoded file faults fresh pages in again): a 20M-row
#   round 9.9 s -> 9.0 s, an incremental round 1.83 s -> 1.52 s, kernel time 4.6 s -> 3.0 s;
# - numpy's OpenBLAS starts a thread per core in every process, and they spin on start-up
#   (1.2% of a round's CPU); a task is given its cores by num_cpus, so BLAS gets one thread.
WORKER_MEMORY_ENV = {
    "GLIBC_TUNABLES": "glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=536870912",
    "NUMPY_MADVISE_HUGEPAGE": "0",
    "OPENBLAS_NUM_THREADS": "1",
    "ARROW_DEFAULT_MEMORY_POOL": "system",
}


def worker_env() -> dict[str, str]:
    """The driver's environment, with its import path, so workers import what the driver can;
    and the memory settings of ``WORKER_MEMORY_ENV`` where the environment sets none."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("COMPACTOR_BACKEND", None)
    for name, value in WORKER_MEMORY_ENV.items():
        env.setdefault(name, value)
    return env


class WorkerProc:
    """One worker process and the driver's end of its socket."""

    def __init__(self, worker_id: str, store_root: str, node_id: str, env: dict[str, str]) -> None:
        self.id = worker_id
        parent, child = socket.socketpair()
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "runtime.local.worker", str(child.fileno()), store_root,
                 worker_id, node_id],
                pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
                # a terminal's Ctrl-C goes to the driver, which decides; workers never see it
                start_new_session=True,
            )
        finally:
            child.close()
        self.conn = Connection(parent.detach())
        self._send_lock = threading.Lock()
        self.state = "starting"  # starting -> idle <-> busy; or actor; -> dead
        self.work: Any = None  # the task it runs
        self.actor: Any = None  # the actor it hosts
        self.functions: set[str] = set()  # function ids whose code it has
        self.held: set[str] = set()  # object ids it holds refs to
        self.blocked = False  # waiting in runtime.get inside a task

    @property
    def pid(self) -> int:
        return self.proc.pid

    def send(self, msg: tuple) -> bool:
        """Send a message; False if the process is gone (its death is handled by the loop)."""
        try:
            with self._send_lock:
                self.conn.send(msg)
            return True
        except (OSError, ValueError):
            return False

    def kill(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.kill()
            except ProcessLookupError:
                pass

    def reap(self) -> int | None:
        try:
            return self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            return None

    def close(self) -> None:
        try:
            self.conn.close()
        except OSError:
            pass

    def exit_description(self) -> str:
        code = self.proc.poll()
        if code is None:
            return "still running"
        if code < 0:
            import signal

            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"
