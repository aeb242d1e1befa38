"""The engines compared, each run in a process of its own (see runner.py) on one dataset.

An engine computes the partition's current state (newest row per key by ``lsn``, deletes
dropped, written as Parquet) for a round:

- ``full``: the base and every delta of the full round;
- ``incremental``: the state after one more delta (``Dataset.incremental``).

and returns, per round it runs, ``seconds`` and ``peak_bytes`` of the timed part only (process
start, imports, runtime start-up and checksums are outside it) and the ``checksum`` of what it
wrote. The floor merges nothing: it reads every input file and writes it back, the I/O and
Parquet decode/encode any engine pays, so its output is only counted, not compared.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from cdc_data import OP_COLUMN, ORDER_COLUMN, Dataset
from measure import checksum, measured

Round = dict[str, Any]


@dataclass(frozen=True)
class Job:
    """What a worker process is asked to do: run ``engine`` on ``dataset`` writing under ``out``."""

    engine: str
    dataset: Dataset
    out: str  # an empty directory the engine owns for this run
    cores: int
    target_file_size: int
    buckets: int
    compression: str = "snappy"

    def to_dict(self) -> dict[str, Any]:
        return {"engine": self.engine, "dataset": self.dataset.to_dict(), "out": self.out,
                "cores": self.cores, "target_file_size": self.target_file_size,
                "buckets": self.buckets, "compression": self.compression}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        return cls(d["engine"], Dataset.from_dict(d["dataset"]), d["out"], d["cores"],
                   d["target_file_size"], d["buckets"], d.get("compression", "snappy"))

    def checksum(self, paths: Sequence[str]) -> dict[str, int]:
        ds = self.dataset
        return checksum(paths, ds.schema(), ds.key_columns, ORDER_COLUMN)


def _sql_list(paths: Sequence[str]) -> str:
    return "[" + ", ".join(f"'{p}'" for p in paths) + "]"


def latest_rows_sql(base: Sequence[str], deltas: Sequence[str], keys: Sequence[str]) -> str:
    """DuckDB: the current state of base + deltas, as a user would write it (a window query)."""
    parts = [f"SELECT *, 'U' AS \"{OP_COLUMN}\" FROM read_parquet({_sql_list(base)})"]
    if deltas:
        parts.append(f"SELECT * FROM read_parquet({_sql_list(deltas)})")
    by = ", ".join(f'"{k}"' for k in keys)
    return f"""
        SELECT * EXCLUDE ("{OP_COLUMN}", _rn) FROM (
          SELECT *, row_number() OVER (PARTITION BY {by} ORDER BY "{ORDER_COLUMN}" DESC) AS _rn
          FROM ({" UNION ALL BY NAME ".join(parts)})
        ) WHERE _rn = 1 AND "{OP_COLUMN}" <> 'D'
    """


def run_floor(job: Job) -> dict[str, Round]:
    ds = job.dataset
    out = Path(job.out)

    def copy(i_path: tuple[int, str]) -> None:
        i, path = i_path
        pq.write_table(pq.read_table(path), out / f"{i:05d}.parquet")

    full: Round = {}
    with measured(full), ThreadPoolExecutor(job.cores) as pool:
        list(pool.map(copy, enumerate(ds.inputs)))
    rows = sum(pq.ParquetFile(p).metadata.num_rows for p in sorted(map(str, out.iterdir())))
    full["checksum"] = {"rows": rows}
    return {"full": full}


def run_duckdb(job: Job) -> dict[str, Round]:
    """Full round; the incremental round is a recompute over every input (a batch engine's way)."""
    import duckdb

    ds = job.dataset
    con = duckdb.connect()
    con.execute(f"SET threads TO {job.cores}")
    rounds: dict[str, Round] = {}
    for name, deltas in (("full", ds.deltas), ("incremental", (*ds.deltas, ds.incremental))):
        path = f"{job.out}/{name}.parquet"
        rounds[name] = {}
        with measured(rounds[name]):
            con.execute(f"COPY ({latest_rows_sql(ds.base, deltas, ds.key_columns)}) "
                        f"TO '{path}' (FORMAT parquet)")
        rounds[name]["checksum"] = job.checksum([path])
    return rounds


def run_polars(job: Job) -> dict[str, Round]:
    import polars as pl

    ds = job.dataset
    base = pl.scan_parquet(list(ds.base)).with_columns(pl.lit("U").alias(OP_COLUMN))
    frames = [base, pl.scan_parquet(list(ds.deltas))] if ds.deltas else [base]
    current = (pl.concat(frames, how="diagonal_relaxed")
               .sort(ORDER_COLUMN)
               .unique(subset=list(ds.key_columns), keep="last")
               .filter(pl.col(OP_COLUMN) != "D")
               .drop(OP_COLUMN))
    path = f"{job.out}/full.parquet"
    full: Round = {}
    with measured(full):
        current.sink_parquet(path, compression="snappy")  # what DuckDB and the floor write
    full["checksum"] = job.checksum([path])
    return {"full": full}


def _compactor(job: Job, backend: str) -> dict[str, Round]:
    """Full round, then one more delta compacted incrementally by the same warm service."""
    import runtime
    from compactor import CdcOps, DeltaKind, create_table
    from compactor.compaction import compact_partition
    from compactor.pipeline.tasks import PRELOAD, warm_up

    ds = job.dataset
    table = create_table(f"file://{job.out}/table", ds.schema(), primary_key=ds.key_columns,
                         ordering_column=ORDER_COLUMN, bucket_count=job.buckets)
    part = table.partition()
    start = time.perf_counter()
    part.register(ds.base)
    for f in ds.deltas:
        part.register([f], kind=DeltaKind.CDC, cdc=CdcOps(OP_COLUMN))
    register_s = time.perf_counter() - start

    def compacted_files() -> list[str]:
        state = part.snapshot().compacted
        return [f.url.removeprefix("file://") for f in state.files] if state else []

    rounds: dict[str, Round] = {}
    start = time.perf_counter()
    with runtime.init(backend, num_cpus=job.cores, preload=PRELOAD):
        # the workers start and import the pipeline (pyarrow, numpy) before the clock starts,
        # as DuckDB and pyarrow are imported before theirs does: "init" reports that time (the
        # full round still starts its dedupe actors' processes: on the local backend, forks of
        # its zygote, which imported the pipeline at init)
        runtime.get([warm_up.remote() for _ in range(job.cores)])
        init_s = time.perf_counter() - start
        for name in ("full", "incremental"):
            if name == "incremental":
                part.register([ds.incremental], kind=DeltaKind.CDC, cdc=CdcOps(OP_COLUMN))
            r: Round = {}
            rounds[name] = r
            with measured(r):
                result = compact_partition(table, part, target_file_size=job.target_file_size,
                                           compression=job.compression)
            r["checksum"] = job.checksum(compacted_files())
            r.update(steps=result.step_seconds, bytes_written=result.bytes_written,
                     bytes_referenced=result.bytes_referenced, files_written=result.files_written,
                     files_referenced=result.files_referenced)
    rounds["full"].update(init_seconds=init_s, register_seconds=register_s)
    return rounds


def run_compactor_local(job: Job) -> dict[str, Round]:
    return _compactor(job, "local")


def run_compactor_ray(job: Job) -> dict[str, Round]:
    return _compactor(job, "ray")


def _delta_base(job: Job) -> Path:
    """A Delta table holding the state after the full round, built once per dataset (untimed)."""
    import duckdb
    from deltalake import write_deltalake

    ds = job.dataset
    built = Path(ds.root) / "delta-base"
    if not built.exists():
        tmp = built.with_name("delta-base.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        con = duckdb.connect()
        reader = con.sql(latest_rows_sql(ds.base, ds.deltas, ds.key_columns)).to_arrow_reader()
        write_deltalake(str(tmp), reader)
        con.close()
        tmp.rename(built)
    return built


def run_delta_rs(job: Job) -> dict[str, Round]:
    """MERGE of the incremental delta (its newest row per key) into the full round's state."""
    import duckdb
    from deltalake import DeltaTable

    ds = job.dataset
    path = Path(job.out) / "delta"
    shutil.copytree(_delta_base(job), path)
    keys = ", ".join(f'"{k}"' for k in ds.key_columns)
    newest = f"""
        SELECT * EXCLUDE ("{OP_COLUMN}"), "{OP_COLUMN}" = 'D' AS _deleted
        FROM read_parquet('{ds.incremental}')
        QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY "{ORDER_COLUMN}" DESC) = 1
    """
    columns = {f.name: f"s.{f.name}" for f in ds.schema()}
    on = " AND ".join(f"t.{k} = s.{k}" for k in ds.key_columns)
    con = duckdb.connect()
    inc: Round = {}
    with measured(inc):
        source = con.sql(newest).to_arrow_table()
        metrics = (DeltaTable(str(path))
                   .merge(source, on, source_alias="s", target_alias="t")
                   .when_matched_delete(predicate="s._deleted")
                   .when_matched_update(updates=columns, predicate="NOT s._deleted")
                   .when_not_matched_insert(updates=columns, predicate="NOT s._deleted")
                   .execute())
    inc["checksum"] = job.checksum(DeltaTable(str(path)).file_uris())
    inc["merge_metrics"] = metrics
    return {"incremental": inc}


@dataclass(frozen=True)
class Engine:
    name: str
    labels: dict[str, str]  # round -> what the engine does in it (the rounds it runs)
    run: Callable[[Job], dict[str, Round]]
    requires: str | None = None  # a module that must be importable

    def installed(self) -> bool:
        return self.requires is None or importlib.util.find_spec(self.requires) is not None


ENGINES = {e.name: e for e in (
    Engine("duckdb", {"full": "DuckDB window query",
                      "incremental": "DuckDB recompute (all input)"}, run_duckdb),
    Engine("floor", {"full": "I/O floor (pyarrow rewrite)"}, run_floor),
    Engine("polars", {"full": "Polars (sort + unique)"}, run_polars, "polars"),
    Engine("compactor", {"full": "compactor full (local)",
                         "incremental": "compactor incremental (local)"}, run_compactor_local),
    Engine("compactor-ray", {"full": "compactor full (Ray)",
                             "incremental": "compactor incremental (Ray)"}, run_compactor_ray,
           "ray"),
    Engine("delta-rs", {"incremental": "delta-rs MERGE"}, run_delta_rs, "deltalake"),
)}
REFERENCE = "duckdb"  # always run: its output is what every other engine is checked against


def run_job(job: Job) -> dict[str, Round]:
    os.makedirs(job.out, exist_ok=True)
    return ENGINES[job.engine].run(job)
