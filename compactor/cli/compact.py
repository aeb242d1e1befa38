"""``compactor compact``: one compaction round of a partition, or its plan (``--dry-run``)."""

from __future__ import annotations

import math
import os
from contextlib import ExitStack
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from compactor.cli.append import delta_summary
from compactor.cli.common import Session, command, partition_option, styled
from compactor.cli.params import Size
from compactor.cli.progress import RoundProgress
from compactor.pipeline import locators
from compactor.pipeline.materialize import CODECS, DEFAULT_CODEC
from compactor.pipeline.plan import MIN_TASK_MEMORY
from compactor.units import format_size

if TYPE_CHECKING:
    from compactor import Partition, Table
    from compactor.pipeline.plan import RoundPlan
    from compactor.result import CompactionResult

STEPS = ("plan", "hash_bucket", "dedupe", "materialize", "commit")


def run_round(session: Session, table: Table, part: Partition, *, backend: str | None = None,
              address: str | None = None, num_cpus: float | None = None,
              memory: int | None = None, **options: Any) -> CompactionResult:
    """``compact_partition`` with live progress on stderr, on the running runtime or on one
    started (and stopped) for the round."""
    import runtime
    from compactor.compaction import compact_partition, nothing_to_do
    from compactor.pipeline.tasks import PRELOAD
    from runtime.api import backend_name

    with RoundProgress(session.err) as progress, ExitStack() as stack:
        if not runtime.is_initialized():
            idle = nothing_to_do(table, part, options.get("bucket_count"),
                                 options.get("rebase", False))
            if idle is not None:  # said before a runtime starts (Ray's takes seconds)
                return idle
            name = backend_name(backend)
            progress.begin("runtime", f"starting the {name} runtime")
            stack.enter_context(runtime.init(backend, address=address, preload=PRELOAD,
                                             num_cpus=num_cpus, memory=memory))
        progress.begin("plan", "reading the snapshot and Parquet footers")
        return compact_partition(table, part, progress=progress, **options)
    raise AssertionError("unreachable")  # pragma: no cover


def render_result(result: CompactionResult, out: Console) -> None:
    if not result.committed:
        out.print(f"nothing to do: {result.message or 'no pending deltas'}")
        return
    r = result
    deltas = f"{r.deltas} delta{'s' if r.deltas != 1 else ''}"
    out.print(styled("compacted", "green"), f"partition {r.partition} of {r.table}: commit "
              f"{r.position}, watermark {r.high_watermark_before} -> {r.high_watermark_after} "
              f"({deltas}{', full rewrite' if r.rebased else ''})")
    if r.message:  # (e.g. the index was rebuilt from the compacted files, and why)
        out.print(styled("note:", "yellow"), r.message)
    figures = RichTable(box=None, show_header=False, padding=(0, 2))
    for name, value in (
        ("rows", f"{r.rows_in:,} in -> {r.rows_out:,} out"),
        ("deletes applied", f"{r.deletes_applied:,} (keys the compacted state had)"),
        ("versions dropped", f"{r.duplicates_dropped:,} (superseded by newer rows)"),
        ("files written", f"{r.files_written:,} ({format_size(r.bytes_written)}"
                          + (f"; {r.rows_copied:,} rows in row groups copied as they were)"
                             if r.rows_copied else ")")),
        *([("small files merged", f"{r.small_files_merged:,} (rewritten whole into fuller "
                                  "files)")] if r.small_files_merged else []),
        ("files referenced", f"{r.files_referenced:,} in place, not rewritten "
                             f"({format_size(r.bytes_referenced)})"),
        ("files read", f"{r.files_read:,} ({format_size(r.bytes_read)})"),
        ("buckets touched", f"{r.buckets_touched:,} of {r.bucket_count:,}"),
    ):
        figures.add_row(name, value)
    out.print(figures)
    steps = RichTable("step", "seconds", "peak memory (largest process)", box=None,
                      padding=(0, 2))
    for step in STEPS:
        if step in r.step_seconds:
            steps.add_row(step, f"{r.step_seconds[step]:.2f}",
                          format_size(r.step_peak_rss.get(step, 0)))
    steps.add_row(styled("total", "bold"), styled(f"{r.seconds:.2f}", "bold"), "")
    out.print(steps)


def _groups(backend: str | None, address: str | None, cpus: float | None = None) -> int:
    """Dedupe actor groups a round would use: the cluster's CPUs (joined only when an address
    names a cluster), else ``cpus`` or this machine's."""
    import runtime
    from runtime.api import ENV_ADDRESS

    if cpus is not None:
        return max(1, int(cpus))
    if address or os.environ.get(ENV_ADDRESS):
        with runtime.init(backend, address=address):
            return max(1, int(runtime.cluster_resources()["CPU"]))
    return os.cpu_count() or 1


