"""``compact_partition``: one compaction round of a partition, on the runtime.

Steps (one module each, see ``compactor.pipeline``): plan, hash_bucket, dedupe, materialize,
commit. A round that fails anywhere commits nothing; files it wrote are deleted (or, if that
fails too, stay unreferenced for ``gc``); running it again converges to the same state.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import replace
from typing import Any

import runtime
from compactor.errors import (
    CommitUnknown,
    InvalidTableSpec,
    TooManyFiles,
    commit_unknown,
    mark_commit_unknown,
    mark_committed,
)
from compactor.faults import maybe_fail
from compactor.manifest import DataFile
from compactor.partition import Partition
from compactor.pipeline import index_store, locators, output_size
from compactor.pipeline.dedupe import BucketPlan, GroupResult
from compactor.pipeline.materialize import (
    DEFAULT_CODEC,
    MaterializeOutput,
    files_per_bucket,
    group_sources,
    task_memory,
    write_options,
)
from compactor.pipeline.plan import (
    NothingToDo,
    RoundPlan,
    check_bucket_count,
    plan_round,
    round_work,
)
from compactor.pipeline.tasks import (
    PRELOAD,
    Dedupe,
    hash_task,
    materialize_task,
    peak_rss,
    tombstone_task,
    warm_up,
)
from compactor.result import CompactionResult
from compactor.table import Table

DEFAULT_TARGET_FILE_SIZE = 256 << 20
MERGE_ATTEMPTS = 3  # a dedupe actor that dies mid-fold restarts, reloads its index, folds again

# progress(step, tasks done, tasks in all, bytes done, bytes in all); bytes are those of the
# input files the step's tasks read (0 where a step reads no files)
Progress = Callable[[str, int, int, int, int], None]


def _quiet(step: str, done: int, total: int, bytes_done: int, bytes_total: int) -> None:
    pass


_GATHER_BATCH_FROM = 256  # pending refs from which _gather collects completions in batches
_GATHER_PAUSE = 0.05


def _gather(refs: list[Any], step: str, progress: Progress,
            sizes: list[int] | None = None) -> list[Any]:
    """Results in input order, reporting progress as they complete."""
    size_of = dict(zip(refs, sizes or [0] * len(refs), strict=True))
    bytes_total = sum(size_of.values())
    progress(step, 0, len(refs), 0, bytes_total)
    pending = list(refs)
    done = bytes_done = 0
    while pending:
        ready, pending = runtime.wait(pending, num_returns=1)
        if len(pending) > _GATHER_BATCH_FROM:
            # a wait looks at every ref it is given: thousands of tasks (a rebase from
            # thousands of buckets) taken one at a time cost N**2 (8,192: 33 s); gathered a
            # few times a second, not at each completion
            time.sleep(_GATHER_PAUSE)
            more, pending = runtime.wait(pending, num_returns=len(pending), timeout=0)
            ready += more
        done += len(ready)
        bytes_done += sum(size_of[r] for r in ready)
        runtime.get(ready)  # raise early on a failure
        progress(step, done, len(refs), bytes_done, bytes_total)
    return runtime.get(refs)


_round_locks: dict[str, threading.Lock] = {}
KEEP_WARM = 4  # partitions whose dedupe actors (and cached indexes) stay alive in a runtime
# actor-set name -> (handles, the memory each asked for, its partition's _round_locks key),
# least recently used first
_warm: OrderedDict[str, tuple[list[Any], int, str]] = OrderedDict()


def _round_key(table: Table, partition: Partition) -> str:
    return f"{table.metadata.table_id}:{partition.key}"


def _in_use(name: str) -> bool:
    """Whether a round of this process is compacting the partition of warm actor set
    ``name``."""
    lock = _round_locks.get(_warm[name][2])
    return lock is not None and lock.locked()


def _actors(table: Table, partition: Partition, plan: RoundPlan) -> list[Any]:
    """The round's dedupe actors: reused from earlier rounds in this runtime when alive.

    The actors of the ``KEEP_WARM`` most recently compacted partitions stay alive with their
    indexes; older ones are stopped, so a long-running scheduler's memory stays bounded.
    """
    total_memory = int(runtime.cluster_resources()["memory"])
    prefix = (f"dedupe:{table.metadata.table_id}:{partition.key}:{plan.bucket_count}:"
              f"{plan.groups}")
    for name in list(_warm):  # (those of a runtime since shut down)
        try:
            runtime.get_actor(f"{name}:0")
        except ValueError:
            del _warm[name]
    memory = _warm[prefix][1] if prefix in _warm else _actor_memory(plan, total_memory)
    # other partitions' actors go beyond KEEP_WARM partitions, or where this round's would not
    # fit beside them and a share left for tasks: least recently used first, those of
    # partitions no round of this process is compacting before the others (whose rounds then
    # fail and are retried; waiting for memory they never give back would hang)
    room = total_memory - total_memory // (plan.groups + 1) - plan.groups * memory
    while len(_warm) - (prefix in _warm) >= KEEP_WARM or \
            sum(len(h) * m for name, (h, m, _) in _warm.items() if name != prefix) > room:
        others = [name for name in _warm if name != prefix]
        _stop(min(others, key=lambda name: _in_use(name)))  # (stable: LRU among equals)
    handles = []
    for g in range(plan.groups):
        try:
            handles.append(runtime.get_actor(f"{prefix}:{g}"))
            continue
        except ValueError:
            pass
        handles.append(Dedupe.options(name=f"{prefix}:{g}", memory=memory).remote(
            table.storage, partition.key.dir, plan.group_buckets(g), plan.bucket_count,
            plan.order_type))
    _warm.pop(prefix, None)
    _warm[prefix] = (handles, memory, _round_key(table, partition))
    return handles


def _stop(name: str) -> None:
    """Stop a warm partition's dedupe actors (its index is reloaded when next needed)."""
    for handle in _warm.pop(name)[0]:
        try:
            runtime.kill(handle)
        except Exception:  # already gone, or a runtime since shut down
            pass


