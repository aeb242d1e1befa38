"""``compactor compact --backend ray``: the executable starts its own local Ray instance."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.cli.conftest import SCHEMA, compactor, replay, upserts, write_parquet


@pytest.mark.slow
def test_compact_on_the_ray_backend(table_url: str, tmp_path: Path) -> None:
    compactor("table", "create", table_url, "-k", "id", "--order-by", "lsn", "--buckets", "2",
              "--schema", SCHEMA)
    base = upserts(list(range(500)), "base", 0)
    deletes = {"id": [1, 2], "lsn": [1000, 1001]}
    compactor("append", table_url, "--kind", "upsert",
              write_parquet(tmp_path / "base.parquet", base))
    compactor("append", table_url, "--kind", "delete",
              write_parquet(tmp_path / "deletes.parquet", deletes))

    run = compactor("compact", table_url, "--backend", "ray", "--json", timeout=240)
    assert run.code == 0, run
    result = run.json()  # stdout is the JSON document alone, whatever Ray logs
    assert result["committed"] and result["rows_out"] == len(replay([("upsert", base),
                                                                     ("delete", deletes)]))
    assert "starting the ray runtime" in run.err
    assert compactor("verify", table_url).code == 0
