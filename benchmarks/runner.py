"""Runs every engine on one dataset, each run in a fresh process, and checks their outputs agree.

    runner (this process)                    worker process, one per engine run
    ---------------------                    ----------------------------------
    Job(engine, dataset, out dir) --argv-->  engines.run_job: untimed set-up, the timed round(s),
                                             checksums of the output (untimed)
    summary per engine and round  <-stdout-  "BENCH-RESULT {json}" (the last such line)

A fresh process per run keeps an engine's peak memory its own and its caches cold. Repeats go
round-robin over the engines, so a load change on the machine falls on all of them alike. An
engine's time counts only if every repeat ran and produced the reference engine's checksum.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cdc_data import Dataset
from engines import ENGINES, REFERENCE, Job, Round, run_job

RESULT_MARK = "BENCH-RESULT "
ROUNDS = ("full", "incremental")


@dataclass(frozen=True)
class Settings:
    """How every engine is run (the same for all)."""

    cores: int
    repeat: int
    target_file_size: int
    buckets: int
    timeout: float  # seconds per engine run
    compression: str = "snappy"  # compactor's codec


def worker_main(job_json: str) -> None:
    """The worker side: run one job, print its result for the runner."""
    result = run_job(Job.from_dict(json.loads(job_json)))
    print(RESULT_MARK + json.dumps(result), flush=True)


def _run_worker(script: str, job: Job, settings: Settings) -> dict[str, Any]:
    env = {**os.environ, "POLARS_MAX_THREADS": str(settings.cores)}
    env.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        proc = subprocess.run(
            [sys.executable, script, "--worker", json.dumps(job.to_dict())],
            capture_output=True, text=True, check=False, env=env, timeout=settings.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"no result within {settings.timeout:.0f} s (--timeout)"}
    results = [ln for ln in proc.stdout.splitlines() if ln.startswith(RESULT_MARK)]
    if proc.returncode or not results:
        tail = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()][-12:]
        return {"error": f"exit code {proc.returncode}", "stderr": "\n".join(tail)}
    return dict(json.loads(results[-1][len(RESULT_MARK):]))


def compare(script: str, dataset: Dataset, engines: Sequence[str], settings: Settings,
            work_dir: Path, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run ``engines`` (the reference first) ``settings.repeat`` times each; the summary."""
    names = [REFERENCE, *(e for e in engines if e != REFERENCE)]
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    out = work_dir / "run"
    loads = [os.getloadavg()[0]]  # the machine may be shared: say how busy it was
    for i in range(settings.repeat):
        for name in names:
            shutil.rmtree(out, ignore_errors=True)
            job = Job(name, dataset, str(out), settings.cores, settings.target_file_size,
                      settings.buckets, settings.compression)
            start = time.perf_counter()
            result = _run_worker(script, job, settings)
            shutil.rmtree(out, ignore_errors=True)
            runs[name].append(result)
            loads.append(os.getloadavg()[0])
            took = ", ".join(f"{r} {v['seconds']:.2f} s" for r, v in result.items()
                             if isinstance(v, dict) and "seconds" in v)
            log(f"  run {i + 1}/{settings.repeat} {name:14} "
                f"{took or result.get('error', '?')}"
                f"  ({time.perf_counter() - start:.1f} s with start-up and checks)")
    engines_out = {name: summarize(name, runs[name], runs[REFERENCE], dataset)
                   for name in names}
    return {
        "dataset": dataset.to_dict(),
        "settings": asdict(settings),
        "engines": engines_out,
        "loadavg_1m": {"min": min(loads), "max": max(loads)},
        "ok": all(r["status"] in ("agrees", "reference", "counted")
                  for rounds in engines_out.values() for r in rounds.values()),
    }


def _reference(reference_runs: list[dict[str, Any]], round_name: str) -> dict | None:
    first = reference_runs[0].get(round_name) if reference_runs else None
    return first.get("checksum") if first else None


def summarize(name: str, runs: list[dict[str, Any]], reference_runs: list[dict[str, Any]],
               dataset: Dataset) -> dict[str, dict[str, Any]]:
    engine = ENGINES[name]
    out: dict[str, dict[str, Any]] = {}
    for round_name in ROUNDS:
        if round_name not in engine.labels:
            continue
        rounds: list[Round] = [r[round_name] for r in runs if round_name in r]
        summary: dict[str, Any] = {"label": engine.labels[round_name], "runs": rounds,
                                   "median_seconds": None, "peak_bytes": None}
        failed = [r for r in runs if "error" in r]
        if failed:
            summary.update(status="failed", error=failed[0]["error"],
                           stderr=failed[0].get("stderr", ""))
        else:
            summary["status"] = _status(name, round_name, rounds, reference_runs, dataset)
        if summary["status"] in ("agrees", "reference", "counted"):
            summary["median_seconds"] = statistics.median(r["seconds"] for r in rounds)
            summary["peak_bytes"] = max(r["peak_bytes"] for r in rounds)
        out[round_name] = summary
    return out


def _status(name: str, round_name: str, rounds: list[Round],
            reference_runs: list[dict[str, Any]], dataset: Dataset) -> str:
    sums = [r["checksum"] for r in rounds]
    if name == "floor":  # no merge: its output holds every input row
        return "counted" if all(s["rows"] == dataset.input_rows for s in sums) else "mismatch"
    if any(s["rows"] != s["keys"] for s in sums):
        return "duplicate keys"
    reference = _reference(reference_runs, round_name)
    if reference is None:
        return "unchecked (reference failed)"
    if any(s != reference for s in sums):
        return "mismatch"
    return "reference" if name == REFERENCE else "agrees"
