"""``compactor show`` (tables, partitions, pending deltas, compacted files, last round's metrics)
and ``compactor history`` (a partition's commit log)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console
from rich.table import Table as RichTable

from compactor.cli.append import delta_summary
from compactor.cli.common import Session, command, partition_option, styled, timestamp
from compactor.cli.table import render_table_info, table_info
from compactor.units import format_size

if TYPE_CHECKING:
    from compactor import CompactedState, Partition, Snapshot, Table


def _numbers(metrics: Mapping[str, float]) -> dict[str, int | float]:
    """A round's metrics (a commit stores them as floats), counts as integers."""
    return {k: int(v) if float(v).is_integer() else v for k, v in metrics.items()}


def _compacted_info(c: CompactedState, with_files: bool) -> dict[str, Any]:
    buckets = []
    for b, files in enumerate(c.buckets):
        bucket: dict[str, Any] = {"bucket": b, "files": len(files),
                                  "rows": sum(f.rows for f in files),
                                  "bytes": sum(f.size for f in files)}
        if with_files:
            bucket["file_list"] = [f.to_dict() for f in files]
        buckets.append(bucket)
    return {"position": c.position, "committed_at": timestamp(c.committed_at),
            "high_watermark": c.high_watermark, "files": len(c.files), "rows": c.rows,
            "bytes": c.size, "bucket_count": c.bucket_count, "hash_algorithm": c.hash_algorithm,
            "buckets": buckets, "metrics": _numbers(c.metrics)}


def partition_info(part: Partition, snap: Snapshot, with_files: bool = False) -> dict[str, Any]:
    return {
        "partition": str(part.key), "values": part.values, "version": snap.version,
        "high_watermark": snap.high_watermark,
        "pending": {"deltas": [delta_summary(d) for d in snap.deltas],
                    "rows": snap.pending_rows, "bytes": snap.pending_size},
        "compacted": None if snap.compacted is None else _compacted_info(snap.compacted,
                                                                        with_files),
    }


def _metric(name: str, value: float) -> str:
    if name.startswith("bytes_") or name.startswith("peak_rss"):
        return format_size(value)
    return f"{value:,.2f}" if name.startswith("seconds") else f"{value:,.0f}"


def render_partition(info: dict[str, Any], out: Console) -> None:
    """One partition in detail."""
    pending, c = info["pending"], info["compacted"]
    out.print(styled(f"partition {info['partition']}:", "bold"), f"commit {info['version']}, "
              f"high watermark {info['high_watermark']}")
    if pending["deltas"]:
        out.print(f"pending above the watermark: {len(pending['deltas'])} deltas, "
                  f"{pending['rows']:,} rows ({format_size(pending['bytes'])})")
        deltas = RichTable("position", "kind", "files", "rows", "bytes", "committed at",
                           box=None, padding=(0, 2))
        for d in pending["deltas"]:
            deltas.add_row(str(d["position"]), d["kind"], f"{d['files']:,}", f"{d['rows']:,}",
                           format_size(d["bytes"]), d["committed_at"])
        out.print(deltas)
    else:
        out.print("pending above the watermark: nothing")
    if c is None:
        out.print("compacted: never (run compactor compact)")
        return
    out.print(f"compacted at commit {c['position']} ({c['committed_at']}): {c['files']:,} files, "
              f"{c['rows']:,} rows ({format_size(c['bytes'])}) in {c['bucket_count']} buckets")
    buckets = RichTable("bucket", "files", "rows", "bytes", box=None, padding=(0, 2))
    for b in c["buckets"]:
        buckets.add_row(str(b["bucket"]), f"{b['files']:,}", f"{b['rows']:,}",
                        format_size(b["bytes"]))
        for f in b.get("file_list", []):
            buckets.add_row("", "", f"{f['rows']:,}", format_size(f["size"]), f["url"])
    out.print(buckets)
    if c["metrics"]:
        metrics = RichTable("last round", "", box=None, padding=(0, 2))
        for name, value in c["metrics"].items():
            metrics.add_row(name, _metric(name, value))
        out.print(metrics)


def render_partitions(infos: list[dict[str, Any]], out: Console) -> None:
    """Many partitions, one line each."""
    rows = RichTable("partition", "commit", "watermark", "pending deltas", "pending rows",
                     "compacted files", "compacted rows", "size", box=None, padding=(0, 2))
    for p in infos:
        c = p["compacted"]
        rows.add_row(p["partition"], str(p["version"]), str(p["high_watermark"]),
                     f"{len(p['pending']['deltas']):,}", f"{p['pending']['rows']:,}",
                     "-" if c is None else f"{c['files']:,}",
                     "-" if c is None else f"{c['rows']:,}",
                     "-" if c is None else format_size(c["bytes"]))
    out.print(rows)


