"""The benchmarks run end to end on tiny data, so they never rot (CI runs them on every change).

Each is started the way a person starts it, as a script in a fresh process; the comparison runs
every engine installed here and must find all outputs in agreement.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.benchmarks.conftest import BENCHMARKS

pytestmark = pytest.mark.slow
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TINY = ["--base-rows", "20K", "--deltas", "2", "--delta-rows", "2K", "--repeat", "1"]


def _run(script: str, *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, str(BENCHMARKS / script), *args],
                          capture_output=True, text=True, timeout=timeout, check=False)
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr}"
    return proc


def test_every_installed_engine_compacts_the_same_partition_to_the_same_state(
        tmp_path: Path, bench_modules: None) -> None:
    from engines import ENGINES

    proc = _run("compaction_bench.py", *TINY, "--dir", str(tmp_path))
    doc = json.loads((tmp_path / "results.json").read_text())
    assert doc["ok"] and doc["mode"] == "compare"
    engines = doc["results"][0]["engines"]
    assert set(engines) == {name for name, e in ENGINES.items() if e.installed()}
    for name, rounds in engines.items():
        for round_name, r in rounds.items():
            expected = {"floor": "counted", "duckdb": "reference"}.get(name, "agrees")
            assert r["status"] == expected, (name, round_name, r)
            assert r["median_seconds"] > 0 and r["peak_bytes"] > 0
    assert set(engines["compactor"]) == {"full", "incremental"}
    assert (tmp_path / "results.png").read_bytes().startswith(PNG_MAGIC)
    assert "full round:" in proc.stdout and "incremental round:" in proc.stdout


def test_scaling_mode_with_composite_keys_wide_rows_and_zipf_updates(tmp_path: Path) -> None:
    _run("compaction_bench.py", "--scale", "10K,20K", "--deltas", "2", "--delta-rows", "1K",
         "--repeat", "1", "--engines", "compactor", "--key", "composite", "--width", "wide",
         "--locality", "zipf", "--dir", str(tmp_path), "--json", str(tmp_path / "s.json"),
         "--png", str(tmp_path / "s.png"))
    doc = json.loads((tmp_path / "s.json").read_text())
    assert doc["ok"] and doc["mode"] == "scale"
    assert [r["dataset"]["spec"]["base_rows"] for r in doc["results"]] == [10_000, 20_000]
    for result in doc["results"]:
        assert set(result["engines"]) == {"duckdb", "compactor"}
        assert result["engines"]["compactor"]["full"]["status"] == "agrees"
    assert (tmp_path / "s.png").read_bytes().startswith(PNG_MAGIC)


def test_runtime_bench_quick() -> None:
    proc = _run("runtime_bench.py", "--quick")
    header = proc.stdout.splitlines()[0].split()
    assert header[0] == "local"
    if importlib.util.find_spec("ray") is not None:
        assert header[1:3] == ["ray-backend", "ray"]
    assert "task round trip" in proc.stdout
