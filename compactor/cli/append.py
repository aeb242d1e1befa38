"""``compactor append``: commit Parquet files as one delta of a partition.

Files are referenced in place by default (nothing is copied: the commit records each file's
path, size, rows and fingerprint). ``--copy`` copies them under the table first, e.g. local
exports into an S3 table; copies of files the delta then refuses are removed again.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from compactor.cli.common import Session, command, partition_option, timestamp
from compactor.cli.params import OpValues
from compactor.units import format_size

if TYPE_CHECKING:
    from compactor import CdcOps, Delta, Partition

_COPY_THREADS = 8
_GLOB_CHARS = frozenset("*?[")


def _is_data_file(relative: str) -> bool:
    """Parquet files, skipping hidden and marker entries (``.x``, ``_SUCCESS``, ``_tmp/``)."""
    parts = relative.split("/")
    return parts[-1].lower().endswith(".parquet") and not any(
        p.startswith((".", "_")) for p in parts)


def expand_sources(session: Session, paths: Sequence[str]) -> list[str]:
    """URLs of the files ``paths`` name: files, directories (their ``*.parquet`` files,
    recursively) and globs, in command-line order, each directory or glob sorted by name."""
    from compactor.errors import MissingFile

    urls: list[str] = []
    for given in paths:
        fs, path = session.filesystem(given)
        if any(c in _GLOB_CHARS for c in path):
            matches = sorted(fs.glob(path, detail=True).items())
            found = [str(m) for m, info in matches if info.get("type") != "directory"]
            for d, _ in (m for m in matches if m[1].get("type") == "directory"):
                found += _directory_files(fs, str(d))
            if not found:
                raise MissingFile(f"no files match {given}")
        elif fs.isdir(path):
            found = _directory_files(fs, path)
            if not found:
                raise MissingFile(f"directory {given} holds no .parquet files")
        elif fs.exists(path):
            found = [path]
        else:
            raise MissingFile(f"file {given} does not exist")
        urls += [fs.unstrip_protocol(p) for p in found]
    return list(dict.fromkeys(urls))


def _directory_files(fs: Any, directory: str) -> list[str]:
    root = directory.rstrip("/")
    return sorted(p for p in fs.find(root) if _is_data_file(p[len(root) + 1:]))


def _cdc_ops(session: Session, first_file: str, column: str,
             values: tuple[tuple[str, ...], tuple[str, ...]] | None) -> CdcOps:
    """The CDC op mapping; op values are integers when the op column is an integer column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from compactor import CdcOps

    if values is None:
        return CdcOps(column)
    upsert, delete = values
    op_values: list[Any] = [*upsert, *delete]
    if all(v.lstrip("-").isdigit() for v in op_values):
        fs, path = session.filesystem(first_file)
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
        if column in schema.names and pa.types.is_integer(schema.field(column).type):
            both = sorted(set(map(int, upsert)) & set(map(int, delete)))
            if both:  # ("1" and "01" are one number)
                raise click.BadParameter(f"op value {both[0]} is given as both upsert and "
                                         "delete", param_hint="'--op-values'")
            return CdcOps(column, tuple(map(int, upsert)), tuple(map(int, delete)))
    return CdcOps(column, upsert, delete)


def _copy_in(session: Session, part: Partition, sources: list[str]) -> dict[str, str]:
    """Copy ``sources`` under the partition's data directory: {copy URL: source URL}."""
    from compactor import layout

    storage = part.table.storage

    def copy(source: str) -> tuple[str, str]:
        rel = layout.new_data_file(part.key)
        fs, path = session.filesystem(source)
        with fs.open(path, "rb") as src, storage.open_output(rel) as dst:
            shutil.copyfileobj(src, dst, 8 << 20)
        return storage.url_of(storage.path(rel)), source

    copies: dict[str, str] = {}
    with ThreadPoolExecutor(_COPY_THREADS) as pool:
        futures = [pool.submit(copy, s) for s in sources]
        errors = []
        for future in futures:
            try:
                made, source = future.result()
                copies[made] = source
            except Exception as e:
                errors.append(e)
    if errors:
        _remove(part, copies)
        raise errors[0]
    return copies


