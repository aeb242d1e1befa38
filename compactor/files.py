"""Data files referenced in place: describing, fingerprinting, verifying and opening them.

A registered file is pinned by its size and fingerprint: the S3 ETag where there is one (it
changes whenever the object is rewritten), otherwise size and modification time. Before a file is
read it is verified against its :class:`DataFile`, so a file changed or removed since it was
committed is reported by name instead of being read as if it were the same data.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from compactor.errors import ChangedFile, CorruptFile, ForeignFile, MissingFile
from compactor.fs import Storage
from compactor.manifest import DataFile
from compactor.schema import nests, zip_types


def fingerprint(info: Mapping[str, Any]) -> str:
    """A string that changes whenever the file described by fsspec ``info`` is rewritten."""
    etag = info.get("ETag") or info.get("etag")
    if etag:
        return f"etag:{str(etag).strip(chr(34))}"
    mtime = next((info[k] for k in ("mtime", "LastModified", "created") if k in info), None)
    if isinstance(mtime, datetime):
        mtime = mtime.timestamp()
    return f"stat:{info['size']}:{mtime!r}"


def resolve(storage: Storage, url: str) -> str:
    """The filesystem path of ``url``; :class:`ForeignFile` if on another filesystem."""
    path = storage.strip(url)
    if path is None:
        raise ForeignFile(f"file {url} is not on the table's filesystem ({storage.protocol})")
    return path


def _info(storage: Storage, path: str) -> dict[str, Any]:
    try:
        info = storage.info(path)
    except FileNotFoundError:
        raise MissingFile(f"file {storage.url_of(path)} does not exist") from None
    if info.get("type") == "directory":
        raise MissingFile(f"file {storage.url_of(path)} is a directory, not a file")
    return info


def top_level_leaves(meta: pq.FileMetaData) -> dict[str, int]:
    """The leaf (column chunk) number of each top-level column that is one leaf. By leaf name,
    not by path: a column named "a.b" and field b of a struct a share the path "a.b", but only
    the first's leaf is named so."""
    leaves = (meta.schema.column(j) for j in range(meta.num_columns))
    return {c.path: j for j, c in enumerate(leaves) if c.name == c.path}


def arrow_schema(parquet: pq.ParquetFile) -> pa.Schema:
    """The Arrow schema of a Parquet file's data, as it was written.

    Parquet has no timestamps in seconds: a writer stores them in milliseconds, and pyarrow
    reads them back so. Where the file's stored Arrow schema (``ARROW:schema``, pyarrow's)
    says a column, or a field inside one, was written from seconds, it is given as seconds
    again: its values are whole seconds, and a table column of seconds takes it.
    """
    schema = parquet.schema_arrow
    stored = (parquet.metadata.metadata or {}).get(b"ARROW:schema")
    if stored is None or not any(nests(t, _milliseconds) for t in schema.types):
        return schema
    try:
        written = pa.ipc.read_schema(pa.py_buffer(base64.b64decode(stored)))
    except (ValueError, pa.ArrowInvalid):
        return schema  # (not pyarrow's, or damaged: the file's own types stand)
    fields = []
    for f in schema:
        i = written.get_field_index(f.name)  # (-1: absent, or named twice)
        fields.append(f.with_type(_seconds(f.type, written.field(i).type)) if i >= 0 else f)
    return pa.schema(fields, metadata=schema.metadata)


def _milliseconds(t: pa.DataType) -> bool:
    return pa.types.is_timestamp(t) and t.unit == "ms"


def _seconds(read: pa.DataType, written: pa.DataType) -> pa.DataType:
    """Type ``read`` (as pyarrow reads it) with each timestamp in milliseconds that
    ``written`` has in seconds, at the same place (``zip_types``), in seconds."""

    def leaf(written: pa.DataType, read: pa.DataType) -> pa.DataType:
        if pa.types.is_timestamp(read) and pa.types.is_timestamp(written) and \
                (read.unit, written.unit) == ("ms", "s") and read.tz == written.tz:
            return pa.timestamp("s", read.tz)
        return read

    return zip_types(written, read, leaf)


