"""An engine's time counts only when its output is the reference's current state."""

from __future__ import annotations

from pathlib import Path
from types import ModuleType
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest


@pytest.fixture(scope="module")
def runner(bench_modules: None) -> ModuleType:
    import runner

    return runner


def _state(n: int = 1_000) -> pa.Table:
    return pa.table({"id": pa.array(range(n), pa.int64()), "lsn": pa.array(range(n), pa.int64()),
                     "v": pa.array([f"v{i}" for i in range(n)])})


def _sum(paths: list[Path], schema: pa.Schema) -> dict[str, int]:
    from measure import checksum

    return checksum([str(p) for p in paths], schema, ["id"], "lsn")


def test_checksum_ignores_row_order_file_split_and_column_widths(
        bench_modules: None, tmp_path: Path) -> None:
    table = _state()
    pq.write_table(table, tmp_path / "one.parquet")
    shuffled = table.take(pa.array(range(999, -1, -1)))
    pq.write_table(shuffled.slice(0, 400), tmp_path / "a.parquet")
    narrow = shuffled.slice(400).cast(pa.schema([("id", pa.int32()), ("lsn", pa.int64()),
                                                 ("v", pa.large_string())]))
    pq.write_table(narrow, tmp_path / "b.parquet")
    assert (_sum([tmp_path / "one.parquet"], table.schema)
            == _sum([tmp_path / "a.parquet", tmp_path / "b.parquet"], table.schema))


def test_checksum_sees_a_wrong_version_a_changed_value_and_a_duplicate(
        bench_modules: None, tmp_path: Path) -> None:
    table = _state()
    pq.write_table(table, tmp_path / "good.parquet")
    good = _sum([tmp_path / "good.parquet"], table.schema)
    older = table.set_column(1, "lsn", pc.if_else(pc.equal(table["id"], 7), -1, table["lsn"]))
    changed = table.set_column(2, "v", pc.if_else(pc.equal(table["id"], 7), "x", table["v"]))
    for name, bad in (("older", older), ("changed", changed)):
        pq.write_table(bad, tmp_path / f"{name}.parquet")
    assert _sum([tmp_path / "older.parquet"], table.schema)["versions"] != good["versions"]
    got = _sum([tmp_path / "changed.parquet"], table.schema)
    assert got["versions"] == good["versions"] and got["content"] != good["content"]
    pq.write_table(table.slice(0, 1), tmp_path / "dup.parquet")
    dup = _sum([tmp_path / "good.parquet", tmp_path / "dup.parquet"], table.schema)
    assert dup["rows"] == dup["keys"] + 1


def _runs(checksum: dict[str, int], seconds: float = 1.0) -> list[dict[str, Any]]:
    return [{"full": {"seconds": seconds, "peak_bytes": 10, "checksum": checksum},
             "incremental": {"seconds": seconds / 10, "peak_bytes": 10, "checksum": checksum}}]


def test_a_disagreeing_or_failed_engine_gets_no_time(
        runner: ModuleType, tmp_path: Path) -> None:
    from cdc_data import DataSpec, generate

    ds = generate(tmp_path, DataSpec(base_rows=100, deltas=1, delta_rows=10, incremental_rows=10))
    right = {"rows": 5, "keys": 5, "versions": 1, "content": 2}
    reference = _runs(right)
    agrees = runner.summarize("compactor", _runs(right, 2.0), reference, ds)
    assert agrees["full"]["status"] == "agrees" and agrees["full"]["median_seconds"] == 2.0
    wrong = runner.summarize("compactor", _runs({**right, "content": 3}), reference, ds)
    assert wrong["full"]["status"] == "mismatch" and wrong["full"]["median_seconds"] is None
    dup = runner.summarize("polars", _runs({**right, "rows": 6}), reference, ds)
    assert dup["full"]["status"] == "duplicate keys"
    failed = runner.summarize("compactor", [{"error": "exit code 1", "stderr": "boom"}],
                              reference, ds)
    assert failed["full"]["status"] == "failed" and failed["incremental"]["error"] == "exit code 1"
    floor = runner.summarize("floor", _runs({"rows": ds.input_rows}), reference, ds)
    assert set(floor) == {"full"} and floor["full"]["status"] == "counted"
