"""Garbage collection: remove the files under a table root that no commit references.

What a table writes, and what references it::

    partitions/<p>/data/<uuid>.parquet                  delta files (append, append --copy):
                                                        referenced by delta commits
    partitions/<p>/compacted/b#####/<uuid>.parquet      compacted files: referenced by compaction
                                                        commits (their bucket file lists)
    partitions/<p>/index/b#####/{base,delta,moves}-<uuid>.{arrow,parquet}
                                                        primary-key index chains: referenced by
                                                        compaction commits (``properties["index"]``)
    .<name>.<uuid>.tmp in _table/metadata, _log, _checkpoints
                                                        temporaries of exclusive creates on
                                                        file:// (never referenced)

Files nothing references are left by work that did not commit: a round that failed and could not
delete what it wrote (storage unreachable), a killed driver, worker or actor, an append whose
commit never happened. The garbage collector removes them.

**The rule.** A file is live if *any* commit still in its partition's log references it: every
delta's files, and every compacted state's files and index chains, not just the newest state's.
The log is never truncated, so every version stays a readable snapshot (``read --version N``
of any N), ``verify`` can re-read every delta, and a round planned on an older state still finds
its inputs. A file is removed only if it is

1. one of the kinds above, named the way the table names them (nothing else under the root, and
   nothing outside it, is ever touched; commit logs, checkpoints and metadata never are),
2. referenced by no commit of its partition, and
3. older than the grace period (``older_than``, by modification time), so the files of rounds
   and appends still running, written but not committed yet, are left alone.

The grace period must therefore exceed the longest round: a round still running when its oldest
file passes the grace period could commit a reference to a removed file. The default is an hour.

Files are listed *before* the logs are read: a commit that lands in between can reference only
files already referenced by an earlier commit or written since the listing began (younger than
the grace period). If a log cannot be read whole (a missing or corrupt commit), nothing at all
is removed. Space held by superseded compacted states is not reclaimed: that needs versions to
expire from the log first, which no command does.
"""

from __future__ import annotations

import json
import os
import posixpath
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from functools import lru_cache
from typing import Any

from compactor.commit_log import CommitLog
from compactor.errors import CorruptFile
from compactor.fs import Storage
from compactor.layout import (
    CHECKPOINT_DIR,
    LOG_DIR,
    METADATA_DIR,
    PARTITIONS_DIR,
    UNPARTITIONED,
    PartitionKey,
    parse_number,
)
from compactor.manifest import CompactedState, Delta
from compactor.pipeline.index_store import PROPERTY as INDEX_PROPERTY
from compactor.table import Table

DEFAULT_GRACE = 3600.0

_HEX = r"[0-9a-f]{32}"
# (kind, directory below the partition, file name) of what gc may remove
_DATA = re.compile(rf"data/{_HEX}\.parquet")
_COMPACTED = re.compile(rf"compacted/b\d{{5}}/{_HEX}\.parquet")
_INDEX = re.compile(rf"index/b\d{{5}}/(base|delta|moves)-{_HEX}\.(arrow|parquet)")
_TEMPORARY = re.compile(rf"({LOG_DIR}|{CHECKPOINT_DIR})/\.[^/\\]+\.{_HEX}\.tmp")
_METADATA_TEMPORARY = re.compile(rf"{METADATA_DIR}/\.[^/\\]+\.{_HEX}\.tmp")
_KINDS = (("data", _DATA), ("compacted", _COMPACTED), ("index", _INDEX),
          ("temporary", _TEMPORARY))


@dataclass(frozen=True)
class GcResult:
    """What one collection found and removed (or, with ``dry_run``, would remove)."""

    table: str
    dry_run: bool
    older_than: float  # the grace period, seconds
    partitions: int  # partition directories examined
    files: int  # files of the kinds gc manages
    referenced: int  # ... that a commit references (live)
    young: int  # ... unreferenced, but within the grace period (left alone)
    removed: tuple[str, ...]  # URLs of the files removed (or that would be)
    removed_bytes: int
    removed_by_kind: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"table": self.table, "dry_run": self.dry_run, "older_than": self.older_than,
                "partitions": self.partitions, "files": self.files,
                "referenced": self.referenced, "young": self.young,
                "removed": list(self.removed), "removed_files": len(self.removed),
                "removed_bytes": self.removed_bytes, "removed_by_kind": self.removed_by_kind,
                "seconds": self.seconds}


