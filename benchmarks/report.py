"""Tables on stdout, a JSON document and a PNG chart of a comparison (or of a scaling series).

Columns: median wall time of the timed round over the repeats; peak memory (private resident
memory of the engine's process tree plus the shared memory it created, the largest over the
repeats; see measure.PeakMemory); ratios to DuckDB and the I/O floor (full round) or
to compactor's full round and delta-rs MERGE (incremental round); MiB/s per core: the round's new
input decoded as Arrow (full: base + deltas; incremental: the one delta) per second per core.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

GB = 1e9
MiB = 1 << 20
_COUNTED = ("agrees", "reference", "counted")


def _rows(n: int) -> str:
    for unit, size in (("G", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= size and n % (size // 10) == 0:
            return f"{n / size:g}{unit}"
    return f"{n:,}"


def describe(result: dict[str, Any]) -> str:
    ds, spec = result["dataset"], result["dataset"]["spec"]
    return (f"{spec['base_rows']:,} base rows + {spec['deltas']} x {spec['delta_rows']:,} "
            f"({spec['key']} key, {spec['width']} rows, {spec['locality']} updates, "
            f"{spec['delete_fraction']:.0%} deletes, {spec['new_key_fraction']:.0%} new keys): "
            f"{ds['parquet_bytes'] / 1e6:,.0f} MB Parquet, {ds['arrow_bytes'] / MiB:,.0f} MiB "
            f"as Arrow; {result['settings']['cores']} cores, median of "
            f"{result['settings']['repeat']}; load average up to {result['loadavg_1m']['max']:.1f}")


def _ratio(a: float | None, b: float | None) -> str:
    return f"{a / b:.2f}x" if a is not None and b else "-"


def _seconds(engines: dict[str, Any], name: str, round_name: str) -> float | None:
    return engines.get(name, {}).get(round_name, {}).get("median_seconds")


def _table(result: dict[str, Any], round_name: str, against: Sequence[tuple[str, str, str]],
           data_bytes: int) -> list[str]:
    engines, cores = result["engines"], result["settings"]["cores"]
    head = (f"{'engine':32}{'time (s)':>10}{'peak mem (GB)':>15}"
            + "".join(f"{title:>{max(len(title) + 2, 11)}}" for _, _, title in against)
            + f"{'MiB/s/core':>12}  output")
    lines = [head]
    for rounds in engines.values():
        r = rounds.get(round_name)
        if r is None:
            continue
        t, peak = r["median_seconds"], r["peak_bytes"]
        line = f"{r['label']:32}"
        line += f"{t:>10.2f}{peak / GB:>15.2f}" if t is not None else f"{'-':>10}{'-':>15}"
        for name, other_round, title in against:
            line += f"{_ratio(t, _seconds(engines, name, other_round)):>{max(len(title) + 2, 11)}}"
        rate = f"{data_bytes / MiB / t / cores:.1f}" if t else "-"
        status = r["status"] + (f": {r['error']}" if "error" in r else "")
        lines.append(line + f"{rate:>12}  {status}")
    return lines


def _median_run(summary: dict[str, Any]) -> dict[str, Any]:
    runs = summary["runs"]
    return sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]


def print_comparison(result: dict[str, Any], machine: dict[str, Any]) -> None:
    ds, spec, engines = result["dataset"], result["dataset"]["spec"], result["engines"]
    print(f"\nfull round: {describe(result)}")
    print("\n".join(_table(result, "full", [("duckdb", "full", "vs DuckDB"),
                                           ("floor", "full", "vs floor")], ds["arrow_bytes"])))
    if any("incremental" in r for r in engines.values()):
        print(f"\nincremental round: one more delta of {spec['incremental_rows']:,} rows "
              f"({spec['incremental_locality']} updates"
              + (f", newest {spec['hot_fraction']:.0%} of keys"
                 if spec["incremental_locality"] == "hot" else "") + ")")
        print("\n".join(_table(result, "incremental",
                               [("compactor", "full", "vs compactor full"),
                                ("delta-rs", "incremental", "vs delta-rs")],
                               ds["incremental_arrow_bytes"])))
    for name in ("compactor", "compactor-ray"):
        for round_name, summary in engines.get(name, {}).items():
            if not summary["runs"] or summary["status"] not in _COUNTED:
                continue
            run = _median_run(summary)
            steps = ", ".join(f"{k} {v:.2f}" for k, v in run["steps"].items())
            extra = (f"; init {run['init_seconds']:.1f} s, register {run['register_seconds']:.1f}"
                     " s (untimed)" if round_name == "full" else "")
            print(f"{name} {round_name} steps (s): {steps}; wrote {run['bytes_written'] / 1e6:.0f}"
                  f" MB, referenced {run['bytes_referenced'] / 1e6:.0f} MB in place{extra}")
    for rounds in engines.values():
        for r in rounds.values():
            if r.get("stderr"):
                print(f"\n{r['label']} failed ({r['error']}):\n{r['stderr']}")
    load, cpus = result["loadavg_1m"], machine["cpu_count"]
    if load["max"] > 0.5 * cpus:
        print(f"\nnote: the machine was busy (1-minute load average {load['min']:.1f} to "
              f"{load['max']:.1f} on {cpus} CPUs during the runs): figures are noisy")


def scaling_rows(results: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per engine and size: full-round time per input row and peak memory (counted runs only)."""
    rows = []
    for result in results:
        ds = result["dataset"]
        for name, rounds in result["engines"].items():
            full = rounds.get("full")
            if full is None or full["median_seconds"] is None:
                continue
            inc = rounds.get("incremental", {}).get("median_seconds")
            rows.append({"engine": name, "label": full["label"],
                         "base_rows": ds["spec"]["base_rows"], "input_rows": ds["input_rows"],
                         "seconds": full["median_seconds"],
                         "ns_per_row": full["median_seconds"] / ds["input_rows"] * 1e9,
                         "peak_bytes": full["peak_bytes"], "incremental_seconds": inc})
    return rows


