"""What tells this machine's processes apart from those of others sharing it."""

from __future__ import annotations

import os


def pid_namespace() -> int | None:
    """This process's PID namespace (the inode Linux gives it; None where it cannot tell):
    processes of containers sharing a host name or /dev/shm number their processes apart, so
    a process id means something only with it."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None
