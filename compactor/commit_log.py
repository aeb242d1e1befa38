"""A partition's commit log: numbered JSON files, conditional creates, checkpoints.

::

    writer                                   storage                          reader
      |  load(): newest checkpoint <= head,   _checkpoints/...00100.json  <--  load(version)
      |          then replay the commits      _log/...00101.json ...           (same path)
      |  commit(): create _log/<head+1>       _log/...00137.json
      |     lost the race (file exists)?  -> read the winners' entries, let the caller
      |        decide (rebase or conflict), try <new head+1>
      |  every `interval` commits: write _checkpoints/<n>.json (a serialized Snapshot)

Commit ``n`` is created only by a writer that has seen commit ``n-1``, so the log has no gaps and
its head is found by reading forward from the newest checkpoint until a number is missing. A
commit file is created atomically and exclusively (:meth:`Storage.create`), so exactly one writer
wins each number and a reader sees whole entries only. Each entry carries a random
``commit_id``: if a create reports "exists" because a retried S3 PUT of *our own* request already
landed, reading the entry back tells the win from a loss.

Checkpoints are an optimization only: a missing or unfinished one costs a longer replay, never
correctness, and a failure to write one never fails the commit that triggered it.
"""

from __future__ import annotations

import json
import logging
import random
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from compactor.errors import (
    CommitConflict,
    CommitUnknown,
    CorruptFile,
    UnknownPartition,
    mark_commit_unknown,
)
from compactor.fs import Storage
from compactor.layout import PartitionKey, checkpoint_dir, log_file, numbered_file, parse_number
from compactor.snapshot import Snapshot, advance, empty

log = logging.getLogger(__name__)

Entry = Mapping[str, Any]

_MAX_ATTEMPTS = 1000
_FIRST_BATCH, _MAX_BATCH = 2, 64  # commits fetched per round trip while reading forward


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


