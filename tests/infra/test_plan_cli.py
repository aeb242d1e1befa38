"""``compactor plan URL --cluster CLUSTER.yaml``: the nodes a round needs, on real small tables.

Runs the installed executable, like an operator before a round. Nothing it does commits.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from compactor import create_table
from compactor.cluster_sizing import GiB
from compactor.pipeline.plan import BATCH_ROWS, MIN_TASK_MEMORY
from tests.cli.conftest import Run, compactor
from tests.infra.deployment import CLUSTER_YAML

SCHEMA = pa.schema([("id", pa.int64()), ("v", pa.string()), ("lsn", pa.int64())])


def table_with(tmp_path: Path, files: int, rows: int = 2_000) -> str:
    """A local table with ``files`` upsert deltas of ``rows`` rows pending; returns its URL.
    Files of at most BATCH_ROWS rows share hash tasks; larger ones get one each."""
    url = f"file://{tmp_path}/orders"
    part = create_table(url, SCHEMA, primary_key=["id"], ordering_column="lsn",
                        bucket_count=8).partition()
    rng = np.random.default_rng(7)
    for k in range(files):
        ids = rng.integers(0, 5_000, rows)
        part.append(pa.table({"id": ids, "v": pa.array(ids).cast(pa.string()),
                              "lsn": np.arange(k * rows, (k + 1) * rows)}, schema=SCHEMA))
    return url


def small_cluster(tmp_path: Path, *, cpus: int = 2, memory: int = GiB // 2,
                  max_workers: int = 3) -> Path:
    path = tmp_path / "small.yaml"
    path.write_text(json.dumps({  # JSON is YAML
        "cluster_name": "small", "max_workers": max_workers, "idle_timeout_minutes": 6,
        "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0, "memory": 0},
                     "node_config": {"InstanceType": "m6i.large"}},
            "small": {"resources": {"CPU": cpus, "memory": memory},
                      "node_config": {"InstanceType": "r6i.large",
                                      "InstanceMarketOptions": {"MarketType": "spot"}}},
        }}))
    return path


def one_line_error(run: Run) -> str:
    assert run.code == 1, run
    (line,) = run.err.strip().splitlines()
    assert line.startswith("error: "), run
    return line


def version(url: str) -> int:
    from compactor import open_table

    return open_table(url).partition().version()


def test_a_small_round_fits_the_node_that_is_always_up(tmp_path: Path) -> None:
    url = table_with(tmp_path, files=3)
    before = version(url)
    run = compactor("plan", url, "--cluster", CLUSTER_YAML, "--json")
    assert run.code == 0, run
    plan: dict[str, Any] = run.json()
    assert plan["worker_nodes"] == {"worker-on-demand": 1}
    assert (plan["nodes"], plan["nodes_added"], plan["cpus"]) == (1, 0, 8)
    assert plan["dedupe_actors"] == 8  # the CPUs of the idle cluster, as a round would see
    # three small files share one hash task
    assert (plan["deltas"], plan["hash_tasks"], plan["rows_in"]) == (3, 1, 6_000)
    assert plan["steps"]["hash_bucket"] == {"tasks": 1, "memory": MIN_TASK_MEMORY,
                                            "waves": 1, "nodes": {"worker-on-demand": 1}}
    assert plan["instance_hours_per_round_hour"] == 1
    assert plan["instance_hours_after_round"] == 0
    assert version(url) == before  # planning commits nothing

    text = compactor("plan", url, "--cluster", CLUSTER_YAML)
    assert text.code == 0, text
    assert "worker-on-demand" in text.out and "r6i.2xlarge" in text.out
    assert "1 instance-hours per hour the round runs" in text.out


def test_a_round_wider_than_a_node_asks_for_several_and_waves_past_the_max(
        tmp_path: Path) -> None:
    url = table_with(tmp_path, files=6, rows=BATCH_ROWS + 1)  # six tasks of 64 MiB, 1 CPU each
    plan = compactor("plan", url, "--cluster", small_cluster(tmp_path), "--json").json()
    # no CPU is up before the round: one dedupe actor; two tasks per 2-CPU node
    assert plan["dedupe_actors"] == 1
    assert plan["worker_nodes"] == {"small": 3} and plan["nodes_added"] == 3
    assert plan["steps"]["hash_bucket"]["waves"] == 1
    assert plan["instance_hours_after_round"] == pytest.approx(3 * 6 / 60)

    capped = compactor("plan", url, "--cluster", small_cluster(tmp_path, max_workers=2),
                       "--json").json()
    assert capped["worker_nodes"] == {"small": 2}
    assert capped["steps"]["hash_bucket"]["waves"] == 2


def test_a_task_no_node_type_can_hold_is_an_error_before_anything_starts(
        tmp_path: Path) -> None:
    url = table_with(tmp_path, files=2)
    before = version(url)
    tiny = small_cluster(tmp_path, memory=MIN_TASK_MEMORY // 2)
    line = one_line_error(compactor("plan", url, "--cluster", tiny))
    # the largest request is named: a materialize task reading both small deltas' files ahead
    assert "error: materialize task reading 2 small files ahead asks for " in line
    assert line.endswith("the largest is small (r6i.large, 2 CPU, 32 MiB memory)")
    run = compactor("plan", url, "--cluster", tiny, "--json")
    assert run.code == 1 and run.json()["error_type"] == "RequestTooLarge"
    assert run.json()["exit_code"] == 1
    assert version(url) == before


def test_nothing_pending_needs_no_node(tmp_path: Path) -> None:
    url = table_with(tmp_path, files=1)
    assert compactor("compact", url).code == 0
    run = compactor("plan", url, "--cluster", CLUSTER_YAML, "--json")
    assert run.code == 0, run
    assert run.json()["nothing_to_do"] and run.json()["worker_nodes"] == {}


def test_a_cluster_config_compactor_cannot_size_is_a_one_line_error(tmp_path: Path) -> None:
    url = table_with(tmp_path, files=1)
    unknown = tmp_path / "unknown.yaml"
    unknown.write_text("max_workers: 2\nhead_node_type: head\navailable_node_types:\n"
                       "  head: {resources: {}, node_config: {InstanceType: m6i.large}}\n"
                       "  w: {resources: {}, node_config: {InstanceType: q9.mega}}\n")
    assert "node type w: instance type 'q9.mega'" in one_line_error(
        compactor("plan", url, "--cluster", unknown))
    broken = tmp_path / "broken.yaml"
    broken.write_text("available_node_types: [\n")
    assert f"cluster config {broken}" in one_line_error(
        compactor("plan", url, "--cluster", broken))


def test_the_cluster_config_is_required_and_must_exist(tmp_path: Path) -> None:
    url = table_with(tmp_path, files=1)
    assert compactor("plan", url).code == 2
    assert compactor("plan", url, "--cluster", tmp_path / "nope.yaml").code == 2
