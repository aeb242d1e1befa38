"""Partition leases: at most one scheduler compacts a partition at a time, across machines.

A lease is a chain of numbered *epoch* files beside the table, each created exclusively
(:meth:`compactor.Storage.create`: a hard link locally, ``If-None-Match: *`` on S3), so every
epoch has exactly one author; the lease belongs to the author of the newest epoch until that
epoch expires (or says it is released). A file's ``write_id`` tells a retried S3 PUT of our own,
answered "exists", from another writer's file::

    <table root>/_leases/<partition dir>/00000000000000000007.json
        {"epoch": 7, "owner": "host:pid:id", "expires_at": ..., "released": false,
         "write_id": "<uuid>"}

    scheduler A                         _leases/.../                        scheduler B
    acquire: newest (6) expired      -> create 7  (wins)       create 7 <- newest (6) expired
                                                               exists: A won; B skips
    renew every ttl/3                -> create 8, 9 ...        newest (9) valid: held, skip
    A crashes: no more renewals         9 expires at t9 + ttl
                                        create 10 (wins)       <- newest (9) expired: take over
    release after the round          -> create n+1 released    newest released: free

After each create its author lists the epochs again and holds the lease only if its epoch is
still the newest: a scheduler that stalled between reading and creating may re-create an epoch
number that was already cleaned up, and must not believe it won. A renewal that finds the next
epoch written by someone else raises :class:`LeaseLost`. The holder counts its lease valid only
until ``ttl/4`` before expiry, leaving room for clock skew between machines and for the commit
that follows its last check. Epochs older than the holder's are deleted as it goes.

Leases prevent duplicate work; they are not what keeps the table correct. Commits are
linearizable on their own, so a round that outlived its lease gets at worst a ``CommitConflict``.
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

from compactor.fs import Storage
from compactor.layout import PartitionKey, numbered_file, parse_number
from jobs.triggers import Clock

LEASES_DIR = "_leases"
_READ_ATTEMPTS = 5


class LeaseLost(Exception):
    """Another scheduler holds the partition's lease now (ours expired or was taken over)."""


@dataclass(frozen=True)
class Lease:
    """One epoch of a lease: who wrote it, and until when it holds."""

    partition: PartitionKey
    epoch: int
    owner: str
    expires_at: float
    released: bool = False
    write_id: str = field(default_factory=lambda: uuid.uuid4().hex)  # this epoch's file

    def to_json(self) -> bytes:
        return json.dumps({"format": 1, "epoch": self.epoch, "owner": self.owner,
                           "expires_at": self.expires_at, "released": self.released,
                           "write_id": self.write_id}).encode()

    @classmethod
    def from_json(cls, partition: PartitionKey, data: bytes) -> Lease:
        d = json.loads(data)
        return cls(partition, int(d["epoch"]), str(d["owner"]),
                   float(d["expires_at"]), bool(d["released"]), str(d["write_id"]))


class Leases:
    """The leases of one table's partitions, taken as ``owner`` for ``ttl`` seconds."""

    def __init__(self, storage: Storage, owner: str, ttl: float, clock: Clock) -> None:
        self.storage, self.owner, self.ttl, self.clock = storage, owner, ttl, clock

    def _dir(self, partition: PartitionKey) -> str:
        return f"{LEASES_DIR}/{partition.dir}"

    def _epochs(self, partition: PartitionKey) -> list[int]:
        names = self.storage.list(self._dir(partition))
        return sorted(n for n in map(parse_number, names) if n is not None)

    def current(self, partition: PartitionKey) -> Lease | None:
        """The newest epoch of ``partition``'s lease (expired or not), ``None`` if never taken."""
        for _ in range(_READ_ATTEMPTS):
            epochs = self._epochs(partition)
            if not epochs:
                return None
            try:
                data = self.storage.read(numbered_file(self._dir(partition), epochs[-1]))
            except FileNotFoundError:
                continue  # cleaned up by a newer holder between listing and reading
            try:
                return Lease.from_json(partition, data)
            except (KeyError, TypeError, ValueError) as e:
                raise ValueError(f"lease epoch {epochs[-1]} of partition {partition} in "
                                 f"{self.storage.url} is not a valid lease file ({e})") from None
        raise LeaseLost(f"the lease of partition {partition} in {self.storage.url} changes "
                        "too fast to read")

    def holder(self, partition: PartitionKey) -> Lease | None:
        """The lease in force (neither expired nor released), if any."""
        lease = self.current(partition)
        if lease is None or lease.released or lease.expires_at <= self.clock.now():
            return None
        return lease

    def acquire(self, partition: PartitionKey) -> Lease | None:
        """Take the partition's lease if it is free or expired; ``None`` if someone holds it."""
        newest = self.current(partition)
        if newest is not None and not newest.released and newest.expires_at > self.clock.now():
            return None
        epoch = 1 if newest is None else newest.epoch + 1
        lease = Lease(partition, epoch, self.owner, self.clock.now() + self.ttl)
        return lease if self._create(lease) else None

    def renew(self, lease: Lease) -> Lease:
        """Extend ``lease`` by the TTL (as its next epoch); :class:`LeaseLost` if taken."""
        renewed = Lease(lease.partition, lease.epoch + 1, self.owner, self.clock.now() + self.ttl)
        if not self._create(renewed):
            raise LeaseLost(f"partition {lease.partition} in {self.storage.url}: the lease "
                            f"was taken over by {self._newest_owner(lease.partition)}")
        return renewed

    def release(self, lease: Lease) -> None:
        """Give the lease up now (nothing happens if it was lost already)."""
        done = Lease(lease.partition, lease.epoch + 1, self.owner, self.clock.now(),
                     released=True)
        self._create(done)

    def valid(self, lease: Lease) -> bool:
        """Whether the holder may still act on ``lease`` (a margin before it expires)."""
        return self.clock.now() < lease.expires_at - self.ttl / 4

    def _create(self, lease: Lease) -> bool:
        """Create ``lease``'s epoch file; whether it is ours and the newest afterwards."""
        rel = numbered_file(self._dir(lease.partition), lease.epoch)
        try:
            self.storage.create(rel, lease.to_json())
        except FileExistsError:
            # a retried S3 PUT of our own may report "exists": the write id tells
            try:
                existing = Lease.from_json(lease.partition, self.storage.read(rel))
            except (FileNotFoundError, KeyError, TypeError, ValueError):
                return False
            if existing.write_id != lease.write_id:
                return False
        epochs = self._epochs(lease.partition)
        if not epochs or epochs[-1] != lease.epoch:
            return False
        self._clean(lease.partition, [e for e in epochs if e < lease.epoch])
        return True

    def _clean(self, partition: PartitionKey, epochs: list[int]) -> None:
        for epoch in epochs:
            try:
                self.storage.fs.rm_file(self.storage.path(numbered_file(self._dir(partition),
                                                                        epoch)))
            except OSError:
                pass  # best effort: the next holder cleans up

    def _newest_owner(self, partition: PartitionKey) -> str:
        try:
            newest = self.current(partition)
        except (LeaseLost, ValueError):
            return "another scheduler"
        return newest.owner if newest is not None else "another scheduler"
