"""``compactor plan``: the worker nodes a compaction round needs on a Ray cluster.

Plans the round as ``compact`` would (nothing runs, nothing changes), then packs its memory
requests onto the node types of a Ray cluster-launcher config (:mod:`compactor.cluster_sizing`).
A request that no node type can hold is an error (exit 1) before anything starts.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from compactor.cli.common import Session, command, partition_option, styled
from compactor.cli.params import Size
from compactor.pipeline.materialize import CODECS, DEFAULT_CODEC
from compactor.units import format_size

if TYPE_CHECKING:
    from compactor.cluster_sizing import ClusterSpec, RoundSizing
    from compactor.pipeline.plan import RoundPlan


def sizing_info(cluster: ClusterSpec, sizing: RoundSizing) -> dict[str, Any]:
    nodes = sizing.total_nodes
    added = sizing.added_nodes(cluster)
    kinds = {t.name: t for t in cluster.workers}
    return {
        "worker_nodes": sizing.nodes, "nodes": nodes, "nodes_added": added,
        "cpus": sum(kinds[t].cpus * n for t, n in sizing.nodes.items()),
        "memory": sum(kinds[t].memory * n for t, n in sizing.nodes.items()),
        "node_types": {t.name: {"instance_type": t.instance_type, "cpus": t.cpus,
                                "memory": t.memory, "spot": t.spot,
                                "min_workers": t.min_workers, "max_workers": t.max_workers}
                       for t in cluster.workers},
        "steps": {s.step: {"tasks": s.tasks, "memory": s.memory, "waves": s.waves,
                           "nodes": s.nodes} for s in sizing.steps},
        "dedupe_actor_memory": sizing.actor_memory,
        "largest_request": {"what": sizing.largest.what, "memory": sizing.largest.memory,
                            "cpus": sizing.largest.cpus},
        "max_workers": cluster.max_workers,
        "idle_timeout_minutes": cluster.idle_timeout_minutes,
        # every node runs while the round runs; the added ones stay up for the idle timeout
        "instance_hours_per_round_hour": nodes,
        "instance_hours_after_round": round(added * cluster.idle_timeout_minutes / 60, 3),
    }


def plan_info(table: str, partition: str, cluster: ClusterSpec, plan: RoundPlan,
              sizing: RoundSizing) -> dict[str, Any]:
    return {
        "table": table, "partition": partition, "cluster": cluster.name,
        "cluster_config": cluster.source, "nothing_to_do": False,
        "snapshot_version": plan.snapshot.version,
        "deltas": len(plan.snapshot.deltas), "rows_in": plan.rows_in, "bytes_in": plan.bytes_in,
        "full_rewrite": plan.rebuild, "bucket_count": plan.bucket_count,
        "dedupe_actors": plan.groups, "dedupe_memory_per_actor": plan.dedupe_memory,
        "hash_tasks": len(plan.tasks), **sizing_info(cluster, sizing),
    }


def render(info: dict[str, Any], out: Console) -> None:
    out.print(styled("plan", "bold"), f"for partition {info['partition']} of {info['table']} "
              f"on cluster {info['cluster']} "
              f"({info['cluster_config']}), nothing changed")
    deltas = f"{info['deltas']} delta{'s' if info['deltas'] != 1 else ''}"
    out.print(f"fold in {deltas}: {info['rows_in']:,} rows, "
              f"{format_size(info['bytes_in'])}; {info['bucket_count']:,} buckets in "
              f"{info['dedupe_actors']} dedupe actors of "
              f"{format_size(info['dedupe_memory_per_actor'])}")
    nodes = RichTable("node type", "instance", "market", "nodes", "CPU", "memory", box=None,
                      padding=(0, 2))
    for name, count in info["worker_nodes"].items():
        t = info["node_types"][name]
        nodes.add_row(name, t["instance_type"] or "-", "spot" if t["spot"] else "on-demand",
                      str(count), f"{t['cpus'] * count:g}", format_size(t["memory"] * count))
    out.print(nodes)
    steps = RichTable("step", "tasks", "memory asked", "waves", "nodes", box=None, padding=(0, 2))
    for step, s in info["steps"].items():
        tasks = f"{s['tasks']:,}" if step != "materialize" else "largest 1"
        steps.add_row(step, tasks, format_size(s["memory"]), str(s["waves"]),
                      str(sum(s["nodes"].values())))
    out.print(steps)
    largest = info["largest_request"]
    out.print(f"largest request: {largest['what']} ({format_size(largest['memory'])})")
    out.print(f"cost: {info['instance_hours_per_round_hour']} instance-hours per hour the round "
              f"runs, plus {info['instance_hours_after_round']:g} after it ("
              f"{info['nodes_added']} added node(s) idle for "
              f"{info['idle_timeout_minutes']:g} min)")


@command("plan")
@click.argument("url")
@partition_option()
@click.option("--cluster", "cluster_config", required=True, metavar="CLUSTER.yaml",
              type=click.Path(exists=True, dir_okay=False),
              help="Ray cluster-launcher config whose worker node types the round runs on, "
                   "e.g. infra/aws/cluster.yaml.")
@click.option("--target-file-size", type=Size(), default="256MiB", show_default=True,
              help="Size of the compacted files the round would write.")
@click.option("--buckets", type=click.IntRange(min=1), default=None,
              help="Hash buckets (default: the current layout's, or the table's).")
@click.option("--rebase", is_flag=True, help="Plan a rewrite of the whole compacted state.")
@click.option("--compression", type=click.Choice(CODECS), default=DEFAULT_CODEC,
              show_default=True, help="Codec of the files the round would write (it sizes "
                                      "them: rows per file).")
def plan(session: Session, url: str, partition: dict[str, str] | None, cluster_config: str,
         target_file_size: int, buckets: int | None, rebase: bool, compression: str) -> None:
    """The worker nodes (how many, of which type) a round of a partition needs on a cluster.

    Reads the partition's pending deltas and their Parquet footers as `compact` would (of
    more than 16 small files, the 16 largest; the rest are sized from them), sizes
    each task's and dedupe actor's memory request, and packs them onto the worker node types
    of CLUSTER.yaml (spot before on-demand, within each type's and the cluster's max_workers).
    A request no node type can hold is an error (exit 1) before anything starts. Prints the
    nodes, the waves each step runs in, and the instance-hours the round costs.

    \b
    Examples:
      compactor plan s3://lake/orders -p day=2024-05-01 --cluster infra/aws/cluster.yaml
      compactor plan ./orders --cluster infra/aws/cluster.yaml --json
    """
    from compactor.cluster_sizing import load_cluster, round_requests, size_round
    from compactor.pipeline.plan import NothingToDo, plan_round

    cluster = load_cluster(cluster_config)
    table = session.open_table(url)
    part = session.partition(table, partition, existing=True)
    try:
        # a round makes one dedupe actor per CPU up when it starts: the idle cluster's
        round_plan = plan_round(table, part, target_file_size=target_file_size,
                                bucket_count=buckets, rebase=rebase,
                                groups=max(1, math.floor(cluster.idle_cpus)),
                                compression=compression)
    except NothingToDo as e:
        message = str(e)
        session.emit({"table": table.url, "partition": str(part.key), "cluster": cluster.name,
                      "cluster_config": cluster.source, "nothing_to_do": True,
                      "message": message, "worker_nodes": {}, "nodes": 0},
                     lambda out: out.print(f"nothing to do: {message}"))
        return
    actors, steps = round_requests(round_plan)
    sizing = size_round(cluster, actors=actors, steps=steps)
    info = plan_info(table.url, str(part.key), cluster, round_plan, sizing)
    session.emit(info, lambda out: render(info, out))
