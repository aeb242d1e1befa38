"""compactor beside the engines users would pick instead, on the same CDC partition, in one run.

    python benchmarks/compaction_bench.py                       # 20M base rows + 10 x 200K
    python benchmarks/compaction_bench.py --base-rows 2M --repeat 5 --engines compactor,polars
    python benchmarks/compaction_bench.py --key composite --locality zipf --width wide
    python benchmarks/compaction_bench.py --scale 2M,20M,60M    # time per row, peak memory

Data (cdc_data.py): a base load and ``--deltas`` CDC deltas (``Op`` I/U/D, ``lsn`` ordering),
then one more delta for the incremental round; generated once per size under ``--dir`` and
reused while the knobs stay the same.

Engines (engines.py), each run in a fresh process of its own, ``--repeat`` times, round-robin:
DuckDB (window query; the reference every output is checked against, always run; its
incremental figure is a recompute over all input), the I/O floor (pyarrow reads every input file
and writes it back, no merge), Polars, compactor on the local backend and, when Ray is installed,
on the Ray backend (full round, then the incremental round on the same warm service), and
delta-rs MERGE of the incremental delta into a Delta table of the full round's state. Default:
every installed engine (in ``--scale`` mode all but Polars, which holds the whole table in
memory: ~11 GB at 20M rows).

An engine's time counts only when each of its outputs has the reference's row count, distinct
keys and checksums (of key + lsn and of every column). Output: tables on stdout, a JSON document
and a PNG chart (``--json``, ``--png``; default under ``--dir``). Exit code 1 when an engine
failed or disagreed.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from cdc_data import LOCALITIES, WIDTHS, DataSpec, prepare
from engines import ENGINES, REFERENCE
from report import chart_comparison, chart_scaling, print_comparison, print_scaling, write_json
from runner import Settings, compare, worker_main

_UNITS = {"K": 10**3, "M": 10**6, "G": 10**9}


def count(text: str) -> int:
    """A row count: 20000000, 20M, 200K, 1.5M."""
    text = text.strip().upper().replace("_", "")
    try:
        if text and text[-1] in _UNITS:
            return int(float(text[:-1]) * _UNITS[text[-1]])
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a row count (e.g. 2000000, 2M, 200K)") from None


def counts(text: str) -> list[int]:
    return [count(t) for t in text.split(",") if t.strip()]


def engine_list(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [n for n in names if n not in ENGINES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown engine(s) {', '.join(unknown)}; valid: {', '.join(ENGINES)}")
    return names


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    d = DataSpec()
    data = p.add_argument_group("data")
    data.add_argument("--base-rows", type=count, default=d.base_rows)
    data.add_argument("--deltas", type=int, default=d.deltas, help="deltas of the full round")
    data.add_argument("--delta-rows", type=count, default=d.delta_rows)
    data.add_argument("--incremental-rows", type=count,
                      help="rows of the incremental round's delta (default: --delta-rows)")
    data.add_argument("--delete-fraction", type=float, default=d.delete_fraction)
    data.add_argument("--new-key-fraction", type=float, default=d.new_key_fraction)
    data.add_argument("--key", choices=("int64", "composite"), default=d.key,
                      help="int64 id, or a composite key of two strings")
    data.add_argument("--locality", choices=LOCALITIES, default=d.locality,
                      help="which keys the full round's deltas change")
    data.add_argument("--incremental-locality", choices=LOCALITIES,
                      default=d.incremental_locality)
    data.add_argument("--hot-fraction", type=float, default=d.hot_fraction,
                      help="hot: changes hit only this newest fraction of keys")
    data.add_argument("--zipf-s", type=float, default=d.zipf_s, help="zipf skew (> 1)")
    data.add_argument("--width", choices=WIDTHS, default=d.width,
                      help="narrow: 8 columns; wide: ~1 KB rows (16 more columns)")
    data.add_argument("--file-rows", type=count, default=0,
                      help="rows per base file (default: ~128 MiB as Arrow)")
    data.add_argument("--seed", type=int, default=d.seed)
    data.add_argument("--fresh", action="store_true", help="regenerate the data even if cached")
    run = p.add_argument_group("run")
    run.add_argument("--engines", type=engine_list,
                     help=f"comma-separated, from {', '.join(ENGINES)} (default: installed)")
    run.add_argument("--repeat", type=int, default=3, help="runs per engine; the median counts")
    run.add_argument("--scale", type=counts,
                     help="base-row sizes to run one after another, e.g. 2M,20M,60M")
    run.add_argument("--cores", type=int, default=os.cpu_count() or 1,
                     help="threads/CPUs every engine may use (default: all)")
    run.add_argument("--target-file-size", type=int, default=32 << 20,
                     help="compactor's target Parquet file size in bytes (default 32 MiB)")
    run.add_argument("--buckets", type=int,
                     help="compactor's bucket count (default: --cores; DESIGN.md: from the "
                          "parallelism, not the table size. More buckets than dedupe actors "
                          "only make an incremental round touch more files)")
    run.add_argument("--compression", default="snappy",
                     help="compactor's Parquet codec (default snappy: what DuckDB and the floor "
                          "write; zstd, compactor's own default, makes its files smaller still "
                          "and costs more CPU)")
    run.add_argument("--timeout", type=float, default=3600, help="seconds per engine run")
    run.add_argument("--dir", type=Path, default=Path("/tmp/compaction-bench"))
    run.add_argument("--json", type=Path, help="results document (default DIR/results.json)")
    run.add_argument("--png", type=Path, help="chart (default DIR/results.png)")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.cores < 1:
        p.error("--repeat and --cores must be at least 1")
    return args


def spec_for(args: argparse.Namespace, base_rows: int) -> DataSpec:
    return DataSpec(
        base_rows=base_rows, deltas=args.deltas, delta_rows=args.delta_rows,
        incremental_rows=args.incremental_rows or args.delta_rows,
        delete_fraction=args.delete_fraction, new_key_fraction=args.new_key_fraction,
        key=args.key, locality=args.locality, incremental_locality=args.incremental_locality,
        hot_fraction=args.hot_fraction, zipf_s=args.zipf_s, width=args.width,
        file_rows=args.file_rows, seed=args.seed)


def default_engines(scale: bool) -> list[str]:
    return [name for name, e in ENGINES.items()
            if e.installed() and not (scale and name == "polars")]


def machine(cores: int) -> dict[str, Any]:
    import psutil

    versions = {}
    for package in ("pyarrow", "duckdb", "polars", "deltalake", "ray", "numpy"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            pass
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], capture_output=True,
                                text=True, check=False, cwd=Path(__file__).parent).stdout.strip()
    except OSError:
        commit = ""
    return {"cpu_count": os.cpu_count(), "cores_used": cores, "platform": platform.platform(),
            "memory_bytes": psutil.virtual_memory().total, "python": platform.python_version(),
            "versions": versions, "commit": commit, "loadavg_start": list(os.getloadavg())}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker:
        worker_main(args.worker)
        return 0
    engines = list(dict.fromkeys([REFERENCE, *(args.engines or default_engines(bool(args.scale)))]))
    missing = [n for n in engines if not ENGINES[n].installed()]
    if missing:
        sys.exit(f"not installed: {', '.join(missing)} (pip install -e '.[bench]')")
    settings = Settings(args.cores, args.repeat, args.target_file_size,
                        args.buckets or args.cores, args.timeout, args.compression)
    info = machine(args.cores)
    args.dir.mkdir(parents=True, exist_ok=True)
    results = []
    for base_rows in args.scale or [args.base_rows]:
        try:
            spec = spec_for(args, base_rows)
        except ValueError as e:
            sys.exit(f"bad data knobs: {e}")
        start = time.perf_counter()
        dataset, reused = prepare(args.dir / f"data-{base_rows}", spec, fresh=args.fresh)
        print(f"{'reused' if reused else 'generated'} {base_rows:,} base rows + {spec.deltas} x "
              f"{spec.delta_rows:,} + {spec.incremental_rows:,} "
              f"({dataset.parquet_bytes / 1e6:,.0f} MB Parquet) in "
              f"{time.perf_counter() - start:.1f} s; engines: {', '.join(engines)}", flush=True)
        result = compare(__file__, dataset, engines, settings, args.dir,
                         log=lambda line: print(line, flush=True))
        print_comparison(result, info)
        results.append(result)
    info["loadavg_end"] = list(os.getloadavg())
    if args.scale:
        print_scaling(results)
    json_path = args.json or args.dir / "results.json"
    png_path = args.png or args.dir / "results.png"
    write_json(json_path, {"machine": info, "mode": "scale" if args.scale else "compare",
                           "results": results, "ok": all(r["ok"] for r in results)})
    charted = (chart_scaling(results, png_path) if args.scale
               else chart_comparison(results[0], png_path))
    print(f"\nwrote {json_path}" + (f" and {png_path}" if charted else
                                   " (no chart: pip install matplotlib)"))
    if not all(r["ok"] for r in results):
        print("some engine failed or disagreed: see the output column", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