@dataclass(frozen=True)
class _Candidate:
    path: str  # filesystem path
    kind: str
    size: int
    modified: float


def _modified(info: dict[str, Any]) -> float:
    value = next((info[k] for k in ("mtime", "LastModified", "last_modified", "created")
                  if info.get(k) is not None), None)
    if isinstance(value, datetime):
        return value.timestamp()
    if value is None:
        return time.time()  # unknown age: treat as new, never as old
    return float(value)


def _partition_dirs(table: Table, rel_paths: list[str]) -> dict[str, list[str]]:
    """Paths below ``partitions/``, grouped by partition directory (rest of the path each).

    Only directories this table's escaping can have written count; anything else is not ours.
    """
    depth = max(1, len(table.partition_by))
    grouped: dict[str, list[str]] = {}
    for rel in rel_paths:
        parts = rel.split("/")
        if len(parts) < depth + 3 or parts[0] != PARTITIONS_DIR:
            continue
        pdir = "/".join(parts[:depth + 1])
        components = parts[1:depth + 1]
        if table.partition_by:
            if not all("=" in c for c in components):
                continue
            key = PartitionKey.from_dir(pdir)
            if [k for k, _ in key.items] != list(table.partition_by) or key.dir != pdir:
                continue
        elif components != [UNPARTITIONED]:
            continue
        grouped.setdefault(pdir, []).append("/".join(parts[depth + 1:]))
    return grouped


def _identity(storage: Storage) -> Callable[[str], str]:
    """What tells two paths of ``storage`` apart as files: on a local filesystem the path with
    its directory's symlinks resolved (writers reached the table by other paths: a symlink, or
    a relative path from inside one, which the process's working directory resolves; their
    commits name its files by those), elsewhere the normalized path."""
    if storage.protocol not in ("file", "local"):
        return posixpath.normpath

    @lru_cache(maxsize=4096)
    def directory(path: str) -> str:  # (a table's files share a few dozen directories)
        return os.path.realpath(path)

    def identity(path: str) -> str:
        # (not normalized first: in lnk/../x the link is resolved before the "..", as the
        # operating system, and so every reader, resolves it)
        head, name = posixpath.split(path.rstrip("/"))
        if name in ("", ".", ".."):
            return directory(path)
        return posixpath.join(directory(head or "/"), name)

    return identity


def _referenced(table: Table, pdir: str, identity: Callable[[str], str]) -> set[str]:
    """The files (``identity`` of their paths) every commit of the partition in ``pdir``
    references."""
    storage = table.storage
    key = PartitionKey.from_dir(pdir)
    log = CommitLog(storage, key, table.metadata.checkpoint_interval)
    listed = [n for n in map(parse_number, storage.list(f"{pdir}/{LOG_DIR}")) if n is not None]
    entries = log.read_from(1)
    if listed and max(listed) > len(entries):
        raise CorruptFile(
            f"partition {key} of {table.url}: commit {len(entries) + 1} is missing but commit "
            f"{max(listed)} exists; nothing was removed")
    paths: set[str] = set()

    def add_url(url: str) -> None:
        path = storage.strip(url)
        if path is not None:
            paths.add(identity(path))

    for number, entry in enumerate(entries, 1):
        try:
            if entry.get("kind") == "delta":
                for f in Delta.from_dict(entry["delta"]).files:
                    add_url(f.url)
            elif entry.get("kind") == "compaction":
                state = CompactedState.from_dict(entry["compaction"])
                for f in state.files:
                    add_url(f.url)
                for chain in _index_chains(state):
                    paths.update(identity(posixpath.join(storage.root, rel)) for rel in chain)
            else:
                raise ValueError(f"unknown commit kind {entry.get('kind')!r}")
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFile(f"commit {number} of partition {key} in {table.url}: invalid "
                              f"entry ({e}); nothing was removed") from None
    return paths


# a path of a table's own file, in any table's layout
_OWN = re.compile(rf"/{PARTITIONS_DIR}/.+/({_DATA.pattern}|{_COMPACTED.pattern}|{_INDEX.pattern})$")


