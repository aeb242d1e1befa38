"""Full and incremental compaction beside DuckDB and the pyarrow I/O floor, in one run.

    python benchmarks/compaction_bench.py [--base-rows 20000000] [--deltas 10]
        [--delta-rows 200000] [--dir /tmp/cbench] [--json out.json]

Data: a CDC partition: a base of ``--base-rows`` rows (int64 key, int64 LSN ordering column,
six payload columns) in 1M-row Parquet files, plus ``--deltas`` CDC deltas of ``--delta-rows``
rows each (10% deletes, 10% new keys, the rest updates of existing keys). Engines, each in its
own process so peak RSS is its own:

- compactor, local backend: full compaction of base + deltas; then one more delta whose
  updates hit only the newest 5% of keys, compacted incrementally;
- DuckDB: the same current state with a window query (latest row per key by LSN, drop
  deletes), written to Parquet;
- floor: pyarrow reading every input file and writing it back, two threads, no merge.

Outputs are checked equal (row count and a checksum of keys and LSNs) before times count.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.parquet as pq

FILE_ROWS = 1_000_000


def _payload(rng: np.random.Generator, ids: np.ndarray, lsn: np.ndarray) -> dict[str, Any]:
    n = len(ids)
    return {
        "id": ids, "lsn": lsn,
        "qty": rng.integers(0, 1000, n, dtype=np.int32),
        "price": rng.random(n) * 100,
        "status": pa.array(rng.choice(["new", "paid", "shipped", "returned"], n)),
        "customer": pa.array(np.char.add("c", rng.integers(0, 1_000_000, n).astype(str))),
        "updated": pa.array(lsn * 1000, pa.timestamp("ms")),
        "flag": rng.random(n) < 0.5,
    }


def generate(root: Path, base_rows: int, deltas: int, delta_rows: int, seed: int = 7) -> dict:
    rng = np.random.default_rng(seed)
    (root / "base").mkdir(parents=True)
    (root / "deltas").mkdir()
    base_files = []
    for start in range(0, base_rows, FILE_ROWS):
        ids = np.arange(start, min(start + FILE_ROWS, base_rows), dtype=np.int64)
        path = root / "base" / f"part-{start // FILE_ROWS:05d}.parquet"
        pq.write_table(pa.table(_payload(rng, ids, ids.copy())), path)
        base_files.append(str(path))
    lsn = base_rows
    next_key = base_rows
    delta_files = []
    for d in range(deltas + 1):  # the last one is the incremental round's delta
        n = delta_rows
        n_new, n_del = n // 10, n // 10
        if d == deltas:  # updates on the newest 5% of keys only
            hot_lo = int(next_key * 0.95)
            upd = rng.integers(hot_lo, next_key, n - n_new - n_del)
            dels = rng.integers(hot_lo, next_key, n_del)
        else:
            upd = rng.integers(0, next_key, n - n_new - n_del)
            dels = rng.integers(0, next_key, n_del)
        new = np.arange(next_key, next_key + n_new)
        next_key += n_new
        ids = np.concatenate([upd, new, dels]).astype(np.int64)
        ops = np.array(["U"] * len(upd) + ["I"] * n_new + ["D"] * n_del)
        perm = rng.permutation(n)
        ids, ops = ids[perm], ops[perm]
        lsns = np.arange(lsn, lsn + n, dtype=np.int64)
        lsn += n
        table = pa.table({**_payload(rng, ids, lsns), "Op": pa.array(ops)})
        path = root / "deltas" / f"delta-{d:03d}.parquet"
        pq.write_table(table, path)
        delta_files.append(str(path))
    return {"base": base_files, "deltas": delta_files[:-1], "incremental": delta_files[-1]}


class PeakRss:
    """Samples the memory of this process and its descendants; ``peak`` in bytes.

    Uses PSS (proportional set size), so shared-memory pages mapped by several processes (the
    object store) count once, not once per process; falls back to RSS where PSS is missing.
    """

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _memory(p: psutil.Process) -> int:
        try:
            return int(p.memory_full_info().pss)
        except (psutil.AccessDenied, AttributeError):
            return int(p.memory_info().rss)

    def _sample(self) -> int:
        me = psutil.Process()
        total = self._memory(me)
        for child in me.children(recursive=True):
            try:
                total += self._memory(child)
            except psutil.Error:
                pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            self.peak = max(self.peak, self._sample())

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def checksum(table: pa.Table) -> list[int]:
    ids = table.column("id").to_numpy()
    lsn = table.column("lsn").to_numpy()
    return [len(ids), int(ids.sum() % (1 << 61)), int((ids * 31 + lsn).sum() % (1 << 61))]


def run_compactor(root: Path, files: dict) -> dict:
    import runtime
    from compactor import CdcOps, DeltaKind, create_table
    from compactor.compaction import compact_partition
    from compactor.reader import read_partition

    schema = pq.read_schema(files["base"][0])
    table = create_table(f"file://{root}/table", schema, primary_key=["id"],
                         ordering_column="lsn", bucket_count=8)
    part = table.partition()
    part.register(files["base"])
    for f in files["deltas"]:
        part.register([f], kind=DeltaKind.CDC, cdc=CdcOps("Op"))
    out: dict[str, Any] = {}
    target = int(os.environ.get("BENCH_TARGET_FILE_SIZE", 32 << 20))
    with runtime.init("local"):
        with PeakRss() as rss:
            t = time.perf_counter()
            full = compact_partition(table, part, target_file_size=target)
            out["full_s"] = time.perf_counter() - t
            out["full_steps"] = full.step_seconds
        out["full_peak_rss"] = rss.peak
        out["checksum"] = checksum(read_partition(table, part, columns=["id", "lsn"]))
        part.register([files["incremental"]], kind=DeltaKind.CDC, cdc=CdcOps("Op"))
        # the same service, warm: workers up, dedupe actors holding the key index
        t = time.perf_counter()
        inc = compact_partition(table, part, target_file_size=target)
        out["incremental_s"] = time.perf_counter() - t
        out["incremental_written_mb"] = inc.bytes_written / 1e6
        out["incremental_referenced_mb"] = inc.bytes_referenced / 1e6
        out["incremental_steps"] = inc.step_seconds
    return out


def run_duckdb(root: Path, files: dict) -> dict:
    import duckdb

    con = duckdb.connect()
    con.execute("SET threads TO 2")
    base = ", ".join(f"'{f}'" for f in files["base"])
    deltas = ", ".join(f"'{f}'" for f in files["deltas"])
    out_path = root / "duckdb.parquet"
    with PeakRss() as rss:
        t = time.perf_counter()
        con.execute(f"""
            COPY (
              SELECT * EXCLUDE (op, rn) FROM (
                SELECT *, row_number() OVER (PARTITION BY id ORDER BY lsn DESC) AS rn FROM (
                  SELECT *, 'U' AS op FROM read_parquet([{base}])
                  UNION ALL BY NAME
                  SELECT * EXCLUDE ("Op"), "Op" AS op FROM read_parquet([{deltas}])
                )
              ) WHERE rn = 1 AND op <> 'D'
            ) TO '{out_path}' (FORMAT parquet)
        """)
        elapsed = time.perf_counter() - t
    return {"full_s": elapsed, "full_peak_rss": rss.peak,
            "checksum": checksum(pq.read_table(out_path, columns=["id", "lsn"]))}


def run_floor(root: Path, files: dict) -> dict:
    out_dir = root / "floor"
    out_dir.mkdir()

    def copy(i_path: tuple[int, str]) -> None:
        i, path = i_path
        pq.write_table(pq.read_table(path), out_dir / f"{i}.parquet")

    with PeakRss() as rss:
        t = time.perf_counter()
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(copy, enumerate(files["base"] + files["deltas"])))
        elapsed = time.perf_counter() - t
    return {"full_s": elapsed, "full_peak_rss": rss.peak}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base-rows", type=int, default=20_000_000)
    p.add_argument("--deltas", type=int, default=10)
    p.add_argument("--delta-rows", type=int, default=200_000)
    p.add_argument("--dir", default="/tmp/compaction-bench")
    p.add_argument("--target-file-size", type=int, default=32 << 20,
                   help="compactor's target Parquet file size in bytes (default 32 MiB)")
    p.add_argument("--json", help="also write the figures here")
    p.add_argument("--engine", help=argparse.SUPPRESS)
    args = p.parse_args()
    root = Path(args.dir)
    if args.engine:
        files = json.loads((root / "files.json").read_text())
        fn = {"compactor": run_compactor, "duckdb": run_duckdb, "floor": run_floor}[args.engine]
        print(json.dumps(fn(root, files)))
        return
    shutil.rmtree(root, ignore_errors=True)
    t = time.perf_counter()
    files = generate(root, args.base_rows, args.deltas, args.delta_rows)
    (root / "files.json").write_text(json.dumps(files))
    size = sum(os.path.getsize(f) for f in files["base"] + files["deltas"])
    print(f"generated {args.base_rows:,} base rows + {args.deltas} x {args.delta_rows:,} "
          f"({size / 1e6:.0f} MB Parquet) in {time.perf_counter() - t:.1f} s")
    results = {}
    for engine in ("floor", "duckdb", "compactor"):
        env = {**os.environ, "BENCH_TARGET_FILE_SIZE": str(args.target_file_size)}
        proc = subprocess.run([sys.executable, __file__, "--dir", str(root), "--engine", engine],
                              capture_output=True, text=True, check=False, env=env)
        if proc.returncode:
            sys.exit(f"{engine} failed:\n{proc.stderr[-3000:]}")
        results[engine] = json.loads(proc.stdout.strip().splitlines()[-1])
    if results["compactor"]["checksum"] != results["duckdb"]["checksum"]:
        sys.exit(f"outputs differ: compactor {results['compactor']['checksum']} vs duckdb "
                 f"{results['duckdb']['checksum']}")
    c, d, f = results["compactor"], results["duckdb"], results["floor"]
    print(f"outputs agree: {c['checksum'][0]:,} rows, same checksum")
    print(f"{'engine':28}{'time (s)':>10}{'peak PSS (GB)':>15}{'vs DuckDB':>11}{'vs floor':>10}")
    for name, r in (("I/O floor (pyarrow rewrite)", f), ("DuckDB window query", d),
                    ("compactor full", c)):
        print(f"{name:28}{r['full_s']:>10.2f}{r['full_peak_rss'] / 1e9:>15.2f}"
              f"{r['full_s'] / d['full_s']:>10.2f}x{r['full_s'] / f['full_s']:>9.2f}x")
    print(f"compactor incremental round (newest-5% updates): {c['incremental_s']:.2f} s, "
          f"{c['full_s'] / c['incremental_s']:.1f}x faster than full; wrote "
          f"{c['incremental_written_mb']:.0f} MB, referenced {c['incremental_referenced_mb']:.0f}"
          " MB in place")
    print("full steps:", {k: round(v, 2) for k, v in c["full_steps"].items()})
    print("incremental steps:", {k: round(v, 2) for k, v in c["incremental_steps"].items()})
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