@dataclass
class Opened:
    """A Parquet file opened for reading, and the bytes it is read from (all of it in memory,
    or the file object: the same version of the file either way)."""

    parquet: pq.ParquetFile
    source: Any  # pa.BufferReader (read whole) or a file object
    url: str
    whole: bool

    def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``[start, end)`` of the file (when the Parquet reader is not reading it)."""
        try:
            self.source.seek(start)
            data = self.source.read(end - start)
        except FileNotFoundError:
            raise MissingFile(f"file {self.url} does not exist") from None
        except OSError as e:
            e.add_note(f"reading {self.url}")
            raise
        if len(data) != end - start:
            raise CorruptFile(f"file {self.url} ends before byte {end}")
        return data.to_pybytes() if isinstance(data, pa.Buffer) else bytes(data)

    def close(self) -> None:
        self.parquet.close()
        if not self.whole:
            self.source.close()


def open_parquet(storage: Storage, path: str, whole: bool = False,
                 read_dictionary: Callable[[pq.FileMetaData], list[str]] | None = None
                 ) -> pq.ParquetFile:
    """Open ``path`` as Parquet (reads the footer only; ``whole``: reads all of the file into
    memory first, in one request); :class:`CorruptFile` if it is not Parquet. An I/O error
    while reading a whole file keeps its type (a job may retry it), with a note naming it.
    ``read_dictionary``: given the footer, the columns to read as dictionary arrays."""
    return _open(storage, path, whole, read_dictionary).parquet


def _open(storage: Storage, path: str, whole: bool,
          read_dictionary: Callable[[pq.FileMetaData], list[str]] | None) -> Opened:
    source: Any
    if whole:
        try:
            source = pa.BufferReader(storage.fs.cat_file(path))
        except FileNotFoundError:
            raise MissingFile(f"file {storage.url_of(path)} does not exist") from None
        except OSError as e:
            e.add_note(f"reading {storage.url_of(path)}")
            raise
    try:
        if not whole:
            source = storage.fs.open(path, "rb")
        parquet = pq.ParquetFile(source)
        names = read_dictionary(parquet.metadata) if read_dictionary is not None else None
        if names:  # the same source and its footer as read, dictionary columns decoded as such
            parquet = pq.ParquetFile(source, metadata=parquet.metadata, read_dictionary=names)
        return Opened(parquet, source, storage.url_of(path), whole)
    except FileNotFoundError:
        raise MissingFile(f"file {storage.url_of(path)} does not exist") from None
    except (pa.ArrowException, OSError, ValueError) as e:
        raise CorruptFile(f"file {storage.url_of(path)} is not valid Parquet ({e})") from None


def describe(storage: Storage, url: str) -> tuple[DataFile, pq.ParquetFile]:
    """Stat and open the Parquet file at ``url``: its :class:`DataFile` and footer."""
    path = resolve(storage, url)
    info = _info(storage, path)
    parquet = open_parquet(storage, path)
    described = DataFile(storage.url_of(path), int(info["size"]), parquet.metadata.num_rows,
                         fingerprint(info))
    return described, parquet


def written(storage: Storage, path: str, rows: int) -> DataFile:
    """The :class:`DataFile` of a file the table just wrote (rows known, no footer read)."""
    info = _info(storage, path)
    return DataFile(storage.url_of(path), int(info["size"]), rows, fingerprint(info))


def verify(storage: Storage, file: DataFile) -> None:
    """Raise :class:`MissingFile` or :class:`ChangedFile` unless ``file`` is as registered."""
    info = _info(storage, resolve(storage, file.url))
    now = fingerprint(info)
    if int(info["size"]) != file.size or now != file.fingerprint:
        raise ChangedFile(
            f"file {file.url} changed since it was registered (size {file.size} -> "
            f"{info['size']}, fingerprint {file.fingerprint} -> {now})"
        )


def open_verified(storage: Storage, file: DataFile, whole: bool = False,
                  read_dictionary: Callable[[pq.FileMetaData], list[str]] | None = None
                  ) -> pq.ParquetFile:
    """Verify ``file`` is unchanged, then open it as Parquet (footer only; ``whole``: all of
    it read into memory; ``read_dictionary``: as ``open_parquet``'s)."""
    verify(storage, file)
    return open_parquet(storage, resolve(storage, file.url), whole, read_dictionary)


def open_source(storage: Storage, file: DataFile, whole: bool = False,
                read_dictionary: Callable[[pq.FileMetaData], list[str]] | None = None
                ) -> Opened:
    """``open_verified``, keeping what the file is read from (to copy bytes of it)."""
    verify(storage, file)
    return _open(storage, resolve(storage, file.url), whole, read_dictionary)
