"""What a benchmark run measures: wall time, peak memory, and a checksum of an engine's output."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import psutil
import pyarrow as pa


class PeakMemory:
    """Samples the memory of this process and its descendants every 0.1 s; ``peak`` in bytes.

    Uses PSS (proportional set size), so shared-memory pages mapped by several processes (an
    object store) count once, not once per process; falls back to RSS where PSS is missing.
    Samples on entry and exit too, so a step shorter than the interval still has a figure.
    """

    def __init__(self, interval: float = 0.1) -> None:
        self.peak = 0
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _memory(p: psutil.Process) -> int:
        try:
            return int(p.memory_full_info().pss)
        except (psutil.AccessDenied, AttributeError):
            return int(p.memory_info().rss)

    def _sample(self) -> None:
        me = psutil.Process()
        total = self._memory(me)
        for child in me.children(recursive=True):
            try:
                total += self._memory(child)
            except psutil.Error:  # exited between listing and reading
                pass
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