def print_scaling(results: Sequence[dict[str, Any]]) -> None:
    rows = scaling_rows(results)
    print("\nscaling (full round: time per input row, peak memory; incremental round time)")
    print(f"{'engine':32}{'base rows':>10}{'time (s)':>10}{'ns/row':>9}{'vs smallest':>13}"
          f"{'peak mem (GB)':>15}{'incremental (s)':>17}")
    for name in dict.fromkeys(r["engine"] for r in rows):
        mine = sorted((r for r in rows if r["engine"] == name), key=lambda r: r["base_rows"])
        for r in mine:
            inc = r["incremental_seconds"]
            print(f"{r['label']:32}{_rows(r['base_rows']):>10}{r['seconds']:>10.2f}"
                  f"{r['ns_per_row']:>9.0f}{r['ns_per_row'] / mine[0]['ns_per_row']:>12.2f}x"
                  f"{r['peak_bytes'] / GB:>15.2f}" + (f"{inc:>17.2f}" if inc else f"{'-':>17}"))


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.write_text(json.dumps(document, indent=1, default=str))


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def chart_comparison(result: dict[str, Any], path: Path) -> bool:
    """Bars: full-round time, its peak memory, incremental-round time. False: no matplotlib."""
    plt = _pyplot()
    if plt is None:
        return False
    panels = [("full", "median_seconds", 1, "full round: wall time (s)"),
              ("full", "peak_bytes", GB, "full round: peak memory (GB)"),
              ("incremental", "median_seconds", 1, "incremental round: wall time (s)")]
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    for ax, (round_name, field, scale, title) in zip(axes, panels, strict=True):
        bars = [(r[round_name]["label"], r[round_name][field] / scale)
                for r in result["engines"].values()
                if round_name in r and r[round_name][field] is not None]
        labels, values = [b[0] for b in bars], [b[1] for b in bars]
        ax.barh(labels, values, color=["#d62728" if "compactor" in lb else "#1f77b4"
                                       for lb in labels])
        ax.invert_yaxis()
        ax.set_title(title, fontsize=10)
        for y, v in enumerate(values):
            ax.text(v, y, f" {v:.2f}", va="center", fontsize=8)
        ax.margins(x=0.2)
    fig.suptitle(describe(result), fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def chart_scaling(results: Sequence[dict[str, Any]], path: Path) -> bool:
    """Lines per engine: full-round ns per input row and peak memory against base rows."""
    plt = _pyplot()
    if plt is None:
        return False
    rows = scaling_rows(results)
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.8))
    for name in dict.fromkeys(r["engine"] for r in rows):
        mine = sorted((r for r in rows if r["engine"] == name), key=lambda r: r["base_rows"])
        xs = [r["base_rows"] for r in mine]
        left.plot(xs, [r["ns_per_row"] for r in mine], marker="o", label=mine[0]["label"])
        right.plot(xs, [r["peak_bytes"] / GB for r in mine], marker="o", label=mine[0]["label"])
    sizes = sorted({r["base_rows"] for r in rows})
    for ax, title in ((left, "full round: ns per input row"),
                      (right, "full round: peak memory (GB)")):
        ax.set_xscale("log")
        ax.set_xticks(sizes, [_rows(n) for n in sizes])
        ax.minorticks_off()
        ax.set_xlabel("base rows")
        ax.set_title(title, fontsize=10)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
    left.legend(fontsize=8)
    names = ", ".join(_rows(r["dataset"]["spec"]["base_rows"]) for r in results)
    fig.suptitle(f"scaling over {names} base rows; median of "
                 f"{statistics.median(r['settings']['repeat'] for r in results):g}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
