"""Key digest throughput against a SHA-1-per-row Python baseline, on one core.

    python benchmarks/hash_bench.py [--rows 10000000]

Prints keys/s of ``compactor.hashing.key_digest`` for an int64 key, a composite
(string, int64, date) key and a short-string key, beside hashing each row's key bytes with
``hashlib.sha1`` in a Python loop (what a straightforward implementation does), and the ratio.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from functools import partial

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from compactor.hashing import key_digest


def _best_rate(rows: int, run: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return rows / best


def _sha1_per_row(table: pa.Table, key: list[str]) -> None:
    columns = [table.column(name).to_pylist() for name in key]
    for values in zip(*columns, strict=True):
        digest = hashlib.sha1()
        for value in values:
            digest.update(value.encode() if isinstance(value, str) else repr(value).encode())
        digest.digest()


def _datasets(rows: int) -> dict[str, tuple[pa.Table, list[str]]]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 2**62, rows)
    # "user-<n>": 6 to 13 bytes, the shape of typical string keys.
    names = pc.binary_join_element_wise(
        "user-", pc.cast(pa.array(rng.integers(0, 10**8, rows)), pa.string()), ""
    )
    days = pa.array(rng.integers(18_000, 20_000, rows).astype(np.int32), pa.date32())
    return {
        "int64": (pa.table({"id": ids}), ["id"]),
        "composite (string, int64, date32)": (
            pa.table({"tenant": names, "id": ids, "day": days}), ["tenant", "id", "day"]
        ),
        "short string": (pa.table({"name": names}), ["name"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=10_000_000)
    parser.add_argument("--baseline-rows", type=int, default=200_000)
    args = parser.parse_args()
    print(f"{'key':36} {'ckh128 keys/s':>14} {'sha1/row keys/s':>16} {'ratio':>7}")
    for name, (table, key) in _datasets(args.rows).items():
        fast = _best_rate(args.rows, partial(key_digest, table, key))
        sample = table.slice(0, args.baseline_rows)
        slow = _best_rate(args.baseline_rows, partial(_sha1_per_row, sample, key), repeat=1)
        print(f"{name:36} {fast / 1e6:12.1f} M {slow / 1e6:14.2f} M {fast / slow:6.0f}x")


if __name__ == "__main__":
    main()
