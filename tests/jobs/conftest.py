"""Helpers for the jobs tests: tables with pending deltas, configs, a manual clock, and the
``compactor jobs`` executable.

Subprocess tests run the installed ``compactor jobs`` once the group is registered in the
``compactor`` command line, and ``python -m jobs`` (the same click group) until then.
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

import runtime
from compactor import Partition, Table, create_table
from jobs.config import Config, parse_config

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string()),
                    ("lsn", pa.int64())])


class ManualClock:
    """A wall clock that moves only when told (no sleeping through real minutes)."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:  # 2023-11-14T22:13:20Z
        self.t = start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def rows(ids: range | list[int], tag: str, lsn0: int = 0) -> pa.Table:
    ids = list(ids)
    return pa.table({"id": ids, "v": [f"{tag}-{i}" for i in ids],
                     "lsn": list(range(lsn0, lsn0 + len(ids)))}, schema=SCHEMA)


def make_table(url: str, days: list[str], *, deltas: int = 1, n: int = 200,
               storage_options: dict[str, Any] | None = None) -> Table:
    """A table partitioned by ``day`` with ``deltas`` pending upserts in each day."""
    table = create_table(url, SCHEMA, primary_key=["id"], ordering_column="lsn",
                         partition_by=["day"], bucket_count=2, storage_options=storage_options)
    for day in days:
        part = table.partition({"day": day})
        for d in range(deltas):
            part.append(rows(range(d * n // 2, d * n // 2 + n), f"{day}-{d}", d * n))
    return table


def compactions(part: Partition) -> int:
    """How many compaction rounds ``part`` has committed."""
    return sum(1 for e in part.log.read_from(1) if e.get("kind") == "compaction")


def config_text(table: str, tmp_path: Path, *, triggers: str = "{pending_deltas: 1}",
                job: str = "", scheduler: str = "tick: 0.2s, lease_ttl: 6s, shutdown_grace: 10s",
                top: str = "") -> str:
    """A one-job config (a YAML line more for the job and the top level)."""
    text = f"""
        history: {tmp_path / 'history.sqlite'}
        scheduler: {{{scheduler}}}
        {top}
        jobs:
          - name: daily
            table: {table}
            triggers: {triggers}
            retries: {{max: 2, backoff: 0.05s, max_backoff: 0.1s}}
            {job}
        """
    return textwrap.dedent(text)


def config(table: str, tmp_path: Path, **kwargs: str) -> Config:
    return parse_config(config_text(table, tmp_path, **kwargs), "test.yaml")


def write_config(table: str, tmp_path: Path, name: str = "jobs.yaml", **kwargs: str) -> Path:
    path = tmp_path / name
    path.write_text(config_text(table, tmp_path, **kwargs))
    return path


@pytest.fixture(scope="module")
def rt() -> Iterator[None]:
    """One local runtime for a module's in-process schedulers (they use it as it is)."""
    with runtime.init("local", num_cpus=2):
        yield


# -- the executable ------------------------------------------------------------------------------
@functools.cache
def jobs_command() -> tuple[str, ...]:
    """``compactor jobs`` if the CLI has the group registered, else ``python -m jobs``."""
    exe = Path(sys.executable).parent / "compactor"
    if exe.exists():
        probe = subprocess.run([str(exe), "jobs", "--help"], capture_output=True, text=True,
                               check=False, timeout=60)
        if probe.returncode == 0 and "jobs once" in probe.stdout:
            return (str(exe), "jobs")
    return (sys.executable, "-m", "jobs")


def _env(extra: dict[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("COMPACTOR_BACKEND", "COMPACTOR_ADDRESS", "COMPACTOR_INJECT_FAULT")}
    return {**env, **(extra or {})}


@dataclass(frozen=True)
class Done:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def __str__(self) -> str:
        return f"{' '.join(self.args)} -> {self.code}\n{self.out}\n{self.err}"


def jobs_cli(*args: object, env: dict[str, str] | None = None, timeout: float = 120) -> Done:
    argv = (*jobs_command(), *map(str, args))
    done = subprocess.run(argv, capture_output=True, text=True, env=_env(env), timeout=timeout,
                          check=False)
    return Done(argv, done.returncode, done.stdout, done.stderr)


def start_jobs(*args: object, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen([*jobs_command(), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(env))


def wait_for(condition: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stop(process: subprocess.Popen[str], sig: int = signal.SIGTERM, timeout: float = 30
         ) -> tuple[float, str]:
    """Send ``sig``; (seconds until the process exited, its stderr)."""
    start = time.monotonic()
    process.send_signal(sig)
    _, err = process.communicate(timeout=timeout)
    return time.monotonic() - start, err
