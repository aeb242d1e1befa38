"""Scheduled rounds on the Ray backend: ``jobs once`` with ``backend: ray`` starts its own local
Ray instance (no address) and compacts there."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from compactor.reader import read_partition
from jobs.history import SUCCEEDED
from tests.jobs.conftest import compactions, jobs_cli, make_table, write_config

DAYS = ["2024-05-01", "2024-05-02"]


@pytest.mark.slow
def test_rounds_run_on_ray(tmp_path: Path) -> None:
    table = make_table(f"file://{tmp_path}/t", DAYS)
    path = write_config(table.url, tmp_path, job="backend: ray")
    done = jobs_cli("once", path, "--json", timeout=240)
    assert done.code == 0, done
    runs = json.loads(done.out)["runs"]
    assert sorted((r["partition"], r["outcome"]) for r in runs) == \
        [(f"day={d}", SUCCEEDED) for d in DAYS]
    assert "starting the ray runtime" in done.err
    for d in DAYS:
        part = table.partition({"day": d})
        assert compactions(part) == 1 and read_partition(table, part).num_rows == 200
