"""``compactor read``: export a partition's compacted state as Parquet files."""

from __future__ import annotations

import click
from fsspec.implementations.local import LocalFileSystem
from rich.console import Console

from compactor.cli.common import CommandError, Session, command, partition_option
from compactor.units import format_size


@command("read")
@click.argument("url")
@partition_option()
@click.option("--to", "destination", required=True, metavar="DIR|s3://...",
              help="Where to write the Parquet files: a new or empty directory or prefix.")
@click.option("--version", type=click.IntRange(min=1), default=None,
              help="Read as of this commit (default: the newest).")
@click.option("--rows-per-file", type=click.IntRange(min=1), default=1_000_000,
              show_default=True, help="Rows per Parquet file written.")
def read(session: Session, url: str, partition: dict[str, str] | None, destination: str,
         version: int | None, rows_per_file: int) -> None:
    """Export the current (compacted) state of a partition as Parquet files.

    Writes part-00000.parquet, part-00001.parquet, ... with the table's schema (with
    --version N, the columns the table had for that version). Deltas above
    the high watermark are not folded in: run compactor compact first to include them.

    \b
    Examples:
      compactor read ./demo-table/orders --to ./orders-now
      compactor read s3://lake/orders -p day=2024-05-01 --to s3://exports/orders-2024-05-01/
    """
    import pyarrow.parquet as pq

    from compactor.pipeline.materialize import conform
    from compactor.reader import read_partition

    table = session.open_table(url)
    part = session.partition(table, partition, existing=True)
    fs, root = session.filesystem(destination)
    root = root.rstrip("/")
    if fs.exists(root):
        existing = fs.find(root) if fs.isdir(root) else [root]
        if existing:
            raise CommandError(
                f"destination {destination} is not empty ({fs.unstrip_protocol(existing[0])} "
                "exists); choose a new or empty location")
    snap = part.snapshot(version)
    data = read_partition(table, part, version=snap.version)
    if version is None:  # the newest state: with the table's columns, as every partition's
        data = conform(data, table.schema, f"partition {part.key} of {table.url}")
    if snap.deltas:
        session.note(f"note: {len(snap.deltas)} deltas above the high watermark are not "
                     "included (run compactor compact first)")
    files = []
    if isinstance(fs, LocalFileSystem):
        fs.makedirs(root, exist_ok=True)
    for n, start in enumerate(range(0, max(data.num_rows, 1), rows_per_file)):
        path = f"{root}/part-{n:05d}.parquet"
        with fs.open(path, "wb") as f:
            pq.write_table(data.slice(start, rows_per_file), f, compression="zstd")
        files.append({"url": fs.unstrip_protocol(path),
                      "rows": min(rows_per_file, data.num_rows - start),
                      "bytes": fs.size(path)})
    result = {"table": table.url, "partition": str(part.key), "version": snap.version,
              "rows": data.num_rows, "files": files}

    def render(out: Console) -> None:
        size = sum(f["bytes"] for f in files)
        out.print(f"wrote {data.num_rows:,} rows of partition {part.key} (commit {snap.version}) "
                  f"to {len(files)} file(s) under {fs.unstrip_protocol(root)} "
                  f"({format_size(size)})")

    session.emit(result, render)
