"""Worker processes of the local backend: start, talk to, and stop them.

Workers are forked by the zygote (``zygote.py``: one process that imported the worker and the
``preload`` modules once) while it works, else started as new interpreters.
"""

from __future__ import annotations

import json
import os
import queue
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from multiprocessing.connection import Connection
from typing import Any

from runtime.local.zygote import MAX_MESSAGE
from runtime.worker_settings import worker_settings

# ``-P``: the interpreter does not put its working directory first on the import path, as
# ``-m`` does; workers import from the driver's path (``worker_env``) alone, so a module of
# the same name in the directory the program runs in does not stand in for the driver's
INTERPRETER_FLAGS = ("-P",)


def worker_env() -> dict[str, str]:
    """The driver's environment, with its import path, so workers import what the driver can;
    and the settings of ``worker_settings`` (memory, CPU) where the environment sets none."""
    env = dict(os.environ)
    paths = [p or os.getcwd() for p in sys.path]
    env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
    env.pop("COMPACTOR_BACKEND", None)
    for name, value in worker_settings().items():
        env.setdefault(name, value)
    return env


ZYGOTE_START_SECONDS = 120  # for the zygote's imports, on a loaded machine
SPAWN_SECONDS = 30  # for a fork (the zygote answers in milliseconds)
UNKNOWN_EXIT = "exit status unknown: the process that forked it is gone"


class ZygoteUnavailable(Exception):
    """The zygote did not start, or stopped answering: start workers as interpreters."""


class Zygote:
    """The driver's end of the zygote (see ``zygote.py``)."""

    def __init__(self, store_root: str, env: dict[str, str], preload: Sequence[str]) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, *INTERPRETER_FLAGS, "-m", "runtime.local.zygote",
                 str(theirs.fileno()), store_root, *preload],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as e:
            ours.close()
            raise ZygoteUnavailable(f"it could not start: {e}") from None
        finally:
            theirs.close()
        self.sock = ours
        self.errors: list[str] = []
        self._lock = threading.Lock()  # one spawn request at a time
        self._spawned: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._exited: dict[int, int] = {}
        self._changed = threading.Condition()
        self.alive = False
        try:
            msg, _ = self._recv(ZYGOTE_START_SECONDS)
        except BaseException:  # (Ctrl-C while it imports, too)
            self.close()
            raise
        if msg[0] != "ready":
            self.close()
            raise ZygoteUnavailable(msg[1])
        self.errors = list(msg[1])
        self.alive = True
        self._reader = threading.Thread(target=self._read, name="zygote-reader", daemon=True)
        self._reader.start()

    def _recv(self, timeout: float | None) -> tuple[tuple, list[int]]:
        if timeout is not None and not select.select([self.sock], [], [], timeout)[0]:
            raise ZygoteUnavailable(f"no answer in {timeout} s")
        try:
            data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, 1)
        except OSError as e:
            raise ZygoteUnavailable(str(e)) from None
        if not data:
            raise ZygoteUnavailable(f"it exited ({self.proc.poll()})")
        return tuple(json.loads(data)), fds

    def _read(self) -> None:
        try:
            while True:
                msg, fds = self._recv(None)
                if msg[0] == "spawned" and not self.alive:  # (too late: not waited for)
                    os.close(fds[0])
                elif msg[0] == "spawned":
                    self._spawned.put((msg[1], fds[0]))
                elif msg[0] == "exited":
                    with self._changed:
                        self._exited[msg[1]] = msg[2]
                        self._changed.notify_all()
        except ZygoteUnavailable:
            pass
        self.alive = False
        self._spawned.put(None)
        with self._changed:
            self._changed.notify_all()

    def spawn(self, conn_fd: int, args: list[str]) -> ForkedProc:
        """A worker forked with ``conn_fd`` as its socket to the driver."""
        with self._lock:
            if not self.alive:
                raise ZygoteUnavailable("it is gone")
            try:
                socket.send_fds(self.sock, [json.dumps(["spawn", args]).encode()], [conn_fd])
            except OSError as e:
                raise ZygoteUnavailable(str(e)) from None
            try:
                got = self._spawned.get(timeout=SPAWN_SECONDS)
            except queue.Empty:
                got = None
            if got is None:
                self.alive = False
                raise ZygoteUnavailable("it stopped answering")
            return ForkedProc(self, *got)

    def exit_code(self, pid: int, timeout: float | None) -> int | None:
        """The exit code of forked worker ``pid`` once it ended (None: not within timeout,
        or unknown, the zygote being gone)."""
        with self._changed:
            self._changed.wait_for(lambda: pid in self._exited or not self.alive, timeout)
            return self._exited.pop(pid, None)

    def close(self) -> None:
        self.alive = False
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # (wakes the reader: close alone may not)
        except OSError:
            pass
        self.sock.close()
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


