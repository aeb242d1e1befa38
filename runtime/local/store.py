"""The shared-memory object store: one tmpfs file per object under a per-session directory.

A writer creates ``<root>/<object id>`` exclusively and writes the frame with one ``pwritev``
(a full store is an ``ENOSPC`` error, never a SIGBUS as with writes through a mapping).
Readers map the file
read-only and get zero-copy views. Freeing unlinks the file; mappings still open keep their pages
until they are dropped, so a reader never sees memory vanish under it.

The whole session lives in one directory, so cleanup after a crash is one ``rmtree``. Its name
carries the driver's process id and PID namespace: a driver killed before its zygote took over
the cleanup (which it does when the driver's connection closes) leaves a directory that the
next store created in that namespace on the machine removes.
"""

from __future__ import annotations

import errno
import mmap
import os
import shutil
import tempfile
from typing import Any

import psutil

from runtime.errors import ObjectLostError, ObjectStoreFullError
from runtime.host import pid_namespace
from runtime.local import serialization
from runtime.local.serialization import Frame

INLINE_MAX = 64 * 1024  # values smaller than this travel inside messages
PREFIX = "compactor-rt-"


def default_parent() -> str:
    return "/dev/shm" if os.path.isdir("/dev/shm") else tempfile.gettempdir()


def session_dirs(parent: str | None = None) -> list[str]:
    """Store directories of every session on this machine (for leak checks and cleanup)."""
    parent = parent or default_parent()
    return [os.path.join(parent, n) for n in os.listdir(parent) if n.startswith(PREFIX)]


def _pid_namespace() -> str:
    return str(pid_namespace() or 0)


def _owner() -> str:
    """What a store directory's name says of its driver: ``<pid>.<pid namespace>``."""
    return f"{os.getpid()}.{_pid_namespace()}"


def reap_orphans(parent: str | None = None) -> list[str]:
    """Remove the store directories whose driver process is gone; the ones removed. Only
    drivers of this PID namespace are looked up (containers sharing /dev/shm number their
    processes apart: another's live driver is no process here); a name without both, of an
    earlier version, is left alone."""
    reaped, namespace = [], _pid_namespace()
    for path in session_dirs(parent):
        owner, dash, _ = os.path.basename(path)[len(PREFIX):].partition("-")
        pid, dot, ns = owner.partition(".")
        if dash and dot and pid.isdigit() and ns == namespace and \
                not psutil.pid_exists(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            reaped.append(path)
    return reaped


class ObjectStore:
    def __init__(self, root: str) -> None:
        self.root = root

    @classmethod
    def create(cls, session_id: str, parent: str | None = None) -> ObjectStore:
        parent = parent or default_parent()
        reap_orphans(parent)
        root = os.path.join(parent, f"{PREFIX}{_owner()}-{session_id}")
        os.makedirs(root, mode=0o700)
        return cls(root)

    def path(self, object_id: str) -> str:
        return os.path.join(self.root, object_id)

    def write(self, object_id: str, frame: Frame) -> int:
        """Write ``frame`` as object ``object_id``; returns its size in bytes."""
        path = self.path(object_id)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        except FileExistsError:
            # only the task computing an object writes it: this is a dead attempt's leftover
            os.unlink(path)
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            frame.write_to_fd(fd)
        except OSError as e:
            os.unlink(path)
            if e.errno in (errno.ENOSPC, errno.EFBIG):
                raise ObjectStoreFullError(
                    f"object store {self.root} is full: cannot store {frame.size} bytes"
                ) from e
            raise
        finally:
            os.close(fd)
        return frame.size

    def read(self, object_id: str) -> Any:
        """The value of a stored object; large buffers are views into a read-only mapping."""
        try:
            fd = os.open(self.path(object_id), os.O_RDONLY)
        except FileNotFoundError:
            raise ObjectLostError(f"object {object_id} is no longer in the object store") from None
        try:
            mm = mmap.mmap(fd, 0, access=mmap.ACCESS_READ)
        finally:
            os.close(fd)
        return serialization.loads(memoryview(mm))

    def delete(self, object_id: str) -> None:
        try:
            os.unlink(self.path(object_id))
        except FileNotFoundError:
            pass

    def destroy(self) -> None:
        shutil.rmtree(self.root, ignore_errors=True)
