"""``compactor table create``: define a table (key, ordering, partitioning, schema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click
import pyarrow as pa
from rich.console import Console
from rich.table import Table as RichTable

from compactor.cli.common import Session, command, styled, timestamp
from compactor.cli.params import Columns, SchemaText
from compactor.pipeline.locators import MAX_BUCKETS

if TYPE_CHECKING:
    from compactor import Table


@click.group("table")
def table_group() -> None:
    """Create tables."""


def table_info(table: Table) -> dict[str, Any]:
    meta = table.metadata
    return {
        "url": table.url, "table_id": meta.table_id, "metadata_version": meta.version,
        "schema": [{"name": f.name, "type": str(f.type), "nullable": f.nullable}
                   for f in meta.schema],
        "primary_key": list(meta.primary_key), "ordering_column": meta.ordering_column,
        "partition_by": list(meta.partition_by), "bucket_count": meta.bucket_count,
        "hash_algorithm": meta.hash_algorithm, "created_at": timestamp(meta.created_at),
    }


def render_table_info(info: dict[str, Any], out: Console) -> None:
    out.print(styled("table", "bold"), info["url"])
    out.print(f"  primary key {', '.join(info['primary_key'])}; ordering column "
              f"{info['ordering_column'] or '(none: stream order decides)'}; partitioned by "
              f"{', '.join(info['partition_by']) or '(not partitioned)'}; "
              f"new partitions in {info['bucket_count']} buckets ({info['hash_algorithm']})")
    columns = RichTable("column", "type", "nullable", box=None, padding=(0, 2))
    for f in info["schema"]:
        columns.add_row(f["name"], f["type"], "yes" if f["nullable"] else "no")
    out.print(columns)


def _schema_from(session: Session, url: str, drop: tuple[str, ...]) -> pa.Schema:
    import pyarrow.parquet as pq

    from compactor import files
    from compactor.errors import CorruptFile, MissingFile

    fs, path = session.filesystem(url)
    try:
        with fs.open(path, "rb") as f, pq.ParquetFile(f) as parquet:
            schema = files.arrow_schema(parquet)  # (as registering the file reads it)
    except FileNotFoundError:
        raise MissingFile(f"schema file {url} does not exist") from None
    except (pa.ArrowException, ValueError) as e:
        raise CorruptFile(f"schema file {url} is not valid Parquet ({e})") from None
    unknown = [c for c in drop if c not in schema.names]
    if unknown:
        raise click.BadParameter(f"schema file {url} has no column {unknown[0]!r}",
                                 param_hint="--drop-column")
    return pa.schema([f for f in schema if f.name not in drop])


@command("create", group=table_group)
@click.argument("url")
@click.option("--primary-key", "-k", type=Columns(), required=True,
              help="Primary key column(s), comma separated.")
@click.option("--order-by", metavar="COL",
              help="Ordering column (e.g. an LSN or event time): the greatest value wins. "
                   "Without one, the latest delta wins.")
@click.option("--partition-by", type=Columns(), default=(),
              help="Partition column(s), comma separated.")
@click.option("--buckets", type=click.IntRange(min=1, max=MAX_BUCKETS), default=None,
              help=f"Hash buckets of a compacted partition (default 16, at most "
                   f"{MAX_BUCKETS}).")
@click.option("--schema-from", metavar="FILE.parquet",
              help="Take the schema from this Parquet file (local or s3://).")
@click.option("--drop-column", multiple=True, metavar="COL",
              help="With --schema-from: leave this column out (e.g. a CDC export's Op column). "
                   "Repeatable.")
@click.option("--schema", "schema_text", type=SchemaText(),
              help="The schema as NAME:TYPE pairs, e.g. 'id:int64 not null,v:string,lsn:int64'.")
def create(session: Session, url: str, primary_key: tuple[str, ...], order_by: str | None,
           partition_by: tuple[str, ...], buckets: int | None, schema_from: str | None,
           drop_column: tuple[str, ...], schema_text: pa.Schema | None) -> None:
    """Create an empty table at URL (a local path, file://, or s3://).

    Give the schema with --schema or take it from a Parquet file with --schema-from.

    \b
    Example:
      compactor table create s3://lake/orders --primary-key order_id --order-by lsn \\
          --partition-by day --schema-from s3://exports/orders/LOAD0001.parquet --drop-column Op
    """
    from compactor import create_table

    if (schema_from is None) == (schema_text is None):
        raise click.UsageError("give exactly one of --schema and --schema-from")
    if drop_column and schema_from is None:
        raise click.UsageError("--drop-column only applies to --schema-from")
    session.where = f"table {url}"
    schema = schema_text if schema_text is not None else _schema_from(
        session, schema_from, drop_column)  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {} if buckets is None else {"bucket_count": buckets}
    table = create_table(url, schema, primary_key=primary_key, ordering_column=order_by,
                         partition_by=partition_by,
                         storage_options=session.storage_options(url), **kwargs)
    info = table_info(table)

    def render(out: Console) -> None:
        out.print(styled("created", "green"), end=" ")
        render_table_info(info, out)

    session.emit(info, render)