def _remove(part: Partition, copies: Mapping[str, str]) -> None:
    storage = part.table.storage
    for url in copies:
        try:
            storage.fs.rm_file(storage.strip(url))
        except OSError:
            pass  # unreferenced: nothing reads it


def delta_summary(delta: Delta) -> dict[str, Any]:
    return {
        "position": delta.position, "kind": delta.kind.value, "files": len(delta.files),
        "rows": delta.rows, "bytes": delta.size, "committed_at": timestamp(delta.committed_at),
        "cdc": None if delta.cdc is None else delta.cdc.to_dict(),
    }


@command("append")
@click.argument("url")
@click.argument("paths", nargs=-1, required=True, metavar="PATH...")
@partition_option()
@click.option("--kind", type=click.Choice(["upsert", "delete", "cdc"]), required=True,
              help="upsert: rows are new versions; delete: rows carry keys to delete; "
                   "cdc: an op column says which, per row.")
@click.option("--op-column", metavar="COL", help="CDC op column (default Op).")
@click.option("--op-values", type=OpValues(),
              help="CDC op values and their meaning (default I=upsert,U=upsert,D=delete).")
@click.option("--copy", is_flag=True,
              help="Copy the files under the table instead of referencing them in place.")
def append(session: Session, url: str, paths: tuple[str, ...],
           partition: dict[str, str] | None, kind: str, op_column: str | None,
           op_values: tuple[tuple[str, ...], tuple[str, ...]] | None, copy: bool) -> None:
    """Commit the Parquet files PATH... as one delta of a partition of the table at URL.

    PATH may be a file, a directory (its .parquet files, recursively, by name) or a glob,
    local or s3://. Files are checked (Parquet, key columns, no null keys, known ops,
    compatible schema) before anything is committed; their order is the delta's file order,
    which breaks ties between rows of one key.

    \b
    Examples:
      compactor append s3://lake/orders -p day=2024-05-01 --kind cdc 's3://exports/orders/*.parquet'
      compactor append ./orders --kind upsert ./batch-0001/ --copy
    """
    from compactor import DeltaKind
    from compactor.errors import CompactorError, ForeignFile

    if kind != "cdc" and (op_column or op_values):
        raise click.UsageError("--op-column and --op-values apply to --kind cdc only")
    table = session.open_table(url)
    part = session.partition(table, partition)
    sources = expand_sources(session, paths)
    cdc = _cdc_ops(session, sources[0], op_column or "Op", op_values) if kind == "cdc" else None
    copies = _copy_in(session, part, sources) if copy else {}
    # Copies are removed only when the delta provably did not commit (a CompactorError: the
    # files were refused, or the commit conflicted). After any other error the commit may have
    # landed, so they stay; if it did not, nothing references them.
    try:
        delta = part.register(list(copies) or sources, kind=DeltaKind(kind), cdc=cdc)
    except ForeignFile as e:
        raise ForeignFile(f"{e}; use --copy to copy it under the table") from None
    except CompactorError as e:
        _remove(part, copies)
        message = str(e)
        for made, source in copies.items():  # name the user's file, not our copy of it
            message = message.replace(made, source)
        raise type(e)(message) from None
    result = {"table": table.url, "partition": str(part.key), "copied": copy,
              "delta": delta_summary(delta),
              "file_urls": [f.url for f in delta.files]}

    def render(out: Console) -> None:
        how = "copied and committed" if copy else "committed in place"
        out.print(f"{how} {len(delta.files)} file(s), {delta.rows:,} rows "
                  f"({format_size(delta.size)}) as {kind} delta at position {delta.position} "
                  f"of partition {part.key} of {table.url}")

    session.emit(result, render)
