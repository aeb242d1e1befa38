"""Worker processes of the local backend: start, talk to, and stop them."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from runtime.worker_settings import WORKER_MEMORY_ENV


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
