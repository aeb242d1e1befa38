"""Cluster sizing: the worker nodes a compaction round needs, from its memory requests.

A round asks the scheduler for memory per task and per dedupe actor, sized by the plan from
Parquet footers (:mod:`compactor.pipeline.plan`). On an autoscaling Ray cluster those requests
are what the autoscaler packs onto nodes, so packing them here, before the round starts, says
how many nodes of which type the round brings up, and refuses a round that could never run: a
request that no worker node type can hold, or dedupe actors that do not fit the cluster even at
its largest.

A cluster is read from a Ray cluster-launcher config (``infra/aws/cluster.yaml``). A node type's
size is its ``resources`` (``CPU``, ``memory`` in bytes) where the config gives them, else that
of its EC2 instance type (:data:`INSTANCE_TYPES`) split as Ray's autoscaler splits it: 70% of
the RAM is the ``memory`` resource, 30% the object store.

The packing, a simplified model of Ray's scheduler and autoscaler:

- the dedupe actors (no CPU, their memory) live for the whole round and are placed first;
- a step's tasks (one CPU each, their memory) are placed first-fit by decreasing memory, on the
  nodes already there, else on a new node: spot types before on-demand ones (config order
  otherwise), each type up to its ``max_workers``, all types up to the cluster's;
- tasks that find no room wait for a later wave (they queue; nothing fails).

Only the hash step's tasks are all known before the round; the materialize step cuts its work
by the CPUs present, so it is sized by its largest possible task (one source file read alone),
which must fit beside the actors.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from compactor.errors import CompactorError

if TYPE_CHECKING:
    from compactor.pipeline.plan import RoundPlan

__all__ = ["INSTANCE_TYPES", "ClusterConfigError", "ClusterSpec", "ClusterTooSmall", "NodeType",
           "Request", "RequestTooLarge", "RoundSizing", "StepSizing", "load_cluster",
           "parse_cluster", "round_requests", "size_round"]

GiB = 1 << 30
OBJECT_STORE_SHARE = 0.3  # Ray's DEFAULT_OBJECT_STORE_MEMORY_PROPORTION

_SIZES = {"large": 2, "xlarge": 4, "2xlarge": 8, "4xlarge": 16, "8xlarge": 32, "12xlarge": 48,
          "16xlarge": 64}
_GIB_PER_VCPU = {"m5": 4, "m6i": 4, "m7i": 4, "r5": 8, "r6i": 8, "r6a": 8, "r7i": 8}
#: EC2 instance type -> (vCPUs, RAM in GiB): general-purpose (heads) and memory-optimized types.
INSTANCE_TYPES: dict[str, tuple[int, int]] = {
    f"{family}.{size}": (vcpus, vcpus * per_vcpu)
    for family, per_vcpu in _GIB_PER_VCPU.items() for size, vcpus in _SIZES.items()
}


class ClusterConfigError(CompactorError, ValueError):
    """A cluster config cannot be read, or a node type's size is unknown."""


class RequestTooLarge(CompactorError):
    """A task or actor of the round asks for more than any worker node type offers."""


class ClusterTooSmall(CompactorError):
    """The round cannot run within the cluster's max workers (its dedupe actors do not fit)."""


@dataclass(frozen=True)
class Request:
    """What one task or actor asks the scheduler for."""

    what: str
    memory: int  # bytes
    cpus: float = 1.0


@dataclass(frozen=True)
class NodeType:
    name: str
    cpus: float
    memory: int  # Ray's ``memory`` resource in bytes: what requests are packed into
    instance_type: str | None = None
    ram: int | None = None  # the instance's RAM in bytes, when its type is known
    spot: bool = False
    min_workers: int = 0
    max_workers: int = 0

    def fits(self, request: Request) -> bool:
        return request.cpus <= self.cpus and request.memory <= self.memory

    def describe(self) -> str:
        instance = f"{self.instance_type}, " if self.instance_type else ""
        return f"{self.name} ({instance}{self.cpus:g} CPU, {_gib(self.memory)} memory)"


@dataclass(frozen=True)
class ClusterSpec:
    name: str
    source: str
    head: NodeType
    workers: tuple[NodeType, ...]
    max_workers: int
    idle_timeout_minutes: float
    upscaling_speed: float

    @property
    def idle_cpus(self) -> float:
        """CPUs up while no round runs (the head's and the min_workers'): what a round sees
        when it starts, and so how many dedupe actors it makes."""
        return self.head.cpus + sum(t.cpus * t.min_workers for t in self.workers)

    def worker_type(self, name: str) -> NodeType:
        return next(t for t in self.workers if t.name == name)


@dataclass(frozen=True)
class StepSizing:
    step: str
    tasks: int  # requests packed (for materialize: its largest task only)
    memory: int  # bytes those tasks ask for together
    waves: int  # rounds of packing until every task had room
    nodes: dict[str, int]  # worker node type -> nodes up while the step runs


