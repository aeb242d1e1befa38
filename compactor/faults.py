"""Fault injection for tests and fault trials: make a pipeline step fail on purpose.

``COMPACTOR_INJECT_FAULT="STEP:ACTION:MARKER"`` (read where the step runs, so worker processes
see it through their environment). When step STEP (hash_bucket, dedupe, materialize, commit)
runs and the file MARKER does not exist yet, MARKER is created and ACTION happens once:
``kill`` (SIGKILL this process), ``raise`` (an ``InjectedFault``) or ``sleep-SECONDS`` (pause,
then go on: e.g. a round that waits at its commit while another process's round commits).
Without the variable this is a no-op costing one environment lookup.
"""

from __future__ import annotations

import os
import signal
import time

ENV = "COMPACTOR_INJECT_FAULT"


class InjectedFault(RuntimeError):
    """Raised by an injected ``raise`` fault."""


def maybe_fail(step: str) -> None:
    spec = os.environ.get(ENV)
    if not spec:
        return
    where, action, marker = spec.split(":", 2)
    if where != step:
        return
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    if action == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
    if action.startswith("sleep-"):
        time.sleep(float(action.removeprefix("sleep-")))
        return
    raise InjectedFault(f"injected fault in step {step}")
