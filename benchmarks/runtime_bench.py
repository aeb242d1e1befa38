"""Runtime micro-benchmarks: the embedded backend beside Ray, measured in the same run.

    python benchmarks/runtime_bench.py [--quick] [--json out.json]

Rows: init (start + first task round trip), task round trip (sync), tasks/s (2,000 submitted,
then gathered), actor call (sync), put and get of a 100 MB Arrow table. Columns: compactor's
``local`` backend, compactor's ``ray`` backend, and plain Ray (the peer), each measured in its
own fresh process so start-up is counted honestly. Figures are medians of repeats.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

ROWS = [
    ("init_s", "init + first task", "s"),
    ("task_rt_ms", "task round trip", "ms"),
    ("tasks_per_s", "tasks/s (batch)", "/s"),
    ("actor_ms", "actor call", "ms"),
    ("put_100mb_ms", "put 100 MB Arrow", "ms"),
    ("get_100mb_ms", "get 100 MB Arrow", "ms"),
]
HIGHER_IS_BETTER = {"tasks_per_s"}


def _median_ms(fn: Callable[[], Any], n: int) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def _table_100mb() -> Any:
    import numpy as np
    import pyarrow as pa

    n = 100 * 1024 * 1024 // 16
    return pa.table({"a": np.arange(n, dtype=np.int64), "b": np.ones(n)})


def measure(which: str, quick: bool) -> dict[str, float]:
    """Run in a fresh process: which is 'local', 'ray-backend' or 'ray'."""
    reps = 50 if quick else 500
    batch = 200 if quick else 2000
    table = _table_100mb()
    if which == "ray":
        import ray

        t0 = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        remote, get, put, shutdown = ray.remote, ray.get, ray.put, ray.shutdown
    else:
        import runtime

        t0 = time.perf_counter()
        runtime.init("local" if which == "local" else "ray", num_cpus=2)
        remote, get, put, shutdown = runtime.remote, runtime.get, runtime.put, runtime.shutdown

    @remote
    def echo(x: Any) -> Any:
        return x

    @remote
    class Echo:
        def echo(self, x: Any) -> Any:
            return x

    try:
        get(echo.remote(0))
        out: dict[str, float] = {"init_s": time.perf_counter() - t0}
        out["task_rt_ms"] = _median_ms(lambda: get(echo.remote(1)), reps)
        t = time.perf_counter()
        get([echo.remote(i) for i in range(batch)])
        out["tasks_per_s"] = batch / (time.perf_counter() - t)
        actor = Echo.remote()
        get(actor.echo.remote(0))
        out["actor_ms"] = _median_ms(lambda: get(actor.echo.remote(1)), reps)
        refs: list[Any] = []
        out["put_100mb_ms"] = _median_ms(lambda: refs.append(put(table)), 3 if quick else 5)
        out["get_100mb_ms"] = _median_ms(lambda: get(refs[-1]), 3 if quick else 5)
        return out
    finally:
        shutdown()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer repeats (CI smoke test)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.quick)))
        return
    columns = ["local"]
    if importlib.util.find_spec("ray") is not None:
        columns += ["ray-backend", "ray"]
    results: dict[str, dict[str, float]] = {}
    for col in columns:
        cmd = [sys.executable, __file__, "--one", col] + (["--quick"] if args.quick else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            print(f"{col}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
            sys.exit(1)
        results[col] = json.loads(proc.stdout.strip().splitlines()[-1])
    header = f"{'':22}" + "".join(f"{c:>14}" for c in columns)
    if "ray" in results:
        header += f"{'local vs ray':>14}"
    print(header)
    for key, label, unit in ROWS:
        line = f"{label + ' (' + unit + ')':22}"
        for c in columns:
            v = results[c][key]
            line += f"{v:>14.3f}" if v < 100 else f"{v:>14.0f}"
        if "ray" in results:
            local, ray = results["local"][key], results["ray"][key]
            speedup = local / ray if key in HIGHER_IS_BETTER else ray / local
            line += f"{speedup:>13.1f}x"
        print(line)
    if "ray" in results:
        print("(last column: how many times faster the local backend is than plain Ray)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