@dataclass(frozen=True)
class RoundSizing:
    nodes: dict[str, int]  # worker node type -> nodes the round needs (its busiest step's)
    steps: tuple[StepSizing, ...]
    actors: int
    actor_memory: int  # bytes, all dedupe actors together
    largest: Request

    @property
    def total_nodes(self) -> int:
        return sum(self.nodes.values())

    def added_nodes(self, cluster: ClusterSpec) -> int:
        """Nodes the autoscaler launches for the round (beyond those always up)."""
        return sum(max(0, n - cluster.worker_type(t).min_workers) for t, n in self.nodes.items())


# -- reading a cluster config ----------------------------------------------------------------------
def load_cluster(path: str | Path) -> ClusterSpec:
    """The cluster a Ray cluster-launcher YAML file describes."""
    try:
        config = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ClusterConfigError(f"cluster config {path}: {' '.join(str(e).split())}") from None
    return parse_cluster(config, str(path))


def parse_cluster(config: Any, source: str) -> ClusterSpec:
    if not isinstance(config, dict) or not isinstance(config.get("available_node_types"), dict):
        raise ClusterConfigError(f"cluster config {source}: no available_node_types")
    types = config["available_node_types"]
    head_name = config.get("head_node_type")
    if head_name not in types:
        raise ClusterConfigError(
            f"cluster config {source}: head_node_type {head_name!r} is not one of the "
            f"available_node_types ({', '.join(types)})")
    max_workers = int(config.get("max_workers", 2))  # Ray's default
    nodes = {name: _node_type(source, name, spec or {}, name == head_name, max_workers)
             for name, spec in types.items()}
    workers = tuple(t for name, t in nodes.items() if name != head_name)
    if not workers:
        raise ClusterConfigError(f"cluster config {source}: no worker node type")
    return ClusterSpec(
        name=str(config.get("cluster_name", "default")), source=source, head=nodes[head_name],
        workers=workers, max_workers=max_workers,
        idle_timeout_minutes=float(config.get("idle_timeout_minutes", 5)),
        upscaling_speed=float(config.get("upscaling_speed", 1.0)))


def _node_type(source: str, name: str, spec: Mapping[str, Any], head: bool,
               max_workers: int) -> NodeType:
    node_config = spec.get("node_config") or {}
    resources = spec.get("resources") or {}
    instance = node_config.get("InstanceType")
    known = INSTANCE_TYPES.get(instance) if instance else None
    ram, cpus, memory = None, 0.0, 0
    if known is not None:
        ram = known[1] * GiB
        cpus, memory = float(known[0]), int(ram * (1 - OBJECT_STORE_SHARE))
    elif "CPU" not in resources or "memory" not in resources:
        raise ClusterConfigError(
            f"cluster config {source}: node type {name}: instance type {instance!r} is not in "
            "compactor's table of EC2 types; give its size as resources: "
            "{CPU: vCPUs, memory: bytes for tasks}")
    cpus = float(resources.get("CPU", cpus))
    memory = int(resources.get("memory", memory))
    market = (node_config.get("InstanceMarketOptions") or {}).get("MarketType")
    return NodeType(
        name=name, cpus=cpus, memory=memory, instance_type=instance, ram=ram,
        spot=market == "spot",
        min_workers=0 if head else int(spec.get("min_workers", 0)),
        max_workers=0 if head else int(spec.get("max_workers", max_workers)))


# -- a round's requests ----------------------------------------------------------------------------
def round_requests(plan: RoundPlan) -> tuple[list[Request], dict[str, list[Request]]]:
    """The dedupe actors' and each step's requests, as ``compact_partition`` makes them."""
    from compactor.pipeline import locators
    from compactor.pipeline.materialize import (
        READ_AHEAD_BYTES,
        READ_AHEAD_FILES,
        SourceRows,
        task_memory,
    )
    from compactor.pipeline.row_sets import RowSet

    actors = [Request(f"dedupe actor {g} of {plan.groups}", plan.dedupe_memory, cpus=0)
              for g in range(plan.groups)]  # actors reserve no CPU (the runtime's default)
    hashing = [Request(t.describe(), t.memory) for t in plan.tasks]
    # A source read alone is the smallest materialize task it can be in: a compacted file
    # feeds its bucket, a delta file all buckets its rows hash to.
    none = RowSet.of(np.zeros(0, dtype=np.int64))
    materialize: list[Request] = []
    alone = []
    for ordinal, file in plan.sources.items():
        buckets = ([locators.bucket_of_compacted(ordinal)] if not locators.is_source(ordinal)
                   else range(min(plan.bucket_count, max(1, file.rows))))
        source = SourceRows(ordinal, file, dict.fromkeys(buckets, none))
        alone.append(source)
        materialize.append(Request(f"materialize task reading {file.url}",
                                   task_memory(plan, [source])))
    # a task of small sources also holds the ones it reads ahead
    small = sorted((s for s in alone if s.file.size <= READ_AHEAD_BYTES),
                   key=lambda s: -s.file.size)[:READ_AHEAD_FILES]
    if len(small) > 1:
        materialize.append(Request(f"materialize task reading {len(small)} small files ahead",
                                   task_memory(plan, small)))
    largest = [max(materialize, key=lambda r: r.memory)] if materialize else []
    return actors, {"hash_bucket": hashing, "materialize": largest}