def _actor_memory(plan: RoundPlan, total_memory: int) -> int:
    """The memory each dedupe actor asks for: its share of the index, but the actors of a
    round together never the whole budget (tasks must still fit beside them)."""
    return min(plan.dedupe_memory, total_memory // (plan.groups + 1))


def _task_memory_cap() -> int:
    """The most a task may ask for and still be scheduled: the budget less what the dedupe
    actors kept alive hold (this round's, and other partitions' warm ones), which they keep
    while tasks run. A task asking for more would wait for ever; capped, it runs, alone if
    need be."""
    held = sum(len(handles) * memory for handles, memory, _ in _warm.values())
    return max(0, int(runtime.cluster_resources()["memory"]) - held)


def _fold(plan: RoundPlan, actors: list[Any], hash_refs: list[Any],
          progress: Progress) -> None:
    """Every actor folds the round's records into its index; an actor that dies meanwhile
    restarts, reloads its index and folds again (the records are still there)."""
    state = plan.base.position if plan.base is not None else None
    compacted = plan.snapshot.compacted
    prior = compacted.high_watermark if plan.rebuild and compacted is not None else None
    paths = index_store.paths_of(plan.base)
    sizes = {b: tuple(f.rows for f in files) for b, files in enumerate(plan.base.buckets)} \
        if plan.base else {}
    done = [False] * len(actors)
    for attempt in range(MERGE_ATTEMPTS):
        refs = {
            g: actors[g].fold.remote(
                state, None if paths is None else {b: paths[b] for b in plan.group_buckets(g)},
                sizes, g, hash_refs, prior)
            for g in range(len(actors)) if not done[g]
        }
        try:
            _gather(list(refs.values()), "dedupe", progress)
            return
        except runtime.ActorDiedError:
            if attempt == MERGE_ATTEMPTS - 1:
                raise
            for g, ref in refs.items():  # keep what finished; redo what died
                if not runtime.wait([ref], timeout=0)[0]:
                    continue
                try:
                    runtime.get(ref)
                    done[g] = True
                except runtime.ActorDiedError:
                    pass


def _cleanup(table: Table, written: list[DataFile], index_paths: list[str]) -> None:
    """Best effort: remove files of a round that did not commit."""
    fs = table.storage.fs
    for f in written:
        path = table.storage.strip(f.url)
        if path is not None:
            try:
                fs.rm_file(path)
            except OSError:
                pass
    for rel in index_paths:
        try:
            fs.rm_file(table.storage.path(rel))
        except OSError:
            pass


def compact_partition(
    table: Table,
    partition: Partition | Mapping[str, Any] | None = None,
    *,
    target_file_size: int = DEFAULT_TARGET_FILE_SIZE,
    bucket_count: int | None = None,
    rebase: bool = False,
    compression: str = DEFAULT_CODEC,
    backend: str | None = None,
    address: str | None = None,
    progress: Progress | None = None,
) -> CompactionResult:
    """Fold every delta above the partition's high watermark into its compacted state.

    Runs on the current runtime, or starts one (``backend``/``address``, default local) for the
    round; with nothing to do (no pending delta, no rebase), it returns before starting one.
    ``compression``: the Parquet codec of the files written (zstd, lz4, snappy, gzip,
    brotli or none). Raises the ``CompactorError`` of bad input (nothing committed),
    ``CommitConflict`` if another round committed first.
    """
    if not isinstance(partition, Partition):
        partition = table.partition(partition)
    try:
        write_options(compression)
    except ValueError as e:
        raise InvalidTableSpec(f"partition {partition.key} of {table.url}: {e}") from None
    check_bucket_count(table, partition, bucket_count)  # before a runtime starts
    if table.url.startswith("memory://"):
        raise InvalidTableSpec(
            f"table {table.url}: a memory:// table lives in one process, and compaction runs in "
            "worker processes; use a file:// or s3:// table"
        )
    with ExitStack() as stack:
        if not runtime.is_initialized():
            idle = nothing_to_do(table, partition, bucket_count, rebase)
            if idle is not None:  # said before a runtime starts (Ray's takes seconds)
                return idle
            stack.enter_context(runtime.init(backend, address=address, preload=PRELOAD))
        # rounds of one partition in this process take turns: they share its dedupe actors
        lock = _round_locks.setdefault(_round_key(table, partition), threading.Lock())
        stack.enter_context(lock)
        try:
            return _round(table, partition, target_file_size, bucket_count, rebase,
                          compression, progress or _quiet)
        except index_store.IndexUnavailable as e:
            # the persisted index is gone or unreadable: rebuild it from the compacted files
            return _round(table, partition, target_file_size, bucket_count, rebase,
                          compression, progress or _quiet, rebuild=str(e))
    raise AssertionError("unreachable")  # pragma: no cover


def nothing_to_do(table: Table, partition: Partition, bucket_count: int | None = None,
                  rebase: bool = False) -> CompactionResult | None:
    """The result of a round that would find nothing to do, told from the partition's snapshot
    alone (no runtime needed); None if there is work. Raises as ``compact_partition`` would
    for a bucket count change without ``rebase``."""
    start = time.perf_counter()
    try:
        round_work(table, partition, bucket_count, rebase)
    except NothingToDo as e:
        return _idle(table, partition, e, start)
    return None


def _idle(table: Table, partition: Partition, reason: NothingToDo, start: float
          ) -> CompactionResult:
    snap = reason.snapshot
    hw = snap.high_watermark
    count = snap.compacted.bucket_count if snap.compacted else table.bucket_count
    return CompactionResult(table.url, str(partition.key), False, False, None, hw, hw, count, 0,
                            0, snap.compacted.rows if snap.compacted else 0, 0, 0, 0, 0, 0, 0,
                            0, 0, 0, time.perf_counter() - start, message=str(reason))


def _round(table: Table, partition: Partition, target_file_size: int,
           bucket_count: int | None, rebase: bool, compression: str, progress: Progress,
           rebuild: str = "") -> CompactionResult:
    """One round; ``rebuild``: why the index is rebuilt from the compacted files (none:
    it is not)."""
    start = time.perf_counter()
    seconds: dict[str, float] = {}
    rss: dict[str, int] = {}
    t = time.perf_counter()
    groups = max(1, math.floor(runtime.cluster_resources()["CPU"]))
    # workers import the pipeline while the driver reads footers (no need to wait for them)
    warm = [warm_up.remote() for _ in range(groups)]
    try:
        plan = plan_round(table, partition, target_file_size=target_file_size,
                          bucket_count=bucket_count, rebase=rebase, groups=groups,
                          rebuild=bool(rebuild), compression=compression)
    except NothingToDo as e:
        return _idle(table, partition, e, start)
    seconds["plan"], rss["plan"] = time.perf_counter() - t, peak_rss()
    del warm
    written: list[DataFile] = []
    new_index_paths: list[str] = []
    finalize_refs: list[Any] = []
    committing = False  # from the call that commits on, an interrupt may follow a commit
    actors = _actors(table, partition, plan)
    try:
        t = time.perf_counter()
        # (a task per core or more: each decodes on its own thread; fewer: in Arrow's threads)
        threads = len(plan.tasks) + len(plan.tombstones) < runtime.cluster_resources()["CPU"]
        args = (table.primary_key, table.ordering_column, plan.order_type, plan.bucket_count,
                plan.groups, threads)
        cap = _task_memory_cap()
        hash_refs = [hash_task.options(memory=min(cap, task.memory)).remote(
            table.storage, task.inputs, *args) for task in plan.tasks]
        old_state = plan.snapshot.compacted  # a rebuild's: its deletes, at its position
        hash_refs += [tombstone_task.remote(
            table.storage, list(chain), plan.order_type, plan.bucket_count, plan.groups,
            old_state.high_watermark, ordinal, plan.tombstones_tolerant)  # type: ignore[union-attr]
            for chain, ordinal in plan.tombstones]
        hashed = _gather(hash_refs, "hash_bucket", progress,
                         [t.size for t in plan.tasks] + [0] * len(plan.tombstones))
        seconds["hash_bucket"] = time.perf_counter() - t
        rss["hash_bucket"] = max((h.peak_rss for batch in hashed for h in batch), default=0)
        notes = [f"the index was rebuilt from the compacted files ({rebuild})"] if rebuild \
            else []
        notes += sorted({h.warning for batch in hashed for h in batch if h.warning})

        t = time.perf_counter()
        _fold(plan, actors, hash_refs, progress)
        # (an actor lost now fails the round)
        planned = [a.plan.remote(plan.small_ordinals(g)) for g, a in enumerate(actors)]
        # the records are folded in: freed as the actors plan (their peak memory; dropping
        # the driver's copies took 76 ms of a 20M-row round, which the actors no longer wait
        # for)
        del hash_refs, hashed
        merged = runtime.get(planned)
        seconds["dedupe"] = time.perf_counter() - t
        rss["dedupe"] = max(runtime.get([a.peak_rss.remote() for a in actors]))
        plans = {b: p for g in merged for b, p in g.plans.items()}

        t = time.perf_counter()
        cpus = runtime.cluster_resources()["CPU"]  # (now: a cluster may have grown since)
        tasks = group_sources(plan, plans, cpus)
        for b, n in files_per_bucket(plans, tasks, plan.rows_per_file).items():
            if n > locators.MAX_FILES_PER_BUCKET:
                raise TooManyFiles(
                    f"partition {partition.key} of {table.url}: bucket {b} would hold {n} "
                    f"files, more than {locators.MAX_FILES_PER_BUCKET}; raise the target file "
                    f"size ({plan.rows_per_file} rows per file now) or rebase to more buckets; "
                    "nothing was written")
        cap = _task_memory_cap()
        # costliest first: the step ends when its last task does, so the small ones fill in
        # (a rewritten file's row groups copied as bytes cost little: by rows, an incremental
        # round's task of them went first and one of decoded rows ran alone at the end)
        task_cost = [sum(s.cost for s in group) for group in tasks]
        by_cost = sorted(range(len(tasks)), key=lambda g: -task_cost[g])
        submitted = {g: materialize_task.options(
            memory=min(cap, task_memory(plan, tasks[g]))).remote(
                table.storage, partition.key, g, tasks[g], table.schema, plan.rows_per_file,
                compression, len(tasks) < cpus) for g in by_cost}
        mat_refs = [submitted[g] for g in range(len(tasks))]
        # the actors point the next index at the new files while the tasks write them
        ordinals = [[s.ordinal for s in group] for group in tasks]
        finalize_refs = [a.finalize.remote(ordinals, plan.rows_per_file) for a in actors]
        sizes = [sum(s.file.size for s in group) for group in tasks]
        # the rows to rewrite went to the tasks; the driver keeps what the commit needs
        del tasks
        plans = {b: replace(p, sources=()) for b, p in plans.items()}
        merged = [replace(g, plans={}) for g in merged]
        outputs: list[MaterializeOutput] = []
        for out in _gather(mat_refs, "materialize", progress, sizes):
            outputs.append(out)
            written.extend(f for files in out.written.values() for f in files)
            rss["materialize"] = max(rss.get("materialize", 0), out.peak_rss)
        seconds["materialize"] = time.perf_counter() - t
        t = time.perf_counter()
        index_paths_new: dict[int, list[str]] = {}
        for chains, files_written in runtime.get(finalize_refs):
            index_paths_new.update(chains)
            new_index_paths += files_written
        finalize_refs = []
        seconds["index"] = time.perf_counter() - t

        t = time.perf_counter()
        progress("commit", 0, 1, 0, 0)
        maybe_fail("commit")
        buckets, index_paths, referenced = _layout(plan, plans, outputs, index_paths_new)
        result_fields = _figures(plan, merged, outputs, referenced, buckets)
        committing = True
        state = partition.commit_compaction(
            plan.snapshot, high_watermark=plan.high_watermark, buckets=buckets,
            hash_algorithm=table.hash_algorithm,
            properties={index_store.PROPERTY: json.dumps(index_paths),
                        **output_size.recorded(
                            plan.snapshot.compacted, written, compression,
                            plan.file_row_bytes, result_fields["rows_out"])},
            metrics={k: float(v) for k, v in result_fields.items()},
        )
    except BaseException as e:
        for ref in finalize_refs:  # index files of a round that will not commit
            try:
                new_index_paths += runtime.get(ref, timeout=60)[1]
            except Exception:
                pass
        for a in actors:
            a.abort.remote()
        if committing and not isinstance(e, Exception):  # an interrupt, the commit under way
            mark_commit_unknown(e, f"the round's commit in partition {partition.key} of "
                                   f"{table.url} was being written when the process was "
                                   "interrupted: whether it was committed is unknown")
        # (a commit that may have landed names them: an interrupt while it was written too)
        if not isinstance(e, CommitUnknown) and commit_unknown(e) is None:
            _cleanup(table, written, new_index_paths)
        raise
    # committed: from here on nothing may clean the round's files up (a progress callback that
    # raises only stops the caller; the actors, not told, reload the index next round)
    try:
        progress("commit", 1, 1, 0, 0)
        try:
            runtime.get([a.commit.remote(state.position) for a in actors])
        except runtime.ActorDiedError:
            pass  # the round is committed; a restarted actor reloads the index next round
    except BaseException as e:  # (an interrupt, or the caller's progress: said, not undone)
        mark_committed(e, f"the round committed as commit {state.position} of partition "
                          f"{partition.key} of {table.url}")
        raise
    seconds["commit"], rss["commit"] = time.perf_counter() - t, peak_rss()
    return CompactionResult(
        table.url, str(partition.key), True, plan.rebuild, state.position,
        plan.snapshot.high_watermark, plan.high_watermark, plan.bucket_count,
        len(plan.snapshot.deltas), **result_fields,
        seconds=time.perf_counter() - start, step_seconds=seconds, step_peak_rss=rss,
        message="; ".join(notes),
    )


def _layout(plan: RoundPlan, plans: dict[int, BucketPlan], outputs: list[MaterializeOutput],
            new_index: dict[int, list[str]]
            ) -> tuple[list[list[DataFile]], list[list[str]], list[DataFile]]:
    """Per bucket: files kept in place + files written; the index path; the referenced files."""
    by_group = sorted(outputs, key=lambda o: o.group)
    old_paths = index_store.paths_of(plan.base) if plan.base is not None else None
    buckets: list[list[DataFile]] = []
    paths: list[list[str]] = []
    referenced: list[DataFile] = []
    for b in range(plan.bucket_count):
        old = list(plan.base.buckets[b]) if plan.base is not None else []
        kept = [old[i] for i in plans[b].keep] if b in plans else old
        buckets.append(kept + [f for o in by_group for f in o.written.get(b, ())])
        paths.append(new_index[b] if b in new_index else old_paths[b])  # type: ignore[index]
        referenced += kept
    return buckets, paths, referenced


def _figures(plan: RoundPlan, merged: list[GroupResult], outputs: list[MaterializeOutput],
             referenced: list[DataFile], buckets: list[list[DataFile]]) -> dict[str, int]:
    written = [f for o in outputs for files in o.written.values() for f in files]
    # buckets whose files changed: written to, or losing files (every row deleted)
    old = plan.base.buckets if plan.base is not None and \
        len(plan.base.buckets) == len(buckets) else [[] for _ in buckets]
    return {
        "rows_in": plan.rows_in,
        "rows_out": sum(g.keys for g in merged),
        "deletes_applied": sum(g.deleted for g in merged),
        "duplicates_dropped": sum(g.duplicates_dropped for g in merged),
        "files_read": sum(len(t.inputs) for t in plan.tasks)
        + sum(o.files_read for o in outputs),
        "bytes_read": plan.bytes_in + sum(o.bytes_read for o in outputs),
        "files_written": len(written),
        "bytes_written": sum(f.size for f in written),
        "files_referenced": len(referenced),
        "bytes_referenced": sum(f.size for f in referenced),
        "buckets_touched": sum(list(was) != now for was, now in zip(old, buckets, strict=True)),
        "rows_copied": sum(o.rows_copied for o in outputs),
        "small_files_merged": sum(len(files) for files in plan.small.values()),
    }
