"""Compaction on a multi-node Ray cluster shaped like infra/aws/cluster.yaml, on this machine.

``ray.cluster_utils.Cluster`` starts a head node that, as in the deployment, offers no CPU and
no memory to tasks (the driver's node), and two worker nodes, each its own raylet with its own
resources; the runtime joins it with ``runtime.init("ray", address=...)``. Rounds must give the
oracle's result; losing a worker node mid-round must end either correct (Ray retried the work)
or failed with nothing committed, and the next round converges.

They run in a pytest invocation of their own (``pytest -m cluster``, see
``tests/ray_cluster.py``), start and stop only their own cluster, and restore the machine's
record of "the" Ray address that Cluster overwrites.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pytest
import ray
from ray.cluster_utils import Cluster

import runtime
from compactor.compaction import compact_partition
from compactor.reader import read_partition
from tests.compactor.test_compaction import SCHEMA, Scenario, _rows
from tests.ray_cluster import (
    FAST_NODE_FAILURE_DETECTION,
    GiB,
    check_no_other_ray,
    machine_ray_address_kept,
)

pytestmark = [pytest.mark.cluster, pytest.mark.slow]

EXECUTABLE = Path(sys.executable).parent / "compactor"
WORKER: dict[str, Any] = {"num_cpus": 1, "memory": 2 * GiB}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    check_no_other_ray()
    with machine_ray_address_kept():
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 0, "memory": 0, "include_dashboard": False,  # as the deployment's head
            "_system_config": FAST_NODE_FAILURE_DETECTION,
        })
    try:
        c.add_node(**WORKER)
        c.add_node(**WORKER)
        c.wait_for_nodes()
        with runtime.init("ray", address=c.address):
            yield c
    finally:
        with machine_ray_address_kept():
            c.shutdown()


def _workers(cluster: Cluster) -> set[str]:
    return {n.node_id for n in cluster.worker_nodes}


def _dedupe_actor_nodes() -> set[str]:
    return {a["Address"]["NodeID"] for a in ray._private.state.actors().values()
            if a["State"] == "ALIVE" and str(a.get("Name", "")).startswith("dedupe:")}


def _scenario(tmp_path: Path, files: int, seed: int) -> Scenario:
    s = Scenario(f"file://{tmp_path}/t", SCHEMA, ["id"], "lsn", buckets=4)
    _more(s, files, seed, 0)
    return s


def _more(s: Scenario, files: int, seed: int, lsn0: int) -> None:
    rng = np.random.default_rng(seed)
    for k in range(files):
        s.upsert(_rows(rng, 40_000, 60_000, lsn0 + k * 40_000, f"s{seed}f{k}"))
    s.delete(pa.table({"id": rng.integers(0, 60_000, 2_000),
                       "lsn": np.full(2_000, lsn0 + files * 40_000)}))


def test_rounds_on_two_worker_nodes_match_the_oracle(cluster: Cluster, tmp_path: Path) -> None:
    s = _scenario(tmp_path, files=4, seed=1)
    first = s.compact_and_check()
    # the dedupe actors and every task ask for memory, which only the workers offer
    assert _dedupe_actor_nodes() <= _workers(cluster)
    assert first.committed and first.rows_out == read_partition(s.table, s.part).num_rows
    _more(s, files=3, seed=2, lsn0=1_000_000)
    second = s.compact_and_check()
    assert second.committed and second.high_watermark_after == s.part.version() - 1


def _cli(*args: object) -> Any:
    done = subprocess.run([str(EXECUTABLE), *map(str, args), "--json"], capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{args} -> {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def test_the_cli_plans_compacts_and_verifies_on_the_cluster(cluster: Cluster,
                                                            tmp_path: Path) -> None:
    """The deploy guide's path: plan against the cluster config, then compact on the cluster
    with ``--backend ray --address``; the plan's node sizes are those of this cluster."""
    s = _scenario(tmp_path, files=3, seed=3)
    config = tmp_path / "cluster.yaml"
    config.write_text(json.dumps({  # JSON is YAML
        "cluster_name": "local", "max_workers": 2, "head_node_type": "head",
        "available_node_types": {
            "head": {"resources": {"CPU": 0, "memory": 0}, "node_config": {}},
            "worker": {"resources": {"CPU": WORKER["num_cpus"], "memory": WORKER["memory"]},
                       "node_config": {}, "min_workers": 2, "max_workers": 2},
        }}))
    plan = _cli("plan", s.table.url, "--cluster", config)
    assert plan["worker_nodes"] == {"worker": 2} and plan["dedupe_actors"] == 2
    assert plan["hash_tasks"] == 1  # three small upsert files and the delete file, together

    result = _cli("compact", s.table.url, "--backend", "ray", "--address", cluster.address)
    assert result["committed"] and result["rows_out"] == read_partition(s.table, s.part).num_rows
    s.check()
    assert _cli("verify", s.table.url)["ok"]


@pytest.mark.parametrize("step", ["hash_bucket", "materialize"])
def test_losing_a_worker_node_mid_round_ends_correct_or_commits_nothing(
        cluster: Cluster, tmp_path: Path, step: str) -> None:
    s = _scenario(tmp_path, files=4, seed=4)
    s.compact_and_check()
    _more(s, files=6, seed=5, lsn0=1_000_000)
    before, version = read_partition(s.table, s.part), s.part.version()
    # a node holding a dedupe actor, if one does: the worst node to lose
    doomed = next((n for n in cluster.worker_nodes if n.node_id in _dedupe_actor_nodes()),
                  next(iter(cluster.worker_nodes)))
    lost: list[str] = []

    def lose_a_node(at: str, done: int, *_: int) -> None:
        if at == step and done == 0 and not lost:  # the step's work was just submitted
            lost.append(doomed.node_id)
            cluster.remove_node(doomed, allow_graceful=False)  # the machine vanishes

    try:
        result = compact_partition(s.table, s.part, progress=lose_a_node)
    except (runtime.WorkerCrashedError, runtime.ActorDiedError) as e:
        # failed cleanly: nothing committed, the compacted state is as it was
        assert s.part.version() == version, e
        assert read_partition(s.table, s.part).equals(before)
    else:
        assert result.committed
        s.check()  # Ray re-ran the lost work
    assert lost, f"the round never reached {step}"

    # the autoscaler replaces the node; the next round (a rerun if that one failed) converges
    cluster.add_node(**WORKER)
    cluster.wait_for_nodes()
    s.compact_and_check()
    _more(s, files=2, seed=6, lsn0=2_000_000)
    s.compact_and_check()