class ForkedProc:
    """A worker the zygote forked, with ``subprocess.Popen``'s methods that the driver uses.
    Signals go through a pidfd, so they reach exactly this process; its exit code comes from
    the zygote, which reaps it."""

    def __init__(self, zygote: Zygote, pid: int, pidfd: int) -> None:
        self.zygote, self.pid, self.pidfd = zygote, pid, pidfd
        self.returncode: int | None = None
        self.status_unknown = False

    def _ended(self, timeout: float | None = 0) -> bool:
        if self.pidfd < 0:
            return True
        return bool(select.select([self.pidfd], [], [], timeout)[0])  # readable once it exits

    def poll(self) -> int | None:
        if self.returncode is None and not self.status_unknown and self._ended():
            self.wait(1)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        if self.returncode is None and not self.status_unknown:
            start = time.monotonic()
            code = self.zygote.exit_code(self.pid, timeout)
            left = None if timeout is None else max(0.0, timeout - (time.monotonic() - start))
            if code is not None:
                self.returncode = code
            elif self._ended(left):  # ended, but the zygote did not say how (it is gone)
                self.status_unknown = True
            else:
                raise subprocess.TimeoutExpired(f"worker {self.pid}", timeout or 0)
        if self.returncode is not None and self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        return self.returncode

    def kill(self) -> None:
        if self.pidfd >= 0:
            try:
                signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
            except ProcessLookupError:
                pass


class WorkerProc:
    """One worker process and the driver's end of its socket."""

    def __init__(self, worker_id: str, store_root: str, node_id: str, env: dict[str, str],
                 zygote: Zygote | None = None) -> None:
        self.id = worker_id
        args = [store_root, worker_id, node_id]
        parent, child = socket.socketpair()
        proc: subprocess.Popen | ForkedProc | None = None
        if zygote is not None:
            try:
                proc = zygote.spawn(child.fileno(), args)
            except ZygoteUnavailable:
                # a fresh socket: a fork the zygote may still make of this request sees its
                # end closed and exits
                parent.close()
                child.close()
                parent, child = socket.socketpair()
        try:
            if proc is None:
                proc = subprocess.Popen(
                    [sys.executable, *INTERPRETER_FLAGS, "-m", "runtime.local.worker",
                     str(child.fileno()), *args],
                    pass_fds=[child.fileno()], env=env, stdin=subprocess.DEVNULL,
                    # a terminal's Ctrl-C goes to the driver, which decides; workers never see
                    # it
                    start_new_session=True,
                )
        finally:
            child.close()
        self.proc: subprocess.Popen | ForkedProc = proc
        self.conn = Connection(parent.detach())
        self._send_lock = threading.Lock()
        self.state = "starting"  # starting -> idle <-> busy; or actor; -> dead
        self.work: Any = None  # the task it runs
        self.actor: Any = None  # the actor it hosts
        self.functions: set[str] = set()  # function ids whose code it has
        self.held: set[str] = set()  # object ids it holds refs to
        self.blocked = False  # waiting in runtime.get inside a task
        self.idle_since = 0.0  # when it last went idle (time.monotonic)
        self.trimmed = False  # told to give its free memory back since then

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
        if code is None and getattr(self.proc, "status_unknown", False):
            return UNKNOWN_EXIT
        if code is None:
            return "still running"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"
