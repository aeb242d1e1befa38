"""The ray backend on several nodes: a head and worker nodes on this machine.

Each node is a separate raylet with its own resources (``ray.cluster_utils.Cluster``), so
placement, node loss, task retries and actor restarts are Ray's real ones. They run in a pytest
invocation of their own (``pytest -m cluster``, see ``tests/ray_cluster.py``), and start and stop
only their own cluster.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import ray
from ray.cluster_utils import Cluster

import runtime
from runtime import NodeAffinity, PlacementGroupSlot
from tests.ray_cluster import (
    FAST_NODE_FAILURE_DETECTION,
    GiB,
    check_no_other_ray,
    machine_ray_address_kept,
)

pytestmark = pytest.mark.cluster


def this_node() -> str:
    node_id: str = ray.get_runtime_context().get_node_id()
    return node_id


@runtime.remote
def where(seconds: float = 0.0) -> str:
    time.sleep(seconds)
    return this_node()


@runtime.remote
class Tracker:
    """Records the node of every task that started, so a test knows where work is running."""

    def __init__(self) -> None:
        self.nodes: list[str] = []

    def started(self, node: str) -> None:
        self.nodes.append(node)

    def seen(self) -> list[str]:
        return self.nodes


@runtime.remote
def square_slowly(x: int, tracker: Any, seconds: float) -> tuple[int, str]:
    node = this_node()
    runtime.get(tracker.started.remote(node))
    time.sleep(seconds)
    return x * x, node


@runtime.remote
class Counter:
    def __init__(self, start: int) -> None:
        self.value = start

    def inc(self) -> int:
        self.value += 1
        return self.value

    def where(self) -> str:
        return this_node()


@dataclass
class LocalCluster:
    cluster: Cluster
    head: str
    small: str  # worker node with 1 CPU and 1 GiB
    large: str  # worker node with 1 CPU and 3 GiB
    client_address: str  # ray://... of the head's Ray client server

    def add_node(self, **resources: Any) -> tuple[Any, str]:
        node = self.cluster.add_node(**resources)
        self.cluster.wait_for_nodes()
        # Registered is not yet placeable: wait until the scheduler places work there.
        there = where.options(scheduling=NodeAffinity(node.node_id, soft=True))
        wait_until(lambda: runtime.get(there.remote()) == node.node_id)
        return node, node.node_id

    def remove_node(self, node: Any) -> None:
        """Kill the node's processes, like a machine that vanishes; return once Ray knows.

        Until then an actor's process there may still answer calls: Ray restarts the actors of
        a node when it declares the node dead.
        """
        self.cluster.remove_node(node, allow_graceful=False)
        wait_until(lambda: node.node_id not in {n["node_id"] for n in runtime.nodes()})


@pytest.fixture(scope="module")
def cluster() -> Iterator[LocalCluster]:
    check_no_other_ray()
    client_port = _free_port()
    with machine_ray_address_kept():
        c = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "memory": GiB // 2, "include_dashboard": False,
            "ray_client_server_port": client_port,
            "_system_config": FAST_NODE_FAILURE_DETECTION,
        })
    try:
        small = c.add_node(num_cpus=1, memory=GiB)
        large = c.add_node(num_cpus=1, memory=3 * GiB)
        c.wait_for_nodes()
        with runtime.init("ray", address=c.address):
            yield LocalCluster(c, c.head_node.node_id, small.node_id, large.node_id,
                               f"ray://127.0.0.1:{client_port}")
    finally:
        with machine_ray_address_kept():
            c.shutdown()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.1)


def test_every_node_reports_its_own_resources(cluster: LocalCluster) -> None:
    nodes = {n["node_id"]: n["resources"] for n in runtime.nodes()}
    assert set(nodes) == {cluster.head, cluster.small, cluster.large}
    assert {i: (r["CPU"], r["memory"]) for i, r in nodes.items()} == {
        cluster.head: (1, GiB // 2), cluster.small: (1, GiB), cluster.large: (1, 3 * GiB),
    }
    total = runtime.cluster_resources()
    assert total["CPU"] == 3 and total["memory"] == GiB // 2 + 4 * GiB


def test_spread_runs_tasks_on_every_node(cluster: LocalCluster) -> None:
    spread = where.options(scheduling="SPREAD")
    used = runtime.get([spread.remote(0.5) for _ in range(6)], timeout=60)
    assert set(used) == {cluster.head, cluster.small, cluster.large}


def test_node_affinity_pins_an_actor_and_a_task(cluster: LocalCluster) -> None:
    pinned = Counter.options(scheduling=NodeAffinity(cluster.small)).remote(0)
    assert {runtime.get(pinned.where.remote()) for _ in range(5)} == {cluster.small}
    on_large = where.options(scheduling=NodeAffinity(cluster.large))
    assert set(runtime.get([on_large.remote() for _ in range(4)])) == {cluster.large}
    runtime.kill(pinned)


def test_memory_request_picks_a_node_with_that_much_memory(cluster: LocalCluster) -> None:
    needs_2gib = where.options(memory=2 * GiB)
    assert set(runtime.get([needs_2gib.remote() for _ in range(3)])) == {cluster.large}
    # 4 GiB is less than the cluster's total memory, but no single node has it.
    with pytest.raises(runtime.UnschedulableError, match="memory"):
        where.options(memory=4 * GiB).remote()


def test_placement_group_places_a_gang_on_distinct_nodes(cluster: LocalCluster) -> None:
    pg = ray.util.placement_group([{"CPU": 1}, {"CPU": 1}], strategy="STRICT_SPREAD")
    ray.get(pg.ready(), timeout=30)
    try:
        slots = [where.options(scheduling=PlacementGroupSlot(pg, i)) for i in (0, 1)]
        first, second = runtime.get([s.remote() for s in slots])
        assert first != second
    finally:
        ray.util.remove_placement_group(pg)


def test_tasks_on_a_removed_node_are_retried_on_the_others(cluster: LocalCluster) -> None:
    node, doomed = cluster.add_node(num_cpus=2, memory=GiB)
    tracker = Tracker.options(scheduling=NodeAffinity(cluster.head)).remote()
    spread = square_slowly.options(scheduling="SPREAD")
    refs = [spread.remote(i, tracker, 3.0) for i in range(10)]
    wait_until(lambda: doomed in runtime.get(tracker.seen.remote()))

    cluster.remove_node(node)

    results = runtime.get(refs, timeout=120)
    assert [value for value, _ in results] == [i * i for i in range(10)]
    assert doomed not in {node_id for _, node_id in results}


def test_actor_on_a_removed_node_restarts_elsewhere_if_allowed(cluster: LocalCluster) -> None:
    node, doomed = cluster.add_node(num_cpus=1, memory=GiB)
    # A soft pin lets the actor move once that node is gone (a hard one could never restart).
    # Ray honours a soft pin reliably only for an actor that reserves something (with 0 CPUs
    # it placed some elsewhere in trials), hence num_cpus=1.
    survivor = Counter.options(
        num_cpus=1, max_restarts=1, scheduling=NodeAffinity(doomed, soft=True)
    ).remote(10)
    assert runtime.get(survivor.where.remote()) == doomed
    mortal = Counter.options(scheduling=NodeAffinity(doomed)).remote(10)
    assert runtime.get(mortal.where.remote()) == doomed
    assert runtime.get([survivor.inc.remote(), mortal.inc.remote()]) == [11, 11]

    cluster.remove_node(node)

    assert runtime.get(survivor.inc.remote(), timeout=60) == 11  # its constructor ran again
    assert runtime.get(survivor.where.remote()) in {cluster.head, cluster.small, cluster.large}
    with pytest.raises(runtime.ActorDiedError):
        runtime.get(mortal.inc.remote(), timeout=60)


CLIENT_PROGRAM = """
import runtime

