"""A worker's end of its socket to the driver.

A reader thread drains the socket all the time, so the driver can always send without blocking:
replies go to the thread waiting for them, everything else (tasks, actor calls) to the inbox the
worker's main loop serves. When the socket closes the driver is gone, and the worker exits at
once, removing the session's store directory (the driver can no longer do it).
"""

from __future__ import annotations

import itertools
import os
import queue
import shutil
import threading
from multiprocessing.connection import Connection
from typing import Any

from runtime.errors import GetTimeoutError
from runtime.local.refs import tracker


class _Slot:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None


class Channel:
    def __init__(self, conn: Connection, store_root: str) -> None:
        self._conn = conn
        self._store_root = store_root
        self._send_lock = threading.Lock()
        self._ids = itertools.count(1)
        self._slots: dict[int, _Slot] = {}
        self.inbox: queue.SimpleQueue[tuple] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, name="driver-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                msg = self._conn.recv()
                if msg[0] == "reply":
                    slot = self._slots.pop(msg[1], None)
                    if slot is not None:
                        slot.value = msg[2]
                        slot.event.set()
                else:
                    self.inbox.put(msg)
        except (EOFError, OSError):
            pass
        self._driver_gone()

    def _driver_gone(self) -> None:
        # The driver is gone: nothing can use this process's results any more.
        shutil.rmtree(self._store_root, ignore_errors=True)
        os._exit(0)

    def send(self, msg: tuple) -> None:
        with self._send_lock:
            held, released = tracker.drain()
            try:
                if held or released:
                    self._conn.send(("refs", held, released))
                self._conn.send(msg)
            except OSError:  # a closed socket: the same as the reader's EOF
                self._driver_gone()

    def request(self, kind: str, payload: Any, timeout: float | None = None) -> Any:
        rid = next(self._ids)
        slot = _Slot()
        self._slots[rid] = slot
        self.send(("req", rid, kind, payload))
        if not slot.event.wait(timeout):
            self._slots.pop(rid, None)
            raise GetTimeoutError(f"{kind} timed out after {timeout} s")
        return slot.value
