"""Helpers shared by the storage tests: files written outside a table, and what lies where."""

from __future__ import annotations

import uuid

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from compactor import Table, create_table

SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string())])


def new_table(root: str, schema: pa.Schema = SCHEMA, **kwargs: object) -> Table:
    kwargs.setdefault("primary_key", ["id"])
    return create_table(root, schema, **kwargs)  # type: ignore[arg-type]


def export_url(root: str, name: str | None = None) -> str:
    """A URL beside (not under) the table root, on the same filesystem: where another system
    would have written its exports."""
    return f"{root}-exports/{name or uuid.uuid4().hex}.parquet"


def write_parquet(url: str, data: pa.Table | dict[str, list[object]], **kwargs: object) -> str:
    table = data if isinstance(data, pa.Table) else pa.table(data)
    fs, path = fsspec.core.url_to_fs(url, auto_mkdir=True) if url.startswith("file:") else \
        fsspec.core.url_to_fs(url)
    with fs.open(path, "wb") as f:
        pq.write_table(table, f, **kwargs)
    return url


def write_bytes(url: str, data: bytes) -> str:
    fs, path = fsspec.core.url_to_fs(url, auto_mkdir=True) if url.startswith("file:") else \
        fsspec.core.url_to_fs(url)
    fs.pipe_file(path, data)
    return url


def files_under(url: str) -> dict[str, int]:
    """Every file under ``url``: path relative to it -> size."""
    fs, path = fsspec.core.url_to_fs(url)
    path = path.rstrip("/")
    if not fs.exists(path):
        return {}
    found = fs.find(path, detail=True)
    return {name[len(path) + 1:]: int(info["size"]) for name, info in found.items()}
