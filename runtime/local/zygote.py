"""The zygote: one process that imports what workers need once, then forks every worker.

Starting a worker as a new interpreter costs it the imports of the runtime and of whatever its
tasks use (pyarrow, numpy, the pipeline): about 0.5 CPU-seconds each on a small machine, paid
again by each actor's process and each worker started while a job runs. The local backend
instead starts this process once (``python -m runtime.local.zygote FD STORE_ROOT MODULE...``,
with the workers' environment), which imports the runtime's worker and the ``preload``
modules, and then forks a worker per request: a fork of an imported process takes
milliseconds. Its workers keep its command line (so ``ps`` shows the store root of their
runtime) and are named ``runtime-worker`` (``ps -o comm``, ``psutil.Process.name``); the zygote
itself ``runtime-zygote``.

Protocol (``FD``: a SOCK_SEQPACKET socket; each message one JSON array):

- to the driver, once: ``("ready", errors)`` (``errors``: modules that failed to import), or
  ``("unsafe", reason)`` and exit: the imports started threads (forking then is unsafe), or
  the system has no pidfds;
- from the driver: ``("spawn", args)`` with the worker's end of its socket as an attached fd;
  the reply ``("spawned", pid)`` carries a pidfd of the worker (signals reach exactly it, even
  once its pid is reused);
- to the driver, for each worker that ends: ``("exited", pid, code)``, ``code`` as
  ``subprocess`` reports it (negative: killed by that signal).

When the driver's end closes, the zygote removes the session's store directory (as a worker
does when the driver is gone) and exits; the workers live on until their own sockets to the
driver close.
"""

from __future__ import annotations

import importlib
import json
import os
import select
import shutil
import signal
import socket
import sys
import threading
import traceback

MAX_MESSAGE = 1 << 16


def _send(sock: socket.socket, msg: tuple, fds: list[int] | None = None) -> None:
    data = json.dumps(msg).encode()
    if fds:
        socket.send_fds(sock, [data], fds)
    else:
        sock.send(data)


def set_name(name: str) -> None:
    """This process's name as ``ps -o comm`` and ``top`` show it (Linux; else nothing)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _run_worker(sock: socket.socket, wake: tuple[int, int], fd: int, args: list[str]) -> None:
    """In the forked child: become the worker (never returns)."""
    code = 1
    try:
        sock.close()
        for w in wake:
            os.close(w)
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()  # as a started worker: a terminal's Ctrl-C goes to the driver only
        from runtime.local import worker

        worker.main([str(fd), *args])
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        traceback.print_exc()
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, ("exited", pid, os.waitstatus_to_exitcode(status)))


def main(argv: list[str]) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # interrupts are the driver's to handle
    sock = socket.socket(fileno=int(argv[0]))
    set_name("runtime-zygote")
    errors = []
    for name in ["runtime.local.worker", *argv[2:]]:
        try:
            importlib.import_module(name)
        except BaseException as e:  # the workers import it themselves (and report it)
            errors.append(f"{name}: {type(e).__name__}: {e}")
    threads = _threads()
    if threads > 1:
        _send(sock, ("unsafe", f"its imports started {threads} threads: forking is unsafe"))
        return
    try:  # the driver signals the workers through pidfds (Linux 5.3 and later)
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError) as e:
        _send(sock, ("unsafe", f"no pidfds here ({e})"))
        return
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)
    try:
        _send(sock, ("ready", errors))
        _serve(sock, wake_r, wake_w)
    except OSError:
        pass
    # the driver is gone (or shut down): if it died before any worker started, nobody else
    # removes the session's store directory
    shutil.rmtree(argv[1], ignore_errors=True)


def _serve(sock: socket.socket, wake_r: int, wake_w: int) -> None:
    while True:
        ready, _, _ = select.select([sock.fileno(), wake_r], [], [])
        if wake_r in ready:
            os.read(wake_r, 4096)
            _reap(sock)
        if sock.fileno() not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, 1)
        except OSError:
            return
        if not data:  # the driver is gone
            return
        _, args = json.loads(data)
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            _run_worker(sock, (wake_r, wake_w), fds[0], args)
        os.close(fds[0])
        pidfd = os.pidfd_open(pid)  # (not reaped yet: only this loop reaps)
        try:
            _send(sock, ("spawned", pid), [pidfd])
        finally:
            os.close(pidfd)


if __name__ == "__main__":
    main(sys.argv[1:])
