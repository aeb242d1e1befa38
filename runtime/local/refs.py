"""Object refs of the local backend and the per-process count of live refs.

Each process counts its live ``LocalObjectRef`` instances per object id. Creations and deletions
are only queued here (``__del__`` may run inside the garbage collector, under any lock), and
``drain`` turns a batch of them into net transitions: ids this process started or stopped
holding. The driver applies them to its object directory; a worker sends them to the driver
before any other message, so a ref carried by a message is never released before it arrives.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from typing import Any

from runtime.local.serialization import note_ref_pickled
from runtime.refs import ObjectRef


class RefTracker:
    def __init__(self) -> None:
        self._events: deque[tuple[str, int]] = deque()
        self._counts: dict[str, int] = {}
        self._lock = threading.Lock()
        self.on_release: Callable[[], None] | None = None

    def add(self, object_id: str) -> None:
        self._events.append((object_id, 1))

    def remove(self, object_id: str) -> None:
        self._events.append((object_id, -1))
        cb = self.on_release
        if cb is not None:
            cb()

    def drain(self) -> tuple[list[str], list[str]]:
        """Net (newly held, no longer held) ids since the last drain."""
        with self._lock:
            start: dict[str, int] = {}
            events = self._events
            counts = self._counts
            while events:
                oid, delta = events.popleft()
                before = counts.get(oid, 0)
                start.setdefault(oid, before)
                after = before + delta
                if after:
                    counts[oid] = after
                else:
                    del counts[oid]
            held, released = [], []
            for oid, before in start.items():
                after = counts.get(oid, 0)
                if before == 0 and after > 0:
                    held.append(oid)
                elif before > 0 and after == 0:
                    released.append(oid)
            return held, released

    def reset(self) -> None:
        with self._lock:
            self._events.clear()
            self._counts.clear()


tracker = RefTracker()


class LocalObjectRef(ObjectRef):
    __slots__ = ()

    def __init__(self, object_id: str) -> None:
        super().__init__(object_id)
        tracker.add(object_id)

    def __del__(self) -> None:
        try:
            tracker.remove(self.id)
        except Exception:  # interpreter shutdown: nothing left to tell
            pass

    def __reduce__(self) -> Any:
        note_ref_pickled(self.id)
        return (LocalObjectRef, (self.id,))