# -- packing ---------------------------------------------------------------------------------------
class _Node:
    def __init__(self, kind: NodeType) -> None:
        self.kind = kind
        self.reserved_cpus, self.reserved_memory = 0.0, 0  # by actors, for the whole round
        self.cpus, self.memory = kind.cpus, kind.memory  # free in the current wave

    def take(self, r: Request, *, for_round: bool = False) -> bool:
        if r.cpus > self.cpus or r.memory > self.memory:
            return False
        self.cpus -= r.cpus
        self.memory -= r.memory
        if for_round:
            self.reserved_cpus += r.cpus
            self.reserved_memory += r.memory
        return True

    def next_wave(self) -> None:
        self.cpus = self.kind.cpus - self.reserved_cpus
        self.memory = self.kind.memory - self.reserved_memory


class _Packing:
    def __init__(self, cluster: ClusterSpec) -> None:
        self.cluster = cluster
        self.order = sorted(cluster.workers, key=lambda t: not t.spot)  # stable: config order
        self.nodes = [_Node(t) for t in cluster.workers for _ in range(t.min_workers)]

    def place(self, r: Request, *, for_round: bool = False) -> bool:
        if any(n.take(r, for_round=for_round) for n in self.nodes):
            return True
        if len(self.nodes) >= self.cluster.max_workers:
            return False
        counts = self.counts()
        for kind in self.order:
            if kind.fits(r) and counts[kind.name] < kind.max_workers:
                self.nodes.append(_Node(kind))
                return self.nodes[-1].take(r, for_round=for_round)
        return False

    def counts(self) -> Counter[str]:
        return Counter(n.kind.name for n in self.nodes)


def size_round(cluster: ClusterSpec, *, actors: Sequence[Request],
               steps: Mapping[str, Sequence[Request]]) -> RoundSizing:
    """Pack the round's requests onto ``cluster``'s worker node types (see the module doc).

    Raises :class:`RequestTooLarge` if a request fits no worker node type, and
    :class:`ClusterTooSmall` if the dedupe actors, or a task beside them, cannot be placed
    within the cluster's max workers.
    """
    requests = [*actors, *(r for rs in steps.values() for r in rs)]
    if not requests:
        raise ValueError("a round makes at least one request")
    largest = max(requests, key=lambda r: (r.memory, r.cpus))
    biggest = max(cluster.workers, key=lambda t: (t.memory, t.cpus))
    for r in sorted(requests, key=lambda r: -r.memory):
        if not any(t.fits(r) for t in cluster.workers):
            raise RequestTooLarge(
                f"{r.what} asks for {_gib(r.memory)} memory and {r.cpus:g} CPU, more than any "
                f"worker node type of cluster {cluster.name} ({cluster.source}) offers; the "
                f"largest is {biggest.describe()}")
    sized = tuple(_size_step(cluster, actors, step, tasks) for step, tasks in steps.items())
    busiest = max(sized, key=lambda s: sum(s.nodes.values()))
    return RoundSizing(nodes=busiest.nodes, steps=sized, actors=len(actors),
                       actor_memory=sum(a.memory for a in actors), largest=largest)


def _size_step(cluster: ClusterSpec, actors: Sequence[Request], step: str,
               tasks: Sequence[Request]) -> StepSizing:
    packing = _Packing(cluster)
    for a in sorted(actors, key=lambda r: -r.memory):
        if not packing.place(a, for_round=True):
            raise ClusterTooSmall(
                f"the round's {len(actors)} dedupe actors ask for {_gib(_total(actors))} "
                f"together, more than cluster {cluster.name} ({cluster.source}) holds with its "
                f"max_workers={cluster.max_workers}")
    pending = sorted(tasks, key=lambda r: (-r.memory, -r.cpus))
    waves = 0
    while pending:
        waves += 1
        for n in packing.nodes:
            n.next_wave()
        left = [r for r in pending if not packing.place(r)]
        if len(left) == len(pending):
            raise ClusterTooSmall(
                f"{left[0].what} asks for {_gib(left[0].memory)} memory, but beside the round's "
                f"dedupe actors no node of cluster {cluster.name} ({cluster.source}) has that "
                f"much free even at max_workers={cluster.max_workers}")
        pending = left
    counts = packing.counts()
    return StepSizing(step=step, tasks=len(tasks), memory=_total(tasks), waves=waves,
                      nodes={t.name: counts[t.name] for t in cluster.workers if counts[t.name]})


def _total(requests: Sequence[Request]) -> int:
    return sum(r.memory for r in requests)


def _gib(size: float) -> str:
    return f"{size / GiB:.1f} GiB" if size >= GiB else f"{size / (1 << 20):.0f} MiB"