# a dry run warns from this share of MAX_FILES_PER_BUCKET files per bucket on average (a
# bucket's share of the keys varies, and each task ends its own files)
FILES_WARNING = 0.9


def plan_info(table: Table, part: Partition, plan: RoundPlan, target_file_size: int
              ) -> dict[str, Any]:
    memory = [t.memory for t in plan.tasks]
    compacted = plan.snapshot.compacted
    # every row compacted and every row folded in (deletes and updates leave fewer), spread
    # evenly over the buckets: about the files a bucket gets, of which a round writes no more
    # than MAX_FILES_PER_BUCKET (it refuses before writing any); a bucket may get more (keys
    # hash unevenly, each task ends its own files)
    rows = (compacted.rows if compacted else 0) + plan.rows_in
    files = math.ceil(math.ceil(rows / plan.bucket_count) / plan.rows_per_file)
    return {
        "table": table.url, "partition": str(part.key), "dry_run": True, "nothing_to_do": False,
        "snapshot_version": plan.snapshot.version,
        "high_watermark_before": plan.snapshot.high_watermark,
        "high_watermark_after": plan.high_watermark,
        "deltas": [delta_summary(d) for d in plan.snapshot.deltas],
        "rows_in": plan.rows_in, "bytes_in": plan.bytes_in,
        "full_rewrite": plan.rebuild,
        "compacted_files_rehashed": len(compacted.files) if plan.rebuild and compacted else 0,
        "bucket_count": plan.bucket_count, "dedupe_actors": plan.groups,
        "dedupe_memory_per_actor": plan.dedupe_memory,
        "hash_tasks": len(plan.tasks),
        "hash_task_memory": {"min": min(memory, default=0), "max": max(memory, default=0),
                             "total": sum(memory)},
        "target_file_size": target_file_size, "rows_per_output_file": plan.rows_per_file,
        "files_per_bucket": files,
        "files_per_bucket_limit": locators.MAX_FILES_PER_BUCKET,
        "small_files_merged": {str(b): len(p) for b, p in sorted(plan.small.items())},
    }


def render_plan(info: dict[str, Any], out: Console) -> None:
    out.print(styled("plan", "bold"), f"(dry run, nothing changed) for partition "
              f"{info['partition']} of {info['table']} at commit {info['snapshot_version']}")
    deltas = RichTable("position", "kind", "files", "rows", "bytes", box=None, padding=(0, 2))
    for d in info["deltas"]:
        deltas.add_row(str(d["position"]), d["kind"], f"{d['files']:,}", f"{d['rows']:,}",
                       format_size(d["bytes"]))
    out.print(deltas)
    mem = info["hash_task_memory"]
    figures = RichTable(box=None, show_header=False, padding=(0, 2))
    figures.add_row("fold in", f"{len(info['deltas'])} deltas, {info['rows_in']:,} rows, "
                    f"{format_size(info['bytes_in'])}; watermark "
                    f"{info['high_watermark_before']} -> {info['high_watermark_after']}")
    if info["full_rewrite"]:
        figures.add_row("rewrite", f"full: {info['compacted_files_rehashed']:,} compacted files "
                        "re-hashed")
    figures.add_row("buckets", f"{info['bucket_count']:,} in {info['dedupe_actors']} dedupe "
                    f"actors of {format_size(info['dedupe_memory_per_actor'])} each")
    figures.add_row("hash tasks", f"{info['hash_tasks']:,}, memory per task "
                    f"{format_size(mem['min'])}..{format_size(mem['max'])} "
                    f"(total {format_size(mem['total'])})")
    figures.add_row("output", f"at most {info['rows_per_output_file']:,} rows per file "
                    f"(target {format_size(info['target_file_size'])}), about "
                    f"{info['files_per_bucket']:,} files per bucket")
    small = info["small_files_merged"]
    if small:
        figures.add_row("small files", f"{sum(small.values()):,} merged into fuller ones, "
                        f"in {len(small):,} bucket{'s' if len(small) != 1 else ''}")
    out.print(figures)
    if info["files_per_bucket"] > info["files_per_bucket_limit"] * FILES_WARNING:
        out.print(styled("warning:", "yellow bold"), f"a bucket may need more than "
                  f"{info['files_per_bucket_limit']:,} files, which the round refuses to "
                  "write (unless deletes and updates leave fewer rows): raise the target file "
                  "size or rebase to more buckets")


