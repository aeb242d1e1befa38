"""Storage: one table root on an fsspec filesystem, and the only way the table model writes.

A :class:`Storage` is built from a root URL (``file://``, ``s3://``, ``memory://``) and
optional fsspec storage options. It offers a handful of primitives (read, list, exclusive create,
open for writing, stat) on paths *relative to the root*, and refuses any write whose path would
leave the root, whatever the caller passes. The one primitive that differs per backend is
:meth:`Storage.create`, the conditional create commits rely on:

- ``file``:   the bytes go to a hidden temporary file that is then hard-linked to the final name;
              ``link`` fails if the name exists, so the create is exclusive *and* a reader never
              sees a half-written file (``O_EXCL`` alone would expose one).
- ``s3``:     ``PutObject`` with ``If-None-Match: *``; S3 (and moto's server) answers 412 if the
              key exists. A PUT is atomic, so readers see the whole object or nothing.
- ``memory``: a process-wide lock around check-and-write (tests only).

Other protocols are refused: without a conditional create, commits would not be linearizable.

S3 credentials come from the options or the usual AWS chain (environment, profile, instance
role). They are passed to s3fs and never logged: ``repr()`` and errors show the URL only.
"""

from __future__ import annotations

import asyncio
import os
import posixpath
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from typing import IO, Any, cast

import fsspec
from fsspec import AbstractFileSystem
from fsspec.asyn import AsyncFileSystem, sync

from compactor.direct_write import open_direct
from compactor.errors import InvalidTableSpec, OutsideTableRoot

_LOCAL = frozenset({"file", "local"})
_S3 = frozenset({"s3", "s3a"})
_MEMORY = frozenset({"memory"})

_S3_DEFAULTS: dict[str, Any] = {
    "use_listings_cache": False,  # other writers add commits; a cached listing would hide them
}
# s3fs's own retries wrap botocore's (below), which already retry timeouts, dropped connections,
# 5xx answers and throttling: s3fs's 5 made 25 attempts of a request (125 of a read, whose
# request and body s3fs wraps each); one more is left for what botocore does not retry (a body
# cut off mid-read). (An attribute, not a constructor argument.)
_S3FS_RETRIES = 2
# Retries are bounded: botocore's "standard" mode retries throttling (503 SlowDown), 5xx answers,
# timeouts and dropped connections with exponential backoff and full jitter (up to 1, 2, 4, 8 s),
# so a request that keeps failing surfaces its error after about 8 s (at most 15 s) instead of
# hanging; s3fs adds a few retries of its own for dropped connections and SlowDown. With 5
# attempts a request fails only if all 5 do: at a 5% fault rate, about once in 10^7 requests.
# The AWS environment (AWS_RETRY_MODE, AWS_MAX_ATTEMPTS) or ``config_kwargs`` override this.
_S3_MAX_ATTEMPTS = 5
# An endpoint that takes connections but never answers (a frozen server, a half-open connection
# through a proxy) waited botocore's 60 s per attempt, every attempt of every s3fs retry (9 to
# 12 minutes, seen with a listener that never replies): a connection is given 5 s, and an
# answer 15 s of silence (S3 streams a GET's bytes without pauses that long). Such a listing
# now fails after 2 x 5 attempts, 217 s with botocore's backoff (measured); a read, which s3fs
# wraps twice, after about twice that.
_S3_TIMEOUTS = {"connect_timeout": 5, "read_timeout": 15}

# S3 answers 409 ConditionalRequestConflict while another conditional write to the same key is
# in flight; the outcome is then unknown, so the same PUT is retried until it gets 200 or 412.
_CONFLICT_RETRIES = 20

_memory_lock = threading.Lock()