@runtime.remote
def square(x):
    return x * x

@runtime.remote
def sum_of_squares(xs):
    return sum(runtime.get([square.remote(x) for x in xs]))

@runtime.remote
class Counter:
    def __init__(self):
        self.value = 0

    def inc(self):
        self.value += 1
        return self.value

@runtime.remote
def bump(counter):
    return runtime.get(counter.inc.remote())

@runtime.remote
def fail():
    raise KeyError("from the cluster")

with runtime.init():  # backend and address from $COMPACTOR_BACKEND and $COMPACTOR_ADDRESS
    counter = Counter.options(name="via-client").remote()
    same = runtime.get_actor("via-client")
    print("result:", runtime.get(sum_of_squares.remote([1, 2, 3])),
          runtime.get(square.remote(runtime.put(4))), runtime.get(bump.remote(counter)),
          runtime.get(same.inc.remote()))
    try:
        runtime.get(fail.remote())
    except KeyError as e:
        print("result:", type(e.__cause__).__name__)
"""


def test_a_program_joins_through_a_ray_client_url(cluster: LocalCluster) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CLIENT_PROGRAM], cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "COMPACTOR_BACKEND": "ray", "COMPACTOR_ADDRESS": cluster.client_address},
        capture_output=True, text=True, timeout=120,
    )
    assert child.returncode == 0, child.stderr[-4000:]
    # Ray streams its workers' log lines to a client's stdout too.
    results = [line for line in child.stdout.splitlines() if line.startswith("result: ")]
    assert results == ["result: 14 16 1 2", "result: RemoteTraceback"], child.stdout[-4000:]
