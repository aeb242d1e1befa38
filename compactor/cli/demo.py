"""``compactor demo``: the whole job on a realistic CDC table, on this machine, in seconds.

It plays both sides: a database export (a full load plus CDC files with ``Op`` I/U/D and an LSN,
as AWS DMS writes them) and the compactor (register the files in place, compact, compact again
incrementally, verify independently, show).
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from rich.console import Console

from compactor.cli.append import delta_summary
from compactor.cli.common import EXIT_FAILURE, CommandError, Session, command, styled
from compactor.cli.compact import render_result, run_round
from compactor.cli.params import Size
from compactor.cli.show import partition_info, render_partition
from compactor.cli.verify import check_partition, render_report

if TYPE_CHECKING:
    from compactor import Partition
    from compactor.result import CompactionResult

MARKER = ".compactor-demo"
STATUSES = np.array(["pending", "paid", "packed", "shipped", "delivered", "returned"])
SCHEMA = pa.schema([
    pa.field("order_id", pa.int64(), nullable=False),
    ("customer_id", pa.int64()),
    ("status", pa.string()),
    ("amount", pa.float64()),
    ("updated_at", pa.timestamp("us", tz="UTC")),
    ("lsn", pa.int64()),
])
_EPOCH_US = 1_714_521_600 * 10**6  # 2024-05-01T00:00:00Z


class Export:
    """Writes a DMS-like export: one full-load file, then CDC files, LSNs ever increasing."""

    def __init__(self, directory: Path, seed: int = 7) -> None:
        self.directory = directory
        self.rng = np.random.default_rng(seed)
        self.lsn = 0
        self.next_id = 1
        self.live: np.ndarray = np.empty(0, dtype=np.int64)  # keys inserted, not deleted

    def _rows(self, ids: np.ndarray, op: np.ndarray | None) -> pa.Table:
        n = len(ids)
        lsn = np.arange(self.lsn + 1, self.lsn + 1 + n, dtype=np.int64)
        self.lsn += n
        columns: dict[str, Any] = {} if op is None else {"Op": op}
        columns.update({
            "order_id": ids,
            "customer_id": self.rng.integers(1, 50_000, n),
            "status": self.rng.choice(STATUSES, n),
            "amount": np.round(self.rng.gamma(2.0, 40.0, n), 2),
            "updated_at": pa.array(_EPOCH_US + lsn * 1_000, pa.timestamp("us", tz="UTC")),
            "lsn": lsn,
        })
        fields = ([pa.field("Op", pa.string())] if op is not None else []) + list(SCHEMA)
        return pa.table(columns, schema=pa.schema(fields))

    def _write(self, name: str, data: pa.Table) -> Path:
        path = self.directory / name
        pq.write_table(data, path, row_group_size=64 * 1024)
        return path

    def full_load(self, rows: int) -> Path:
        ids = np.arange(self.next_id, self.next_id + rows, dtype=np.int64)
        self.next_id += rows
        self.live = ids
        return self._write("LOAD00000001.parquet", self._rows(ids, None))

    def changes(self, name: str, rows: int, *, recent: bool = False) -> Path:
        """A CDC file: 30% inserts of new keys and 60% updates of live keys (with ``recent``,
        of the newest keys), some keys updated more than once; then 10% deletes."""
        inserts, deletes = int(rows * 0.3), int(rows * 0.1)
        pool = self.live[-max(rows, 1):] if recent else self.live
        new = np.arange(self.next_id, self.next_id + inserts, dtype=np.int64)
        self.next_id += inserts
        updated = self.rng.choice(pool, rows - inserts - deletes)
        deleted = self.rng.choice(pool, deletes, replace=False)
        shuffled = self.rng.permutation(inserts + len(updated))
        ids = np.concatenate([np.concatenate([new, updated])[shuffled], deleted])
        op = np.concatenate([np.array(["I"] * inserts + ["U"] * len(updated))[shuffled],
                             np.full(deletes, "D")])
        self.live = np.setdiff1d(np.concatenate([self.live, new]), deleted)
        return self._write(name, self._rows(ids, op))


def _prepare(directory: Path) -> None:
    if directory.exists():
        if (directory / MARKER).exists():
            shutil.rmtree(directory)
        elif directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
        else:
            raise CommandError(
                f"directory {directory} exists and is not a compactor demo directory; "
                "choose another DIR")
    (directory / "exports").mkdir(parents=True)
    (directory / MARKER).write_text("written by `compactor demo`; rerunning it replaces this\n")


def _step(session: Session, text: str) -> None:
    if not session.json:
        session.out.print(styled(">", "bold cyan"), text)


@command("demo")
@click.argument("directory", metavar="[DIR]", default="demo-table",
                type=click.Path(file_okay=False, path_type=Path))
@click.option("--rows", type=click.IntRange(min=1000), default=200_000, show_default=True,
              help="Rows of the full load.")
@click.option("--backend", type=click.Choice(["local", "ray"]), default=None,
              help="Runtime (default: $COMPACTOR_BACKEND, else local).")
@click.option("--target-file-size", type=Size(), default="64KiB", show_default=True,
              help="Compacted file size (small, so the incremental round can reference files).")
def demo(session: Session, directory: Path, rows: int, backend: str | None,
         target_file_size: int) -> None:
    """Run the whole job on a generated CDC table in DIR (default ./demo-table).

    Writes a DMS-style export (a full load of orders, then CDC files with Op I/U/D and an
    LSN), creates a table keyed by order_id and ordered by lsn, registers the files in place,
    compacts, appends more changes and compacts incrementally, verifies the result with
    DuckDB, and shows the table. Rerunning it replaces DIR (only if an earlier demo wrote it).

    \b
    Example:
      compactor demo && compactor show demo-table/orders
    """
    import runtime
    from compactor import CdcOps, DeltaKind, create_table
    from compactor.pipeline.tasks import PRELOAD

    directory = directory.absolute()
    session.where = f"demo directory {directory}"
    _prepare(directory)
    export = Export(directory / "exports")
    table_url = str(directory / "orders")
    _step(session, f"writing a DMS-style export of {rows:,} orders and 3 CDC files under "
                   f"{directory / 'exports'}")
    load = export.full_load(rows)
    changes = [export.changes(f"2024050{d}-000000000.parquet", rows // 10) for d in (1, 2, 3)]

    table = create_table(table_url, SCHEMA, primary_key=["order_id"], ordering_column="lsn",
                         bucket_count=8)
    part = table.partition()
    cdc = CdcOps("Op", upsert=("I", "U"), delete=("D",))
    deltas = [part.register([load.as_uri()], kind=DeltaKind.UPSERT)]
    deltas += [part.register([c.as_uri()], kind=DeltaKind.CDC, cdc=cdc) for c in changes]
    _step(session, f"created table {table_url} (key order_id, ordering column lsn) and "
                   f"registered {len(deltas)} deltas in place, "
                   f"{sum(d.rows for d in deltas):,} rows")

    rounds: list[CompactionResult] = []
    with runtime.init(backend, preload=PRELOAD):
        _step(session, "compaction round 1: every delta so far")
        rounds.append(_round(session, part, target_file_size))
        late = export.changes("20240504-000000000.parquet", rows // 50, recent=True)
        deltas.append(part.register([late.as_uri()], kind=DeltaKind.CDC, cdc=cdc))
        _step(session, f"round 2: one more CDC file ({deltas[-1].rows:,} changes to recent "
                       "orders) -- untouched files are referenced, not rewritten")
        rounds.append(_round(session, part, target_file_size))

    _step(session, "verify: DuckDB recomputes the state from all deltas and compares")
    report = check_partition(table, part)
    info = partition_info(part, part.snapshot())

    def render(out: Console) -> None:
        render_report(report, out)
        _step(session, "the table now")
        render_partition(info, out)
        _next_steps(out, table_url)

    session.emit({"directory": str(directory), "table": table_url,
                  "exports": [str(p) for p in [load, *changes, late]],
                  "deltas": [delta_summary(d) for d in deltas],
                  "rounds": [r.to_dict() for r in rounds], "verify": report,
                  "partition": info}, render)
    if not report["ok"]:
        sys.exit(EXIT_FAILURE)


def _round(session: Session, part: Partition, target_file_size: int) -> CompactionResult:
    result = run_round(session, part.table, part, target_file_size=target_file_size)
    if not session.json:
        render_result(result, session.out)
    return result


def _next_steps(out: Console, table_url: str) -> None:
    where = os.path.relpath(table_url)
    where = where if not where.startswith("..") else table_url
    out.print("\nTry:")
    for line in (f"compactor show {where} --files", f"compactor history {where}",
                 f"compactor verify {where}",
                 f"compactor read {where} --to {os.path.join(os.path.dirname(where), 'now')}"):
        out.print(f"  {line}")