class Storage:
    """A table root: fsspec filesystem plus root path, with root-confined writes."""

    def __init__(self, url: str, storage_options: Mapping[str, Any] | None = None) -> None:
        self._options = dict(storage_options or {})
        protocol = fsspec.core.split_protocol(url)[0] or "file"
        kwargs = dict(self._options)
        if protocol in _S3:
            config = {"retries": _s3_retries(), **_S3_TIMEOUTS,
                      **kwargs.pop("config_kwargs", {})}
            kwargs = {**_S3_DEFAULTS, **kwargs, "config_kwargs": config}
        elif protocol in _LOCAL:
            kwargs.setdefault("auto_mkdir", True)
        elif protocol not in _MEMORY:
            raise InvalidTableSpec(
                f"storage {url!r}: protocol {protocol!r} has no conditional create, so commits "
                "could not be atomic; use file://, s3:// or memory://"
            )
        fs, root = fsspec.core.url_to_fs(url, **kwargs)
        if protocol in _S3:
            fs.retries = _S3FS_RETRIES
        self.fs: AbstractFileSystem = fs
        self._protocols = (fs.protocol,) if isinstance(fs.protocol, str) else tuple(fs.protocol)
        self.protocol: str = self._protocols[0]
        self.root: str = root.rstrip("/") or "/"
        self.url: str = fs.unstrip_protocol(self.root)
        # s3fs would otherwise HEAD each object before GETting it (to split large downloads);
        # everything read through here is small metadata.
        self._read_options: dict[str, Any] = {"max_concurrency": 1} if protocol in _S3 else {}

    def __repr__(self) -> str:
        return f"Storage({self.url!r})"

    def __reduce__(self) -> tuple[Any, ...]:
        # The filesystem object is rebuilt on the other side (s3fs sessions do not travel).
        return (Storage, (self.url, self._options))

    # -- paths ---------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The filesystem path of ``rel`` (relative to the root; "" is the root itself).

        Refuses (:class:`OutsideTableRoot`) any ``rel`` that is not a plain relative path or
        would resolve outside the root, whoever built it.
        """
        if rel == "":
            return self.root
        if rel.startswith("/") or "\\" in rel or any(p in ("", ".", "..") for p in rel.split("/")):
            raise OutsideTableRoot(f"path {rel!r} is not a plain relative path under {self.url}")
        full = posixpath.join(self.root, rel)
        if not posixpath.normpath(full).startswith(self.root.rstrip("/") + "/"):
            raise OutsideTableRoot(f"path {rel!r} would leave the table root {self.url}")
        return full

    def url_of(self, path: str) -> str:
        """The full URL of a filesystem path (for messages and manifests)."""
        return str(self.fs.unstrip_protocol(path))

    def strip(self, url_or_path: str) -> str | None:
        """The filesystem path of a URL, or ``None`` if it names another filesystem."""
        protocol, _ = fsspec.core.split_protocol(url_or_path)
        if protocol is not None and protocol not in self._protocols:
            return None
        return str(self.fs._strip_protocol(url_or_path))

    # -- reads (any path the filesystem reaches) -------------------------------------------------
    def read(self, rel: str) -> bytes:
        """The bytes of ``rel``; ``FileNotFoundError`` if it does not exist."""
        return bytes(self.fs.cat_file(self.path(rel), **self._read_options))

    def read_many(self, rels: Iterable[str]) -> dict[str, bytes]:
        """The bytes of each existing ``rel`` (fetched concurrently on S3); missing ones omitted."""
        rels = list(rels)
        paths = [self.path(rel) for rel in rels]
        if isinstance(self.fs, AsyncFileSystem):
            results = sync(self.fs.loop, _gather,
                           [self.fs._cat_file(p, **self._read_options) for p in paths])
        else:
            results = [_attempt(self.fs.cat_file, p) for p in paths]
        found = {}
        for rel, result in zip(rels, results, strict=True):
            if isinstance(result, BaseException):
                if isinstance(result, FileNotFoundError):
                    continue
                raise result
            found[rel] = bytes(result)
        return found

    def list(self, rel: str) -> list[str]:
        """Names (not paths) of the entries directly under ``rel``; empty if it does not exist."""
        path = self.path(rel)
        try:
            entries = self.fs.ls(path, detail=False, refresh=True)
        except (FileNotFoundError, NotADirectoryError):
            return []
        names = (str(e).rstrip("/") for e in entries)
        # ls of a file lists the file itself: that is not an entry under it
        return sorted(posixpath.basename(n) for n in names if n != path.rstrip("/"))

    def info(self, path: str) -> dict[str, Any]:
        """fsspec ``info`` of an absolute filesystem path; ``FileNotFoundError`` if absent."""
        return dict(self.fs.info(path, refresh=True) if self.protocol in _S3
                    else self.fs.info(path))

    # -- writes (confined to the root) -----------------------------------------------------------
    def create(self, rel: str, data: bytes) -> None:
        """Write ``data`` to ``rel`` only if it does not exist yet (``FileExistsError`` if it does).

        Atomic: a concurrent reader sees either nothing or all of ``data``.
        """
        path = self.path(rel)
        if self.protocol in _LOCAL:
            _create_local(path, data)
        elif self.protocol in _S3:
            _create_s3(self.fs, path, data)
        else:
            with _memory_lock:
                if self.fs.exists(path):
                    raise FileExistsError(self.url_of(path))
                self.fs.pipe_file(path, data)

    def open_output(self, rel: str, uncached: bool = False) -> IO[bytes]:
        """A binary file opened for (over)writing at ``rel``, parents created. ``uncached``:
        a large file not read again soon, written around the page cache where the storage
        is a local filesystem that can (``direct_write``)."""
        path = self.path(rel)
        if self.protocol in _LOCAL:
            os.makedirs(posixpath.dirname(path), exist_ok=True)
            direct = open_direct(path) if uncached else None
            if direct is not None:
                return cast(IO[bytes], direct)
        return self.fs.open(path, "wb")


def _s3_retries() -> dict[str, Any]:
    """botocore's retry settings: the environment's where it sets them, else ours."""
    retries: dict[str, Any] = {}
    if not os.environ.get("AWS_RETRY_MODE"):
        retries["mode"] = "standard"
    if not os.environ.get("AWS_MAX_ATTEMPTS"):
        retries["max_attempts"] = _S3_MAX_ATTEMPTS
    return retries


async def _gather(coroutines: list[Any]) -> list[Any]:
    return await asyncio.gather(*coroutines, return_exceptions=True)


def _attempt(read: Any, path: str) -> Any:
    try:
        return read(path)
    except FileNotFoundError as e:
        return e


def _create_local(path: str, data: bytes) -> None:
    directory, name = posixpath.split(path)
    os.makedirs(directory, exist_ok=True)
    tmp = posixpath.join(directory, f".{name}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    try:
        os.link(tmp, path)
    finally:
        os.unlink(tmp)


def _create_s3(fs: AbstractFileSystem, path: str, data: bytes) -> None:
    for attempt in range(_CONFLICT_RETRIES):
        try:
            fs.pipe_file(path, data, mode="create")
            return
        except FileExistsError:
            raise FileExistsError(fs.unstrip_protocol(path)) from None
        except OSError as e:
            code = getattr(e.__cause__, "response", {}).get("Error", {}).get("Code")
            if code != "ConditionalRequestConflict" or attempt == _CONFLICT_RETRIES - 1:
                raise
            time.sleep(min(0.05 * 2**attempt, 1.0))