def _check_reachable(table: Table, referenced: set[str], listed: set[str]) -> None:
    """Refuse (CorruptFile) if a commit names a file of a table's own kinds that is neither
    among those listed nor there: commits name files by the path their writer reached the
    table by, and once that path no longer resolves (a symlink removed), the file listed under
    another name looks unreferenced. Gone from where the commit says, it may be there under
    the path listed: nothing is removed."""
    gone = sorted(p for p in referenced - listed
                  if _OWN.search(p) and not os.path.lexists(p))
    if gone:
        raise CorruptFile(
            f"table {table.url}: commits name {len(gone)} file(s) of a table that do not exist "
            f"at the path they name, first {gone[0]} (reached by a path that no longer "
            "resolves, such as a removed symlink, or removed by hand); nothing was removed")


def _index_chains(state: CompactedState) -> list[list[str]]:
    text = state.properties.get(INDEX_PROPERTY)
    if text is None:
        return []
    chains = json.loads(text)
    if not isinstance(chains, list) or not all(isinstance(c, list) for c in chains):
        raise ValueError(f"property {INDEX_PROPERTY!r} is not a list of index chains")
    return [[str(p) for p in chain] for chain in chains]


def _remove(storage: Storage, paths: list[str]) -> None:
    """Delete ``paths`` (one bulk request per 1,000 on S3); ones already gone are fine."""
    if storage.protocol in ("s3", "s3a"):
        storage.fs.rm(paths)
        return
    for path in paths:
        try:
            storage.fs.rm_file(path)
        except FileNotFoundError:
            pass


def collect_garbage(table: Table, *, older_than: float = DEFAULT_GRACE, dry_run: bool = False,
                    now: float | None = None) -> GcResult:
    """Remove the files under ``table``'s root that no commit references and that are older
    than ``older_than`` seconds (see the module docstring for the exact rule)."""
    if older_than < 0:
        raise ValueError(f"older_than must be >= 0 seconds, not {older_than}")
    start = time.perf_counter()
    storage = table.storage
    root = storage.root.rstrip("/")
    found: dict[str, dict[str, Any]] = {}
    for top in (PARTITIONS_DIR, METADATA_DIR):
        try:
            found.update(storage.fs.find(storage.path(top), detail=True))
        except FileNotFoundError:
            pass
    rel_info = {str(p)[len(root) + 1:]: info for p, info in found.items()
                if str(p).startswith(root + "/") and info.get("type") != "directory"}
    candidates: list[tuple[str | None, _Candidate]] = []
    for rel, info in rel_info.items():
        if _METADATA_TEMPORARY.fullmatch(rel):
            candidates.append((None, _Candidate(storage.path(rel), "temporary",
                                                int(info.get("size") or 0), _modified(info))))
    grouped = _partition_dirs(table, [r for r in rel_info if r.startswith(PARTITIONS_DIR + "/")])
    for pdir, rests in grouped.items():
        for rest in rests:
            kind = next((k for k, pattern in _KINDS if pattern.fullmatch(rest)), None)
            if kind is not None:
                info = rel_info[f"{pdir}/{rest}"]
                candidates.append((pdir, _Candidate(storage.path(f"{pdir}/{rest}"), kind,
                                                    int(info.get("size") or 0),
                                                    _modified(info))))
    # Read the logs only now: whatever commits after this references files listed as
    # referenced already, or files younger than the grace period.
    referenced: set[str] = set()
    identity = _identity(storage)
    for pdir in sorted({p for p, _ in candidates if p is not None}):
        referenced |= _referenced(table, pdir, identity)
    listed = {c.path: identity(c.path) for _, c in candidates}
    if storage.protocol in ("file", "local"):
        _check_reachable(table, referenced, set(listed.values()))
    now = time.time() if now is None else now
    garbage = [c for _, c in candidates
               if listed[c.path] not in referenced and now - c.modified >= older_than]
    live = sum(1 for _, c in candidates if listed[c.path] in referenced)
    if garbage and not dry_run:
        _remove(storage, [c.path for c in garbage])
    return GcResult(
        table=table.url, dry_run=dry_run, older_than=older_than, partitions=len(grouped),
        files=len(candidates), referenced=live, young=len(candidates) - live - len(garbage),
        removed=tuple(sorted(storage.url_of(c.path) for c in garbage)),
        removed_bytes=sum(c.size for c in garbage),
        removed_by_kind=dict(Counter(c.kind for c in garbage)),
        seconds=time.perf_counter() - start,
    )
