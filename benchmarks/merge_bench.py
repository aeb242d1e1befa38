"""Dedupe kernel throughput: a full build, an incremental round, surviving rows; DuckDB beside.

    python benchmarks/merge_bench.py [--rows 10000000] [--delta 200000]

Records carry an int64 ordering value; 20% of the full build's records repeat a key and 10%
are deletes. The incremental round updates existing keys (half) and adds new ones (half), with
10% deletes. DuckDB computes the same winners (latest row per key, deletes dropped) with a
window function over the same records, for scale.
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from compactor.merge import empty_index, merge, surviving_rows

T = TypeVar("T")


def _records(rng: np.random.Generator, keys: np.ndarray, pos: int, files: int) -> pa.Table:
    n = len(keys)
    return pa.table({
        "hi": keys,
        "lo": keys * np.uint64(0x9E3779B97F4A7C15),
        "order": rng.integers(0, 1_000_000, n),
        "pos": np.full(n, pos, np.int64),
        "file": rng.integers(0, files, n).astype(np.int32),
        "row": np.arange(n, dtype=np.int32),
        "op": (rng.random(n) < 0.1).astype(np.int8),
    })


def _timed(label: str, rows: int, run: Callable[[], T], repeat: int = 1) -> T:
    """Run ``run`` (a pure function) ``repeat`` times; print the best time."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        result = run()
        best = min(best, time.perf_counter() - start)
    print(f"{label:44} {best:7.2f} s {rows / best / 1e6:8.1f} M records/s")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--delta", type=int, default=200_000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    distinct = rng.integers(0, 2**63, int(args.rows * 0.8), dtype=np.int64).astype(np.uint64)
    keys = np.concatenate([distinct, rng.choice(distinct, args.rows - len(distinct))])
    rng.shuffle(keys)
    full = _records(rng, keys, 1, 100)
    built = _timed(f"full build, {args.rows:,} records", args.rows,
                   lambda: merge(empty_index(pa.int64()), full))
    fresh = rng.integers(0, 2**63, args.delta // 2, dtype=np.int64).astype(np.uint64)
    delta_keys = np.concatenate([rng.choice(distinct, args.delta - len(fresh)), fresh])
    delta = _records(rng, delta_keys, 2, 1)
    delta = delta.set_column(4, "file", pa.array(np.full(args.delta, 100, np.int32)))
    round_ = _timed(f"incremental, {args.delta:,} into {built.index.num_rows:,} keys",
                    args.delta, lambda: merge(built.index, delta), repeat=3)
    print(f"  {round_}")
    _timed("surviving rows of the superseded files", round_.index.num_rows,
           lambda: surviving_rows(round_.index, round_.superseded_files), repeat=3)
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB")
    db = duckdb.connect()
    db.register("records", full)
    for threads in (1, 2):
        db.execute(f"SET threads = {threads}")
        _timed(f"duckdb full build, {threads} thread(s)", args.rows, lambda: db.sql("""
            SELECT * FROM records QUALIFY row_number() OVER (
                PARTITION BY hi, lo ORDER BY "order" DESC, pos DESC, file DESC, row DESC) = 1
                AND op = 0
        """).to_arrow_table())


if __name__ == "__main__":
    main()
