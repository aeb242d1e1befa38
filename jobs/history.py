"""Run history in SQLite: one row per round, written when it starts and when it ends.

The database is a file named in the job config; it outlives schedulers, and several scheduler
processes may share it (SQLite's file locks serialize the writes; WAL lets ``jobs status`` read
while a scheduler writes). Besides the runs it keeps each partition's cron mark (see
``jobs.triggers``), so a restarted scheduler neither repeats nor forgets a schedule.

A round whose scheduler died stays ``running`` until a scheduler on the same host sees the
process is gone (as it starts, and at every tick) and marks it ``interrupted``.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from compactor.errors import CompactorError

RUNNING, SUCCEEDED, NOOP = "running", "succeeded", "noop"
FAILED, TIMED_OUT, ABANDONED, INTERRUPTED = "failed", "timed_out", "abandoned", "interrupted"
OUTCOMES = (RUNNING, SUCCEEDED, NOOP, FAILED, TIMED_OUT, ABANDONED, INTERRUPTED)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    job TEXT NOT NULL, table_url TEXT NOT NULL, partition TEXT NOT NULL,
    trigger TEXT NOT NULL, scheduler TEXT NOT NULL,
    started_at REAL NOT NULL, finished_at REAL, outcome TEXT NOT NULL,
    attempts INTEGER NOT NULL, rows_in INTEGER, rows_out INTEGER,
    bytes_read INTEGER, bytes_written INTEGER, error_type TEXT, error TEXT
);
CREATE INDEX IF NOT EXISTS runs_by_start ON runs (started_at);
CREATE INDEX IF NOT EXISTS runs_running ON runs (outcome) WHERE outcome = 'running';
CREATE TABLE IF NOT EXISTS cron_marks (
    job TEXT NOT NULL, partition TEXT NOT NULL, marked_at REAL NOT NULL,
    PRIMARY KEY (job, partition)
);
"""


@dataclass(frozen=True)
class Run:
    """One compaction round of a job's partition (``id`` is set once it is recorded)."""

    job: str
    table_url: str
    partition: str
    trigger: str
    scheduler: str
    started_at: float
    outcome: str = RUNNING
    finished_at: float | None = None
    attempts: int = 0
    rows_in: int | None = None
    rows_out: int | None = None
    bytes_read: int | None = None
    bytes_written: int | None = None
    error_type: str | None = None
    error: str | None = None
    id: int | None = None

    @property
    def duration(self) -> float | None:
        return None if self.finished_at is None else self.finished_at - self.started_at

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "duration": self.duration}


_COLUMNS = [f.name for f in fields(Run) if f.name != "id"]


class HistoryUnavailable(CompactorError, OSError):
    """The run history's database cannot be opened or created where the config puts it."""


class History:
    """The run history at ``path`` (created with its parent directories if missing)."""

    def __init__(self, path: str) -> None:
        self.path = path
        if path != ":memory:" and os.path.isdir(path):
            raise HistoryUnavailable(f"run history {path}: is a directory; name a file "
                                     "(created if missing)")
        try:
            if path != ":memory:":
                os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
            self._db = sqlite3.connect(path, timeout=30, check_same_thread=False,
                                       isolation_level=None)  # autocommit: one statement each
        except (OSError, sqlite3.Error) as e:
            raise HistoryUnavailable(f"run history {path}: cannot open or create it: "
                                     f"{e}") from None
        self._lock = threading.Lock()
        # Schedulers starting together open the new file together. Switching it to WAL takes
        # an exclusive lock, and SQLite may answer "database is locked" at once (without its
        # busy wait) to whoever meets that switch: retry for as long as the busy timeout.
        deadline = time.monotonic() + 30
        while True:
            try:
                if self._db.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                    self._db.execute("PRAGMA journal_mode=WAL")
                self._db.executescript(_SCHEMA)
                break
            except sqlite3.Error as e:
                if isinstance(e, sqlite3.OperationalError) and ("locked" in str(e) or "busy"
                                                                in str(e)) \
                        and time.monotonic() <= deadline:
                    time.sleep(0.05)
                    continue
                self._db.close()
                raise HistoryUnavailable(f"run history {path}: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> History:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _execute(self, sql: str, args: tuple[Any, ...] = ()) -> sqlite3.Cursor:
        with self._lock:
            return self._db.execute(sql, args)

    def start(self, run: Run) -> Run:
        """Record ``run`` (normally ``running``); returns it with its ``id``."""
        values = tuple(getattr(run, c) for c in _COLUMNS)
        cursor = self._execute(f"INSERT INTO runs ({', '.join(_COLUMNS)}) VALUES "
                               f"({', '.join('?' * len(_COLUMNS))})", values)
        return replace(run, id=cursor.lastrowid)

    def finish(self, run: Run) -> None:
        """Store the outcome and figures of the recorded ``run``."""
        if run.id is None:
            raise ValueError("finish() takes a run returned by start()")
        self._execute(f"UPDATE runs SET {', '.join(f'{c} = ?' for c in _COLUMNS)} WHERE id = ?",
                      (*(getattr(run, c) for c in _COLUMNS), run.id))

    def _select(self, where: str, args: tuple[Any, ...], limit: int | None = None) -> list[Run]:
        sql = (f"SELECT {', '.join(_COLUMNS)}, id FROM runs {where} "
               "ORDER BY started_at DESC, id DESC")
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        return [Run(*row) for row in self._execute(sql, args).fetchall()]

    def recent(self, limit: int | None = 50, job: str | None = None) -> list[Run]:
        """The newest runs first (of ``job`` only, if given)."""
        if job is None:
            return self._select("", (), limit)
        return self._select("WHERE job = ?", (job,), limit)

    def running(self) -> list[Run]:
        """The rows still ``running`` (by a partial index: the scheduler asks every tick)."""
        return self._select(f"WHERE outcome = '{RUNNING}'", ())

    def cron_mark(self, job: str, partition: str) -> float | None:
        row = self._execute("SELECT marked_at FROM cron_marks WHERE job = ? AND partition = ?",
                            (job, partition)).fetchone()
        return None if row is None else float(row[0])

    def set_cron_mark(self, job: str, partition: str, at: float) -> None:
        self._execute("INSERT INTO cron_marks (job, partition, marked_at) VALUES (?, ?, ?) "
                      "ON CONFLICT (job, partition) DO UPDATE SET marked_at = excluded.marked_at",
                      (job, partition, at))
