"""compactor.cluster_sizing: node types from a cluster config, and a round's requests packed
onto them (which nodes, how many, in how many waves; or why the round cannot run)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from compactor import create_table
from compactor.cluster_sizing import (
    ClusterConfigError,
    ClusterSpec,
    ClusterTooSmall,
    GiB,
    Request,
    RequestTooLarge,
    parse_cluster,
    round_requests,
    size_round,
)
from compactor.pipeline.materialize import SourceRows, task_memory
from compactor.pipeline.plan import plan_round


def config(max_workers: int = 10, **types: dict[str, Any]) -> dict[str, Any]:
    return {"cluster_name": "c", "max_workers": max_workers, "head_node_type": "head",
            "available_node_types": {
                "head": {"resources": {"CPU": 0, "memory": 0},
                         "node_config": {"InstanceType": "m6i.large"}},
                **types}}


def node(cpus: int = 4, memory_gib: int = 16, *, spot: bool = False, min_workers: int = 0,
         max_workers: int = 10) -> dict[str, Any]:
    node_config: dict[str, Any] = {"InstanceType": "custom"}
    if spot:
        node_config["InstanceMarketOptions"] = {"MarketType": "spot"}
    return {"resources": {"CPU": cpus, "memory": memory_gib * GiB}, "node_config": node_config,
            "min_workers": min_workers, "max_workers": max_workers}


def cluster(max_workers: int = 10, **types: dict[str, Any]) -> ClusterSpec:
    return parse_cluster(config(max_workers, **types), "test.yaml")


def tasks(n: int, memory_gib: float) -> list[Request]:
    return [Request(f"task {i}", int(memory_gib * GiB)) for i in range(n)]


def actors(n: int, memory_gib: float) -> list[Request]:
    return [Request(f"actor {i}", int(memory_gib * GiB), cpus=0) for i in range(n)]


# -- node types ------------------------------------------------------------------------------------
def test_a_known_instance_type_gives_ray_autoscaler_sizes() -> None:
    c = cluster(w={"resources": {}, "node_config": {"InstanceType": "r6i.4xlarge"}})
    (w,) = c.workers
    assert (w.cpus, w.ram, w.memory) == (16, 128 * GiB, int(0.7 * 128 * GiB))
    assert w.max_workers == 10 and w.min_workers == 0 and not w.spot  # Ray's defaults


def test_resources_in_the_config_win_over_the_table() -> None:
    c = cluster(w={"resources": {"CPU": 6}, "node_config": {"InstanceType": "r5.2xlarge"}})
    assert (c.workers[0].cpus, c.workers[0].memory) == (6, int(0.7 * 64 * GiB))
    c = cluster(w=node(cpus=2, memory_gib=3))
    assert (c.workers[0].cpus, c.workers[0].memory, c.workers[0].ram) == (2, 3 * GiB, None)


@pytest.mark.parametrize(("broken", "message"), [
    (config(w={"resources": {}, "node_config": {"InstanceType": "z9.huge"}}),
     "node type w: instance type 'z9.huge' is not in compactor's table"),
    ({**config(w=node()), "head_node_type": "boss"}, "head_node_type 'boss' is not one of"),
    (config(), "no worker node type"),
    ({"cluster_name": "c"}, "no available_node_types"),
])
def test_a_config_compactor_cannot_size_is_an_error(broken: dict[str, Any],
                                                    message: str) -> None:
    with pytest.raises(ClusterConfigError, match=message):
        parse_cluster(broken, "test.yaml")


# -- packing ---------------------------------------------------------------------------------------
def test_tasks_are_packed_by_cpu_and_by_memory() -> None:
    c = cluster(w=node(cpus=4, memory_gib=16))
    assert size_round(c, actors=[], steps={"s": tasks(8, 1)}).nodes == {"w": 2}  # CPUs
    assert size_round(c, actors=[], steps={"s": tasks(8, 6)}).nodes == {"w": 4}  # memory


def test_nodes_always_up_come_first_then_spot_then_on_demand() -> None:
    c = cluster(od=node(min_workers=1), spot=node(spot=True))
    assert size_round(c, actors=[], steps={"s": tasks(12, 1)}).nodes == {"od": 1, "spot": 2}
    assert size_round(c, actors=[], steps={"s": tasks(1, 1)}).nodes == {"od": 1}


def test_a_type_at_its_max_spills_over_to_the_next() -> None:
    c = cluster(od=node(), spot=node(spot=True, max_workers=1))
    assert size_round(c, actors=[], steps={"s": tasks(12, 1)}).nodes == {"od": 2, "spot": 1}


def test_a_big_task_gets_a_type_that_fits_it() -> None:
    c = cluster(small=node(cpus=4, memory_gib=8, spot=True), big=node(cpus=8, memory_gib=64))
    sizing = size_round(c, actors=[], steps={"s": [*tasks(1, 20), *tasks(2, 1)]})
    assert sizing.nodes == {"big": 1}  # the small tasks fit beside it
    assert sizing.largest.memory == 20 * GiB


def test_beyond_max_workers_tasks_wait_for_later_waves() -> None:
    c = cluster(2, w=node(cpus=4))
    (step,) = size_round(c, actors=[], steps={"s": tasks(20, 1)}).steps
    assert (step.nodes, step.waves, step.tasks, step.memory) == ({"w": 2}, 3, 20, 20 * GiB)


def test_actors_hold_their_memory_for_the_whole_round() -> None:
    c = cluster(w=node(cpus=4, memory_gib=16))
    # 3 actors of 10 GiB take three nodes, each with room for one 6 GiB task beside its actor;
    # the other three tasks need two more nodes (two fit on a free one)
    sizing = size_round(c, actors=actors(3, 10), steps={"s": tasks(6, 6)})
    assert sizing.nodes == {"w": 5}
    assert (sizing.actors, sizing.actor_memory) == (3, 30 * GiB)


def test_the_busiest_step_sets_the_node_count() -> None:
    c = cluster(w=node(cpus=4))
    sizing = size_round(c, actors=[], steps={"hash": tasks(4, 1), "materialize": tasks(12, 1)})
    assert [sum(s.nodes.values()) for s in sizing.steps] == [1, 3]
    assert sizing.nodes == {"w": 3} and sizing.total_nodes == 3


def test_added_nodes_leave_out_those_always_up() -> None:
    c = cluster(od=node(min_workers=2), spot=node(spot=True))
    sizing = size_round(c, actors=[], steps={"s": tasks(20, 1)})
    assert sizing.nodes == {"od": 2, "spot": 3} and sizing.added_nodes(c) == 3


def test_a_request_no_node_type_holds_is_refused_by_name() -> None:
    c = cluster(a=node(cpus=4, memory_gib=16), b=node(cpus=8, memory_gib=32))
    with pytest.raises(RequestTooLarge, match=r"hash task of x\.parquet asks for 40\.0 GiB memory "
                                              r".* the largest is b \(custom, 8 CPU, 32\.0 GiB"):
        size_round(c, actors=[], steps={"s": [Request("hash task of x.parquet", 40 * GiB)]})
    with pytest.raises(RequestTooLarge, match="dedupe actor"):
        size_round(c, actors=[Request("dedupe actor 0", 33 * GiB, cpus=0)], steps={})


def test_actors_that_do_not_fit_the_largest_cluster_are_refused() -> None:
    c = cluster(2, w=node(cpus=4, memory_gib=16))
    with pytest.raises(ClusterTooSmall, match=r"3 dedupe actors ask for 45\.0 GiB together.*"
                                              r"max_workers=2"):
        size_round(c, actors=actors(3, 15), steps={"s": tasks(1, 1)})
    with pytest.raises(ClusterTooSmall, match=r"task 0 asks for 8\.0 GiB memory, but beside"):
        size_round(c, actors=actors(2, 10), steps={"s": tasks(1, 8)})


# -- a real round's requests -----------------------------------------------------------------------
def test_requests_are_the_ones_compaction_makes(tmp_path: Path) -> None:
    schema = pa.schema([("id", pa.int64()), ("v", pa.string())])
    table = create_table(f"file://{tmp_path}/t", schema, primary_key=["id"], bucket_count=4)
    part = table.partition()
    for k in range(3):
        part.append(pa.table({"id": np.arange(k * 1000, (k + 2) * 1000),
                              "v": [str(i) for i in range(2000)]}, schema=schema))
    plan = plan_round(table, part, target_file_size=1 << 20, bucket_count=None, rebase=False,
                      groups=3)
    dedupe, steps = round_requests(plan)
    assert [(a.memory, a.cpus) for a in dedupe] == [(plan.dedupe_memory, 0)] * 3
    assert [r.memory for r in steps["hash_bucket"]] == [t.memory for t in plan.tasks]
    assert all(r.cpus == 1 for r in steps["hash_bucket"])
    (largest,) = steps["materialize"]
    # three small delta files: a task reading them all holds them read ahead, the largest
    none = np.empty(0, dtype=np.int64)
    together = [SourceRows(o, f, dict.fromkeys(range(4), none))
                for o, f in sorted(plan.sources.items(), key=lambda of: -of[1].size)]
    assert largest.memory == task_memory(plan, together)
    assert largest.what == "materialize task reading 3 small files ahead"
    assert largest.memory > max(task_memory(plan, [s]) for s in together)
