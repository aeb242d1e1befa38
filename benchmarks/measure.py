"""What a benchmark run measures: wall time, peak memory, and a checksum of an engine's output."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pyarrow as pa


def _status_kib(pid: int | str, field: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _shmem_kib() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("Shmem:"):
                return int(line.split()[1])
    return 0


class PeakMemory:
    """Samples the memory of this process and its descendants every 0.1 s; ``peak`` in bytes.

    Memory is each process's private (anonymous) resident memory plus the shared memory created
    since the start (an object store's segments, counted once however many processes map them):
    what the engine itself holds, without the shared libraries and page cache every engine maps.
    These are counters the kernel keeps (``/proc/PID/status`` RssAnon, ``/proc/meminfo``
    Shmem), cheap to read. PSS would be the textbook figure, but reading it makes the kernel walk
    every page of every mapping and holds the process's memory map lock meanwhile: sampling it
    took 15-20% of a multi-process engine's time on 2 cores. Elsewhere than Linux: RSS.
    Samples on entry and exit too, so a step shorter than the interval still has a figure.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._linux = Path("/proc/meminfo").exists()
        self._shmem_start = _shmem_kib() if self._linux else 0

    def _memory(self, p: psutil.Process) -> int:
        if self._linux:
            return _status_kib(p.pid, "RssAnon") * 1024
        return int(p.memory_info().rss)

    def _sample(self) -> None:
        me = psutil.Process()
        total = self._memory(me)
        for child in me.children(recursive=True):
            try:
                total += self._memory(child)
            except (psutil.Error, OSError):  # exited between listing and reading
                pass
        if self._linux:
            total += max(0, _shmem_kib() - self._shmem_start) * 1024
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            self._sample()

    def __enter__(self) -> PeakMemory:
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()


@contextmanager
def measured(record: dict[str, Any]) -> Iterator[None]:
    """Times the block and samples its peak memory into ``record`` (seconds, peak_bytes)."""
    with PeakMemory() as memory:
        start = time.perf_counter()
        yield
        record["seconds"] = time.perf_counter() - start
    record["peak_bytes"] = memory.peak


def _canonical(name: str, type_: pa.DataType) -> str:
    """The column as one SQL type whatever width or encoding an engine wrote it with."""
    col = f'"{name}"'
    if pa.types.is_integer(type_):
        return f"CAST({col} AS BIGINT)"
    if pa.types.is_floating(type_):
        return f"CAST({col} AS DOUBLE)"
    if pa.types.is_timestamp(type_):
        return f"CAST({col} AS TIMESTAMP)"
    if pa.types.is_boolean(type_):
        return col
    return f"CAST({col} AS VARCHAR)"


def checksum(paths: Sequence[str], schema: pa.Schema, key_columns: Sequence[str],
             order_column: str) -> dict[str, int]:
    """Row count, distinct keys, and order-free sums of row hashes, computed by DuckDB.

    ``versions`` hashes each row's key and ordering value (which version of a key survived);
    ``content`` hashes every column of the schema (the row was carried over intact). Two outputs
    of one current state agree on all four, however their rows and files are arranged.
    """
    if not paths:
        return {"rows": 0, "keys": 0, "versions": 0, "content": 0}
    import duckdb

    keys = ", ".join(f'"{k}"' for k in key_columns)
    columns = ", ".join(_canonical(f.name, f.type) for f in schema)
    files = ", ".join(f"'{p}'" for p in paths)
    con = duckdb.connect()
    try:
        rows, distinct, versions, content = con.execute(f"""
            SELECT count(*), count(DISTINCT ({keys})),
                   coalesce(sum(hash({keys}, "{order_column}")), 0),
                   coalesce(sum(hash({columns})), 0)
            FROM read_parquet([{files}], union_by_name = true)
        """).fetchone()  # type: ignore[misc]
    finally:
        con.close()
    return {"rows": int(rows), "keys": int(distinct), "versions": int(versions),
            "content": int(content)}