class CommitLog:
    """The commit log of one partition."""

    def __init__(self, storage: Storage, partition: PartitionKey, checkpoint_interval: int):
        self.storage = storage
        self.partition = partition
        self.checkpoint_interval = checkpoint_interval

    def _where(self, number: int) -> str:
        return f"commit {number} of partition {self.partition} in {self.storage.url}"

    def _parse(self, rel: str, data: bytes) -> Entry:
        try:
            entry = json.loads(data)
            if not isinstance(entry, dict):
                raise ValueError("not a JSON object")
        except ValueError as e:
            url = self.storage.url_of(self.storage.path(rel))
            raise CorruptFile(f"{url}: not a valid commit file ({e})") from None
        return entry

    # -- reading ---------------------------------------------------------------------------------
    def read_from(self, start: int, stop: int | None = None) -> list[Entry]:
        """Entries ``start, start+1, ...`` up to ``stop`` (inclusive) or the first missing one.

        Reads in batches (concurrent requests on S3) that start small, since a writer that lost
        a race usually has only a commit or two to catch up on, and double up to a limit.
        """
        entries: list[Entry] = []
        number, batch = start, _FIRST_BATCH
        while stop is None or number <= stop:
            last = number + batch - 1 if stop is None else min(number + batch - 1, stop)
            rels = [log_file(self.partition, n) for n in range(number, last + 1)]
            found = self.storage.read_many(rels)
            for rel in rels:
                if rel not in found:
                    return entries
                entries.append(self._parse(rel, found[rel]))
            number, batch = last + 1, min(2 * batch, _MAX_BATCH)
        return entries

    def head(self, known: int | None = None) -> int:
        """The newest commit number (0 if none), searching forward from commit ``known``, which
        must exist (default: the newest checkpoint's commit)."""
        if known is None:
            known = max(self.checkpoints(), default=0)
        return known + len(self.read_from(known + 1))

    def checkpoints(self) -> list[int]:
        names = self.storage.list(checkpoint_dir(self.partition))
        return sorted(n for n in map(parse_number, names) if n is not None)

    def load(self, version: int | None = None) -> Snapshot:
        """The snapshot at commit ``version`` (default: the newest); empty if nothing committed."""
        base = empty(self.partition)
        usable = [n for n in self.checkpoints() if version is None or n <= version]
        if usable:
            rel = numbered_file(checkpoint_dir(self.partition), usable[-1])
            try:
                base = Snapshot.from_dict(self._parse(rel, self.storage.read(rel)))
            except (KeyError, TypeError, ValueError) as e:
                url = self.storage.url_of(self.storage.path(rel))
                raise CorruptFile(f"{url}: not a valid checkpoint ({e})") from None
        snapshot = base
        for number, entry in enumerate(self.read_from(base.version + 1, version),
                                       base.version + 1):
            snapshot = self._advance(snapshot, number, entry)
        if version is not None and snapshot.version != version:
            raise UnknownPartition(
                f"partition {self.partition} in {self.storage.url} has no commit {version} "
                f"(newest is {snapshot.version})"
            )
        return snapshot

    def _advance(self, snapshot: Snapshot, number: int, entry: Entry) -> Snapshot:
        try:
            return advance(snapshot, number, entry)
        except (KeyError, TypeError, ValueError) as e:
            raise CorruptFile(f"{self._where(number)}: invalid entry ({e})") from None

    # -- writing ---------------------------------------------------------------------------------
    def commit(
        self,
        make_entry: Callable[[int, str], dict[str, Any]],
        *,
        base: int,
        rebase: Callable[[int, Entry], None] | None = None,
    ) -> int:
        """Commit ``make_entry(number, commit_id)`` as the next number after ``base``.

        On losing a race, every entry committed since is passed to ``rebase(number, entry)``,
        which raises (typically :class:`CommitConflict`) if this commit cannot follow it;
        otherwise the commit is retried at the new head. Returns the number committed.
        """
        commit_id = uuid.uuid4().hex
        writing: list[int] = []  # the number of a create that may have landed (it is ours)
        try:
            return self._commit(make_entry, commit_id, base + 1, rebase, writing)
        except BaseException as e:
            if not isinstance(e, Exception) and writing:  # interrupted: it may have landed
                mark_commit_unknown(e, f"{self._where(writing[0])} was being written when "
                                       "the process was interrupted: whether it was "
                                       "committed is unknown")
            raise

    def _commit(self, make_entry: Callable[[int, str], dict[str, Any]], commit_id: str,
                number: int, rebase: Callable[[int, Entry], None] | None,
                writing: list[int]) -> int:
        for attempt in range(_MAX_ATTEMPTS):
            entry = make_entry(number, commit_id)
            rel = log_file(self.partition, number)
            try:
                writing[:] = [number]
                self.storage.create(rel, _dumps(entry))
            except FileExistsError as e:
                winners = self._read_back(number, None, e)
                if winners and winners[0].get("commit_id") == commit_id:
                    break  # our own earlier (retried) request created it
                writing.clear()  # (another writer's: ours did not land)
                for offset, other in enumerate(winners):
                    if rebase is not None:
                        rebase(number + offset, other)
                number += len(winners)
                time.sleep(random.uniform(0, min(0.05, 0.001 * 2**attempt)))
                continue
            except PermissionError:
                raise  # refused: nothing was written
            except Exception as e:
                found = self._read_back(number, number, e)
                if not (found and found[0].get("commit_id") == commit_id):
                    raise
            break
        else:
            raise CommitConflict(
                f"partition {self.partition} in {self.storage.url}: gave up after "
                f"{_MAX_ATTEMPTS} lost commit races"
            )
        if number % self.checkpoint_interval == 0:
            self._checkpoint(number)
        return number

    def _read_back(self, number: int, stop: int | None, error: Exception) -> list[Entry]:
        """The log from commit ``number`` (to ``stop``) after writing commit ``number`` failed
        with ``error`` (it exists already, or its answer was lost: the request may have landed,
        an earlier attempt of it too); :class:`CommitUnknown` if it cannot be read to tell.
        (Read back once: a request still in flight after the client gave up on it could land
        later; S3 reads are consistent after a write.)"""
        try:
            return self.read_from(number, stop)
        except Exception as e:
            raise CommitUnknown(
                f"{self._where(number)}: writing it failed ({type(error).__name__}: {error}) "
                f"and reading it back failed too ({type(e).__name__}: {e}): whether it was "
                "committed is unknown"
            ) from error

    def _checkpoint(self, number: int) -> None:
        rel = numbered_file(checkpoint_dir(self.partition), number)
        try:
            self.storage.create(rel, _dumps(self.load(number).to_dict()))
        except FileExistsError:
            pass  # another writer wrote the same checkpoint
        except Exception as e:  # the commit stands; a later checkpoint will do
            log.warning("could not write checkpoint %s of partition %s: %s",
                        number, self.partition, type(e).__name__)
