"""The driver's object directory: where each object is, who holds it, and when to free it.

An object is kept while any process holds a ref to it (``holders``) or something pins it
(``pins``: a queued or running task taking it as an argument, or another stored object that
contains a ref to it). When both drop to zero it is freed: its shared-memory file is unlinked.
All methods run under the driver's lock.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from runtime.local.store import ObjectStore
from runtime.local.values import Location

PENDING, READY, FAILED = "pending", "ready", "failed"


@dataclass(eq=False)
class Entry:
    state: str = PENDING
    loc: Location | None = None
    error: tuple[bytes, str] | None = None
    holders: set[str] = field(default_factory=set)
    pins: int = 0
    contained: list[str] = field(default_factory=list)
    producer: Any = None  # the Work computing it, while pending


@dataclass(eq=False)
class Waiter:
    """Someone waiting for ``need`` of ``ids`` to be done (a get needs all of them)."""

    ids: list[str]
    need: int
    deadline: float | None
    on_done: Callable[[list[str]], None]  # called with the ids that are done


class ObjectDirectory:
    def __init__(self, store: ObjectStore) -> None:
        self.store = store
        self.entries: dict[str, Entry] = {}
        self.waiters: list[Waiter] = []
        self.failures = 0  # objects failed so far (the scheduler looks for dependents then)

    def entry(self, oid: str) -> Entry:
        e = self.entries.get(oid)
        if e is None:
            e = self.entries[oid] = Entry()
        return e

    # -- holding and freeing --------------------------------------------------------------------
    def hold(self, holder: str, oid: str) -> None:
        self.entry(oid).holders.add(holder)

    def release(self, holder: str, oid: str) -> None:
        e = self.entries.get(oid)
        if e is not None:
            e.holders.discard(holder)
            self._maybe_free(oid, e)

    def pin(self, ids: list[str]) -> None:
        for oid in ids:
            self.entry(oid).pins += 1

    def unpin(self, ids: list[str]) -> None:
        for oid in ids:
            e = self.entries.get(oid)
            if e is not None:
                e.pins -= 1
                self._maybe_free(oid, e)

    def _maybe_free(self, oid: str, e: Entry) -> None:
        if e.holders or e.pins > 0:
            return
        del self.entries[oid]
        if e.loc is not None and e.loc[0] == "shm":
            self.store.delete(oid)
        if e.contained:
            self.unpin(e.contained)

    # -- results ---------------------------------------------------------------------------------
    def set_ready(self, oid: str, loc: Location, contained: list[str]) -> None:
        e = self.entries.get(oid)
        if e is None:  # nobody wants it any more
            if loc[0] == "shm":
                self.store.delete(oid)
            return
        e.state, e.loc, e.producer = READY, loc, None
        e.contained = contained
        self.pin(contained)
        self.notify()

    def set_failed(self, oid: str, error: tuple[bytes, str]) -> None:
        e = self.entries.get(oid)
        if e is None:
            return
        e.state, e.error, e.producer = FAILED, error, None
        self.failures += 1
        self.notify()

    def is_done(self, oid: str) -> bool:
        e = self.entries.get(oid)
        return e is not None and e.state != PENDING

    def outcome(self, oid: str) -> tuple:
        """``("inline", bytes)``, ``("shm", size)`` or ``("error", blob, tb)`` of a done object."""
        e = self.entries[oid]
        if e.state == FAILED:
            assert e.error is not None
            return ("error", *e.error)
        assert e.loc is not None
        return e.loc

    # -- waiting (for requests from workers) -----------------------------------------------------
    def add_waiter(self, w: Waiter) -> None:
        if not self._check(w):
            self.waiters.append(w)

    def _check(self, w: Waiter, now: float | None = None) -> bool:
        done = [oid for oid in w.ids if self.is_done(oid)]
        expired = w.deadline is not None and (now or time.monotonic()) >= w.deadline
        if len(done) >= w.need or expired:
            w.on_done(done)
            return True
        return False

    def notify(self) -> None:
        if self.waiters:
            now = time.monotonic()
            self.waiters = [w for w in self.waiters if not self._check(w, now)]

    def next_deadline(self) -> float | None:
        deadlines = [w.deadline for w in self.waiters if w.deadline is not None]
        return min(deadlines) if deadlines else None