def _table_view(session: Session, table: Table, values: Mapping[str, str] | None,
                with_files: bool) -> dict[str, Any]:
    # A partition named on the command line must exist; otherwise show the ones that do.
    parts = [session.partition(table, values, existing=True)] if values is not None \
        else table.partitions()
    infos = [partition_info(p, p.snapshot(), with_files) for p in parts]
    return {"table": table_info(table), "partitions": infos,
            "detail": values is not None or not table.partition_by}


def _render_table_view(view: dict[str, Any], out: Console) -> None:
    render_table_info(view["table"], out)
    if not view["partitions"]:
        out.print("no partitions yet (run compactor append)")
    elif view["detail"]:
        for info in view["partitions"]:
            render_partition(info, out)
    else:
        render_partitions(view["partitions"], out)


@command("show")
@click.argument("url")
@partition_option()
@click.option("--files", "with_files", is_flag=True, help="List every compacted file.")
def show(session: Session, url: str, partition: dict[str, str] | None, with_files: bool) -> None:
    """Show the table at URL: schema, partitions, pending deltas, compacted files and the last
    round's metrics. If URL holds no table, show every table directly under it.

    \b
    Examples:
      compactor show ./demo-table/orders
      compactor show s3://lake/orders -p day=2024-05-01 --files --json
    """
    from compactor import list_tables
    from compactor.errors import TableNotFound

    try:
        table = session.open_table(url)
    except TableNotFound:
        urls = list_tables(url, storage_options=session.storage_options(url))
        if not urls or partition is not None:
            raise
        views = [_table_view(session, session.open_table(u), None, with_files) for u in urls]

        def render_all(out: Console) -> None:
            for view in views:
                _render_table_view(view, out)
                out.print()

        session.emit({"tables": views}, render_all)
        return
    view = _table_view(session, table, partition, with_files)
    session.emit(view, lambda out: _render_table_view(view, out))


def _entry_info(number: int, entry: Mapping[str, Any]) -> dict[str, Any]:
    from compactor import CompactedState, Delta

    if entry.get("kind") == "delta":
        return {"commit": number, "type": "delta",
                **delta_summary(Delta.from_dict(entry["delta"]))}
    state = CompactedState.from_dict(entry["compaction"])
    return {"commit": number, "type": "compaction",
            "committed_at": timestamp(state.committed_at),
            "high_watermark": state.high_watermark, "bucket_count": state.bucket_count,
            "files": len(state.files), "rows": state.rows, "bytes": state.size,
            "metrics": _numbers(state.metrics)}


def _render_history(view: dict[str, Any], out: Console) -> None:
    out.print(styled("history", "bold"), f"of partition {view['partition']} of {view['table']} "
              f"(head: commit {view['head']})")
    rows = RichTable("commit", "committed at", "what", "files", "rows", "bytes", box=None,
                     padding=(0, 2))
    for e in view["commits"]:
        if e["type"] == "delta":
            what = f"{e['kind']} delta"
            if e["cdc"]:
                what += f" (op column {e['cdc']['column']})"
        else:
            m = e["metrics"]
            what = (f"compaction to watermark {e['high_watermark']}, {e['bucket_count']} "
                    f"buckets: {m.get('files_written', 0):,.0f} files written, "
                    f"{m.get('files_referenced', 0):,.0f} referenced")
        rows.add_row(str(e["commit"]), e["committed_at"], what, f"{e['files']:,}",
                     f"{e['rows']:,}", format_size(e["bytes"]))
    out.print(rows)


@command("history")
@click.argument("url")
@partition_option()
@click.option("--limit", type=click.IntRange(min=1), default=None,
              help="Only the newest N commits.")
def history(session: Session, url: str, partition: dict[str, str] | None,
            limit: int | None) -> None:
    """Show a partition's commit log: every delta and compaction, oldest first.

    \b
    Example:
      compactor history s3://lake/orders -p day=2024-05-01 --limit 20
    """
    table = session.open_table(url)
    part = session.partition(table, partition, existing=True)
    head = part.version()
    start = 1 if limit is None else max(1, head - limit + 1)
    entries = part.log.read_from(start, head)
    view = {"table": table.url, "partition": str(part.key), "head": head,
            "commits": [_entry_info(n, e) for n, e in enumerate(entries, start)]}
    session.emit(view, lambda out: _render_history(view, out))
