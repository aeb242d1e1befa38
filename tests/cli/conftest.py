"""Helpers for the CLI tests: run the installed ``compactor`` executable, write input files.

Every test here runs the console script the package installs, as a subprocess, the way a user
or a scheduler would. The session-wide AWS sandbox of tests/conftest.py is in the environment
the subprocesses inherit (and ``s3_server`` points AWS_ENDPOINT_URL at the S3 API server).
"""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

EXECUTABLE = Path(sys.executable).parent / "compactor"
SCHEMA = "id:int64 not null,v:string,lsn:int64"
ARROW_SCHEMA = pa.schema([pa.field("id", pa.int64(), nullable=False), ("v", pa.string()),
                          ("lsn", pa.int64())])


@dataclass(frozen=True)
class Run:
    args: tuple[str, ...]
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def __str__(self) -> str:  # what a failing assertion shows
        return f"compactor {' '.join(self.args)} -> {self.code}\n{self.out}\n{self.err}"


def compactor(*args: object, cwd: Path | None = None, env: dict[str, str] | None = None,
              timeout: float = 120) -> Run:
    """Run the installed executable; the backend is the default one unless ``env`` says."""
    environ = {k: v for k, v in os.environ.items()
               if k not in ("COMPACTOR_BACKEND", "COMPACTOR_ADDRESS")}
    environ.update(env or {})
    argv = tuple(str(a) for a in args)
    done = subprocess.run([str(EXECUTABLE), *argv], capture_output=True, text=True, cwd=cwd,
                          env=environ, timeout=timeout, check=False)
    return Run(argv, done.returncode, done.stdout, done.stderr)


def in_terminal(*args: object, timeout: float = 120) -> tuple[int, str]:
    """Run the executable with a pseudo-terminal as stdin, stdout and stderr: (code, screen)."""
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": "120"}
    process = subprocess.Popen([str(EXECUTABLE), *map(str, args)], stdin=slave, stdout=slave,
                               stderr=slave, env=env)
    os.close(slave)
    chunks = []
    try:
        while True:
            try:
                chunk = os.read(master, 1 << 16)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            chunks.append(chunk)
        code = process.wait(timeout=timeout)
    finally:
        os.close(master)
    return code, b"".join(chunks).decode(errors="replace")


def start(*args: object) -> subprocess.Popen[str]:
    """Start the executable without waiting (for races)."""
    return subprocess.Popen([str(EXECUTABLE), *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def write_parquet(url: str | Path, rows: dict[str, list[Any]] | pa.Table) -> str:
    """Write rows as a Parquet file at a local path or URL; returns it as given."""
    data = rows if isinstance(rows, pa.Table) else pa.table(rows)
    fs, path = fsspec.core.url_to_fs(str(url))
    fs.makedirs(fs._parent(path), exist_ok=True)
    with fs.open(path, "wb") as f:
        pq.write_table(data, f)
    return str(url)


def upserts(ids: list[int], tag: str, lsn0: int) -> dict[str, list[Any]]:
    return {"id": ids, "v": [f"{tag}-{i}" for i in ids], "lsn": list(range(lsn0, lsn0 + len(ids)))}


def replay(deltas: list[tuple[str, dict[str, list[Any]]]]) -> dict[int, tuple[str, int]]:
    """The expected state of small deltas, by plain replay: id -> (v, lsn), greatest lsn wins
    (ties: the later row), deletes remove. ``kind`` is upsert, delete, or cdc (column ``op``)."""
    newest: dict[int, tuple[int, int, bool, str | None]] = {}
    seq = 0
    for kind, rows in deltas:
        for i, key in enumerate(rows["id"]):
            seq += 1
            deleted = kind == "delete" or (kind == "cdc" and rows["op"][i] == "d")
            value = None if kind == "delete" else rows["v"][i]
            candidate = (rows["lsn"][i], seq, deleted, value)
            if key not in newest or candidate[:2] > newest[key][:2]:
                newest[key] = candidate
    return {k: (str(v[3]), v[0]) for k, v in newest.items() if not v[2]}


def replace_keeping_fingerprint(path: Path, data: pa.Table) -> None:
    """Overwrite a Parquet file with other valid rows, keeping its size and modification time,
    so that a size+mtime fingerprint still matches: only reading the data can tell.

    Readers find the footer from the end of the file and column chunks by absolute offset, so
    zero bytes between the last column chunk and the footer pad the file without changing it.
    """
    stat = path.stat()
    buffer = io.BytesIO()
    pq.write_table(data, buffer, compression="zstd", compression_level=19,
                   write_statistics=False, use_dictionary=False, store_schema=False)
    raw = buffer.getvalue()
    assert len(raw) <= stat.st_size, "the replacement is larger than the original"
    footer = len(raw) - 8 - int.from_bytes(raw[-8:-4], "little")
    path.write_bytes(raw[:footer] + bytes(stat.st_size - len(raw)) + raw[footer:])
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size


@pytest.fixture
def table_url(tmp_path: Path) -> str:
    """A local table with the test schema, not yet created."""
    return str(tmp_path / "table")
