"""When a partition is due for a compaction round: pure functions of the state and a time.

A partition with nothing pending above its watermark is never due. Otherwise it is due when any
configured trigger fires:

- ``pending_deltas`` / ``pending_bytes``: at least that many deltas / bytes are pending;
- ``oldest_delta_age``: the oldest pending delta was committed at least that long ago;
- ``cron``: a fire time of the schedule (in ``timezone``) has passed since the *cron mark*, the
  time the scheduler last handled the schedule for this partition. Fire times missed while no
  scheduler ran coalesce into one round, and a partition first seen is marked then (the
  schedule starts from that moment, it does not catch up on the past).

Time is passed in (seconds since the epoch), so tests drive it with any clock they like.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol
from zoneinfo import ZoneInfo

from croniter import croniter

from compactor.snapshot import Snapshot
from jobs.config import Triggers


class Clock(Protocol):
    """Where the scheduler reads the time (wall clock, seconds since the epoch)."""

    def now(self) -> float: ...


@dataclass(frozen=True)
class Pending:
    """What waits above a partition's watermark."""

    deltas: int = 0
    bytes: int = 0
    oldest_committed_at: float | None = None

    @classmethod
    def of(cls, snapshot: Snapshot) -> Pending:
        return cls(len(snapshot.deltas), snapshot.pending_size,
                   min((d.committed_at for d in snapshot.deltas), default=None))

    def age(self, now: float) -> float:
        """Seconds since the oldest pending delta was committed (0 if none)."""
        return 0.0 if self.oldest_committed_at is None else max(0.0, now - self.oldest_committed_at)


def next_fire(cron: str, timezone: str, after: float) -> float:
    """The first fire time of ``cron`` strictly after ``after``."""
    start = datetime.fromtimestamp(after, ZoneInfo(timezone))
    return float(croniter(cron, start).get_next(float))


def cron_fired(triggers: Triggers, mark: float | None, now: float) -> float | None:
    """The first fire time after ``mark`` if it is not after ``now`` (else ``None``)."""
    if triggers.cron is None or mark is None:
        return None
    fire = next_fire(triggers.cron, triggers.timezone, mark)
    return fire if fire <= now else None


def due(triggers: Triggers, pending: Pending, now: float, fired: float | None = None
        ) -> str | None:
    """Why the partition is due (e.g. ``"12 pending deltas >= 10"``), or ``None``.

    ``fired``: the cron fire time that passed (:func:`cron_fired`), if any.
    """
    if pending.deltas == 0:
        return None
    reasons = []
    if triggers.pending_deltas is not None and pending.deltas >= triggers.pending_deltas:
        reasons.append(f"{pending.deltas} pending deltas >= {triggers.pending_deltas}")
    if triggers.pending_bytes is not None and pending.bytes >= triggers.pending_bytes:
        reasons.append(f"{pending.bytes} pending bytes >= {triggers.pending_bytes}")
    age = pending.age(now)
    if triggers.oldest_delta_age is not None and age >= triggers.oldest_delta_age:
        reasons.append(f"oldest pending delta is {age:.0f}s old >= "
                       f"{triggers.oldest_delta_age:g}s")
    if fired is not None:
        at = datetime.fromtimestamp(fired, UTC).isoformat(timespec="seconds")
        reasons.append(f"cron {triggers.cron!r} fired at {at}")
    return "; ".join(reasons) or None