@command("compact")
@click.argument("url")
@partition_option()
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None,
              help="Runtime: local (worker processes on this machine) or ray. "
                   "Default: $COMPACTOR_BACKEND, else local.")
@click.option("--address", metavar="ADDR",
              help="Ray cluster to join, with --backend ray: 'auto' or ray://host:10001 "
                   "(default: $COMPACTOR_ADDRESS, else start a local instance).")
@click.option("--target-file-size", type=Size(), default="256MiB", show_default=True,
              help="Size of the compacted files written, e.g. 64MB or 1GiB.")
@click.option("--buckets", type=click.IntRange(min=1), default=None,
              help="Hash buckets (default: the current layout's, or the table's). Changing the "
                   "count of a compacted partition needs --rebase.")
@click.option("--rebase", is_flag=True,
              help="Rewrite the whole compacted state (e.g. into another bucket count).")
@click.option("--compression", type=click.Choice(CODECS), default=DEFAULT_CODEC,
              show_default=True,
              help="Parquet codec of the files written: zstd (level 1) is about as small as "
                   "gzip or brotli at a sixth of brotli's time; lz4 and snappy encode about 25% "
                   "faster into files about 1.25x larger; gzip and brotli are 6-25x slower "
                   "(a 1.2M-row file of the benchmark's rows).")
@click.option("--cpus", type=click.FloatRange(min=1), default=None,
              help="CPUs the round's runtime schedules its tasks and actors on (a local one, "
                   "or a new local Ray instance; default: this machine's). A cluster joined "
                   "with --address has its own.")
@click.option("--memory", type=Size(MIN_TASK_MEMORY, "a round's runtime needs at least"),
              default=None,
              help="Memory the round's runtime schedules tasks and actors within, e.g. 8GiB "
                   "(at least 64MiB; default: this machine's): tasks ask for what their input "
                   "needs, and "
                   "wait for room (one asking for more than this gets all of it, alone). "
                   "A budget for scheduling, not a limit the processes are held to.")
@click.option("--dry-run", is_flag=True, help="Print the plan and change nothing.")
def compact(session: Session, url: str, partition: dict[str, str] | None, backend: str | None,
            address: str | None, target_file_size: int, buckets: int | None, rebase: bool,
            compression: str, cpus: float | None, memory: int | None, dry_run: bool) -> None:
    """Fold a partition's pending deltas into its compacted state (one round).

    Shows a progress bar per pipeline step on a terminal (log lines otherwise) and ends with a
    summary: rows in/out, deletes, files written vs referenced in place, bytes, time and peak
    memory per step. Exits 3 if another round committed first (nothing is committed then).

    \b
    Examples:
      compactor compact ./orders --dry-run
      compactor compact s3://lake/orders -p day=2024-05-01 --backend ray --address auto \\
          --target-file-size 512MB
    """
    from runtime.api import ADDRESS_BACKENDS, BACKENDS, ENV_BACKEND, backend_name

    if (cpus is not None or memory is not None) and address:
        raise click.UsageError("--cpus and --memory size the runtime a round starts; the "
                               f"cluster at --address {address} has its own")
    chosen = backend_name(backend)
    if chosen not in BACKENDS:  # (--backend's choices are checked; the environment's not)
        raise click.UsageError(f"${ENV_BACKEND}={chosen!r} is not a runtime backend: choose "
                               f"{' or '.join(BACKENDS)}")
    if address and chosen not in ADDRESS_BACKENDS:
        raise click.UsageError(f"--address {address} joins a Ray cluster: add --backend ray "
                               f"(the {chosen} runtime takes no address)")
    table = session.open_table(url)
    part = session.partition(table, partition, existing=True)
    if dry_run:
        from compactor.pipeline.plan import NothingToDo, plan_round, round_work

        try:
            round_work(table, part, buckets, rebase)  # before a cluster is joined for its size
            plan = plan_round(table, part, target_file_size=target_file_size,
                              bucket_count=buckets, rebase=rebase,
                              groups=_groups(backend, address, cpus), compression=compression)
        except NothingToDo as e:
            message = str(e)
            session.emit({"table": table.url, "partition": str(part.key), "dry_run": True,
                          "nothing_to_do": True, "message": message},
                         lambda out: out.print(f"nothing to do: {message}"))
            return
        info = plan_info(table, part, plan, target_file_size)
        session.emit(info, lambda out: render_plan(info, out))
        return
    result = run_round(session, table, part, target_file_size=target_file_size,
                       bucket_count=buckets, rebase=rebase, compression=compression,
                       backend=backend, address=address, num_cpus=cpus, memory=memory)
    session.emit(result.to_dict(), lambda out: render_result(result, out))
