"""``compactor verify``: recompute a partition's state independently and compare."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from compactor.cli.common import EXIT_FAILURE, Session, command, partition_option, styled

if TYPE_CHECKING:
    from compactor import Partition, Table


def check_partition(table: Table, part: Partition, limit: int = 20) -> dict[str, Any]:
    """Compare the compacted state with DuckDB's recomputation from every delta it folded in.

    Returns a report whose ``ok`` is False on any difference, or if a file the check needs
    (compacted or delta) is missing, changed since it was committed, or unreadable.
    """
    from compactor.cli.expected import ExpectedState, NotVerifiable
    from compactor.errors import CompactorError
    from compactor.reader import read_partition

    snap = part.snapshot()
    report: dict[str, Any] = {
        "table": table.url, "partition": str(part.key), "version": snap.version,
        "high_watermark": snap.high_watermark, "pending_deltas": len(snap.deltas),
    }
    if snap.compacted is None:
        return {**report, "ok": True, "note": "nothing compacted yet"}
    try:
        actual = read_partition(table, part, version=snap.version)
        engine = ExpectedState(table)
        engine.load(part.deltas(0, until=snap.high_watermark))
    except NotVerifiable:  # (not a failure of the partition: it cannot be checked)
        raise
    except CompactorError as e:
        return {**report, "ok": False, "error": str(e), "error_type": type(e).__name__}
    return {**report, **engine.compare(actual, limit).to_dict()}


def _plain(value: Any) -> str:
    return "null" if value is None else str(value)


def render_report(report: dict[str, Any], out: Console) -> None:
    where = f"partition {report['partition']} of {report['table']}"
    if report.get("error"):
        out.print(styled("FAILED", "red"), f"{where}: {report['error']}")
        return
    if report["ok"]:
        detail = report.get("note") or (
            f"{report['actual_rows']:,} rows match the {report['expected_rows']:,} expected "
            f"from the deltas up to the watermark {report['high_watermark']}")
        out.print(styled("OK", "green"), f"{where}: {detail}")
        return
    out.print(styled("FAILED", "red"), f"{where}: {report['actual_rows']:,} rows compacted, "
              f"{report['expected_rows']:,} expected; {report['missing']:,} keys missing, "
              f"{report['unexpected']:,} unexpected, {report['changed']:,} changed, "
              f"{report['duplicates']:,} duplicated")
    rows = RichTable("difference", "key", "expected", "actual", box=None, padding=(0, 2))
    for d in report["differences"]:
        key = ", ".join(f"{k}={_plain(v)}" for k, v in d["key"].items())
        if d["kind"] == "changed":
            expected = ", ".join(f"{c}={_plain(d['expected'][c])}" for c in d["columns"])
            actual = ", ".join(f"{c}={_plain(d['actual'][c])}" for c in d["columns"])
        elif d["kind"] == "duplicate":
            expected, actual = "1 row", f"{d['actual']['copies']} rows"
        else:
            expected = "present" if d["kind"] == "missing" else "absent"
            actual = "absent" if d["kind"] == "missing" else "present"
        rows.add_row(d["kind"], key, expected, actual)
    out.print(rows)


@command("verify")
@click.argument("url")
@partition_option()
@click.option("--limit", type=click.IntRange(min=1), default=20, show_default=True,
              help="Differing keys to list, per kind of difference.")
def verify(session: Session, url: str, partition: dict[str, str] | None, limit: int) -> None:
    """Check a partition's compacted state against an independent recomputation.

    DuckDB reads every delta folded into the compacted state straight from its Parquet files,
    keeps the newest row per key (ordering column, stream position, file order, row order),
    drops deletes, and compares the result with the compacted files row by row. Prints OK, or
    the differing keys and exits 1. A compacted or delta file that is missing or changed since
    it was committed is a failure too. What DuckDB cannot hold or read cannot be verified (an
    error, exit status 1): decimals of more than 38 digits, text that is not UTF-8, a file
    column named file_row_number.

    \b
    Example:
      compactor verify s3://lake/orders -p day=2024-05-01
    """
    table = session.open_table(url)
    part = session.partition(table, partition, existing=True)
    report = check_partition(table, part, limit)
    if not report["ok"]:  # (as every command's --json failure says it)
        report["exit_code"] = EXIT_FAILURE
    session.emit(report, lambda out: render_report(report, out))
    if not report["ok"]:
        if session.json:
            click.echo(f"error: verification of partition {part.key} of {table.url} failed",
                       err=True)
        sys.exit(EXIT_FAILURE)
